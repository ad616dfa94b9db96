"""pgbouncer-session-state: session state behind PgBouncer's transaction pooling.

Symptom
    Behind PgBouncer in ``pool_mode=transaction``: asyncpg cannot connect at all once
    the engine has ``connect_args={"server_settings": {"jit": "off"}}`` ("unsupported
    startup parameter: jit"), and once the parameter is ignored the setting is simply
    not in force. A task's ``SET search_path`` or ``SET statement_timeout`` turns up
    in some other task's transaction, and is missing from the task's own next one. A
    job guarded by ``pg_advisory_lock`` finds ``pg_advisory_unlock`` returning false
    while the lock stays on a server connection that other clients now use (the
    server's only other sign is a WARNING, which did not reach the worker's log with
    either driver).

Cause
    In transaction mode a client holds a server connection only for the length of a
    transaction, and PgBouncer does not reset the server connection between clients
    (``server_reset_query`` runs only in session mode). Everything that lives in the
    server session rather than in the transaction stays with the server connection:
    a plain ``SET`` (until the session ends), a session advisory lock (until unlocked
    in that session). The client's next transaction may run in another server session
    (it did not keep its state) while another client's runs in this one (it finds the
    state). Startup parameters are another side of it: PgBouncer opens server
    connections with its own startup packet, so it accepts only the parameters it
    tracks per client and re-applies with ``SET`` (``client_encoding``, ``DateStyle``,
    ``TimeZone``, ``standard_conforming_strings``, ``application_name``; from 1.20
    also ``track_extra_parameters``), drops those listed in
    ``ignore_startup_parameters``, and refuses the connection for any other.

    Why it is deterministic here: 4 worker processes share 2 server connections
    (``pgbouncer_pool_size=2``) and every call is a new client (NullPool). Each
    process holds its first call until all four have one (``start_together``), so
    the first four clients want the two server connections at once: the third client
    to get one runs where another client has just set its value or still holds its
    lock (pigeonhole; the lock is held for the job's 0.5 s of work), whatever the
    timing. Which calls fail, and whether an unlock lands on the other server
    connection, varies from run to run; the outcome word does not.

What maintainers recommend
    PgBouncer's feature map: in transaction pooling, ``SET/RESET`` and session-level
    advisory locks are "never" supported; use ``SET LOCAL`` inside the transaction
    and ``pg_advisory_xact_lock``. ``server_reset_query_always`` is "for working around
    broken setups ... It changes non-deterministic breakage to deterministic
    breakage: Clients always lose their state after each transaction."
    ``ignore_startup_parameters`` lets a parameter through "so that PgBouncer knows
    that they are handled by the admin", that is, set on the server (``ALTER
    DATABASE/ROLE ... SET``). ``track_extra_parameters`` (1.20+): "The only parameters
    that can be tracked are ones that Postgres reports to the client." SQLAlchemy's
    asyncpg documentation suggests ``connect_args={"server_settings": {"jit": "off"}}``
    to avoid slow ENUM type introspection, with no word about PgBouncer.

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg 3.3.9,
Python 3.11.7, PostgreSQL 15; PgBouncer 1.18.0 on the local backend, 5 runs with the
same word in every cell; on the docker backend, one run each, the same words with
PgBouncer 1.18.0 and 1.24.1 and, but for ``startup-jit-tracked``, with 1.26.1)
    The setting asked for at connection start (asyncpg ``server_settings={"jit":
    "off"}``; psycopg has no such argument, so its variant of the same configuration
    is libpq's ``options='-c jit=off'``, what ``PGOPTIONS`` sends):

    * Direct to PostgreSQL: CLEAN on both drivers.
    * Through PgBouncer with the harness's ``ignore_startup_parameters =
      extra_float_digits,options``: asyncpg cannot connect, every call (8 of 8)
      REPRODUCED ``startup-parameter-refused`` ("unsupported startup parameter: jit",
      asyncpg's ``ProtocolViolationError``, 08P01, wrapped in ``DBAPIError``).
      psycopg connects and its transaction finds ``jit = on`` (source: default), 8 of
      8 ``startup-setting-lost``: PgBouncer drops the whole ``options`` parameter.
    * Without ``options`` in the list (a stock PgBouncer, for these drivers): both
      refused, asyncpg for ``jit``, psycopg for ``options`` (1.18: "unsupported startup
      parameter: options"; 1.24: "unsupported startup parameter in options: jit",
      since 1.20 reads the ``-c`` settings inside ``options``).
    * ``jit`` added to ``ignore_startup_parameters``: both connect, 8 of 8
      ``startup-setting-lost``: the error is gone and so is the setting.
    * ``track_extra_parameters = IntervalStyle,jit``: n/a on PgBouncer 1.18 (the
      setting does not exist before 1.20). On 1.24.1: both connect, 8 of 8
      ``startup-setting-lost``. PgBouncer keeps the client's value, but it re-applies
      a tracked value only when it differs from the one the server reported, and
      PostgreSQL never reports ``jit`` (``apply_var`` skips an unknown server value),
      as the documentation's note says. On 1.26.1: CLEAN on both drivers, ``jit`` is
      off: PgBouncer now applies a tracked parameter the server does not report
      (pgbouncer/pgbouncer#1576, merged after 1.25.2), hence the rule "lost before
      1.26, clean from 1.26" (no 1.25 image was at hand to observe).
    * ``SET LOCAL jit = off`` in the transaction, and ``ALTER DATABASE ... SET jit =
      off`` (made from a connection to another database, before any server
      connection of the run's database opens): CLEAN on both drivers.

    ``SET`` inside a transaction, through PgBouncer (8 calls, each a new client):

    * ``SET search_path`` and ``SET statement_timeout``: REPRODUCED on both drivers,
      6 of 8 calls ``session-setting-leaked`` in every run: the first client on each
      of the two server connections finds the session's own value, every later one
      finds another client's, mostly one from another worker process (counters
      ``leak-from-another-process``, ``leak-from-this-process``). 0-2 more calls
      ``session-setting-lost``: their own value was not there in their next
      transaction. Direct to PostgreSQL: CLEAN.
    * ``SET LOCAL``: CLEAN on both drivers, for both settings.
    * PostgreSQL 18 with PgBouncer 1.26.1 (docker, one run of these variants): PG 18
      reports ``search_path`` to the client and PgBouncer 1.26 tracks every reported
      setting by default (pgbouncer/pgbouncer#1580), so it keeps each client's
      ``search_path`` and sets it on whichever server connection the client gets:
      ``set-search-path`` and even ``set-search-path-reset-always`` are CLEAN there.
      ``set-statement-timeout`` still leaks (not reported). The expectations here
      are those of PostgreSQL < 18: an expectation rule cannot see the PostgreSQL
      version (``RunEnv`` has none), so on PostgreSQL 18 + PgBouncer 1.26 those two
      cells fail as moved.
    * ``server_reset_query_always = 1`` (``DISCARD ALL`` after every transaction):
      nothing leaks any more, and every call (8 of 8) loses its own ``SET`` before
      its next transaction: REPRODUCED ``session-setting-lost``. The documentation's
      "deterministic breakage", exactly.

    A session advisory lock taken in one transaction and released in the next
    (0.5 s of the job's work between them), through PgBouncer:

    * REPRODUCED on both drivers: 4-6 of 8 calls ran in a server session that
      already held another call's lock (``advisory-lock-leaked``), and in most runs
      1-2 unlocks returned false while the lock stayed in the other server session
      (``advisory-unlock-failed``, counter ``lock-stays-elsewhere``). That lock is
      still held when the calls are done (``advisory_locks_held`` 1-2): an idle server
      connection of PgBouncer keeps it, and nobody will release it. Direct: CLEAN.
    * ``server_reset_query_always = 1``: every unlock returns false (8 of 8
      ``advisory-unlock-failed``, counter ``lock-gone``): ``DISCARD ALL`` released the
      lock at the end of the transaction that took it, so the job's work ran unguarded.
    * ``pg_advisory_xact_lock`` with the work inside the transaction: CLEAN on both
      drivers. Its cost shows in the run time: each call holds a server connection
      for its work, so the 8 calls take 2.5 s (8 x 0.5 s of work on 2 server
      connections) where the direct control takes 1.8 s.

    asyncpg < 0.31 (observed on 0.30.0 behind PgBouncer 1.18, the default matrix of
    2026-11-30): every asyncpg cell that runs statements through PgBouncer failed on
    ``prepared statement "__asyncpg_stmt_1__" already exists`` (or ``... does not
    exist``), 2-4 calls of 8, the fixes included: that asyncpg names the statements
    it prepares whatever ``statement_cache_size`` says (see pgbouncer-prepared-asyncpg).
    Those cells are n/a there; the cells refused at connection start and the direct
    ones ran as on 0.32.0.

    Not exercised here: asyncpg >= 0.29 turns ``jit`` off around its own type
    introspection (MagicStack/asyncpg#1082, the slowness SQLAlchemy's advice is about)
    with a session-level ``set_config('jit', 'off', false)``, the introspection query
    and a second ``set_config`` to restore it, three statements outside a transaction
    (``Connection._introspect_types``). Behind transaction pooling they may run on
    different server connections; it happens only for types asyncpg does not know
    (an ENUM, say), which this workload never uses.

Fix
    Keep session state inside the transaction: ``SET LOCAL`` (or ``set_config(name,
    value, true)``) in each transaction that needs it, and ``pg_advisory_xact_lock``
    with the guarded work inside its transaction (a server connection is held for
    that long). A setting every session needs belongs on the server (``ALTER
    DATABASE``/``ALTER ROLE ... SET``, postgresql.conf), not in the connect
    arguments: through PgBouncer a startup parameter is refused, ignored, or tracked
    and still not applied. ``server_reset_query_always`` is not a fix: it turns the
    leak into state lost after every transaction.

Sources
    PgBouncer: "SQL feature map for pooling modes" (pgbouncer.org/features.html);
    configuration docs ``ignore_startup_parameters``, ``track_extra_parameters``,
    ``server_reset_query``, ``server_reset_query_always``; src/client.c
    ``decide_startup_pool`` and ``set_startup_options`` (1.20+: ``-c`` settings in
    ``options`` for tracked parameters), src/varcache.c ``apply_var`` (a value the
    server never reported is not applied); NEWS 1.20.0 (``track_extra_parameters``,
    ``options``). SQLAlchemy docs, asyncpg dialect: "Disabling the PostgreSQL JIT to
    improve ENUM datatype handling". PostgreSQL docs: ``SET`` (SESSION and LOCAL),
    "Advisory Locks", ``DISCARD ALL``, the list of parameters reported to the client
    (``ParameterStatus``; ``jit`` is not among them).
"""

