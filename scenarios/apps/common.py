"""Engine and session helpers shared by the scenario apps (worker side).

Every knob is read from the variant's configuration, so a variant is pure data
and the difference between a bad variant and its fix is a difference of config.

Knobs read here:
    pool: "default" (AsyncAdaptedQueuePool) or "null" (NullPool).
    pool_size, max_overflow, pool_timeout: passed to the pool when set.
    pre_ping: pool_pre_ping=True when true.
    connect_args: a mapping passed to the driver's connect().
    url_query: a mapping added to the URL's query string.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from harness.task_support import WorkerSettings


def engine_kwargs(settings: WorkerSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if settings.get("pool", "default") == "null":
        kwargs["poolclass"] = NullPool
    else:
        for knob in ("pool_size", "max_overflow", "pool_timeout"):
            if settings.get(knob) is not None:
                kwargs[knob] = settings.get(knob)
    if settings.get("pre_ping"):
        kwargs["pool_pre_ping"] = True
    if settings.get("connect_args"):
        kwargs["connect_args"] = dict(settings.get("connect_args"))
    return kwargs


def make_engine(settings: WorkerSettings) -> AsyncEngine:
    """The engine the variant's configuration describes."""
    url = make_url(settings.database_url)
    if settings.get("url_query"):
        url = url.update_query_dict(dict(settings.get("url_query")))
    return create_async_engine(url, **engine_kwargs(settings))
