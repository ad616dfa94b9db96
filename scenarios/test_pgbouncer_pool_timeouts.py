"""pgbouncer-pool-timeouts: PgBouncer's pool is held, or its admin drops connections, mid-call.

Symptom
    Behind PgBouncer in transaction mode, a call fails after waiting a couple of
    seconds with asyncpg's "connection was closed in the middle of operation" or
    psycopg's ``ProtocolViolation: query_wait_timeout``; or, after an operator's
    ``KILL`` of the database (even followed by ``RESUME``), calls keep failing with
    "query_wait_timeout" for many seconds. MagicStack/asyncpg#1299 (asyncpg 0.31.0):
    with a server pool of 1 held by another client, asyncpg reports only
    "connection was closed in the middle of operation" where psql and psycopg show
    PgBouncer's ``query_wait_timeout``.

Cause
    * ``query_wait_timeout``: a client whose statement gets no server connection
      within that many seconds (all of the pool's server connections are inside
      other clients' transactions) is sent an ErrorResponse (SQLSTATE 08P01, text
      ``query_wait_timeout``) and disconnected. Here PgBouncer has ONE server
      connection (``pgbouncer_pool_size=1``, ``query_wait_timeout=2``) for a worker
      of two processes: call 0 (the holder) opens a transaction and keeps it until
      call 1 (the waiter) has finished; the waiter starts only once the holder holds
      (the two calls meet over Redis, no sleeps; ``Workload.start_together`` gives
      each process one call). Both processes warmed a connection up first, so the
      waiter's pooled connection is alive and a pre-ping has something to test.
    * ``KILL db`` drops every client and server connection of the database at once
      (PgBouncer sends each client "database removed", 08P01) and pauses the
      database until ``RESUME``. The fault fires on cue: after call 2 (the process's
      pooled connection is idle) or at the point ``in-transaction`` (between two
      statements of call 0's transaction); ``RESUME`` follows 1 s later
      (``heal_after_s``). A client that logs in during that second makes PgBouncer
      1.18 open a server connection for its login, which it closes at once ("closing
      because: pause mode"); that counts as a failed server login, so PgBouncer
      opens no server connection for ``server_login_retry`` (15 s by default), RESUME
      or not ("launch_new_connection: last failed, not launching new connection yet,
      still waiting 14 s", PgBouncer's log with ``verbose=1`` in a probe run beside
      this scenario). Every client in those 15 s waits ``query_wait_timeout`` and is
      dropped with "FATAL: query_wait_timeout" at login. A reconnect comes within
      milliseconds of the failure (the retry, the pre-ping) or of the fault (the next
      call), so it always lands inside the killed second.
    * ``RECONNECT db`` closes each server connection once its client releases it:
      the transaction in progress finishes on it, the next one gets a new server
      connection.

What maintainers recommend
    PgBouncer's documentation: ``query_wait_timeout`` "is used to prevent
    unresponsive servers from grabbing up connections" (default 120 s; 0 queues
    clients indefinitely); ``default_pool_size`` server connections per user and
    database; ``KILL``: "New client connections to a killed database will wait until
    RESUME is called"; ``RECONNECT`` closes server connections "after it is released
    (according to the pooling mode)"; ``server_login_retry``: how long to wait
    after a failed server login before trying again. SQLAlchemy ("Dealing with
    Disconnects"): ``pool_pre_ping=True``, or catch the disconnect
    (``connection_invalidated``) and run the transaction again.

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg 3.3.9,
Python 3.11.7, PgBouncer 1.18.0; PostgreSQL 15.18 on the local backend (five runs,
the same outcome word and the same counts in every cell) and 15.20 on the docker
backend (one run, the same cells); one loop per process, default pool; asyncpg with
``statement_cache_size=0``, psycopg with ``prepare_threshold=None``)
    * ``held-pool``: REPRODUCED on both drivers, the waiter fails 2-3 s after its
      statement began (counter ``waiter-failed-within-3s``), and SQLAlchemy marks the
      connection invalidated. asyncpg 0.32.0 does name the reason, unlike #1299's
      0.31.0: "sqlalchemy.exc.DBAPIError: (sqlalchemy.dialects.postgresql.asyncpg.Error)
      connection was closed in the middle of operation: query_wait_timeout", caused by
      ``asyncpg.exceptions.ConnectionDoesNotExistError`` with the same text, caused by
      ``asyncpg.exceptions.ProtocolViolationError: query_wait_timeout`` (asyncpg 0.32.0
      ``protocol.pyx``, ``_handle_waiter_on_connection_lost``, keeps the ErrorResponse
      that came before the close). psycopg: "sqlalchemy.exc.OperationalError:
      (psycopg.errors.ProtocolViolation) query_wait_timeout". So #1299's claim holds
      "with a different error" on 0.32.0; asyncpg 0.31 was not available to run here.
    * ``held-pool-retry-invalidated`` and ``held-pool-pre-ping``: REPRODUCED, the same
      error after two waits (4-5 s): the retry, or the pre-ping's reconnect, queues
      behind the same holder. Neither helps while the pool is held longer than
      ``query_wait_timeout``.
    * ``pool-sized-to-worker`` (2 server connections, 2 processes): CLEAN.
    * ``kill-between-calls``: REPRODUCED. The idle pooled connection's next
      statement reads PgBouncer's reason: asyncpg "connection was closed in the middle
      of operation: database removed" (caused by ``ProtocolViolationError: database
      removed``; asyncpg 0.30.0, run once from a cached environment, says only
      "connection was closed in the middle of operation", the #1299 behaviour),
      psycopg "(psycopg.errors.ProtocolViolation) database removed". The next call
      reconnects inside the killed second and fails at login: asyncpg
      ``ProtocolViolationError: query_wait_timeout``, psycopg "connection failed:
      connection to server at "127.0.0.1", port ... failed: FATAL:  query_wait_timeout".
      A failed connect is not ``connection_invalidated`` (counter ``not-invalidated``),
      so a retry keyed on it would not retry that one.
    * ``kill-between-calls-pre-ping``: REPRODUCED ``pgbouncer-query-wait-timeout``, 2
      of 4 calls: the pre-ping finds the dropped connection, and its reconnect meets
      the login throttle. With ``server_login_retry=1`` in PgBouncer: CLEAN, the
      reconnect waits for RESUME and goes on.
    * ``kill-mid-transaction``: REPRODUCED, all 4 calls fail. Locally asyncpg writes
      the transaction's next statement into the closed socket: "connection was closed
      in the middle of operation" caused by "BrokenPipeError: [Errno 32] Broken pipe",
      without PgBouncer's reason even on 0.32.0; on the docker backend (PgBouncer
      1.18 behind Docker's port forwarding, whose socket is still open) the write
      succeeds and asyncpg reads "connection was closed in the middle of operation:
      database removed". psycopg reads the reason on both: "ProtocolViolation:
      database removed". Calls 1-3 then fail with ``query_wait_timeout`` at login
      (the throttle).
    * ``kill-mid-transaction-retry-invalidated``: REPRODUCED, all 4 calls fail with
      ``query_wait_timeout``: the retry logs in inside the killed second. With
      ``server_login_retry=1``: CLEAN, one retry, every call answers.
    * ``reconnect-mid-transaction``: CLEAN on both drivers.
    * asyncpg < 0.31: n/a. With 0.30.0 (the same cached environment) the held-pool
      and RECONNECT cells fail first with "prepared statement "__asyncpg_stmt_1__"
      already exists" / "... does not exist": asyncpg 0.30 names its statements
      even with ``statement_cache_size=0`` (pgbouncer-prepared-asyncpg).

Fix
    Give PgBouncer at least one server connection per worker process that can hold
    one (``default_pool_size``, or ``pool_size`` per database), and keep transactions
    short: neither a retry nor ``pool_pre_ping`` gets past a held pool. After an
    admin ``KILL``, expect every connection to fail once ("database removed") and
    retry, or use ``pool_pre_ping``, but only a short ``server_login_retry`` (1 s
    here) lets the reconnects that land before ``RESUME`` through; with the default
    15 s they fail with ``query_wait_timeout`` for up to 15 s after RESUME. Prefer
    ``RECONNECT`` (or ``PAUSE``/``RESUME``) to ``KILL`` for maintenance: it waits for
    transactions to end.

Sources
    MagicStack/asyncpg#1299; asyncpg 0.32.0 ``protocol/protocol.pyx``
    (``_handle_waiter_on_connection_lost``), 0.30.0 for the older text; PgBouncer 1.18
    docs (pgbouncer(5): ``query_wait_timeout``, ``server_login_retry``,
    ``default_pool_size``; pgbouncer(1): ``KILL``, ``RESUME``, ``RECONNECT``) and
    its ``janitor.c`` ``kill_pool`` ("database removed"); SQLAlchemy docs, "Dealing
    with Disconnects".
"""

