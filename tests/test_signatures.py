"""Signature matching: class (through the chain) first, codes next, message last."""

import importlib
import itertools
import pkgutil
from collections.abc import Mapping

import pytest

import scenarios
from harness import signatures as sig
from harness.conditions import Compare, Installed
from harness.outcome import Outcome
from harness.scenario import (
    Expected,
    Requirement,
    Rule,
    RunEnv,
    Scenario,
    before_package,
    reproduces,
    resolve,
)
from harness.signatures import ErrorRecord, ExceptionInfo, Signature, public_name
from harness.task_support import exception_chain


def record_of(exc: BaseException) -> ErrorRecord:
    return ErrorRecord.from_dict({"chain": exception_chain(exc)})


def test_public_name_drops_private_module_parts():
    assert public_name("asyncpg.exceptions._base", "InterfaceError") == \
        "asyncpg.exceptions.InterfaceError"
    assert public_name("builtins", "RuntimeError") == "RuntimeError"


def test_matches_a_subclass_by_its_base_class():
    class MyLoopError(RuntimeError):
        pass

    assert sig.LOOP_CLOSED.matches(record_of(MyLoopError("Event loop is closed")))


def test_message_pattern_is_required_when_given():
    assert not sig.LOOP_CLOSED.matches(record_of(RuntimeError("something else entirely")))


def test_class_must_match_even_when_the_message_does():
    assert not sig.LOOP_CLOSED.matches(record_of(ValueError("Event loop is closed")))


def test_matches_the_wrapped_driver_exception_through_orig():
    import asyncpg
    import sqlalchemy.exc

    driver = asyncpg.exceptions.InterfaceError(
        "cannot perform operation: another operation is in progress")
    wrapped = sqlalchemy.exc.InterfaceError("select 1", {}, driver)
    record = record_of(wrapped)
    assert record.chain[0].type == "sqlalchemy.exc.InterfaceError"
    assert any(e.type == "asyncpg.exceptions.InterfaceError" for e in record.chain)
    assert sig.ASYNCPG_ANOTHER_OPERATION.matches(record)


def test_matches_through_cause_chain():
    try:
        try:
            raise RuntimeError("Event loop is closed")
        except RuntimeError as inner:
            raise KeyError("outer") from inner
    except KeyError as outer:
        assert sig.LOOP_CLOSED.matches(record_of(outer))


def test_sqlstate_is_a_stable_key():
    class FakePgError(Exception):
        sqlstate = "26000"

    assert sig.PREPARED_STATEMENT_MISSING.matches(record_of(FakePgError("any wording")))
    FakePgError.sqlstate = "42P05"
    assert not sig.PREPARED_STATEMENT_MISSING.matches(record_of(FakePgError("any wording")))


def test_sqlalchemy_code_is_a_stable_key():
    import sqlalchemy.exc

    # The pool raises it with this code (sqlalchemy/pool/impl.py); the wording may change.
    exc = sqlalchemy.exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached",
                                      code="3o7r")
    assert sig.POOL_TIMEOUT.matches(record_of(exc))
    other = Signature("x", "sqlalchemy.exc.TimeoutError", sa_code="zzzz")
    assert not other.matches(record_of(exc))


def test_first_match_follows_the_scenarios_order():
    record = record_of(RuntimeError("Event loop is closed"))
    broad = Signature("any-runtime-error", "RuntimeError")
    assert sig.first_match(record, [sig.LOOP_CLOSED, broad]) is sig.LOOP_CLOSED
    assert sig.first_match(record, [broad, sig.LOOP_CLOSED]) is broad
    assert sig.first_match(record, [sig.NO_RUNNING_LOOP]) is None


def test_error_record_round_trips_through_a_dict():
    record = record_of(RuntimeError("Event loop is closed"))
    again = ErrorRecord.from_dict(record.to_dict())
    assert again.chain == record.chain


