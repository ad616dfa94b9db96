"""killed-child-mid-transaction: a pool process dies (or stops) inside an open transaction.

Symptom
    A prefork pool process is SIGKILLed (the OOM killer, a container limit, an
    operator) after its task's INSERT and before its COMMIT; or Celery's hard
    ``time_limit`` ends it there; or it is SIGSTOPped (a frozen container, a
    debugger, a paused VM) while its transaction holds a row lock. What does
    Celery report, what becomes of the row, the server session and its locks,
    and what do the usual remedies (late acknowledgement, redelivery, an
    idempotency key, a server-side timeout) really do?

Cause
    * SIGKILL: the process gets no chance to run any Python, so neither
      ``session.begin()``'s ``__aexit__`` nor Celery's result handling runs. The
      kernel closes its sockets; PostgreSQL, waiting for the client's next
      message, reads EOF, aborts the transaction and ends the session, which
      frees its row locks. The parent process sees the child exit and fails the
      call with ``WorkerLostError`` (billiard ``mark_as_worker_lost``); with
      Celery's defaults the message was acknowledged when the call started
      (early ack), so the call is lost.
    * ``task_acks_late`` + ``task_reject_on_worker_lost``: the parent rejects the
      message with requeue (celery/worker/request.py, ``on_failure``), the broker
      delivers it again and the body runs again. Nothing counts the deliveries
      (Redis has no redelivery count; Celery requeues "regardless of the
      redelivered flag" since celery/celery#6103), so a message that kills every
      process that runs it comes back for ever: the docs' "message loops".
    * A kill AFTER the COMMIT and before the late acknowledgement redelivers work
      that is already done: the second run writes the row again, unless the
      write is idempotent (keyed by the call, ``ON CONFLICT DO NOTHING``).
    * The hard time limit: billiard's parent sets ``TimeLimitExceeded`` on the
      job, then SIGTERMs the child (``_on_hard_timeout``, ``_trywaitkill``). The
      child's SIGTERM handler raises ``SystemExit(-241)`` where Python is: in the
      event loop's ``select`` (the task awaits inside its transaction), so
      ``asyncio.run()`` cancels the task on its way out and ``session.begin()``
      rolls back from the client (counter ``hold-cancelled``). A timed-out call
      is acknowledged even with ``acks_late`` (``task_acks_on_timeout`` falls
      back to ``acks_on_failure_or_timeout``, True): it is not redelivered.
    * SIGSTOP: the process, its socket and its transaction stay; the server sees
      an idle session "idle in transaction" holding its locks, and every other
      call that needs the row waits. ``lock_timeout`` bounds the waiters (SQLSTATE
      55P03); ``idle_in_transaction_session_timeout`` ends the stopped session
      instead (SQLSTATE 25P03, sent to a client that only reads it when it
      resumes), which frees the lock.

    The task turns the damage the harness could not otherwise see into failed
    calls: a call that finds its row committed twice raises ``DuplicateWrite``
    (``duplicate-write``); a call whose body has already run 3 times refuses to
    run again, ``RedeliveryLoop`` (``redelivery-loop``), so a loop becomes a
    failed call instead of a hung batch. Every call bumps one shared row with
    ``lock_timeout`` 5 s, so a session left holding its lock shows as
    ``lock-timeout``. Each body run is recorded in ``attempts`` in a
    transaction of its own (``runs_per_call`` in the inspection).

The claim tested (not from the article: Celery's documentation)
    With Celery's defaults a killed pool process loses its call
    (``WorkerLostError``); ``task_acks_late`` with ``task_reject_on_worker_lost``
    requeues it "so that the task will execute again by the same worker, or
    another worker", with the warning "Enabling this can cause message loops;
    make sure you know what you're doing" (``Task.reject_on_worker_lost``). The
    maintainers' reason for acknowledging lost calls by default: "or you're
    likely to end up with a high frequency loop bringing down the worker"
    (celery/celery#3053); ``task_acks_late`` needs idempotent tasks (Celery
    user guide, "Tasks: Idempotence"). SQLAlchemy's part is only that a
    transaction that is never committed is rolled back by the server.

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, billiard 4.3.2, asyncpg 0.32.0,
psycopg 3.3.9, Python 3.11.7, PostgreSQL 15, PgBouncer 1.18; NullPool, ``asyncio.run``
per call, 4 calls on 2 processes; local backend, and the same outcome words on the docker
backend with PostgreSQL 15.20; counts vary little, outcome words not at all over 5 runs)
    * Defaults, SIGKILL between INSERT and COMMIT: REPRODUCED ``pool-process-lost``
      on both drivers (``WorkerLostError: Worker exited prematurely: signal 9
      (SIGKILL)``), 1 of 4 calls lost. Its row is not committed (3 rows for 3
      calls), no session of the run's database is left, and no other call hit
      the 5 s ``lock_timeout`` on the killed transaction's row lock: PostgreSQL
      ended the session when the socket died. Behind PgBouncer: the same; PgBouncer drops
      the server connection of a client that vanished mid-transaction (the one
      session left is its idle server connection, last query ``ROLLBACK``).
    * acks-late (+ reject_on_worker_lost): CLEAN on both drivers, direct and
      behind PgBouncer. The killed call ran twice (``runs_per_call`` [2, 1]),
      4 rows for 4 calls: no duplicate, because the first run never committed.
      The one-shot fault does not loop: the second run passes the point.
      On asyncpg < 0.31 behind PgBouncer 1.18 the second run fails with "prepared
      statement __asyncpg_stmt_1__ already exists" (``prepared-statement-exists``,
      observed on 0.30.0): that asyncpg names its statements whatever the name
      function says, and the new process meets a server connection the killed
      one prepared on. PgBouncer 1.24.1 (tracking prepared statements by default)
      makes the same cell CLEAN on 0.30.0: seen only in a pairwise run, where
      both changed axes meet.
    * idempotency key with acks-late: CLEAN, the same as acks-late; the key has
      nothing to do when the kill comes before COMMIT.
    * Celery 5.7's ``task_retry_on_worker_lost`` (early ack, ``max_retries=1``):
      CLEAN, the killed call is retried once as ``self.retry`` would.
    * acks-late, SIGKILL after COMMIT: REPRODUCED ``duplicate-write`` on both
      drivers: 5 rows for 4 calls. With the idempotency key: CLEAN, 4 rows, the
      second run's INSERT did nothing. This, not the kill between INSERT and
      COMMIT, is where late acknowledgement needs the key.
    * A call that kills its process on every run, acks-late: REPRODUCED
      ``redelivery-loop``: its body ran 4 times (3 crashes, then the task's own
      check refused), every time a new pool process. Nothing in Celery stops it.
      With ``task_retry_on_worker_lost``: REPRODUCED ``pool-process-lost`` after
      2 runs: the loop is bounded by ``max_retries`` and the call is reported
      lost, which is the most a poison message can get.
    * Hard time limit (2 s) on a call waiting inside its transaction: REPRODUCED
      ``hard-time-limit-sigterm`` (the child's ``SystemExit(-241)`` is recorded
      before the parent's ``TimeLimitExceeded``; either may be first) on both
      drivers; the row is rolled back from the client (``hold-cancelled``), no
      session is left. With acks-late: the same, and the call is NOT
      redelivered (1 run).
    * SIGSTOP holding the row lock, no server timeout: REPRODUCED
      ``lock-timeout``: 2 of the 3 other calls wait 5 s each and fail; the third
      gets the lock when the process is continued (11 s), and the stopped call
      then commits as if nothing happened.
    * ``idle_in_transaction_session_timeout=1s``: the server ends the stopped
      session after 1 s and the other 3 calls succeed; the stopped call, once
      continued, fails at its COMMIT: REPRODUCED ``idle-in-transaction-timeout``
      (psycopg: ``IdleInTransactionSessionTimeout``; asyncpg:
      ``ConnectionDoesNotExistError`` "connection was closed in the middle of
      operation" caused by ``IdleInTransactionSessionTimeoutError``), its row
      not written. It fixes the waiters, and moves the failure to the call that
      was stopped. With a retry on ``DBAPIError`` as well: CLEAN, the stopped call
      writes its row on its second run.

Fix
    Let PostgreSQL's own rollback do its job (it does, at once, direct or behind
    PgBouncer) and choose what happens to the call: with early ack it is lost and
    reported; ``task_acks_late`` + ``task_reject_on_worker_lost`` reruns it,
    which needs an idempotent write (a key, ``ON CONFLICT DO NOTHING``) and a
    bound on redeliveries, which Celery does not give (``task_retry_on_worker_lost``
    with ``max_retries`` from Celery 5.7, or a count of attempts kept by the task).
    For a process that may stop while holding locks, set
    ``idle_in_transaction_session_timeout`` (and ``lock_timeout`` on the waiters)
    and retry the call that loses its session.

Sources
    Celery docs: configuration ``task_acks_late``, ``task_reject_on_worker_lost``
    (the warning about message loops), user guide "Tasks: Idempotence";
    celery/worker/request.py ``on_failure`` and ``_retry_worker_lost``
    (Celery 5.7.0); celery/celery#1628 (WorkerLostError acknowledged with acks
    late), #3053 (why lost calls are acknowledged), #6103 (requeue regardless of
    the redelivered flag), discussion #8969 (no bounded requeue; OOM loops);
    billiard/pool.py ``_on_hard_timeout``, ``_trywaitkill``; PostgreSQL docs,
    ``idle_in_transaction_session_timeout``, ``lock_timeout``.
"""