from __future__ import annotations

from dataclasses import replace

from harness import signatures as sig
from harness.faults.plan import Fault, after_calls, at_point
from harness.plugin import assert_expected
from harness.scenario import (
    Claim,
    Expectation,
    Role,
    Scenario,
    StackSpec,
    Variant,
    Workload,
    clean,
    reproduces,
)
from harness.signatures import Signature
from scenarios.pgbouncer_rules import POOLER_SAFE_ASYNCPG

QUERY_WAIT_TIMEOUT_S = "2"
WAIT_BRIEFLY = (("query_wait_timeout", QUERY_WAIT_TIMEOUT_S),)
POOL_OF_ONE = StackSpec(pgbouncer=True, pgbouncer_pool_size=1, pgbouncer_config=WAIT_BRIEFLY)
POOL_PER_PROCESS = replace(POOL_OF_ONE, pgbouncer_pool_size=2)
# PgBouncer's server_login_retry (15 s by default) after a failed server login; 1 s here.
QUICK_LOGIN_RETRY = replace(POOL_OF_ONE,
                            pgbouncer_config=(*WAIT_BRIEFLY, ("server_login_retry", "1")))

# Call 0 holds PgBouncer's server connection until call 1, on the other process, is done.
HELD = Workload(task="hold_or_wait", calls=2, concurrency=2, start_together=True,
                timeout_s=60.0)
