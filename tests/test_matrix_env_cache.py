"""The environment cache keeps one build per combination and checkout, and nothing else goes.

Real folders under tmp_path stand for cached environments; only the pruning rule
is under test (building environments is covered by tests/test_matrix_shards.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from harness.matrix.environments import BUILD_TIMEOUT_S, STAMP, prune_superseded

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
