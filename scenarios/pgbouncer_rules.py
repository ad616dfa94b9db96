"""What the two PgBouncer scenarios share: their workload, stacks and expectation rules."""

from harness.scenario import (
    Expected,
    Rule,
    StackSpec,
    Workload,
    needs,
    needs_pgbouncer,
    package,
    until_pgbouncer,
)

# 24 calls over 4 processes: every process, even one that starts late, gets calls,
# so more processes connect than PgBouncer has server connections, and processes run
# several calls each, so pooled connections carry their execution counts from call to
# call (Celery does not spread calls evenly: a late process may run one or none).
ECHO_CALLS = Workload(task="query_token", calls=24, concurrency=4, timeout_s=60)

DIRECT = StackSpec(pgbouncer=False)
# 2 server connections for 4 worker processes: a server connection always serves
# several clients, so a prepared statement always meets another client.
THROUGH_PGBOUNCER = StackSpec(pgbouncer=True, pgbouncer_pool_size=2)
# The same, with PgBouncer tracking protocol-level prepared statements per client.
PGBOUNCER_TRACKING = StackSpec(pgbouncer=True, pgbouncer_pool_size=2,
                               max_prepared_statements=100)
NEEDS_TRACKING = needs_pgbouncer("1.21", "max_prepared_statements")

# For the asyncpg cells of the scenarios that are about something else behind PgBouncer
# (its limits, session state, a connection storm): n/a on asyncpg < 0.31, which names
# its statements whatever statement_cache_size says (see pgbouncer-prepared-asyncpg),
# so there the calls fail on prepared statements before they can show anything else.
# Observed on asyncpg 0.30.0 behind PgBouncer 1.18 (default matrix, 2026-11-30):
# pgbouncer-session-state's SET LOCAL, advisory-xact-lock and ALTER DATABASE cells
# failed on 'prepared statement "__asyncpg_stmt_1__" already exists'; retry-storm's
# PgBouncer cell failed that way in one run and was clean in the next.
POOLER_SAFE_ASYNCPG = needs(
    package("asyncpg") >= "0.31",
    "asyncpg < 0.31 names every prepared statement even with statement_cache_size=0, so "
    "behind PgBouncer's transaction pooling the calls fail on 'prepared statement ... "
    "already exists' first (see pgbouncer-prepared-asyncpg)", drivers=("asyncpg",))


def before_tracking_default(failing: Expected) -> Rule:
    """``failing`` on PgBouncer < 1.24, clean from 1.24 on.

    PgBouncer 1.21 added ``max_prepared_statements`` (off by default); 1.24.0
    turned it on by default (200; pgbouncer/pgbouncer#1144, changelog 1.24.0), so
    from then on PgBouncer tracks protocol-level prepared statements per client and
    prepares them on whichever server connection the client is given. Observed with
    PgBouncer 1.24.1 on the docker backend.
    """
    return until_pgbouncer("1.24", failing, why=(
        "PgBouncer >= 1.24 defaults to max_prepared_statements = 200 and tracks prepared "
        "statements per client; before that: " + (failing.why or "see the docstring")))
