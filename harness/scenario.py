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

An expectation that moves with a version is a :class:`Rule`, and a variant that
cannot run on some versions has a :class:`Requirement`; both are data whose
conditions read as text, so ``harness rules`` can list every branch with the
recorded runs that observed it::

    expect=before_package("asyncpg", "0.31", reproduces("prepared-statement-exists"),
                          clean(), why="asyncpg < 0.31 names its statements")
    expect=when(PYTHON >= "3.14", reproduces("no-current-event-loop"), clean(), why=...)
    requires=needs(package("celery") >= "5.7", "task_retry_on_worker_lost needs Celery >= 5.7")
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The conditions' vocabulary is re-exported: a scenario module imports from here alone.
from harness.conditions import (  # noqa: F401
    LIBPQ,
    PGBOUNCER,
    PYTHON,
    Compare,
    Condition,
    Installed,
    RunEnv,
    installed,
    older_than,
    package,
    parse_version,
)
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
class Expected:
    """An expectation: an outcome word and, for REPRODUCED, the signatures allowed."""

    outcome: Outcome
    signatures: tuple[str, ...] = ()
    why: str = ""

    def describe(self) -> str:
        if self.outcome is Outcome.REPRODUCED:
            return f"REPRODUCED ({' or '.join(self.signatures)})"
        return self.outcome.value


@dataclass(frozen=True)
class Branch:
    """One way a version rule can go.

    Args:
        when: where this branch applies; None for a rule's last branch (every
            environment the branches before it left).
        expect: what is expected there: an outcome, or a rule of its own.
        why: the reason, given with the expectation; None passes on ``expect``'s own.
        source: the run or upstream change that showed it.
    """

    when: Condition | None
    expect: Expected | Rule
    why: str | None = None
    source: str = ""


class Rule:
    """An expectation that depends on versions, as data: the first branch whose
    condition holds decides, the last branch (no condition) takes the rest.

    Calling the rule with a :class:`RunEnv` gives the expectation there. ``seen``
    collects the indexes of the branches it chose, so a test can prove that every
    branch was checked; ``harness rules`` lists the branches with the runs that
    observed them.
    """

    def __init__(self, branches: Sequence[Branch], why: str, source: str = "") -> None:
        if len(branches) < 2 or branches[-1].when is not None \
                or any(b.when is None for b in branches[:-1]):
            raise ValueError("a rule needs two or more branches, each but the last with a "
                             "condition (package(...) < \"1.0\", PYTHON >= \"3.14\", ...)")
        for branch in branches:
            if not isinstance(branch.expect, (Expected, Rule)):
                raise TypeError(f"a branch expects an Expected or a Rule, not {branch.expect!r}")
        self.branches = tuple(branches)
        self.why = why
        self.source = source
        self.seen: set[int] = set()
        self.__doc__ = why

    def choose(self, env: RunEnv) -> int:
        """The index of the branch that applies in ``env`` (not noted in ``seen``)."""
        for index, branch in enumerate(self.branches[:-1]):
            if branch.when.holds(env):  # type: ignore[union-attr]
                return index
        return len(self.branches) - 1

    def __call__(self, env: RunEnv) -> Expected:
        index = self.choose(env)
        self.seen.add(index)
        branch = self.branches[index]
        found = branch.expect if isinstance(branch.expect, Expected) else branch.expect(env)
        return Expected(found.outcome, found.signatures,
                        found.why if branch.why is None else branch.why)

    def conditions_of(self, index: int) -> tuple[Condition, ...]:
        """Everything that holds where branch ``index`` is chosen: the opposites of the
        conditions before it, then its own."""
        earlier = tuple(b.when.negate() for b in self.branches[:index])  # type: ignore[union-attr]
        own = self.branches[index].when
        return earlier + ((own,) if own is not None else ())

    @property
    def children(self) -> list[Rule]:
        """The rules nested in this rule's branches."""
        return [b.expect for b in self.branches if isinstance(b.expect, Rule)]

    def __repr__(self) -> str:
        return f"Rule({[str(b.when) for b in self.branches]!r}, why={self.why!r})"


