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


class CueNotAnswered(RuntimeError):
    """The harness did not answer a cue: the task must not go on as if the fault fired."""


def reach(app: Any, name: str, *, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Worker side: announce ``name`` and wait until the harness has fired its fault.

    Returns at once when no fault of this variant listens for ``name``. The process
    may not come back from here: the fault may be a SIGKILL of this very process.
    """
    from harness.task_support import settings  # worker side only: reads the env

    s = settings()
    if name not in s.cue_points:
        return
    client = app.backend.client
    key = CUE_KEY.format(queue=s.queue)
    client.rpush(key, json.dumps({"point": name, "pid": os.getpid()}))
    client.expire(key, KEY_TTL_S)
    if client.blpop([GO_KEY.format(queue=s.queue, pid=os.getpid())], timeout=timeout_s) is None:
        raise CueNotAnswered(f"the harness did not answer cue {name!r} within {timeout_s:g} s")


class CueListener:
    """Harness side: a thread that answers every announcement of the run's queue.

    ``on_point(point, pid)`` runs for each announcement (the injector fires what
    waits for that point); the announcing task then goes on. Stop it with
    :meth:`stop` (bounded join).
    """

    def __init__(self, redis_client: Any, queue: str,
                 on_point: Callable[[str, int], None]) -> None:
        self._redis = redis_client
        self._queue = queue
        self._on_point = on_point
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
        while not self._stopping.is_set():
            try:
                item = self._redis.blpop([key], timeout=0.2)
            except Exception as exc:  # noqa: BLE001 - Redis restarted by a fault, say
                self.errors.append(f"reading cues: {type(exc).__name__}: {exc}")
                time.sleep(0.2)
                continue
            if item is None:
                continue
            cue = json.loads(item[1])
            try:
                self._on_point(cue["point"], int(cue["pid"]))
            finally:
                go = GO_KEY.format(queue=self._queue, pid=cue["pid"])
                try:
                    self._redis.rpush(go, "go")
                    self._redis.expire(go, KEY_TTL_S)
                except Exception as exc:  # noqa: BLE001 - the task then times out and says so
                    self.errors.append(f"answering cue {cue['point']!r}: {exc}")
