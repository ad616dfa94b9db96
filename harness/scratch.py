"""Where a harness process keeps its temp folders, and how those of dead processes go.

Responsibility: one parent folder per process (``<tmp>/harness-run-<pid>-<start>``)
that holds every temp folder the process makes (service data, worker TMPDIRs),
removed when the process ends, and a sweep that removes the parents of processes
that died without cleaning up.

A process that ends normally removes its parent folder (the pytest plugin at the
end of the session, ``atexit`` otherwise). One that is SIGKILLed, such as a
crashed pytest-xdist worker, cannot: its services die with it (PR_SET_PDEATHSIG)
but their folders stay. The pytest controller therefore sweeps at the start and at
the end of every run. The owner is identified by its pid *and* its start time, so
a reused pid is not mistaken for the owner, and another run's live folder is never
touched.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

from harness import _process, procinfo

PREFIX = "harness-run-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)-")
_folder: Path | None = None


def folder() -> Path:
    """This process's parent folder for temp folders, made on first use."""
    global _folder
    if _folder is None or not _folder.exists():
        pid = os.getpid()
        _folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-{procinfo.start_ticks(pid)}-"))
        # Services run as the 'postgres' user when the harness is root: they must be
        # able to pass through this folder to their own (which they own, mode 0700).
        _folder.chmod(0o711)
    return _folder


def mkdtemp(prefix: str) -> Path:
    """A new temp folder inside this process's parent folder."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=folder()))


def release() -> None:
    """Remove this process's parent folder and everything left in it.

    Processes still running are stopped first: a live PostgreSQL would write into
    a folder being removed.
    """
    global _folder
    if _folder is not None:
        _process.stop_all()
        shutil.rmtree(_folder, ignore_errors=True)
        _folder = None


def release_now() -> None:
    """Remove this process's parent folder at once, stopping nothing first.

    For a process that has just SIGKILLed everything it started and is about to exit
    (:func:`harness.interrupts.kill_everything_now`).
    """
    global _folder
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)
        _folder = None


def owner_alive(path: Path) -> bool:
    """Is the process that made ``path`` still running? (Unknown names count as alive.)"""
    match = _NAME.match(path.name)
    if match is None:
        return True
    pid, ticks = int(match.group(1)), int(match.group(2))
    return procinfo.start_ticks(pid) == ticks


def sweep(base: Path | None = None) -> list[Path]:
    """Remove parent folders whose owner process is gone; return what was removed."""
    base = base or Path(tempfile.gettempdir())
    removed = []
    for path in base.glob(f"{PREFIX}*"):
        if path.is_dir() and not owner_alive(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


atexit.register(release)
