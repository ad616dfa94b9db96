"""What the harness makes of hung calls from the task's own record of its runs."""

from __future__ import annotations

from harness.call_trace import trace
from harness.outcome import CallResult, CallStatus
from harness.signatures import CALL_ABANDONED, CALL_LOST, NOT_CONSUMED, first_match


def call(index: int, status: CallStatus) -> CallResult:
    token = f"abcd1234-{index:03d}"
    return CallResult(token, token, status)


def test_hung_calls_that_never_ran_are_lost_before_the_fault_and_unconsumed_after():
    calls = [call(0, CallStatus.OK), call(1, CallStatus.HUNG), call(2, CallStatus.HUNG),
             call(3, CallStatus.HUNG), call(4, CallStatus.OK)]
    runs = [("abcd1234-000", 100.0, 7), ("abcd1234-002", 101.0, 7), ("abcd1234-004", 105.25, 7)]
    traced = trace(calls, runs, sent_before=3, later_sent_at=104.0, alive=lambda pid: True)
    statuses = [c.status for c in traced.calls]
    assert statuses == [CallStatus.OK, CallStatus.ERROR, CallStatus.HUNG, CallStatus.ERROR,
                        CallStatus.OK]
    # Call 2 ran, so only its result went missing: it stays hung.
    assert first_match(traced.calls[1].error, [CALL_LOST, NOT_CONSUMED]) is CALL_LOST
    assert first_match(traced.calls[3].error, [CALL_LOST, NOT_CONSUMED]) is NOT_CONSUMED
    assert traced.resume_ms == 1250
    assert traced.runs_per_call == {"abcd1234-000": 1, "abcd1234-002": 1, "abcd1234-004": 1}


def test_no_resume_time_when_no_later_call_ran():
    traced = trace([call(0, CallStatus.OK), call(1, CallStatus.HUNG)],
                   [("abcd1234-000", 100.0, 7)], sent_before=1, later_sent_at=104.0,
                   alive=lambda pid: True)
    assert traced.resume_ms is None
    assert traced.calls[1].status is CallStatus.ERROR


def test_a_body_that_ran_twice_is_counted_twice():
    traced = trace([call(0, CallStatus.OK)],
                   [("abcd1234-000", 1.0, 7), ("abcd1234-000", 2.0, 8)],
                   sent_before=1, later_sent_at=None, alive=lambda pid: True)
    assert traced.runs_per_call == {"abcd1234-000": 2}
    assert traced.resume_ms is None


def test_a_hung_call_whose_process_is_gone_was_abandoned_one_still_running_is_hung():
    calls = [call(0, CallStatus.HUNG), call(1, CallStatus.HUNG)]
    runs = [("abcd1234-000", 1.0, 41), ("abcd1234-001", 1.0, 42)]
    traced = trace(calls, runs, sent_before=2, later_sent_at=None,
                   alive=lambda pid: pid == 42)
    assert first_match(traced.calls[0].error, [CALL_ABANDONED]) is CALL_ABANDONED
    assert traced.calls[1].status is CallStatus.HUNG