from dataclasses import replace

from harness.plugin import assert_expected
from harness.scenario import (
    Claim,
    Role,
    Scenario,
    StackSpec,
    Variant,
    Workload,
    clean,
    needs_pgbouncer,
    reproduces,
    until_pgbouncer,
)
from harness.signatures import Signature
from scenarios.pgbouncer_rules import POOLER_SAFE_ASYNCPG

APP = "scenarios.apps.pgbouncer_session_state"

# 8 calls over 4 processes, each process's first call held until all four have one:
# four new clients want PgBouncer's two server connections at once.
STARTUP = Workload(task="startup_setting", calls=8, concurrency=4, timeout_s=60,
                   start_together=True)
SESSION_SET = replace(STARTUP, task="session_setting")
ADVISORY = replace(STARTUP, task="advisory_lock")

DIRECT = StackSpec(pgbouncer=False)
# 2 server connections for 4 worker processes: every server connection serves several
# clients, so session state always meets another client.
THROUGH_PGBOUNCER = StackSpec(pgbouncer=True, pgbouncer_pool_size=2)


def pgbouncer_with(*settings: tuple[str, str]) -> StackSpec:
    """THROUGH_PGBOUNCER with more pgbouncer.ini settings."""
    return replace(THROUGH_PGBOUNCER, pgbouncer_config=settings)


