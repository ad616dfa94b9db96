"""Named error signatures: how the harness recognises a documented failure.

Responsibility: decide whether one failed task's error is a known failure.

A task's error arrives as an :class:`ErrorRecord`: the raised exception and every
exception chained to it (``__cause__``, ``__context__``, SQLAlchemy's ``.orig``
and the driver's ``driver_exception``), each with its class hierarchy. A
:class:`Signature` matches on stable keys first (the exception class, anywhere
in its MRO; SQLAlchemy's error code; SQLSTATE) and on message text last, with a
narrow pattern, because SQLAlchemy and driver wording changes between releases.

Class names are written in their public form: ``asyncpg.exceptions.InterfaceError``
also matches ``asyncpg.exceptions._base.InterfaceError`` (private module parts
are dropped when a record is built).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExceptionInfo:
    """One exception of a chain, reduced to what matching needs."""

    type: str  # public dotted name of the class
    bases: tuple[str, ...]  # public dotted names of the class and all its bases (MRO)
    message: str
    sa_code: str | None = None
    sqlstate: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExceptionInfo:
        return cls(type=data["type"], bases=tuple(data.get("bases") or (data["type"],)),
                   message=data.get("message", ""), sa_code=data.get("sa_code"),
                   sqlstate=data.get("sqlstate"))


@dataclass(frozen=True)
class ErrorRecord:
    """A failed task's error: the raised exception first, then what it wraps."""

    chain: tuple[ExceptionInfo, ...]
    traceback: str = ""

    @property
    def headline(self) -> str:
        """``Type: message`` of the raised exception, one line."""
        if not self.chain:
            return "(no exception recorded)"
        top = self.chain[0]
        return f"{top.type}: {top.message}".splitlines()[0][:500]

    def describe(self) -> str:
        """Every exception of the chain, one per line: what a user reads in a report."""
        return " <- ".join(f"{e.type}: {e.message}".splitlines()[0][:300] for e in self.chain)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorRecord:
        return cls(chain=tuple(ExceptionInfo.from_dict(e) for e in data.get("chain", ())),
                   traceback=data.get("traceback", ""))

    def to_dict(self) -> dict[str, Any]:
        return {"chain": [e.__dict__ | {"bases": list(e.bases)} for e in self.chain],
                "traceback": self.traceback}


def public_name(module: str, qualname: str) -> str:
    """``asyncpg.exceptions._base`` + ``InterfaceError`` -> ``asyncpg.exceptions.InterfaceError``."""
    parts = [p for p in module.split(".") if not p.startswith("_")]
    if module == "builtins":
        return qualname
    return ".".join([*parts, qualname])


@dataclass(frozen=True)
class Signature:
    """A documented failure, recognised by class first and message last.

    Args:
        name: stable short key, used in results and the matrix.
        exception: public dotted class name; subclasses match too.
        message: regular expression searched in that exception's message (optional).
        sa_code: SQLAlchemy error code of the raised exception (optional).
        sqlstate: PostgreSQL SQLSTATE of the same exception (optional).
        description: one sentence for reports.
    """

    name: str
    exception: str
    message: str | None = None
    sa_code: str | None = None
    sqlstate: str | None = None
    description: str = ""
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.message is not None:
            object.__setattr__(self, "_pattern", re.compile(self.message))

    def matches(self, record: ErrorRecord) -> bool:
        codes_ok = self.sa_code is None or any(e.sa_code == self.sa_code for e in record.chain)
        return codes_ok and any(self._matches_one(e) for e in record.chain)

    def _matches_one(self, info: ExceptionInfo) -> bool:
        if self.exception not in info.bases:
            return False
        if self.sqlstate is not None and info.sqlstate != self.sqlstate:
            return False
        return self._pattern is None or bool(self._pattern.search(info.message))