ADMIN = Workload(task="read_in_transaction", calls=4, concurrency=1, timeout_s=60.0)
# KILL, then RESUME 1 s later: the next connect lands inside that second.
KILL_MID = replace(ADMIN, faults=(Fault("pgbouncer-kill", at_point("in-transaction"),
                                        heal_after_s=1.0),))
KILL_BETWEEN = replace(ADMIN, faults=(Fault("pgbouncer-kill", after_calls(2), heal_after_s=1.0),))
RECONNECT_MID = replace(ADMIN, faults=(Fault("pgbouncer-reconnect", at_point("in-transaction")),))

POOLED = {"loop": "per-process"}

QUERY_WAIT_TIMEOUT = Signature(
    "pgbouncer-query-wait-timeout", "Exception", r"\bquery_wait_timeout\b",
    description="PgBouncer found no server connection for this client within "
                "query_wait_timeout and closed it. On a query the reply is an ErrorResponse "
                "(SQLSTATE 08P01, ProtocolViolation); at login libpq reports only its text, "
                "so the text is the key.")
DATABASE_REMOVED = Signature(
    "pgbouncer-database-removed", "Exception", r"\bdatabase removed\b", sqlstate="08P01",
    description="PgBouncer's admin KILL closed this client connection; its reason, "
                "'database removed', reached the driver as a ProtocolViolation (08P01).")



WAITED_TOO_LONG = reproduces(
    "pgbouncer-query-wait-timeout",
    why="the waiter's statement queues behind the held server connection for "
        "query_wait_timeout, then PgBouncer closes the client")
LOGIN_THROTTLED = reproduces(
    "pgbouncer-query-wait-timeout",
    why="the new connection logs in while the database is killed; PgBouncer's server "
        "connection for it fails ('pause mode') and server_login_retry holds back the next "
        "one for 15 s, RESUME or not")
KILLED_IDLE = reproduces(
    "pgbouncer-database-removed",
    why="the pooled connection was dropped by KILL; its next statement reads PgBouncer's "
        "'database removed'")


def variant(name: str, role: Role, config: dict, *, expect: Expectation,
            workload: Workload | None = None, stack: StackSpec | None = None,
            description: str = "") -> Variant:
    """A variant of this scenario: every one is n/a on asyncpg < 0.31 (see above)."""
    return Variant(name, role, config, expect=expect, workload=workload, stack=stack,
                   requires=POOLER_SAFE_ASYNCPG, description=description)


