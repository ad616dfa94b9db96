"""Worker side of scenarios/test_lazy_load_greenlet.py and test_detached_instance.py.

The engine is created after the fork (``worker_process_init``) with NullPool,
and each task runs its coroutine with a new ``asyncio.run()``, so neither the
fork nor the event loop is under test: only how the ORM reads a relationship,
and what it can read from an instance once its transaction has committed and
its session has closed. The task loads the user, writes its audit row in a
transaction that commits, and reads the user's name and addresses
(:func:`orm_models.read_task`).

Knobs: ``relationship_lazy`` (see :mod:`scenarios.apps.orm_models`), plus
    expire_on_commit: passed to ``async_sessionmaker`` (default True, as in SQLAlchemy).
    loader: "lazy" (the relationship's own strategy) or "selectin"
        (``selectinload(User.addresses)`` on the query).
    access: "attribute" (``user.addresses``) or "awaitable_attrs"
        (``await user.awaitable_attrs.addresses``).
    read_at: "in-transaction" (default), "in-session" (after the commit, the session
        still open) or "after-close" (after the session closed).
"""

from __future__ import annotations

import asyncio

from celery.signals import worker_process_init
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from harness.task_support import make_app, settings
from scenarios.apps.orm_models import ORM_KNOBS, read_task

SETTINGS = settings(ORM_KNOBS)
app = make_app(__name__)
sessions: async_sessionmaker[AsyncSession] | None = None


@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    global sessions
    # NullPool: every session opens its own connection on the task's own loop
    # (see scenarios/test_loop_bound_pool.py for what the default pool does).
    engine = create_async_engine(SETTINGS.database_url, poolclass=NullPool)
    sessions = async_sessionmaker(engine, expire_on_commit=SETTINGS.get("expire_on_commit"))


@app.task
def read_user(token: str) -> str:
    assert sessions is not None
    return asyncio.run(read_task(
        sessions, token, loader=SETTINGS.get("loader"),
        access=SETTINGS.get("access"),
        read_at=SETTINGS.get("read_at")))
