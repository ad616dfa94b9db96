"""loop-bound-pool: a pooled async connection outlives the event loop that made it.

Symptom
    With the default pool (``AsyncAdaptedQueuePool``) and a new ``asyncio.run()``
    per task, the second task a worker process runs fails: its pooled asyncpg
    connection was made on the first task's loop, which ``asyncio.run()`` has
    since closed.

Cause
    asyncpg binds a connection to the loop it was created on: its protocol
    creates futures with that loop, and its transport is registered with that
    loop's selector. When the next task awaits on a new loop, asyncio refuses
    (``RuntimeError: ... got Future ... attached to a different loop``). The
    failed operation leaves asyncpg's connection marked busy, so every later
    checkout of that connection fails with ``InterfaceError: cannot perform
    operation: another operation is in progress``. The pool never discards it,
    so a process stays broken for good. psycopg 3's async connection looks up
    the running loop at each wait, so it is not bound to a loop.

The article's claim
    "a pooled connection from a previous task's asyncio.run() invocation will
    raise RuntimeError: loop is closed when the next task tries to reuse it.
    NullPool eliminates this entirely." (FAQ, and the same for psycopg 3:
    "Both asyncpg and psycopg3 async connections are tied to the asyncio event
    loop that created them".)

What really happens (SQLAlchemy 2.1.9, asyncpg 0.32.0, psycopg 3.3.9, Python 3.11)
    * asyncpg, default pool: REPRODUCED, but not with "loop is closed": the
      first reuse fails with ``future-other-loop`` and later reuses with
      ``asyncpg-another-operation`` (the article quotes that text for a
      different cause, engine-before-fork). The broken connections stay
      "idle in transaction" in ``pg_stat_activity``. The claim holds with a
      different error.
    * psycopg, default pool: CLEAN. The claim that psycopg 3 is affected does
      not hold.
    * ``pool_pre_ping=True`` is only half a fix for asyncpg: the ping itself
      fails on the old loop, the pool discards that connection (the worker logs
      "Exception terminating connection") and then a fresh one works; but the
      failed call still fails, so about half the calls fail.
    * NullPool (the article's fix), ``await engine.dispose()`` at the end of each
      ``asyncio.run()``, and one long-lived loop per worker process with the
      default pool are all CLEAN on both drivers. The last one keeps pooling,
      which NullPool gives up.

Sources
    SQLAlchemy docs, "Using multiple asyncio event loops" (asyncio extension);
    sqlalchemy/sqlalchemy discussions on "attached to a different loop" with
    asyncpg; asyncpg ``connect_utils`` / ``protocol.pyx`` (loop captured at connect).
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.scenario import Claim, Role, Scenario, Variant, Workload, clean, reproduces

# asyncpg fails on every reuse of a pooled connection; psycopg does not care
# which loop it runs on.
ASYNCPG_LOOP_BOUND = {
    "asyncpg": reproduces("future-other-loop", "asyncpg-another-operation"),
    "psycopg": clean(),
}

SCENARIO = Scenario(
    id="loop-bound-pool",
    app="scenarios.apps.loop_bound_pool",
    # 12 calls over 2 processes: each process reuses its pooled connection
    # several times, so a loop-bound connection cannot escape notice.
    workload=Workload(task="query_token", calls=12, concurrency=2),
    signatures=(sig.LOOP_CLOSED, sig.FUTURE_OTHER_LOOP, sig.ASYNCPG_ANOTHER_OPERATION,
                sig.PSYCOPG_CONNECTION_CLOSED),
    claim=Claim(
        error="RuntimeError: loop is closed",
        fix="NullPool eliminates this entirely by never caching connections between tasks",
        signature="event-loop-closed", bad="default-pool", fixed="nullpool"),
    variants=(
        Variant("default-pool", Role.BAD, {"pool": "default"}, expect=ASYNCPG_LOOP_BOUND),
        Variant("default-pool-pre-ping", Role.PARTIAL_FIX, {"pool": "default", "pre_ping": True},
                expect={"asyncpg": reproduces("future-other-loop"), "psycopg": clean()}),
        Variant("nullpool", Role.ARTICLE_FIX, {"pool": "null"}, expect=clean()),
        Variant("dispose-per-task", Role.FIX, {"pool": "default", "dispose_after": True},
                expect=clean()),
        Variant("loop-per-process", Role.FIX, {"pool": "default", "loop": "per-process"},
                expect=clean()),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
