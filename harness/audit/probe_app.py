"""The Celery app an audit's worker runs: the user's code behind one probe task.

Responsibility: import the user's modules where their own worker would, and use
their engine or session factory through their way of running a coroutine. Nothing
of the user's code is edited or mocked.

At import (``celery worker`` imports this module in the parent, before the pool
forks): the variable the user's code reads its URL from is pointed at the run's
database, keeping the user's driver; their engine module is imported (an engine
built at import is built here, before the fork, as in their worker); their Celery
app's settings (time limits, acks, retry policy) are taken over, with the broker,
backend and queue the run's own. The ``parent-use-before-fork`` hazard then runs
one query in the parent, as a start-up check would.

The probe task ``probe(token)`` gets the user's engine (a factory is called in each
call, as a task that builds its engine does) and, through the user's runner, runs
the hazard's work: the call's token read back ``statements`` times (one connection,
or ``connections`` at once); the first call may run a long query (the soft time
limit's target) or stop at the point ``before-query`` (where a fault stalls the
network). It returns the token.

Knobs: ``audit`` (the audit's input, :class:`harness.audit.config.AuditConfig` as a
dict) and the hazard's: ``statements``, ``connections``, ``hold_s``,
``slow_first_call_s``, ``parent_query``, ``stall_point``, ``prompt_s``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text

from harness.audit.config import AuditConfig
from harness.faults.cues import reach
from harness.knobs import Knob
from harness.task_support import call_index, count, make_app, settings

SETTINGS = settings(
    Knob("audit", dict, None, "the audit's input (AuditConfig as a dict)"),
    Knob("statements", int, 1, "times each call reads its token back"),
    Knob("connections", int, 1, "connections each call uses at once"),
    Knob("hold_s", (int, float), 0, "seconds each connection runs pg_sleep"),
    Knob("slow_first_call_s", (int, float), None,
         "the first call runs pg_sleep this long (a soft time limit's target)"),
    Knob("parent_query", bool, False, "the parent runs one query before the pool forks"),
    Knob("stall_point", bool, False, "the first call stops at 'before-query' on its connection"),
    Knob("prompt_s", (int, float), 10, "a stalled call that fails later than this raises"),
)
CONFIG = AuditConfig.from_json(__import__("json").dumps(SETTINGS.get("audit")))

for _folder in reversed(CONFIG.search_path()):
    sys.path.insert(0, _folder)
# The user's code reads its URL from here: the run's database, with the driver their
# URL names (the harness built SETTINGS.database_url for that driver).
os.environ[CONFIG.url_env] = SETTINGS.database_url


def _import(path: str) -> Any:
    return _attribute(importlib.import_module(path.partition(":")[0]), path)


def _attribute(module: Any, path: str) -> Any:
    found = module
    for part in path.partition(":")[2].split("."):
        found = getattr(found, part)
    return found


# Imported here, in the parent, before the fork: an engine built at import is built now.
# The attribute is read at each call, after worker_process_init, where the user's code
# may make it.
USER_MODULE = importlib.import_module(CONFIG.engine.partition(":")[0])
if CONFIG.celery_app:
    importlib.import_module(CONFIG.celery_app.partition(":")[0])
app = make_app(__name__)
# The user's settings win over make_app's (acks, time limits); broker, backend and
# queue stay the run's own.
app.conf.update(CONFIG.user_settings.get("conf", {}))
RETRY: dict[str, Any] = dict(CONFIG.user_settings.get("retry", {}))


class StallEndedLate(Exception):
    """A stalled call failed, but only after ``prompt_s``: nothing bounded it in time."""


def _runner() -> Callable[[Awaitable[Any]], Any]:
    if CONFIG.run == "asyncio.run":
        return asyncio.run
    if CONFIG.run == "loop-per-process":
        return _per_process_loop
    return _import(CONFIG.run)


_loop: asyncio.AbstractEventLoop | None = None


def _per_process_loop(coroutine: Awaitable[Any]) -> Any:
    """One event loop per pool process, made at its first call and kept."""
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


RUN = _runner()


def _engine_or_factory() -> tuple[Any, Any]:
    """(engine, session factory or None) for this call."""
    from sqlalchemy.ext.asyncio import AsyncEngine

    obj = _attribute(USER_MODULE, CONFIG.engine)
    if CONFIG.kind.endswith("factory"):
        obj = obj()
    if isinstance(obj, AsyncEngine):
        return obj, None
    return obj.kw.get("bind"), obj


async def _read_back(token: str, *, sleep_s: float = 0) -> str:
    """Read ``token`` back through the user's engine or session, ``statements`` times."""
    engine, sessions = _engine_or_factory()
    query = text("select cast(:t as text), pg_sleep(cast(:s as float))")
    value = token
    if sessions is not None:
        async with sessions() as session:
            for _ in range(SETTINGS.get("statements")):
                value = (await session.execute(query, {"t": value, "s": sleep_s})).scalar_one()
            await session.commit()
        return value
    async with engine.connect() as conn:
        for _ in range(SETTINGS.get("statements")):
            value = (await conn.execute(query, {"t": value, "s": sleep_s})).scalar_one()
        await conn.commit()
    return value


