"""harness.scratch on real folders: one parent per process, and the sweep of dead owners'.

Every folder here lives under pytest's ``tmp_path``, which stands in for the temp
folder, so a sweep never looks at (or removes) anything of another run.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from harness import procinfo, scratch
from tests._runs import ROOT


def parent_name(pid: int, ticks: int | None, suffix: str = "abcd1234") -> str:
    """A parent folder's name as :func:`harness.scratch.folder` makes it."""
    return f"{scratch.PREFIX}{pid}-{ticks}-{suffix}"


def make_parent(base: Path, name: str) -> Path:
    """A parent folder with what a run leaves in it: a service folder with a file."""
    path = base / name
    (path / "harness-redis-x").mkdir(parents=True)
    (path / "harness-redis-x" / "dump.rdb").write_text("data")
    (path / "harness-redis-x").chmod(0o700)
    return path


def my_ticks() -> int:
    ticks = procinfo.start_ticks(os.getpid())
    assert ticks is not None
    return ticks


@pytest.fixture
def dead_owner() -> tuple[int, int]:
    """The pid and start ticks of a process that ran and is gone (started, killed, reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = procinfo.start_ticks(child.pid)
        assert ticks is not None
    finally:
        child.kill()
        child.wait(timeout=10)
    return child.pid, ticks


@pytest.fixture
def own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the temp folder, and no parent folder made yet by this process.

    monkeypatch puts back the session's own parent folder afterwards; the one made
    here stays inside ``tmp_path``.
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(scratch, "_folder", None)
    return tmp_path


def test_sweep_removes_the_folder_of_a_dead_owner(tmp_path: Path, dead_owner: tuple[int, int]):
    pid, ticks = dead_owner
    dead = make_parent(tmp_path, parent_name(pid, ticks))
    assert not scratch.owner_alive(dead)
    assert scratch.sweep(tmp_path) == [dead]
    assert not dead.exists()


def test_sweep_keeps_the_folder_of_a_live_owner(tmp_path: Path):
    alive = make_parent(tmp_path, parent_name(os.getpid(), my_ticks()))
    assert scratch.owner_alive(alive)
    assert scratch.sweep(tmp_path) == []
    assert (alive / "harness-redis-x" / "dump.rdb").read_text() == "data"


def test_sweep_removes_the_folder_of_a_reused_pid(tmp_path: Path):
    """The pid is alive, but it is another process (it started at another time):
    the folder's owner is gone."""
    reused = make_parent(tmp_path, parent_name(os.getpid(), my_ticks() - 1))
    assert not scratch.owner_alive(reused)
    assert scratch.sweep(tmp_path) == [reused]
    assert not reused.exists()


def test_sweep_ignores_what_it_did_not_make(tmp_path: Path, dead_owner: tuple[int, int]):
    """Only directories named harness-run-<pid>-<ticks>-... are the sweep's business."""
    pid, ticks = dead_owner
    untouched = [
        make_parent(tmp_path, f"{scratch.PREFIX}notapid-{ticks}-x"),   # prefix, no pid
        make_parent(tmp_path, f"{scratch.PREFIX}{pid}-None-x"),        # no start time
        make_parent(tmp_path, f"{scratch.PREFIX}{pid}-{ticks}"),       # no suffix
        make_parent(tmp_path, f"harness-worker-{pid}-{ticks}-x"),      # another prefix
        make_parent(tmp_path, f"x{scratch.PREFIX}{pid}-{ticks}-x"),    # not at the start
    ]
    a_file = tmp_path / parent_name(pid, ticks, "file")               # a dead owner's name,
    a_file.write_text("not a folder")                                  # but not a folder
    assert scratch.sweep(tmp_path) == []
    assert all(path.is_dir() for path in untouched)
    assert a_file.read_text() == "not a folder"


def test_sweep_sorts_a_mixed_folder(tmp_path: Path, dead_owner: tuple[int, int]):
    pid, ticks = dead_owner
    dead = make_parent(tmp_path, parent_name(pid, ticks))
    reused = make_parent(tmp_path, parent_name(os.getpid(), my_ticks() + 1))
    alive = make_parent(tmp_path, parent_name(os.getpid(), my_ticks()))
    other = make_parent(tmp_path, "harness-cleanup-test-xyz")
    assert sorted(scratch.sweep(tmp_path)) == sorted([dead, reused])
    assert sorted(tmp_path.iterdir()) == sorted([alive, other])


def test_sweep_without_a_base_looks_in_the_temp_folder(own_temp_dir: Path,
                                                       dead_owner: tuple[int, int]):
    dead = make_parent(own_temp_dir, parent_name(*dead_owner))
    assert scratch.sweep() == [dead]


def test_folder_is_passable_by_the_service_user_and_holds_every_temp_folder(own_temp_dir: Path):
    parent = scratch.folder()
    assert parent.parent == own_temp_dir
    assert parent.name.startswith(parent_name(os.getpid(), my_ticks(), suffix=""))
    assert stat.S_IMODE(parent.stat().st_mode) == 0o711
    assert scratch.folder() == parent  # one per process
    assert scratch.owner_alive(parent)

    made = [scratch.mkdtemp(prefix="harness-redis-"), scratch.mkdtemp(prefix="harness-worker-")]
    assert [path.parent for path in made] == [parent, parent]
    assert made[0].name.startswith("harness-redis-") and made[0].is_dir()
    assert made[1].name.startswith("harness-worker-") and made[1].is_dir()
    assert made[0] != made[1]
    assert scratch.sweep(own_temp_dir) == []  # this process is alive: its folder stays
    assert parent.is_dir()


def test_folder_is_made_again_when_it_was_removed(own_temp_dir: Path):
    first = scratch.folder()
    first.rmdir()
    second = scratch.folder()
    assert second.is_dir() and second != first
    assert scratch.mkdtemp(prefix="x-").parent == second


# A harness process of its own: makes its parent folder and a service folder in it,
# then exits normally or is SIGKILLed.
OWNER = textwrap.dedent('''
    import os, signal, sys
    from harness import scratch
    path = scratch.mkdtemp(prefix="harness-redis-")
    (path / "dump.rdb").write_text("data")
    print(scratch.folder(), flush=True)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
''')


@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_a_process_removes_its_folder_and_the_sweep_removes_a_killed_ones(tmp_path: Path,
                                                                         ending: str):
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-c", OWNER, ending], env=env, check=False,
                         capture_output=True, text=True, timeout=60)
    parent = Path(run.stdout.strip())
    assert parent.parent == tmp_path, run.stderr
    if ending == "exit":
        assert run.returncode == 0, run.stderr
        assert not parent.exists(), "a process that ended normally left its folder"
        assert scratch.sweep(tmp_path) == []
    else:
        assert run.returncode == -signal.SIGKILL
        assert list(parent.glob("harness-redis-*/dump.rdb")), "the killed process's folder"
        assert scratch.sweep(tmp_path) == [parent]
        assert list(tmp_path.iterdir()) == []
