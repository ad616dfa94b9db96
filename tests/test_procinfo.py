"""The one reader of /proc/<pid>/stat, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from harness import procinfo


def test_stat_of_this_process_and_of_a_gone_one():
    me = procinfo.stat(os.getpid())
    assert me is not None and me.alive and me.ppid == os.getppid()
    assert me.pgid == os.getpgid(0) and me.start_ticks > 0
    assert procinfo.stat(2**22 + 12345) is None  # above pid_max: never a process


def test_a_command_name_with_spaces_and_parentheses_is_parsed():
    text = "42 (a b) c) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0"
    info = procinfo._parse(42, text)
    assert (info.state, info.ppid, info.pgid, info.start_ticks) == ("S", 1, 42, 777)


def test_descendants_and_group_members_see_a_child_and_its_child_until_they_die():
    child = subprocess.Popen([sys.executable, "-c",
                              ("import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; "
                              "time.sleep(60)']); time.sleep(60)")],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(procinfo.descendants(child.pid)) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = procinfo.descendants(child.pid)
        assert len(grandchild) == 1
        assert child.pid in procinfo.descendants(os.getpid())
        assert sorted(procinfo.live_group_members(child.pid)) == sorted([child.pid, *grandchild])
    finally:
        os.killpg(child.pid, 9)
        child.wait(timeout=10)
    deadline = time.monotonic() + 10
    while procinfo.live_group_members(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procinfo.live_group_members(child.pid) == []