from dataclasses import replace

from harness import signatures as sig
from harness.faults.plan import Fault, at_point
from harness.plugin import assert_expected
from harness.scenario import (
    Claim,
    Requirement,
    Role,
    Scenario,
    StackSpec,
    Variant,
    Workload,
    before_package,
    clean,
    needs,
    package,
    reproduces,
)
from harness.signatures import Signature
from scenarios.pgbouncer_rules import before_tracking_default
from scenarios.redelivery_rules import DUPLICATE_WRITE, REDELIVERY_LOOP, WRITES_TABLE

# 4 calls on 2 processes; every fault lands on the first call to reach its point
# (the fault fires once, so a redelivered call passes the point). The stopped
# process is continued after 11 s: the other calls wait 5 s each for its row lock
# (lock_timeout), so two of them fail before it resumes and one gets the lock.
# The 2 s hard time limit ends the first call's 30 s wait inside its transaction.
BASE = Workload(task="write_token", calls=4, concurrency=2, timeout_s=60.0)
KILLED_MID_TRANSACTION = replace(BASE, faults=(Fault("kill-child", at_point("inserted")),))
KILLED_AFTER_COMMIT = replace(BASE, faults=(Fault("kill-child", at_point("committed")),))
HARD_TIME_LIMIT = replace(BASE, worker_args=("--time-limit=2",))
STOPPED = replace(BASE, faults=(Fault("stop-child", at_point("inserted"), heal_after_s=11),))

