"""Worker side of scenarios/test_loop_bound_pool.py.

The engine is created after the fork (``worker_process_init``), so the only thing
under test is the event loop: each task runs its coroutine with a new
``asyncio.run()`` (or, with ``loop="per-process"``, on one loop the process keeps).

Knobs: those of :mod:`scenarios.apps.common`, plus
    loop: "per-task" (asyncio.run per task) or "per-process" (one loop per process).
    dispose_after: await engine.dispose() at the end of each asyncio.run().
"""

from __future__ import annotations

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.knobs import Knob
from harness.task_support import make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("dispose_after", bool, False, "await engine.dispose() at the end of each call"),
)
app = make_app(__name__)
engine: AsyncEngine | None = None
RUNNER = LoopRunner(SETTINGS.get("loop"))


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global engine
    engine = make_engine(SETTINGS)
    RUNNER.after_fork()


async def echo_through_database(token: str) -> str:
    assert engine is not None
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("select cast(:token as text)"), {"token": token})
            return result.scalar_one()
    finally:
        if SETTINGS.get("dispose_after"):
            await engine.dispose()


@app.task
def query_token(token: str) -> str:
    return RUNNER.run(echo_through_database(token))
