"""What each fault really does to a running stack, and how it is undone.

Responsibility: one function pair (fire, heal) per action of
:data:`harness.faults.plan.ACTIONS`, acting on real services and processes:
``pg_terminate_backend()``, a PostgreSQL restart on the same port and data,
PgBouncer's admin console, signals to one prefork pool process, the fault proxy.
Each fire returns one line saying what it saw happen (which pids ended, which
process is now in state ``T``), so the outcome records what fired, not what was
meant to.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import procinfo
from harness._process import wait_for
from harness.errors import HarnessError

SIGNAL_WAIT_S = 5.0


class FaultFailed(HarnessError):
    """A fault could not be fired or healed: the variant cannot say what it meant to."""


@dataclass
class Target:
    """What a fault acts on in one variant run.

    Attributes:
        stack: the run's :class:`harness.stack.Stack`.
        dbname: the run's database.
        worker_pid: the Celery worker's main process (its children are the pool).
        proxy: the fault proxy in front of the database, when the stack has one.
        broker_proxy: the fault proxy between the worker and Redis, when a fault needs it.
        pid: the pool process that announced the cue (None for ``after_calls``).
        latency_ms: for ``proxy-latency``.
        down_s: for the Redis restarts.
    """

    stack: Any
    dbname: str
    worker_pid: int
    proxy: Any | None = None
    broker_proxy: Any | None = None
    pid: int | None = None
    latency_ms: int = 0
    down_s: float = 0.0


def pool_processes(worker_pid: int) -> list[int]:
    """The worker's prefork pool processes (its live children), oldest first."""
    found = [p for p in procinfo.processes() if p.ppid == worker_pid and p.alive]
    return [p.pid for p in sorted(found, key=lambda p: p.start_ticks)]


# --- PostgreSQL ---------------------------------------------------------------------
def terminate_backends(t: Target) -> str:
    rows = t.stack.postgres.execute(
        "select pid, pg_terminate_backend(pid) from pg_stat_activity "
        f"where datname = '{t.dbname}' and pid <> pg_backend_pid()")
    ended = sorted(pid for pid, ok in rows if ok)
    if ended:
        gone = wait_for(lambda: not t.stack.postgres.execute(
            "select 1 from pg_stat_activity where pid = any(array"
            f"{ended}::int[])"), timeout_s=SIGNAL_WAIT_S)
        if not gone:
            raise FaultFailed(f"pg_terminate_backend() was accepted for {ended}, but "
                              f"{gone.explain('end those sessions')}")
    return f"terminated {len(ended)} session(s) of the run's database: pids {ended}"


def _restart(t: Target, immediate: bool) -> str:
    postgres = t.stack.postgres
    restart = getattr(postgres, "restart", None)
    if restart is None:
        raise FaultFailed(f"the {t.stack.backend} backend's PostgreSQL cannot restart")
    before = postgres.execute("select pg_postmaster_start_time()::text")[0][0]
    restart(immediate=immediate)
    after = postgres.execute("select pg_postmaster_start_time()::text")[0][0]
    if after == before:
        raise FaultFailed("PostgreSQL answered with the same start time after a restart")
    kind = "immediate" if immediate else "fast"
    return f"PostgreSQL restarted ({kind} shutdown) on port {postgres.port}: up since {after}"


def restart_postgres(t: Target) -> str:
    return _restart(t, immediate=False)


def restart_postgres_immediate(t: Target) -> str:
    return _restart(t, immediate=True)


RESTART_MARKER = "harness:fault:restart-marker"


def restart_redis(t: Target) -> str:
    return _restart_redis(t, keep_data=False)


def restart_redis_persisted(t: Target) -> str:
    return _restart_redis(t, keep_data=True)


def _restart_redis(t: Target, *, keep_data: bool) -> str:
    redis = t.stack.redis
    restart = getattr(redis, "restart", None)
    if restart is None:
        raise FaultFailed(f"the {t.stack.backend} backend's Redis cannot restart")
    client = redis.client()
    before = client.info("server")["run_id"]
    # A marker written just before: whether it survives tells what the restart kept
    # (counting keys would not: the run's own keys come and go meanwhile).
    client.set(RESTART_MARKER, before)
    keys_before = client.dbsize()
    began = time.monotonic()
    restart(keep_data=keep_data, down_s=t.down_s)
    took = time.monotonic() - began
    client = redis.client()
    after = client.info("server")["run_id"]
    if after == before:
        raise FaultFailed("Redis answered with the same run_id after a restart")
    kept = bool(client.delete(RESTART_MARKER))
    if kept != keep_data:
        raise FaultFailed(f"Redis came back {'with' if kept else 'without'} the data it had "
                          f"before the restart; this fault expects it "
                          f"{'kept' if keep_data else 'lost'}")
    said = "its data kept" if keep_data else "no data kept"
    down = f", kept down {t.down_s:g} s" if t.down_s else ""
    return (f"Redis restarted on port {redis.port} in {took:.1f} s{down}: run_id "
            f"{after[:12]}, {said} ({keys_before} keys in db 0 before)")


def wait_redis(t: Target) -> str:
    answered = wait_for(lambda: t.stack.redis.client().ping(), timeout_s=30)
    if not answered:
        raise FaultFailed(f"Redis {answered.explain('answer after its restart')}")
    return "Redis answers"


# --- PgBouncer ----------------------------------------------------------------------
def _pgbouncer_admin(t: Target, command: str) -> str:
    pgbouncer = t.stack.pgbouncer
    if pgbouncer is None:
        raise FaultFailed(f"PgBouncer {command} needs a stack with PgBouncer; this "
                          f"variant's stack has none (a scenario declaration error)")
    pgbouncer.admin(f"{command} {t.dbname}")
    return f"PgBouncer admin console: {command} {t.dbname}"


