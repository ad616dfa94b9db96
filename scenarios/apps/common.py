"""Engine and session helpers shared by the scenario apps (worker side).

Every knob is read from the variant's configuration, so a variant is pure data
and the difference between a bad variant and its fix is a difference of config.
The knobs declared here have one meaning in every app that reads them: an app
declares ``ENGINE_KNOBS`` (and ``LOOP``) beside its own in ``settings(...)``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from harness.knobs import Knob
from harness.task_support import WorkerSettings

ENGINE_KNOBS = (
    Knob("pool", str, "default", "the engine's pool: 'default' (AsyncAdaptedQueuePool) or "
         "'null' (NullPool)", choices=("default", "null")),
    Knob("pool_size", int, None, "pool_size of the default pool (SQLAlchemy's when unset)"),
    Knob("max_overflow", int, None, "max_overflow of the default pool"),
    Knob("pool_timeout", (int, float), None, "seconds a checkout waits for a pooled connection"),
    Knob("pre_ping", bool, False, "pool_pre_ping=True: test each connection at checkout"),
    Knob("pool_recycle", int, None, "pool_recycle: replace a pooled connection older than this "
         "many seconds at checkout"),
    Knob("connect_args", dict, None, "keyword arguments for the driver's connect()"),
    Knob("url_query", dict, None, "added to the database URL's query string"),
    Knob("uuid_statement_names", bool, False,
         "asyncpg: prepared_statement_name_func gives every statement a uuid name "
         "(SQLAlchemy's recipe for PgBouncer); psycopg has no such hook and ignores it"),
)
LOOP = Knob(
    "loop", str, "per-task",
    "where a task's coroutine runs: 'per-task' (asyncio.run() per call), 'per-process' (one "
    "loop per pool process, made after the fork) or 'inherited' (one loop made at import, in "
    "the parent, that every child copies)", choices=("per-task", "per-process", "inherited"))


T = TypeVar("T")


class LoopRunner:
    """The one implementation of the ``loop`` knob: where a task's coroutine runs.

    "per-task": a new ``asyncio.run()`` per call. "per-process": one loop per pool
    process, made after the fork (call :meth:`after_fork` in ``worker_process_init``).
    "inherited": one loop made here, at import, in the parent, so every child runs on
    its copy (selector included).
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.loop: asyncio.AbstractEventLoop | None = (
            asyncio.new_event_loop() if mode == "inherited" else None)

    def after_fork(self) -> None:
        if self.mode == "per-process":
            self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to its end on the process's loop, else in ``asyncio.run()``."""
        if self.loop is None:
            return asyncio.run(coroutine)
        return self.loop.run_until_complete(coroutine)


def uuid_statement_name() -> str:
    """SQLAlchemy's recipe for PgBouncer: a statement name no other client can have used.

    Behind PgBouncer in transaction mode a server connection outlives the client
    connection, and asyncpg's per-connection names (``__asyncpg_stmt_1__``) collide
    there: "prepared statement ... already exists".
    """
    return f"__asyncpg_{uuid.uuid4()}__"


def engine_kwargs(settings: WorkerSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if settings.get("pool") == "null":
        kwargs["poolclass"] = NullPool
    else:
        for knob in ("pool_size", "max_overflow", "pool_timeout", "pool_recycle"):
            if settings.get(knob) is not None:
                kwargs[knob] = settings.get(knob)
    if settings.get("pre_ping"):
        kwargs["pool_pre_ping"] = True
    if settings.get("connect_args"):
        kwargs["connect_args"] = dict(settings.get("connect_args"))
    if settings.get("uuid_statement_names") and settings.driver == "asyncpg":
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}),
                                  "prepared_statement_name_func": uuid_statement_name}
    return kwargs


def make_engine(settings: WorkerSettings, login_role: str | None = None, *,
                connect_args_under: Mapping[str, Any] | None = None,
                connect_args_over: Mapping[str, Any] | None = None) -> AsyncEngine:
    """The engine the variant's configuration describes (as ``login_role`` if given).

    An app's own driver arguments go ``under`` the variant's ``connect_args`` (defaults
    a variant may change) or ``over`` them (what the app's knobs decide).
    """
    url = make_url(settings.database_url)
    if login_role:
        url = url.set(username=login_role, password=login_role)
    if settings.get("url_query"):
        url = url.update_query_dict(dict(settings.get("url_query")))
    kwargs = engine_kwargs(settings)
    if connect_args_under or connect_args_over:
        kwargs["connect_args"] = {**(connect_args_under or {}), **kwargs.get("connect_args", {}),
                                  **(connect_args_over or {})}
    return create_async_engine(url, **kwargs)
