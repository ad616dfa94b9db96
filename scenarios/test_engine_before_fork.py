"""engine-before-fork: a pooled connection the parent opened, inherited by every child.

Symptom
    A module-level engine (made when Celery imports the app, in the parent,
    before the prefork pool forks) works until the parent also uses it before
    the fork: a start-up check in ``worker_init``, a query at import. Then every
    child starts with that one pooled connection. With asyncpg every call fails,
    for good. With psycopg, calls fail with ``ResourceClosedError: This result
    object does not return rows``, return another call's answer, or never return.

Cause
    ``fork()`` copies the parent's memory, the pool with its idle connection
    included, and its socket: every child holds the same TCP connection to the
    same server session, and each child's pool hands it out as its own. An
    engine that was made but never connected holds no connection, so the fork
    alone is harmless: each child opens its own.

    * asyncpg, with a loop made in the child: the inherited connection is bound
      to the loop the parent's check ran on (``asyncio.run()`` closed it). Its
      first use in a child fails with ``future-other-loop`` and leaves it
      marked busy; the pool keeps it, so every later call fails with
      ``asyncpg-another-operation`` (asyncpg ``protocol.pyx`` keeps the connect
      loop). The fork is the cause; the loop binding (loop-bound-pool) is what shows.
    * psycopg (not loop-bound), and asyncpg when the parent's loop is inherited
      too: the children really share the socket. Two replies arrive on it and
      one child may read both: the other waits for good, the reader's next
      statement gets a stale reply (``result-without-rows``, or a WRONG token),
      psycopg counts results it did not expect (``psycopg-result-mismatch``),
      libpq refuses to send (``psycopg-another-command``), asyncpg receives a
      message it has no waiter for and drops the connection
      (``asyncpg-connection-lost``), the server session is in another child's
      transaction (``asyncpg-foreign-transaction``). Without overlap, the two
      children's asyncpg caches prepare the same ``__asyncpg_stmt_N__`` name on
      one session (``prepared-statement-exists``).

The article's claim
    The engine is created "at module import time, before Celery forks worker
    processes. asyncpg connections are not fork-safe", with "asyncpg.exceptions.
    InterfaceError: cannot perform operation: another operation is in progress"
    and "psycopg.OperationalError: the connection is closed"; fix: "create the
    engine after forking (in worker_process_init), use NullPool".

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg
3.3.9, Python 3.11.7, PostgreSQL 15; PgBouncer is not used)
    Loop handling: each child runs its tasks on one loop it makes after the
    fork (``loop="per-process"``), so no pooled connection is reused on another
    loop and what is left is the fork effect. The ``-asyncio-run`` variants use
    the article's ``asyncio.run()`` per task; ``-inherited-loop`` a loop made at
    import. Each query waits at most 5 s for its reply (``query-timeout``).

    * ``import-default-pool`` (the article's bad code): CLEAN on both drivers.
      The claim does not hold as stated: nothing is shared until the parent
      connects.
    * ``import-parent-query``: asyncpg REPRODUCED, all 16 calls (2
      ``future-other-loop``, 14 ``asyncpg-another-operation``): the article's
      text with another cause; the session stays "idle in transaction".
      psycopg REPRODUCED: 2-7 ``result-without-rows`` per run, at most one
      ``query-timeout``, up to 3 WRONG results, and in 7 of 15 runs a child
      stuck for good in the ROLLBACK that returns the connection to the pool
      (the bound covers the query only). psycopg never says "the connection is
      closed".
    * ``import-parent-query-inherited-loop``: REPRODUCED on both, in a form that
      varies with the race; mostly two failed calls per run, but in 3 of 15
      runs asyncpg took the sibling's open transaction for its own and kept
      failing (6 to 16 calls: ``asyncpg-foreign-transaction``, savepoint errors).
      Without the bound, both asyncpg children hung in 2 of 8 runs, so the run
      saw only hangs (11 or 12 of 12 calls); the bound turns such a hang into
      ``query-timeout``.
    * ``import-default-pool-asyncio-run``: asyncpg REPRODUCED
      (``asyncpg-another-operation``) with no fork involved: the loop-bound pool;
      psycopg CLEAN. This is the likely source of the article's asyncpg error.
    * Every fix is CLEAN on both drivers with the parent's check in place:
      ``worker_process_init`` + NullPool (the article's fix); ``worker_process_init``
      with the default pool (whole with a loop per process, half with
      ``asyncio.run()`` per task: asyncpg then fails as in loop-bound-pool); a
      module-level engine with NullPool (the check's connection is closed at
      check-in, before the fork); ``engine.dispose(close=False)`` in
      ``worker_process_init``; Celery 5.7's ``worker_pool_start_method="spawn"``
      (children are fresh interpreters). ``dispose()`` with ``close=True`` passes
      too, because Celery's parent never queries after the fork, but each child
      closes the parent's session (2 sessions left instead of 3), and asyncpg
      logs "Exception closing connection" for the closed parent loop.

Which fix works and why
    Anything that keeps an open connection from crossing the fork. Where the
    engine must exist at import, ``engine.dispose(close=False)`` in
    ``worker_process_init`` keeps pooling and touches nothing the parent owns
    (the parent's session survives: 3 sessions; psycopg sends no Terminate when
    a child garbage-collects the dropped connection, its ``PGconn`` checks the
    pid); making the engine there does the same. NullPool needs neither, at one
    connection per checkout. With ``asyncio.run()`` per task, asyncpg also
    needs NullPool or a loop per process (loop-bound-pool).

Sources
    SQLAlchemy docs, Connection Pooling, "Using Connection Pools with
    Multiprocessing or os.fork()" (``dispose(close=False)``, 1.4.33+); Celery
    docs, Signals (``worker_init`` runs in the parent, ``worker_process_init`` in
    each child); apache/airflow#13265 (pooled connections shared into Celery's
    forked processes: tasks hang); celery/celery#10339 and #10584
    (``worker_pool_start_method``); psycopg ``pq_ctypes.PGconn.__del__`` (no
    ``PQfinish`` outside the process that connected).
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.scenario import (
    Claim,
    Role,
    Scenario,
    Variant,
    Workload,
    clean,
    needs,
    package,
    reproduces,
)

# The parent runs its start-up check before the fork in every variant that can
# be hurt by it, so each fix faces the hazard the bad variant has.
PARENT_QUERY = {"parent_query": True}
# Each child runs all its calls on one loop made after the fork, so the loop is not
# what breaks: only variants named "asyncio-run" use asyncio.run() per call.
ONE_LOOP = {"loop": "per-process"}

# Both children use the one inherited socket; the form of the failure depends on
# which child reads first, so each expectation lists every form seen.
SHARED_SOCKET_PSYCOPG = reproduces(
    "result-without-rows", "psycopg-result-mismatch", "psycopg-another-command",
    "psycopg-connection-lost", "query-timeout")
SHARED_SOCKET_ASYNCPG = reproduces(
    "asyncpg-connection-lost", "protocol-desync", "asyncpg-connection-closed",
    "asyncpg-foreign-transaction", "prepared-statement-exists", "query-timeout")
# asyncpg's pooled connection is reused on another loop; psycopg does not care.
ASYNCPG_LOOP_BOUND = {
    "asyncpg": reproduces("future-other-loop", "asyncpg-another-operation"),
    "psycopg": clean(),
}


# ``worker_pool_start_method`` arrived in Celery 5.7.0 (celery/celery#10339); without
# it the prefork pool forks.
NEEDS_SPAWN_START_METHOD = needs(
    package("celery") >= "5.7",
    "this Celery has no worker_pool_start_method setting: its prefork pool always forks",
    source="celery/celery#10339 (Celery 5.7.0)")


SCENARIO = Scenario(
    id="engine-before-fork",
    app="scenarios.apps.engine_before_fork",
    # 16 calls over 2 processes: both children start on the inherited
    # connection at once (each one's first call waits for the other's) and each
    # runs several calls. Each query waits at most 5 s for its reply: a reply
    # another process read would hang the call.
    workload=Workload(task="query_token", calls=16, concurrency=2, timeout_s=30.0,
                      kwargs={"timeout_s": 5.0}, start_together=True),
    signatures=(sig.FUTURE_OTHER_LOOP, sig.ASYNCPG_ANOTHER_OPERATION,
                sig.PREPARED_STATEMENT_EXISTS, sig.PROTOCOL_DESYNC,
                sig.ASYNCPG_CONNECTION_LOST, sig.ASYNCPG_CONNECTION_CLOSED,
                sig.ASYNCPG_FOREIGN_TRANSACTION, sig.RESULT_WITHOUT_ROWS,
                sig.PSYCOPG_RESULT_MISMATCH, sig.PSYCOPG_ANOTHER_COMMAND, sig.PSYCOPG_CONNECTION_LOST,
                sig.PSYCOPG_CONNECTION_CLOSED, sig.QUERY_TIMEOUT),
    claim=Claim(
        error="asyncpg.exceptions.InterfaceError: cannot perform operation: another "
              "operation is in progress (psycopg: psycopg.OperationalError: the "
              "connection is closed)",
        fix="create the engine after forking (in worker_process_init), use NullPool",
        signature="asyncpg-another-operation", bad="import-default-pool",
        fixed="process-init-nullpool"),
    variants=(
        Variant("import-default-pool", Role.BAD, {"engine": "import", **ONE_LOOP},
                expect=clean()),
        Variant("import-parent-query", Role.BAD, {"engine": "import", **ONE_LOOP, **PARENT_QUERY},
                expect={"asyncpg": reproduces("future-other-loop", "asyncpg-another-operation"),
                        "psycopg": SHARED_SOCKET_PSYCOPG}),
        Variant("import-parent-query-inherited-loop", Role.BAD,
                {"engine": "import", "loop": "inherited", **PARENT_QUERY},
                expect={"asyncpg": SHARED_SOCKET_ASYNCPG, "psycopg": SHARED_SOCKET_PSYCOPG}),
        Variant("import-default-pool-asyncio-run", Role.BAD,
                {"engine": "import", "loop": "per-task"}, expect=ASYNCPG_LOOP_BOUND),
        Variant("process-init-nullpool", Role.ARTICLE_FIX,
                {"engine": "process-init", "pool": "null", **ONE_LOOP, **PARENT_QUERY},
                expect=clean()),
        Variant("process-init-default-pool", Role.FIX,
                {"engine": "process-init", **ONE_LOOP, **PARENT_QUERY}, expect=clean()),
        Variant("process-init-default-pool-asyncio-run", Role.PARTIAL_FIX,
                {"engine": "process-init", "loop": "per-task", **PARENT_QUERY},
                expect=ASYNCPG_LOOP_BOUND),
        Variant("import-nullpool", Role.FIX,
                {"engine": "import", "pool": "null", **ONE_LOOP, **PARENT_QUERY}, expect=clean()),
        Variant("import-dispose-close-false", Role.FIX,
                {"engine": "import", "dispose_in_child": "close=False", **ONE_LOOP, **PARENT_QUERY},
                expect=clean()),
        Variant("import-dispose-close-true", Role.FIX,
                {"engine": "import", "dispose_in_child": "close=True", **ONE_LOOP, **PARENT_QUERY},
                expect=clean()),
        Variant("import-parent-query-spawn", Role.FIX,
                {"engine": "import", "pool_start_method": "spawn", **ONE_LOOP, **PARENT_QUERY},
                requires=NEEDS_SPAWN_START_METHOD, expect=clean()),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
