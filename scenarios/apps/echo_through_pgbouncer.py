"""What both pgbouncer-prepared apps observe of each execution, and how they report it.

Every execution of the echo query also returns ``pg_backend_pid()`` and the number
of named prepared statements on that server connection (whichever client made
them). A call counts how often the server connection under its one client
connection changed (counter ``server-switches``) and the executions that ran where
some client had prepared a statement (counter ``prepared-on-server``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from celery import Celery
from sqlalchemy import text

from harness.task_support import count

ECHO = text("select cast(:token as text), pg_backend_pid(), "
            "(select count(*) from pg_prepared_statements)")
ECHO_REVERSED = text("select reverse(cast(:token as text)), pg_backend_pid(), "
                     "(select count(*) from pg_prepared_statements)")


@dataclass
class EchoLog:
    """The executions of one call: what each answered and which server ran it."""

    token: str
    answers: list[str] = field(default_factory=list)
    backend_pids: list[int] = field(default_factory=list)
    seeing_prepared: int = 0

    def record(self, answer: str, backend_pid: int, prepared_on_server: int) -> None:
        self.answers.append(answer)
        self.backend_pids.append(backend_pid)
        self.seeing_prepared += prepared_on_server > 0

    def report(self, app: Celery) -> str:
        """Publish the counters; return the call's answer.

        An execution answered by another client's statement of the same name makes
        the whole call WRONG (the harness compares the returned value with the token).
        """
        switches = sum(1 for a, b in pairwise(self.backend_pids) if a != b)
        if switches:
            count(app, "server-switches", switches)
        if self.seeing_prepared:
            count(app, "prepared-on-server", self.seeing_prepared)
        return next((a for a in self.answers if a != self.token), self.token)
