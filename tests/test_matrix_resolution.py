"""Environments of their time: the cutoff, its exemptions, the cache key, the lookups.

No network: upload times come from a fake index; the real index is exercised by the
smoke test (tests/test_matrix_smoke.py) and by every dated matrix run.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.matrix import resolution
from harness.matrix.axes import Combination
from harness.matrix.environments import env_key, install_settings
from harness.matrix.interpreters import Interpreter

ROOT = Path(__file__).resolve().parent.parent
PINS = {"python": "3.11", "sqlalchemy": "2.0.30", "celery": "5.4.0", "asyncpg": "0.29.0",
        "psycopg": "3.1.20"}
RELEASED = {("sqlalchemy", "2.0.30"): "2024-05-28T17:00:00Z",
            ("celery", "5.4.0"): "2024-04-17T17:00:00Z",
            ("asyncpg", "0.29.0"): "2023-11-05T12:00:00Z",
            ("psycopg", "3.1.20"): "2024-06-30T16:57:04Z"}


def fake_times(package: str, version: str) -> dt.datetime:
    return dt.datetime.fromisoformat(RELEASED[(package, version)].replace("Z", "+00:00"))


def test_the_cutoff_is_the_newest_pinned_release_plus_a_day() -> None:
    found = resolution.resolution_for(PINS, resolution.DATED, fake_times)
    assert found.newest == "psycopg 3.1.20"
    assert found.released == "2024-06-30T16:57:04Z"
    assert found.cutoff == "2024-07-01T16:57:04Z"
    args = found.uv_args()
    assert args[:2] == ["--exclude-newer", "2024-07-01T16:57:04Z"]
    exempt = {args[i + 1] for i, a in enumerate(args) if a == "--exclude-newer-package"}
    # The pins themselves, and the harness's own tools, ignore the cutoff...
    assert {"celery=false", "psycopg-binary=false", "pytest=false", "testcontainers=false",
            "celery-aio-pool=false", "uv=false"} <= exempt
    # ...but not the stack's companions: that is the point.
    assert not {"kombu=false", "billiard=false", "redis=false", "amqp=false"} & exempt


def test_latest_resolves_today_and_asks_no_index() -> None:
    found = resolution.resolution_for(PINS, resolution.LATEST, None)
    assert found.uv_args() == [] and found.cutoff is None
    assert found.to_dict()["mode"] == "latest"
    with pytest.raises(ConfigError, match="--resolve 'someday'"):
        resolution.resolution_for(PINS, "someday", None)


def test_harness_only_tools_leave_the_stack_alone() -> None:
    only = set(resolution.harness_only())
    assert {"pytest", "testcontainers", "celery-aio-pool", "uv"} <= only
    assert not {"celery", "kombu", "redis", "sqlalchemy", "greenlet", "billiard"} & only


def test_upload_times_are_asked_once_and_cached(tmp_path: Path, monkeypatch) -> None:
    asked: list[tuple[str, str]] = []

    def ask(self, package: str, version: str) -> dt.datetime:
        asked.append((package, version))
        return fake_times(package, version)

    monkeypatch.setattr(resolution.IndexUploadTimes, "_ask", ask)
    cache = tmp_path / "upload-times.json"
    first = resolution.IndexUploadTimes("https://index.example/simple", cache)
    assert first("celery", "5.4.0") == fake_times("celery", "5.4.0")
    again = resolution.IndexUploadTimes("https://index.example/simple", cache)
    assert again("celery", "5.4.0") == fake_times("celery", "5.4.0")
    assert asked == [("celery", "5.4.0")]
    assert "https://index.example/simple celery==5.4.0" in json.loads(cache.read_text())


def key(resolved: resolution.Resolution, env: dict[str, str]) -> str:
    return env_key(Combination({**PINS, "pgbouncer": "1.18"}),
                   Interpreter(Path("/usr/bin/python3.11"), "3.11.7"), ROOT, "uv", resolved,
                   install_settings(env))


def test_everything_that_decides_the_contents_is_in_the_cache_key(tmp_path: Path) -> None:
    dated = resolution.resolution_for(PINS, resolution.DATED, fake_times)
    latest = resolution.Resolution(resolution.LATEST)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("kombu==5.3.7\n")
    plain = key(dated, {})
    assert key(latest, {}) != plain
    with_file = key(dated, {"UV_CONSTRAINT": str(constraints)})
    assert with_file != plain
    constraints.write_text("kombu==5.7.0\n")  # same file name, other contents
    assert key(dated, {"UV_CONSTRAINT": str(constraints)}) != with_file
    assert key(dated, {"PIP_CONSTRAINT": str(constraints)}) != plain
    assert key(dated, {"UV_DEFAULT_INDEX": "https://mirror.example/simple"}) != plain
    assert key(dated, {"HOME": "/elsewhere"}) == plain  # not an installer setting


def test_parse_freeze_keeps_versions_and_drops_the_editable_harness() -> None:
    text = "Celery==5.4.0\n-e file:///work/main\nkombu==5.3.7\nredis==5.0.7\n"
    assert resolution.parse_freeze(text) == {"celery": "5.4.0", "kombu": "5.3.7",
                                             "redis": "5.0.7"}


def test_every_project_requirement_is_stack_tool_or_shared() -> None:
    """A new requirement in pyproject.toml must be sorted: under the cutoff or exempt."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    declared = {Requirement(r).name for r in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    sorted_out = ({Requirement(r).name for r in resolution.STACK} | set(resolution.TOOLS)
                  | set(resolution.SHARED))
    assert declared <= sorted_out, (
        f"{sorted(declared - sorted_out)}: add each to STACK, TOOLS or SHARED in "
        f"harness/matrix/resolution.py")
