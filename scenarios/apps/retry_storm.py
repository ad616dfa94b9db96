"""Worker side of scenarios/test_retry_storm.py.

Each call opens ``connections`` connections at once (``asyncio.gather``), runs
``pg_sleep(hold_s)`` on each, closes them and returns its token. When opening a
connection fails, the call closes the ones it did get (a well-behaved task gives
its share back at once) and raises; Celery's ``autoretry_for`` then decides,
from the variant's retry policy, whether and when the call runs again.

The engine is created after the fork (``worker_process_init``), as the article
recommends, so the only thing under test is the connection limit and the retry
policy.

Knobs: those of :mod:`scenarios.apps.common`, plus
    connections: connections one call holds at the same time.
    hold_s: seconds each connection runs ``pg_sleep``.
    login_role: log in as this role (password: the role's name) instead of the
        run's superuser; the scenario's ``setup_sql`` creates it. None: superuser.
    uuid_statement_names, loop: as in :mod:`scenarios.apps.common`.
    retry_on: which exceptions trigger a retry: "dbapi" (``sqlalchemy.exc.DBAPIError``),
        "operational" (``sqlalchemy.exc.OperationalError``) or "driver" (the
        driver's own base class: ``asyncpg.PostgresError`` / ``psycopg.Error``).
    max_retries: retries before the call fails with the last error.
    countdown: seconds before a retry when ``backoff`` is 0 (a fixed countdown).
    backoff: Celery's ``retry_backoff`` factor in whole seconds (0: off); the
        n-th retry waits ``backoff * 2**n`` seconds.
    jitter: Celery's ``retry_jitter``: a random whole number of seconds between
        0 and the backoff instead of the backoff itself.

Counters (``task_support.count``): ``attempts`` (every run of the body) and
``retries`` (every retry Celery scheduled, from the ``task_retry`` signal).
"""

from __future__ import annotations

import asyncio
from typing import Any

from celery.signals import task_retry, worker_process_init
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from harness.knobs import Knob
from harness.task_support import count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("login_role", str, None, "log in as this role (its own connection limit)"),
    Knob("connections", int, 1, "connections each call opens at once"),
    Knob("hold_s", (int, float), 1.0, "seconds each connection is held"),
    Knob("retry_on", str, "dbapi", "what autoretry_for catches",
         choices=("dbapi", "operational", "driver")),
    Knob("max_retries", int, 3, "Celery's max_retries"),
    Knob("countdown", (int, float), 1.0, "seconds before a retry (without backoff)"),
    Knob("backoff", int, 0, "retry_backoff: exponential backoff factor (0: off)"),
    Knob("jitter", bool, False, "retry_jitter"),
)
app = make_app(__name__)
engine: AsyncEngine | None = None
RUNNER = LoopRunner(SETTINGS.get("loop"))


def retry_exceptions(retry_on: str, driver: str) -> tuple[type[BaseException], ...]:
    """The exception classes the task's ``autoretry_for`` names."""
    if retry_on == "dbapi":
        return (sa_exc.DBAPIError,)
    if retry_on == "operational":
        return (sa_exc.OperationalError,)
    if retry_on == "driver":
        # What a handler written against the driver's docs catches. SQLAlchemy
        # wraps the driver's exception (it is only in ``.orig`` / ``__cause__``).
        if driver == "asyncpg":
            import asyncpg
            return (asyncpg.PostgresError,)
        import psycopg
        return (psycopg.Error,)
    raise ValueError(f"unknown retry_on knob {retry_on!r}: use dbapi, operational or driver")


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    """One engine per prefork process, made after the fork, logging in as the variant says."""
    global engine
    engine = make_engine(SETTINGS, login_role=SETTINGS.get("login_role"))
    RUNNER.after_fork()


@task_retry.connect
def count_retry(**_: Any) -> None:
    """Count every retry Celery schedules (manual or ``autoretry_for``) in this process."""
    count(app, "retries")


async def open_connection() -> AsyncConnection:
    """One connection of the engine, started (a NullPool engine connects here)."""
    assert engine is not None
    conn = engine.connect()
    await conn.start()
    return conn


async def hold_connections(token: str) -> str:
    """Open all connections at once, hold them, give them back; fail if one was refused."""
    opened = await asyncio.gather(
        *(open_connection() for _ in range(SETTINGS.get("connections"))),
        return_exceptions=True)
    conns = [c for c in opened if isinstance(c, AsyncConnection)]
    refused = [e for e in opened if isinstance(e, BaseException)]
    try:
        if refused:
            raise refused[0]
        sleep = text("select pg_sleep(:seconds)")
        await asyncio.gather(*(c.execute(sleep, {"seconds": SETTINGS.get("hold_s")})
                               for c in conns))
        return token
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


@app.task(
    autoretry_for=retry_exceptions(SETTINGS.get("retry_on"), SETTINGS.driver),
    retry_kwargs={"max_retries": SETTINGS.get("max_retries"),
                  "countdown": SETTINGS.get("countdown")},
    retry_backoff=SETTINGS.get("backoff"),
    retry_jitter=SETTINGS.get("jitter"),
)
def storm(token: str) -> str:
    """Hold the variant's connections for a while and return ``token``.

    The workload starts every process's first call at once, so the burst really is
    one (a retry does not wait again).
    """
    count(app, "attempts")
    return RUNNER.run(hold_connections(token))
