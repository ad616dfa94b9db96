"""Worker side of scenarios/test_soft_time_limit.py.

One task, ``write_token``. Its body opens an ``AsyncSession`` and, inside
``async with session.begin():``, inserts the call's token into ``calls`` and
bumps a row of ``tallies`` (a counter, as real code keeps one). Then:

* a SLOW call (call index below ``slow_calls``) bumps only its own tally row,
  names its transaction (``SET LOCAL application_name = 'slow-call'``) and runs
  ``pg_sleep(slow_query_s)``, longer than the worker's ``--soft-time-limit``, so
  Celery's SIGUSR1 handler raises ``SoftTimeLimitExceeded`` while the event
  loop waits for that query;
* a FAST call notes the slow transactions still open (``pg_stat_activity``),
  then waits, at most ``lock_timeout_s``, until every slow call's transaction
  has ended (committed or rolled back): it locks ``tallies`` in SHARE ROW
  EXCLUSIVE mode, which conflicts with the lock each open UPDATE holds. Then it
  bumps every tally row and counts the slow calls' rows that are committed.
  Every slow call was interrupted, so none may be: if one is, the call raises
  :class:`TimedOutWorkCommitted`. That is the damage a user cares about (Celery
  reported the call failed, its write stands, a retry would write it twice),
  turned into a task failure so the outcome word shows it. A slow transaction
  still open after ``lock_timeout_s`` fails the call with SQLSTATE 55P03.

A slow call that really was interrupted answers with its token once the task
is done with the exception: the interruption is the scenario's premise, not its
failure (the ``soft-time-limit-hit`` counter says how many there were). A slow
call the soft limit did NOT interrupt raises :class:`SoftLimitNeverFired`, and
a fast call the soft limit interrupts lets ``SoftTimeLimitExceeded`` propagate,
so a workload that missed its premise cannot read as clean.

The engine is made after the fork (``worker_process_init``).

Knobs: those of :mod:`scenarios.apps.common`, plus
    loop: "per-task" (``asyncio.run`` per call) or "per-process" (one loop per
        process, driven with ``run_until_complete``).
    slow_calls: calls whose index is below this run the slow query (at most 8:
        the scenario's ``setup_sql`` makes 8 tally rows).
    slow_query_s: seconds of ``pg_sleep`` in a slow call.
    lock_timeout_s: a fast call's ``SET LOCAL lock_timeout``: how long it waits for
        the slow calls' transactions to end before it fails (SQLSTATE 55P03).
    on_soft_limit: what the task does when ``SoftTimeLimitExceeded`` reaches it:
        "nothing" (let it end the task, as most code does);
        "close-session": the article's fix, ``asyncio.run(session.close())``;
        "cancel-task": cancel the interrupted task and run the loop until it has
            finished (what ``asyncio.run`` itself does on its way out).

Counters (``task_support.count``): ``soft-time-limit-hit``; ``soft-limit-raised-in-
<module>`` (the module the signal interrupted, counted too for a call that failed
with another error raised while the limit unwound it); ``slow-query-cancelled`` (the
coroutine got ``CancelledError`` at its query); ``slow-call-committed`` (an
interrupted coroutine later ran to the end of its transaction);
``saw-slow-transaction-<state>`` (a fast call found a slow call's transaction
still open in ``pg_stat_activity``, in that state); ``close-session-failed-
<class>`` (the article's fix raised).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from billiard.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from harness.knobs import Knob
from harness.task_support import call_index, count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("slow_calls", int, 2, "how many calls run the slow query"),
    Knob("slow_query_s", (int, float), 5, "seconds the slow query sleeps on the server"),
    Knob("lock_timeout_s", (int, float), 3, "lock_timeout of the check after the slow calls"),
    Knob("on_soft_limit", str, "nothing", "what the task does on SoftTimeLimitExceeded",
         choices=("nothing", "close-session", "cancel-task")),
)
app = make_app(__name__)
logger = get_task_logger(__name__)
SLOW_CALLS: int = SETTINGS.get("slow_calls")
SLOW_QUERY_S: float = float(SETTINGS.get("slow_query_s"))
LOCK_TIMEOUT_S: float = float(SETTINGS.get("lock_timeout_s"))
ON_SOFT_LIMIT: str = SETTINGS.get("on_soft_limit")
SLOW_APPLICATION_NAME = "slow-call"
engine: AsyncEngine | None = None
RUNNER = LoopRunner(SETTINGS.get("loop"))


class TimedOutWorkCommitted(Exception):
    """A call found rows committed by calls that the soft time limit interrupted."""


class SoftLimitNeverFired(Exception):
    """A slow call finished its query: the soft time limit never interrupted it."""


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global engine
    engine = make_engine(SETTINGS)
    RUNNER.after_fork()


def is_slow(token: str) -> bool:
    """Does this call run the slow query (see the ``slow_calls`` knob)?"""
    return call_index(token) < SLOW_CALLS


async def write_row(token: str, sessions: list[AsyncSession]) -> str:
    """The call's transaction; ``sessions`` lets the task reach the session afterwards."""
    assert engine is not None, "worker_process_init did not run in this process"
    slow = is_slow(token)
    async with AsyncSession(engine) as session:
        sessions.append(session)
        async with session.begin():
            await session.execute(text("insert into calls (token, slow) values (:t, :s)"),
                                  {"t": token, "s": slow})
            if slow:
                await session.execute(
                    text(f"set local application_name = '{SLOW_APPLICATION_NAME}'"))
                await session.execute(text("update tallies set n = n + 1 where id = :i"),
                                      {"i": call_index(token)})
                await slow_query(session)
            else:
                await note_open_slow_transactions(session)
                await session.execute(text(f"set local lock_timeout = '{LOCK_TIMEOUT_S}s'"))
                # One lock wait for all slow calls: this mode conflicts with the ROW
                # EXCLUSIVE lock each open UPDATE holds (and with itself, so fast
                # calls take turns), so once granted, every slow transaction has
                # committed or rolled back. One wait, so lock_timeout bounds it all.
                await session.execute(text("lock table tallies in share row exclusive mode"))
                await session.execute(text("update tallies set n = n + 1"))
                committed = (await session.execute(
                    text("select count(*) from calls where slow"))).scalar_one()
                if committed:
                    raise TimedOutWorkCommitted(
                        f"{committed} row(s) written by calls that the soft time limit "
                        f"interrupted are committed")
        if slow:
            # Reached only when the slow query was not cancelled: the soft limit
            # never fired, or a later call's loop resumed the interrupted coroutine.
            count(app, "slow-call-committed")
    return token


