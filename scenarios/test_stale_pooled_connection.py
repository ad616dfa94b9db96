"""stale-pooled-connection: the server drops pooled connections; the next checkout gets a dead one.

Symptom
    A worker has run for a while; PostgreSQL restarts (an upgrade, a failover, an
    operator's ``pg_terminate_backend``), or a session is terminated while a task is
    inside its transaction. The next task on each pool process fails with asyncpg's
    "connection was closed in the middle of operation" (``ConnectionDoesNotExistError``)
    or psycopg's ``AdminShutdown: terminating connection due to administrator
    command``, both wrapped by SQLAlchemy as ``DBAPIError`` with
    ``connection_invalidated=True``. Users report it to every driver (asyncpg #309,
    #421; psycopg #701) and to SQLAlchemy (#5776).

Cause
    The pool hands out the connection it kept from the previous call; nothing has
    looked at its socket since the server closed its end. SQLAlchemy only learns the
    connection is dead when a statement fails on it; it then invalidates that
    connection and every connection of the pool checked out before that moment
    ("Dealing with Disconnects" in SQLAlchemy's pooling documentation), so only the
    first call after the fault fails, per process.

What maintainers recommend
    SQLAlchemy's documentation gives two approaches: pessimistic, ``pool_pre_ping=True``
    (a ping at each checkout; a dead connection is replaced before the caller sees
    it), and optimistic, catching the disconnect (``connection_invalidated``) and
    running the transaction again. It says ``pool_recycle`` is for connections the
    server or a firewall closes after a known idle time, and that pre-ping cannot
    help a connection that dies during a transaction. psycopg's maintainer points
    to its own pool's ``check`` (not used here: SQLAlchemy's pool is in front).

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg 3.3.9,
Python 3.11.7, PostgreSQL 15, local and docker backends)
    The workload is four calls on ONE pool process (so the process that runs the
    calls after the fault is the one that holds the pooled connection); the fault
    fires after the first two calls have finished, or inside the first call's
    transaction.

    * Sessions terminated between calls, default pool, one loop per process:
      REPRODUCED on both drivers, exactly one failed call (the third); the fourth
      runs on a new session (counter ``new-backend``).
    * The same with ``asyncio.run()`` per task (psycopg only; asyncpg fails first
      for loop-bound-pool's reason): the same single failure. psycopg's connection
      survives the loop change, so the pool keeps it, and it goes stale the same way.
    * ``pool_pre_ping=True``: CLEAN; ``retry on connection_invalidated``: CLEAN (one
      retry, counter ``retried-invalidated``); NullPool: CLEAN, because nothing
      was pooled: the fault found no session to end ("terminated 0 session(s)").
    * ``pool_recycle=300``: REPRODUCED, as SQLAlchemy's documentation predicts: the
      connection was seconds old, so recycling never looked at it.
    * PostgreSQL restarted (fast shutdown) between calls: the same cells as the
      terminated sessions: the default pool and ``pool_recycle`` fail once,
      pre-ping and the retry are CLEAN.
    * Session terminated inside the transaction: ``pool_pre_ping`` does not help
      (REPRODUCED: the ping passed at checkout, the connection died after it), nor
      does NullPool (REPRODUCED: a fresh connection dies just the same). Only the
      retry of the whole transaction is CLEAN.

    SQLAlchemy 2.0.50 changed how a corrupt asyncpg connection returns to the pool
    (sqlalchemy #13241). Both sides of it give the same 26 cells here (``harness
    matrix --python 3.11 --sqlalchemy 2.0.49 2.0.50 --celery 5.7.0 --asyncpg 0.32.0
    --psycopg 3.3.9 -k stale_pooled``): this workload never returns a corrupt
    connection to the pool, because SQLAlchemy invalidates it on the failed statement.
"""

from __future__ import annotations

from dataclasses import replace

from harness import signatures as sig
from harness.faults.plan import Fault, after_calls, at_point
from harness.plugin import assert_expected
from harness.scenario import Claim, Role, Scenario, Variant, Workload, clean, reproduces

