"""The pure part of ``harness bisect``: cell states, the releases of a range, the search.

Responsibility: say what a cell's state is (:class:`CellState`, read from a results.json
entry), list the releases or lines between OLD and NEW (:func:`releases_between`,
:func:`python_lines_between`, :func:`lines_between`), and binary-search them for where
the cells change (:func:`search`), given a function that observes one release. No
environment is built and nothing is run or written here: :mod:`harness.matrix.bisect`
passes the function that does that.

A cell (scenario x variant x driver) *changes* when its outcome word or the set of
signatures its calls met changes. Each cell is searched on its own, over the same
environments: when all cells move at one release there is one boundary; when they do
not, the cells *split* and each one's boundary is shown. A release that could not be
observed is skipped: its neighbours are searched, and it is never read as a behaviour
change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from harness.errors import ConfigError
from harness.matrix import index

Key = tuple[str, str, str]  # scenario, variant, driver
Observe = Callable[[int], "Mapping[Key, CellState] | None"]


# --- cells ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellState:
    """What decides whether a cell changed: its outcome word and its signature set."""

    outcome: str
    signatures: tuple[str, ...] = ()

    def describe(self) -> str:
        return self.outcome + (f" {{{', '.join(self.signatures)}}}" if self.signatures else "")


ABSENT = CellState("(not run)")
# The harness could not run the cell (services not ready, a worker that never started):
# that says nothing about the release, so such a cell neither narrows its search nor
# counts as a change (harness/outcome.py: HARNESS_ERROR is never a pass either).
UNKNOWN_OUTCOMES = ("HARNESS_ERROR",)


def known(state: CellState | None) -> bool:
    return state is not None and state.outcome not in UNKNOWN_OUTCOMES


def cell_key(entry: Mapping[str, Any]) -> Key:
    return entry["scenario"], entry["variant"], entry["driver"]


def cell_name(key: Key) -> str:
    return " / ".join(key)


def cell_state(entry: Mapping[str, Any]) -> CellState:
    """A results.json entry's outcome and the signatures its calls met (by_signature)."""
    met = (entry.get("tasks") or {}).get("by_signature") or {}
    return CellState(str(entry["outcome"]), tuple(sorted(met)))


def states_of(entries: Iterable[Mapping[str, Any]]) -> dict[Key, CellState]:
    return {cell_key(e): cell_state(e) for e in entries}


# --- the releases -----------------------------------------------------------------------
def _version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise ConfigError(f"{text!r} is not a version (PEP 440). Write for example 5.5.0.") from exc


def releases_between(axis: str, available: Iterable[str], old: str, new: str,
                     pre: bool = False) -> list[str]:
    """The releases from ``old`` to ``new``, both included, oldest first.

    Pre-releases (and dev releases) between them only with ``pre``; the two ends count
    as given either way.

    Raises:
        ConfigError: an end is not in ``available``, or ``old`` is not older than ``new``.
    """
    listed = list(dict.fromkeys(available))
    missing = [v for v in (old, new) if v not in listed]
    if missing:
        near = sorted((v for v in listed if not index.version_key(v).is_prerelease),
                      key=index.version_key, reverse=True)[:8]
        raise ConfigError(f"{axis} {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'}"
                          f" not on the package index (pip index versions {axis}); newest "
                          f"releases there: {', '.join(near) or 'none'}. Give two releases "
                          f"that exist, e.g. harness bisect {axis} {near[-1] if near else 'X'} "
                          f"{near[0] if near else 'Y'}.")
    low, high = _version(old), _version(new)
    _check_order(axis, old, new, low, high, "release")
    found = []
    for v in listed:
        try:
            parsed = Version(v)
        except InvalidVersion:
            continue
        if low <= parsed <= high and (pre or v in (old, new)
                                      or not (parsed.is_prerelease or parsed.is_devrelease)):
            found.append(v)
    return sorted(found, key=Version)


def _check_order(axis: str, old: str, new: str, low: Any, high: Any, unit: str) -> None:
    """Refuse ends given newest first or equal, naming the command the other way round."""
    if low >= high:
        raise ConfigError(f"OLD must be older than NEW, but {axis} {old} is "
                          f"{'the same ' + unit + ' as' if low == high else 'newer than'} "
                          f"{new}. Write the older {unit} first: harness bisect {axis} {new} "
                          f"{old}.")