def pgbouncer_reconnect(t: Target) -> str:
    return _pgbouncer_admin(t, "RECONNECT")


def pgbouncer_kill(t: Target) -> str:
    return _pgbouncer_admin(t, "KILL")


def pgbouncer_pause(t: Target) -> str:
    return _pgbouncer_admin(t, "PAUSE")


def pgbouncer_resume(t: Target) -> str:
    return _pgbouncer_admin(t, "RESUME")


# --- pool processes -----------------------------------------------------------------
def _child(t: Target) -> int:
    if t.pid is not None:
        return t.pid
    pool = pool_processes(t.worker_pid)
    if not pool:
        raise FaultFailed(f"the worker (pid {t.worker_pid}) has no pool process to signal")
    return pool[0]


def kill_child(t: Target) -> str:
    pid = _child(t)
    os.kill(pid, signal.SIGKILL)
    gone = wait_for(lambda: (s := procinfo.stat(pid)) is None or not s.alive,
                    timeout_s=SIGNAL_WAIT_S)
    if not gone:
        raise FaultFailed(f"pool process {pid} got SIGKILL but {gone.explain('die')}")
    return f"pool process {pid} killed (SIGKILL)"


def stop_child(t: Target) -> str:
    pid = _child(t)
    os.kill(pid, signal.SIGSTOP)
    stopped = wait_for(lambda: (s := procinfo.stat(pid)) is not None and s.state == "T",
                       timeout_s=SIGNAL_WAIT_S)
    if not stopped:
        raise FaultFailed(f"pool process {pid} got SIGSTOP but "
                          f"{stopped.explain('reach state T')}")
    t.pid = pid  # the heal continues this very process
    return f"pool process {pid} stopped (SIGSTOP, state T)"


def continue_child(t: Target) -> str:
    if t.pid is None:
        return "no stopped pool process to continue"
    try:
        os.kill(t.pid, signal.SIGCONT)
    except ProcessLookupError:
        return f"pool process {t.pid} is gone; nothing to continue"
    pid = t.pid
    # Seen from outside, like the faults: the record says what happened, not what was meant.
    going = wait_for(lambda: (s := procinfo.stat(pid)) is None or s.state != "T",
                     timeout_s=SIGNAL_WAIT_S)
    if not going:
        raise FaultFailed(f"pool process {pid} got SIGCONT but {going.explain('leave state T')}")
    return f"pool process {pid} continued (SIGCONT)"


# --- the fault proxy ----------------------------------------------------------------
def _proxy(t: Target) -> Any:
    if t.proxy is None:
        raise FaultFailed("a proxy fault needs a stack with the fault proxy "
                          "(StackSpec(proxy=True)); this variant's stack has none")
    return t.proxy


def proxy_blackhole(t: Target) -> str:
    _proxy(t).set_mode("blackhole")
    return f"fault proxy: blackhole ({_proxy(t).stats()['connections_open']} open connections)"


def proxy_reset(t: Target) -> str:
    proxy = _proxy(t)
    before = proxy.stats()["resets"]
    proxy.set_mode("reset")
    return f"fault proxy: reset ({proxy.stats()['resets'] - before} connections reset)"


def broker_reset(t: Target) -> str:
    proxy = t.broker_proxy
    if proxy is None:
        raise FaultFailed("broker-reset needs the broker proxy, which the runner starts for "
                          "a workload with a broker-* fault; this run has none")
    before = proxy.stats()["resets"]
    proxy.set_mode("reset")
    return f"broker proxy: reset ({proxy.stats()['resets'] - before} connections reset)"


def broker_heal(t: Target) -> str:
    if t.broker_proxy is not None:
        t.broker_proxy.heal()
    return "broker proxy: pass through"


def proxy_latency(t: Target) -> str:
    _proxy(t).set_mode("latency", latency_ms=t.latency_ms)
    return f"fault proxy: {t.latency_ms} ms latency each way"


def proxy_heal(t: Target) -> str:
    _proxy(t).heal()
    return "fault proxy: pass through"


def nothing(t: Target) -> str:
    return "nothing to undo"


def wait_postgres(t: Target) -> str:
    answered = wait_for(lambda: t.stack.postgres.execute("select 1"), timeout_s=30)
    if not answered:
        raise FaultFailed(f"PostgreSQL {answered.explain('answer after its restart')}")
    return "PostgreSQL answers"


Action = Callable[[Target], str]
FIRE_AND_HEAL: dict[str, tuple[Action, Action]] = {
    "terminate-backends": (terminate_backends, nothing),
    "restart-postgres": (restart_postgres, wait_postgres),
    "restart-postgres-immediate": (restart_postgres_immediate, wait_postgres),
    "restart-redis": (restart_redis, wait_redis),
    "restart-redis-persisted": (restart_redis_persisted, wait_redis),
    "pgbouncer-reconnect": (pgbouncer_reconnect, nothing),
    "pgbouncer-kill": (pgbouncer_kill, pgbouncer_resume),
    "pgbouncer-pause": (pgbouncer_pause, pgbouncer_resume),
    "kill-child": (kill_child, nothing),
    "stop-child": (stop_child, continue_child),
    "proxy-blackhole": (proxy_blackhole, proxy_heal),
    "proxy-reset": (proxy_reset, proxy_heal),
    "proxy-latency": (proxy_latency, proxy_heal),
    "broker-reset": (broker_reset, broker_heal),
}