BETWEEN_CALLS = Workload(task="read_in_transaction", calls=4, concurrency=1, timeout_s=40.0,
                         faults=(Fault("terminate-backends", after_calls(2)),))
RESTART = replace(BETWEEN_CALLS, faults=(Fault("restart-postgres", after_calls(2)),))
MID_TRANSACTION = replace(BETWEEN_CALLS,
                          faults=(Fault("terminate-backends", at_point("in-transaction")),))

POOLED = {"loop": "per-process"}

ONE_DEAD_CHECKOUT = {
    "asyncpg": reproduces("asyncpg-connection-lost",
                          why="the pooled connection's next statement finds it closed"),
    "psycopg": reproduces("server-ended-session",
                          why="the pooled connection's next statement finds it closed"),
}
DIES_IN_TRANSACTION = {
    "asyncpg": reproduces("asyncpg-connection-lost",
                          why="checked out alive, ended inside the transaction"),
    "psycopg": reproduces("server-ended-session",
                          why="checked out alive, ended inside the transaction"),
}

SCENARIO = Scenario(
    id="stale-pooled-connection",
    app="scenarios.apps.stale_pooled_connection",
    workload=BETWEEN_CALLS,
    signatures=(sig.ASYNCPG_CONNECTION_LOST, sig.SERVER_ENDED_SESSION, sig.ASYNCPG_CONNECTION_CLOSED,
                sig.PSYCOPG_CONNECTION_LOST, sig.PSYCOPG_CONNECTION_CLOSED),
    claim=Claim(error="(none quoted: a production fault)",
                fix="pool_pre_ping=True (pessimistic disconnect handling)",
                signature=None, bad="default-pool", fixed="pre-ping",
                source="SQLAlchemy's pooling documentation"),
    variants=(
        Variant("default-pool", Role.BAD, POOLED, expect=ONE_DEAD_CHECKOUT),
        Variant("default-pool-per-task", Role.BAD, {"loop": "per-task"},
                expect=ONE_DEAD_CHECKOUT,
                not_for={"asyncpg": "asyncpg binds a pooled connection to the loop that made "
                                    "it; asyncio.run() per task fails for that reason first "
                                    "(see loop-bound-pool)"}),
        Variant("pre-ping", Role.FIX, {**POOLED, "pre_ping": True}, expect=clean()),
        Variant("nullpool", Role.FIX, {**POOLED, "pool": "null"},
                expect=clean(why="nothing is pooled, so the fault finds no session to end")),
        Variant("pool-recycle", Role.PARTIAL_FIX, {**POOLED, "pool_recycle": 300},
                expect=ONE_DEAD_CHECKOUT),
        Variant("retry-invalidated", Role.FIX, {**POOLED, "retry_invalidated": True},
                expect=clean()),
        Variant("restart-default-pool", Role.BAD, POOLED, workload=RESTART,
                expect=ONE_DEAD_CHECKOUT),
        Variant("restart-pre-ping", Role.FIX, {**POOLED, "pre_ping": True}, workload=RESTART,
                expect=clean()),
        Variant("restart-pool-recycle", Role.PARTIAL_FIX, {**POOLED, "pool_recycle": 300},
                workload=RESTART, expect=ONE_DEAD_CHECKOUT),
        Variant("restart-retry-invalidated", Role.FIX, {**POOLED, "retry_invalidated": True},
                workload=RESTART, expect=clean()),
        Variant("mid-transaction-pre-ping", Role.BAD, {**POOLED, "pre_ping": True},
                workload=MID_TRANSACTION, expect=DIES_IN_TRANSACTION),
        Variant("mid-transaction-nullpool", Role.BAD, {**POOLED, "pool": "null"},
                workload=MID_TRANSACTION, expect=DIES_IN_TRANSACTION),
        Variant("mid-transaction-retry-invalidated", Role.FIX,
                {**POOLED, "pre_ping": True, "retry_invalidated": True},
                workload=MID_TRANSACTION, expect=clean()),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
