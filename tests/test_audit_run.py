"""harness audit end to end on the examples: a real prefork worker runs the user's code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def audit(example: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "audit", "--project",
         str(ROOT / "examples" / example), "--backend", "local", "-n", "1", "--out", str(out),
         *extra],
        capture_output=True, text=True, timeout=600, check=False)
    latest = out / "latest" / "results.json"
    assert latest.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(latest.read_text())


@pytest.mark.parametrize(("example", "code", "outcome"), [
    ("naive", 1, "REPRODUCED"),   # a pooled engine made at import, asyncio.run() per task
    ("article", 0, "CLEAN"),      # worker_process_init + NullPool, asyncio.run() per task
])
def test_loop_reuse_on_the_examples_matches_the_scenario(tmp_path, example, code, outcome):
    proc, document = audit(example, tmp_path, "--hazard", "loop-reuse")
    [row] = document["results"]
    assert (row["variant"], row["driver"], row["outcome"]) == ("loop-reuse", "asyncpg", outcome)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout
    assert "hazard" in table and "loop-reuse" in table and outcome in table
    assert "loop-bound-pool" in table  # the scenario to read


def test_an_accepted_hazard_does_not_fail_the_audit(tmp_path):
    proc, document = audit("naive", tmp_path, "--hazard", "loop-reuse", "--accept", "loop-reuse")
    assert document["results"][0]["outcome"] == "REPRODUCED"
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "REPRODUCED (accepted)" in proc.stdout