def test_exception_info_without_bases_falls_back_to_its_type():
    info = ExceptionInfo.from_dict({"type": "RuntimeError", "message": "Event loop is closed"})
    assert sig.LOOP_CLOSED.matches(ErrorRecord(chain=(info,)))


def test_catalogue_holds_every_signature_the_module_defines_under_a_unique_name():
    """Derived from the module's contents, not from the dict that CATALOGUE builds: a
    name used twice collapses there silently, and a signature left out of the list
    would never be looked up by name."""
    defined = [value for value in vars(sig).values() if isinstance(value, Signature)]
    names = [s.name for s in defined]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(sig.CATALOGUE) == set(names)
    assert all(sig.CATALOGUE[s.name] is s for s in defined)


def test_signature_names_are_unique_across_the_catalogue_and_every_scenario():
    """A scenario may declare its own signatures (an error its own app raises); a name
    then means one signature everywhere, and a scenario uses the catalogue's own object
    rather than a look-alike of the same name."""
    owners: dict[str, list[tuple[str, Signature]]] = {}
    for s in sig.CATALOGUE.values():
        owners.setdefault(s.name, []).append(("harness.signatures", s))
    for module in MODULES:
        declared = [v for v in vars(module).values() if isinstance(v, Signature)]
        used = list(module.SCENARIO.signatures)
        for s in {id(x): x for x in declared + used}.values():
            if sig.CATALOGUE.get(s.name) is not s:
                owners.setdefault(s.name, []).append((module.__name__, s))
    clashes = {name: [where for where, _ in found] for name, found in owners.items()
               if len({id(s) for _, s in found}) > 1}
    assert clashes == {}, f"signature names used for different signatures: {clashes}"


def _scenario_modules():
    for info in pkgutil.iter_modules(scenarios.__path__):
        if info.name.startswith("test_"):
            yield importlib.import_module(f"scenarios.{info.name}")


MODULES = list(_scenario_modules())
# Interpreter lines the rules may look at: the supported floor to the newest release.
PYTHONS = [(3, 10), (3, 11), (3, 12), (3, 13), (3, 14), (3, 15)]
PGBOUNCERS = [None, "1.18", "1.21", "1.24", "1.26"]
# One version per package when no rule looks at it (the newest the matrix runs).
NEWEST = {"sqlalchemy": "2.1.9", "celery": "5.7.0", "asyncpg": "0.32.0", "psycopg": "3.3.9"}


def _rules(expectation) -> list:
    """Every rule in an expectation, nested ones included."""
    found = []
    todo = list(expectation.values()) if isinstance(expectation, Mapping) else [expectation]
    while todo:
        item = todo.pop()
        if isinstance(item, Rule):
            found.append(item)
            todo.extend(item.children)
    return found


def _conditions(item: Rule | Requirement) -> list:
    if isinstance(item, Requirement):
        return [item.condition]
    return [b.when for b in item.branches if b.when is not None]


def _below(version: str) -> str:
    """A version just older than ``version`` ("0.31" -> "0.30.999")."""
    parts = [int(p) for p in version.split(".")]
    while len(parts) < 3:
        parts.append(0)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] > 0:
            parts[i] -= 1
            return ".".join(map(str, parts[:i + 1] + [999] * (len(parts) - i - 1)))
    raise ValueError(version)


