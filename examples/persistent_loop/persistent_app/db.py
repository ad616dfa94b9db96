"""A pooled engine per pool process, made after the fork."""

import os

from celery.signals import worker_process_init
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

engine: AsyncEngine | None = None


@worker_process_init.connect
def init_engine(**_: object) -> None:
    global engine
    engine = create_async_engine(os.environ["DATABASE_URL"], pool_size=5, pool_pre_ping=True)
