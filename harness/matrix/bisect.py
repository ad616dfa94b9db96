"""``harness bisect AXIS OLD NEW``: the first release of one axis where selected cells change.

Responsibility: walk the releases of one axis between two versions, every other axis
at the matrix baseline (or as given), and find where the selected scenario cells change,
with the evidence of both sides. A version rule in a scenario
(``before_package("celery", "5.7", ...)``) is usually written from two matrix runs; the
releases between them were never run, and this says which one moved the cell.

The order of the steps, as in ``harness matrix``: everything that can be checked without
building is checked first (the axis, both versions on the package index, OLD before NEW,
the ``-k`` selection, an interpreter and a PgBouncer for every value), then the releases
between OLD and NEW are listed (final releases only unless ``--pre``; for ``python`` the
lines with an interpreter or an interpreter image here, for ``pgbouncer`` the lines with
a local binary or an image). Then OLD and NEW run; if their cells agree there is nothing
to find. Otherwise a binary search, one environment per step, built, smoke-checked and
run by the matrix's own machinery (:func:`containers.build_any`, :func:`smoke.check`,
:func:`run.run_env`; the same cache, so a release built once is reused in seconds).

A cell (scenario x variant x driver) *changes* when its outcome word or the set of
signatures its calls met changes. Each cell is searched on its own, over the same
environments: when all cells move at one release there is one boundary; when they do
not, the cells *split* and each one's boundary is shown. An environment that cannot be
built or fails its smoke check is reported in one paragraph and skipped: its neighbours
are searched, and it is never read as a behaviour change.

Every step goes into ``<out>/<run id>/bisect.json`` as it happens (:func:`record`).

Exit codes: 0 done (a boundary found, or none in the range); 2 bad input (nothing was
built); 3 the budget ran out or an environment failed (the narrowed range is printed).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from harness import interrupts
from harness import results as results_file
from harness.bootstrap import default_workers
from harness.errors import ConfigError, HarnessError
from harness.matrix import (
    axes,
    command,
    containers,
    environments,
    index,
    pgbouncer_axis,
    python_support,
    sources,
)
from harness.matrix import resolution as resolutions
from harness.matrix import smoke as smokes
from harness.matrix.run import Progress, activated, run_env

BISECTABLE = ("python", *axes.PACKAGE_AXES, "pgbouncer")
DEFAULT_BUDGET_MIN = 60.0
EXIT_DONE, EXIT_UNFINISHED = 0, 3
RECORD = "bisect.json"
KIND = "bisect"
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
    if low >= high:
        raise ConfigError(f"OLD must be older than NEW, but {axis} {old} is "
                          f"{'the same release as' if low == high else 'newer than'} {new}. "
                          f"Write the older release first: harness bisect {axis} {new} {old}.")
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
    if low >= high:
        raise ConfigError(f"OLD must be older than NEW, but python {old} is "
                          f"{'the same line as' if low == high else 'newer than'} {new}. "
                          f"Write the older line first: harness bisect python {new} {old}.")
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
    if low >= high:
        raise ConfigError(f"OLD must be older than NEW, but {axis} {old} is "
                          f"{'the same line as' if low == high else 'newer than'} {new}. "
                          f"Write the older line first: harness bisect {axis} {new} {old}.")
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


# --- what the scenarios' rules say -----------------------------------------------------
def segments(row: Sequence[str], releases: Sequence[str]) -> str:
    """``[A, A, B, A]`` over ``[r0..r3]`` -> ``A r0..r1; B r2; A r3``: where a rule's
    expectation changes, in the releases searched."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(row) + 1):
        if i == len(row) or row[i] != row[start]:
            span = releases[start] if i - 1 == start else f"{releases[start]}..{releases[i - 1]}"
            parts.append(f"{row[start]} at {span}")
            start = i
    return "; ".join(parts)


def rule_predictions(root: Path, axis: str, releases: Sequence[str],
                     versions: Callable[[str], Mapping[str, str]], pgbouncer: str | None,
                     keys: Iterable[Key]) -> dict[Key, list[str]]:
    """What each cell's scenario expects at each release, by its version rules (no run).

    ``versions(release)`` gives the axes of that release's environment. Advisory only: a
    scenario or variant this checkout does not declare, or rules that cannot be read, give
    no prediction (an empty answer), never an error.
    """
    try:
        from harness import rules
        from harness import scenario as declared

        by_id = {s.id: s for s in rules.catalogue(root)}
        found: dict[Key, list[str]] = {}
        for key in keys:
            if key[0] not in by_id:
                continue
            variant = by_id[key[0]].variant(key[1])
            row = []
            for release in releases:
                axes_ = versions(release)
                major, minor = (int(p) for p in axes_["python"].split(".")[:2])
                env = declared.RunEnv(key[2], (major, minor),
                                      {a: axes_[a] for a in axes.PACKAGE_AXES},
                                      axes_["pgbouncer"] if axis == "pgbouncer" else pgbouncer)
                if key[2] in variant.not_for or (variant.requires and variant.requires(env)):
                    row.append("N/A")
                else:
                    row.append(declared.resolve(variant.expect, env).describe())
            found[key] = row
        return found
    except Exception:  # noqa: BLE001 - a prediction must never stop the search's answer
        return {}


