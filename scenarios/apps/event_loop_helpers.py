"""Worker side of scenarios/test_event_loop_helpers.py.

One task, ``echo_token``, runs a list of steps in a fixed order. Each step gets an
event loop with one asyncio helper and runs the same coroutine on it: a real
query through async SQLAlchemy that echoes the call's token. The engine is made
after the fork with NullPool (the variants set ``pool="null"``), so no connection
outlives a loop and only the loop helper is under test. Because every call runs
its steps in the order the variant gives, "asyncio.run() earlier in the same
process" does not depend on which process receives which call.

Knobs: those of :mod:`scenarios.apps.common`, plus
    steps: the helpers each call uses, in order (default ``["asyncio.run"]``):
        "asyncio.run": ``asyncio.run(coro)``;
        "get_event_loop": ``asyncio.get_event_loop().run_until_complete(coro)``;
        "get_running_loop": ``asyncio.get_running_loop().run_until_complete(coro)``.
    set_loop_at_process_start: ``worker_process_init`` makes a loop with
        ``asyncio.new_event_loop()`` and installs it with ``asyncio.set_event_loop()``,
        so ``get_event_loop()`` finds a current loop instead of creating one.
    deprecation_warnings: "show" (default: each one is counted and logged) or
        "error" (raised, as under ``python -W error::DeprecationWarning`` or a test
        suite's ``filterwarnings = error``).

Counters (in the run's notes):
    deprecation-warnings: DeprecationWarnings raised or shown while a step ran.
    implicit-loops: loops ``get_event_loop()`` returned that this module did not
        make itself, i.e. loops asyncio created implicitly.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.knobs import Knob
from harness.task_support import count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, make_engine

SETTINGS = settings(
    ENGINE_KNOBS,
    Knob("steps", list, ["asyncio.run"], "the loop helper each successive call of a process "
         "uses: 'asyncio.run', 'get_event_loop' or 'get_running_loop'"),
    Knob("deprecation_warnings", str, "show", "'error': DeprecationWarning becomes an error",
         choices=("show", "error")),
    Knob("set_loop_at_process_start", bool, False,
         "set a current event loop in worker_process_init"),
)
app = make_app(__name__)
STEPS: list[str] = list(SETTINGS.get("steps"))
WARNINGS_ARE_ERRORS: bool = SETTINGS.get("deprecation_warnings") == "error"
logger = logging.getLogger(__name__)

engine: AsyncEngine | None = None
# ids of the loops this process has already seen from get_event_loop() or made
# itself; a loop not in here was created implicitly by asyncio's policy.
known_loop_ids: set[int] = set()


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    """Each prefork child gets its own engine and, if asked, its own current loop."""
    global engine
    engine = make_engine(SETTINGS)
    if SETTINGS.get("set_loop_at_process_start"):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        known_loop_ids.add(id(loop))


async def echo_through_database(token: str) -> str:
    """One real round trip: the token comes back from PostgreSQL."""
    assert engine is not None, "worker_process_init did not run in this process"
    async with engine.connect() as conn:
        result = await conn.execute(text("select cast(:token as text)"), {"token": token})
        return result.scalar_one()


def run_with_asyncio_run(coro_factory: Callable[[], Coroutine[Any, Any, str]]) -> str:
    return asyncio.run(coro_factory())


def run_with_get_event_loop(coro_factory: Callable[[], Coroutine[Any, Any, str]]) -> str:
    loop = asyncio.get_event_loop()
    if id(loop) not in known_loop_ids:
        known_loop_ids.add(id(loop))
        count(app, "implicit-loops")
    return loop.run_until_complete(coro_factory())


def run_with_get_running_loop(coro_factory: Callable[[], Coroutine[Any, Any, str]]) -> str:
    # Outside a coroutine there is never a running loop; the coroutine is only
    # created once a loop was found, so a failure leaves no never-awaited warning.
    loop = asyncio.get_running_loop()
    return loop.run_until_complete(coro_factory())


STEP_RUNNERS: dict[str, Callable[[Callable[[], Coroutine[Any, Any, str]]], str]] = {
    "asyncio.run": run_with_asyncio_run,
    "get_event_loop": run_with_get_event_loop,
    "get_running_loop": run_with_get_running_loop,
}


def run_step(step: str, token: str) -> str:
    """Run one step under the variant's warning policy; count the warnings it shows."""
    runner = STEP_RUNNERS[step]
    with warnings.catch_warnings(record=not WARNINGS_ARE_ERRORS) as shown:
        warnings.simplefilter("error" if WARNINGS_ARE_ERRORS else "always", DeprecationWarning)
        try:
            return runner(lambda: echo_through_database(token))
        except DeprecationWarning:
            count(app, "deprecation-warnings")
            raise
        finally:
            for warning in shown or ():
                if issubclass(warning.category, DeprecationWarning):
                    count(app, "deprecation-warnings")
                    # Recorded warnings are not printed; keep them in the worker log.
                    logger.warning("step %s: %s: %s (%s:%s)", step, warning.category.__name__,
                                   warning.message, warning.filename, warning.lineno)


@app.task
def echo_token(token: str) -> str:
    """Run every step of the variant in order; each must echo the token."""
    answer = token
    for step in STEPS:
        answer = run_step(step, token)
        if answer != token:
            break  # a wrong answer is the harness's to report, not ours
    return answer
