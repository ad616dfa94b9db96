"""Determinism: run the whole suite N times and show, per cell, the outcome words seen.

    .venv/bin/python -m bench.repeat N [pytest args...]

A cell is scenario / variant / driver. Every cell must show one outcome word
over all N runs; a cell that shows two is a scenario to fix (an explicit
condition, more calls), never a reason to retry. Writes reports/bench/repeat.json
and exits 1 when any cell is not deterministic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict

from bench._common import OUT, ROOT, write


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print(__doc__)
        return 2
    runs, extra = int(argv[0]), argv[1:]
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    walls = []
    for index in range(runs):
        began = time.monotonic()
        # Each run writes to its own folder (reports/latest may belong to another run),
        # kept with its worker logs: a cell that changes its word needs its log.
        results_dir = OUT / "repeat-runs" / f"run-{index + 1}"
        subprocess.run([sys.executable, "-m", "pytest", "scenarios/", "-q", "-p",
                        "no:cacheprovider", "--results-dir", str(results_dir), *extra],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
        walls.append(round(time.monotonic() - began, 1))
        document = json.loads((results_dir / "latest" / "results.json").read_text())
        for r in document["results"]:
            seen[f"{r['scenario']}/{r['variant']}/{r['driver']}"][r["outcome"]] += 1
        print(f"run {index + 1}/{runs}: {walls[-1]} s, {len(document['results'])} cells")
    flaky = {cell: dict(words) for cell, words in seen.items() if len(words) > 1}
    short = {cell: dict(words) for cell, words in seen.items() if sum(words.values()) < runs}
    write("repeat", {"runs": runs, "pytest_args": extra, "wall_s": walls,
                     "cells": {cell: dict(words) for cell, words in sorted(seen.items())},
                     "not_deterministic": flaky, "missing_in_some_runs": short})
    for cell, words in sorted(flaky.items()):
        print(f"NOT DETERMINISTIC {cell}: {words}")
    print(f"{len(seen) - len(flaky)} of {len(seen)} cells showed one outcome word in {runs} runs")
    return 1 if flaky or short else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