# The harness's own line is "extra_float_digits,options"; neither driver sends
# extra_float_digits, so without "options" it behaves as a stock PgBouncer (empty list).
OPTIONS_NOT_IGNORED = pgbouncer_with(("ignore_startup_parameters", "extra_float_digits"))
JIT_IGNORED = pgbouncer_with(("ignore_startup_parameters", "extra_float_digits,options,jit"))
# IntervalStyle is the setting's default; jit is added to it.
JIT_TRACKED = pgbouncer_with(("track_extra_parameters", "IntervalStyle,jit"))
# server_reset_query (DISCARD ALL by default) after every transaction.
RESET_ALWAYS = pgbouncer_with(("server_reset_query_always", "1"))
NEEDS_TRACKING = needs_pgbouncer("1.20", "track_extra_parameters")

NULLPOOL = {"pool": "null"}
JIT_AT_START = {**NULLPOOL, "startup_settings": {"jit": "off"}}

STARTUP_PARAMETER_REFUSED = Signature(
    "startup-parameter-refused", "Exception", r"unsupported startup parameter",
    description="PgBouncer refused the connection: the client sent a startup parameter "
                "PgBouncer neither tracks nor ignores (ignore_startup_parameters). The text "
                "is PgBouncer's; libpq reports no SQLSTATE for a refused connection.")
