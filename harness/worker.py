"""A real ``celery worker --pool=prefork`` subprocess, driven from outside.

Responsibility: start the worker with a variant's configuration, prove it is
ready, send a workload, collect one :class:`CallResult` per call within a bound,
and stop it (SIGTERM, then SIGKILL to its process group), keeping its log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from harness import scratch
from harness._process import ManagedProcess, StartStop, Waited, tail, wait_for
from harness.errors import WorkerStartError
from harness.faults.cues import RIDE_OUT_S, with_reconnect
from harness.outcome import CallResult, CallStatus, never_ran
from harness.signatures import ErrorRecord, ExceptionInfo, public_name
from harness.task_support import (
    COUNTER_KEY,
    FAILURE_KEY,
    KNOBS_KEY,
    RAN_KEY,
    WorkerSettings,
    call_token,
)

READY_MARK = " ready."  # celery logs "celery@<name> ready." once the pool has started
POLL_S = 0.05
# celery's INFO lines for a finished call: "Task name[id] succeeded in ..." / "... raised ..."
_FINISHED_LINE = re.compile(r"Task [\w.:-]+\[([0-9a-f-]{36})\] (succeeded|raised)")


class CeleryWorker(StartStop):
    """One prefork worker for one variant run.

    Args:
        app_module: import path of the scenario's Celery app.
        settings: the run's settings (:meth:`WorkerSettings.for_variant`).
        log_path: where the worker's output is kept.
        concurrency: number of prefork processes.
        project_root: the folder the worker runs in (``scenarios`` importable from it).
        extra_args: more ``celery worker`` arguments (time limits, for example).
        start_timeout_s: bound on import + pool start + the control round trip.
        client_url: the Redis URL of the harness's own client (calls, results, counters,
            cues); the worker's ``settings.broker_url`` by default. Different when the
            worker's connections go through a fault proxy and the harness's must not.
    """

    def __init__(self, *, app_module: str, settings: WorkerSettings, log_path: Path,
                 concurrency: int, project_root: Path, extra_args: Sequence[str] = (),
                 start_timeout_s: float = 60.0, client_url: str | None = None) -> None:
        self.app_module = app_module
        self.settings = settings
        self.log_path = log_path
        self.concurrency = concurrency
        self.project_root = project_root
        self.extra_args = tuple(extra_args)
        self.start_timeout_s = start_timeout_s
        self.nodename = f"harness-{uuid.uuid4().hex[:10]}@127.0.0.1"
        self.start_s = 0.0
        self._proc: ManagedProcess | None = None
        self._tmp: Path | None = None
        self._log_start = 0
        self.log_size_at_stop: int | None = None
        self.later_sent_at: float | None = None
        client_url = client_url or self.settings.broker_url
        self.client = Celery("harness-client", broker=client_url, backend=client_url,
                             set_as_current=False)
        self.client.conf.update(task_serializer="json", result_serializer="json",
                                accept_content=["json"], broker_connection_retry=False)

    # --- lifecycle -----------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", self.app_module, "worker",
                "--pool=prefork", f"--concurrency={self.concurrency}",
                "-Q", self.settings.queue, "-n", self.nodename, "--loglevel=INFO",
                # No gossip/mingle/heartbeat: this worker talks to no other worker.
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                # Fair scheduling with prefetch 1: a call goes to an idle process only,
                # so which process runs which call depends on the workload, not on luck.
                "-O", "fair", "--prefetch-multiplier=1", *self.extra_args]

    def start(self) -> None:
        began = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A private TMPDIR: a worker killed after its grace period cannot remove its own
        # temp files (billiard's pymp-* folder); the harness removes this folder instead.
        self._tmp = scratch.mkdtemp(prefix="harness-worker-")
        env = dict(os.environ)
        env.update({
            "TMPDIR": str(self._tmp),
            **self.settings.to_env(),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(self.project_root),
                                                         env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            # The worker's own warnings (never-awaited coroutines) must reach its log.
            "PYTHONWARNINGS": "default",
        })
        # Only what this process logs counts: a reused log path may hold an old "ready.".
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = ManagedProcess(self.command(), self.log_path, env=env,
                                    cwd=self.project_root)
        waited = wait_for(self._logged_ready, timeout_s=self.start_timeout_s,
                          while_alive=self._proc, interval_s=POLL_S)
        if not waited:
            raise WorkerStartError(self._start_failure("log the line 'ready.'", waited))
        remaining = max(1.0, self.start_timeout_s - (time.monotonic() - began))
        waited = wait_for(self._answers_ping, timeout_s=remaining, while_alive=self._proc)
        if not waited:
            raise WorkerStartError(self._start_failure("answer a control ping", waited))
        self.start_s = time.monotonic() - began

    def _start_failure(self, what: str, waited: Waited) -> str:
        assert self._proc is not None
        state = ("exited with code " + str(self._proc.popen.returncode)
                 if not self._proc.alive()
                 else f"did not {what} within {self.start_timeout_s:.0f} s "
                      f"(the last attempt said: {waited.last})")
        return (f"The Celery worker for {self.app_module} {state}. Most often the app failed "
                f"at import (see the traceback below) or a service it connects to at start is "
                f"down. Full log: {self.log_path}\nLog tail:\n{self._proc.tail(30)}")

    def _logged_ready(self) -> bool:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return READY_MARK.encode() in log.read()

    def _answers_ping(self) -> bool:
        replies = self.client.control.ping(destination=[self.nodename], timeout=0.5)
        return any(self.nodename in reply for reply in replies)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM to the whole process group, then SIGKILL to it after ``grace_s``.

        By now every call is collected or counted hung, so nothing waits on a warm
        shutdown: the pool processes get SIGTERM too and the stop takes a fraction of
        a second instead of about 2.5 s. What Celery logs about it (lost pool
        processes) comes after ``log_size_at_stop`` and is not part of the observation.
        """
        code = None
        if self._proc is not None and self.log_size_at_stop is None:
            self.log_size_at_stop = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self._proc is not None:
            code = self._proc.stop(grace_s=grace_s)
            self._proc = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.client.close()
        return code

    @property
    def pid(self) -> int:
        """The worker's main process; its children are the prefork pool."""
        if self._proc is None:
            raise WorkerStartError("the worker is not running")
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def observed_log(self) -> str:
        """The log up to the moment the harness began stopping the worker."""
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        if self.log_size_at_stop is not None:
            data = data[:self.log_size_at_stop]
        return data.decode(errors="replace")

    # --- workload ------------------------------------------------------------------------
    def run(self, task: str, *, calls: int, timeout_s: float,
            kwargs: Mapping[str, Any] | None = None, check_ran: bool = False,
            ignore_result: bool = False,
            after_calls: Mapping[int, Callable[[], None]] | None = None,
            later: tuple[int, Callable[[], bool]] | None = None) -> list[CallResult]:
        """Send ``calls`` calls of ``task`` and wait for all of them, at most ``timeout_s``.

        Each call gets a unique token as its first argument and must return it
        (unless ``ignore_result``). Calls not finished by the deadline are HUNG; the
        caller then stops the worker. With ``check_ran``, a call reported done whose
        body left no ``mark_ran`` side effect is NOT_RUN. ``after_calls`` maps ``k``
        to a hook run once the first ``k`` calls have finished and before the next
        is sent (a fault's cue): the calls then go in batches, all within one deadline.
        ``later`` is ``(n, ready)``: once the ``calls`` are sent, wait until ``ready()``
        (every fault fired), then send ``n`` more; :attr:`later_sent_at` is the wall
        time they went.
        """
        prefix = uuid.uuid4().hex[:8]
        deadline = time.monotonic() + timeout_s
        sent: list[tuple[str, AsyncResult]] = []
        finished: dict[str, str] = {}  # task id -> "succeeded" / "raised" / "ready"
        hooks = dict(after_calls or {})
        for i in range(calls + 1):
            if i in hooks:
                # The cue is "k calls finished": wait for them (within the batch's
                # deadline; calls still running then are left to the final wait).
                wait_for(lambda: self._all_finished(sent, finished, ignore_result),
                         timeout_s=max(0.0, deadline - time.monotonic()), interval_s=POLL_S)
                hooks.pop(i)()
            if i == calls:
                break
            token = call_token(prefix, i)
            result = self.client.send_task(task, args=[token], kwargs=dict(kwargs or {}),
                                           queue=self.settings.queue)
            sent.append((token, result))

        if later is not None:
            more, ready = later
            wait_for(ready, timeout_s=max(0.0, deadline - time.monotonic()), interval_s=POLL_S)
            self.later_sent_at = time.time()
            for i in range(calls, calls + more):
                token = call_token(prefix, i)
                sent.append((token, self.client.send_task(
                    task, args=[token], kwargs=dict(kwargs or {}), queue=self.settings.queue)))

        # Not bounded by the worker's life: a call a dead pool process held is HUNG.
        wait_for(lambda: self._all_finished(sent, finished, ignore_result),
                 timeout_s=max(0.0, deadline - time.monotonic()), interval_s=POLL_S)
        collected = []
        for token, result in sent:
            call = self._collect(token, result, finished.get(result.id))
            if check_ran and call.status in (CallStatus.OK, CallStatus.WRONG) \
                    and not self._ran(token):
                call = never_ran(token, call.expected, result.id)
            collected.append(call)
        return collected

    def _all_finished(self, sent: list[tuple[str, AsyncResult]], finished: dict[str, str],
                      ignore_result: bool) -> bool:
        if ignore_result:
            finished.update(self._finished_in_log())
        else:
            finished.update({r.id: "ready" for _, r in sent
                             if r.id not in finished and r.ready()})
        return len(finished) >= len(sent)

    def _finished_in_log(self) -> dict[str, str]:
        """Task ids the worker logged as done: the only signal when no result is stored."""
        text = self.log_path.read_text(errors="replace")
        found: dict[str, str] = {}
        for m in _FINISHED_LINE.finditer(text):
            # A call whose message came back runs twice: a run that raised is not
            # undone by another run that succeeded.
            if found.get(m.group(1)) != "raised":
                found[m.group(1)] = m.group(2)
        return found

    def counters(self) -> dict[str, int]:
        """The run's ``task_support.count`` counters."""
        prefix = COUNTER_KEY.format(queue=self.settings.queue, name="")
        redis = self.client.backend.client

        def read() -> dict[str, int]:
            return {key.decode()[len(prefix):]: int(redis.get(key) or 0)
                    for key in redis.scan_iter(match=prefix + "*")}
        # A Redis restart (a fault) leaves the client one broken connection to drop.
        return with_reconnect(read, timeout_s=RIDE_OUT_S)

    def knobs(self) -> dict[str, Any]:
        """The knobs in force, as the app published them at import ({} if it never did)."""
        redis = self.client.backend.client
        raw = with_reconnect(lambda: redis.get(KNOBS_KEY.format(queue=self.settings.queue)),
                             timeout_s=RIDE_OUT_S)
        return json.loads(raw) if raw else {}

    def _ran(self, token: str) -> bool:
        key = RAN_KEY.format(queue=self.settings.queue, token=token)
        return bool(self.client.backend.client.exists(key))

    def _collect(self, token: str, result: AsyncResult, finished: str | None) -> CallResult:
        if finished is None:
            return CallResult(token, token, CallStatus.HUNG, task_id=result.id)
        if finished == "succeeded":  # ignore_result: no value to compare
            return CallResult(token, token, CallStatus.OK, task_id=result.id)
        if finished == "ready" and result.successful():
            value = result.result
            status = CallStatus.OK if value == token else CallStatus.WRONG
            return CallResult(token, token, status, value=value, task_id=result.id)
        return CallResult(token, token, CallStatus.ERROR, error=self._error_record(result),
                          task_id=result.id)

    def _error_record(self, result: AsyncResult) -> ErrorRecord:
        redis = self.client.backend.client
        key = FAILURE_KEY.format(task_id=result.id)
        # The task_failure fallback path writes after the state is stored: give it a moment.
        raw = with_reconnect(lambda: redis.get(key), timeout_s=RIDE_OUT_S)
        if raw is None and wait_for(lambda: redis.exists(key), timeout_s=1.0):
            raw = redis.get(key)
        if raw:
            return ErrorRecord.from_dict(json.loads(raw))
        # No record: the process died before anything could be written (WorkerLostError,
        # hard time limit). Keep what the result backend knows, with the class's module.
        meta = self.client.backend.get_task_meta(result.id).get("result") or {}
        if isinstance(meta, dict) and meta.get("exc_type"):
            name = public_name(meta.get("exc_module") or "builtins", meta["exc_type"])
            message = str(meta.get("exc_message") or "")
        else:
            exc = result.result
            name = type(exc).__name__ if isinstance(exc, BaseException) else "UnknownError"
            message = str(exc)
        return ErrorRecord(chain=(ExceptionInfo(name, (name,), message),),
                           traceback=str(result.traceback or ""))
