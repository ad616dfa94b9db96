"""Shared by the bench scripts: where figures go and how they are written."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from harness import environment

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("HARNESS_BENCH_DIR", ROOT / "reports" / "bench"))


def write(name: str, figures: dict[str, Any]) -> Path:
    """Write ``reports/bench/<name>.json`` with the machine and versions beside the figures."""
    OUT.mkdir(parents=True, exist_ok=True)
    document = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": environment.python_version(),
        "packages": environment.package_versions(),
        **figures,
    }
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": round(statistics.median(values), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}
