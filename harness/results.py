"""results.json: write one run's results, read them back.

Responsibility: the file contract of DESIGN.md ("Results JSON"). Field names
are read by the matrix and by outside tools; extending is fine, renaming needs
a new ``SCHEMA``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import environment
from harness.errors import ConfigError

SCHEMA = 1


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def build_document(results: Sequence[Mapping[str, Any]], services: Mapping[str, str],
                   run_id: str) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "environment": {
            "python": environment.python_version(),
            "packages": environment.package_versions(),
            "libpq": environment.libpq_info(),
            "services": dict(services),
        },
        "results": sorted(results, key=lambda r: (r["scenario"], r["variant"], r["driver"])),
    }


def write(document: Mapping[str, Any], results_dir: Path) -> Path:
    """Write ``<results_dir>/<run_id>/results.json`` and point ``latest`` at that folder."""
    run_dir = results_dir / document["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "results.json"
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    latest = results_dir / "latest"
    tmp = results_dir / f".latest-{uuid.uuid4().hex[:6]}"
    tmp.symlink_to(document["run_id"], target_is_directory=True)
    os.replace(tmp, latest)  # atomic: a reader never sees a missing 'latest'
    return path


def load(path: Path) -> dict[str, Any]:
    """Read a results.json, refusing files of another schema with a clear message."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"Could not read results file {path}: {exc}. Pass the "
                          f"results.json that a 'pytest scenarios/' run wrote.") from exc
    if document.get("schema") != SCHEMA:
        raise ConfigError(
            f"{path} has results schema {document.get('schema')!r}, but this harness reads "
            f"schema {SCHEMA}. Re-run the scenarios with this version of the harness, or "
            f"read the file with the harness version that wrote it.")
    return document
