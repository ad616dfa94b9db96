"""What each working fix costs a real workload: throughput and task latency.

    .venv/bin/python -m bench.fixes [--calls 200] [--concurrency 2]

Each configuration runs the loop-bound-pool task (one query per call) on a real
prefork worker: NullPool direct, NullPool behind PgBouncer, the default pool with
one event loop per worker process, and psycopg with the default pool (psycopg is
not loop-bound, see loop-bound-pool). Throughput is calls / wall time with every
call queued at once; latency is each task's own run time as the worker logs it
("succeeded in X s"), so queueing is not counted. Writes reports/bench/fixes.json.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench._common import ROOT, percentile, write
from harness.outcome import CallStatus
from harness.scenario import StackSpec
from harness.stack import StackPool
from harness.task_support import WorkerSettings
from harness.worker import CeleryWorker
from scenarios.test_loop_bound_pool import SCENARIO

FIXES = (  # name, driver, variant config, through PgBouncer
    ("nullpool-direct", "asyncpg", {"pool": "null"}, False),
    # asyncpg behind PgBouncer < 1.24 needs its statement cache off (pgbouncer-prepared-asyncpg).
    ("nullpool-pgbouncer", "asyncpg",
     {"pool": "null", "connect_args": {"statement_cache_size": 0}}, True),
    ("default-pool-loop-per-process", "asyncpg", {"pool": "default", "loop": "per-process"}, False),
    ("psycopg-default-pool", "psycopg", {"pool": "default"}, False),
)
SUCCEEDED = re.compile(r"succeeded in ([0-9.]+)s")


def measure(pool: StackPool, name: str, driver: str, config: dict, pgbouncer: bool,
            calls: int, concurrency: int, logs: Path) -> dict:
    stack = pool.get(StackSpec(pgbouncer=pgbouncer))
    with stack.fresh_database(f"bench-{name}") as dbname:
        settings = WorkerSettings.for_variant(
            scenario=SCENARIO.id, variant=name, driver=driver,
            database_url=stack.database_url(driver, dbname), broker_url=stack.redis.url(),
            queue=f"bench.{uuid.uuid4().hex}", config=config)
        worker = CeleryWorker(app_module=SCENARIO.app, settings=settings,
                              log_path=logs / f"{name}.log", concurrency=concurrency,
                              project_root=ROOT)
        with worker:
            worker.run(f"{SCENARIO.app}.{SCENARIO.workload.task}", calls=concurrency * 2,
                       timeout_s=60)  # warm-up: every process connects once
            began = time.monotonic()
            results = worker.run(f"{SCENARIO.app}.{SCENARIO.workload.task}", calls=calls,
                                 timeout_s=300)
            wall = time.monotonic() - began
        ok = sum(r.status is CallStatus.OK for r in results)
        first_error = next((r.error.describe() for r in results if r.error), None)
        runtimes = [float(m) for m in SUCCEEDED.findall(worker.log_path.read_text())]
        measured = runtimes[concurrency * 2:]  # leave out the warm-up calls
        return {"driver": driver, "config": config, "pgbouncer": pgbouncer, "calls": calls,
                "ok": ok, "works": ok == calls, "first_error": first_error,
                "tasks_per_s": round(calls / wall, 1),
                "task_p50_ms": round(percentile(measured, 50) * 1000, 2),
                "task_p95_ms": round(percentile(measured, 95) * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    pool = StackPool()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        try:
            for name, driver, config, pgbouncer in FIXES:
                figures[name] = measure(pool, name, driver, config, pgbouncer, args.calls,
                                        args.concurrency, Path(tmp))
                print(name, figures[name])
        finally:
            pool.close()
    write("fixes", {"concurrency": args.concurrency, "fixes": figures})
    broken = [name for name, f in figures.items() if not f["works"]]
    if broken:  # a configuration that loses calls is no fix; its "cost" means nothing
        print(f"NOT A WORKING FIX here: {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
