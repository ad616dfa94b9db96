"""Signature matching: class (through the chain) first, codes next, message last."""

import importlib
import pkgutil

import pytest

import scenarios
from harness import signatures as sig
from harness.scenario import Expected, Scenario, resolve
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


def test_catalogue_names_are_unique_and_keys_match():
    assert all(name == s.name for name, s in sig.CATALOGUE.items())


def _scenario_modules():
    for info in pkgutil.iter_modules(scenarios.__path__):
        if info.name.startswith("test_"):
            yield importlib.import_module(f"scenarios.{info.name}")


@pytest.mark.parametrize("module", list(_scenario_modules()), ids=lambda m: m.__name__)
def test_every_signature_a_scenario_names_is_catalogued_and_listed(module):
    """Guards the catalogue: an expectation may only name signatures the scenario looks for."""
    from harness.runner import run_env

    scenario: Scenario = module.SCENARIO
    listed = {s.name for s in scenario.signatures}
    assert listed <= set(sig.CATALOGUE), "scenario lists a signature missing from CATALOGUE"
    if scenario.claim.signature is not None:
        assert scenario.claim.signature in sig.CATALOGUE
    for variant in scenario.variants:
        for driver in scenario.drivers:
            if driver in variant.not_for:
                continue
            expected: Expected = resolve(variant.expect, run_env(driver))
            assert set(expected.signatures) <= listed, (variant.name, driver)


def test_soft_time_limit_matches_the_class_celery_really_raises():
    from celery.exceptions import SoftTimeLimitExceeded

    assert sig.SOFT_TIME_LIMIT.matches(record_of(SoftTimeLimitExceeded("soft limit")))