STARTUP_SETTING_LOST = Signature(
    "startup-setting-lost", f"{APP}.StartupSettingLost",
    description="The connection was accepted, but a setting the client asked for at "
                "connection start is not in force in its transaction.")
SESSION_SETTING_LEAKED = Signature(
    "session-setting-leaked", f"{APP}.SessionSettingLeaked",
    description="A new client's first transaction found a value another client had SET "
                "on the shared server connection.")
SESSION_SETTING_LOST = Signature(
    "session-setting-lost", f"{APP}.SessionSettingLost",
    description="A client's own SET was not in force in its next transaction (another "
                "server connection, or reset by PgBouncer).")
ADVISORY_LOCK_LEAKED = Signature(
    "advisory-lock-leaked", f"{APP}.ForeignAdvisoryLock",
    description="A new client's transaction ran in a server session that holds another "
                "client's session advisory lock.")
ADVISORY_UNLOCK_FAILED = Signature(
    "advisory-unlock-failed", f"{APP}.AdvisoryUnlockFailed",
    description="pg_advisory_unlock returned false for the lock the same client took in "
                "its previous transaction.")

JIT_REFUSED = reproduces("startup-parameter-refused")
JIT_LOST = reproduces("startup-setting-lost")
SETTING_LEAKS = reproduces("session-setting-leaked", "session-setting-lost")
LOCK_LEAKS = reproduces("advisory-lock-leaked", "advisory-unlock-failed")
# Observed: lost on PgBouncer 1.24.1, in force on 1.26.1 (see the docstring).
TRACKED_APPLIED_FROM_126 = until_pgbouncer("1.26", JIT_LOST, why=(
    "PgBouncer < 1.26 keeps a tracked startup parameter that PostgreSQL never reports "
    "(jit) but never applies it (varcache.c apply_var); 1.26 applies it "
    "(pgbouncer/pgbouncer#1576)"))

