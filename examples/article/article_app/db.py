"""The engine is made after the fork, in each pool process, with NullPool."""

import os

from celery.signals import worker_process_init
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

_session_factory: async_sessionmaker[AsyncSession] | None = None


@worker_process_init.connect
def init_db_engine(**_: object) -> None:
    global _session_factory
    engine = create_async_engine(os.environ["DATABASE_URL"], poolclass=NullPool)
    _session_factory = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def session_factory() -> async_sessionmaker[AsyncSession]:
    """The process's session factory (made by worker_process_init)."""
    if _session_factory is None:
        raise RuntimeError("worker_process_init has not run in this process")
    return _session_factory
