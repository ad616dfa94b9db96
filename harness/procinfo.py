"""What Linux says about a process: the one reader of ``/proc/<pid>/stat``.

Responsibility: parse ``/proc/<pid>/stat`` once, for everything in the harness that
asks about processes: whether a process group still has live members, which
processes descend from this one, and a process's start time (which, with its pid,
tells a live owner from a pid the kernel has reused).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the harness uses."""

    pid: int
    state: str  # "R", "S", "T" (stopped), "Z" (zombie: dead, not yet reaped), ...
    ppid: int
    pgid: int
    start_ticks: int  # start time in clock ticks since boot

    @property
    def alive(self) -> bool:
        """Running or able to run; a zombie is dead however long it stays unreaped."""
        return self.state != "Z"


def stat(pid: int) -> ProcStat | None:
    """The process's stat, or None when it does not exist (or cannot be read)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return _parse(pid, text)


def _parse(pid: int, text: str) -> ProcStat:
    # The command name (field 2) may hold spaces and parentheses: the fields after
    # it start after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return ProcStat(pid=pid, state=fields[0], ppid=int(fields[1]), pgid=int(fields[2]),
                    start_ticks=int(fields[19]))


def pid_alive(pid: int) -> bool:
    """Does ``pid`` exist and is it not a zombie?"""
    found = stat(pid)
    return found is not None and found.alive


def processes() -> Iterator[ProcStat]:
    """Every process this one can see, zombies included."""
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            found = stat(int(entry.name))
            if found is not None:
                yield found


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None when it is gone."""
    found = stat(pid)
    return found.start_ticks if found else None


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are still running (zombies excluded)."""
    return [p.pid for p in processes() if p.pgid == pgid and p.alive]


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, children before grandchildren."""
    parent_of = {p.pid: p.ppid for p in processes() if p.alive}
    found: list[int] = []
    frontier = {root}
    while frontier:
        children = [pid for pid, ppid in parent_of.items() if ppid in frontier]
        found.extend(children)
        frontier = set(children)
    return found
