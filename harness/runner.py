"""Run one variant of one scenario with one driver, end to end.

Responsibility: the sequence stack -> fresh database -> worker -> workload ->
database inspection -> stop -> classify, turned into one :class:`VariantRun`.
Any harness failure on the way becomes ``HARNESS_ERROR`` with the reason and a
log tail; it never reads as a pass.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import environment, logscan, procinfo
from harness.call_trace import trace
from harness.errors import HarnessError
from harness.faults.actions import Target
from harness.faults.injector import FaultInjector
from harness.outcome import Outcome, TaskCounts, classify
from harness.scenario import Expected, RunEnv, Scenario, Variant, resolve
from harness.stack import StackPool
from harness.task_support import WorkerSettings
from harness.worker import CeleryWorker


@dataclass
class VariantRun:
    """What one variant run observed, in the shape of one results.json entry."""

    scenario: Scenario
    variant: Variant
    driver: str
    expected: Expected
    outcome: Outcome
    counts: TaskCounts = field(default_factory=TaskCounts)
    first_error: str | None = None
    other_errors: tuple[str, ...] = ()
    worker_start_s: float = 0.0
    run_s: float = 0.0
    log_findings: dict[str, int] = field(default_factory=dict)
    db: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=dict)  # what Redis still held at the end
    counters: dict[str, int] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)  # in force, as the app declared them
    faults: list[dict[str, Any]] = field(default_factory=list)  # what fired, when, what it saw
    log_path: str = ""
    reason: str = ""  # why HARNESS_ERROR or N/A
    services: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        # A harness failure never reads as a pass, whatever a variant expected.
        if self.outcome is Outcome.HARNESS_ERROR or self.outcome is not self.expected.outcome:
            return False
        if self.outcome is Outcome.REPRODUCED:
            return bool(set(self.counts.by_signature) & set(self.expected.signatures))
        return True

    def to_result(self) -> dict[str, Any]:
        """One entry of results.json (the field names are a contract: see DESIGN.md)."""
        return {
            "scenario": self.scenario.id, "variant": self.variant.name, "driver": self.driver,
            "role": self.variant.role.value, "expected": self.expected.outcome.value,
            "expected_signatures": list(self.expected.signatures),
            "outcome": self.outcome.value, "passed": self.passed,
            "tasks": self.counts.to_dict(), "first_error": self.first_error,
            "other_errors": list(self.other_errors),
            "worker_start_s": round(self.worker_start_s, 3), "run_s": round(self.run_s, 3),
            "log_findings": self.log_findings, "counters": self.counters, "db": self.db,
            "broker": self.broker, "log": self.log_path,
            "reason": self.reason, "config": dict(self.variant.config), "knobs": self.knobs,
            "faults": self.faults,
            "description": self.variant.description,
            # What each signature this run met means, for the reader of the report.
            "signature_help": {s.name: s.description for s in self.scenario.signatures
                               if s.name in self.counts.by_signature and s.description},
            "claim": self._claim(),
        }

    def _claim(self) -> dict[str, Any] | None:
        claim = self.scenario.claim
        if claim is None:
            return None
        return {"error": claim.error, "fix": claim.fix, "signature": claim.signature,
                "bad": claim.bad, "fixed": claim.fixed, "bad_fails": claim.bad_fails,
                "source": claim.source}

    def failure_message(self) -> str:
        lines = [(f"{self.scenario.id} / {self.variant.name} / {self.driver}: expected "
                  f"{self.expected.describe()}, observed {self.outcome.value} "
                  f"{self.counts.to_dict()}")]
        if self.expected.why:
            lines.append(f"expectation: {self.expected.why}")
        if self.reason:
            lines.append(f"reason: {self.reason}")
        if self.first_error:
            lines.append(f"first error: {self.first_error}")
        if self.other_errors:
            lines.append("errors no signature knew: " + "; ".join(self.other_errors))
        if self.log_findings:
            lines.append(f"worker log findings: {self.log_findings}")
        if self.log_path:
            lines.append(f"worker log: {self.log_path}")
        if self.outcome is not Outcome.HARNESS_ERROR:
            lines.append("If this is a real change of behaviour (a new release), understand it, "
                         "then update the variant's expectation and its docstring.")
        return "\n".join(lines)


def run_env(driver: str, pgbouncer: str | None = None) -> RunEnv:
    """The environment expectation rules see; PgBouncer's version is that of the
    installed binary when no PgBouncer runs yet (so ``requires`` can be checked first)."""
    return RunEnv(driver=driver, python=environment.python_tuple(),
                  packages=environment.package_versions(),
                  pgbouncer=pgbouncer or environment.pgbouncer_version(),
                  libpq=environment.libpq_info().get("libpq"))


def run_variant(scenario: Scenario, variant: Variant, driver: str, *, stacks: StackPool,
                logs_dir: Path, project_root: Path) -> VariantRun:
    """Run ``variant`` of ``scenario`` with ``driver`` on a real prefork worker."""
    spec = variant.stack or scenario.stack
    workload = variant.workload or scenario.workload
    log_path = logs_dir / scenario.id / f"{variant.name}-{driver}.log"
    try:
        stack = stacks.get(spec)
    except HarnessError as exc:
        expected = resolve(variant.expect, run_env(driver))
        return VariantRun(scenario, variant, driver, expected, Outcome.HARNESS_ERROR,
                          reason=str(exc), services=stacks.versions())
    env = run_env(driver, stack.pgbouncer.version if stack.pgbouncer else None)
    expected = resolve(variant.expect, env)
    run = VariantRun(scenario, variant, driver, expected, Outcome.HARNESS_ERROR,
                     log_path=str(log_path), services=stack.versions())
    try:
        stack.fresh_broker()
        with stack.fresh_database(f"{scenario.id}-{variant.name}") as dbname, \
                ExitStack() as fault_layer:
            for statement in scenario.setup_sql:
                stack.postgres.execute(statement, dbname)
            proxy = fault_layer.enter_context(stack.fault_proxy()) if spec.proxy else None
            broker_proxy = (fault_layer.enter_context(stack.broker_proxy())
                            if any(f.needs_broker_proxy for f in workload.faults) else None)
            settings = WorkerSettings.for_variant(
                scenario=scenario.id, variant=variant.name, driver=driver,
                database_url=stack.database_url(driver, dbname, via=proxy),
                broker_url=stack.redis.url(via=broker_proxy),
                backend_url=stack.redis.url() if workload.result_backend_direct else "",
                queue=f"harness.{uuid.uuid4().hex}",
                config=variant.config,
                start_together=workload.concurrency if workload.start_together else 0,
                cue_points=FaultInjector.points(workload.faults),
                cue_passing=FaultInjector.passing_points(workload.faults))
            worker = CeleryWorker(app_module=scenario.app, settings=settings, log_path=log_path,
                                  concurrency=workload.concurrency, project_root=project_root,
                                  extra_args=workload.worker_args,
                                  client_url=stack.redis.url())
            with worker:
                run.worker_start_s = worker.start_s
                # Read now: a fault may restart Redis, where the app published them.
                run.knobs = worker.knobs()
                injector = fault_layer.enter_context(FaultInjector(
                    workload.faults, Target(stack, dbname, worker.pid, proxy, broker_proxy),
                    redis_client=worker.client.backend.client, queue=settings.queue))
                began = time.monotonic()
                calls = worker.run(f"{scenario.app}.{workload.task}",
                                   calls=workload.calls, timeout_s=workload.timeout_s,
                                   kwargs=workload.kwargs, check_ran=workload.check_ran,
                                   ignore_result=workload.ignore_result,
                                   after_calls=injector.after_calls(),
                                   later=((workload.calls_after_faults, injector.settled)
                                          if workload.calls_after_faults else None))
                run.run_s = time.monotonic() - began
                # Heal before the database is read: a stopped process or a paused
                # PgBouncer must not hide rows or sessions from the inspection.
                injector.heal_all()
                run.faults = injector.to_result()
                problems = injector.problems()
                if problems:
                    run.reason = "the fault layer could not do what the variant declares: " \
                        + "; ".join(problems)
                    worker.stop(grace_s=0)
                    return run
                run.db = _inspect(stack, dbname, scenario)
                run.broker = _inspect_broker(stack, settings.queue)
                run.counters = worker.counters()
                if workload.runs_sql:
                    traced = trace(calls, stack.postgres.execute(workload.runs_sql, dbname),
                                   sent_before=workload.calls,
                                   later_sent_at=worker.later_sent_at,
                                   alive=procinfo.pid_alive)
                    calls = traced.calls
                    if traced.resume_ms is not None:
                        run.counters["resume-ms"] = traced.resume_ms
                # Every call is collected or counted hung and the database is read:
                # nothing is left to observe, so the worker gets SIGKILL at once. A warm
                # shutdown would cost 1.3 s per variant and could itself hang.
                worker.stop(grace_s=0)
            dead = stack.problems()
            if dead:
                run.reason = "a service died during the run: " + "; ".join(dead)
                return run
            result = classify(calls, scenario.signatures)
            run.outcome, run.counts = result.outcome, result.counts
            run.first_error, run.other_errors = result.first_error, result.other_errors
            run.log_findings = logscan.scan(worker.observed_log())
    except HarnessError as exc:
        run.reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. Redis refused: still a harness error
        run.reason = f"{type(exc).__name__}: {exc}"
        dead = stack.problems()
        if dead:
            # The dead service is the cause; what failed next is only how it showed.
            run.reason = ("a service died during the run: " + "; ".join(dead)
                          + f"\nwhat failed then: {run.reason}")
    return run


def _inspect(stack: Any, dbname: str, scenario: Scenario) -> dict[str, Any]:
    """Sessions left in the run's database, and the scenario's own queries."""
    found: dict[str, Any] = {}
    rows = stack.postgres.execute(
        "select coalesce(state, 'unknown'), count(*) from pg_stat_activity "
        f"where datname = '{dbname}' group by 1 order by 1")
    found["sessions"] = {state: count for state, count in rows}
    for name, sql in scenario.inspect_sql.items():
        found[name] = [list(row) for row in stack.postgres.execute(sql, dbname)]
    return found


def _inspect_broker(stack: Any, queue: str) -> dict[str, Any]:
    """What Redis still holds for this run once its calls are done: messages waiting in
    the run's queue (kombu's priority lists included) and messages a worker took but never
    acknowledged (the Redis transport's ``unacked`` hash, which holds this run's only:
    each variant starts on an empty database). A call that never ran is in one of them,
    or gone from the broker."""
    client = stack.redis.client()
    try:
        queued = sum(client.llen(key) for key in client.scan_iter(match=f"{queue}*")
                     if client.type(key) in (b"list", "list"))
        return {"queued": queued, "unacked": client.hlen("unacked")}
    finally:
        client.close()
