"""Wall time of the whole ``pytest scenarios/``: serial and with xdist.

    .venv/bin/python -m bench.suite [--workers 0 2 4] [pytest args...]

Each configuration runs once, in this order, on the same machine; the figures
and the per-phase split of the serial run (service start, worker start, calls)
go to reports/bench/suite.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench._common import ROOT, write


def run_suite(workers: int, extra: list[str]) -> tuple[float, Path, int]:
    command = [sys.executable, "-m", "pytest", "scenarios/", "-q", "-p", "no:cacheprovider",
               *(["-n", str(workers)] if workers else []), *extra]
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.monotonic() - began
    latest = (ROOT / "reports" / "latest" / "results.json").resolve()
    print(f"-n {workers}: {wall:.1f} s, exit {done.returncode}: {done.stdout.strip().splitlines()[-1]}")
    return wall, latest, done.returncode


def phases(results_path: Path) -> dict[str, float]:
    rows = json.loads(results_path.read_text())["results"]
    return {"cells": len(rows),
            "worker_start_s_total": round(sum(r["worker_start_s"] for r in rows), 1),
            "calls_s_total": round(sum(r["run_s"] for r in rows), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    args, extra = parser.parse_known_args()
    figures: dict[str, dict] = {}
    for workers in args.workers:
        wall, results_path, code = run_suite(workers, extra)
        figures[f"n{workers}"] = {"wall_s": round(wall, 1), "exit": code, **phases(results_path)}
    serial = figures.get("n0", {}).get("wall_s")
    for key, value in figures.items():
        if serial and key != "n0":
            value["speedup_vs_serial"] = round(serial / value["wall_s"], 2)
    write("suite", {"pytest_args": extra, "runs": figures, "goal_speedup": 1.6})
    return 0


if __name__ == "__main__":
    sys.exit(main())
