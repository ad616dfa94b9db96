"""network-stall: the path to PostgreSQL stalls; nothing fails, the call just waits.

Symptom
    A task's query never returns and never fails. No exception, no log line:
    the pool process sits in ``epoll`` until Celery's hard ``--time-limit``
    kills it (``TimeLimitExceeded``) or, without one, forever. The same happens
    when the stall hits a connection idle in the pool (its next checkout, its
    ``pool_pre_ping`` included) or a new connection being opened.

Cause
    A stalled path is not a broken one: no RST, no FIN, nothing for the kernel
    or the driver to notice. Here the fault proxy (``proxy-blackhole``) keeps
    both sockets open and forwards nothing, as a dead NAT entry, a frozen
    middlebox or a partitioned peer behind a live load balancer would. The
    client's kernel still gets every segment ACKed (by the proxy's), so
    TCP keepalives succeed and ``tcp_user_timeout`` never fires; the query
    sits in the client's reading loop with no deadline unless the application
    set one.

    The stall hits at three places, declared as faults of the workload:

    * mid-transaction (``at_point("before-query")``): the task runs ``select 1``
      (the connection is up, a transaction open), announces the point, the
      blackhole starts, then the marked query goes into it. The server never
      receives it.
    * idle in the pool (``after_calls(1)``, default pool, one loop per
      process, one process): the first call leaves its connection in the
      pool; the blackhole swallows it; the second call checks it out.
    * connect (the same, with NullPool): the second call opens a new
      connection; the proxy accepts it and connects no further.

Outcomes in this scenario (the model)
    The stall is the premise; what a user wants is a BOUNDED failure: the call
    ends soon with an error that says "timeout", so Celery can retry it and
    the process is free again. So:

    * CLEAN: the stalled call ended within ``prompt_s`` (8 s) with a timeout
      error (``TimeoutError``, psycopg ``ConnectionTimeout`` or
      ``QueryCanceled``, ``SoftTimeLimitExceeded``; anywhere in its chain). The
      app counts which (``stall-ended-<class>``) and when
      (``stall-ended-within-<n>s``) and answers its token, as the
      soft-time-limit app does with its premise. Any other error propagates.
    * REPRODUCED ``stall-ended-late``: a timeout error came, but after more
      than 8 s: the driver's own cleanup waited on the stalled path.
    * REPRODUCED ``hard-time-limit`` / ``hard-time-limit-sigterm``: nothing
      ended the wait; the call hung until Celery's 18 s hard limit killed
      its pool process (which of the two depends on whether the harness
      reads the parent's record or the child's exit first).
    * OTHER_FAILURE: no limit at all; the harness's 25 s bound counts the call
      hung. No error text exists to match.

    This differs on purpose from retry-storm and queuepool-overflow, where a
    fast clear error is the failure itself: here the fault is the premise,
    and a timeout error is the remedy working.

What maintainers and docs recommend
    * asyncpg: ``command_timeout`` ("the default timeout for operations") and
      the connect ``timeout`` (60 s by default). asyncpg exposes no TCP
      keepalive or ``tcp_user_timeout`` option. MagicStack/asyncpg#1326: the
      CancelRequest that follows a timeout travels on a new connection and,
      in 0.31, with no timeout at all, so a close could hang.
    * psycopg / libpq: ``connect_timeout`` bounds the connect only; TCP
      ``keepalives*`` and ``tcp_user_timeout`` detect a dead peer; there is no
      client query timeout: use ``statement_timeout`` on the server or
      asyncio's timeouts. Since 3.1 an interrupted async query is cancelled on
      the server (psycopg/psycopg#543); 3.3.9 bounds that cancel to 5 s and the
      wait after it to 5 s more before closing the connection
      (connection_async.py ``_try_cancel``; psycopg#1371, #1435).
    * PostgreSQL: ``statement_timeout`` cancels a statement that runs too
      long, on the server.
    * SQLAlchemy: ``pool_pre_ping`` tests a connection at checkout.
    * Celery: ``soft_time_limit`` raises an exception the task can catch to
      clean up; ``time_limit`` kills the process.

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg
3.3.9 with its bundled libpq 18, Python 3.11.7, PostgreSQL 15.18 local and 15.20
in Docker; ``asyncio.run()`` per call unless noted; eleven runs, five local and six
Docker, the same outcome word in every cell, times are the range seen)
    * ``no-timeouts``: REPRODUCED ``hard-time-limit`` on both drivers: the
      call hangs 18 s, then Celery kills the process. ``no-limits-at-all``:
      the call hangs for the whole 25 s bound (OTHER_FAILURE); meanwhile the
      server session sits "idle in transaction" after ``select 1``, waiting for
      the client as the client waits for the server.
    * ``command-timeout`` (asyncpg, 2 s): CLEAN, ``TimeoutError`` 4.2-4.4 s
      after the call began, about twice the setting. The extra 2 s match
      SQLAlchemy 2.1 closing the invalidated asyncpg connection gracefully with
      ``close(timeout=2)`` before terminating it (``_terminate_graceful_close``);
      asyncpg 0.32 bounds its CancelRequest with ``command_timeout``
      (``Connection._cancel``); asyncpg#1326 reports that path unbounded in 0.31.
    * ``asyncio-wait-for`` (2 s around the call's work): asyncpg CLEAN at 4.1-4.5
      s. psycopg REPRODUCED ``stall-ended-late``: ``TimeoutError`` only after
      12.2-12.9 s, as the worker log shows: "query cancellation failed:
      cancellation timeout expired" (5 s: the cancel connection goes into the
      same blackhole), then "query not terminated after cancellation: closing
      connection" (5 s more).
    * ``soft-time-limit`` (3 s soft, 18 s hard): asyncpg CLEAN, at 5.1-5.2 s
      (``asyncio.run()`` cancels the task, the same close path as above);
      psycopg REPRODUCED ``stall-ended-late`` at 13.1-13.7 s (3 s, then the same
      5 s + 5 s cancellation path). A soft limit is only as prompt as the
      driver's cancellation.
    * ``keepalives`` (psycopg: idle 1 s, interval 1 s, count 2,
      ``tcp_user_timeout`` 3 s): REPRODUCED ``hard-time-limit``. Every probe is
      answered and nothing stays unacknowledged: the peer's kernel (the
      proxy's) is alive. They guard against a dead host, not a stalled path.
    * ``statement-timeout`` (2 s, set at connect): REPRODUCED
      ``hard-time-limit`` on both. The query never reached the server, so
      there is nothing to time out. Had it arrived, the server would cancel it,
      but the error would travel the same stalled path (not a variant here):
      it protects the server, not the client.
    * ``idle-pooled-no-timeouts`` and ``idle-pooled-pre-ping``: REPRODUCED
      ``hard-time-limit`` on both drivers: the pre-ping's own round trip goes
      into the blackhole and waits with no bound. ``pool_pre_ping`` detects a
      closed connection, not a silent one.
      ``idle-pooled-pre-ping-command-timeout`` (asyncpg): CLEAN, the ping
      times out, 4.2-4.6 s (``command_timeout`` covers it too).
    * ``connect-no-timeouts``: REPRODUCED ``hard-time-limit`` on both (asyncpg's
      default connect timeout is 60 s, libpq's none). ``connect-timeout``
      (asyncpg ``timeout=2``, libpq ``connect_timeout=2``): CLEAN on both, at
      2.2-3.0 s: ``TimeoutError`` / ``psycopg.errors.ConnectionTimeout``.
    * Is the query still running on the server afterwards? No, in every
      variant: the marked query never appears in ``pg_stat_activity``
      (``marked_query`` is empty), because every stall here starts before it
      is sent. What the server keeps is the session: "idle in transaction"
      while the client waits. Once a killed process's FIN passes the healed
      proxy the session ends; the inspection, run right after the heal,
      sometimes still sees it, so session counts are not part of any claim.

Fix
    Bound every wait on the client, per driver: asyncpg ``command_timeout``
    plus connect ``timeout`` (both prompt here, pooled connections and
    pre-ping included); psycopg ``connect_timeout`` for connects, and for
    queries an asyncio timeout with a budget of 10 s more than the timeout
    (psycopg's cancellation path), or a Celery hard limit as the last resort.
    Keepalives, ``tcp_user_timeout``, ``statement_timeout`` and
    ``pool_pre_ping`` do not bound a stall.

Sources
    asyncpg docs, ``connect()`` (``timeout``, ``command_timeout``);
    MagicStack/asyncpg#1326; asyncpg ``connection.py`` ``Connection._cancel``;
    SQLAlchemy ``dialects/postgresql/asyncpg.py`` ``_terminate_graceful_close``;
    SQLAlchemy docs, "Dealing with Disconnects" (``pool_pre_ping``); libpq docs,
    "Parameter Key Words" (``connect_timeout``, ``keepalives_idle``,
    ``keepalives_interval``, ``keepalives_count``, ``tcp_user_timeout``:
    "transmitted data may remain unacknowledged"); psycopg docs, "Connection
    classes" (``cancel_safe``) and ``connection_async.py`` ``_try_cancel``;
    PostgreSQL docs, ``statement_timeout``; Celery user guide, "Workers: Time
    limits".
"""