def python_lines_between(old: str, new: str) -> list[str]:
    """``3.11``, ``3.14`` -> ``3.11 3.12 3.13 3.14``: the python axis names lines.

    Raises:
        ConfigError: a value that is not ``3.Y``, or ``old`` not older than ``new``.
    """
    for value in (old, new):
        if not re.fullmatch(r"3\.\d+", value):
            raise ConfigError(f"python {value!r} is not a Python line: the python axis is "
                              f"bisected by line, e.g. harness bisect python 3.11 3.14.")
    low, high = int(old.split(".")[1]), int(new.split(".")[1])
    _check_order("python", old, new, low, high, "line")
    return [f"3.{y}" for y in range(low, high + 1)]


def lines_between(values: Iterable[str], old: str, new: str, axis: str) -> list[str]:
    """The ``X.Y`` lines among ``values`` from ``old`` to ``new`` (both must be given forms).

    Raises:
        ConfigError: an end is not ``X.Y``, or ``old`` is not older than ``new``.
    """
    for value in (old, new):
        if not re.fullmatch(r"\d+\.\d+", value):
            raise ConfigError(f"{axis} {value!r} is not a release line X.Y: the {axis} axis "
                              f"names lines, e.g. harness bisect {axis} 1.18 1.24.")
    low, high = Version(old), Version(new)
    _check_order(axis, old, new, low, high, "line")
    inside = {v for v in values if re.fullmatch(r"\d+\.\d+", v) and low <= Version(v) <= high}
    return sorted(inside | {old, new}, key=Version)


# --- the search -------------------------------------------------------------------------
@dataclass
class Boundary:
    """Where some cells change: the last release seen like OLD and the first seen otherwise.

    ``exact`` when no release between them is left to try (``untried``: the ones the
    budget did not reach; ``failed``: the ones whose environment failed).
    """

    cells: list[Key]
    last_old: int
    first_new: int
    untried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.first_new == self.last_old + 1


@dataclass
class SearchResult:
    """What :func:`search` found. ``status``: ``found``, ``no-change``, ``split`` (found,
    several boundaries), ``unresolved`` (failed environments hide a boundary),
    ``budget`` or ``no-ends`` (no two releases could be run)."""

    status: str
    releases: list[str]
    old_index: int | None = None
    new_index: int | None = None
    moving: list[Key] = field(default_factory=list)
    boundaries: list[Boundary] = field(default_factory=list)
    seen: dict[int, dict[Key, CellState] | None] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)

    @property
    def failed(self) -> list[int]:
        """Releases whose environment failed, or where a cell was HARNESS_ERROR."""
        return sorted(i for i, s in self.seen.items()
                      if s is None or not all(known(c) for c in s.values()))

    def came_back(self) -> list[tuple[Key, int]]:
        """Cells alike at both ends that differed at some release between them: a change
        and its reversal, which the ends cannot show."""
        if self.old_index is None or self.new_index is None:
            return []
        old, new = self.seen[self.old_index] or {}, self.seen[self.new_index] or {}
        found = []
        for key in sorted(old.keys() | new.keys()):
            if key in self.moving:
                continue
            for i in sorted(self.seen):
                states = self.seen[i]
                if states is not None and known(states.get(key)) \
                        and states.get(key, ABSENT) != old.get(key, ABSENT):
                    found.append((key, i))
                    break
        return found


class Search:
    """A binary search per moving cell over one list of releases, sharing observations.

    Each moving cell has an interval (last index seen as at OLD, first index seen
    otherwise). A release observed inside a cell's interval narrows it; one that failed
    (or where that cell was HARNESS_ERROR) is never tried again and narrows nothing. The next release to try is the
    middle of the widest interval still holding untried releases, so cells that move
    together cost one search, and a split costs only the extra steps it needs.
    """

    def __init__(self, releases: Sequence[str]) -> None:
        self.releases = list(releases)
        self.seen: dict[int, dict[Key, CellState] | None] = {}
        self.old: dict[Key, CellState] = {}
        self.intervals: dict[Key, list[int]] = {}

    def start(self, old_index: int, new_index: int) -> list[Key]:
        """The cells that differ between the two ends; each gets the whole interval."""
        old, new = self.seen[old_index] or {}, self.seen[new_index] or {}
        moving = [k for k in sorted(old.keys() | new.keys())
                  if old.get(k, ABSENT) != new.get(k, ABSENT)]
        self.old = {k: old.get(k, ABSENT) for k in moving}
        self.intervals = {k: [old_index, new_index] for k in moving}
        return moving

    def untried(self, key: Key) -> list[int]:
        lo, hi = self.intervals[key]
        return [i for i in range(lo + 1, hi) if i not in self.seen]

    def next_probe(self) -> int | None:
        best: tuple[int, Key] | None = None
        for key in self.intervals:
            count = len(self.untried(key))
            if count and (best is None or count > best[0]):
                best = (count, key)
        if best is None:
            return None
        lo, hi = self.intervals[best[1]]
        middle = (lo + hi) / 2
        return min(self.untried(best[1]), key=lambda i: (abs(i - middle), i))

    def record(self, i: int, states: Mapping[Key, CellState] | None) -> None:
        self.seen[i] = dict(states) if states is not None else None
        if states is None:
            return
        for key, interval in self.intervals.items():
            mine = states.get(key, ABSENT)
            if interval[0] < i < interval[1] and known(mine):
                interval[0 if mine == self.old[key] else 1] = i

    def boundaries(self) -> list[Boundary]:
        """Cells grouped by their interval, in the order of the releases."""
        groups: dict[tuple[int, int], list[Key]] = {}
        for key, (lo, hi) in self.intervals.items():
            groups.setdefault((lo, hi), []).append(key)
        found = []
        for (lo, hi), keys in sorted(groups.items()):
            between = range(lo + 1, hi)
            failed = [i for i in between if i in self.seen and (
                self.seen[i] is None or not all(known(self.seen[i].get(k)) for k in keys))]
            found.append(Boundary(keys, lo, hi, failed=failed,
                                  untried=[i for i in between if i not in self.seen]))
        return found


