"""Shard + merge gives the same matrix as one run: real environments, real scenarios.

One ``harness matrix`` run over two environments, then the same two environments
as two shards (``--only``, as the CI workflow runs them), merged with
``harness matrix merge``. The matrices must agree on environments, cells,
outcomes and verdicts, and their Markdown must be identical. The selection is
small (the NullPool variants of loop-bound-pool, which are always clean) so the
comparison does not depend on a race; environments come from the shared cache,
so only the first run on a machine builds them. PgBouncer is the installed one
(``--pgbouncer local``): the selection starts none, and the local backend needs no
Docker engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.environment import pgbouncer_version
from harness.matrix.pgbouncer_axis import pgbouncer_line

ROOT = Path(__file__).resolve().parent.parent
AXES = ["--python", "3.11", "--sqlalchemy", "2.1.9", "2.0.58", "--celery", "5.7.0",
        "--asyncpg", "0.32.0", "--psycopg", "3.3.9", "--pgbouncer", "local"]
SELECT = ["-k", "loop_bound_pool and nullpool"]
PGB = pgbouncer_line(pgbouncer_version() or "?")
IDS = [f"py3.11-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb{PGB}",
       f"py3.11-sa2.0.58-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb{PGB}"]

pytestmark = pytest.mark.skipif(pgbouncer_version() is None, reason=(
    "no pgbouncer on PATH: the shard test runs on the local backend (apt-get install "
    "pgbouncer postgresql redis-server, or sudo python3 -m harness.bootstrap tests)"))


def harness(*argv: str, timeout_s: float = 1200) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "harness.cli", *argv]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        pytest.fail(f"{' '.join(argv[:3])} did not finish in {timeout_s} s; stderr tail:\n"
                    f"{tail!r}")
    assert done.returncode == 0, (f"{' '.join(argv)} exited {done.returncode}:\n"
                                  f"{done.stderr[-3000:]}")
    return done


def essentials(matrix: dict[str, Any]) -> dict[str, Any]:
    """What must agree: not run ids, paths or timings."""
    return {
        "environments": [(e["id"], e["slot"], e["python"], e["packages"], e["pgbouncer"],
                          e["services"]["backend"]) for e in matrix["environments"]],
        "cells": sorted((r["env"], r["scenario"], r["variant"], r["driver"], r["expected"],
                         r["outcome"], r["tasks"]["total"], r["tasks"]["ok"])
                        for r in matrix["results"]),
        "verdicts": [(v["scenario"], v["driver"], v["overall"],
                      sorted((e, x["verdict"]) for e, x in v["by_env"].items()))
                     for v in matrix["verdicts"]],
    }


@pytest.mark.timeout(2400)
def test_two_shards_merged_equal_one_run(tmp_path: Path) -> None:
    harness("matrix", *AXES, *SELECT, "--out", str(tmp_path / "one"))
    for name, env in zip(("shard-a", "shard-b"), IDS):
        harness("matrix", *AXES, *SELECT, "--only", env, "--out", str(tmp_path / name))
    harness("matrix", "merge", str(tmp_path / "shard-a" / "runs"),
            str(tmp_path / "shard-b" / "runs"), "--out", str(tmp_path / "merged"))

    one = json.loads((tmp_path / "one" / "matrix.json").read_text())
    merged = json.loads((tmp_path / "merged" / "matrix.json").read_text())
    assert [e["id"] for e in one["environments"]] == IDS
    assert [e["services"]["backend"] for e in one["environments"]] == ["local", "local"]
    assert len(one["results"]) == 4
    assert essentials(merged) == essentials(one)
    assert ((tmp_path / "merged" / "matrix.md").read_text()
            == (tmp_path / "one" / "matrix.md").read_text())
