"""Worker side of scenarios/test_pgbouncer_pool_timeouts.py.

Two tasks, both behind PgBouncer in transaction mode:

``hold_or_wait`` (two calls on two processes, started together): both warm up
first (one ``select 1``, so each process has a connection in its pool, the one a
``pool_pre_ping`` then tests at checkout). Then the call with index 0, the
HOLDER, opens a transaction, reads its token (PgBouncer now gives it the server
connection until the transaction ends), tells the other call ``held`` and keeps
the transaction open until the other call says ``waiter-done``. The other call,
the WAITER, runs its own transaction only after ``held``: with a server pool of
one, its statement queues in PgBouncer until ``query_wait_timeout``. The two
calls meet over the run's Redis (bounded waits, ``peer_wait_s``), never by
sleeping, so the waiter always queues behind a held connection.

``read_in_transaction`` (several calls on one process, one connection kept in the
pool between them): inside one transaction it reads the token, announces the point
``in-transaction`` (where a PgBouncer admin ``KILL`` or ``RECONNECT`` of the variant
lands: :func:`harness.faults.cues.reach`), then reads it again.

Every connection is made safe for transaction pooling (asyncpg
``statement_cache_size=0``, psycopg ``prepare_threshold=None``): named prepared
statements are pgbouncer-prepared-asyncpg's and -psycopg's subject, and would
otherwise fail calls here for their own reason.

Knobs: those of :mod:`scenarios.apps.common`, plus
    retry_invalidated: on a ``DBAPIError`` whose ``connection_invalidated`` is
        true, run the whole transaction once more (SQLAlchemy's documented pattern
        for disconnects).
    peer_wait_s: how long one call of ``hold_or_wait`` waits for the other's word.

Counters: ``db-error-<class>`` (an attempt failed; the driver's exception class),
``invalidated`` / ``not-invalidated`` (SQLAlchemy's ``connection_invalidated``; a
failed connect is ``not-invalidated``),
``retried-invalidated`` (a retry ran), ``waiter-failed-within-<n>s`` and
``waiter-answered-within-<n>s`` (how long the waiting call took, rounded up).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.faults.cues import reach
from harness.knobs import Knob
from harness.task_support import call_index, count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("retry_invalidated", bool, False,
         "retry the transaction once when SQLAlchemy reports connection_invalidated"),
    Knob("peer_wait_s", int, 30, "seconds one call of hold_or_wait waits for the other's word"),
)
app = make_app(__name__)
RUNNER = LoopRunner(SETTINGS.get("loop"))
PEER_WAIT_S: int = SETTINGS.get("peer_wait_s")
PEER_KEY = "harness:pool-timeouts:{queue}:{word}"
PEER_KEY_TTL_S = 3600
# Transaction pooling without named prepared statements (see the module docstring).
POOLER_SAFE = {"asyncpg": {"statement_cache_size": 0}, "psycopg": {"prepare_threshold": None}}

READ = text("select cast(:token as text)")
_engine: AsyncEngine | None = None


class PeerSilent(Exception):
    """The other call of ``hold_or_wait`` did not say its word within ``peer_wait_s``."""


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global _engine
    _engine = make_engine(SETTINGS, connect_args_under=POOLER_SAFE[SETTINGS.driver])
    RUNNER.after_fork()


def engine() -> AsyncEngine:
    assert _engine is not None, "worker_process_init did not run in this process"
    return _engine


# --- the two calls of hold_or_wait meet over Redis --------------------------------------
# Blocking Redis calls inside the coroutines are deliberate: nothing else runs on the
# process's loop, and the holder's open transaction needs no attention while it waits.
def tell(word: str) -> None:
    client = app.backend.client
    key = PEER_KEY.format(queue=SETTINGS.queue, word=word)
    client.rpush(key, "1")
    client.expire(key, PEER_KEY_TTL_S)


def hear(word: str) -> None:
    key = PEER_KEY.format(queue=SETTINGS.queue, word=word)
    if app.backend.client.blpop([key], timeout=PEER_WAIT_S) is None:
        raise PeerSilent(f"the other call did not say {word!r} within {PEER_WAIT_S} s; "
                         f"did both calls start (Workload.start_together)?")


def seconds_since(began: float) -> int:
    return math.ceil(time.monotonic() - began)


def innermost(exc: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrapper (asyncpg's is two causes down)."""
    found: BaseException = getattr(exc, "orig", None) or exc
    while found.__cause__ is not None:
        found = found.__cause__
    return found


async def read_once(token: str) -> str:
    async with engine().connect() as conn, conn.begin():
        return str((await conn.execute(READ, {"token": token})).scalar_one())


async def read_twice(token: str) -> str:
    """One transaction, two statements, the cue ``in-transaction`` between them."""
    async with engine().connect() as conn, conn.begin():
        value = (await conn.execute(READ, {"token": token})).scalar_one()
        reach(app, "in-transaction")
        return str((await conn.execute(READ, {"token": value})).scalar_one())


async def with_policy(work: Callable[[str], Awaitable[str]], token: str) -> str:
    """Run ``work``; count what a failure was; retry once if the variant says so."""
    try:
        return await work(token)
    except DBAPIError as exc:
        count(app, f"db-error-{type(innermost(exc)).__name__}")
        count(app, "invalidated" if exc.connection_invalidated else "not-invalidated")
        if not (SETTINGS.get("retry_invalidated") and exc.connection_invalidated):
            raise
    count(app, "retried-invalidated")
    return await work(token)


async def warm_up() -> None:
    async with engine().connect() as conn:
        await conn.execute(text("select 1"))


async def hold(token: str) -> str:
    """The holder: keep PgBouncer's one server connection until the waiter is done."""
    await warm_up()
    hear("waiter-ready")
    async with engine().connect() as conn, conn.begin():
        value = (await conn.execute(READ, {"token": token})).scalar_one()
        tell("held")
        hear("waiter-done")
    return str(value)


async def wait_behind_holder(token: str) -> str:
    """The waiter: its transaction starts only once the holder holds the server connection."""
    await warm_up()
    tell("waiter-ready")
    try:
        hear("held")
        began = time.monotonic()
        try:
            value = await with_policy(read_once, token)
        except Exception:
            count(app, f"waiter-failed-within-{seconds_since(began)}s")
            raise
        count(app, f"waiter-answered-within-{seconds_since(began)}s")
        return value
    finally:
        tell("waiter-done")  # the holder lets go only now, whatever happened here


@app.task
def hold_or_wait(token: str) -> str:
    """Call 0 holds the server connection; the other call queues behind it."""
    work = hold if call_index(token) == 0 else wait_behind_holder
    return RUNNER.run(work(token))


@app.task
def read_in_transaction(token: str) -> str:
    """Read ``token`` back twice inside one transaction (a fault lands between the reads)."""
    return RUNNER.run(with_policy(read_twice, token))
