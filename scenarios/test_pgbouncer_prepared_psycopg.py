"""pgbouncer-prepared-psycopg: psycopg 3 prepares a query once it has run 5 times on a connection.

This scenario runs with psycopg only (its knobs are psycopg's); the asyncpg side
is pgbouncer-prepared-asyncpg.

Symptom
    Through PgBouncer in ``pool_mode=transaction``, psycopg 3 works in a quick
    test, then fails under load with ``psycopg.errors.DuplicatePreparedStatement:
    prepared statement "_pg3_0" already exists`` (SQLSTATE 42P05) or
    ``psycopg.errors.InvalidSqlStatementName: prepared statement "_pg3_0" does
    not exist`` (26000), both raised as ``sqlalchemy.exc.ProgrammingError``; and
    when tasks run different queries, some calls silently get another query's answer.

Cause
    psycopg counts the executions of each query text PER CONNECTION and, on the
    execution after ``prepare_threshold`` (default 5), prepares it server-side
    (``psycopg/_preparing.py``, ``PrepareManager``). It names statements
    ``_pg3_<n>`` with ``n`` counted per connection from 0, so every connection's
    first prepared statement is ``_pg3_0``. The statement lives on the server
    connection PgBouncer lent for that transaction; PgBouncer 1.18 neither tracks
    it nor resets server connections between clients in transaction mode. So a
    later transaction of the same client may run where ``_pg3_0`` does not exist,
    another client preparing ``_pg3_0`` there gets "already exists", and a client
    whose ``_pg3_0`` is query A, running on a server connection where
    ``_pg3_0`` is another client's query B with the same parameter and result
    types, gets B's answer without any error. After a failed transaction,
    psycopg's ``rollback()`` forgets its statements and, if it had any, sends
    ``DEALLOCATE ALL``, which PgBouncer runs on whichever server connection is
    free, deleting other clients' statements there.

    Why it is deterministic here: 4 worker processes share PgBouncer's 2 server
    connections (``pgbouncer_pool_size=2``). Once two client connections have
    prepared ``_pg3_0``, the third one to try fails (pigeonhole): a client whose
    preparation failed has nothing to deallocate, so only a client that had
    prepared statements and then failed a transaction frees a server
    connection. The two below-threshold variants use one server connection, so
    that two processes that each ran two calls suffice: Celery does not spread
    calls evenly over the processes. Each call runs the query ``executions``
    times on one connection, each in its own transaction; ``server-switches``
    counts how often PgBouncer moved a client connection, and
    ``prepared-on-server`` counts executions that ran on a server connection
    holding a named prepared statement (0 proves nothing was ever prepared).

The article's claim
    None for psycopg 3. The article's deployment advice is "deploy PgBouncer in
    front of Postgres ... and you use NullPool on the SQLAlchemy side", and its
    only PgBouncer remedy, ``statement_cache_size=0``, is an asyncpg argument
    (psycopg passes unknown connect() arguments to libpq, which refuses them). The
    claim recorded here is that this deployment works for psycopg 3 as it is.

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, psycopg 3.3.9 with the binary
wheel's libpq 18.6, Python 3.11.7, PostgreSQL 15, PgBouncer 1.18)
    * Direct to PostgreSQL (control), 8 executions per call: CLEAN.
    * Below the threshold (4 executions per call) with NullPool: CLEAN, nothing is
      prepared. With the default pool: REPRODUCED (4-5 of 24 calls). The count
      belongs to the pooled connection, not the task, so a process's second
      task crosses the threshold.
    * Above the threshold (8 executions) with NullPool (the article's
      deployment): REPRODUCED, every connection after the first two fails with
      ``prepared-statement-exists`` (22 of 24 calls). With the default pool:
      REPRODUCED, "does not exist" the commoner: each process's pooled
      connection reuses its ``_pg3_0`` on whichever server connection it gets.
      The article's deployment advice does not hold for psycopg 3.
    * Two query texts (processes with an odd pid run the second one), default
      pool: REPRODUCED, and in most runs also 1-8 WRONG results: a
      ``_pg3_0`` of one text answered for the other, without any error.
    * ``prepare_threshold=None`` (via ``connect_args``: SQLAlchemy's psycopg
      dialect passes them to ``AsyncConnection.connect()``, which takes this
      argument since psycopg 3.1): CLEAN with both pools. ``prepare_threshold=0``
      (prepare at first use): REPRODUCED even with one execution per call.
    * ``prepared_max=1`` with two query texts per connection (the first half of
      the executions runs one, the second half the other, so the second
      preparation evicts the first): REPRODUCED; the collisions already happen
      at a connection's first preparation, and a small cache does not help.
      ``prepared_max`` is an attribute only (``connect()`` refuses it), set here
      in a pool ``connect`` event. ``prepared_max=0``: CLEAN, because psycopg
      3.3.9 trims its execution counts to the same bound
      (``PrepareManager._rotate``), so no query ever reaches the threshold
      (``prepared-on-server`` stays 0). That is undocumented; use
      ``prepare_threshold=None``.
    * PgBouncer >= 1.21 with ``max_prepared_statements=100``: n/a here (1.18 is
      installed). CLEAN with PgBouncer 1.24.1 on the docker backend (24/24 in both
      default-matrix runs), as PgBouncer's documentation says: it tracks
      protocol-level statements such as psycopg's. The libpq matters there: psycopg drops an evicted statement
      with a protocol-level Close only with libpq >= 17
      (``PGconn.send_close_prepared``), which PgBouncer >= 1.21 tracks. With an
      older libpq it sends ``DEALLOCATE name``, which PgBouncer does not support,
      and ``DEALLOCATE ALL`` needs PgBouncer >= 1.22. The libpq in use is recorded
      in results.json (``environment.libpq``: ``psycopg.pq.__impl__`` and
      ``psycopg.pq.version()``); the binary wheel and a system libpq differ.
    * ``max-prepared-statements-evicting-default-pool``: the same PgBouncer,
      ``prepared_max=1``, and each connection runs two texts six times each (both
      get prepared) and then a third: psycopg evicts from its cache only when a new
      text arrives after it is full (``PrepareManager._rotate`` runs for new
      entries), which is why ``prepared-max-1-nullpool`` never evicted anything.
      With the binary wheel's libpq 18.6: CLEAN, 24 statements evicted (counter
      ``evicted``) with a Close that PgBouncer translates. With the system's libpq
      15.18 (``PSYCOPG_IMPL=python``, psycopg's pure-Python implementation):
      REPRODUCED, all 24 calls fail with ``InvalidSqlStatementName: prepared
      statement "_pg3_0" does not exist``: the server ran ``DEALLOCATE _pg3_0``
      and knows the statement only under PgBouncer's name. The rule on the libpq
      version (``LIBPQ < "17"``) says so; run the matrix or the suite with
      ``PSYCOPG_IMPL=python`` on a machine whose libpq is older than 17 to see it.

PgBouncer 1.24 and later (observed with PgBouncer 1.24.1 on the docker backend)
    Every variant above that reproduces on 1.18 is CLEAN: from 1.24.0 on,
    ``max_prepared_statements`` defaults to 200 (pgbouncer/pgbouncer#1144; 1.21-1.23
    default to 0), so PgBouncer itself tracks
    protocol-level prepared statements per client and prepares them on whichever
    server connection the client gets. The failing expectations are therefore
    rules: reproduces on PgBouncer < 1.24, clean from 1.24 on. Setting
    ``max_prepared_statements = 0`` on a newer PgBouncer brings the failures back.

Which fix works and why
    ``connect_args={"prepare_threshold": None}``: psycopg never prepares, so no
    statement outlives its transaction. With PgBouncer >= 1.21 (>= 1.22 for
    ``DEALLOCATE ALL``) and libpq >= 17, ``max_prepared_statements`` keeps
    prepared statements; with an older libpq, only as long as psycopg never evicts
    one (a ``prepared_max`` above the number of query texts a connection runs).

Sources
    psycopg docs, "Prepared statements" (``prepare_threshold``, ``prepared_max``,
    ``prepare_threshold`` as a ``connect()`` argument since 3.1); psycopg 3.3.9
    ``_preparing.py`` (``PrepareManager``), ``_connection_base.py`` (``_deallocate``:
    "PgBouncer doesn't support DEALLOCATE name, but it supports protocol-level
    Close from 1.21 and DEALLOCATE ALL from 1.22"; ``_rollback_gen``); PgBouncer
    changelog 1.21.0 (protocol-level named prepared statements) and 1.22.0
    (``DEALLOCATE ALL``); the libpq Close patch on pgsql-hackers (Jelte Fennema, 2023).
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.scenario import (
    LIBPQ,
    Claim,
    Role,
    Scenario,
    StackSpec,
    Variant,
    clean,
    reproduces,
    when,
)
from scenarios.pgbouncer_rules import (
    DIRECT,
    ECHO_CALLS,
    NEEDS_TRACKING,
    PGBOUNCER_TRACKING,
    THROUGH_PGBOUNCER,
    before_tracking_default,
)

# One server connection: two processes that each crossed the threshold are enough
# for a collision, however unevenly Celery spreads the calls over the processes.
ONE_SERVER_CONNECTION = StackSpec(pgbouncer=True, pgbouncer_pool_size=1)

NULL = {"pool": "null"}
POOLED = {"pool": "default"}
# psycopg's default prepare_threshold is 5: the 6th execution on a connection prepares.
BELOW = {"executions": 4}
ABOVE = {"executions": 8}
NEVER_PREPARE = {"connect_args": {"prepare_threshold": None}}

FAILS = before_tracking_default(
    reproduces("prepared-statement-exists", "prepared-statement-missing"))
COLLISIONS_ONLY = before_tracking_default(reproduces(
    "prepared-statement-exists",
    why="one execution per connection: no statement is reused, only names collide"))

# Observed with PgBouncer 1.24.1 (docker): libpq 15.18 (PSYCOPG_IMPL=python, the system's)
# against libpq 18.6 (the binary wheel's), psycopg 3.3.9.
DEALLOCATE_BEFORE_LIBPQ_17 = (
    "libpq < 17: psycopg drops an evicted statement with SQL 'DEALLOCATE _pg3_<n>', which "
    "PgBouncer does not track, so the server, which knows the statement under PgBouncer's "
    "own name, answers 'does not exist'; libpq >= 17 sends a protocol-level Close, which "
    "PgBouncer >= 1.21 translates")
EVICTION_SOURCE = ("psycopg _connection_base.py _deallocate (3.3.9); PgBouncer issues #1041 "
                   "and #991 (DEALLOCATE as SQL is not supported)")

SCENARIO = Scenario(
    id="pgbouncer-prepared-psycopg",
    app="scenarios.apps.pgbouncer_prepared_psycopg",
    workload=ECHO_CALLS,
    stack=THROUGH_PGBOUNCER,
    drivers=("psycopg",),
    signatures=(sig.PREPARED_STATEMENT_MISSING, sig.PREPARED_STATEMENT_EXISTS),
    claim=Claim(
        error="(none quoted: the article names no psycopg 3 error behind PgBouncer)",
        fix="deploy PgBouncer in front of Postgres ... and you use NullPool on the "
            "SQLAlchemy side",
        signature=None, bad="above-threshold-nullpool", fixed="prepare-threshold-none-nullpool",
        # The article presents NullPool behind PgBouncer as working: that claim
        # holds only if this variant is clean.
        bad_fails=False),
    variants=(
        Variant("direct-default-pool", Role.CONTROL, {**POOLED, **ABOVE}, stack=DIRECT,
                expect=clean()),
        Variant("below-threshold-nullpool", Role.PARTIAL_FIX, {**NULL, **BELOW},
                stack=ONE_SERVER_CONNECTION,
                expect=clean(why="4 executions per connection never reach the threshold")),
        Variant("below-threshold-default-pool", Role.BAD, {**POOLED, **BELOW},
                stack=ONE_SERVER_CONNECTION,
                expect=before_tracking_default(reproduces(
                    "prepared-statement-exists", "prepared-statement-missing",
                    why="the pooled connection's count goes on across tasks"))),
        Variant("above-threshold-nullpool", Role.BAD, {**NULL, **ABOVE}, expect=FAILS),
        Variant("above-threshold-default-pool", Role.BAD, {**POOLED, **ABOVE}, expect=FAILS),
        Variant("two-queries-default-pool", Role.BAD,
                {**POOLED, **ABOVE, "query_shapes": "by-process"}, expect=FAILS),
        Variant("prepare-threshold-none-nullpool", Role.FIX, {**NULL, **ABOVE, **NEVER_PREPARE},
                expect=clean()),
        Variant("prepare-threshold-none-default-pool", Role.FIX,
                {**POOLED, **ABOVE, **NEVER_PREPARE}, expect=clean()),
        Variant("prepare-threshold-0-nullpool", Role.BAD,
                {**NULL, "executions": 1, "connect_args": {"prepare_threshold": 0}},
                expect=COLLISIONS_ONLY),
        Variant("prepared-max-1-nullpool", Role.BAD,
                {**NULL, "executions": 12, "query_shapes": "halves", "prepared_max": 1},
                expect=FAILS),
        Variant("prepared-max-0-default-pool", Role.PARTIAL_FIX,
                {**POOLED, **ABOVE, "prepared_max": 0},
                expect=clean(why="psycopg 3.3.9 trims its execution counts to prepared_max")),
        Variant("max-prepared-statements-evicting-default-pool", Role.PARTIAL_FIX,
                # 6 executions of each of two texts: both prepared (threshold 5),
                # then the third text, which makes psycopg evict the first.
                {**POOLED, "executions": 13, "query_shapes": "halves-then-third",
                 "prepared_max": 1},
                stack=PGBOUNCER_TRACKING, requires=NEEDS_TRACKING,
                expect=when(LIBPQ < "17", reproduces("prepared-statement-missing"), clean(),
                            why=DEALLOCATE_BEFORE_LIBPQ_17, source=EVICTION_SOURCE)),
        Variant("max-prepared-statements-default-pool", Role.FIX, {**POOLED, **ABOVE},
                stack=PGBOUNCER_TRACKING,
                requires=NEEDS_TRACKING,
                expect=clean(why="PgBouncer >= 1.21 tracks protocol-level statements (its "
                                 "documentation); observed CLEAN with PgBouncer 1.24.1")),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
