"""Wall time of the whole ``pytest scenarios/``: serial and with xdist, and the same words.

    .venv/bin/python -m bench.suite [--workers 0 2 4] [pytest args...]

Each configuration runs once, in this order, on the same machine; the figures,
the time every cell spent starting its worker and running its calls, and every
cell whose outcome word differs between the configurations go to
reports/bench/suite.json. Exits 1 when a cell's word differs (parallel runs must
see what a serial run sees).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench._common import OUT, ROOT, write


def run_suite(workers: int, extra: list[str]) -> tuple[float, Path, int]:
    results_dir = OUT / "suite-runs" / f"n{workers}"  # reports/latest may be another run's
    command = [sys.executable, "-m", "pytest", "scenarios/", "-q", "-p", "no:cacheprovider",
               "--results-dir", str(results_dir),
               *(["-n", str(workers)] if workers else []), *extra]
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          check=False)
    wall = time.monotonic() - began
    latest = (results_dir / "latest" / "results.json").resolve()
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
    words: dict[str, dict[str, str]] = {}  # cell -> configuration -> outcome word
    for workers in args.workers:
        wall, results_path, code = run_suite(workers, extra)
        figures[f"n{workers}"] = {"wall_s": round(wall, 1), "exit": code, **phases(results_path)}
        for r in json.loads(results_path.read_text())["results"]:
            cell = f"{r['scenario']}/{r['variant']}/{r['driver']}"
            words.setdefault(cell, {})[f"n{workers}"] = r["outcome"]
        # Written after every configuration: a long serial run stopped early keeps the rest.
        differ = report(figures, words, extra)
    return 1 if differ else 0


def report(figures: dict[str, dict], words: dict[str, dict[str, str]],
           extra: list[str]) -> dict[str, dict[str, str]]:
    """Write reports/bench/suite.json for the configurations run so far."""
    runs = len(figures)
    differ = {cell: seen for cell, seen in sorted(words.items())
              if len(set(seen.values())) > 1 or len(seen) < runs}
    serial = figures.get("n0", {}).get("wall_s")
    for key, value in figures.items():
        if serial and key != "n0":
            value["speedup_vs_serial"] = round(serial / value["wall_s"], 2)
    write("suite", {"pytest_args": extra, "runs": figures, "goal_speedup": 1.6,
                    "cells": len(words), "cells_that_differ": differ})
    for cell, seen in differ.items():
        print(f"DIFFERS {cell}: {seen}")
    print(f"{len(words) - len(differ)} of {len(words)} cells gave one outcome word in every "
          f"configuration so far")
    return differ


if __name__ == "__main__":
    sys.exit(main())
