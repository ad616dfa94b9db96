"""Worker side of scenarios/test_network_stall.py.

One task, ``stalled_query``. Its body checks a connection out of the engine (a
new one with NullPool, a pooled one otherwise), runs ``select 1`` on it (the
connection is up and a transaction is open), announces the point
``before-query`` and then runs the call's query, marked with the SQL comment
``network-stall-query`` so that ``pg_stat_activity`` can find it, and returns
the call's token from the server's reply.

Where the stall hits depends on the variant's fault, not on this code:
``at_point("before-query")`` blackholes the path between ``select 1`` and the
marked query (the query goes into the blackhole); ``after_calls(1)`` blackholes
it after the first call, so the second call's checkout (a pooled connection
idle in the pool, or a new connection with NullPool) is swallowed.

A call the stall hit may end in three ways, and the task tells them apart:

* its wait ends with a TIMEOUT ERROR (a class in :data:`TIMEOUT_ERRORS`,
  anywhere in the chain: the raised exception, SQLAlchemy's ``.orig``, the
  cause): the stall became a recognisable failure. The task counts
  ``stall-ended-<class>`` and ``stall-ended-within-<n>s`` (seconds since the
  call began, rounded up). Within ``prompt_s`` that is the bounded end a user
  asks for, and the task answers its token, as the soft-time-limit app does
  with its premise; later, it raises :class:`StallEndedLate`;
* it raises anything else: that propagates, so an unexpected error cannot read
  as a bounded end;
* it never ends: Celery's hard ``--time-limit`` (where the workload sets one)
  ends the pool process, or the harness's bound counts the call hung.

Knobs: those of :mod:`scenarios.apps.common`, plus
    connect_timeout_s: the driver's own connect timeout (asyncpg ``timeout``,
        psycopg/libpq ``connect_timeout``); None leaves the driver's default.
    statement_timeout_ms: PostgreSQL's ``statement_timeout`` for the session, set
        at connect (asyncpg ``server_settings``, psycopg ``options=-c ...``).
    call_bound_s: ``asyncio.wait_for`` around the call's whole database work;
        None: no bound.
    prompt_s: a timeout error later than this many seconds after the call began
        raises :class:`StallEndedLate`.

Counters (``task_support.count``): ``stall-ended-<class>``,
``stall-ended-within-<n>s``, ``wait-interrupted-within-<n>s`` (when the error
reached the query, before the connection's cleanup), ``query-answered`` (the
marked query returned).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Coroutine
from typing import Any

from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from harness.faults.cues import reach
from harness.knobs import Knob
from harness.task_support import count, exception_chain, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, engine_kwargs

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("connect_timeout_s", (int, float), None,
         "the driver's connect timeout (asyncpg timeout, libpq connect_timeout)"),
    Knob("statement_timeout_ms", int, None, "PostgreSQL statement_timeout, set at connect"),
    Knob("call_bound_s", (int, float), None, "asyncio.wait_for around the call's database work"),
    Knob("prompt_s", (int, float), 8, "a stall that ends later than this did not end promptly"),
)
app = make_app(__name__)
logger = get_task_logger(__name__)
CALL_BOUND_S: float | None = SETTINGS.get("call_bound_s")
PROMPT_S: float = float(SETTINGS.get("prompt_s"))
MARK = "network-stall-query"
QUERY = f"select cast(:token as text) /* {MARK} */"
# What ends a stalled wait promptly and says so: public class names, matched
# anywhere in the exception's chain and its MRO (asyncio.TimeoutError is
# TimeoutError since Python 3.11; asyncpg's command_timeout and connect timeout
# raise it, so does asyncio.wait_for).
TIMEOUT_ERRORS = ("TimeoutError", "psycopg.errors.ConnectionTimeout",
                  "psycopg.errors.QueryCanceled", "billiard.exceptions.SoftTimeLimitExceeded")
engine: AsyncEngine | None = None
RUNNER = LoopRunner(SETTINGS.get("loop"))


class StallEndedLate(Exception):
    """A stalled call ended with a timeout error, but later than ``prompt_s``."""


def driver_connect_args() -> dict[str, Any]:
    """The ``connect_args`` knob plus the timeouts each driver spells its own way."""
    args: dict[str, Any] = dict(SETTINGS.get("connect_args") or {})
    connect_timeout = SETTINGS.get("connect_timeout_s")
    statement_timeout = SETTINGS.get("statement_timeout_ms")
    if SETTINGS.driver == "asyncpg":
        if connect_timeout is not None:
            args["timeout"] = connect_timeout
        if statement_timeout is not None:
            args["server_settings"] = {**args.get("server_settings", {}),
                                       "statement_timeout": str(statement_timeout)}
    else:
        if connect_timeout is not None:
            args["connect_timeout"] = connect_timeout
        if statement_timeout is not None:
            args["options"] = f"-c statement_timeout={statement_timeout}"
    return args


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global engine
    url = make_url(SETTINGS.database_url)
    if SETTINGS.get("url_query"):
        url = url.update_query_dict(dict(SETTINGS.get("url_query")))
    engine = create_async_engine(url, **{**engine_kwargs(SETTINGS),
                                         "connect_args": driver_connect_args()})
    RUNNER.after_fork()


async def query_token(token: str, began: float) -> str:
    """Check a connection out, open a transaction, then run the marked query."""
    assert engine is not None, "worker_process_init did not run in this process"
    async with engine.connect() as conn:
        try:
            await conn.execute(text("select 1"))
            reach(app, "before-query")  # a fault listening here blackholes the path now
            answer = (await conn.execute(text(QUERY), {"token": token})).scalar_one()
        except BaseException as exc:
            # Before the connection's cleanup (rollback, close), which may wait too.
            count(app, f"wait-interrupted-within-{seconds_since(began)}s")
            logger.warning("the call's wait ended after %.2f s with %r",
                           time.monotonic() - began, exc)
            raise
        count(app, "query-answered")
        return str(answer)


def seconds_since(began: float) -> int:
    return math.ceil(time.monotonic() - began)


def bounded(work: Coroutine[Any, Any, str]) -> Coroutine[Any, Any, str]:
    return asyncio.wait_for(work, CALL_BOUND_S) if CALL_BOUND_S is not None else work


def timeout_class(exc: BaseException) -> str | None:
    """The first exception of ``exc``'s chain that is a timeout error, by public name."""
    for entry in exception_chain(exc):
        if any(name in entry["bases"] for name in TIMEOUT_ERRORS):
            return str(entry["type"])
    return None


@app.task
def stalled_query(token: str) -> str:
    """Answer the token; a stall that ended in a timeout error answers it too (counted)."""
    began = time.monotonic()
    try:
        return RUNNER.run(bounded(query_token(token, began)))
    except Exception as exc:
        ended = timeout_class(exc)
        if ended is None:
            raise
        elapsed = time.monotonic() - began
        count(app, f"stall-ended-{ended}")
        count(app, f"stall-ended-within-{seconds_since(began)}s")
        logger.warning("the call ended after %.2f s with %s", elapsed, ended)
        if elapsed > PROMPT_S:
            raise StallEndedLate(f"the stalled call ended with {ended} only after "
                                 f"{elapsed:.1f} s; a prompt end is within {PROMPT_S:g} s") from exc
        return token
