"""The outcome word: a closed set, and a harness failure never reads as a pass."""

from harness import signatures as sig
from harness.outcome import CallResult, CallStatus, Outcome, classify, never_ran
from harness.signatures import ErrorRecord, ExceptionInfo


def err(type_: str, message: str) -> ErrorRecord:
    return ErrorRecord(chain=(ExceptionInfo(type_, (type_, "Exception"), message),))


def call(status: CallStatus, error: ErrorRecord | None = None, value=None) -> CallResult:
    return CallResult("t", "t", status, value=value, error=error)


SIGS = (sig.LOOP_CLOSED, sig.ASYNCPG_ANOTHER_OPERATION, sig.BODY_NEVER_RAN)


def test_all_ok_is_clean():
    result = classify([call(CallStatus.OK)] * 3, SIGS)
    assert result.outcome is Outcome.CLEAN
    assert result.counts.to_dict()["ok"] == 3


def test_one_signature_makes_it_reproduced_and_counts_per_signature():
    calls = [call(CallStatus.OK), call(CallStatus.ERROR, err("RuntimeError", "Event loop is closed")),
             call(CallStatus.ERROR, err("ValueError", "boom"))]
    result = classify(calls, SIGS)
    assert result.outcome is Outcome.REPRODUCED
    assert result.counts.by_signature == {"event-loop-closed": 1}
    assert result.counts.other == 1
    assert result.other_errors == ("ValueError: boom",)
    assert result.first_error.startswith("RuntimeError: Event loop is closed")


def test_unknown_errors_are_other_failure():
    result = classify([call(CallStatus.ERROR, err("ValueError", "boom"))], SIGS)
    assert result.outcome is Outcome.OTHER_FAILURE


def test_hung_call_is_never_clean():
    result = classify([call(CallStatus.OK), call(CallStatus.HUNG)], SIGS)
    assert result.outcome is Outcome.OTHER_FAILURE
    assert result.counts.hung == 1


def test_wrong_result_is_never_clean():
    result = classify([call(CallStatus.WRONG, value="someone-else")], SIGS)
    assert result.outcome is Outcome.OTHER_FAILURE
    assert result.counts.wrong == 1
    assert "someone-else" in result.first_error


def test_empty_workload_is_a_harness_error_not_a_pass():
    assert classify([], SIGS).outcome is Outcome.HARNESS_ERROR


def test_body_that_never_ran_is_its_own_signature():
    result = classify([never_ran("t", "t", "id")], SIGS)
    assert result.outcome is Outcome.REPRODUCED
    assert result.counts.not_run == 1
    assert result.counts.by_signature == {"body-never-ran": 1}


def test_a_harness_error_never_passes_even_where_it_was_expected():
    from harness.runner import VariantRun
    from harness.scenario import Claim, Expected, Role, Scenario, Variant, Workload

    variant = Variant("v", Role.BAD, {}, expect=Expected(Outcome.HARNESS_ERROR))
    scenario = Scenario("s", "app", Workload(task="t"), (), Claim("-", "-", None, "v", "v"),
                        (variant,))
    run = VariantRun(scenario, variant, "asyncpg", Expected(Outcome.HARNESS_ERROR),
                     Outcome.HARNESS_ERROR, reason="the worker did not start")
    assert run.passed is False


def test_every_outcome_word_has_its_colour_in_the_html_report():
    from harness.matrix import render_html

    assert set(render_html.OUTCOMES) == {o.value for o in Outcome}
    for word in render_html.OUTCOMES:
        css_class = "o-NA" if word == "N/A" else f"o-{word}"
        assert f".{css_class}{{" in render_html.CSS, word
