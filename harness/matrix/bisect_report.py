"""What ``harness bisect`` says: the boundaries with their evidence, for the terminal.

Responsibility: turn a :class:`~harness.matrix.bisect_search.SearchResult` and the
results.json entries of the releases that ran into lines for the terminal
(:func:`summary`): each boundary with both sides' outcome, signatures, counts and
expectation (:func:`evidence`), the releases left out inside it (:func:`left_between`),
and where the scenarios' own version rules put their boundaries
(:func:`rule_predictions`, :func:`segments`). Nothing is run here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.matrix import axes, index
from harness.matrix.bisect_search import (
    ABSENT,
    Boundary,
    Key,
    SearchResult,
    cell_name,
    cell_state,
)


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
