"""The meeting point of a task and the harness: a task announces a point, a fault fires.

Responsibility: both sides of a cue, over the run's Redis. In the worker,
:func:`reach` announces ``name`` (with the announcing process's pid) and waits until
the harness says go, so a fault lands exactly there ("inserted, not committed").
In the harness, :class:`CueListener` takes each announcement, lets the injector
fire what waits for that point, and says go.

A task only waits where a fault listens: the harness passes the points it listens
for in the worker's settings, and :func:`reach` returns at once for any other, so
an app can announce its points in every variant.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

CUE_KEY = "harness:cue:{queue}"
GO_KEY = "harness:cue-go:{queue}:{pid}"
KEY_TTL_S = 3600
REACH_TIMEOUT_S = 60.0  # the harness answers in milliseconds; a silent harness is a bug
# A Redis restart (a fault itself) breaks every open connection once; both sides ride
# it out by reconnecting for this long before they call Redis gone.
RIDE_OUT_S = 15.0
RETRY_PAUSE_S = 0.1


def _connection_lost(exc: BaseException) -> bool:
    import redis  # both sides have redis-py: it is the run's broker client

    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


def with_reconnect(action: Callable[[], Any], *, timeout_s: float) -> Any:
    """Run one Redis command, again after a broken connection, within ``timeout_s``.

    redis-py drops a connection that failed and opens a new one on the next command,
    so a retry after a restart reaches the new server.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except Exception as exc:
            if not _connection_lost(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(RETRY_PAUSE_S)


class CueNotAnswered(RuntimeError):
    """The harness did not answer a cue: the task must not go on as if the fault fired."""


def reach(app: Any, name: str, *, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Worker side: announce ``name`` and wait until the harness has fired its fault.

    Returns at once when no fault of this variant listens for ``name``, and right after
    announcing it when the fault does not hold the task (``at_point(..., hold=False)``).
    The process may not come back from here: the fault may be a SIGKILL of this very
    process.
    """
    from harness.task_support import settings  # worker side only: reads the env

    s = settings()
    if name not in s.cue_points:
        return
    client = app.backend.client
    key = CUE_KEY.format(queue=s.queue)
    deadline = time.monotonic() + timeout_s
    with_reconnect(lambda: client.rpush(key, json.dumps({"point": name, "pid": os.getpid()})),
                    timeout_s=RIDE_OUT_S)
    with_reconnect(lambda: client.expire(key, KEY_TTL_S), timeout_s=RIDE_OUT_S)
    if name in s.cue_passing:
        # The fault may be a Redis restart that would take an answer with it: the
        # task goes on at once and talks to Redis no more.
        return
    go_key = GO_KEY.format(queue=s.queue, pid=os.getpid())
    # The fault may restart Redis while this waits: the wait then starts again on the
    # new server, where the harness puts its answer once the restart is done.
    answer = with_reconnect(
        lambda: client.blpop([go_key], timeout=max(1, int(deadline - time.monotonic()))),
        timeout_s=timeout_s)
    if answer is None:
        raise CueNotAnswered(f"the harness did not answer cue {name!r} within {timeout_s:g} s")


class CueListener:
    """Harness side: a thread that answers every announcement of the run's queue.

    ``on_point(point, pid)`` runs for each announcement (the injector fires what
    waits for that point); the announcing task then goes on. Stop it with
    :meth:`stop` (bounded join).
    """

    def __init__(self, redis_client: Any, queue: str,
                 on_point: Callable[[str, int], None],
                 holds: Callable[[str], bool] = lambda _point: True) -> None:
        self._redis = redis_client
        self._queue = queue
        self._on_point = on_point
        self._holds = holds
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"cues-{queue}", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        key = CUE_KEY.format(queue=self._queue)
        failing_since: float | None = None
        while not self._stopping.is_set():
            try:
                item = self._redis.blpop([key], timeout=0.2)
                failing_since = None
            except Exception as exc:  # noqa: BLE001 - a broken connection, or worse
                # A Redis restart (a fault) breaks the connection once; a Redis that
                # stays away, or any other error, makes the run untrustworthy.
                now = time.monotonic()
                failing_since = failing_since if failing_since is not None else now
                if not _connection_lost(exc) or now - failing_since > RIDE_OUT_S:
                    self.errors.append(f"reading cues: {type(exc).__name__}: {exc}")
                    failing_since = None
                time.sleep(0.2)
                continue
            if item is None:
                continue
            cue = json.loads(item[1])
            if not self._holds(cue["point"]):
                # The task did not stop there: fire, and answer nobody.
                self._on_point(cue["point"], int(cue["pid"]))
                continue
            try:
                self._on_point(cue["point"], int(cue["pid"]))
            finally:
                self._answer(cue)

    def _answer(self, cue: dict[str, Any]) -> None:
        go = GO_KEY.format(queue=self._queue, pid=cue["pid"])
        try:
            with_reconnect(lambda: self._redis.rpush(go, "go"), timeout_s=RIDE_OUT_S)
            with_reconnect(lambda: self._redis.expire(go, KEY_TTL_S), timeout_s=RIDE_OUT_S)
        except Exception as exc:  # noqa: BLE001 - the task then times out and says so
            self.errors.append(f"answering cue {cue['point']!r}: {exc}")