NULLPOOL = {"pool": "null"}
ACKS_LATE = {"acks_late": True, "reject_on_worker_lost": True}
PGBOUNCER_ASYNCPG = {"uuid_statement_names": True}
HOLD = {"hold_s": 30}
RETRY_ON_LOST = {"retry_on_worker_lost": True}
CRASH = {"crash_first_call": True}
IDLE_TIMEOUT = {"idle_in_transaction_timeout_ms": 1000}


# Observed in the default matrix (2026-11-30): asyncpg 0.30.0 against 0.32.0, 0.31
# unobserved. On 0.30 the connection error of a session the server ended carries no
# cause, so the SQLSTATE 25P03 that names the timeout is not in the chain.
NO_CAUSE_BEFORE_031 = ("asyncpg < 0.31 reports the ended session as 'connection was closed "
                       "in the middle of operation' without the server's "
                       "IdleInTransactionSessionTimeoutError as its cause (observed on 0.30.0)")
# The redelivered call's new process meets a server connection the killed one left
# with __asyncpg_stmt_1__ prepared: asyncpg < 0.31 names it whatever the name function
# says (observed on 0.30.0 behind PgBouncer 1.18; see pgbouncer-prepared-asyncpg).
# PgBouncer >= 1.24 tracks prepared statements per client and renames them on the
# server, so nothing collides: CLEAN on asyncpg 0.30.0 behind PgBouncer 1.24.1 (pairwise
# run of the default axes, 2026-11-30, docs/matrix/runs/pairwise-default-axes.json).
NAMED_BEFORE_031 = ("asyncpg < 0.31 names its statements __asyncpg_stmt_N__ whatever the "
                    "name function says; behind PgBouncer the redelivered call meets one "
                    "(observed on 0.30.0)")


