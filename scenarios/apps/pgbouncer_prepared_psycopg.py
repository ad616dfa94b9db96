"""Worker side of scenarios/test_pgbouncer_prepared_psycopg.py.

Each task opens ONE connection and runs a parameterised query ``executions``
times on it, each execution in its own transaction, so that PgBouncer
(transaction mode) may hand that one client connection a different server
connection for every execution. psycopg 3 counts executions of each query text
PER CONNECTION (not per task): with the default pool, a connection's count goes
on from one task to the next. Every execution also returns ``pg_backend_pid()``,
so the task counts how often the server connection under its client connection
changed (counter ``server-switches``), and the number of named prepared
statements on the server connection, so it counts the executions that ran where
some client had prepared a statement (counter ``prepared-on-server``).

Every process runs its tasks on one long-lived event loop, like the asyncpg
scenario, so both scenarios differ only by driver.

Knobs: those of :mod:`scenarios.apps.common` (pool, connect_args, e.g.
``{"prepare_threshold": 0}``), plus
    executions: how many times each task runs a query on its connection (default 4).
    prepared_max: set ``AsyncConnection.prepared_max`` on each new connection
        (psycopg's connect() has no such argument; it is an attribute).
    query_shapes: "same" (default): one query text. "halves": the second half of
        the executions on a connection runs a second query text (so a
        prepared_max of 1 evicts the first text's statement). "by-process":
        processes with an odd pid run the second text. The second text returns
        ``reverse()`` of the token and the task reverses it back, so a
        statement name that points at the other text on the server returns a
        WRONG value instead of raising. "halves-then-third": "halves", and the
        connection's last execution runs a third text: psycopg evicts from its
        cache only when a new text comes after the cache is full, so this is the
        shape in which a ``prepared_max`` of 1 really deallocates the first
        text's statement (``DEALLOCATE`` or a protocol-level Close, by libpq).
        Counter ``evicted``: statements psycopg dropped from its cache.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.knobs import Knob
from harness.task_support import count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LoopRunner, make_engine
from scenarios.apps.echo_through_pgbouncer import ECHO, ECHO_REVERSED, EchoLog

# A third text that answers the token unchanged: a new statement for psycopg's cache.
ECHO_THIRD = text("select cast(:token as text) /* third */, pg_backend_pid(), "
                  "(select count(*) from pg_prepared_statements)")

SETTINGS = settings(
    ENGINE_KNOBS,
    Knob("executions", int, 4, "how many times each call runs its statement"),
    Knob("prepared_max", int, None, "psycopg's prepared_max (statements kept per connection)"),
    Knob("query_shapes", str, "same", "which statements a call runs",
         choices=("same", "halves", "halves-then-third", "by-process")),
)
app = make_app(__name__)
engine: AsyncEngine | None = None
# One loop per process, made after the fork: pooled connections are reused by the next
# call on the loop they belong to (loop-bound-pool is where the loop is under test).
RUNNER = LoopRunner("per-process")



def set_prepared_max(_dbapi_connection: Any, connection_record: Any) -> None:
    """Pool ``connect`` listener: psycopg's cache size for prepared statements."""
    connection_record.driver_connection.prepared_max = SETTINGS.get("prepared_max")


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    """One engine and one event loop per worker process, made after the fork."""
    global engine
    engine = make_engine(SETTINGS)
    if "prepared_max" in SETTINGS.config:
        event.listen(engine.sync_engine, "connect", set_prepared_max)
    RUNNER.after_fork()


def reversed_shape(execution: int) -> bool:
    """Whether this execution runs the second query text (see ``query_shapes``)."""
    shapes = SETTINGS.get("query_shapes")
    if shapes in ("halves", "halves-then-third"):
        return execution >= SETTINGS.get("executions") // 2
    return shapes == "by-process" and os.getpid() % 2 == 1


def third_shape(execution: int) -> bool:
    """Whether this execution runs the third text: the last one, in "halves-then-third"."""
    return (SETTINGS.get("query_shapes") == "halves-then-third"
            and execution == SETTINGS.get("executions") - 1)


def cached_names(conn: Any) -> set[bytes]:
    """The statement names psycopg keeps prepared for this connection (its cache)."""
    return set(conn.sync_connection.connection.driver_connection._prepared._names.values())


async def echo_repeatedly(token: str) -> str:
    """Run the query ``executions`` times on one connection; return a wrong answer if any."""
    assert engine is not None
    log = EchoLog(token)
    async with engine.connect() as conn:
        evicted = 0
        # psycopg's cache is read only where eviction is under test (an internal attribute).
        watch = SETTINGS.get("query_shapes") == "halves-then-third"
        for execution in range(SETTINGS.get("executions")):
            reverse = reversed_shape(execution) and not third_shape(execution)
            query = ECHO_THIRD if third_shape(execution) else ECHO_REVERSED if reverse else ECHO
            before = cached_names(conn) if watch else set()
            async with conn.begin():
                result = await conn.execute(query, {"token": token})
                value, backend_pid, prepared_on_server = result.one()
            if watch:
                evicted += len(before - cached_names(conn))
            log.record(value[::-1] if reverse else value, backend_pid, prepared_on_server)
    if evicted:
        count(app, "evicted", evicted)
    return log.report(app)


@app.task
def query_token(token: str) -> str:
    """Echo ``token`` through the database, ``executions`` times on one connection."""
    return RUNNER.run(echo_repeatedly(token))
