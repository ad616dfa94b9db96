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


def test_outcome_words_are_a_closed_set():
    assert {o.value for o in Outcome} == {"REPRODUCED", "CLEAN", "OTHER_FAILURE",
                                          "HARNESS_ERROR", "N/A"}
