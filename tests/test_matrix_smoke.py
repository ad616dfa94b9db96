"""The smoke check: an environment that cannot boot a worker is reported once, fast.

The end-to-end test builds a deliberately broken environment, the one a new user
met: Celery 5.4.0 next to a kombu too new for the redis-py that Celery 5.4.0's
``redis`` extra allows (kombu 5.7.0 wants redis-py 6.1+, Celery 5.4.0 caps it below
6). A constraint file in ``UV_CONSTRAINT`` pins that pair, with ``--resolve latest``
so the cutoff cannot exclude kombu 5.7.0. Every worker dies at start with
``kombu.exceptions.VersionMismatch``; the matrix must say so in one paragraph within a
minute of the build, exit 3 and list the environment with no cells.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.environment import pgbouncer_version
from harness.matrix import smoke
from harness.matrix.environments import find_uv

ROOT = Path(__file__).resolve().parent.parent
TRACEBACK = """Traceback (most recent call last):
  File "/env/lib/python3.11/site-packages/celery/worker/consumer/consumer.py", line 1, in x
  File "/env/lib/python3.11/site-packages/kombu/transport/redis.py", line 2072, in _get_client
    raise VersionMismatch(
kombu.exceptions.VersionMismatch: Redis transport requires redis-py versions 6.1.0 or later. You have 5.3.1
[2026-11-30 03:00:00,000: INFO/MainProcess] exiting"""
INSTALLED = {"celery": "5.4.0", "kombu": "5.7.0", "redis": "5.3.1", "billiard": "4.2.1"}


def test_first_error_is_the_exception_line_of_the_last_traceback() -> None:
    assert smoke.first_error(TRACEBACK).startswith("kombu.exceptions.VersionMismatch: Redis")
    assert smoke.first_error("") == "(no output)"


def test_the_report_names_the_packages_in_conflict_and_what_to_pin() -> None:
    failed = smoke.Smoke(False, 4.2, "worker", smoke.first_error(TRACEBACK), TRACEBACK,
                         "/logs/smoke.log")
    assert smoke.involved(failed, INSTALLED) == ["kombu", "redis"]
    text = smoke.paragraph("E", failed, INSTALLED, ["celery 5.4.0"], "latest", latest=True)
    head = text.splitlines()[0]
    assert "kombu 5.7.0 (which raised it) and redis 5.3.1" in head
    assert "--resolve dated" in head and "UV_CONSTRAINT" in head and "no cells" in head
    assert "after 4.2 s while booting a prefork worker" in head


PINS = ["--python", "3.11", "--sqlalchemy", "2.0.30", "--celery", "5.4.0", "--asyncpg",
        "0.29.0", "--psycopg", "3.1.20", "--pgbouncer", "local"]


@pytest.mark.skipif(pgbouncer_version() is None or find_uv() is None,
                    reason="needs the local backend (pgbouncer on PATH) and uv")
def test_a_broken_environment_is_reported_in_one_paragraph_within_a_minute(
        tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("kombu==5.7.0\nredis==5.3.1\n")
    env = {**os.environ, "UV_CONSTRAINT": str(constraints)}
    out = tmp_path / "out"
    started = time.monotonic()
    # The environment cache is shared: only the first run on a machine builds it.
    done = subprocess.run([sys.executable, "-m", "harness.cli", "matrix", *PINS, "--resolve",
                           "latest", "--out", str(out), "-k", "loop_bound_pool"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr[-3000:]
    reports = [line for line in done.stderr.splitlines() if "cannot run its scenarios" in line]
    assert len(reports) == 1, done.stderr[-3000:]
    assert "kombu.exceptions.VersionMismatch" in reports[0]
    assert "kombu 5.7.0 (which raised it) and redis 5.3.1" in reports[0]
    assert "HARNESS_ERROR" not in done.stderr + done.stdout
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["results"] == []  # no cells, not 10 HARNESS_ERROR ones
    [environment] = matrix["environments"]
    assert environment["smoke"]["ok"] is False
    assert environment["smoke"]["seconds"] < 60
    assert environment["resolution"]["mode"] == "latest"
    assert environment["installed"]["kombu"] == "5.7.0"
    assert "UV_CONSTRAINT" in environment["install_settings"]
    assert "cannot run its scenarios" in (out / "matrix.md").read_text()
    built = [line for line in done.stderr.splitlines() if "built in" in line
             or "reused from cache" in line]
    assert built, done.stderr[-3000:]
    # Within a minute of the environment being ready, whatever the build cost.
    assert environment["smoke"]["seconds"] < 60 and elapsed < 240
