"""Worker side of scenarios/test_engine_before_fork.py.

``celery worker --pool=prefork`` imports this module in the parent process
(MainProcess), sends ``worker_init`` there, and only then forks the child
processes that run tasks. A child starts as a copy of the parent: whatever the
parent's engine pool holds at that moment (an open socket, the asyncio objects
bound to it) exists once more in every child.

Knobs: those of :mod:`scenarios.apps.common`, plus
    engine: "import" (made when this module is imported, in the parent, before
        the fork) or "process-init" (made in ``worker_process_init``, in each
        child, after the fork).
    parent_query: the parent runs a start-up check (``select 1``) in
        ``worker_init``, before the pool forks. With engine="import" the check
        uses that engine, so with a pool its connection stays open and every
        child inherits it; with engine="process-init" the parent has no engine,
        so the check makes a short-lived one and disposes it.
    dispose_in_child: "close=False" (SQLAlchemy's recipe: drop the inherited
        pool without touching its connections) or "close=True" (dispose it the
        usual way, closing them) in ``worker_process_init``; unset: no dispose.
    loop: (:data:`scenarios.apps.common.LOOP`) "per-process" (each child makes one
        event loop after the fork and runs all its tasks on it), "per-task"
        (``asyncio.run()`` per task, the article's pattern, and the default) or
        "inherited" (one loop made at import, in the parent: the parent's check
        runs on it and each child keeps using its copy).
    pool_start_method: "fork" (Celery's default) or "spawn" (Celery 5.7's
        ``worker_pool_start_method``: each child is a fresh interpreter that
        imports this module again, so it inherits no objects from the parent).

Counter:
    inherited-checkout: a task checked out a pooled connection that another
        process (the parent) had opened.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celery.signals import worker_init, worker_process_init
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.knobs import Knob
from harness.task_support import count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("engine", str, None, "where the engine is made", choices=("import", "process-init")),
    Knob("parent_query", bool, False, "the parent runs 'select 1' in worker_init, before the fork"),
    Knob("dispose_in_child", str, None, "dispose the inherited engine in worker_process_init",
         choices=("close=False", "close=True")),
    Knob("pool_start_method", str, None, "Celery's worker_pool_start_method",
         choices=("fork", "spawn")),
)
app = make_app(__name__)
if SETTINGS.get("pool_start_method"):
    app.conf.worker_pool_start_method = SETTINGS.get("pool_start_method")
OPENED_BY_PID = "opened_by_pid"  # key in each pooled connection's .info

engine: AsyncEngine | None = None
RUNNER = LoopRunner(SETTINGS.get("loop"))  # "inherited": made here, in the parent


def create_engine() -> AsyncEngine:
    """The variant's engine; each new connection remembers the process that opened it."""
    made = make_engine(SETTINGS)

    @event.listens_for(made.sync_engine, "connect")
    def remember_opener(_dbapi_connection: Any, record: Any) -> None:
        record.info[OPENED_BY_PID] = os.getpid()

    return made


if SETTINGS.get("engine") == "import":
    # The pattern the article calls bad: a module-level engine, made in the parent.
    engine = create_engine()


async def start_up_check(check_engine: AsyncEngine, *, dispose: bool) -> None:
    """``select 1``, as an application checks its database before it serves."""
    async with check_engine.connect() as conn:
        await conn.execute(text("select 1"))
    if dispose:
        await check_engine.dispose()


@worker_init.connect
def check_database_before_fork(**_: object) -> None:
    """Runs in the parent, after import and before the pool forks its children."""
    if not SETTINGS.get("parent_query"):
        return
    if engine is not None:
        check = start_up_check(engine, dispose=False)
    else:
        check = start_up_check(create_engine(), dispose=True)
    RUNNER.run(check)


@worker_process_init.connect
def prepare_child(**_: object) -> None:
    """Runs in each child right after the fork, before its first task."""
    global engine
    if SETTINGS.get("engine") == "process-init":
        engine = create_engine()
    dispose = SETTINGS.get("dispose_in_child")
    if dispose is not None:
        assert engine is not None, "dispose_in_child needs engine='import'"
        if dispose == "close=False":
            # Only drops this process's reference to the inherited pool; no I/O
            # (SQLAlchemy >= 1.4.33, "Using Connection Pools with Multiprocessing").
            engine.sync_engine.dispose(close=False)
        elif dispose == "close=True":
            # Closes the inherited connections: a Terminate on the parent's socket.
            asyncio.run(engine.dispose())
        else:
            raise ValueError(f"dispose_in_child must be 'close=False' or 'close=True', "
                             f"not {dispose!r}")
    RUNNER.after_fork()


async def echo_through_database(token: str, timeout_s: float | None) -> str:
    """``select`` the token back on a pooled connection, counting inherited checkouts."""
    assert engine is not None
    async with engine.connect() as conn:
        if conn.info.get(OPENED_BY_PID) != os.getpid():
            count(app, "inherited-checkout")
        query = conn.execute(text("select cast(:token as text)"), {"token": token})
        # On a socket shared with another process the reply may never come (the
        # other process read it); the bound turns that wait into a TimeoutError.
        result = await (asyncio.wait_for(query, timeout_s) if timeout_s else query)
        return result.scalar_one()


@app.task
def query_token(token: str, timeout_s: float | None = None) -> str:
    """Echo ``token`` through the database; a reply meant for another call shows as WRONG.

    Args:
        token: the call's unique value, returned unchanged.
        timeout_s: bound on the query's wait for its reply (None: unbounded).
    """
    work = echo_through_database(token, timeout_s)
    return RUNNER.run(work)
