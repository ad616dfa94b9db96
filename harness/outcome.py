"""What one variant run observed, and the single word that sums it up.

Responsibility: classify per-call results into counts and an :class:`Outcome`.
The outcome words are a closed set; a harness failure can never read as a pass,
and a fix counts as CLEAN only when every call really ran and answered right.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.signatures import BODY_NEVER_RAN_RECORD, ErrorRecord, Signature, first_match


class Outcome(str, enum.Enum):
    REPRODUCED = "REPRODUCED"  # at least one call failed with one of the scenario's signatures
    CLEAN = "CLEAN"  # every call returned its expected value; nothing hung
    OTHER_FAILURE = "OTHER_FAILURE"  # failed, hung or wrong, but no listed signature
    HARNESS_ERROR = "HARNESS_ERROR"  # the harness could not run it: never a pass
    NOT_APPLICABLE = "N/A"  # the variant does not exist for this driver or environment

    def __str__(self) -> str:
        return self.value


class CallStatus(str, enum.Enum):
    OK = "ok"
    ERROR = "error"
    HUNG = "hung"
    WRONG = "wrong"
    NOT_RUN = "not-run"  # Celery reported it done, but the body left no trace


def never_ran(token: str, expected: Any, task_id: str) -> CallResult:
    """A call Celery reported done whose body never left its side effect."""
    return CallResult(token, expected, CallStatus.NOT_RUN, error=BODY_NEVER_RAN_RECORD,
                      task_id=task_id)


@dataclass(frozen=True)
class CallResult:
    """One task call: what it was asked to return and what happened."""

    token: str
    expected: Any
    status: CallStatus
    value: Any = None
    error: ErrorRecord | None = None
    task_id: str = ""


@dataclass
class TaskCounts:
    total: int = 0
    ok: int = 0
    hung: int = 0
    wrong: int = 0
    other: int = 0
    not_run: int = 0
    by_signature: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "ok": self.ok, "hung": self.hung, "wrong": self.wrong,
                "other": self.other, "not_run": self.not_run, "by_signature": dict(self.by_signature)}


@dataclass(frozen=True)
class Classification:
    outcome: Outcome
    counts: TaskCounts
    first_error: str | None  # the first failed call's full chain, for reports
    other_errors: tuple[str, ...]  # distinct headlines of errors no signature knew


def classify(calls: Sequence[CallResult], signatures: Sequence[Signature]) -> Classification:
    """Count the calls and pick the outcome word.

    An empty workload is a harness error: a fix "passes" only when it really ran.
    """
    counts = TaskCounts(total=len(calls))
    by_signature: Counter[str] = Counter()
    other: list[str] = []
    first_error: str | None = None
    for call in calls:
        if call.status is CallStatus.OK:
            counts.ok += 1
        elif call.status is CallStatus.HUNG:
            counts.hung += 1
        elif call.status is CallStatus.WRONG:
            counts.wrong += 1
            first_error = first_error or f"wrong result: expected {call.expected!r}, got {call.value!r}"
        else:
            if call.status is CallStatus.NOT_RUN:
                counts.not_run += 1
            record = call.error or ErrorRecord(chain=())
            first_error = first_error or record.describe()
            matched = first_match(record, signatures)
            if matched is None:
                counts.other += 1
                if record.headline not in other:
                    other.append(record.headline)
            else:
                by_signature[matched.name] += 1
    counts.by_signature = dict(sorted(by_signature.items()))
    if counts.total == 0:
        outcome = Outcome.HARNESS_ERROR
        first_error = "the workload sent no calls, so nothing was observed"
    elif by_signature:
        outcome = Outcome.REPRODUCED
    elif counts.ok == counts.total:
        outcome = Outcome.CLEAN
    else:
        outcome = Outcome.OTHER_FAILURE
    return Classification(outcome, counts, first_error, tuple(other))
