"""Worker side of scenarios/test_killed_child_mid_transaction.py.

One task, ``write_token``. Each run of its body (a redelivered call runs it
again) does, in order:

1. records the attempt in ``attempts`` in a transaction of its own, committed at
   once, so the count survives whatever happens to the main transaction. A call
   whose body has already run ``max_attempts`` times raises
   :class:`RedeliveryLoop` instead of running again: a message that is
   redelivered for ever becomes a failed call, not a hung batch;
2. opens the main transaction and inserts the call's row into ``writes`` (plain,
   or keyed by the call's token with ``ON CONFLICT DO NOTHING`` when
   ``idempotency_key`` is set);
3. the call with index 0, on every run of its body, SIGKILLs its own process
   here when ``crash_first_call`` is set (a message that crashes whatever process
   runs it), and waits ``hold_s`` seconds here, inside the transaction (the
   client doing other work between INSERT and COMMIT): the window a hard
   ``--time-limit`` ends;
4. bumps the one row of ``hot`` under a ``lock_timeout`` of ``lock_timeout_s``.
   Every call bumps the same row, so a transaction left open holds up every
   other call, at most that long (SQLSTATE 55P03 then); then announces the
   point ``inserted`` (the row is written, the lock held, nothing committed):
   a ``kill-child`` or ``stop-child`` fault of the variant lands here;
5. commits, then announces the point ``committed`` (committed, not yet
   acknowledged or answered): the window in which a kill makes a late
   acknowledgement redeliver work that is already done;
6. counts the rows committed for its token: more than one raises
   :class:`DuplicateWrite`, the damage a redelivery can do turned into a failed call.

Knobs: those of :mod:`scenarios.apps.common`, plus
    acks_late: ``task_acks_late``: acknowledge the message after the body ran.
    reject_on_worker_lost: ``task_reject_on_worker_lost``: requeue the message of a
        call whose pool process died (with ``acks_late`` only).
    retry_on_worker_lost: ``task_retry_on_worker_lost`` (Celery >= 5.7): a call whose
        pool process died is retried like ``self.retry``, within ``max_retries`` (1).
    crash_first_call: the first call SIGKILLs its own process inside its transaction.
    idempotency_key: insert keyed by the call's token, ``ON CONFLICT DO NOTHING``.
    idle_in_transaction_timeout_ms: the sessions' ``idle_in_transaction_session_timeout``
        (a server setting, given at connection start): the server ends a session that
        stays idle inside a transaction this long.
    retry_on_db_error: retry a call once (countdown 0) when the database raises
        ``sqlalchemy.exc.DBAPIError`` (Celery's ``self.retry``).
    hold_s: seconds the call with index 0 waits inside its transaction.
    lock_timeout_s: ``SET LOCAL lock_timeout`` of the update of the shared row.
    max_attempts: body runs of one call after which the body refuses to run again.

Counters (``task_support.count``): ``body-ran`` (every run of the body),
``body-ran-again`` (a run of a call whose body had run before: a redelivery or a
retry), ``committed``, ``crashed-own-process``, ``hold-cancelled`` (the first call's wait
inside its transaction was cancelled: the client rolled back), ``retried-<class>`` (a retry after that database error),
``db-error-<class>`` (the body raised that database error; the driver's class).
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from harness.faults.cues import reach
from harness.knobs import Knob
from harness.task_support import call_index, count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine
from scenarios.apps.redelivery import (
    KEYED_INSERT,
    PLAIN_INSERT,
    ROWS_OF_CALL,
    DuplicateWrite,
    RedeliveryLoop,
)

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("acks_late", bool, False, "task_acks_late: acknowledge after the body ran"),
    Knob("reject_on_worker_lost", bool, False,
         "task_reject_on_worker_lost: requeue a call whose pool process died"),
    Knob("retry_on_worker_lost", bool, False,
         "task_retry_on_worker_lost (Celery >= 5.7): retry a lost call within max_retries"),
    Knob("crash_first_call", bool, False,
         "the first call SIGKILLs its own process inside its transaction, on every run"),
    Knob("idempotency_key", bool, False,
         "insert keyed by the call's token with ON CONFLICT DO NOTHING"),
    Knob("idle_in_transaction_timeout_ms", int, None,
         "idle_in_transaction_session_timeout of every session (ms)"),
    Knob("retry_on_db_error", bool, False, "retry once (countdown 0) on DBAPIError"),
    Knob("hold_s", (int, float), 0, "seconds call 0 waits inside its transaction"),
    Knob("lock_timeout_s", (int, float), 5, "lock_timeout of the update of the shared row"),
    Knob("max_attempts", int, 3, "body runs of one call after which it refuses to run"),
)
app = make_app(__name__)
# Celery's defaults are what make_app sets (early ack, no requeue); a variant may
# turn on the redelivery settings under test.
app.conf.update(task_acks_late=SETTINGS.get("acks_late"),
                task_reject_on_worker_lost=SETTINGS.get("reject_on_worker_lost"),
                task_retry_on_worker_lost=SETTINGS.get("retry_on_worker_lost"))
IDEMPOTENT: bool = SETTINGS.get("idempotency_key")
HOLD_S: float = float(SETTINGS.get("hold_s"))
CRASH_FIRST_CALL: bool = SETTINGS.get("crash_first_call")
LOCK_TIMEOUT_S: float = float(SETTINGS.get("lock_timeout_s"))
MAX_ATTEMPTS: int = SETTINGS.get("max_attempts")
RUNNER = LoopRunner(SETTINGS.get("loop"))
_engine: AsyncEngine | None = None


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global _engine
    _engine = make_engine(SETTINGS, connect_args_over=timeout_connect_args())
    RUNNER.after_fork()


def engine() -> AsyncEngine:
    assert _engine is not None, "worker_process_init did not run in this process"
    return _engine


def timeout_connect_args() -> dict[str, Any]:
    """Driver arguments that set ``idle_in_transaction_session_timeout`` at connection start
    (asyncpg: ``server_settings``; psycopg: libpq's ``options``)."""
    timeout_ms = SETTINGS.get("idle_in_transaction_timeout_ms")
    if timeout_ms is None:
        return {}
    if SETTINGS.driver == "asyncpg":
        return {"server_settings": {"idle_in_transaction_session_timeout": str(timeout_ms)}}
    return {"options": f"-c idle_in_transaction_session_timeout={timeout_ms}"}


async def record_attempt(token: str) -> int:
    """Commit this run's attempt on its own; how many runs this call's body has had."""
    async with engine().begin() as conn:
        await conn.execute(text("insert into attempts (token, pid) values (:t, pg_backend_pid())"),
                           {"t": token})
        return (await conn.execute(text("select count(*) from attempts where token = :t"),
                                   {"t": token})).scalar_one()


async def write_row(token: str) -> str:
    """One run of the body (see the module docstring for its steps)."""
    attempt = await record_attempt(token)
    if attempt > 1:
        count(app, "body-ran-again")
    if attempt > MAX_ATTEMPTS:
        raise RedeliveryLoop(f"call {token}: its body has run {attempt - 1} times already; "
                             f"its message keeps coming back")
    async with AsyncSession(engine()) as session:
        async with session.begin():
            await session.execute(text(KEYED_INSERT if IDEMPOTENT else PLAIN_INSERT),
                                  {"t": token})
            if call_index(token) == 0:
                # Before the shared row is locked: the other calls do not wait for it
                # (they have a hard time limit of their own).
                await first_call_trouble()
            await session.execute(text(f"set local lock_timeout = '{LOCK_TIMEOUT_S:g}s'"))
            await session.execute(text("update hot set n = n + 1 where id = 1"))
            reach(app, "inserted")
        count(app, "committed")
        reach(app, "committed")
        rows = (await session.execute(text(ROWS_OF_CALL),
                                      {"t": token})).scalar_one()
    if rows > 1:
        raise DuplicateWrite(f"call {token}: {rows} rows committed for one call")
    return token


async def first_call_trouble() -> None:
    """What the first call meets inside its transaction, every time its body runs."""
    if CRASH_FIRST_CALL:
        # A message that kills its process on every run (the OOM killer on a huge
        # payload, a segfault in a C extension): here a SIGKILL of its own process.
        count(app, "crashed-own-process")
        os.kill(os.getpid(), signal.SIGKILL)
    if HOLD_S:
        try:
            await asyncio.sleep(HOLD_S)
        except asyncio.CancelledError:
            # asyncio.run() cancels the task on its way out of an exception (the hard
            # time limit's SystemExit): session.begin() then rolls back from the client.
            count(app, "hold-cancelled")
            raise


def innermost(exc: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrapper (asyncpg's is two causes down)."""
    found: BaseException = getattr(exc, "orig", None) or exc
    while found.__cause__ is not None:
        found = found.__cause__
    return found


# default_retry_delay=0: task_retry_on_worker_lost sends its retry with the task's
# default_retry_delay (celery/worker/request.py, _retry_worker_lost), 180 s by default.
@app.task(bind=True, max_retries=1, default_retry_delay=0)
def write_token(self: Any, token: str) -> str:
    """Write the call's row once; the faults of the variant land inside the body."""
    count(app, "body-ran")
    try:
        return RUNNER.run(write_row(token))
    except DBAPIError as exc:
        name = type(innermost(exc)).__name__
        count(app, f"db-error-{name}")
        if SETTINGS.get("retry_on_db_error") and self.request.retries < 1:
            count(app, f"retried-{name}")
            raise self.retry(exc=exc, countdown=0) from exc
        raise