async def slow_query(session: AsyncSession) -> None:
    """The query the soft time limit interrupts; notes whether it was cancelled."""
    try:
        await session.execute(text("select pg_sleep(:s)"), {"s": SLOW_QUERY_S})
    except asyncio.CancelledError:
        count(app, "slow-query-cancelled")
        raise


async def note_open_slow_transactions(session: AsyncSession) -> None:
    """Count the slow calls' transactions still open, by state (evidence, not a check)."""
    states = (await session.execute(
        text("select state from pg_stat_activity where datname = current_database() "
             "and application_name = :name"), {"name": SLOW_APPLICATION_NAME})).scalars()
    for state in states:
        count(app, f"saw-slow-transaction-{str(state).replace(' ', '-')}")


def interrupted_module(tb: TracebackType | None) -> str:
    """The module the signal interrupted: the frame just above Celery's signal handler."""
    frames: list[TracebackType] = []
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    if len(frames) < 2:
        return "unknown"
    return str(frames[-2].tb_frame.f_globals.get("__name__", "unknown"))


def soft_limit_behind(exc: BaseException) -> SoftTimeLimitExceeded | None:
    """The ``SoftTimeLimitExceeded`` an error was raised while handling, if any (through
    wrappers: SQLAlchemy's error has the driver's as its cause)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, SoftTimeLimitExceeded):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def run_on_loop(token: str, sessions: list[AsyncSession]) -> str:
    """Drive the call's coroutine on a new loop or on the process's loop (``loop`` knob)."""
    process_loop = RUNNER.loop
    if process_loop is None:
        return RUNNER.run(write_row(token, sessions))
    # On the process's loop the task is kept, so a cancel-task variant can cancel it.
    task = process_loop.create_task(write_row(token, sessions))
    try:
        return process_loop.run_until_complete(task)
    except SoftTimeLimitExceeded:
        if ON_SOFT_LIMIT == "cancel-task":
            task.cancel()
            # The cleanup asyncio.run() does on its way out (asyncio/runners.py,
            # _cancel_all_tasks): the coroutine sees CancelledError at its await.
            process_loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        raise


@app.task
def write_token(token: str) -> str:
    """Write the call's row; a slow call answers once the soft limit has interrupted it."""
    sessions: list[AsyncSession] = []
    try:
        answer = run_on_loop(token, sessions)
    except SoftTimeLimitExceeded as exc:
        count(app, "soft-time-limit-hit")
        count(app, f"soft-limit-raised-in-{interrupted_module(exc.__traceback__)}")
        if ON_SOFT_LIMIT == "close-session" and sessions:
            try:
                # The article: "explicitly calls asyncio.run(session.close())".
                asyncio.run(sessions[0].close())
            except Exception as close_exc:  # noqa: BLE001 - counted; the call goes on
                count(app, f"close-session-failed-{type(close_exc).__name__}")
                logger.warning("asyncio.run(session.close()) failed: %r", close_exc)
        if not is_slow(token):
            raise  # a fast call has no business reaching the soft limit
        # The interruption is a slow call's expected end (see the module docstring).
        return token
    except Exception as exc:
        # Another error raised while the soft limit unwound the call (its context):
        # the task fails with that one. Note where the signal landed, then let it out.
        limit = soft_limit_behind(exc)
        if limit is not None:
            count(app, f"soft-limit-raised-in-{interrupted_module(limit.__traceback__)}")
        raise
    if is_slow(token):
        raise SoftLimitNeverFired(f"slow call {token} finished pg_sleep({SLOW_QUERY_S}) "
                                  f"within the soft time limit")
    return answer