# --- evidence ---------------------------------------------------------------------------
def _counts(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "no result for this cell"
    tasks = entry.get("tasks") or {}
    parts = [f"ok {tasks.get('ok', '?')}/{tasks.get('total', '?')}"]
    parts += [f"{k} {tasks[k]}" for k in ("hung", "wrong", "other", "not_run") if tasks.get(k)]
    sigs = ", ".join(f"{k} {v}" for k, v in (tasks.get("by_signature") or {}).items())
    return ", ".join(parts) + (f"; signatures: {sigs}" if sigs else "")


def _expected(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "?"
    sigs = entry.get("expected_signatures") or []
    return str(entry.get("expected", "?")) + (f" ({' or '.join(sigs)})" if sigs else "")


def evidence(axis: str, boundary: Boundary, releases: Sequence[str],
             entries: Mapping[int, Mapping[Key, Mapping[str, Any]]],
             paths: Mapping[int, str], new_index: int | None = None) -> list[str]:
    """Each cell of ``boundary`` on its last old-behaving and first new-behaving release:
    outcome, signatures, counts and the scenario's expectation; then whether the
    scenario's expectation moves at the same place, and both results' paths."""
    lo, hi = boundary.last_old, boundary.first_new
    lines = []
    for key in boundary.cells:
        before, after = entries.get(lo, {}).get(key), entries.get(hi, {}).get(key)
        lines.append(f"  {cell_name(key)}")
        for label, i, entry in (("last old", lo, before), ("first new", hi, after)):
            state = cell_state(entry).describe() if entry else ABSENT.describe()
            lines.append(f"    {axis} {releases[i]:<10} ({label}) {state}: {_counts(entry)}; "
                         f"expected {_expected(entry)}")
        if before and after:
            moved = _expected(before) != _expected(after)
            off = [f"{axis} {releases[i]}" for i, e in ((lo, before), (hi, after))
                   if e.get("passed") is False]
            if moved and boundary.exact and not off:
                lines.append(f"    the scenario's expectation moves at the same release and "
                             f"both sides are as expected: its rule's boundary is right "
                             f"({axis} {releases[hi]})")
            elif moved:
                lines.append("    the scenario's expectation moves " + (
                    "here too" if boundary.exact else "somewhere in this range too")
                    + (f", but {' and '.join(off)} is not its expectation" if off else ""))
            else:
                lines.append(f"    the scenario expects the same on both sides: its rules put no "
                             f"boundary at {axis} {releases[hi]}"
                             + (f" ({' and '.join(off)} is not its expectation)" if off else ""))
        if new_index is not None and hi != new_index and after is not None:
            last = entries.get(new_index, {}).get(key)
            if last is not None and cell_state(last) != cell_state(after):
                lines.append(f"    it changes again later ({cell_state(after).describe()} at "
                             f"{releases[hi]}, {cell_state(last).describe()} at "
                             f"{releases[new_index]}): bisect {axis} {releases[hi]} "
                             f"{releases[new_index]} for that")
    lines.append(f"  results: {axis} {releases[lo]}: {paths.get(lo, '?')}")
    lines.append(f"           {axis} {releases[hi]}: {paths.get(hi, '?')}")
    return lines


def left_between(left_out: Mapping[str, str], low: str, high: str) -> list[str]:
    """The releases left out before the search (no build for this Python, no image) that
    lie between two releases: "adjacent" in the search is not adjacent on the index then."""
    return [f"{v} ({why})" for v, why in left_out.items()
            if index.version_key(low) < index.version_key(v) < index.version_key(high)]


def summary(axis: str, result: SearchResult,
            entries: Mapping[int, Mapping[Key, Mapping[str, Any]]],
            paths: Mapping[int, str], left_out: Mapping[str, str] | None = None,
            predicted: Mapping[Key, Sequence[str]] | None = None) -> list[str]:
    """The answer, for the terminal: the boundary (or boundaries) with evidence, or why
    there is none; with ``predicted`` (:func:`rule_predictions`), where each cell's
    scenario rules put their own boundaries in the range."""
    r, lines = result.releases, []
    predicted = predicted or {}

    def rules_say(key: Key) -> list[str]:
        row = predicted.get(key)
        return [f"    its scenario's rules expect: {segments(row, r)}"] if row else []

    if result.status == "no-ends":
        return [(f"No two releases of {axis} between {r[0]} and {r[-1]} could be run "
                 f"(failed: {', '.join(r[i] for i in result.failed) or 'none'}), so there is "
                 f"nothing to compare. See the paragraphs above for why.")]
    if result.old_index is None or result.new_index is None:
        return [(f"The budget ran out before both ends ran; failed so far: "
                 f"{', '.join(r[i] for i in result.failed) or 'none'}.")]
    old_i, new_i = result.old_index, result.new_index
    if (old_i, new_i) != (0, len(r) - 1):
        lines.append(f"The ends moved inward past releases that could not run: the search ran "
                     f"from {axis} {r[old_i]} to {r[new_i]}.")
    if result.status == "no-change":
        lines.append(f"No boundary in {axis} {r[old_i]}..{r[new_i]}: every selected cell is "
                     f"the same on both sides.")
        old, new = entries.get(old_i, {}), entries.get(new_i, {})
        for key in sorted(old.keys() | new.keys()):
            lines.append(f"  {cell_name(key)}")
            for i, side in ((old_i, old), (new_i, new)):
                entry = side.get(key)
                state = cell_state(entry).describe() if entry else ABSENT.describe()
                lines.append(f"    {axis} {r[i]:<10} {state}: {_counts(entry)}; expected "
                             f"{_expected(entry)}")
            lines.extend(rules_say(key))
        lines.append(f"  results: {axis} {r[old_i]}: {paths.get(old_i, '?')}")
        lines.append(f"           {axis} {r[new_i]}: {paths.get(new_i, '?')}")
        inside = sorted({next(i for i in range(old_i + 1, new_i + 1) if row[i] != row[old_i])
                         for row in predicted.values()
                         if any(row[i] != row[old_i] for i in range(old_i + 1, new_i + 1))})
        if inside:
            lines.append(f"  The scenario's rules expect a change inside the range (first at "
                         f"{axis} {', '.join(r[i] for i in inside)}) that the ends cannot show: "
                         f"bisect {axis} {r[old_i]} {r[inside[0]]} to check where it begins.")
        else:
            lines.append(f"  A change and its reversal between the ends would not show here: "
                         f"bisect a narrower range ({axis} {r[old_i]} "
                         f"{r[(old_i + new_i) // 2]}, say) to look inside.")
    else:
        head = {"found": f"First release where the selected cells changed: {axis} "
                         f"{r[result.boundaries[0].first_new] if result.boundaries else '?'}",
                "split": f"The cells split: they change at {len(result.boundaries)} different "
                         f"releases of {axis}",
                "unresolved": "Environments that failed hide where some cells change",
                "budget": "The budget ran out; the range narrowed so far"}[result.status]
        lines.append(head + ":")
        for b in result.boundaries:
            gap = left_between(left_out or {}, r[b.last_old], r[b.first_new])
            if b.exact:
                lines.append(f"{len(b.cells)} cell(s) change between {axis} {r[b.last_old]} "
                             f"and {r[b.first_new]} " + (
                                 f"(adjacent among the releases searched; left out between "
                                 f"them: {'; '.join(gap)}):" if gap else "(adjacent releases):"))
            else:
                lines.append(f"{len(b.cells)} cell(s) change after {axis} {r[b.last_old]}, at "
                             f"or before {r[b.first_new]}; between them "
                             + "; ".join(filter(None, [
                                 ("not yet tried: " + ", ".join(r[i] for i in b.untried))
                                 if b.untried else "",
                                 ("failed: " + ", ".join(r[i] for i in b.failed))
                                 if b.failed else ""])) + ":")
            for line in evidence(axis, b, r, entries, paths, new_i):
                lines.append(line)
                key = next((k for k in b.cells if line == f"  {cell_name(k)}"), None)
                if key is not None:
                    lines.extend(rules_say(key))
    for key, i in result.came_back():
        lines.append(f"Note: {cell_name(key)} is alike at both ends but was "
                     f"{(result.seen[i] or {}).get(key, ABSENT).describe()} at {axis} {r[i]}: "
                     f"it changes and changes back inside the range.")
    return lines


# --- the real steps ---------------------------------------------------------------------
@dataclass
class Step:
    """One environment of the search, as the JSON record keeps it."""

    release: str
    role: str
    env_id: str
    status: str = "pending"  # ran | build-failed | smoke-failed | run-failed
    seconds: dict[str, float] = field(default_factory=dict)
    results: str | None = None
    log: str | None = None
    report: str | None = None
    side: str | None = None
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "role": self.role, "env": self.env_id,
                "status": self.status, "side": self.side,
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                "results": self.results, "log": self.log, "report": self.report,
                "cells": self.cells}


@dataclass
class Plan:
    """Everything checked before building: the releases and how to run each one."""

    axis: str
    releases: list[str]
    skipped: dict[str, str]
    baseline: dict[str, str]
    pythons: dict[str, sources.PythonSource]
    pgbouncers: dict[str, pgbouncer_axis.PgBouncerSource]
    tests: int
    pytest_args: list[str]
    resolve: str
    cache_dir: Path | None
    workers: int
    env_timeout_s: float

    def combo(self, release: str) -> axes.Combination:
        return axes.Combination({**self.baseline, self.axis: release}, self.axis)


def _say(message: str, started: float) -> None:
    elapsed = int(time.monotonic() - started)
    print(f"[bisect {elapsed // 60}m{elapsed % 60:02d}s] {message}", file=sys.stderr, flush=True)


def _first_line(text: str) -> str:
    return next((line for line in str(text).splitlines() if line.strip()), "")[:400]


class Runner:
    """Builds, smoke-checks and runs one release's environment (the matrix's machinery)."""

    def __init__(self, plan: Plan, project_root: Path, out: Path, started: float,
                 deadline: float) -> None:
        self.plan, self.root, self.out = plan, project_root, out
        self.started, self.deadline = started, deadline
        self.steps: list[Step] = []
        self.entries: dict[int, dict[Key, dict[str, Any]]] = {}
        self.paths: dict[int, str] = {}
        self.on_step: Callable[[], None] = lambda: None

    def __call__(self, i: int) -> dict[Key, CellState] | None:
        plan, release = self.plan, self.plan.releases[i]
        combo = plan.combo(release)
        role = ("old end" if i == 0 else "new end" if i == len(plan.releases) - 1
                else "between")
        step = Step(release, role, combo.id)
        self.steps.append(step)
        try:
            return self._run(i, combo, step)
        finally:
            self.on_step()

    def _run(self, i: int, combo: axes.Combination, step: Step) -> dict[Key, CellState] | None:
        plan = self.plan
        python = plan.pythons[combo.versions["python"]]
        what = f"{plan.axis} {step.release}"
        logs = self.out / "logs"
        step.log = str(logs / f"{combo.id}.build.log")
        try:
            service = sources.env_services([combo], plan.pythons, plan.pgbouncers)[combo.id]
            resolution = command.resolutions_for([combo], plan.resolve,
                                                 plan.cache_dir)[combo.venv_id]
            _say(f"{what}: environment {combo.id} ({resolution.describe()})", self.started)
            env = containers.build_any(combo, python, self.root, root=plan.cache_dir,
                                       log_path=logs / f"{combo.id}.build.log",
                                       resolution=resolution)
        except HarnessError as exc:  # EnvBuildError, or the index did not answer
            step.status = "build-failed"
            step.report = (f"Environment {combo.id} ({what}) could not be built, so it is "
                           f"skipped and its neighbours are searched instead; it is not read "
                           f"as a change of behaviour. {_first_line(exc)} Log: {step.log}.")
            print(step.report, file=sys.stderr, flush=True)
            return None
        step.seconds["build"] = env.seconds
        _say(f"{what}: " + ("reused from cache" if env.reused else f"built in {env.seconds:.0f} s")
             + f" ({env.path})", self.started)
        smoke = smokes.check(env.python, self.root, logs / f"{combo.id}.smoke",
                             backend=service.backend, env=activated(env, service))
        step.seconds["smoke"] = smoke.seconds
        if not smoke.ok:
            step.status = "smoke-failed"
            pins = [f"{a} {combo.versions[a]}" for a in axes.PACKAGE_AXES]
            step.report = (smokes.paragraph(combo.id, smoke, env.installed,
                                            pins + [f"python {combo.versions['python']}"],
                                            resolution.describe(),
                                            latest=resolution.mode == resolutions.LATEST)
                           + f"\nSo {what} is skipped and its neighbours are searched "
                             f"instead; it is not read as a change of behaviour.")
            step.log = smoke.log
            print(step.report, file=sys.stderr, flush=True)
            return None
        progress = Progress(1, plan.tests, ids=[combo.id])
        timeout = max(60.0, min(plan.env_timeout_s, self.deadline - time.monotonic()))
        run = run_env(env, self.root, self.out / "runs", logs / f"{combo.id}.pytest.log",
                      workers=plan.workers, pytest_args=plan.pytest_args, progress=progress,
                      timeout_s=timeout, pgbouncer=service, facts={"smoke": smoke.to_dict()})
        step.seconds["run"] = run.seconds
        step.log = str(run.log)
        document = results_file.load(run.results) if run.results else None
        if document is None or not document.get("results"):
            step.status = "run-failed"
            why = run.error or "its results hold no cell: the -k selects nothing in it"
            step.report = (f"The scenarios of {combo.id} ({what}) did not run to a result, so "
                           f"it is skipped and its neighbours are searched instead: "
                           f"{_first_line(why)} Log: {run.log}.")
            print(step.report, file=sys.stderr, flush=True)
            return None
        step.status, step.results = "ran", str(run.results)
        self.entries[i] = {cell_key(e): e for e in document["results"]}
        self.paths[i] = str(run.results)
        states = states_of(document["results"])
        step.cells = {cell_name(k): {"outcome": s.outcome, "signatures": list(s.signatures),
                                     "tasks": self.entries[i][k].get("tasks"),
                                     "expected": self.entries[i][k].get("expected")}
                      for k, s in states.items()}
        _say(f"{what}: {len(states)} cell(s) in {run.seconds:.0f} s: "
             + "; ".join(f"{cell_name(k)} {s.describe()}" for k, s in states.items()),
             self.started)
        return states


# --- input ------------------------------------------------------------------------------
def _check_axis(axis: str, given: Mapping[str, str | None]) -> None:
    if axis not in BISECTABLE:
        known = "postgres is a service axis of majors (run harness matrix --postgres 15 17 " \
                "18 to compare them)" if axis == "postgres" else f"{axis!r} is not an axis"
        raise ConfigError(f"harness bisect cannot walk {axis!r}: {known}. It walks one of "
                          f"{', '.join(BISECTABLE)}, e.g. harness bisect celery 5.5.0 5.7.0 "
                          f"-k async_def_task.")
    if given.get(axis):
        raise ConfigError(f"--{axis} pins the axis being bisected; drop it (OLD and NEW give "
                          f"its versions) or bisect another axis.")


def check_selection(project_root: Path, pytest_args: Sequence[str]) -> int:
    """:func:`command.check_selection`, with a hint about how test ids spell names."""
    try:
        return command.check_selection(project_root, pytest_args)
    except ConfigError as exc:
        text = " ".join(pytest_args)
        if "No scenario test matches" in str(exc) and "_" in text:
            raise ConfigError(f"{exc} Test ids spell module names with underscores "
                              f"(test_async_def_task.py) and variant names with hyphens "
                              f"(async-def-ignore-result[...]): a variant name written with "
                              f"underscores matches nothing.") from exc
        raise


def _exact(axis: str, value: str, available: list[str]) -> str:
    """``5.5.x`` or ``latest`` as the release it names; anything else as written (checked
    by :func:`releases_between`)."""
    return index.resolve(axis, value, available) if value == "latest" or value.endswith(
        (".x", ".*")) else value


def _package_releases(axis: str, old: str, new: str, pre: bool,
                      lister: Callable[[str], list[str]], python: str,
                      cache_dir: Path | None) -> tuple[list[str], dict[str, str]]:
    """The releases of a package axis to search, and those left out (with why): no binary
    build of psycopg, or no build for the baseline's Python (requires-python, wheels)."""
    available = lister(axis)
    releases = releases_between(axis, available, _exact(axis, old, available),
                                _exact(axis, new, available), pre)
    skipped: dict[str, str] = {}
    companion = index.ALSO_NEEDS.get(axis)
    if companion:
        have = set(lister(companion))
        skipped.update({v: f"{companion} {v} (its binary build) is not on the index"
                        for v in releases if v not in have})
    env = environments.uv_environment()
    support = python_support.IndexPythonSupport(
        resolutions.index_url(env), (cache_dir or environments.cache_root()).parent
        / "python-support.json", cafile=env.get("SSL_CERT_FILE"))
    line = axes.python_minor(python)
    names = [axis, *([companion] if companion else [])]
    for v in releases:
        if v not in skipped and not all(support.supported(n, v, line) for n in names):
            skipped[v] = (f"the index has no build of it for Python {line} "
                          f"(requires-python or wheels)")
    for end in (releases[0], releases[-1]):
        if end in skipped:
            raise ConfigError(f"{axis} {end} is an end of the range but cannot be installed "
                              f"here: {skipped[end]}. Pick another end, or another Python with "
                              f"--python.")
    return [v for v in releases if v not in skipped], skipped


def _python_releases(old: str, new: str) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """The Python lines to search: those with an interpreter or an interpreter image here."""
    lines = python_lines_between(old, new)
    found: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for line in lines:
        try:
            found.update(sources.python_sources([line]))
        except ConfigError as exc:
            if line in (old, new):
                raise ConfigError(f"python {line} is an end of the range, but: {exc}") from exc
            skipped[line] = f"no interpreter and no interpreter image here ({_first_line(exc)})"
    return [v for v in lines if v not in skipped], skipped, found


def _pgbouncer_releases(old: str, new: str) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """The PgBouncer lines to search: the local binary's, the images' and the ones
    docker/build.sh makes; those that cannot run here are left out (ends: bad input)."""
    from harness import environment

    local = environment.pgbouncer_version()
    state = functools.lru_cache(maxsize=1)(pgbouncer_axis.docker_state)
    lines = set(pgbouncer_axis.BUILDABLE) | ({pgbouncer_axis.pgbouncer_line(local)} if local
                                             else set())
    lines |= {pgbouncer_axis.pgbouncer_line(tag.split(":", 1)[1])
              for tag in state().pgbouncer_images if ":" in tag}
    found: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    candidates = lines_between(lines, old, new, "pgbouncer")
    for line in candidates:
        try:
            found.update(pgbouncer_axis.pgbouncer_sources([line], docker=state))
        except ConfigError as exc:
            if line in (old, new):
                raise ConfigError(f"pgbouncer {line} is an end of the range, but: {exc}") from exc
            skipped[line] = _first_line(exc)
    return [v for v in candidates if v not in skipped], skipped, found


def _early_order(axis: str, old: str, new: str) -> None:
    """OLD before NEW, checked before the network when both are plain versions."""
    if axis == "python":
        python_lines_between(old, new)
    elif axis == "pgbouncer":
        lines_between((), old, new, axis)
    else:
        try:
            low, high = Version(old), Version(new)
        except InvalidVersion:
            return  # 5.5.x, latest: resolved on the index first
        if low >= high:
            releases_between(axis, (old, new), old, new)


def make_plan(project_root: Path, args: argparse.Namespace, pytest_extra: Sequence[str]) -> Plan:
    """Check every input and list the releases; build nothing.

    Raises:
        ConfigError: bad input, each in one paragraph that says what to do.
    """
    axis = args.axis
    given = {a: getattr(args, a, None) for a in axes.AXES}
    _check_axis(axis, given)
    if args.budget <= 0:
        raise ConfigError(f"--budget {args.budget:g} is not a time: give minutes > 0 (the "
                          f"default is {DEFAULT_BUDGET_MIN:g}).")
    _early_order(axis, args.old, args.new)
    resolutions.check_mode(args.resolve)
    # The selection next (seconds, no network): a -k that selects nothing costs nothing.
    pytest_args = (["-k", args.keyword] if args.keyword else []) + list(pytest_extra)
    tests = check_selection(project_root, pytest_args)
    # The other axes resolve exactly as harness matrix resolves its baseline (X.Y.x,
    # latest, local); the bisected axis's own baseline value is not used.
    spec = command.load_spec(project_root, args.matrix_file,
                             {a: ([v] if v else None) for a, v in given.items()}, full=False)
    lister = functools.lru_cache(maxsize=None)(index.index_versions)
    spec = index.resolve_spec(spec, lister)
    baseline = {a: spec.axes[a][0] for a in axes.present(spec.axes)}
    pythons: dict[str, Any] = {}
    pgbouncers: dict[str, Any] = {}
    if axis in axes.PACKAGE_AXES:
        releases, skipped = _package_releases(axis, args.old, args.new, args.pre, lister,
                                              baseline["python"], args.cache_dir)
    elif axis == "python":
        releases, skipped, pythons = _python_releases(args.old, args.new)
    else:
        releases, skipped, pgbouncers = _pgbouncer_releases(args.old, args.new)
    if axis != "python":
        pythons = sources.python_sources([baseline["python"]])
    if axis != "pgbouncer":
        pgbouncers = pgbouncer_axis.pgbouncer_sources([baseline["pgbouncer"]])
    # Every image an environment needs, checked now: missing at an end is bad input, a
    # release between is left out.
    for v in list(releases):
        try:
            sources.env_services([axes.Combination({**baseline, axis: v})], pythons, pgbouncers)
        except ConfigError as exc:
            if v in (releases[0], releases[-1]):
                raise
            skipped[v] = _first_line(exc)
            releases.remove(v)
    workers = max(1, min(args.workers or default_workers(), tests))
    return Plan(axis, releases, skipped, baseline, pythons, pgbouncers, tests, pytest_args,
                args.resolve, args.cache_dir, workers, args.env_timeout)


# --- the record -------------------------------------------------------------------------
def record(path: Path, plan: Plan, args: argparse.Namespace, steps: Sequence[Step],
           result: SearchResult | None, code: int | None, started_at: str,
           seconds: float) -> None:
    """Write the JSON record of every step so far (atomically: a reader never sees half)."""
    document: dict[str, Any] = {
        "kind": KIND, "schema": 1, "started": started_at, "seconds": round(seconds, 1),
        "axis": plan.axis, "old": plan.releases[0], "new": plan.releases[-1],
        "asked": [args.old, args.new], "pre": bool(args.pre),
        "keyword": args.keyword, "pytest_args": plan.pytest_args, "budget_min": args.budget,
        "others": {a: v for a, v in plan.baseline.items() if a != plan.axis},
        "resolve": plan.resolve, "releases": plan.releases, "skipped": plan.skipped,
        "steps": [s.to_dict() for s in steps], "exit_code": code}
    if result is not None:
        r = result.releases
        document["result"] = {
            "status": result.status,
            "old_end": r[result.old_index] if result.old_index is not None else None,
            "new_end": r[result.new_index] if result.new_index is not None else None,
            "moving_cells": [cell_name(k) for k in result.moving],
            "boundaries": [{"cells": [cell_name(k) for k in b.cells],
                            "last_old": r[b.last_old], "first_new": r[b.first_new],
                            "exact": b.exact, "untried": [r[i] for i in b.untried],
                            "failed": [r[i] for i in b.failed]} for b in result.boundaries],
            "failed": [r[i] for i in result.failed]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    tmp.replace(path)


# --- the command ------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    """``harness bisect AXIS OLD NEW [-k EXPR] [--pre] [--budget MINUTES] [axes] ...``."""
    p = sub.add_parser(
        "bisect", help="find the first release of one axis (between OLD and NEW) where the "
                       "selected scenario cells change",
        description="Walk the releases of AXIS from OLD to NEW (every other axis at the "
                    "matrix baseline, or as given), run the cells -k selects at each end, "
                    "then binary-search the releases between for the first one where a cell's "
                    "outcome word or signature set changes. Environments are the matrix's, "
                    "cached alike.",
        epilog="Arguments after -- go to pytest. Exit codes: 0 done (a boundary found, or "
               "none in the range); 2 bad input (nothing was built); 3 the budget ran out or "
               "an environment failed (the narrowed range is printed). Each step is written "
               "to OUT/<run id>/bisect.json.")
    p.add_argument("axis", metavar="AXIS", help=f"one of {', '.join(BISECTABLE)}")
    p.add_argument("old", metavar="OLD", help="the older release (python: 3.Y; pgbouncer: X.Y)")
    p.add_argument("new", metavar="NEW", help="the newer release")
    p.add_argument("-k", dest="keyword", metavar="EXPR",
                   help="the scenario tests to run (pytest -k), e.g. 'async_def_task and "
                        "async-def-ignore-result'")
    p.add_argument("--pre", action="store_true",
                   help="search pre-releases too (default: final releases only)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MIN, metavar="MINUTES",
                   help=f"stop starting environments after this long and print the range "
                        f"narrowed so far (exit 3); default {DEFAULT_BUDGET_MIN:g}")
    p.add_argument("--out", type=Path, default=Path("reports/bisect"),
                   help="output folder (default: reports/bisect)")
    p.add_argument("--cache-dir", type=Path, help="environment cache (default: the matrix's, "
                   "$HARNESS_CACHE_DIR/envs or ~/.cache/celery-async-sa-harness/envs)")
    group = p.add_argument_group("the other axes (default: the baseline of matrix.toml)")
    for axis in axes.AXES:
        group.add_argument(f"--{axis}", metavar="VERSION",
                           help="one version: exact, X.Y.x or latest" if axis in
                           axes.PACKAGE_AXES else "one value, as for harness matrix")
    p.add_argument("--matrix-file", type=Path, metavar="FILE",
                   help="the axes file whose baseline pins the other axes (default: matrix.toml)")
    p.add_argument("--resolve", choices=resolutions.MODES, default=resolutions.DATED,
                   help="how each environment resolves what it does not pin (as harness matrix)")
    p.add_argument("-n", "--workers", type=int, default=None,
                   help="pytest-xdist processes (default: as harness matrix, at most one per "
                        "selected test)")
    p.add_argument("--env-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="bound on one environment's scenario run (default: 3600)")


def bisect_command(root: Path, args: argparse.Namespace, pytest_extra: list[str]) -> int:
    """``harness bisect``: check, then search, then print and record the answer."""
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    plan = make_plan(root, args, pytest_extra)
    out = (args.out / results_file.new_run_id()).resolve()
    path = out / RECORD
    deadline = started + args.budget * 60
    r = plan.releases
    print(f"harness bisect {plan.axis} {r[0]} .. {r[-1]}: {len(r)} release(s) to search"
          f" ({'with' if args.pre else 'final releases only, no'} pre-releases): {' '.join(r)}")
    for v, why in plan.skipped.items():
        print(f"  left out: {plan.axis} {v}: {why}")
    print("  other axes: " + ", ".join(f"{a} {v}" for a, v in plan.baseline.items()
                                        if a != plan.axis))
    print(f"  {plan.tests} scenario test(s) per environment ({' '.join(plan.pytest_args) or 'all'}"
          f"), -n {plan.workers}; budget {args.budget:g} min; record {path}", flush=True)
    runner = Runner(plan, root, out, started, deadline)
    runner.on_step = lambda: record(path, plan, args, runner.steps, None, None, started_at,
                                    time.monotonic() - started)
    interrupts.install()
    try:
        result = _search_with_containers(plan, runner, deadline)
    except KeyboardInterrupt:
        signum = interrupts.received() or signal.SIGINT
        record(path, plan, args, runner.steps, None, 128 + signum, started_at,
               time.monotonic() - started)
        _say(f"interrupted by {signal.Signals(signum).name}; the steps so far are in {path}",
             started)
        return 128 + signum
    old, new = ((result.seen.get(result.old_index) or {}) if result.old_index is not None
                else {}, (result.seen.get(result.new_index) or {})
                if result.new_index is not None else {})
    for step, i in zip(runner.steps, result.order):
        step.role = ("old end" if result.old_index is None or i <= result.old_index else
                     "new end" if result.new_index is None or i >= result.new_index
                     else "between")
        step.side = classify(result.seen.get(i), old, new, result.moving) \
            if result.moving else None
    code = EXIT_DONE if result.status in ("found", "split", "no-change") else EXIT_UNFINISHED
    if result.failed:
        code = EXIT_UNFINISHED
    elapsed = time.monotonic() - started
    record(path, plan, args, runner.steps, result, code, started_at, elapsed)
    print("\nsteps:")
    for n, step in enumerate(runner.steps, start=1):
        spent = " + ".join(f"{k} {v:.0f}s" for k, v in step.seconds.items())
        print(f"  {n}. {plan.axis} {step.release:<10} {step.role:<8} {step.status:<12} "
              f"{step.side or '':<6} {spent}")
    print()
    cells = sorted({k for e in runner.entries.values() for k in e})
    predicted = rule_predictions(root, plan.axis, r, lambda v: plan.combo(v).versions,
                                 _pgbouncer_found(plan), cells)
    for line in summary(plan.axis, result, runner.entries, runner.paths, plan.skipped,
                        predicted):
        print(line)
    if result.failed:
        print(f"{len(result.failed)} release(s) gave no answer (an environment that failed, "
              f"or a HARNESS_ERROR cell; see above): "
              + ", ".join(f"{plan.axis} {r[i]}" for i in result.failed))
    print(f"{len(runner.steps)} environment(s) in {int(elapsed) // 60}m{int(elapsed) % 60:02d}s; "
          f"record: {path}")
    return code


def _pgbouncer_found(plan: Plan) -> str | None:
    """The PgBouncer version the baseline's environments run (for the rules), if known."""
    source = plan.pgbouncers.get(plan.baseline.get("pgbouncer", ""))
    return source.found if source else None


@containers.removing_containers
def _search_with_containers(plan: Plan, runner: Runner, deadline: float) -> SearchResult:
    """The search, with every container a step starts removed when it ends."""
    return search(plan.releases, runner, out_of_budget=lambda: time.monotonic() >= deadline,
                  report=lambda line: _say(f"{plan.axis} {line}", runner.started))
