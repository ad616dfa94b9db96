"""ORM models, data and workload shared by the ORM scenario apps (worker side).

One user with two addresses (a one-to-many relationship), and an ``audit``
table each task writes one row to, so that every task commits a transaction
(``expire_on_commit`` only matters after a commit) and the rows left behind
show which failed tasks had already committed their work.

The spec modules create the tables with :data:`SETUP_SQL` (plain SQL, run on
each run's fresh database before the worker starts) and count the committed
audit rows with :data:`AUDIT_ROWS_SQL`; the models below map those tables.

Knob read here (at import, because a relationship's loader strategy is part of
the mapping):
    relationship_lazy: the ``lazy=`` of ``User.addresses``: "select" (default,
        SQLAlchemy's default lazy loading) or "raise" (any lazy load raises).
"""

from __future__ import annotations

import json
import os

from sqlalchemy import ForeignKey, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from harness.knobs import Knob
from harness.task_support import CONFIG_ENV

USER_NAME = "ada"
EMAILS = ("ada@example.org", "ada@work.example.org")

SETUP_SQL: tuple[str, ...] = (
    "create table users (id serial primary key, name text not null)",
    ("create table addresses (id serial primary key,"
    " user_id integer not null references users (id), email text not null)"),
    "create table audit (id serial primary key, token text not null)",
    f"insert into users (name) values ('{USER_NAME}')",
    "insert into addresses (user_id, email) values "
    + ", ".join(f"(1, '{email}')" for email in EMAILS),
)
# Rows the tasks committed; a failed task whose row is here failed after its commit.
AUDIT_ROWS_SQL = "select count(*) from audit"

LOADERS = ("lazy", "selectin")
ACCESSES = ("attribute", "awaitable_attrs")
READ_POINTS = ("in-transaction", "in-session", "after-close")

RELATIONSHIP_LAZY_KNOB = Knob("relationship_lazy", str, "select",
                              "the relationship's lazy= loader strategy ('raise' forbids it)")
# The knobs of scenarios/apps/orm_reads.py.
ORM_KNOBS = (
    Knob("expire_on_commit", bool, True, "the session factory's expire_on_commit"),
    Knob("loader", str, "lazy", "how addresses load", choices=LOADERS),
    Knob("access", str, "attribute", "how the task reads them", choices=ACCESSES),
    Knob("read_at", str, "in-transaction", "when the task reads the relationship",
         choices=READ_POINTS),
    RELATIONSHIP_LAZY_KNOB,
)


def _relationship_lazy() -> str:
    """The ``relationship_lazy`` knob; the default outside a worker.

    The spec modules import this module for :data:`SETUP_SQL` in the pytest
    process, where no variant configuration exists.
    """
    if CONFIG_ENV not in os.environ:
        return RELATIONSHIP_LAZY_KNOB.default
    # Read before the app declares its knobs (it imports this module first); the
    # app's settings(ORM_KNOBS, ...) then checks this knob's name, type and value.
    config = json.loads(os.environ[CONFIG_ENV])["config"]
    return config.get("relationship_lazy") or RELATIONSHIP_LAZY_KNOB.default


RELATIONSHIP_LAZY = _relationship_lazy()


class Base(AsyncAttrs, DeclarativeBase):
    """Declarative base; ``AsyncAttrs`` adds ``obj.awaitable_attrs`` (SQLAlchemy >= 2.0.13)."""


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    addresses: Mapped[list[Address]] = relationship(
        back_populates="user", lazy=RELATIONSHIP_LAZY, order_by="Address.id")


class Address(Base):
    __tablename__ = "addresses"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    email: Mapped[str]
    user: Mapped[User] = relationship(back_populates="addresses")


class Audit(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str]


def answer(token: str, name: str, emails: list[str]) -> str:
    """The token when the data read is the seeded data, else what was read (a WRONG result)."""
    if name == USER_NAME and tuple(emails) == EMAILS:
        return token
    return f"{token}: read name={name!r} emails={emails!r}"


async def load_user(session: AsyncSession, token: str, loader: str) -> User:
    """Load the user (``loader``: "lazy" or "selectin") and write this task's audit row."""
    statement = select(User).where(User.name == USER_NAME)
    if loader == "selectin":
        statement = statement.options(selectinload(User.addresses))
    user = (await session.execute(statement)).scalar_one()
    session.add(Audit(token=token))
    # Flush now: otherwise a later lazy load's autoflush would be the first IO
    # to fail, and the scenario would test the INSERT instead of the load.
    await session.flush()
    return user


async def read_user(user: User, access: str) -> tuple[str, list[str]]:
    """Read the user's name and emails as application code would.

    ``access="attribute"`` is plain attribute access (``user.addresses``), which
    may need IO: a lazy load or a refresh of expired attributes.
    ``access="awaitable_attrs"`` awaits ``user.awaitable_attrs.<name>``, which
    runs any such IO inside SQLAlchemy's greenlet bridge.
    """
    if access == "awaitable_attrs":
        name = await user.awaitable_attrs.name
        addresses = await user.awaitable_attrs.addresses
    else:
        name = user.name
        addresses = user.addresses
    return name, [address.email for address in addresses]


async def read_task(sessions: async_sessionmaker[AsyncSession], token: str, *,
                    loader: str, access: str, read_at: str) -> str:
    """Load the user in a transaction that commits, and read it at ``read_at``.

    ``read_at``: "in-transaction" (before the commit), "in-session" (after the
    commit, the session still open) or "after-close" (after the session closed).
    """
    for knob, value, allowed in (("loader", loader, LOADERS), ("access", access, ACCESSES),
                                 ("read_at", read_at, READ_POINTS)):
        if value not in allowed:
            raise ValueError(f"{knob}={value!r} is not one of {allowed}")
    async with sessions() as session:
        async with session.begin():
            user = await load_user(session, token, loader)
            if read_at == "in-transaction":
                return answer(token, *await read_user(user, access))
        # The transaction has committed: with expire_on_commit=True (the
        # default) every loaded attribute of ``user`` is now expired.
        if read_at == "in-session":
            return answer(token, *await read_user(user, access))
    # The session has closed: ``user`` is detached.
    return answer(token, *await read_user(user, access))
