"""Worker side of scenarios/test_broker_restart.py.

One task, ``write_row``, that stores no result (``ignore_result``): a call's effect
is its row, as for most tasks that write. Each run of its body (a redelivered call
runs it again):

1. records the run in ``runs`` (token, pool process pid, start time), committed at once:
   the harness's witness of which calls ran, since a Redis restart takes Celery's
   results and the harness's counters with it (``Workload.runs_sql``). A call whose
   body has already run ``max_runs`` times raises :class:`RedeliveryLoop` instead:
   a message that comes back for ever becomes a failed call, not a starved queue;
2. the call with index 0 announces the point ``running``: the variant's Redis fault
   fires then, while this call runs and the others wait in the queue or in the
   worker's prefetch. The cue does not hold the call (``at_point(..., hold=False)``):
   it goes on with its work at once, so nothing of the task talks to Redis while
   Redis restarts, as in a task that only uses the database;
3. works ``work_s`` seconds (the first call ``first_call_work_s``, long enough to be
   running through the restart), then inserts (with ``write_first``: inserts, then
   works, as a task that writes its row and then calls an API) the call's row in a transaction of its own
   (plain, or keyed by the call's token with ``ON CONFLICT DO NOTHING`` when
   ``idempotency_key`` is set);
4. counts the rows committed for its token: more than one raises
   :class:`DuplicateWrite`, the damage a redelivery did, turned into a failed call.

The engine is made after the fork, with NullPool and ``asyncio.run()`` per call (the
setup the article recommends), so nothing about the database changes between
variants: only Celery's and Redis's settings do.

Knobs: those of :mod:`scenarios.apps.common`, plus
    acks_late: ``task_acks_late``: acknowledge the message after the body ran.
    cancel_on_connection_loss: ``worker_cancel_long_running_tasks_on_connection_loss``
        (Celery's default is False; its documentation says it becomes True in 6.0).
    visibility_timeout_s: the Redis transport's ``visibility_timeout``: an
        unacknowledged message older than this is delivered again.
    write_first: insert the row before the work instead of after it.
    max_runs: runs of one call's body after which it raises RedeliveryLoop.
    fast_restore: sweep for such messages every second (kombu 5.7 sweeps every 100 s
        by default: ``unacked_restore_interval`` x ``unacked_restore_throttle``).
    idempotency_key: insert keyed by the call's token with ``ON CONFLICT DO NOTHING``.
    work_s: seconds each call works before it writes its row.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.faults.cues import reach
from harness.knobs import Knob
from harness.task_support import call_index, make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LOOP, LoopRunner, make_engine
from scenarios.apps.redelivery import (
    KEYED_INSERT,
    PLAIN_INSERT,
    ROWS_OF_CALL,
    DuplicateWrite,
    RedeliveryLoop,
)

SETTINGS = settings(
    ENGINE_KNOBS, LOOP,
    Knob("acks_late", bool, False, "task_acks_late: acknowledge after the body ran"),
    Knob("cancel_on_connection_loss", bool, False,
         "worker_cancel_long_running_tasks_on_connection_loss"),
    Knob("visibility_timeout_s", int, None, "the Redis transport's visibility_timeout (s)"),
    Knob("idempotency_key", bool, False,
         "insert keyed by the call's token with ON CONFLICT DO NOTHING"),
    Knob("fast_restore", bool, False,
         "the Redis transport sweeps for unacknowledged messages every second "
         "(unacked_restore_interval=1, unacked_restore_throttle=1)"),
    Knob("work_s", (int, float), 0.5, "seconds each call works before it writes its row"),
    Knob("write_first", bool, False,
         "write the row first, then work (as a task that writes, then calls an API)"),
    Knob("max_runs", int, None,
         "runs of one call's body after which it refuses to run again (None: no bound)"),
    Knob("first_call_work_s", (int, float), 3,
         "seconds the first call works: it is running while Redis restarts"),
)
app = make_app(__name__)
# make_app turns the cancel-on-connection-loss setting on for every other scenario;
# here it is under test, so Celery's own default stands unless a variant sets it.
app.conf.update(
    task_acks_late=SETTINGS.get("acks_late"),
    worker_cancel_long_running_tasks_on_connection_loss=SETTINGS.get(
        "cancel_on_connection_loss"),
)
TRANSPORT: dict[str, Any] = {}
if SETTINGS.get("visibility_timeout_s") is not None:
    TRANSPORT["visibility_timeout"] = SETTINGS.get("visibility_timeout_s")
if SETTINGS.get("fast_restore"):
    # kombu's sweep for unacknowledged messages runs every interval x throttle seconds
    # (10 x 10 by default in kombu 5.7; older releases ignore these two keys).
    TRANSPORT.update(unacked_restore_interval=1, unacked_restore_throttle=1)
if TRANSPORT:
    app.conf.broker_transport_options = TRANSPORT
IDEMPOTENT: bool = SETTINGS.get("idempotency_key")
WORK_S: float = float(SETTINGS.get("work_s"))
FIRST_CALL_WORK_S: float = float(SETTINGS.get("first_call_work_s"))
MAX_RUNS: int | None = SETTINGS.get("max_runs")
WRITE_FIRST: bool = SETTINGS.get("write_first")
RUNNER = LoopRunner(SETTINGS.get("loop"))
_engine: AsyncEngine | None = None

RECORD_RUN = ("insert into runs (token, worker_pid, started) "
              "values (:t, :pid, extract(epoch from clock_timestamp()))")


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global _engine
    _engine = make_engine(SETTINGS)
    RUNNER.after_fork()


def engine() -> AsyncEngine:
    assert _engine is not None, "worker_process_init did not run in this process"
    return _engine


async def write(token: str) -> None:
    """One run of the body (see the module docstring for its steps)."""
    async with engine().begin() as conn:
        await conn.execute(text(RECORD_RUN), {"t": token, "pid": os.getpid()})
        runs = (await conn.execute(text("select count(*) from runs where token = :t"),
                                   {"t": token})).scalar_one()
    if MAX_RUNS is not None and runs > MAX_RUNS:
        raise RedeliveryLoop(f"call {token}: its body has run {runs - 1} times already; "
                             f"its message keeps coming back")
    work_s = WORK_S
    if call_index(token) == 0:
        reach(app, "running")
        work_s = FIRST_CALL_WORK_S
    if WRITE_FIRST:
        await write_row_once(token)
        await asyncio.sleep(work_s)
    else:
        await asyncio.sleep(work_s)
        await write_row_once(token)


async def write_row_once(token: str) -> None:
    """Insert the call's row, then check it is the only one for this call."""
    async with engine().begin() as conn:
        await conn.execute(text(KEYED_INSERT if IDEMPOTENT else PLAIN_INSERT), {"t": token})
    async with engine().connect() as conn:
        rows = (await conn.execute(text(ROWS_OF_CALL),
                                   {"t": token})).scalar_one()
    if rows > 1:
        raise DuplicateWrite(f"call {token}: {rows} rows committed for one call")


@app.task(ignore_result=True)
def write_row(token: str) -> Any:
    """Write the call's row once; a Redis fault lands while the first call runs."""
    RUNNER.run(write(token))
    return token
