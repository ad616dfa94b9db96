"""Worker side of scenarios/test_stale_pooled_connection.py.

One task, ``read_in_transaction``: inside one transaction it reads the call's token
back from the server, announces the point ``in-transaction`` (a fault may land
there: :func:`harness.faults.cues.reach`), then reads it again and returns it. Two
statements, so a connection that dies between them dies inside a transaction.

The engine is made after the fork (``worker_process_init``); the ``loop`` knob says
where the coroutine runs. With one loop per process and the default pool, the
process keeps its connection in the pool between calls: the connection a fault
between calls leaves stale.

Knobs: those of :mod:`scenarios.apps.common` (pool, pre_ping, pool_recycle, ...), plus
    retry_invalidated: on a ``DBAPIError`` whose ``connection_invalidated`` is true,
        run the whole transaction once more (SQLAlchemy's documented pattern for
        disconnects: the invalidated connection is discarded, the retry gets a
        fresh one).

Counters: ``retried-invalidated`` (a retry ran), ``new-backend`` (a call ran on a
server session other than the one the process used before).
"""

from __future__ import annotations

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.faults.cues import reach
from harness.knobs import Knob
from harness.task_support import count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("retry_invalidated", bool, False,
         "retry the transaction once when SQLAlchemy reports connection_invalidated"),
)
app = make_app(__name__)
engine: AsyncEngine | None = None
RUNNER = LoopRunner(SETTINGS.get("loop"))
last_backend: int | None = None

READ = text("select cast(:token as text), pg_backend_pid()")


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global engine
    engine = make_engine(SETTINGS)
    RUNNER.after_fork()


async def read_twice(token: str) -> str:
    """One transaction, two statements, the cue ``in-transaction`` between them."""
    global last_backend
    assert engine is not None, "worker_process_init did not run in this process"
    async with engine.connect() as conn, conn.begin():
        value, backend = (await conn.execute(READ, {"token": token})).one()
        if last_backend is not None and backend != last_backend:
            count(app, "new-backend")
        last_backend = backend
        reach(app, "in-transaction")
        value, _ = (await conn.execute(READ, {"token": value})).one()
    return str(value)


async def read_with_policy(token: str) -> str:
    try:
        return await read_twice(token)
    except DBAPIError as exc:
        if not (SETTINGS.get("retry_invalidated") and exc.connection_invalidated):
            raise
    count(app, "retried-invalidated")
    return await read_twice(token)


@app.task
def read_in_transaction(token: str) -> str:
    """Read ``token`` back twice inside one transaction."""
    return RUNNER.run(read_with_policy(token))
