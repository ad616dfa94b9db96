"""The audit's hazards, as the variants of one scenario the harness's plugin runs.

Responsibility: pure data. Each hazard is the workload of the scenario that explains
it, run on the user's code (:mod:`harness.audit.probe_app`), and expected CLEAN: a
hazard that reproduces is a finding. The signatures are the harness's catalogue, so
a failure reads the same as in the scenario.

    loop-reuse              several calls per process (loop-bound-pool)
    parent-use-before-fork  one query in the parent before the fork (engine-before-fork)
    pgbouncer-prepared      statements through PgBouncer in transaction mode, a server
                            connection shared by clients (pgbouncer-prepared-*)
    connection-storm        more connections at once than the server allows, with the
                            user's retry policy (retry-storm)
    soft-time-limit         a soft time limit ends a query; the next calls of that
                            process use what it left (soft-time-limit)
    server-restart          the server ends every session between calls
                            (stale-pooled-connection)
    network-stall           the path to the database stops answering mid-call
                            (network-stall)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness import signatures as sig
from harness.audit.config import HAZARDS, AuditConfig
from harness.faults.plan import Fault, after_calls, at_point
from harness.scenario import Role, RunEnv, Scenario, StackSpec, Variant, Workload, clean
from harness.signatures import Signature

APP = "harness.audit.probe_app"
DEFAULT_SOFT_LIMIT_S = 2
STALL_PROMPT_S = 10

STALL_ENDED_LATE = Signature(
    "stall-ended-late", "harness.audit.probe_app.StallEndedLate",
    description="A call whose database path stalled failed, but only after the audit's "
                "bound: nothing in the configuration ended the wait in time.")

SIGNATURES = (
    sig.LOOP_CLOSED, sig.FUTURE_OTHER_LOOP, sig.ASYNCPG_ANOTHER_OPERATION,
    sig.ASYNCPG_CONNECTION_CLOSED, sig.PSYCOPG_CONNECTION_CLOSED, sig.PSYCOPG_CONNECTION_LOST,
    sig.ASYNCPG_CONNECTION_LOST, sig.SERVER_ENDED_SESSION, sig.PROTOCOL_DESYNC,
    sig.PREPARED_STATEMENT_MISSING, sig.PREPARED_STATEMENT_EXISTS, sig.TOO_MANY_CLIENTS,
    sig.PSYCOPG_NO_CONNECTION_SLOTS, sig.POOL_TIMEOUT, sig.RESULT_WITHOUT_ROWS,
    sig.PSYCOPG_ANOTHER_COMMAND, sig.ASYNCPG_FOREIGN_TRANSACTION, sig.PSYCOPG_RESULT_MISMATCH,
    sig.SOFT_TIME_LIMIT, sig.HARD_TIME_LIMIT, sig.HARD_TIME_LIMIT_SIGTERM, sig.QUERY_TIMEOUT,
    STALL_ENDED_LATE,
)


@dataclass(frozen=True)
class Hazard:
    name: str
    scenario: str  # the scenario that explains it, and whose fixes the report names
    description: str
    workload: Workload
    knobs: dict[str, Any] = field(default_factory=dict)
    stack: StackSpec | None = None
    needs_pgbouncer: bool = False


def hazards(config: AuditConfig) -> list[Hazard]:
    """The hazards for this configuration, in :data:`HAZARDS` order."""
    soft_limit = config.user_settings.get("conf", {}).get("task_soft_time_limit")
    # The user's own soft time limit if they set one; else the audit sets a short one.
    soft_args = () if soft_limit else (f"--soft-time-limit={DEFAULT_SOFT_LIMIT_S}",)
    slow_s = float(soft_limit or DEFAULT_SOFT_LIMIT_S) + 8
    found = [
        Hazard("loop-reuse", "loop-bound-pool",
               "12 calls on 2 processes: each process runs several calls in a row",
               Workload(task="probe", calls=12, concurrency=2, timeout_s=60)),
        Hazard("parent-use-before-fork", "engine-before-fork",
               "the parent runs one query at start-up, before the pool forks; then 16 calls "
               "on 2 processes",
               Workload(task="probe", calls=16, concurrency=2, timeout_s=60),
               knobs={"parent_query": True}),
        Hazard("pgbouncer-prepared", "pgbouncer-prepared-asyncpg",
               "24 calls on 4 processes, 6 statements each, through PgBouncer in transaction "
               "mode with 2 server connections",
               Workload(task="probe", calls=24, concurrency=4, timeout_s=60),
               knobs={"statements": 6},
               stack=StackSpec(pgbouncer=True, pgbouncer_pool_size=2), needs_pgbouncer=True),
        Hazard("connection-storm", "retry-storm",
               "8 calls on 4 processes, 3 connections each at once for 1 s, against a server "
               "that allows 6 (9, 3 kept for superusers), with your retry policy",
               Workload(task="probe", calls=8, concurrency=4, timeout_s=150),
               knobs={"connections": 3, "hold_s": 1},
               stack=StackSpec(max_connections=9, app_role=True)),
        Hazard("soft-time-limit", "soft-time-limit",
               f"the first of 6 calls on 1 process runs a {slow_s:g} s query that the soft "
               f"time limit ends; the next calls use what it left",
               Workload(task="probe", calls=6, concurrency=1, timeout_s=90,
                        worker_args=soft_args),
               knobs={"slow_first_call_s": slow_s}),
        Hazard("server-restart", "stale-pooled-connection",
               "4 calls on 1 process; after the second, the server ends every session",
               Workload(task="probe", calls=4, concurrency=1, timeout_s=60,
                        faults=(Fault("terminate-backends", after_calls(2)),))),
        Hazard("network-stall", "network-stall",
               f"one call's path to the database stops answering after its connection is "
               f"up; it must fail within {STALL_PROMPT_S} s",
               Workload(task="probe", calls=1, concurrency=1, timeout_s=40,
                        faults=(Fault("proxy-blackhole", at_point("before-query")),)),
               knobs={"stall_point": True, "prompt_s": STALL_PROMPT_S},
               stack=StackSpec(proxy=True)),
    ]
    assert [h.name for h in found] == list(HAZARDS), "HAZARDS and hazards() disagree"
    return [h for h in found if h.name in config.hazards]


def _not_behind_pgbouncer(_env: RunEnv) -> str:
    return ("you do not deploy behind PgBouncer (pgbouncer = false in [tool.harness.audit]); "
            "set it to true to run this hazard")


def audit_scenario(config: AuditConfig) -> Scenario:
    """One scenario whose variants are the hazards, for the user's driver."""
    base = asdict(config)
    variants = []
    for hazard in hazards(config):
        requires = _not_behind_pgbouncer if hazard.needs_pgbouncer and not config.pgbouncer \
            else None
        variants.append(Variant(
            hazard.name, Role.CONTROL, {"audit": base, **hazard.knobs},
            expect=clean(why=f"your configuration should survive {hazard.scenario}'s workload"),
            stack=hazard.stack, workload=hazard.workload, requires=requires,
            description=f"{hazard.description} (read: scenario {hazard.scenario})"))
    return Scenario(
        id="audit", app=APP, workload=variants[0].workload if variants else Workload("probe"),
        signatures=SIGNATURES, claim=None, variants=tuple(variants),
        drivers=(config.driver or "asyncpg",))


def explaining_scenario(hazard_name: str) -> str:
    for hazard in hazards(AuditConfig(engine="x:y", project_dir=".")):
        if hazard.name == hazard_name:
            return hazard.scenario
    raise KeyError(hazard_name)