def search(releases: Sequence[str], observe: Observe,
           out_of_budget: Callable[[], bool] = lambda: False,
           report: Callable[[str], None] = lambda line: None) -> SearchResult:
    """Find where the cells change between the first and the last release.

    ``observe(i)`` runs release ``i`` and returns its cells' states, or None when its
    environment could not be built or run (then the next release inward stands in for an
    end, and a release between is simply skipped; an end with a HARNESS_ERROR cell gives
    its place too). ``out_of_budget()`` is asked before every environment; ``report``
    gets a line after each release between the ends: its side and the range left.
    """
    s = Search(releases)
    result = SearchResult("no-ends", list(releases), seen=s.seen)

    def try_(i: int) -> bool:
        result.order.append(i)
        s.record(i, observe(i))
        return s.seen[i] is not None and all(known(c) for c in s.seen[i].values())

    # OLD and NEW first; an end that cannot run gives its place to its inward neighbour.
    ends = [0, len(releases) - 1]
    ends_ok = [False, False]
    while ends[0] < ends[1] and not all(ends_ok):
        for side in (0, 1):
            if ends_ok[side] or ends[0] >= ends[1]:
                continue
            if out_of_budget():
                result.status = "budget"
                return result
            ends_ok[side] = try_(ends[side])
            if not ends_ok[side]:
                ends[side] += 1 if side == 0 else -1
    lo, hi = ends
    if not all(ends_ok):
        return result
    result.old_index, result.new_index = lo, hi
    result.moving = s.start(lo, hi)
    if not result.moving:
        result.status = "no-change"
        return result
    old, new = s.seen[lo] or {}, s.seen[hi] or {}
    report(f"{len(result.moving)} cell(s) differ between {releases[lo]} and {releases[hi]}")
    while (i := s.next_probe()) is not None:
        if out_of_budget():
            result.status = "budget"
            result.boundaries = s.boundaries()
            return result
        try_(i)
        left = "; ".join(f"{releases[b.last_old]}..{releases[b.first_new]}"
                         + (f" ({len(b.untried)} untried between)" if b.untried else "")
                         for b in s.boundaries())
        report(f"{releases[i]} is {classify(s.seen[i], old, new, result.moving)}; "
               f"the change lies in {left}")
    result.boundaries = s.boundaries()
    if not all(b.exact for b in result.boundaries):
        result.status = "unresolved"
    else:
        result.status = "found" if len(result.boundaries) == 1 else "split"
    return result


def classify(states: Mapping[Key, CellState] | None, old: Mapping[Key, CellState],
             new: Mapping[Key, CellState], moving: Sequence[Key]) -> str:
    """One release against the ends, over the moving cells: ``old``, ``new``, ``split``
    (some cells on each side) or ``other`` (some cells in a third state)."""
    if states is None:
        return "failed"
    sides = set()
    for key in moving:
        mine = states.get(key, ABSENT)
        sides.add("unknown" if not known(mine) else "old" if mine == old.get(key, ABSENT)
                  else "new" if mine == new.get(key, ABSENT) else "other")
    if "unknown" in sides:
        return "unknown"
    if sides <= {"old"}:
        return "old"
    if sides == {"new"}:
        return "new"
    return "other" if "other" in sides else "split"
