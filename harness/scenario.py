"""The declarative types a scenario module fills in.

Responsibility: the vocabulary of a scenario (stack, workload, variants,
expectations, the article's claim). Nothing here runs anything.

A scenario module reads like a spec::

    SCENARIO = Scenario(
        id="loop-bound-pool",
        app="scenarios.apps.loop_bound_pool",
        workload=Workload(task="query_token", calls=12, concurrency=2),
        signatures=(sig.LOOP_CLOSED, sig.FUTURE_OTHER_LOOP),
        claim=Claim(error="RuntimeError: loop is closed", fix="NullPool",
                    signature="event-loop-closed", bad="default-pool", fixed="nullpool"),
        variants=(
            Variant("default-pool", Role.BAD, {"pool": "default"},
                    expect=reproduces("future-other-loop")),
            Variant("nullpool", Role.ARTICLE_FIX, {"pool": "null"}, expect=clean()),
        ),
    )
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from packaging.version import InvalidVersion, Version

from harness.faults.plan import Fault
from harness.outcome import Outcome
from harness.signatures import Signature

DRIVERS: tuple[str, ...] = ("asyncpg", "psycopg")


class Role(str, enum.Enum):
    BAD = "bad"  # the configuration that fails (the article's "before")
    ARTICLE_FIX = "article-fix"  # the fix the article gives
    FIX = "fix"  # a fix documented elsewhere (maintainers, docs)
    PARTIAL_FIX = "partial-fix"  # half of a fix, or a fix that only works sometimes
    CONTROL = "control"  # a configuration that should never fail (proves the workload)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RunEnv:
    """What an expectation rule may depend on."""

    driver: str
    python: tuple[int, int]
    packages: Mapping[str, str]
    pgbouncer: str | None = None


@dataclass(frozen=True)
class Expected:
    """An expectation: an outcome word and, for REPRODUCED, the signatures allowed."""

    outcome: Outcome
    signatures: tuple[str, ...] = ()
    why: str = ""

    def describe(self) -> str:
        if self.outcome is Outcome.REPRODUCED:
            return f"REPRODUCED ({' or '.join(self.signatures)})"
        return self.outcome.value


Rule = Callable[[RunEnv], Expected]
Expectation = Union[Expected, Rule, Mapping[str, Union[Expected, Rule]]]


def reproduces(*signature_names: str, why: str = "") -> Expected:
    """The variant must fail with at least one of these signatures."""
    if not signature_names:
        raise ValueError("reproduces() needs at least one signature name")
    return Expected(Outcome.REPRODUCED, tuple(signature_names), why)


def clean(why: str = "") -> Expected:
    """Every call must return its expected value."""
    return Expected(Outcome.CLEAN, (), why)


def other_failure(why: str) -> Expected:
    """Calls fail in a way no signature names (say why: this is rarely the goal)."""
    return Expected(Outcome.OTHER_FAILURE, (), why)


def when(condition: Callable[[RunEnv], bool], then: Expected, otherwise: Expected,
         why: str) -> Rule:
    """An expectation that depends on the environment, with the reason beside it.

    The rule notes in ``rule.seen`` which branches (True: ``then``, False:
    ``otherwise``) it has chosen, so a test can prove that every branch was checked.
    """
    def rule(env: RunEnv) -> Expected:
        taken = bool(condition(env))
        rule.seen.add(taken)  # type: ignore[attr-defined]
        chosen = then if taken else otherwise
        return Expected(chosen.outcome, chosen.signatures, why)
    rule.__doc__ = why
    rule.seen = set()  # type: ignore[attr-defined]
    return rule


def parse_version(version: str | None) -> Version | None:
    """A PEP 440 version (``"0.31.0rc1"`` sorts before ``"0.31"``), or None when
    missing or unreadable (a binary that printed no version, say)."""
    if not version:
        return None
    try:
        return Version(version)
    except InvalidVersion:
        return None


def older_than(version: str | None, boundary: str) -> bool:
    """Is ``version`` older than ``boundary``? A missing or unreadable one counts as older."""
    found = parse_version(version)
    return found is None or found < Version(boundary)


def before_package(package: str, version: str, older: Expected | Rule,
                   otherwise: Expected | Rule, why: str) -> Rule:
    """``older`` where the installed ``package`` is older than ``version``, else ``otherwise``.

    Either side may itself be a rule (a PgBouncer rule, say); ``why`` names the change
    in ``package`` that moves the outcome, so a matrix cell that differs by version
    carries its reason instead of reading as a regression.
    """
    def rule(env: RunEnv) -> Expected:
        is_older = older_than(env.packages.get(package), version)
        rule.seen.add(is_older)  # type: ignore[attr-defined]
        chosen = older if is_older else otherwise
        found = chosen if isinstance(chosen, Expected) else chosen(env)
        return Expected(found.outcome, found.signatures, why if is_older else found.why)
    rule.__doc__ = why
    rule.seen = set()  # type: ignore[attr-defined]
    rule.package_boundary = (package, version)  # type: ignore[attr-defined]
    rule.children = [c for c in (older, otherwise) if callable(c)]  # type: ignore[attr-defined]
    return rule


def needs_pgbouncer(minimum: str, feature: str) -> Callable[[RunEnv], str | None]:
    """A ``Variant.requires`` check: n/a unless PgBouncer >= ``minimum`` is installed."""
    def check(env: RunEnv) -> str | None:
        if not older_than(env.pgbouncer, minimum):
            return None
        return (f"{feature} needs PgBouncer >= {minimum}; the installed PgBouncer is "
                f"{env.pgbouncer or 'missing'}")
    check.pgbouncer_boundary = minimum  # type: ignore[attr-defined]
    return check


def until_pgbouncer(version: str, failing: Expected, why: str) -> Rule:
    """``failing`` on PgBouncer older than ``version``, clean from ``version`` on."""
    def older(env: RunEnv) -> bool:
        return older_than(env.pgbouncer, version)
    rule = when(older, failing, clean(), why=why)
    rule.pgbouncer_boundary = version  # type: ignore[attr-defined]
    return rule


def resolve(expectation: Expectation, env: RunEnv) -> Expected:
    """The concrete expectation of one variant run in ``env``."""
    if isinstance(expectation, Mapping):
        expectation = expectation[env.driver]
    if isinstance(expectation, Expected):
        return expectation
    return expectation(env)


@dataclass(frozen=True)
class StackSpec:
    """Which services a scenario needs and how they are set up."""

    pgbouncer: bool = False  # do the scenario's URLs go through PgBouncer?
    max_connections: int = 100
    pgbouncer_pool_size: int = 20
    max_prepared_statements: int | None = None  # needs PgBouncer >= 1.21
    # More pgbouncer.ini settings, (key, value) pairs that replace the harness's own:
    # (("query_wait_timeout", "2"), ("ignore_startup_parameters", "extra_float_digits")).
    pgbouncer_config: tuple[tuple[str, str], ...] = ()
    # The app logs in as a role that is not a superuser (made with a generated password),
    # so the connections PostgreSQL reserves for superusers stay the harness's when the
    # app takes every other slot. Direct connections only: PgBouncer's auth file has
    # the superuser alone.
    app_role: bool = False

    def __post_init__(self) -> None:
        if self.app_role and self.pgbouncer:
            raise ValueError("StackSpec(app_role=True) is for direct connections: PgBouncer's "
                             "auth file knows the superuser only")
    # A fault proxy (harness/faults/proxy.py) between the worker and the database (or
    # PgBouncer), started for each variant run: the proxy-* faults act on it.
    proxy: bool = False


@dataclass(frozen=True)
class Workload:
    """The calls every variant of a scenario receives.

    Each call carries a unique token; by default the task must return it
    unchanged, so a task that answers with another call's value is WRONG.

    Args:
        task: the task's name as registered in the scenario's app.
        calls: how many calls to send.
        concurrency: prefork worker processes.
        timeout_s: bound on the whole batch; calls not done by then are hung.
        kwargs: keyword arguments added to every call.
        worker_args: extra command-line arguments for ``celery worker``.
        check_ran: the task body must call ``task_support.mark_ran(app, token)``;
            a call Celery reports done without that mark is NOT_RUN (signature
            ``body-never-ran``). Use it where a body may silently not run.
        ignore_result: the task stores no result (``ignore_result=True``); the
            harness then waits for the worker's "succeeded"/"raised" log line of
            each call instead of a result, and needs ``check_ran`` to know more.
        start_together: each prefork process holds its first call until every
            process has one, then all go at once (``task_support.start_together``,
            joined by the app's task class): for hazards that need every process
            at work from the start, not one process taking every call.
        faults: faults fired on cue while the calls run, each healed by the end
            of the variant (:mod:`harness.faults`).
        calls_after_faults: more calls, sent once every fault has fired (and healed,
            when it heals on a timer): do they run, and how soon? Their tokens follow
            the workload's (indexes ``calls`` and up). Needs ``faults``.
        runs_sql: a query on the run's database giving one row ``(token,
            started_epoch_s, worker_pid)`` per run of a task body (the task records
            them; ``worker_pid`` is its pool process's). With it, a call that hung and
            never ran is ``call-lost`` (sent before the faults) or ``not-consumed``
            (sent after them), one whose every run was in a process that is gone is
            ``call-abandoned``, and the counter
            ``resume-ms`` says how long after the later calls were sent the first
            of them started. For faults that lose what the broker held, where
            Redis (and every result in it) cannot be the witness.
    """

    task: str
    calls: int = 12
    concurrency: int = 2
    timeout_s: float = 30.0
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    worker_args: tuple[str, ...] = ()
    check_ran: bool = False
    ignore_result: bool = False
    start_together: bool = False
    faults: tuple[Fault, ...] = ()
    calls_after_faults: int = 0
    runs_sql: str | None = None

    def __post_init__(self) -> None:
        if self.calls_after_faults and not self.faults:
            raise ValueError("Workload(calls_after_faults=...) needs faults: the calls are "
                             "sent once the faults have fired")


@dataclass(frozen=True)
class Claim:
    """What the article says, quoted, and which variants test it.

    Args:
        error: the error text the article quotes for the bad configuration.
        fix: the fix the article gives, quoted or closely paraphrased.
        signature: our signature for the article's error, or None if it names
            an error no signature here describes.
        bad: the variant that applies the bad configuration.
        fixed: the variant that applies the article's fix.
        bad_fails: False when the article claims the ``bad`` variant WORKS (a claim
            of support, such as "Celery supports async def tasks natively"): the
            claim then holds only if that variant is clean.
        source: who makes the claim. "the article" quotes an error, so a different
            error makes the verdict "holds with a different error"; a production
            fault's claim comes from maintainers ("SQLAlchemy's pooling
            documentation") and quotes none: it holds when the bad variant fails
            and the recommended fix is clean.
    """

    error: str
    fix: str
    signature: str | None
    bad: str
    fixed: str
    bad_fails: bool = True
    source: str = "the article"


@dataclass(frozen=True)
class Variant:
    """One configuration of a scenario. Pure data: the worker reads ``config``.

    Args:
        name: short id, shown in test ids and the matrix.
        role: bad, article-fix, fix, partial-fix or control.
        config: the knobs the scenario's app reads (JSON-serialisable).
        expect: the observed behaviour, per driver if it differs.
        not_for: drivers for which this variant does not exist, with the reason.
        stack: a different stack than the scenario's (for example through PgBouncer).
        workload: a different workload (only when the condition under test needs it).
        requires: a check of the environment; returns a reason string when the
            variant cannot run here (shown as n/a), or None.
        description: a sentence on what this variant stands for (the HTML report
            shows it on the variant's name).
    """

    name: str
    role: Role
    config: Mapping[str, Any]
    expect: Expectation
    not_for: Mapping[str, str] = field(default_factory=dict)
    stack: StackSpec | None = None
    workload: Workload | None = None
    requires: Callable[[RunEnv], str | None] | None = None
    description: str = ""


@dataclass(frozen=True)
class Scenario:
    """One failure family: a stack, a workload and its variants.

    Args:
        id: kebab-case id, as in the catalogue.
        app: import path of the Celery app module the worker runs.
        workload: the calls every variant receives.
        signatures: the failures this scenario looks for, in matching order.
        claim: the claim tested (the article's, or maintainers'); None for none.
        variants: configurations to run.
        stack: the services and their settings.
        drivers: the drivers to run every variant with.
        setup_sql: statements run on each variant's fresh database before the worker starts.
        inspect_sql: named queries run on that database after the calls, before the
            worker stops; their rows are kept in the result (``db``).
    """

    id: str
    app: str
    workload: Workload
    signatures: tuple[Signature, ...]
    claim: Claim | None  # None: no claim is tested (the audit's hazards)
    variants: tuple[Variant, ...]
    stack: StackSpec = field(default_factory=StackSpec)
    drivers: tuple[str, ...] = DRIVERS
    setup_sql: tuple[str, ...] = ()
    inspect_sql: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario {self.id}: variant names repeat: {names}")
        for name in ((self.claim.bad, self.claim.fixed) if self.claim else ()):
            if name not in names:
                raise ValueError(f"scenario {self.id}: claim names unknown variant {name!r}")

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)