def _probe_envs(driver: str, rules: list, requires: list) -> list[RunEnv]:
    """Environments on both sides of every boundary the rules and checks declare
    (a package a condition asks about is there in one and missing in another)."""
    pythons, pgbouncers = set(PYTHONS), set(PGBOUNCERS)
    libpqs: set[str | None] = {None}  # psycopg missing; a rule on libpq adds its two sides
    packages: dict[str, set[str | None]] = {name: {v} for name, v in NEWEST.items()}
    for item in rules + requires:
        for cond in _conditions(item):
            if isinstance(cond, Installed):
                packages.setdefault(cond.package, set()).update({"1.0", None})
                continue
            assert isinstance(cond, Compare), cond
            kind, version = cond.subject.kind, cond.version
            if kind == "pgbouncer":
                pgbouncers |= {version, _below(version)}
            elif kind == "libpq":
                libpqs |= {version, _below(version)}
            elif kind == "python":
                pythons |= {tuple(int(p) for p in v.split(".")[:2])
                            for v in (version, _below(version))}
            else:
                packages.setdefault(cond.subject.name, set()).update({version, _below(version)})
    names = sorted(packages)
    return [RunEnv(driver=driver, python=py,  # type: ignore[arg-type]
                   packages={n: v for n, v in zip(names, combo) if v is not None},
                   pgbouncer=pgb, installed={}, libpq=libpq)
            for py in sorted(pythons) for pgb in pgbouncers for libpq in sorted(libpqs, key=str)
            for combo in itertools.product(*(sorted(packages[n], key=str) for n in names))]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_branch_of_every_expectation_names_only_listed_signatures(module):
    """Guards the catalogue and every version rule: in every environment on either side
    of each boundary a rule declares (not only the installed versions), an expectation
    names only signatures the scenario looks for, and every branch of every rule was
    taken at least once here, so none is left unchecked."""
    scenario: Scenario = module.SCENARIO
    listed = {s.name for s in scenario.signatures}
    if scenario.claim.signature is not None:
        assert scenario.claim.signature in listed | set(sig.CATALOGUE)
    checked = 0
    for variant in scenario.variants:
        rules = _rules(variant.expect)
        for rule in rules:
            rule.seen.clear()
        requires = [variant.requires] if variant.requires else []
        assert all(isinstance(r, Requirement) for r in requires), (
            f"{variant.name}: requires= is a plain function; use needs(condition, why) so "
            f"its condition is data that 'harness rules' can list")
        applies = set()
        for driver in scenario.drivers:
            if driver in variant.not_for:
                continue
            for env in _probe_envs(driver, rules, requires):
                if variant.requires is not None and variant.requires(env) is not None:
                    applies.add(False)
                    continue  # n/a there: no expectation applies
                applies.add(True)
                expected: Expected = resolve(variant.expect, env)
                assert set(expected.signatures) <= listed, (variant.name, driver, env)
                checked += 1
        for rule in rules:
            assert rule.seen == set(range(len(rule.branches))), (
                f"{variant.name}: a branch of the rule '{rule.why}' was never taken "
                f"by the probe environments (taken: {sorted(rule.seen)})")
        if requires:
            assert applies == {True, False}, (
                f"{variant.name}: the probe environments never fell on both sides of "
                f"requires={requires[0].condition} (ran: {applies})")
    assert checked > 0


def test_probe_environments_fall_on_both_sides_of_a_boundary():
    older = Expected(Outcome.CLEAN)
    rule = before_package("asyncpg", "0.31", older, reproduces("x"), why="test")
    for env in _probe_envs("asyncpg", [rule], []):
        resolve(rule, env)
    assert rule.seen == {0, 1}
    assert _below("0.31") == "0.30.999" and _below("1.24") == "1.23.999"
    assert _below("2.0") == "1.999.999"


def test_soft_time_limit_matches_the_class_celery_really_raises():
    from celery.exceptions import SoftTimeLimitExceeded

    assert sig.SOFT_TIME_LIMIT.matches(record_of(SoftTimeLimitExceeded("soft limit")))


def test_a_prerelease_is_older_than_its_release_and_newer_than_the_last_one():
    from harness.scenario import older_than

    assert older_than("0.31.0rc1", "0.31")
    assert not older_than("0.31.0rc1", "0.30")
    assert older_than("0.30.0", "0.31") and not older_than("0.31.0", "0.31")
    assert older_than(None, "1.24") and older_than("unknown", "1.24")
