"""queuepool-overflow: one call wants more pooled connections at once than its pool has.

Symptom
    ``sqlalchemy.exc.TimeoutError: QueuePool limit of size 2 overflow 1 reached,
    connection timed out, timeout 0.50`` (code ``3o7r``) from a call that fans out
    into 6 coroutines with ``asyncio.gather``, each checking out its own
    connection from a pool of ``pool_size=2, max_overflow=1``.

Cause
    A pool hands out at most ``pool_size + max_overflow`` connections; the next
    checkout waits up to ``pool_timeout`` seconds for one to come back, then
    raises. In a prefork worker every process has its own engine and pool and
    runs one call at a time, so the only thing that can check out several
    connections of one pool at once is concurrency *inside* a call (a fan-out).
    The error needs two things together: a fan-out wider than the pool, and
    connections held longer than ``pool_timeout`` (default 30 s). Here the first
    3 coroutines hold theirs for 1 s and the other 3 give up after 0.5 s.

The article's claim
    "QueuePool limit of size N overflow N reached, connection timed out" is
    caused by "pool_size set on a pool that also has to serve multiple concurrent
    tasks, or engine created before fork so the pool is shared (and corrupted)".
    Fix: "Use NullPool - removes pool contention entirely for prefork workers."

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg 3.3.9,
Python 3.11.7, PostgreSQL 15)
    * Fan-out of 6 on a 2 + 1 pool with ``pool_timeout=0.5``: REPRODUCED on both
      drivers, every call fails (3 of its 6 checkouts time out), with the
      article's exact text. The claim holds for this cause.
    * Many calls of one connection each on the same small pool: CLEAN. A
      prefork process never runs two calls at once, so "multiple concurrent
      tasks" never share a pool; that part of the claim does not hold.
    * Engine created at import, before the fork, the parent never connecting:
      CLEAN. Each child inherits its own copy of an empty pool; nothing is
      shared and no limit is reached. (A parent that does connect before the
      fork breaks in other ways: see engine-before-fork.)
    * The same fan-out with the default ``pool_timeout`` (30 s): CLEAN, the
      waiting coroutines simply wait a round (each call takes 2 s, not 1 s).
    * Fixes, all CLEAN on both drivers: NullPool (the article's; no limit on the
      client side, no connections kept between calls); a pool sized to the
      fan-out (``pool_size=6``; keeps 6 idle connections per process, 12 idle
      sessions at the end of the run); bounding the fan-out to the pool with
      ``asyncio.Semaphore(3)`` (keeps the pool, takes two rounds per call).
      NullPool removes the client-side limit only: the server's
      ``max_connections`` still applies to fan-out x processes (see retry-storm).

Sources
    SQLAlchemy docs, "Connection Pooling" (``pool_size``, ``max_overflow``,
    ``pool_timeout``) and "Error Messages" for code ``3o7r`` ("QueuePool limit of
    size <x> overflow <y> reached, connection timed out, timeout <z>",
    https://sqlalche.me/e/21/3o7r); SQLAlchemy ``pool/impl.py``
    (``QueuePool._do_get``); Celery docs, "Concurrency" (prefork: a pool of
    child processes, each given one task at a time by billiard).
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.scenario import Claim, Role, Scenario, Variant, Workload, clean, reproduces

# pool_size + max_overflow = 3 connections per process; waiting at most 0.5 s.
SMALL_POOL = {"pool": "default", "pool_size": 2, "max_overflow": 1, "pool_timeout": 0.5}
# 6 connections at once per call, each held 1 s: twice the wait allowed.
FAN_OUT = {"fan_out": 6, "hold_s": 1.0}

SCENARIO = Scenario(
    id="queuepool-overflow",
    app="scenarios.apps.queuepool_overflow",
    # 4 calls on 2 processes: each process runs two, so a pool is reused by a call.
    workload=Workload(task="fan_out_query", calls=4, concurrency=2, timeout_s=60),
    signatures=(sig.POOL_TIMEOUT,),
    claim=Claim(
        error="QueuePool limit of size N overflow N reached, connection timed out",
        fix="Use NullPool - removes pool contention entirely for prefork workers",
        signature="queuepool-timeout", bad="fan-out-small-pool", fixed="fan-out-nullpool"),
    variants=(
        Variant("fan-out-small-pool", Role.BAD, {**SMALL_POOL, **FAN_OUT},
                expect=reproduces("queuepool-timeout")),
        Variant("fan-out-nullpool", Role.ARTICLE_FIX, {**FAN_OUT, "pool": "null"},
                expect=clean()),
        Variant("fan-out-pool-sized", Role.FIX,
                {**SMALL_POOL, **FAN_OUT, "pool_size": 6, "max_overflow": 0}, expect=clean()),
        Variant("fan-out-bounded", Role.FIX, {**SMALL_POOL, **FAN_OUT, "bound": 3},
                expect=clean()),
        Variant("fan-out-default-timeout", Role.PARTIAL_FIX,
                {**SMALL_POOL, **FAN_OUT, "pool_timeout": None}, expect=clean(),
                description="The wait fits in the default 30 s pool_timeout; a longer "
                            "hold would fail the same way."),
        Variant("one-connection-per-task", Role.BAD, {**SMALL_POOL, **FAN_OUT, "fan_out": 1},
                expect=clean(),
                description="The article's first cause: a small pool serving many tasks."),
        Variant("engine-before-fork-one-connection", Role.BAD,
                {**SMALL_POOL, **FAN_OUT, "fan_out": 1, "engine_at": "import"},
                expect=clean(),
                description="The article's second cause: the engine created before the "
                            "fork (the parent never connects)."),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