def first_match(record: ErrorRecord, signatures: Iterable[Signature]) -> Signature | None:
    """The first signature (in the scenario's order) that recognises ``record``."""
    return next((s for s in signatures if s.matches(record)), None)


# --- the catalogue -------------------------------------------------------------------
# Each entry is a failure seen on real processes by at least one scenario. The
# completeness test in tests/ checks that every signature a scenario names is here.

LOOP_CLOSED = Signature(
    "event-loop-closed", "RuntimeError", r"Event loop is closed",
    description="An object bound to an earlier asyncio.run() loop is used after that loop closed.")
FUTURE_OTHER_LOOP = Signature(
    "future-other-loop", "RuntimeError", r"attached to a different loop|is bound to a different event loop",
    description="A future or task created on one event loop is awaited on another.")
ASYNCPG_ANOTHER_OPERATION = Signature(
    "asyncpg-another-operation", "asyncpg.exceptions.InterfaceError",
    r"another operation is in progress",
    description="asyncpg's connection believes another coroutine is using it.")
ASYNCPG_CONNECTION_CLOSED = Signature(
    "asyncpg-connection-closed", "asyncpg.exceptions.InterfaceError", r"connection is closed",
    description="asyncpg refuses to use a connection it has marked closed.")
PSYCOPG_CONNECTION_CLOSED = Signature(
    "psycopg-connection-closed", "psycopg.OperationalError", r"the connection is closed",
    description="psycopg refuses to use a connection it has marked closed.")
PSYCOPG_CONNECTION_LOST = Signature(
    "psycopg-connection-lost", "psycopg.OperationalError",
    r"consuming input failed|server closed the connection|Broken pipe|SSL SYSCALL|sending query failed",
    description="The socket under a psycopg connection broke mid-query.")
ASYNCPG_CONNECTION_LOST = Signature(
    "asyncpg-connection-lost", "asyncpg.exceptions.ConnectionDoesNotExistError",
    description="asyncpg lost the connection mid-query.")
PROTOCOL_DESYNC = Signature(
    "protocol-desync", "asyncpg.exceptions.InternalClientError",
    description="asyncpg received a protocol message it did not expect (shared socket).")
PREPARED_STATEMENT_MISSING = Signature(
    "prepared-statement-missing", "Exception", sqlstate="26000",
    description="A prepared statement was used on a server connection that never prepared it.")
PREPARED_STATEMENT_EXISTS = Signature(
    "prepared-statement-exists", "Exception", sqlstate="42P05",
    description="A prepared statement name was reused on a server connection that already has it.")
TOO_MANY_CLIENTS = Signature(
    "too-many-clients", "Exception", sqlstate="53300",
    description="PostgreSQL refused a connection: max_connections reached.")
POOL_TIMEOUT = Signature(
    "queuepool-timeout", "sqlalchemy.exc.TimeoutError", sa_code="3o7r",
    description="SQLAlchemy's pool had no connection to give within pool_timeout.")
MISSING_GREENLET = Signature(
    "missing-greenlet", "sqlalchemy.exc.MissingGreenlet", sa_code="xd2s",
    description="Sync IO (a lazy load) was attempted outside the async greenlet bridge.")
DETACHED_INSTANCE = Signature(
    "detached-instance", "sqlalchemy.orm.exc.DetachedInstanceError", sa_code="bhk3",
    description="An expired or unloaded attribute was read after its session closed.")
NO_RUNNING_LOOP = Signature(
    "no-running-loop", "RuntimeError", r"no running event loop",
    description="asyncio.get_running_loop() was called outside a coroutine.")
NO_CURRENT_LOOP = Signature(
    "no-current-event-loop", "RuntimeError", r"There is no current event loop",
    description="asyncio.get_event_loop() found no loop set for this thread.")
# celery.exceptions re-exports it; the class is defined (and recorded) in billiard.
SOFT_TIME_LIMIT = Signature(
    "soft-time-limit", "billiard.exceptions.SoftTimeLimitExceeded",
    description="Celery's soft time limit interrupted the task.")

