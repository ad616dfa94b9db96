"""Worker side of scenarios/test_pgbouncer_prepared_asyncpg.py.

Each task opens ONE connection and runs the same parameterised query
``executions`` times on it, each execution in its own transaction, so that
PgBouncer (transaction mode) may hand that one client connection a different
server connection for every execution. Every execution also returns
``pg_backend_pid()``, so the task counts how often the server connection under
its client connection changed (counter ``server-switches``), and the number of
named prepared statements on that server connection, so it counts the
executions that ran where some client had prepared a statement (counter
``prepared-on-server``).

Every process runs its tasks on one long-lived event loop: a new
``asyncio.run()`` per task would break pooled asyncpg connections for another
reason (see loop-bound-pool), and that must not mix into this scenario.

Knobs: those of :mod:`scenarios.apps.common` (pool, connect_args, url_query), plus
    executions: how many times each task runs the query on its connection (default 4).
    uuid_statement_names: when true, pass SQLAlchemy's documented recipe
        ``prepared_statement_name_func=lambda: f"__asyncpg_{uuid4()}__"``
        (a function is not JSON, so the variant says true and the app builds it).
"""

from __future__ import annotations

from celery.signals import worker_process_init
from sqlalchemy.ext.asyncio import AsyncEngine

from harness.knobs import Knob
from harness.task_support import make_app, settings
from scenarios.apps.common import ENGINE_KNOBS, LoopRunner, make_engine
from scenarios.apps.echo_through_pgbouncer import ECHO, EchoLog

SETTINGS = settings(
    ENGINE_KNOBS,
    Knob("executions", int, 4, "how many times each call runs its statement"),
)
app = make_app(__name__)
engine: AsyncEngine | None = None
# One loop per process, made after the fork: pooled connections are reused by the next
# call on the loop they belong to (loop-bound-pool is where the loop is under test).
RUNNER = LoopRunner("per-process")



@worker_process_init.connect
def create_engine_after_fork(**_: object) -> None:
    """One engine and one event loop per worker process, made after the fork."""
    global engine
    engine = make_engine(SETTINGS)
    RUNNER.after_fork()


async def echo_repeatedly(token: str) -> str:
    """Run the query ``executions`` times on one connection; return a wrong answer if any."""
    assert engine is not None
    log = EchoLog(token)
    async with engine.connect() as conn:
        for _ in range(SETTINGS.get("executions")):
            async with conn.begin():
                result = await conn.execute(ECHO, {"token": token})
                value, backend_pid, prepared_on_server = result.one()
            log.record(value, backend_pid, prepared_on_server)
    return log.report(app)


@app.task
def query_token(token: str) -> str:
    """Echo ``token`` through the database, ``executions`` times on one connection."""
    return RUNNER.run(echo_repeatedly(token))
