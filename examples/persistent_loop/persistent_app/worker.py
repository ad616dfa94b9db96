"""One event loop per pool process, and a soft time limit on every task."""

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from sqlalchemy import text

from persistent_app import db

app = Celery("persistent_app", broker=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_soft_time_limit = 5
app.conf.task_time_limit = 30

_loop: asyncio.AbstractEventLoop | None = None


@worker_process_init.connect
def make_loop(**_: object) -> None:
    global _loop
    _loop = asyncio.new_event_loop()


def run_async(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on this process's loop (kept between tasks, with its pool)."""
    assert _loop is not None, "worker_process_init has not run in this process"
    return _loop.run_until_complete(coroutine)


async def _refresh() -> int:
    assert db.engine is not None
    async with db.engine.connect() as conn:
        return (await conn.execute(text("select count(*) from pg_class"))).scalar_one()


@app.task
def refresh_stats() -> int:
    return run_async(_refresh())
