"""Celery app and one task that runs its coroutine with asyncio.run()."""

import asyncio
import os

from celery import Celery
from sqlalchemy import text

from naive_app.db import SessionLocal

app = Celery("naive_app", broker=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0"))


async def count_orders() -> int:
    async with SessionLocal() as session:
        return (await session.execute(text("select count(*) from pg_class"))).scalar_one()


@app.task
def report_orders() -> int:
    return asyncio.run(count_orders())
