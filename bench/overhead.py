"""Harness overhead for one variant against a bare baseline, measured in the same run.

The baseline does the minimum by hand: start the same ``celery worker`` command,
wait for its "ready." line, send the same calls, wait for each result, kill it.
The harness does that plus a fresh database, a control ping, error records,
database inspection, log scanning and classification. Services are started once
beforehand and shared by both, so only per-variant work is compared.

    .venv/bin/python bench/overhead.py [--rounds 5]

Goal: harness / baseline <= 1.2 (median of the rounds). Writes reports/bench/overhead.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celery import Celery

from bench._common import ROOT, summary, write
from harness.runner import run_variant
from harness.stack import StackPool
from harness.task_support import WorkerSettings
from scenarios.test_loop_bound_pool import SCENARIO

VARIANT = SCENARIO.variant("nullpool")
DRIVER = "asyncpg"


def bare_run(stack, logs: Path) -> float:
    """Start, send, collect, stop: nothing else. Returns wall seconds."""
    began = time.monotonic()
    with stack.fresh_database("bare") as dbname:
        queue = f"bare.{uuid.uuid4().hex}"
        settings = WorkerSettings.for_variant(
            scenario=SCENARIO.id, variant=VARIANT.name, driver=DRIVER,
            database_url=stack.database_url(DRIVER, dbname), broker_url=stack.redis.url(),
            queue=queue, config=VARIANT.config)
        log = logs / f"bare-{queue}.log"
        env = dict(os.environ, **settings.to_env(), PYTHONPATH=str(ROOT))
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", SCENARIO.app, "worker", "--pool=prefork",
                 f"--concurrency={SCENARIO.workload.concurrency}", "-Q", queue,
                 "--loglevel=INFO", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"], stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=ROOT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while " ready." not in log.read_text(errors="replace"):
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"bare worker did not start; see {log}")
                time.sleep(0.05)
            client = Celery(broker=settings.broker_url, backend=settings.broker_url)
            sent = [client.send_task(f"{SCENARIO.app}.{SCENARIO.workload.task}",
                                     args=[f"t-{i}"], queue=queue)
                    for i in range(SCENARIO.workload.calls)]
            for result in sent:
                result.get(timeout=30)
            client.close()
        finally:
            # The same stop as the harness's: every result is in, nothing is left to
            # watch, so the group gets SIGKILL (a warm shutdown would add ~1.2 s to both).
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    return time.monotonic() - began


def harness_run(pool: StackPool, logs: Path) -> float:
    began = time.monotonic()
    run = run_variant(SCENARIO, VARIANT, DRIVER, stacks=pool, logs_dir=logs, project_root=ROOT)
    if run.outcome.value != "CLEAN":
        raise RuntimeError(f"the measured variant was {run.outcome}: {run.reason}")
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pool = StackPool()
    bare: list[float] = []
    harness: list[float] = []
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        logs = Path(tmp)
        try:
            stack = pool.get(SCENARIO.stack)
            for _ in range(args.rounds):  # alternate, so drift in load hits both alike
                bare.append(bare_run(stack, logs))
                harness.append(harness_run(pool, logs))
        finally:
            pool.close()
    ratio = summary([h / b for h, b in zip(harness, bare)])
    write("overhead", {"variant": f"{SCENARIO.id}/{VARIANT.name}/{DRIVER}",
                       "calls": SCENARIO.workload.calls, "bare_s": summary(bare),
                       "harness_s": summary(harness), "ratio": ratio, "goal_ratio": 1.2})
    print(f"bare median {summary(bare)['median']:.2f} s, harness median "
          f"{summary(harness)['median']:.2f} s, ratio median {ratio['median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
