"""The worker lifecycle on a real prefork worker: start, calls, hang, import error, stop."""

from __future__ import annotations

import time

import pytest

from harness.errors import WorkerStartError
from harness.outcome import CallStatus
from tests.conftest import group_alive

TASK = "tests.apps.lifecycle.{}"


def test_calls_echo_their_tokens(make_worker):
    with make_worker() as worker:
        calls = worker.run(TASK.format("echo"), calls=4, timeout_s=30, check_ran=True)
    assert [c.status for c in calls] == [CallStatus.OK] * 4
    assert len({c.token for c in calls}) == 4
    assert all(c.value == c.token for c in calls)


def test_a_hung_call_is_counted_within_the_bound_and_the_run_goes_on(make_worker):
    worker = make_worker()
    with worker:
        began = time.monotonic()
        calls = worker.run(TASK.format("hang_first"), calls=3, timeout_s=4)
        waited = time.monotonic() - began
        pgid = worker._proc.pid
        worker.stop(grace_s=1)
    assert waited < 10
    assert [c.status for c in calls] == [CallStatus.HUNG, CallStatus.OK, CallStatus.OK]
    assert not group_alive(pgid), "the hung pool process must be killed with its group"


def test_a_wrong_answer_is_caught(make_worker):
    with make_worker() as worker:
        calls = worker.run(TASK.format("answer_wrong"), calls=2, timeout_s=30)
    assert {c.status for c in calls} == {CallStatus.WRONG}
    assert calls[0].value == f"not-{calls[0].token}"


def test_the_whole_exception_chain_reaches_the_harness(make_worker):
    with make_worker() as worker:
        [call] = worker.run(TASK.format("raise_wrapped"), calls=1, timeout_s=30)
    assert call.status is CallStatus.ERROR
    types = [e.type for e in call.error.chain]
    assert types[0] == "sqlalchemy.exc.InterfaceError"
    assert "asyncpg.exceptions.InterfaceError" in types
    assert "another operation is in progress" in call.error.describe()


def test_a_body_that_left_no_mark_is_not_run(make_worker):
    with make_worker() as worker:
        calls = worker.run(TASK.format("skip_body"), calls=2, timeout_s=30, check_ran=True)
    assert {c.status for c in calls} == {CallStatus.NOT_RUN}


def test_an_app_that_fails_at_import_gives_a_clear_error_with_the_log_tail(make_worker):
    worker = make_worker({"fail_at_import": True}, start_timeout_s=60)
    began = time.monotonic()
    with pytest.raises(WorkerStartError) as info:
        worker.start()
    assert time.monotonic() - began < 60
    message = str(info.value)
    assert "exited with code" in message
    assert "this app fails at import on purpose" in message  # from the log tail


def test_a_misspelled_knob_fails_the_worker_at_import_naming_the_known_knobs(make_worker):
    worker = make_worker({"fail_at_imprt": True}, start_timeout_s=60)
    with pytest.raises(WorkerStartError) as info:
        worker.start()
    message = str(info.value)
    assert "sets 'fail_at_imprt', which this app does not read" in message
    assert "fail_at_import (raise while the worker imports this module)" in message
    assert "sleep_at_import_s" in message


def test_the_knobs_in_force_reach_the_harness_defaults_included(make_worker):
    worker = make_worker({"sleep_at_import_s": 0.1})
    with worker:
        assert worker.knobs() == {"fail_at_import": False, "sleep_at_import_s": 0.1}


def test_a_worker_that_never_gets_ready_times_out_with_the_log_tail(make_worker):
    worker = make_worker({"sleep_at_import_s": 60}, start_timeout_s=3)
    began = time.monotonic()
    with pytest.raises(WorkerStartError, match="did not log the line 'ready.' within 3 s"):
        worker.start()
    assert time.monotonic() - began < 15
    pgid = worker._proc.pid
    worker.stop(grace_s=1)
    assert not group_alive(pgid)


def test_stop_ends_the_main_process_and_every_pool_process(make_worker):
    worker = make_worker(concurrency=3)
    worker.start()
    pgid = worker._proc.pid
    assert group_alive(pgid)
    worker.stop(grace_s=10)
    assert not group_alive(pgid)
    assert worker.log_path.exists(), "the worker log is kept after stop"