def needs_celery(minimum: str, feature: str) -> Requirement:
    """A ``Variant.requires`` check: n/a unless Celery >= ``minimum`` is installed."""
    return needs(package("celery") >= minimum, f"{feature} needs Celery >= {minimum}")


POOL_PROCESS_LOST = Signature(
    "pool-process-lost", "billiard.exceptions.WorkerLostError",
    description="Celery reports the call failed because the pool process running it died "
                "(WorkerLostError: 'Worker exited prematurely').")
IDLE_IN_TRANSACTION_TIMEOUT = Signature(
    "idle-in-transaction-timeout", "Exception", sqlstate="25P03",
    description="The server ended a session that sat idle inside its transaction longer than "
                "idle_in_transaction_session_timeout; the call failed at its next statement.")

SCENARIO = Scenario(
    id="killed-child-mid-transaction",
    app="scenarios.apps.killed_child_mid_transaction",
    workload=KILLED_MID_TRANSACTION,
    signatures=(POOL_PROCESS_LOST, DUPLICATE_WRITE, REDELIVERY_LOOP, IDLE_IN_TRANSACTION_TIMEOUT,
                sig.LOCK_TIMEOUT, sig.HARD_TIME_LIMIT, sig.HARD_TIME_LIMIT_SIGTERM,
                sig.ASYNCPG_CONNECTION_LOST, sig.PREPARED_STATEMENT_EXISTS),
    claim=Claim(
        error="WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL)')",
        fix="task_acks_late=True with task_reject_on_worker_lost=True: the message is "
            "re-queued so that the task will execute again (Celery docs; 'Enabling this "
            "can cause message loops')",
        signature="pool-process-lost", bad="defaults", fixed="acks-late",
        source="Celery's documentation"),
    setup_sql=(
        WRITES_TABLE,
        ("create table attempts (id bigserial primary key, token text not null, "
         "pid integer not null)"),
        "create table hot (id integer primary key, n integer not null)",
        "insert into hot values (1, 0)",
    ),
    # Rows committed (and for how many calls), body runs per call, the shared row's
    # count, and what is still connected when the calls are done.
    inspect_sql={
        "writes": "select count(*), count(distinct token) from writes",
        "runs_per_call": "select runs, count(*) from (select count(*) runs from attempts "
                         "group by token) a group by runs order by runs",
        "hot": "select n from hot",
        "activity": "select state, left(query, 60) from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid()",
    },
    variants=(
        # SIGKILL between INSERT and COMMIT.
        Variant("defaults", Role.BAD, NULLPOOL, expect=reproduces("pool-process-lost"),
                description="Celery's defaults (early ack): the killed call is lost."),
        Variant("acks-late", Role.FIX, {**NULLPOOL, **ACKS_LATE}, expect=clean(),
                description="task_acks_late + task_reject_on_worker_lost: the killed call "
                            "runs again."),
        Variant("idempotency-key", Role.FIX,
                {**NULLPOOL, **ACKS_LATE, "idempotency_key": True}, expect=clean(),
                description="acks-late with an INSERT keyed by the call's token."),
        Variant("retry-on-worker-lost", Role.FIX, {**NULLPOOL, **RETRY_ON_LOST},
                requires=needs_celery("5.7", "task_retry_on_worker_lost"), expect=clean(),
                description="Celery 5.7's task_retry_on_worker_lost (max_retries=1), early ack."),
        # SIGKILL after COMMIT, before the late acknowledgement.
        Variant("acks-late-killed-after-commit", Role.BAD, {**NULLPOOL, **ACKS_LATE},
                workload=KILLED_AFTER_COMMIT, expect=reproduces("duplicate-write"),
                description="acks-late, killed after COMMIT: the redelivered call writes again."),
        Variant("idempotency-key-killed-after-commit", Role.FIX,
                {**NULLPOOL, **ACKS_LATE, "idempotency_key": True},
                workload=KILLED_AFTER_COMMIT, expect=clean(),
                description="The same with the keyed INSERT: the second run writes nothing."),
        # A message that kills whatever process runs it, on every run.
        Variant("poison-acks-late", Role.BAD, {**NULLPOOL, **ACKS_LATE, **CRASH},
                workload=BASE, expect=reproduces("redelivery-loop"),
                description="acks-late and a call that crashes its process on every run."),
        Variant("poison-retry-on-worker-lost", Role.FIX, {**NULLPOOL, **RETRY_ON_LOST, **CRASH},
                workload=BASE, requires=needs_celery("5.7", "task_retry_on_worker_lost"),
                expect=reproduces("pool-process-lost"),
                description="The same call with task_retry_on_worker_lost: retried once, "
                            "then reported lost."),
        # The hard time limit ends the call between INSERT and COMMIT.
        Variant("hard-time-limit", Role.BAD, {**NULLPOOL, **HOLD}, workload=HARD_TIME_LIMIT,
                expect=reproduces("hard-time-limit-sigterm", "hard-time-limit"),
                description="--time-limit=2 ends a call that waits inside its transaction."),
        Variant("hard-time-limit-acks-late", Role.BAD, {**NULLPOOL, **HOLD, **ACKS_LATE},
                workload=HARD_TIME_LIMIT,
                expect=reproduces("hard-time-limit-sigterm", "hard-time-limit"),
                description="The same with acks-late: a timed-out call is acknowledged, "
                            "not redelivered."),
        # SIGSTOP while the transaction holds the shared row's lock.
        Variant("stopped-child", Role.BAD, NULLPOOL, workload=STOPPED,
                expect=reproduces("lock-timeout"),
                description="A stopped process holds a row lock; the other calls wait on it."),
        Variant("stopped-child-idle-timeout", Role.PARTIAL_FIX, {**NULLPOOL, **IDLE_TIMEOUT},
                workload=STOPPED, expect={
                    "asyncpg": before_package(
                        "asyncpg", "0.31", reproduces("asyncpg-connection-lost"),
                        reproduces("idle-in-transaction-timeout"), why=NO_CAUSE_BEFORE_031),
                    "psycopg": reproduces("idle-in-transaction-timeout")},
                description="idle_in_transaction_session_timeout=1s: the server ends the "
                            "stopped session and frees its lock."),
        Variant("stopped-child-idle-timeout-retry", Role.FIX,
                {**NULLPOOL, **IDLE_TIMEOUT, "retry_on_db_error": True},
                workload=STOPPED, expect=clean(),
                description="The same, and the stopped call retries once on DBAPIError."),
        # Behind PgBouncer (transaction mode).
        Variant("defaults-pgbouncer", Role.BAD, {**NULLPOOL, **PGBOUNCER_ASYNCPG},
                stack=StackSpec(pgbouncer=True), expect=reproduces("pool-process-lost"),
                description="defaults, through PgBouncer in transaction mode."),
        Variant("acks-late-pgbouncer", Role.FIX, {**NULLPOOL, **ACKS_LATE, **PGBOUNCER_ASYNCPG},
                stack=StackSpec(pgbouncer=True), expect={
                    "asyncpg": before_package(
                        "asyncpg", "0.31",
                        before_tracking_default(reproduces("prepared-statement-exists",
                                                           why=NAMED_BEFORE_031)),
                        clean(), why=NAMED_BEFORE_031),
                    "psycopg": clean()},
                description="acks-late, through PgBouncer in transaction mode."),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
