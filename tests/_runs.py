"""Running pytest in a subprocess and finding what it left.

Shared by the tests that check a whole run from outside (``test_cleanup``,
``test_faults``): each run gets a private TMPDIR and a marker in its environment
(:func:`private_run_env`), is started with its output in a file
(:func:`start_pytest`) and waited for within a bound (:func:`finish`); afterwards
:func:`run_processes` finds whatever of the run is still alive, so nothing outside
the run is ever looked at or touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import procinfo
from harness.services.base import chown_to_service_user

ROOT = Path(__file__).resolve().parent.parent
RUN_BOUND_S = 180  # a whole subprocess run, fault included
GONE_BOUND_S = 10  # processes that must die once their owner is gone


def private_run_env() -> tuple[dict[str, str], Path, str]:
    """An environment whose TMPDIR and marker belong to one pytest run only."""
    private_tmp = Path(tempfile.mkdtemp(prefix="harness-cleanup-test-"))
    private_tmp.chmod(0o755)  # the service user must reach its own folders inside
    chown_to_service_user(private_tmp)
    mark = f"harness-test-{uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(private_tmp), HARNESS_TEST_MARK=mark)
    return env, private_tmp, mark


def _sigint_default() -> None:
    # A shell without job control starts background jobs with SIGINT ignored: a run
    # started from there would not react to the Ctrl-C a test sends it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_pytest(args: list[str], cwd: Path, env: dict[str, str], output: Path) -> subprocess.Popen:
    """``pytest --backend local <args>`` in ``cwd``, its output written to ``output``."""
    # Output goes to a file, not a pipe: a full pipe would block the run we wait for.
    with open(output, "wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                 "--backend", "local", *args],
                                cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                # One signal() call: takes no lock a thread could hold.
                                preexec_fn=_sigint_default)  # noqa: PLW1509


def finish(run: subprocess.Popen, output: Path, timeout_s: float = RUN_BOUND_S) -> int:
    """The run's exit code; a run that outlives the bound is killed and fails the test."""
    try:
        return run.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        run.kill()
        run.wait(timeout=10)
        pytest.fail(f"pytest did not exit within {timeout_s} s. "
                    f"Output tail:\n{log_tail(output)}", pytrace=False)


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"(no {path})"


def wait_for_path(pattern: str, folder: Path, text: str, timeout_s: float) -> bool:
    """Wait a bounded while for a file matching ``pattern`` under ``folder`` to hold ``text``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in folder.glob(pattern):
            if text in path.read_text(errors="replace"):
                return True
        time.sleep(0.2)
    return False


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    argv: list[str]

    @property
    def cmdline(self) -> str:
        return " ".join(self.argv)


def run_processes(mark: str, private_tmp: Path) -> list[Proc]:
    """Live processes of one run (zombies are dead: left out).

    A process belongs to the run when its environment carries ``mark``, when its
    working folder is inside the run's private TMPDIR, or when its parent belongs to
    the run. The environment alone is not enough: redis-server overwrites its whole
    environment with its process title, and PostgreSQL backends may do the same, but
    Redis and PostgreSQL work in their folder under TMPDIR (even after it is deleted,
    /proc shows the old path), and a pool process is the child of its Celery worker.
    """
    procs: dict[int, Proc] = {}
    owned: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        info = procinfo.stat(int(entry.name))
        if info is None or not info.alive:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        pid = info.pid
        procs[pid] = Proc(pid, info.ppid, [a for a in argv if a])
        if mark.encode() in environ or cwd.startswith(f"{private_tmp}/"):
            owned.add(pid)
    grew = True
    while grew:
        children = {pid for pid, p in procs.items() if p.ppid in owned} - owned
        owned |= children
        grew = bool(children)
    return [procs[pid] for pid in sorted(owned)]


def wait_until_gone(mark: str, private_tmp: Path, timeout_s: float = GONE_BOUND_S) -> list[str]:
    """Wait a bounded while for every process of the run to exit; return the survivors."""
    deadline = time.monotonic() + timeout_s
    while (left := run_processes(mark, private_tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p.cmdline for p in left]


def assert_nothing_left(mark: str, private_tmp: Path, *, wait: bool = True,
                        context: str = "") -> None:
    """No process of the run is alive and its private TMPDIR is empty.

    ``wait``: give processes a bounded while to exit first (after a signal or a crash);
    a run that ended normally must have stopped everything itself, so no waiting then.
    """
    left = (wait_until_gone(mark, private_tmp) if wait
            else [p.cmdline for p in run_processes(mark, private_tmp)])
    assert left == [], f"processes outlived the run: {left}{context}"
    folders = sorted(p.name for p in private_tmp.iterdir())
    assert folders == [], f"temp folders were left behind: {folders}"