async def _stalled(token: str) -> str:
    """Check a connection out, stop at 'before-query' (the fault stalls the path), query."""
    engine, _ = _engine_or_factory()
    async with engine.connect() as conn:
        await conn.execute(text("select 1"))
        reach(app, "before-query")
        value = (await conn.execute(text("select cast(:t as text)"), {"t": token})).scalar_one()
    return value


async def _work(token: str) -> str:
    first = call_index(token) == 0
    if first and SETTINGS.get("stall_point"):
        return await _stalled(token)
    if first and SETTINGS.get("slow_first_call_s"):
        return await _read_back(token, sleep_s=float(SETTINGS.get("slow_first_call_s")))
    hold = float(SETTINGS.get("hold_s"))
    if SETTINGS.get("connections") > 1:
        values = await asyncio.gather(*(_read_back(token, sleep_s=hold)
                                        for _ in range(SETTINGS.get("connections"))))
        return values[0]
    return await _read_back(token, sleep_s=hold)


if SETTINGS.get("parent_query"):
    from celery.signals import worker_init

    @worker_init.connect
    def start_up_check(**_: object) -> None:
        """A start-up check in the parent, before the pool forks (engine-before-fork)."""
        RUN(_read_back("parent-check"))
        count(app, "parent-query")


def _retry_classes() -> tuple[type[BaseException], ...]:
    names = list(CONFIG.retry_on) or list(RETRY.get("autoretry_for", ()))
    return tuple(_import(":".join(name.rsplit(".", 1))) for name in names)


RETRY_ON = _retry_classes()


@app.task(bind=True, autoretry_for=RETRY_ON, max_retries=RETRY.get("max_retries", 3),
          retry_backoff=RETRY.get("retry_backoff", False),
          retry_backoff_max=RETRY.get("retry_backoff_max", 600),
          retry_jitter=RETRY.get("retry_jitter", True),
          default_retry_delay=RETRY.get("default_retry_delay", 180))
def probe(self: Any, token: str) -> str:
    """Run the hazard's work through the user's engine and runner; answer the token."""
    began = time.monotonic()
    if self.request.retries:
        count(app, "retried")
    first = call_index(token) == 0
    try:
        return RUN(_work(token))
    except Exception as exc:
        if first and SETTINGS.get("stall_point"):
            # The stall ending in an error is what a user wants; ending late is the hazard.
            waited = time.monotonic() - began
            if waited <= float(SETTINGS.get("prompt_s")):
                count(app, f"stall-ended-{type(exc).__name__}")
                return token
            raise StallEndedLate(f"the stalled call failed only after {waited:.1f} s: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if first and SETTINGS.get("slow_first_call_s") and isinstance(exc, SoftTimeLimitExceeded):
            # The limit ending the slow query is the premise, not the hazard: what the
            # interrupted call leaves for the next calls of this process is.
            count(app, "soft-limit-ended-slow-query")
            return token
        raise
