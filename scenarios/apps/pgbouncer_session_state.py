"""Worker side of scenarios/test_pgbouncer_session_state.py.

Every call opens its own client connection (NullPool, ``asyncio.run()`` per call), so
each call is a new client: whatever session state its first transaction finds, it did
not make. Three tasks, one per kind of session state; each turns a leak into a failed
call with an exception of its own, found by a check the task makes on the server:

``startup_setting``
    The client asks for settings when it connects (``startup_settings``: asyncpg's
    ``server_settings``, libpq's ``options='-c name=value'`` for psycopg), or sets them
    with ``SET LOCAL`` in its transaction (``local_settings``), or they are set on the
    database (``database_settings``: ``ALTER DATABASE ... SET``, done once by the
    worker's parent process before the fork). Its transaction then reads each of
    ``required_settings`` from ``pg_settings``; a value not in force raises
    :class:`StartupSettingLost`.
``session_setting``
    First transaction: reads ``setting`` (``search_path`` or ``statement_timeout``);
    a value other than the session's start value (``reset_val``) was set by another
    client and raises :class:`SessionSettingLeaked`. Then it sets its own value, one
    that names the call and its process (``SET``, or ``SET LOCAL`` with
    ``scope='local'``). With ``SET``, a second transaction reads the setting again:
    a plain ``SET`` promises the value for the rest of the session, so a different
    value raises :class:`SessionSettingLost`.
``advisory_lock``
    A job guarded by an advisory lock whose key is the call's own (nobody else ever
    takes it). First, in its first transaction, the call lists the advisory locks
    the server session already holds: any is another client's and raises
    :class:`ForeignAdvisoryLock`. With ``advisory_lock='session'`` it takes
    ``pg_advisory_lock`` in that transaction, does the job's work (``work_s``) outside
    any transaction, and calls ``pg_advisory_unlock`` in a second one; ``false`` raises
    :class:`AdvisoryUnlockFailed`, naming the server session that still holds the lock
    (or none). With ``'xact'`` it takes ``pg_advisory_xact_lock`` and does the work
    inside the one transaction; COMMIT releases the lock.

Every driver's prepared statements are kept off (asyncpg ``statement_cache_size=0``,
psycopg ``prepare_threshold=None``): behind PgBouncer they fail for their own reason
(pgbouncer-prepared-asyncpg, pgbouncer-prepared-psycopg), which must not mix in here.

Knobs: those of :mod:`scenarios.apps.common` (pool, ...), plus the ones declared below.

Counters (``task_support.count``): ``leak-from-this-process`` / ``leak-from-another-process``
(whose ``SET search_path`` a call found), ``own-setting-lost``, ``foreign-lock-seen``,
``unlock-false``, ``lock-stays-elsewhere`` (the failed unlock's lock is held by another
server session), ``lock-gone`` (nobody holds it any more), ``server-switch`` (a call's
two transactions ran in different server sessions).
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from harness.knobs import Knob
from harness.task_support import call_index, count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LoopRunner, engine_kwargs

SETTINGS = settings(
    ENGINE_KNOBS,
    Knob("startup_settings", dict, None,
         "server settings the client sends when it connects (asyncpg server_settings; "
         "psycopg: libpq options='-c name=value')"),
    Knob("local_settings", dict, None,
         "startup_setting: SET LOCAL name = value at the start of its transaction"),
    Knob("database_settings", dict, None,
         "ALTER DATABASE <the run's database> SET name = value, once, before the fork"),
    Knob("required_settings", dict, {"jit": "off"},
         "startup_setting: the values its transaction must find in force"),
    Knob("setting", str, "search_path", "the setting session_setting changes",
         choices=("search_path", "statement_timeout")),
    Knob("scope", str, "session", "session_setting: 'session' (SET) or 'local' (SET LOCAL)",
         choices=("session", "local")),
    Knob("advisory_lock", str, "session",
         "advisory_lock: 'session' (pg_advisory_lock in one transaction, pg_advisory_unlock "
         "in the next) or 'xact' (pg_advisory_xact_lock, released by COMMIT)",
         choices=("session", "xact")),
    Knob("work_s", (int, float), 0.5,
         "advisory_lock: seconds of the job's own work while it holds the lock"),
)
app = make_app(__name__)
# A connection lives for one call (NullPool), so a new loop per call loses nothing.
RUNNER = LoopRunner("per-task")
_engine: AsyncEngine | None = None

# Values that say who set them: 600000 + the call's index (ms, harmless: no statement
# here runs for 10 minutes), or a schema name with the call's index and process id.
TIMEOUT_BASE_MS = 600_000
SEARCH_PATH_OWNER = re.compile(r"call_(\d+)_p(\d+)")
# Advisory lock keys: a call's own, never taken by another call.
LOCK_KEY_BASE = 7_000_000


class StartupSettingLost(Exception):
    """A setting the client asked for is not in force in its transaction."""


class SessionSettingLeaked(Exception):
    """A new client's first transaction found a setting another client SET."""


