"""Worker side of scenarios/test_async_def_task.py.

One task, ``record_token``, written in one of three styles chosen by a knob, so
every variant receives the same calls and only the way the coroutine is (or is
not) driven differs. Its async body inserts the call's token into
``recorded_tokens`` through async SQLAlchemy (engine made after the fork, with
NullPool, so no pooled connection can outlive its loop), then leaves the
``mark_ran`` side effect and returns the token.

Knobs: those of :mod:`scenarios.apps.common` (the scenario sets ``pool="null"``), plus
    task_style: how the task is declared:
        "async-def": ``@app.task async def`` (the article's native async task);
        "sync-asyncio-run": ``@app.task def`` that calls ``asyncio.run()`` on the body;
        "async-def-base-class": ``@app.task(base=AsyncioRunTask) async def``, a Task
            subclass whose ``__call__`` runs the coroutine with ``asyncio.run()``.
    ignore_result: passed to ``@app.task(ignore_result=...)``.
    worker_pool: "celery-aio-pool" sets Celery's ``worker_pool`` setting to that
        package's ``AsyncIOPool``; Celery 5.7 honours it when the command line asks
        for the default pool (celery/bin/worker.py, ``WorkersPool.convert``), so the
        worker then runs one process with one event loop instead of prefork.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

from celery import Task
from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.knobs import Knob
from harness.task_support import count, make_app, mark_ran, settings
from scenarios.apps.common import ENGINE_KNOBS, make_engine

SETTINGS = settings(
    ENGINE_KNOBS,
    Knob("task_style", str, "sync-asyncio-run", "how the task runs its coroutine",
         choices=("sync-asyncio-run", "async-def", "async-def-base-class")),
    Knob("ignore_result", bool, False, "the task stores no result (ignore_result=True)"),
    Knob("worker_pool", str, None, "'celery-aio-pool': run on that third-party pool"),
)
app = make_app(__name__)
TASK_STYLE: str = SETTINGS.get("task_style")
IGNORE_RESULT: bool = SETTINGS.get("ignore_result")
engine: AsyncEngine | None = None
# The third-party pool (PyPI celery-aio-pool): one process, one event loop in a
# thread, and its own copy of Celery's tracer that awaits coroutine task bodies.
AIO_POOL = "celery_aio_pool.pool:AsyncIOPool"
if SETTINGS.get("worker_pool") == "celery-aio-pool":
    app.conf.worker_pool = AIO_POOL


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    """Each prefork child gets its own engine, so fork safety is not under test here."""
    global engine
    engine = make_engine(SETTINGS)


async def record_token_body(token: str) -> str:
    """The task's real work: one committed row per call, then the ran-mark."""
    assert engine is not None, "worker_process_init did not run in this process"
    async with engine.begin() as conn:
        await conn.execute(
            text("insert into recorded_tokens (token, pid) values (:token, :pid)"),
            {"token": token, "pid": os.getpid()})
    mark_ran(app, token)
    count(app, "bodies-completed")
    return token


class AsyncioRunTask(Task):
    """A Task base that drives a coroutine task body to completion per call.

    Celery 5.7's tracer calls ``task(*args)`` and stores whatever comes back
    (celery/app/trace.py, ``fun(*args, **kwargs)``); it never checks for a
    coroutine. Overriding ``__call__`` is the documented hook for wrapping the
    body, so ``async def`` tasks can run in prefork with a new loop per call.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Task.__call__ pops its own request before the coroutine runs, but the
        # tracer's request (id, retries) stays pushed until this returns, so
        # ``self.request`` still works inside a bound body.
        result = super().__call__(*args, **kwargs)
        if asyncio.iscoroutine(result):
            return asyncio.run(result)
        return result


def declare_task(style: str) -> Callable[..., Any]:
    """Register ``record_token`` in the style the variant asks for."""
    options: dict[str, Any] = {"name": f"{__name__}.record_token",
                               "ignore_result": IGNORE_RESULT}
    if style == "async-def":
        # The article's "native" async task: Celery registers the coroutine
        # function as it is; calling it only creates a coroutine object.
        @app.task(**options)
        async def record_token(token: str) -> str:
            return await record_token_body(token)
    elif style == "async-def-base-class":
        @app.task(base=AsyncioRunTask, **options)
        async def record_token(token: str) -> str:
            return await record_token_body(token)
    elif style == "sync-asyncio-run":
        # The article's recommended pattern: a plain task, a new loop per call.
        @app.task(**options)
        def record_token(token: str) -> str:
            body: Coroutine[Any, Any, str] = record_token_body(token)
            return asyncio.run(body)
    else:
        raise ValueError(f"unknown task_style {style!r}: use async-def, "
                         f"async-def-base-class or sync-asyncio-run")
    return record_token


record_token = declare_task(TASK_STYLE)