COROUTINE_RESULT_UNENCODABLE = Signature(
    "coroutine-result-unencodable", "kombu.exceptions.EncodeError", r"\bcoroutine\b",
    description="An async def task returned its un-awaited coroutine, which the result "
                "backend cannot serialise (Celery never awaits a task body).")

LAZY_RAISE = Signature(
    "lazy-raise", "sqlalchemy.exc.InvalidRequestError", r"is not available due to lazy='raise",
    description="A relationship mapped with lazy='raise' (or raiseload()) was read before "
                "it was loaded; the lazy load it would have needed is refused.")

PSYCOPG_NO_CONNECTION_SLOTS = Signature(
    "psycopg-no-connection-slots", "psycopg.OperationalError",
    r"FATAL:\s+(sorry, too many clients already|remaining connection slots are reserved)",
    description="PostgreSQL refused a psycopg connection for lack of slots (SQLSTATE 53300; "
                "libpq reports no SQLSTATE for a refused connection, so the text is the key).")

IMPLICIT_LOOP_DEPRECATED = Signature(
    "implicit-loop-deprecated", "DeprecationWarning", r"There is no current event loop",
    description="asyncio.get_event_loop() had to create a loop implicitly (deprecated in "
                "Python 3.12 and 3.13) and warnings are errors (-W error::DeprecationWarning).")

RESULT_WITHOUT_ROWS = Signature(
    "result-without-rows", "sqlalchemy.exc.ResourceClosedError", r"does not return rows",
    description="A statement that returns rows got a reply without rows: on a socket two "
                "processes share (a pooled connection inherited over fork), it read the reply "
                "to another process's BEGIN or ROLLBACK.")
PSYCOPG_ANOTHER_COMMAND = Signature(
    "psycopg-another-command", "psycopg.OperationalError",
    r"another command is already in progress",
    description="libpq refused to send a query while it still awaits an earlier reply: on "
                "a socket shared over fork, the reply another process consumed; or psycopg "
                "stopped waiting on an exception that is no cancellation (a soft time limit) "
                "and never cancelled its query.")
ASYNCPG_FOREIGN_TRANSACTION = Signature(
    "asyncpg-foreign-transaction", "asyncpg.exceptions.InterfaceError",
    r"cannot use Connection\.transaction\(\) in a manually started transaction",
    description="asyncpg found its server session inside a transaction it did not start "
                "(on a socket shared over fork, another process's BEGIN).")
PSYCOPG_RESULT_MISMATCH = Signature(
    "psycopg-result-mismatch", "psycopg.InternalError",
    r"got no result from the query|received \d+ results from command",
    description="psycopg got a different number of results than it sent commands for "
                "(on a socket shared over fork, another process read some of them).")
QUERY_TIMEOUT = Signature(
    "query-timeout", "TimeoutError",
    description="A query's reply did not come within the caller's own bound "
                "(asyncio.wait_for): on a socket shared over fork, another process read it.")

LOCK_TIMEOUT = Signature(
    "lock-timeout", "Exception", sqlstate="55P03",
    description="A statement waited longer than lock_timeout for a row lock (here: held by "
                "a transaction that an interrupted task left open).")
HARD_TIME_LIMIT = Signature(
    "hard-time-limit", "billiard.exceptions.TimeLimitExceeded",
    description="Celery's hard time limit ended the task; billiard then terminates the "
                "pool process that ran it.")
HARD_TIME_LIMIT_SIGTERM = Signature(
    "hard-time-limit-sigterm", "SystemExit", r"^-241$",
    description="The pool process exited on billiard's SIGTERM (exit code -(256 - SIGTERM), "
                "billiard.common._shutdown_cleanup), as after a hard time limit.")

BODY_NEVER_RAN = Signature(
    "body-never-ran", "harness.BodyNeverRan",
    description="Celery reported the task done, but its body left no side effect: it never ran.")