from __future__ import annotations

from dataclasses import replace

from harness import signatures as sig
from harness.faults.plan import Fault, after_calls, at_point
from harness.plugin import assert_expected
from harness.scenario import (
    Claim,
    Role,
    Scenario,
    StackSpec,
    Variant,
    Workload,
    before_package,
    clean,
    other_failure,
    reproduces,
)
from harness.signatures import Signature

# This scenario's own check, raised by its app: a timeout error that came too late.
STALL_ENDED_LATE = Signature(
    "stall-ended-late", "scenarios.apps.network_stall.StallEndedLate",
    description="A stalled call ended with a timeout error, but only after the bound the "
                "scenario calls prompt (prompt_s): the driver's own cleanup waited on the "
                "stalled path.")

# One call, one process: the stall starts between `select 1` and the marked query.
# The 18 s hard limit leaves psycopg's 2 + 5 + 5 s cancellation path (about 13 s
# with the 3 s soft limit) room to finish, so that it shows as stall-ended-late.
MID_QUERY = Workload(task="stalled_query", calls=1, concurrency=1, timeout_s=25.0,
                     worker_args=("--time-limit=18",),
                     faults=(Fault("proxy-blackhole", at_point("before-query")),))
NO_LIMIT = replace(MID_QUERY, worker_args=())
SOFT_LIMIT = replace(MID_QUERY, worker_args=("--soft-time-limit=3", "--time-limit=18"))
# The first call leaves its connection in the pool (or closes it: NullPool), then the
# path stalls; the second call checks out that connection (or opens a new one).
IDLE = replace(MID_QUERY, calls=2, faults=(Fault("proxy-blackhole", after_calls(1)),))

