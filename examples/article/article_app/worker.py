"""Celery app and one task: asyncio.run() per call, a session from the process's factory."""

import asyncio
import os

from celery import Celery
from sqlalchemy import text

from article_app.db import session_factory

app = Celery("article_app", broker=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0"))


async def _run() -> int:
    async with session_factory()() as session:
        return (await session.execute(text("select count(*) from pg_class"))).scalar_one()


@app.task
def process_invoice() -> int:
    return asyncio.run(_run())
