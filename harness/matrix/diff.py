"""Regression mode: which cells changed outcome between two matrices.

Responsibility: pair the environments of an old and a new matrix, compare each
cell (scenario x variant x driver) of each pair, and say what moved.

Pairing, in order: the same environment id (same versions); then the one
environment whose versions agree wherever both sides know them (a results file of a
run that started no PgBouncer has ``pgb?`` in its id); then the same slot
(``baseline`` with ``baseline``, the ``sqlalchemy`` variation with the
``sqlalchemy`` variation, so bumping a version in matrix.toml compares the new
release with the old one); then, when exactly one environment is left on each
side, those two (two single results.json files: "my venv before and after the
upgrade"). Cells present on one side only are listed but do not count as
changes: a run with ``-k`` is not a regression of the scenarios it skipped.

A carried cell (``carried_from``, see :mod:`harness.matrix.carry`) is compared like any
other, and the change says which environment really observed it: a cell carried from
the baseline moves with the baseline, not with the environment it stands in for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.matrix.merge import axis_values, cell_key


@dataclass(frozen=True)
class Change:
    """One cell whose outcome differs between the old and the new matrix."""

    scenario: str
    variant: str
    driver: str
    old_env: str
    new_env: str
    old: str
    new: str
    new_error: str
    # The environment that really observed the old / new cell, when it was carried.
    old_carried_from: str | None = None
    new_carried_from: str | None = None


@dataclass
class Diff:
    """Everything a comparison found; ``changes`` decides the exit code."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    only_old_envs: list[str] = field(default_factory=list)
    only_new_envs: list[str] = field(default_factory=list)
    only_old_cells: int = 0
    only_new_cells: int = 0
    verdict_changes: list[str] = field(default_factory=list)


def pair_environments(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(old id, new id) pairs, by id, then slot, then the single leftover on each side."""
    old_envs = {e["id"]: e for e in old["environments"]}
    new_envs = {e["id"]: e for e in new["environments"]}
    pairs = [(eid, eid) for eid in old_envs if eid in new_envs]
    left_old = [e for e in old_envs if e not in new_envs]
    left_new = [e for e in new_envs if e not in old_envs]
    for eid in list(left_old):
        mine = axis_values(old_envs[eid])
        same = [n for n in left_new if _agree(mine, axis_values(new_envs[n]))]
        if len(same) == 1 and sum(_agree(axis_values(old_envs[o]), axis_values(
                new_envs[same[0]])) for o in left_old) == 1:
            pairs.append((eid, same[0]))
            left_old.remove(eid)
            left_new.remove(same[0])
    for eid in list(left_old):
        slot = old_envs[eid].get("slot")
        same = [n for n in left_new if new_envs[n].get("slot") == slot and slot != "product"]
        if len(same) == 1:
            pairs.append((eid, same[0]))
            left_old.remove(eid)
            left_new.remove(same[0])
    if len(left_old) == 1 and len(left_new) == 1:
        pairs.append((left_old[0], left_new[0]))
    return pairs


def _agree(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """The same versions on every axis both know (``?``: unknown, agrees with anything)."""
    return all(a[axis] == b[axis] or "?" in (a[axis], b[axis]) for axis in a)


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> Diff:
    """Compare two matrix documents (see :mod:`harness.matrix.merge`)."""
    diff = Diff(pairs=pair_environments(old, new))
    paired_old = {o for o, _ in diff.pairs}
    paired_new = {n for _, n in diff.pairs}
    diff.only_old_envs = [e["id"] for e in old["environments"] if e["id"] not in paired_old]
    diff.only_new_envs = [e["id"] for e in new["environments"] if e["id"] not in paired_new]
    for old_id, new_id in diff.pairs:
        before = {cell_key(r): r for r in old["results"] if r["env"] == old_id}
        after = {cell_key(r): r for r in new["results"] if r["env"] == new_id}
        diff.only_old_cells += len(before.keys() - after.keys())
        diff.only_new_cells += len(after.keys() - before.keys())
        for key in sorted(before.keys() & after.keys()):
            a, b = before[key], after[key]
            if a["outcome"] != b["outcome"]:
                diff.changes.append(Change(*key, old_id, new_id, a["outcome"], b["outcome"],
                                           b.get("first_error") or b.get("reason") or "",
                                           a.get("carried_from"), b.get("carried_from")))
    old_verdicts = {(v["scenario"], v["driver"]): v for v in old.get("verdicts", [])}
    for v in new.get("verdicts", []):
        was = old_verdicts.get((v["scenario"], v["driver"]))
        if was and was["overall"] != v["overall"]:
            diff.verdict_changes.append(f"{v['scenario']} [{v['driver']}]: the claim's verdict "
                                        f"was '{was['overall']}', is '{v['overall']}'")
    return diff


def render(diff: Diff) -> str:
    """Plain text for the terminal and CI logs: every changed cell, one per line."""
    lines = []
    for old_id, new_id in diff.pairs:
        lines.append(f"compared {old_id}" + ("" if old_id == new_id else f" -> {new_id}"))
    if diff.changes:
        lines.append(f"\n{len(diff.changes)} cell(s) changed outcome:")
        for c in diff.changes:
            where = c.new_env if c.old_env == c.new_env else f"{c.old_env} -> {c.new_env}"
            lines.append(f"  {c.scenario} / {c.variant} / {c.driver} [{where}]: "
                         f"{c.old} -> {c.new}")
            for side, source in (("old", c.old_carried_from), ("new", c.new_carried_from)):
                if source:
                    lines.append(f"      {side} cell carried from {source} (observed there, "
                                 f"not re-run in this environment)")
            if c.new_error:
                lines.append(f"      now: {c.new_error.splitlines()[0][:160]}")
    else:
        lines.append("\nNo cell changed outcome.")
    lines.extend(diff.verdict_changes)
    for label, ids in (("only in the old matrix", diff.only_old_envs),
                       ("only in the new matrix", diff.only_new_envs)):
        if ids:
            lines.append(f"environments {label} (not compared): {', '.join(ids)}")
    if diff.only_old_cells or diff.only_new_cells:
        lines.append(f"cells run on one side only (not compared): {diff.only_old_cells} old, "
                     f"{diff.only_new_cells} new")
    return "\n".join(lines)
