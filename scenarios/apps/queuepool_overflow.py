"""Worker side of scenarios/test_queuepool_overflow.py.

Each call fans out into ``fan_out`` coroutines (``asyncio.gather``); each one
checks out its own connection from the process's engine, runs
``pg_sleep(hold_s)`` on it and gives it back. The call waits for all of them,
then raises the first error, if any, or returns its token. Waiting for all of
them (``return_exceptions=True``) keeps a failed call from leaving coroutines
behind on a loop the next call reuses.

Calls run on one event loop per process (created in ``worker_process_init``), so
the pool and its connections live from one call to the next, as a pool is meant
to; loop-bound-pool covers what ``asyncio.run`` per call does to a pool.

Knobs: those of :mod:`scenarios.apps.common` (``pool``, ``pool_size``,
``max_overflow``, ``pool_timeout``), plus
    fan_out: connections one call checks out at the same time.
    hold_s: seconds each connection runs ``pg_sleep``.
    bound: at most this many coroutines of a call hold a connection at once
        (``asyncio.Semaphore``); None: no bound.
    engine_at: "process-init" (engine made in ``worker_process_init``, after the
        fork) or "import" (made at import, in the parent, before the fork; the
        parent never uses it).

Counters (``task_support.count``): ``checkouts`` (connections a call got) and
``checkout_errors`` (checkouts that raised, e.g. the pool's timeout).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.knobs import Knob
from harness.task_support import count, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LoopRunner, make_engine

SETTINGS = settings(
    ENGINE_KNOBS,
    Knob("engine_at", str, None, "'import': one engine per process, made at import; unset: "
         "one per call", choices=("import",)),
    Knob("hold_s", (int, float), 1.0, "seconds each connection is held"),
    Knob("bound", int, None, "at most this many of a call's connections at once"),
    Knob("fan_out", int, 1, "connections one call checks out at once (asyncio.gather)"),
)
app = make_app(__name__)
# Engine made before the fork: each child inherits a copy of its (empty) pool.
engine: AsyncEngine | None = (
    make_engine(SETTINGS) if SETTINGS.get("engine_at") == "import" else None)
# One loop per process, made after the fork: pooled connections are reused by the next
# call on the loop they belong to (loop-bound-pool is where the loop is under test).
RUNNER = LoopRunner("per-process")


@worker_process_init.connect
def prepare_process(**_: object) -> None:
    """The process's engine (unless made at import) and its long-lived event loop."""
    global engine
    if engine is None:
        engine = make_engine(SETTINGS)
    RUNNER.after_fork()


async def hold_one_connection(bound: asyncio.Semaphore | None) -> None:
    """Check out one connection (inside ``bound`` if given) and hold it ``hold_s`` seconds."""
    assert engine is not None
    async with AsyncExitStack() as stack:
        if bound is not None:
            await stack.enter_async_context(bound)
        try:
            conn = await stack.enter_async_context(engine.connect())
        except Exception:
            count(app, "checkout_errors")
            raise
        count(app, "checkouts")
        await conn.execute(text("select pg_sleep(:seconds)"),
                           {"seconds": SETTINGS.get("hold_s")})


async def fan_out(token: str) -> str:
    """Run ``fan_out`` holders at once; raise the first error once all have finished."""
    limit = SETTINGS.get("bound")
    # Made here, on the running loop; one bound per call.
    bound = asyncio.Semaphore(int(limit)) if limit else None
    outcomes = await asyncio.gather(
        *(hold_one_connection(bound) for _ in range(SETTINGS.get("fan_out"))),
        return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    return token


@app.task
def fan_out_query(token: str) -> str:
    """One call: the fan-out on this process's loop, then ``token``."""
    return RUNNER.run(fan_out(token))