POOLED = {"pool": "default", "loop": "per-process"}
NULLPOOL = {"pool": "null", "loop": "per-process"}
COMMAND_TIMEOUT = {"connect_args": {"command_timeout": 2}}

HUNG_UNTIL_HARD_LIMIT = reproduces(
    "hard-time-limit", "hard-time-limit-sigterm",
    why="nothing ends the wait on a silent path; Celery's hard limit kills the process")
LATE = reproduces("stall-ended-late",
                  why="psycopg cancels the interrupted query over a new connection, which "
                      "the stall swallows too: 5 s, then 5 s more before it closes")
# Observed in the default matrix (2026-11-30): asyncpg 0.30.0 and psycopg 3.2.13 against
# asyncpg 0.32.0 and psycopg 3.3.9 (0.31 and the 3.2-3.3 releases between unobserved).
STALL_UNBOUNDED_BEFORE_031 = (
    "asyncpg < 0.31: command_timeout, asyncio.wait_for and the soft time limit do not "
    "end a stalled query or pre-ping; only Celery's hard limit does (observed on 0.30.0)")
CANCEL_UNBOUNDED_BEFORE_33 = (
    "psycopg < 3.3: the interrupted query's cancel and close wait on the stalled path past "
    "Celery's 18 s hard limit (observed on 3.2.13; 3.3.9 ends it after about 12 s)")