SCENARIO = Scenario(
    id="pgbouncer-pool-timeouts",
    app="scenarios.apps.pgbouncer_pool_timeouts",
    workload=HELD,
    stack=POOL_OF_ONE,
    signatures=(QUERY_WAIT_TIMEOUT, DATABASE_REMOVED, sig.ASYNCPG_CONNECTION_LOST,
                sig.ASYNCPG_CONNECTION_CLOSED, sig.PSYCOPG_CONNECTION_LOST,
                sig.PSYCOPG_CONNECTION_CLOSED),
    claim=Claim(error="asyncpg says only 'connection was closed in the middle of operation' "
                      "when PgBouncer's query_wait_timeout drops a waiting client; psycopg "
                      "names query_wait_timeout (MagicStack/asyncpg#1299, asyncpg 0.31.0)",
                fix="size PgBouncer's pool to the worker's processes",
                signature="asyncpg-connection-lost", bad="held-pool",
                fixed="pool-sized-to-worker",
                source="MagicStack/asyncpg#1299 and PgBouncer's documentation"),
    variants=(
        # A server pool of one, held by one call; the other call queues behind it.
        variant("held-pool", Role.BAD, POOLED, expect=WAITED_TOO_LONG,
                description="PgBouncer pool of 1, query_wait_timeout=2, one call holds it."),
        variant("held-pool-retry-invalidated", Role.PARTIAL_FIX,
                {**POOLED, "retry_invalidated": True}, expect=WAITED_TOO_LONG,
                description="The same; the waiter retries once on connection_invalidated."),
        variant("held-pool-pre-ping", Role.PARTIAL_FIX, {**POOLED, "pre_ping": True},
                expect=WAITED_TOO_LONG,
                description="The same with pool_pre_ping=True."),
        variant("pool-sized-to-worker", Role.FIX, POOLED, stack=POOL_PER_PROCESS,
                expect=clean(), description="PgBouncer pool of 2 for the worker's 2 processes."),
        # PgBouncer admin KILL (RESUME 1 s later), between calls or inside a transaction.
        variant("kill-between-calls", Role.BAD, POOLED, workload=KILL_BETWEEN,
                expect=KILLED_IDLE,
                description="KILL while the process's pooled connection is idle."),
        variant("kill-between-calls-pre-ping", Role.PARTIAL_FIX, {**POOLED, "pre_ping": True},
                workload=KILL_BETWEEN, expect=LOGIN_THROTTLED,
                description="The same with pool_pre_ping=True."),
        variant("kill-between-calls-pre-ping-login-retry-1s", Role.FIX,
                {**POOLED, "pre_ping": True}, workload=KILL_BETWEEN, stack=QUICK_LOGIN_RETRY,
                expect=clean(),
                description="pool_pre_ping=True and PgBouncer's server_login_retry=1."),
        variant("kill-mid-transaction", Role.BAD, POOLED, workload=KILL_MID,
                expect={"asyncpg": reproduces(
                            "asyncpg-connection-lost", "pgbouncer-database-removed",
                            why="locally asyncpg writes the next statement into the closed "
                                "socket (BrokenPipeError) and never reads PgBouncer's "
                                "reason; through Docker's port forwarding it reads it"),
                        "psycopg": KILLED_IDLE},
                description="KILL between two statements of a transaction."),
        variant("kill-mid-transaction-retry-invalidated", Role.PARTIAL_FIX,
                {**POOLED, "retry_invalidated": True}, workload=KILL_MID,
                expect=LOGIN_THROTTLED,
                description="The same; the call retries once on connection_invalidated."),
        variant("kill-mid-transaction-retry-login-retry-1s", Role.FIX,
                {**POOLED, "retry_invalidated": True}, workload=KILL_MID,
                stack=QUICK_LOGIN_RETRY, expect=clean(),
                description="The retry, and PgBouncer's server_login_retry=1."),
        # PgBouncer admin RECONNECT inside a transaction.
        variant("reconnect-mid-transaction", Role.CONTROL, POOLED, workload=RECONNECT_MID,
                expect=clean(),
                description="RECONNECT between two statements of a transaction."),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