SCENARIO = Scenario(
    id="pgbouncer-session-state",
    app=APP,
    workload=SESSION_SET,
    stack=THROUGH_PGBOUNCER,
    signatures=(STARTUP_SETTING_LOST, SESSION_SETTING_LEAKED, SESSION_SETTING_LOST,
                ADVISORY_LOCK_LEAKED, ADVISORY_UNLOCK_FAILED, STARTUP_PARAMETER_REFUSED),
    claim=Claim(
        error="(none quoted: a production fault)",
        fix="SET LOCAL inside the transaction (SET/RESET: never supported in transaction "
            "pooling) and pg_advisory_xact_lock instead of session-level advisory locks",
        signature=None, bad="set-search-path", fixed="set-local-search-path",
        source="PgBouncer's documentation"),
    # Advisory locks still held when the calls are done (on PgBouncer's server connections).
    inspect_sql={
        "advisory_locks_held": "select count(*) from pg_locks where locktype = 'advisory' "
                               "and database = (select oid from pg_database "
                               "where datname = current_database())",
    },
    variants=(
        # A setting asked for at connection start (asyncpg server_settings, libpq options).
        Variant("startup-jit-direct", Role.CONTROL, JIT_AT_START, workload=STARTUP,
                stack=DIRECT, expect=clean(),
                description="jit=off at connection start, straight to PostgreSQL."),
        Variant("startup-jit", Role.BAD, JIT_AT_START, workload=STARTUP,
                expect={"asyncpg": JIT_REFUSED, "psycopg": JIT_LOST},
                description="jit=off at connection start through PgBouncer; "
                            "ignore_startup_parameters = extra_float_digits,options."),
        Variant("startup-jit-options-not-ignored", Role.BAD, JIT_AT_START, workload=STARTUP,
                stack=OPTIONS_NOT_IGNORED, expect=JIT_REFUSED,
                description="The same with ignore_startup_parameters = extra_float_digits "
                            "(as a stock PgBouncer for these drivers)."),
        Variant("startup-jit-ignored", Role.PARTIAL_FIX, JIT_AT_START, workload=STARTUP,
                stack=JIT_IGNORED, expect=JIT_LOST,
                requires=POOLER_SAFE_ASYNCPG,
                description="jit added to ignore_startup_parameters."),
        Variant("startup-jit-tracked", Role.PARTIAL_FIX, JIT_AT_START, workload=STARTUP,
                stack=JIT_TRACKED, requires=NEEDS_TRACKING, expect=TRACKED_APPLIED_FROM_126,
                description="track_extra_parameters = IntervalStyle,jit (PgBouncer >= 1.20)."),
        Variant("set-local-jit", Role.FIX, {**NULLPOOL, "local_settings": {"jit": "off"}},
                workload=STARTUP, expect=clean(),
                requires=POOLER_SAFE_ASYNCPG,
                description="No startup parameter; SET LOCAL jit = off in each transaction."),
        Variant("alter-database-jit", Role.FIX, {**NULLPOOL, "database_settings": {"jit": "off"}},
                workload=STARTUP, expect=clean(),
                requires=POOLER_SAFE_ASYNCPG,
                description="No startup parameter; ALTER DATABASE ... SET jit = off on the "
                            "server, before any server connection opens."),
        # SET in one client's transaction; another client's transaction reads it.
        Variant("set-search-path-direct", Role.CONTROL, NULLPOOL, stack=DIRECT, expect=clean(),
                description="SET search_path, straight to PostgreSQL."),
        Variant("set-search-path", Role.BAD, NULLPOOL, expect=SETTING_LEAKS,
                requires=POOLER_SAFE_ASYNCPG,
                description="SET search_path in a transaction, through PgBouncer."),
        Variant("set-local-search-path", Role.FIX, {**NULLPOOL, "scope": "local"},
                expect=clean(), requires=POOLER_SAFE_ASYNCPG,
                description="SET LOCAL search_path instead."),
        Variant("set-statement-timeout", Role.BAD, {**NULLPOOL, "setting": "statement_timeout"},
                expect=SETTING_LEAKS, requires=POOLER_SAFE_ASYNCPG,
                description="SET statement_timeout, through PgBouncer."),
        Variant("set-local-statement-timeout", Role.FIX,
                {**NULLPOOL, "setting": "statement_timeout", "scope": "local"}, expect=clean(),
                requires=POOLER_SAFE_ASYNCPG,
                description="SET LOCAL statement_timeout instead."),
        Variant("set-search-path-reset-always", Role.PARTIAL_FIX, NULLPOOL, stack=RESET_ALWAYS,
                expect=reproduces("session-setting-lost"),
                requires=POOLER_SAFE_ASYNCPG,
                description="SET search_path with server_reset_query_always = 1 (DISCARD ALL "
                            "after every transaction)."),
        # A session advisory lock taken in one transaction, released in the next.
        Variant("session-advisory-lock-direct", Role.CONTROL, NULLPOOL, workload=ADVISORY,
                stack=DIRECT, expect=clean(),
                description="pg_advisory_lock / pg_advisory_unlock, straight to PostgreSQL."),
        Variant("session-advisory-lock", Role.BAD, NULLPOOL, workload=ADVISORY,
                expect=LOCK_LEAKS,
                requires=POOLER_SAFE_ASYNCPG,
                description="pg_advisory_lock in one transaction, pg_advisory_unlock in the "
                            "next, through PgBouncer."),
        Variant("advisory-xact-lock", Role.FIX, {**NULLPOOL, "advisory_lock": "xact"},
                workload=ADVISORY, expect=clean(),
                requires=POOLER_SAFE_ASYNCPG,
                description="pg_advisory_xact_lock, the work inside the transaction."),
        Variant("session-advisory-lock-reset-always", Role.PARTIAL_FIX, NULLPOOL,
                workload=ADVISORY, stack=RESET_ALWAYS,
                expect=reproduces("advisory-unlock-failed"),
                requires=POOLER_SAFE_ASYNCPG,
                description="Session advisory lock with server_reset_query_always = 1."),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
