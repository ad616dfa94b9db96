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
import types
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


def with_line_numbers(excinfo: Any) -> None:
    """Give every frame of an interrupt's traceback a line number, so pytest can print it.

    A signal can arrive while the interpreter runs an instruction that has no line
    (Python 3.11+: exception-handling code the compiler emits), and the frame it
    interrupted then has ``tb_lineno = None``. pytest's report of a
    :class:`KeyboardInterrupt` subtracts 1 from that line and crashes with a
    ``TypeError``, before the run can say which tests did not run. Such frames get
    the line their frame was at, or the first line of their function; ``excinfo`` is
    pytest's ``ExceptionInfo`` of the interrupt, and its chained exceptions are
    repaired too.
    """
    seen: set[int] = set()
    exc = excinfo.value
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = _repaired(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    if excinfo.tb is not None:
        repaired = _repaired(excinfo.tb)
        if repaired is not excinfo.tb:
            excinfo.traceback = type(excinfo.traceback)(repaired)


def _repaired(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` itself when every entry has a line; otherwise a copy where each has one."""
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if all(entry.tb_lineno is not None for entry in entries):
        return entries[0] if entries else None
    rebuilt = None
    for entry in reversed(entries):
        line = entry.tb_lineno
        if line is None:
            line = entry.tb_frame.f_lineno or entry.tb_frame.f_code.co_firstlineno
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, line)
    return rebuilt


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
    except Exception:  # noqa: BLE001, S110 - exiting now matters more than a folder
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
