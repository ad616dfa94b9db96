"""A Celery app for tests/test_faults.py: a call that can sit in a query while a fault strikes.

Knobs (variant config):
    sleep_s: seconds the call spends in ``pg_sleep`` on the variant's database URL
        (through PgBouncer when the stack has one) before answering; 0 answers at
        once with a real round trip. Before it sleeps the call logs ``SLEEP_MARK``,
        so a test knows the service is in use and can kill it.
"""

from __future__ import annotations

import asyncio

from celery.utils.log import get_task_logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from harness.knobs import Knob
from harness.task_support import make_app, settings

SLEEP_MARK = "faults: sleeping in a query"

SETTINGS = settings(Knob("sleep_s", (int, float), 0, "seconds each call sleeps in the database"))
app = make_app(__name__)
log = get_task_logger(__name__)


async def answer_through_database(token: str, sleep_s: float) -> str:
    # NullPool and one engine per call: no connection outlives its event loop, so the
    # only failure this app can show is the fault the test injects.
    engine = create_async_engine(SETTINGS.database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            if sleep_s:
                log.warning("%s for %s s (call %s)", SLEEP_MARK, sleep_s, token)
                await conn.execute(text("select pg_sleep(:s)"), {"s": sleep_s})
            result = await conn.execute(text("select cast(:token as text)"), {"token": token})
            return result.scalar_one()
    finally:
        await engine.dispose()


@app.task
def sleep_in_query(token: str) -> str:
    return asyncio.run(answer_through_database(token, float(SETTINGS.get("sleep_s"))))
