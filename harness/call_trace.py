"""What became of calls that hung, told by the task's own record of its runs.

Responsibility: pure logic. A fault that loses what the broker held (a Redis restart
without persistence) loses queued calls, stored results and the harness's counters
alike, so Redis cannot say whether a call ran. A scenario whose task records each
run of its body in the database (``Workload.runs_sql``) lets the harness tell:

* a call that hung and never ran, sent before the faults: its message was lost
  (``call-lost``);
* the same for a call sent after the faults, with the broker answering again: the
  worker did not consume it (``not-consumed``);
* how long after those later calls were sent the first of them started
  (``resume-ms``): how soon the worker consumed again.

* a call that hung after its body started in a pool process that is gone (killed,
  or terminated by Celery), and that never ran again: ``call-abandoned``.

A call that hung while the process running it is still alive keeps its HUNG status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from harness.outcome import CallResult, CallStatus
from harness.signatures import CALL_ABANDONED_RECORD, CALL_LOST_RECORD, NOT_CONSUMED_RECORD
from harness.task_support import call_index


@dataclass(frozen=True)
class Traced:
    calls: list[CallResult]
    runs_per_call: dict[str, int]  # token -> recorded runs of its body
    resume_ms: int | None  # None: no later calls, or none of them ran


def trace(calls: Sequence[CallResult], runs: Iterable[Sequence[object]], *,
          sent_before: int, later_sent_at: float | None,
          alive: Callable[[int], bool]) -> Traced:
    """Re-read hung calls against ``runs``, the rows ``(token, started_epoch_s,
    worker_pid)`` (the pid of the pool process that ran the body).

    ``sent_before`` is how many calls went before the faults (indexes below it);
    ``later_sent_at`` the wall time the later calls went (None: there were none);
    ``alive(pid)`` whether that process still runs.
    """
    runs_per_call: dict[str, int] = {}
    pids: dict[str, set[int]] = {}
    later_starts: list[float] = []
    for token, started, pid in runs:
        token = str(token)
        runs_per_call[token] = runs_per_call.get(token, 0) + 1
        pids.setdefault(token, set()).add(int(pid))  # type: ignore[call-overload]
        if call_index(token) >= sent_before and started is not None:
            later_starts.append(float(started))  # type: ignore[arg-type]
    traced = []
    for call in calls:
        if call.status is CallStatus.HUNG:
            if call.token not in runs_per_call:
                lost = call_index(call.token) < sent_before
                call = replace(call, status=CallStatus.ERROR,
                               error=CALL_LOST_RECORD if lost else NOT_CONSUMED_RECORD)
            elif not any(alive(pid) for pid in pids[call.token]):
                call = replace(call, status=CallStatus.ERROR, error=CALL_ABANDONED_RECORD)
        traced.append(call)
    resume_ms = None
    if later_sent_at is not None and later_starts:
        resume_ms = max(0, round((min(later_starts) - later_sent_at) * 1000))
    return Traced(traced, runs_per_call, resume_ms)
