"""How a harness process stops when it is told to: SIGINT, SIGTERM or SIGHUP.

Responsibility: one reaction to the three signals a user, a CI runner, ``timeout``,
a supervisor or a closed terminal sends, shared by the pytest plugin and
``harness matrix``:

- the first signal raises :class:`KeyboardInterrupt` in the main thread, so pytest
  (or the matrix) unwinds the way it does on Ctrl-C: every fixture and ``finally``
  stops the services and workers it started, and the run reports what did not run;
- a second signal, while that unwinding is still going on (the user pressed Ctrl-C
  again, or a supervisor lost patience), kills at once: SIGKILL to every process
  this one started, directly or not, then exit with ``128 + signal``. Their temp
  folders are removed on the way out.

SIGTERM and SIGHUP get the same treatment as Ctrl-C because Python's defaults for
them end the process without running a single ``finally``; its children would
then live on (the ones started here die with it through ``PR_SET_PDEATHSIG``, but
pytest-xdist's workers and their services are not all started here).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from harness import procinfo

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
REAP_BOUND_S = 3.0

_received: int | None = None


def install() -> bool:
    """Install the handlers in this process; False where that is impossible.

    Only the main thread may install signal handlers (pytest embedded in another
    program may run elsewhere): there the process keeps its own handlers.
    """
    try:
        for signum in SIGNALS:
            signal.signal(signum, _on_signal)
    except ValueError:
        return False
    return True


def received() -> int | None:
    """The first signal this process received, if any."""
    return _received


def _on_signal(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:
        kill_everything_now(signum)
    _received = signum
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received: stopping the run "
                            f"(send it again to kill at once)")


def kill_everything_now(signum: int) -> None:
    """SIGKILL every descendant, remove this process's temp folders, and exit.

    Descendants are found before any is killed: a process whose parent dies is
    re-parented to init, and could no longer be found by walking down from here.
    """
    from harness import scratch  # late: scratch imports _process, which is heavier

    for pid in procinfo.descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _reap(REAP_BOUND_S)
    try:
        scratch.release_now()
        scratch.sweep()  # the folders of the xdist workers just killed
    except Exception:  # noqa: BLE001 - exiting now matters more than a folder
        pass
    os._exit(128 + signum)


def _reap(bound_s: float) -> None:
    """Collect killed children (bounded), so their /proc entries and pids are gone."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            time.sleep(0.05)