class SessionSettingLost(Exception):
    """A client's own SET was not in force in its next transaction."""


class ForeignAdvisoryLock(Exception):
    """A new client's transaction ran in a server session holding another client's advisory lock."""


class AdvisoryUnlockFailed(Exception):
    """pg_advisory_unlock returned false for the lock the same client took."""


def connect_args() -> dict[str, Any]:
    """The driver's arguments: prepared statements off, and the startup settings."""
    wanted = dict(SETTINGS.get("startup_settings") or {})
    if SETTINGS.driver == "asyncpg":
        found: dict[str, Any] = {"statement_cache_size": 0}
        if wanted:
            found["server_settings"] = {k: str(v) for k, v in wanted.items()}
        return found
    found = {"prepare_threshold": None}
    if wanted:
        found["options"] = " ".join(f"-c {k}={v}" for k, v in wanted.items())
    return found


def make_session_engine(database: str | None = None) -> AsyncEngine:
    kwargs = engine_kwargs(SETTINGS)
    kwargs["connect_args"] = {**kwargs.get("connect_args", {}), **connect_args()}
    url = make_url(SETTINGS.database_url)
    if database is not None:
        url = url.set(database=database)
    return create_async_engine(url, **kwargs)


async def alter_database(values: dict[str, Any]) -> None:
    """``ALTER DATABASE ... SET`` from a connection to another database.

    Through PgBouncer, a connection to the run's own database would open a server
    session of its pool before the ALTER, and that session would keep the old value;
    the ``postgres`` database has a pool of its own.
    """
    target = make_url(SETTINGS.database_url).database
    engine = make_session_engine(database="postgres")
    try:
        async with engine.begin() as conn:
            for name, value in values.items():
                await conn.execute(text(f'alter database "{target}" set {name} = \'{value}\''))
    finally:
        await engine.dispose()


if SETTINGS.get("database_settings"):
    # In the worker's parent, before the fork and before any call connects.
    asyncio.run(alter_database(dict(SETTINGS.get("database_settings"))))


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global _engine
    _engine = make_session_engine()


def engine() -> AsyncEngine:
    assert _engine is not None, "worker_process_init did not run in this process"
    return _engine


async def read_setting(conn: AsyncConnection, name: str) -> tuple[str, str, str, int]:
    """``(setting, reset_val, source, server pid)`` of ``name`` in this transaction."""
    row = (await conn.execute(text(
        "select setting, reset_val, source, pg_backend_pid() from pg_settings where name = :n"),
        {"n": name})).one()
    return str(row[0]), str(row[1]), str(row[2]), int(row[3])


# --- startup_setting ---------------------------------------------------------------


async def check_startup_settings(token: str) -> str:
    required = dict(SETTINGS.get("required_settings") or {})
    async with engine().connect() as conn, conn.begin():
        for name, value in (SETTINGS.get("local_settings") or {}).items():
            await conn.execute(text(f"set local {name} = '{value}'"))
        for name, wanted in required.items():
            seen, _, source, pid = await read_setting(conn, name)
            if seen != str(wanted):
                raise StartupSettingLost(
                    f"call {token}: {name} is {seen!r} (source: {source}) in server session "
                    f"{pid}, but this client asked for {wanted!r}")
    return token


@app.task
def startup_setting(token: str) -> str:
    """Check that the settings the client asked for are in force in its transaction."""
    return RUNNER.run(check_startup_settings(token))


# --- session_setting ---------------------------------------------------------------


def own_value(token: str) -> str:
    """A value of ``setting`` that names this call (and, for search_path, its process)."""
    if SETTINGS.get("setting") == "statement_timeout":
        return str(TIMEOUT_BASE_MS + call_index(token))
    return f"call_{call_index(token):03d}_p{os.getpid()}, public"


