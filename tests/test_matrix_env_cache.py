"""The environment cache keeps one build per combination and checkout, and nothing else goes.

Real folders under tmp_path stand for cached environments; only the pruning rule
is under test (building environments is covered by tests/test_matrix_shards.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from harness.matrix.axes import Combination
from harness.matrix.environments import BUILD_TIMEOUT_S, STAMP, env_key, prune_superseded
from harness.matrix.interpreters import Interpreter

ROOT = Path(__file__).resolve().parent.parent

COMBO = "py3.11-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9"


def cached(root: Path, name: str, project: Path | None, *, stamped: bool = True,
           age_s: float = 0.0) -> Path:
    path = root / name
    (path / "bin").mkdir(parents=True)
    if stamped:
        stamp = {"id": COMBO} | ({"project": str(project)} if project else {})
        (path / STAMP).write_text(json.dumps(stamp))
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))
    return path


def test_older_builds_of_this_checkout_go_and_the_rest_stays(tmp_path: Path) -> None:
    project, other = tmp_path / "checkout", tmp_path / "other-checkout"
    cache = tmp_path / "envs"
    current = cached(cache, f"{COMBO}-aaaaaaaaaa", project)
    superseded = cached(cache, f"{COMBO}-bbbbbbbbbb", project)
    abandoned = cached(cache, f"{COMBO}-cccccccccc", None, stamped=False,
                       age_s=BUILD_TIMEOUT_S + 60)
    in_progress = cached(cache, f"{COMBO}-dddddddddd", None, stamped=False)
    theirs = cached(cache, f"{COMBO}-eeeeeeeeee", other)
    unrecorded = cached(cache, f"{COMBO}-ffffffffff", None)  # a stamp without "project"
    other_combo = cached(cache, "py3.13-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-"
                                "aaaaaaaaaa", project)

    removed = prune_superseded(current, project)

    assert sorted(removed) == sorted([superseded, abandoned])
    for kept in (current, in_progress, theirs, unrecorded, other_combo):
        assert kept.exists(), kept
    assert not superseded.exists() and not abandoned.exists()


def test_the_cache_key_ignores_the_pgbouncer_axis() -> None:
    """PgBouncer is a service: two environments differing only in it share one folder."""
    versions = {"python": "3.11", "sqlalchemy": "2.1.9", "celery": "5.7.0",
                "asyncpg": "0.32.0", "psycopg": "3.3.9"}
    interpreter = Interpreter(Path("/usr/bin/python3.11"), "3.11.2")
    old = env_key(Combination({**versions, "pgbouncer": "1.18"}), interpreter, ROOT, "uv")
    new = env_key(Combination({**versions, "pgbouncer": "1.24"}, "pgbouncer"), interpreter,
                  ROOT, "uv")
    assert old == new and old.startswith(COMBO + "-") and "pgb" not in old
    other = env_key(Combination({**versions, "sqlalchemy": "2.0.58", "pgbouncer": "1.18"}),
                    interpreter, ROOT, "uv")
    assert other != old


def test_builds_of_another_resolution_or_constraint_are_alternatives_and_stay(
        tmp_path: Path) -> None:
    """A --resolve latest build (or one under a constraint file) of the same combination
    is not older than the dated one: another run may be using it right now."""
    project = tmp_path / "checkout"
    cache = tmp_path / "envs"
    dated = {"resolution": {"mode": "dated", "cutoff": "2024-07-01T00:00:00Z"},
             "settings": {}}

    def build(name: str, facts: dict) -> Path:
        path = cached(cache, name, project)
        (path / STAMP).write_text(json.dumps({"id": COMBO, "project": str(project), **facts}))
        return path

    current = build(f"{COMBO}-aaaaaaaaaa", dated)
    older = build(f"{COMBO}-bbbbbbbbbb", dated)  # same resolution: pyproject changed since
    latest = build(f"{COMBO}-cccccccccc", {"resolution": {"mode": "latest"}, "settings": {}})
    constrained = build(f"{COMBO}-dddddddddd", {**dated, "settings": {
        "UV_CONSTRAINT": "/tmp/c.txt (sha256:0123)"}})

    assert prune_superseded(current, project) == [older]
    assert latest.exists() and constrained.exists()
