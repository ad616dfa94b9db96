"""A child process the harness owns: started in its own session, logged, always stopped.

Why not a process-executor library: services here must run as an unprivileged
user when the harness is root (PostgreSQL refuses root), must die with the
harness even on SIGKILL (``PR_SET_PDEATHSIG``), and every failure message must
carry the log tail. That is a few dozen lines over :mod:`subprocess`.

Every process started here is registered; :func:`stop_all` (called at exit and
from the pytest plugin's signal handlers) stops whatever is still alive.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness import procinfo

if TYPE_CHECKING:
    from typing_extensions import Self

_LIVE: set[ManagedProcess] = set()
_PR_SET_PDEATHSIG = 1
# Loaded here, in the parent: the child (between fork and exec, where another thread's
# lock may be held forever) then only calls prctl, and never loads a library.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not Linux / no glibc: the atexit and signal paths still apply
    _LIBC = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the harness dies, even by
    # SIGKILL, the kernel kills this child, so nothing outlives the run.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_SPAWNER: concurrent.futures.ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def _from_a_lasting_thread(start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Start a child from a thread that lives as long as the harness.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the
    process: a service a fault restarts from a short-lived thread (the cue
    listener's) would be SIGKILLed when that thread ends. The main thread lasts;
    any other thread hands the start to one spawner thread that does too.
    """
    global _SPAWNER
    if threading.current_thread() is threading.main_thread():
        return start()
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="harness-spawner")
    return _SPAWNER.submit(start).result()


class StartStop:
    """Context-manager behaviour for anything with ``start()`` and ``stop()``.

    ``with X() as x`` starts it, and stops it on the way out; a start that fails
    half-way is stopped at once, so a failed start never leaves a process behind.
    """

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file, or a note that it is empty."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log file at {path})"
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else f"(log {path} is empty)"


class ManagedProcess:
    """One child process whose output goes to a log file.

    Args:
        argv: the command line.
        log_path: where stdout and stderr go.
        env: the complete environment of the child.
        cwd: working directory.
        user: run as this user (only honoured when the harness is root).
        stop_signal: the signal that asks the program for a clean shutdown.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = _from_a_lasting_thread(lambda: subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=user if (user and os.geteuid() == 0) else None,
            start_new_session=True,  # Ctrl-C in the terminal reaches the harness, not this child
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, libc loaded before
        ))
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        self._log.flush()
        return tail(self.log_path, lines)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Ask politely, then SIGKILL the whole process group after ``grace_s``.

        With ``grace_s`` 0 the group gets SIGKILL at once. Returns the exit code
        (negative for a signal), or None if it never died.
        """
        try:
            if self.alive() and grace_s > 0:
                self._signal_group(self.stop_signal)
                try:
                    self.popen.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
            # Children of the leader (pool processes, postgres backends) may
            # outlive it: the group gets SIGKILL whatever the leader did, and we wait
            # until none of its members is still running.
            self._signal_group(signal.SIGKILL)
            try:
                code = self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            if not wait_for(lambda: not live_group_members(self.popen.pid), timeout_s=5):
                self._kill_survivors()
            return code
        finally:
            _LIVE.discard(self)
            self._log.close()

    def _kill_survivors(self) -> None:
        """Members of the group still alive 5 s after its SIGKILL: kill each by pid, and
        say so if any still stands, rather than leave it silently."""
        for pid in live_group_members(self.popen.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not wait_for(lambda: not live_group_members(self.popen.pid), timeout_s=5):
            print(f"harness: processes {live_group_members(self.popen.pid)} of "
                  f"{' '.join(self.argv[:3])} survived SIGKILL; see ps", file=sys.stderr)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are still running (zombies excluded).

    A zombie is dead but unreaped; where PID 1 does not reap orphans (many
    containers) it stays in the group forever, so ``killpg(pgid, 0)`` is no proof
    of life. /proc is.
    """
    return procinfo.live_group_members(pgid)


class Alive(Protocol):
    """Anything a wait can watch: a process, a service, a container."""

    def alive(self) -> bool: ...


@dataclass(frozen=True)
class Waited:
    """What one bounded wait saw; true when the check passed.

    ``last`` is what the last attempt said (the exception it raised, or that the
    answer was not yet the expected one), so a timeout can say what it waited for
    *and* what it saw, as testcontainers' wait strategies do.
    """

    ok: bool
    seconds: float
    attempts: int
    last: str
    gone: bool = False  # the watched thing stopped before the check passed

    def __bool__(self) -> bool:
        return self.ok

    def explain(self, what: str) -> str:
        """``did not <what> within 3.0 s (12 attempts); the last attempt said: ...``."""
        how = "stopped before it could" if self.gone else "did not"
        return (f"{how} {what} within {self.seconds:.1f} s ({self.attempts} attempts); "
                f"the last attempt said: {self.last}")


def wait_for(
    check: Callable[[], object],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    while_alive: Alive | None = None,
) -> Waited:
    """Poll ``check`` until it returns a true value or ``timeout_s`` passes.

    The one way the harness waits: services and containers for readiness, the
    worker for its start and its calls, a matrix environment for its build.
    Returns early (not ok) when ``while_alive`` has stopped. ``check`` may raise;
    that counts as "not yet", and its message is kept as the last attempt's answer.
    """
    began = time.monotonic()
    deadline = began + timeout_s
    attempts = 0
    last = "no attempt finished"
    while True:
        attempts += 1
        try:
            if check():
                return Waited(True, time.monotonic() - began, attempts, "ready")
            last = "the answer was not yet the expected one"
        except Exception as exc:  # noqa: BLE001 - "not ready yet" comes in many shapes
            last = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        if while_alive is not None and not while_alive.alive():
            return Waited(False, time.monotonic() - began, attempts, last, gone=True)
        if time.monotonic() >= deadline:
            return Waited(False, time.monotonic() - began, attempts, last)
        time.sleep(interval_s)


def stop_all() -> None:
    """Stop every process this interpreter started and has not stopped yet."""
    for proc in list(_LIVE):
        proc.stop(grace_s=3.0)


atexit.register(stop_all)
