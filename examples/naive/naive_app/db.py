"""The engine, made when the module is imported (in the worker's parent, before the fork)."""

import os

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

engine = create_async_engine(os.environ["DATABASE_URL"])  # the default pool
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)
