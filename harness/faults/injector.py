"""Fire a variant's faults on their cues and heal every one of them, whatever happens.

Responsibility: the runner's side of the fault layer for one variant run. It
answers ``after_calls`` cues between batches of calls and ``at_point`` cues from
the :class:`~harness.faults.cues.CueListener`, fires each fault once, heals it after
``heal_after_s`` or at the end, and keeps a record of what fired and when. A fault
that never fired, or failed to fire or heal, is reported by :meth:`problems`; the
runner then makes the variant ``HARNESS_ERROR``, never ``CLEAN``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from harness.faults.actions import FIRE_AND_HEAL, Target
from harness.faults.cues import CueListener
from harness.faults.plan import Fault

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class FaultRecord:
    """What one fault did in a run (seconds from the start of the calls)."""

    fault: Fault
    fired_at_s: float | None = None
    fired: str = ""  # what firing saw happen
    healed_at_s: float | None = None
    healed: str = ""
    error: str = ""
    target: Target | None = None  # what it fired at; the heal acts on the same

    def to_result(self) -> dict[str, Any]:
        return {"action": self.fault.action, "cue": self.fault.cue.describe(),
                "fired_at_s": _round(self.fired_at_s), "fired": self.fired,
                "healed_at_s": _round(self.healed_at_s), "healed": self.healed,
                "error": self.error}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class FaultInjector:
    """The faults of one variant run. Use as a context manager around the calls."""

    def __init__(self, faults: Sequence[Fault], target: Target, *, redis_client: Any,
                 queue: str) -> None:
        self.records = [FaultRecord(f) for f in faults]
        self._target = target
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._began = time.monotonic()
        passing = self.passing_points(faults)
        self._listener = (CueListener(redis_client, queue, self._on_point,
                                      holds=lambda point: point not in passing)
                          if any(f.cue.point for f in faults) else None)

    # --- what the runner asks ---------------------------------------------------------
    @staticmethod
    def points(faults: Sequence[Fault]) -> tuple[str, ...]:
        """The points tasks must wait at (passed to the worker's settings)."""
        return tuple(dict.fromkeys(f.cue.point for f in faults if f.cue.point))

    @staticmethod
    def passing_points(faults: Sequence[Fault]) -> tuple[str, ...]:
        """Points whose every fault lets the task go on (``at_point(..., hold=False)``):
        the task announces them and passes; nobody answers."""
        points = FaultInjector.points(faults)
        return tuple(p for p in points
                     if all(not f.cue.hold for f in faults if f.cue.point == p))

    def after_calls(self) -> dict[int, Callable[[], None]]:
        """For the worker's run: ``k`` -> fire what waits for k finished calls."""
        hooks: dict[int, Callable[[], None]] = {}
        for record in self.records:
            k = record.fault.cue.after_calls
            if k is not None:
                hooks[k] = lambda k=k: self._fire_where(lambda r: r.fault.cue.after_calls == k)
        return hooks

    def settled(self) -> bool:
        """Every fault has fired, and every fault that heals on a timer has healed."""
        with self._lock:
            return all(r.fired_at_s is not None and (
                r.fault.heal_after_s is None or r.healed_at_s is not None) or r.error
                for r in self.records)

    def problems(self) -> list[str]:
        """Why the run cannot be trusted: faults that did not fire, or failed."""
        found = [f"fault {r.fault.describe()} failed: {r.error}" for r in self.records
                 if r.error]
        found += [f"fault {r.fault.describe()} never fired (its cue never came)"
                  for r in self.records if r.fired_at_s is None and not r.error]
        if self._listener is not None:
            found += self._listener.errors
        return found

    def to_result(self) -> list[dict[str, Any]]:
        return [r.to_result() for r in self.records]

    # --- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> Self:
        self._began = time.monotonic()
        if self._listener is not None:
            self._listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.heal_all()

    def heal_all(self) -> None:
        """Heal every fault that fired and is not healed yet; stop listening."""
        if self._listener is not None:
            self._listener.stop()
        for timer in self._timers:
            timer.cancel()
        for record in self.records:
            self._heal(record)

    # --- firing and healing -----------------------------------------------------------
    def _on_point(self, point: str, pid: int) -> None:
        self._fire_where(lambda r: r.fault.cue.point == point, pid=pid)

    def _fire_where(self, wanted: Callable[[FaultRecord], bool], pid: int | None = None) -> None:
        for record in self.records:
            with self._lock:
                if record.fired_at_s is not None or record.error or not wanted(record):
                    continue
                fire, _ = FIRE_AND_HEAL[record.fault.action]
                target = replace(self._target, pid=pid, latency_ms=record.fault.latency_ms,
                                 down_s=record.fault.down_s)
                record.target = target
                try:
                    record.fired = fire(target)
                    record.fired_at_s = self._now()
                except Exception as exc:  # noqa: BLE001 - any failure voids the variant
                    record.error = f"{type(exc).__name__}: {exc}"
                    continue
            if record.fault.heal_after_s is not None:
                timer = threading.Timer(record.fault.heal_after_s, self._heal, (record,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()

    def _heal(self, record: FaultRecord) -> None:
        with self._lock:
            if record.target is None or record.fired_at_s is None \
                    or record.healed_at_s is not None:
                return
            _, heal = FIRE_AND_HEAL[record.fault.action]
            try:
                record.healed = heal(record.target)
            except Exception as exc:  # noqa: BLE001
                record.error = f"healing: {type(exc).__name__}: {exc}"
            record.healed_at_s = self._now()

    def _now(self) -> float:
        return time.monotonic() - self._began
