"""How a scenario declares a fault: what happens, when, and when it heals.

Responsibility: pure data, read by the runner (which fires and heals) and by the
report (which says what fired). A fault is paired with its heal, as Jepsen's
nemeses are: every fault the layer can fire, it can undo, and the runner undoes it
at the end of the variant whatever happened.

When a fault fires is a *cue*, never a sleep, so the same cell gives the same
outcome word on every run:

- ``after_calls(k)``: the first ``k`` calls have finished (the harness sends them,
  waits for all of them, fires, then sends the rest);
- ``at_point(name)``: a task announced that it reached ``name`` (for example
  "inserted, not committed") with :func:`harness.faults.cues.reach`; the task waits
  there until the fault has fired.
"""

from __future__ import annotations

from dataclasses import dataclass

# What the layer can do, and what undoes it (see harness/faults/actions.py).
ACTIONS = {
    "terminate-backends": "pg_terminate_backend() on every session of the run's database; "
                          "heal: nothing to undo (new sessions are accepted)",
    "restart-postgres": "stop PostgreSQL (fast shutdown) and start it on the same port and "
                        "data; heal: wait until it answers",
    "restart-postgres-immediate": "the same with an immediate shutdown (no checkpoint, "
                                  "crash recovery at start); heal: wait until it answers",
    "restart-redis": "stop Redis (the broker and result backend) and start it on the same "
                     "port, down_s seconds later (at once by default); it keeps no data, so "
                     "queued calls and stored results are gone; heal: wait until it answers",
    "restart-redis-persisted": "the same for a Redis that persists: a snapshot is written "
                               "at shutdown (as Debian's redis.conf save points do on "
                               "SIGTERM) and loaded at start, so queued calls survive; heal: "
                               "wait until it answers",
    "pgbouncer-reconnect": "PgBouncer admin RECONNECT: server connections are closed once "
                           "released; heal: nothing to undo",
    "pgbouncer-kill": "PgBouncer admin KILL of the run's database: every client and server "
                      "connection is dropped at once; heal: RESUME",
    "pgbouncer-pause": "PgBouncer admin PAUSE of the run's database; heal: RESUME",
    "kill-child": "SIGKILL the pool process that announced the cue (or the first one); "
                  "heal: nothing (Celery starts a replacement)",
    "stop-child": "SIGSTOP the pool process that announced the cue; heal: SIGCONT",
    "proxy-blackhole": "the fault proxy forwards nothing and keeps both sockets open; "
                       "heal: pass through again",
    "proxy-reset": "the fault proxy resets every connection (RST both sides); heal: pass "
                   "through again",
    "proxy-latency": "the fault proxy delays every chunk by latency_ms; heal: no delay",
    "broker-reset": "the broker proxy (between the worker and Redis; the harness's own "
                    "connections go direct) resets every connection (RST both sides) and "
                    "every new one until healed; Redis itself keeps running and keeps its "
                    "data; heal: pass through again",
}
# Actions that may keep their service down for a while (Fault.down_s).
DOWN_FOR_A_WHILE = ("restart-redis", "restart-redis-persisted")


@dataclass(frozen=True)
class Cue:
    """When a fault fires: after ``calls`` finished calls, or at a named point.

    ``hold``: the task that reached the point waits there until the fault has fired
    (the default). Without it the task announces the point and goes on at once while
    the fault fires: for a fault that takes away the channel an answer would travel on
    (a Redis restart loses it).
    """

    after_calls: int | None = None
    point: str | None = None
    hold: bool = True

    def __post_init__(self) -> None:
        if (self.after_calls is None) == (self.point is None):
            raise ValueError("a cue is either after_calls(k) or at_point(name), not both "
                             "or neither")
        if self.after_calls is not None and self.after_calls < 0:
            raise ValueError(f"after_calls({self.after_calls}): k must be >= 0")

    def describe(self) -> str:
        if self.point is not None:
            return f"when a task reaches {self.point!r}" + ("" if self.hold else
                                                            " (the task goes on)")
        return f"after {self.after_calls} finished call(s)"


def after_calls(k: int) -> Cue:
    """Fire once the first ``k`` calls of the workload have finished."""
    return Cue(after_calls=k)


def at_point(name: str, *, hold: bool = True) -> Cue:
    """Fire when a task first announces ``name`` with :func:`harness.faults.cues.reach`.

    With ``hold=False`` the task announces the point and goes on without waiting, so it
    is not waiting on Redis (where the cue travels) while, say, Redis restarts.
    """
    return Cue(point=name, hold=hold)


@dataclass(frozen=True)
class Fault:
    """One fault of a workload.

    Args:
        action: one of :data:`ACTIONS`.
        cue: when it fires.
        heal_after_s: heal this long after firing; None heals at the end of the
            variant (after every call finished or hung, before the database is read).
        latency_ms: for ``proxy-latency``.
        down_s: for the Redis restarts: how long Redis stays down before it starts
            again (the fire takes that long; the cue's task goes on meanwhile).
    """

    action: str
    cue: Cue
    heal_after_s: float | None = None
    latency_ms: int = 0
    down_s: float = 0.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"fault action {self.action!r} is not known; the fault layer "
                             f"knows: {', '.join(ACTIONS)}")
        if self.down_s < 0 or (self.down_s and self.action not in DOWN_FOR_A_WHILE):
            raise ValueError(f"down_s={self.down_s:g} for {self.action!r}: a time a service "
                             f"stays down is >= 0 and only for {', '.join(DOWN_FOR_A_WHILE)}")

    @property
    def needs_proxy(self) -> bool:
        return self.action.startswith("proxy-")

    @property
    def needs_broker_proxy(self) -> bool:
        return self.action.startswith("broker-")

    def describe(self) -> str:
        heal = ("healed at the end of the variant" if self.heal_after_s is None
                else f"healed {self.heal_after_s:g} s later")
        down = f" (down {self.down_s:g} s)" if self.down_s else ""
        return f"{self.action}{down} {self.cue.describe()}, {heal}"