# The harness builds this record itself for such calls; no exception was raised anywhere.
BODY_NEVER_RAN_RECORD = ErrorRecord(chain=(ExceptionInfo(
    "harness.BodyNeverRan", ("harness.BodyNeverRan",),
    "Celery reported the task as done, but the task body never left its side effect"),))

# The psycopg side of "the server ended this session" (SQLSTATE 57P01, admin_shutdown),
# raised on the next use of a terminated or restarted session.
SERVER_ENDED_SESSION = Signature(
    "server-ended-session", "psycopg.OperationalError", sqlstate="57P01",
    description="PostgreSQL ended the session (pg_terminate_backend or a shutdown): "
                "psycopg reports 'terminating connection due to administrator command' "
                "on the connection's next use.")
def _harness_record(name: str, message: str) -> ErrorRecord:
    """A record the harness builds itself for a call that raised nothing anywhere."""
    return ErrorRecord(chain=(ExceptionInfo(name, (name,), message),))


# Told from the task's own record of its runs (harness/call_trace.py).
CALL_LOST = Signature(
    "call-lost", "harness.CallLost",
    description="A call sent before a fault never ran: its message was lost with what the "
                "broker held (the task's own record of its runs has no row for it).")
CALL_LOST_RECORD = _harness_record(
    "harness.CallLost",
    "the call was sent before the fault, no run of its body was recorded, and nothing was "
    "reported for it by the deadline: its message was lost")
CALL_ABANDONED = Signature(
    "call-abandoned", "harness.CallAbandoned",
    description="A call's body started in a pool process that is gone (killed, or "
                "terminated by Celery) and never finished, reported or ran again.")
CALL_ABANDONED_RECORD = _harness_record(
    "harness.CallAbandoned",
    "the call's body started in a pool process that no longer exists, and the call never "
    "finished, was never reported and never ran again by the deadline")
NOT_CONSUMED = Signature(
    "not-consumed", "harness.NotConsumed",
    description="A call sent after the fault (the broker answering again) never ran: the "
                "worker did not consume again before the deadline.")
NOT_CONSUMED_RECORD = _harness_record(
    "harness.NotConsumed",
    "the call was sent after the fault, with the broker answering again, and no run of its "
    "body was recorded by the deadline: the worker did not consume it")

CATALOGUE: dict[str, Signature] = {
    s.name: s for s in [
        LOOP_CLOSED, FUTURE_OTHER_LOOP, ASYNCPG_ANOTHER_OPERATION, ASYNCPG_CONNECTION_CLOSED,
        PSYCOPG_CONNECTION_CLOSED, PSYCOPG_CONNECTION_LOST, ASYNCPG_CONNECTION_LOST,
        PROTOCOL_DESYNC, PREPARED_STATEMENT_MISSING, PREPARED_STATEMENT_EXISTS,
        TOO_MANY_CLIENTS, POOL_TIMEOUT, MISSING_GREENLET, DETACHED_INSTANCE,
        NO_RUNNING_LOOP, NO_CURRENT_LOOP, SOFT_TIME_LIMIT, BODY_NEVER_RAN,
        PSYCOPG_NO_CONNECTION_SLOTS,
        RESULT_WITHOUT_ROWS, PSYCOPG_ANOTHER_COMMAND, QUERY_TIMEOUT,
        ASYNCPG_FOREIGN_TRANSACTION, PSYCOPG_RESULT_MISMATCH,
        COROUTINE_RESULT_UNENCODABLE, LAZY_RAISE,
        IMPLICIT_LOOP_DEPRECATED,
        LOCK_TIMEOUT, HARD_TIME_LIMIT, HARD_TIME_LIMIT_SIGTERM, SERVER_ENDED_SESSION, CALL_LOST,
        NOT_CONSUMED, CALL_ABANDONED,
    ]
}
