"""soft-time-limit: Celery's soft time limit interrupts a task mid-await inside ``session.begin()``.

Symptom
    A task runs a long query inside ``async with session.begin():`` and Celery's
    ``--soft-time-limit`` fires. Celery reports the task FAILED
    (``SoftTimeLimitExceeded``). What becomes of its transaction depends on how
    the task drives its event loop: with ``asyncio.run()`` per task it is rolled
    back; with one long-lived loop per process it is left open, holding its row
    locks, and is COMMITTED later, while the process runs another task.

Cause
    The soft limit is a signal: billiard's pool sends SIGUSR1 to the pool process
    and its handler raises ``SoftTimeLimitExceeded`` (billiard/pool.py,
    ``soft_timeout_sighandler``) in the main thread, wherever Python is. While a
    query runs, the loop sits in ``epoll``, so the exception starts in
    ``selectors.select`` inside ``BaseEventLoop._run_once`` (the counter
    ``soft-limit-raised-in-selectors`` shows it), NOT inside the coroutine. It
    unwinds ``run_forever`` and ``run_until_complete``; the task running the
    coroutine is untouched and stays suspended at its await.

    * ``asyncio.run()`` then cancels every task left on its loop before closing
      it (asyncio/runners.py, ``Runner.close`` -> ``_cancel_all_tasks``): the
      coroutine gets ``CancelledError`` at its query, the driver cancels the
      query on the server (asyncpg sends a cancel request; psycopg since 3.1 does
      the same, psycopg/psycopg#543), ``session.begin()``'s ``__aexit__`` rolls
      back, and only then does ``SoftTimeLimitExceeded`` leave ``asyncio.run()``.
    * ``loop.run_until_complete()`` on a loop the process keeps does no such
      cleanup. The suspended coroutine keeps its connection and its transaction
      (its row locks too) and resumes as soon as a later task runs the loop
      again; it then finishes its query and commits.

    The "fast" calls of this workload lock ``tallies`` in a mode that waits for
    every open slow transaction, then look for rows of slow calls: finding one
    committed raises ``TimedOutWorkCommitted`` (signature
    ``timed-out-work-committed``). That turns the damage a user cares about (a
    write that stands although Celery reported its task failed, so a retry writes
    it twice) into a task failure; a transaction left open past the fast calls'
    ``lock_timeout`` fails them with SQLSTATE 55P03 (``lock-timeout``). The slow
    calls' own ``SoftTimeLimitExceeded`` is the premise, not the failure: they
    answer with their token once the task is done with the exception (see the
    app module).

The article's claim
    "If this interrupts an await session.execute() call, the async with
    session.begin(): context manager's __aexit__ may not run, leaving the
    connection in an indeterminate state. With NullPool, the underlying TCP
    connection is simply abandoned and eventually cleaned up by the OS. Wrap the
    outermost asyncio.run() in a try/except SoftTimeLimitExceeded block that
    explicitly calls asyncio.run(session.close())". It also calls
    ``SoftTimeLimitExceeded`` "a BaseException subclass": it is an ``Exception``
    (``billiard.exceptions.SoftTimeLimitExceeded``, re-exported by ``celery.exceptions``).

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg 3.3.9,
Python 3.11.7, PostgreSQL 15)
    * ``asyncio.run()`` per task, NullPool (the article's own setup): CLEAN on
      both drivers. ``__aexit__`` does run (with ``CancelledError``), the slow
      query is cancelled on the server, nothing is committed, no session is left
      "idle in transaction", and the connection is closed, not abandoned. The
      claim does not hold for the setup it is written for.
    * Rarely, on psycopg, the signal lands in psycopg's own wait loop instead
      (``psycopg/waiting.py`` ``wait_async`` wakes every 0.1 s during a query; the
      frame above the handler was ``asyncio/selector_events.py`` ``remove_reader``,
      called from it). psycopg cancels its query only on ``CancelledError``,
      ``KeyboardInterrupt`` or ``SystemExit`` (``AsyncConnection.wait``,
      ``_INTERRUPTED``), so the connection stays busy and the rollback of
      ``session.begin()`` fails with "sending query failed: another command is
      already in progress" (``psycopg-another-command``): the call ends with that
      ``OperationalError``, its context the ``SoftTimeLimitExceeded``, and a handler
      for the time limit does not see it. Here the article's "indeterminate state"
      is real. NullPool discards the connection and nothing is committed. Seen in 1
      of 234 interrupted psycopg calls of the ``run-per-task-*`` variants over 117
      runs (Python 3.13, psycopg 3.3.9, a loaded machine, the cold default matrix;
      ``run-per-task-nullpool`` read OTHER_FAILURE there, it reads REPRODUCED
      ``psycopg-another-command`` now); 232 landed in ``selectors`` and one in
      ``asyncio.base_events``, both harmless. The expectation stays CLEAN, what
      nearly every run shows, so the rare case shows as a moved cell with its
      cause named. Not seen on asyncpg, which does not wake during a query.
    * ``asyncio.run()`` per task, default pool: psycopg CLEAN (the rolled-back
      connection goes back to the pool and works). asyncpg fails, but with
      loop-bound-pool's failure (``future-other-loop``, then
      ``asyncpg-another-operation``), not the time limit's.
    * The article's fix with ``asyncio.run()`` per task: CLEAN, and redundant:
      ``asyncio.run()`` has already rolled back and closed the session.
    * One loop per process (default pool or NullPool): REPRODUCED
      ``timed-out-work-committed`` on both drivers. While the next calls wait,
      ``pg_stat_activity`` shows the interrupted transaction "active" (its query
      still runs); when the query ends the next task's loop resumes the coroutine
      and it COMMITS. Both slow calls' rows end up committed. NullPool changes
      nothing: the connection is not abandoned, it is still in use.
    * The article's fix with one loop per process (``asyncio.run(session.close())``
      on a new loop while the interrupted coroutine still owns the connection):
      asyncpg raises "another operation is in progress" at once, after
      SQLAlchemy has dropped the session's transaction; when the old coroutine
      resumes, its commit hits ``assert stx is not None`` (AssertionError, logged
      as "Task exception was never retrieved"), its connection is never checked
      in, the server session stays "idle in transaction" holding its locks until
      the garbage collector terminates the connection, and the next calls fail
      with ``lock-timeout``. psycopg waits forever for the connection's
      ``asyncio.Lock``, which the suspended coroutine holds on the other loop,
      until the hard time limit SIGTERMs the process (``hard-time-limit-sigterm``,
      or ``hard-time-limit`` when the harness reads the parent's record first).
    * What works with a long-lived loop: on ``SoftTimeLimitExceeded``, cancel the
      interrupted task and run the loop until it has finished (what
      ``asyncio.run()`` does on its way out): CLEAN on both drivers.

Sources
    Celery user guide, "Workers: Time limits" (the soft limit raises an exception
    "the task can catch to clean up before the hard time limit kills it");
    billiard/pool.py ``soft_timeout_sighandler`` and ``_on_hard_timeout``;
    Python docs, ``asyncio.run`` / ``asyncio.Runner`` (remaining tasks are
    cancelled on close); psycopg/psycopg#543 (AsyncConnection cancels the server
    query when its task is cancelled); psycopg ``AsyncConnection.rollback``
    (``async with self.lock``); asyncpg ``Connection._cancel_current_command``.
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.scenario import Claim, Role, Scenario, Variant, Workload, clean, reproduces
from harness.signatures import Signature

# 8 calls on 2 processes: calls 0 and 1 are slow, one per process (with fair
# scheduling an idle process takes each call, and each slow call keeps its
# process busy until the soft limit). The 4 s soft limit sits between the slow
# query's start and its end (pg_sleep 5 s); a fast call waits at most 3 s for
# a slow call's transaction (lock_timeout), well inside its own soft limit.
# The 12 s hard limit bounds a task that hangs in its cleanup.
WORKLOAD = Workload(task="write_token", calls=8, concurrency=2, timeout_s=90.0,
                    worker_args=("--soft-time-limit=4", "--time-limit=12"))

PER_PROCESS_LOOP = {"loop": "per-process"}

# This scenario's own check, raised by its app (not a library error): declared here.
TIMED_OUT_WORK_COMMITTED = Signature(
    "timed-out-work-committed", "scenarios.apps.soft_time_limit.TimedOutWorkCommitted",
    description="A later call found rows committed by calls that Celery's soft time limit "
                "had interrupted: the interrupted coroutine was resumed and committed.")

SCENARIO = Scenario(
    id="soft-time-limit",
    app="scenarios.apps.soft_time_limit",
    workload=WORKLOAD,
    signatures=(TIMED_OUT_WORK_COMMITTED, sig.LOCK_TIMEOUT, sig.HARD_TIME_LIMIT,
                sig.HARD_TIME_LIMIT_SIGTERM, sig.FUTURE_OTHER_LOOP,
                sig.ASYNCPG_ANOTHER_OPERATION, sig.PSYCOPG_ANOTHER_COMMAND),
    claim=Claim(
        error="(none quoted: 'leaving the connection in an indeterminate state')",
        fix="Wrap the outermost asyncio.run() in a try/except SoftTimeLimitExceeded block "
            "that explicitly calls asyncio.run(session.close())",
        signature=None, bad="run-per-task-nullpool", fixed="run-per-task-close-session"),
    setup_sql=("create table calls (token text primary key, slow boolean not null)",
               "create table tallies (id integer primary key, n integer not null)",
               "insert into tallies select g, 0 from generate_series(0, 7) g"),
    # Which calls' rows are committed (slow ones must not be), and what is still
    # connected when the calls are done.
    inspect_sql={
        "committed_by_slow": "select slow, count(*) from calls group by slow order by slow",
        "activity": "select state, left(query, 60) from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid()",
    },
    variants=(
        Variant("run-per-task-nullpool", Role.BAD, {"pool": "null"}, expect=clean()),
        Variant("run-per-task-default-pool", Role.BAD, {"pool": "default"},
                expect={"asyncpg": reproduces(
                            "future-other-loop", "asyncpg-another-operation",
                            why="asyncpg binds pooled connections to their first loop "
                                "(see loop-bound-pool); the time limit is not the cause"),
                        "psycopg": clean()}),
        Variant("run-per-task-close-session", Role.ARTICLE_FIX,
                {"pool": "null", "on_soft_limit": "close-session"}, expect=clean()),
        Variant("loop-per-process", Role.BAD, {"pool": "default", **PER_PROCESS_LOOP},
                expect=reproduces("timed-out-work-committed")),
        Variant("loop-per-process-nullpool", Role.BAD, {"pool": "null", **PER_PROCESS_LOOP},
                expect=reproduces("timed-out-work-committed")),
        Variant("loop-per-process-close-session", Role.ARTICLE_FIX,
                {"pool": "default", "on_soft_limit": "close-session", **PER_PROCESS_LOOP},
                expect={"asyncpg": reproduces("lock-timeout"),
                        "psycopg": reproduces("hard-time-limit-sigterm", "hard-time-limit")}),
        Variant("loop-per-process-cancel-task", Role.FIX,
                {"pool": "default", "on_soft_limit": "cancel-task", **PER_PROCESS_LOOP},
                expect=clean()),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