def who_set(value: str) -> str:
    """Which call (and process) set ``value``, as far as the value says."""
    found = SEARCH_PATH_OWNER.search(value)
    if found:
        index, pid = int(found.group(1)), int(found.group(2))
        count(app, "leak-from-this-process" if pid == os.getpid() else "leak-from-another-process")
        return f"call {index} in worker process {pid} (this process is {os.getpid()})"
    if value.isdigit() and int(value) >= TIMEOUT_BASE_MS:
        return f"call {int(value) - TIMEOUT_BASE_MS}"
    return "another client"


async def set_and_check(token: str) -> str:
    name = SETTINGS.get("setting")
    local = SETTINGS.get("scope") == "local"
    mine = own_value(token)
    async with engine().connect() as conn:
        async with conn.begin():
            seen, start, source, pid = await read_setting(conn, name)
            if seen != start:
                raise SessionSettingLeaked(
                    f"call {token}: this new client's first transaction finds {name} = "
                    f"{seen!r} (source: {source}; the session began with {start!r}) in server "
                    f"session {pid}: set by {who_set(seen)}")
            await conn.execute(text(f"set {'local ' if local else ''}{name} = {mine}"))
            set_on = pid
        if local:
            return token  # SET LOCAL promises nothing beyond its transaction
        async with conn.begin():
            seen, start, source, pid = await read_setting(conn, name)
        if seen.replace(" ", "") != mine.replace(" ", ""):
            count(app, "own-setting-lost")
            raise SessionSettingLost(
                f"call {token}: its SET {name} = {mine} (in server session {set_on}) is gone "
                f"in its next transaction, which finds {seen!r} (source: {source}) in server "
                f"session {pid}")
    return token


@app.task
def session_setting(token: str) -> str:
    """Check for another client's setting, set one's own, check it is still there."""
    return RUNNER.run(set_and_check(token))


# --- advisory_lock -----------------------------------------------------------------

HELD_HERE = text("select objid::bigint from pg_locks where locktype = 'advisory' "
                 "and pid = pg_backend_pid() order by 1")
HOLDER = text("select pid from pg_locks where locktype = 'advisory' and objid::bigint = :k")


async def refuse_foreign_locks(conn: AsyncConnection, token: str) -> None:
    held = [int(r[0]) for r in (await conn.execute(HELD_HERE)).all()]
    if held:
        count(app, "foreign-lock-seen")
        owners = ", ".join(f"call {k - LOCK_KEY_BASE}" for k in held)
        raise ForeignAdvisoryLock(
            f"call {token}: this new client's transaction runs in a server session that "
            f"already holds advisory lock(s) {held}, taken by {owners}")


async def guarded_job(token: str) -> str:
    key = LOCK_KEY_BASE + call_index(token)
    work_s = float(SETTINGS.get("work_s"))
    async with engine().connect() as conn:
        if SETTINGS.get("advisory_lock") == "xact":
            async with conn.begin():
                await refuse_foreign_locks(conn, token)
                await conn.execute(text("select pg_advisory_xact_lock(:k)"), {"k": key})
                await asyncio.sleep(work_s)  # the job's work, inside the lock's transaction
            return token
        async with conn.begin():
            await refuse_foreign_locks(conn, token)
            taken_on = (await conn.execute(text("select pg_advisory_lock(:k), pg_backend_pid()"),
                                           {"k": key})).one()[1]
        await asyncio.sleep(work_s)  # the job's work, between the two transactions
        async with conn.begin():
            released, released_on = (await conn.execute(
                text("select pg_advisory_unlock(:k), pg_backend_pid()"), {"k": key})).one()
            holders = [int(r[0]) for r in (await conn.execute(HOLDER, {"k": key})).all()]
    if taken_on != released_on:
        count(app, "server-switch")
    if not released:
        count(app, "unlock-false")
        count(app, "lock-stays-elsewhere" if holders else "lock-gone")
        where = (f"server session {holders[0]} still holds it" if holders
                 else "no session holds it any more")
        raise AdvisoryUnlockFailed(
            f"call {token}: pg_advisory_unlock({key}) returned false in server session "
            f"{released_on}; the lock was taken in server session {taken_on}, and {where}")
    return token


@app.task
def advisory_lock(token: str) -> str:
    """A job guarded by an advisory lock of its own; fail on any sign of a leak."""
    return RUNNER.run(guarded_job(token))
