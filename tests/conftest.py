"""Fixtures for the harness's own tests: real services, shared per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness._process import live_group_members
from harness.services import LocalRedis
from harness.task_support import WorkerSettings
from harness.worker import CeleryWorker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_service() -> Iterator[LocalRedis]:
    with LocalRedis() as redis:
        yield redis


@pytest.fixture
def make_worker(redis_service: LocalRedis, tmp_path: Path):
    """Build (not start) a worker for the lifecycle test app; always stopped afterwards."""
    made: list[CeleryWorker] = []

    def build(config: dict | None = None, cue_points: tuple[str, ...] = (),
              **kwargs) -> CeleryWorker:
        settings = WorkerSettings.for_variant(
            scenario="lifecycle", variant="test", driver="asyncpg",
            database_url="postgresql+asyncpg://unused", broker_url=redis_service.url(),
            queue=f"t.{uuid.uuid4().hex}", config=config or {}, cue_points=cue_points)
        kwargs.setdefault("concurrency", 2)
        worker = CeleryWorker(app_module="tests.apps.lifecycle", settings=settings,
                              log_path=tmp_path / f"worker-{len(made)}.log",
                              project_root=ROOT, **kwargs)
        made.append(worker)
        return worker

    yield build
    for worker in made:
        worker.stop(grace_s=2)


def group_alive(pgid: int) -> bool:
    """Is any process of the group still running? (Unreaped zombies do not count.)"""
    return bool(live_group_members(pgid))