def asyncpg_bounded_from_031(newer):
    """``newer`` on asyncpg >= 0.31; before, the stall lasts until the hard limit."""
    return before_package("asyncpg", "0.31", HUNG_UNTIL_HARD_LIMIT, newer,
                          why=STALL_UNBOUNDED_BEFORE_031)


PSYCOPG_LATE = before_package("psycopg", "3.3", HUNG_UNTIL_HARD_LIMIT, LATE,
                              why=CANCEL_UNBOUNDED_BEFORE_33)
NO_KEEPALIVE = "asyncpg has no TCP keepalive or tcp_user_timeout option"
NO_COMMAND_TIMEOUT = "psycopg has no client-side query timeout (command_timeout is asyncpg's)"

SCENARIO = Scenario(
    id="network-stall",
    app="scenarios.apps.network_stall",
    workload=MID_QUERY,
    stack=StackSpec(proxy=True),
    signatures=(STALL_ENDED_LATE, sig.HARD_TIME_LIMIT, sig.HARD_TIME_LIMIT_SIGTERM),
    claim=Claim(error="(not from the article: a call that hangs, with no error)",
                fix="asyncpg command_timeout (the default timeout for operations)",
                signature=None, bad="no-timeouts", fixed="command-timeout",
                source="asyncpg's documentation"),
    # Is the call's query still on the server (by state), and what else is connected.
    inspect_sql={
        "marked_query": "select state, count(*) from pg_stat_activity "
                        "where query like '%network-stall-query%' "
                        "and pid <> pg_backend_pid() group by 1 order by 1",
        "activity": "select state, left(query, 50) from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid() "
                    "order by 1, 2",
    },
    variants=(
        Variant("no-timeouts", Role.BAD, {}, expect=HUNG_UNTIL_HARD_LIMIT),
        Variant("no-limits-at-all", Role.BAD, {}, workload=NO_LIMIT,
                expect=other_failure("the call waits forever and raises nothing; the "
                                     "harness's 25 s bound counts it hung"),
                description="No Celery time limit either: nothing ever ends the call."),
        Variant("command-timeout", Role.FIX, COMMAND_TIMEOUT,
                not_for={"psycopg": NO_COMMAND_TIMEOUT},
                expect=asyncpg_bounded_from_031(clean())),
        Variant("asyncio-wait-for", Role.FIX, {"call_bound_s": 2},
                expect={"asyncpg": asyncpg_bounded_from_031(clean()), "psycopg": PSYCOPG_LATE}),
        Variant("keepalives", Role.PARTIAL_FIX,
                {"connect_args": {"keepalives": 1, "keepalives_idle": 1,
                                  "keepalives_interval": 1, "keepalives_count": 2,
                                  "tcp_user_timeout": 3000}},
                not_for={"asyncpg": NO_KEEPALIVE}, expect=HUNG_UNTIL_HARD_LIMIT),
        Variant("statement-timeout", Role.PARTIAL_FIX, {"statement_timeout_ms": 2000},
                expect=HUNG_UNTIL_HARD_LIMIT),
        Variant("soft-time-limit", Role.FIX, {}, workload=SOFT_LIMIT,
                expect={"asyncpg": asyncpg_bounded_from_031(clean()), "psycopg": PSYCOPG_LATE}),
        Variant("idle-pooled-no-timeouts", Role.BAD, POOLED, workload=IDLE,
                expect=HUNG_UNTIL_HARD_LIMIT),
        Variant("idle-pooled-pre-ping", Role.PARTIAL_FIX, {**POOLED, "pre_ping": True},
                workload=IDLE, expect=HUNG_UNTIL_HARD_LIMIT),
        Variant("idle-pooled-pre-ping-command-timeout", Role.FIX,
                {**POOLED, "pre_ping": True, **COMMAND_TIMEOUT}, workload=IDLE,
                not_for={"psycopg": NO_COMMAND_TIMEOUT},
                expect=asyncpg_bounded_from_031(clean())),
        Variant("connect-no-timeouts", Role.BAD, NULLPOOL, workload=IDLE,
                expect=HUNG_UNTIL_HARD_LIMIT),
        Variant("connect-timeout", Role.FIX, {**NULLPOOL, "connect_timeout_s": 2},
                workload=IDLE, expect=clean()),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