Expectation = Expected | Rule | Mapping[str, Expected | Rule]


@dataclass(frozen=True)
class Requirement:
    """A ``Variant.requires`` check as data: the variant runs where ``condition``
    holds and is n/a elsewhere (with ``why`` and what the environment has).

    Args:
        condition: where the variant can run.
        why: what it needs, as the n/a reason begins ("... needs PgBouncer >= 1.21").
        drivers: the drivers the check is for; empty: every driver.
        source: the run or upstream change that showed it.
    """

    condition: Condition
    why: str
    drivers: tuple[str, ...] = ()
    source: str = ""

    def applies_to(self, driver: str) -> bool:
        return not self.drivers or driver in self.drivers

    def __call__(self, env: RunEnv) -> str | None:
        if not self.applies_to(env.driver) or self.condition.holds(env):
            return None
        found = self.condition.found(env)
        return f"{self.why}; {found}" if found else self.why


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


def when(condition: Condition, then: Expected, otherwise: Expected, why: str,
         source: str = "") -> Rule:
    """``then`` where ``condition`` holds (``PYTHON >= "3.14"``), else ``otherwise``;
    the reason goes with either."""
    if not isinstance(condition, (Compare, Installed)):
        raise TypeError(f"when() takes a condition such as PYTHON >= \"3.14\" or "
                        f"package(\"asyncpg\") < \"0.31\", not {condition!r}")
    return Rule((Branch(condition, then, why), Branch(None, otherwise, why)), why, source)


def before_package(package_name: str, version: str, older: Expected | Rule,
                   otherwise: Expected | Rule, why: str, source: str = "") -> Rule:
    """``older`` where the installed ``package_name`` is older than ``version``, else
    ``otherwise``.

    Either side may itself be a rule (a PgBouncer rule, say); ``why`` names the change
    in the package that moves the outcome, so a matrix cell that differs by version
    carries its reason instead of reading as a regression.
    """
    return Rule((Branch(package(package_name) < version, older, why),
                 Branch(None, otherwise)), why, source)


def until_pgbouncer(version: str, failing: Expected, why: str, source: str = "") -> Rule:
    """``failing`` on PgBouncer older than ``version``, clean from ``version`` on."""
    return when(PGBOUNCER < version, failing, clean(), why=why, source=source)


def needs(condition: Condition, why: str, *, drivers: tuple[str, ...] = (),
          source: str = "") -> Requirement:
    """A ``Variant.requires`` check: n/a where ``condition`` does not hold."""
    return Requirement(condition, why, drivers, source)


def needs_pgbouncer(minimum: str, feature: str) -> Requirement:
    """A ``Variant.requires`` check: n/a unless PgBouncer >= ``minimum`` is installed."""
    return needs(PGBOUNCER >= minimum, f"{feature} needs PgBouncer >= {minimum}")


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
        result_backend_direct: the worker's result backend does not go through the
            proxy a ``broker-*`` fault works on, so the fault reaches only the broker's
            connections: a result backend elsewhere (another Redis, a database) that
            stays reachable. By default broker and result backend share one Redis, and
            the fault reaches both. Needs a ``broker-*`` fault.
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
    result_backend_direct: bool = False

    def __post_init__(self) -> None:
        if self.calls_after_faults and not self.faults:
            raise ValueError("Workload(calls_after_faults=...) needs faults: the calls are "
                             "sent once the faults have fired")
        if self.result_backend_direct and not any(f.needs_broker_proxy for f in self.faults):
            raise ValueError("Workload(result_backend_direct=True) needs a broker-* fault: "
                             "without one nothing goes through a proxy, so the result "
                             "backend is direct already")


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
            variant cannot run here (shown as n/a), or None. In a scenario module,
            a :class:`Requirement` (``needs(...)``), so its condition is data.
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
