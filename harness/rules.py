"""The catalogue of version rules, and which recorded runs observed each branch.

Responsibility: list every branch of every version rule and ``requires=`` check of
every scenario (per variant and driver), and match the branches against recorded
runs (matrix.json or results.json): a branch is *observed* when a cell of a run in an
environment where that branch is the one chosen (the rule evaluated on the versions
the run recorded) had the branch's outcome, *contradicted* when such a cell had
another, and *unobserved* when no run fell on it.

``harness rules`` prints the catalogue; ``harness rules --record`` writes
``docs/matrix/rule-observations.json``, which ``tests/test_rules.py`` holds against
the code, so a branch cannot change without its observations being recorded again.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import pkgutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.conditions import Condition, RunEnv, describe
from harness.errors import ConfigError
from harness.outcome import Outcome
from harness.recorded_runs import Cell, cells_of, default_sources, load_cells, shown
from harness.scenario import Expected, Requirement, Rule, Scenario, Variant

RECORD = Path("docs/matrix/rule-observations.json")
NOT_APPLICABLE = Expected(Outcome.NOT_APPLICABLE)


@dataclass(frozen=True)
class RuleBranch:
    """One way a variant's expectation can go for one driver, and where."""

    scenario: str
    variant: str
    driver: str
    path: tuple[int, ...]  # the branch index at each rule (a requirement first: 0 n/a, 1 runs)
    conditions: tuple[Condition, ...]
    expected: Expected
    why: str
    source: str

    @property
    def condition(self) -> str:
        return describe(self.conditions)

    @property
    def cell(self) -> str:
        return f"{self.scenario}/{self.variant}/{self.driver}"

    @property
    def id(self) -> str:
        return f"{self.cell}: {self.condition}"

    @property
    def fingerprint(self) -> str:
        said = [self.condition, self.expected.outcome.value, list(self.expected.signatures)]
        return hashlib.sha256(json.dumps(said).encode()).hexdigest()[:12]


def _leaves(expect: Expected | Rule, path: tuple[int, ...], conds: tuple[Condition, ...],
            why: str | None, source: str) -> list[tuple]:
    if isinstance(expect, Expected):
        return [(path, conds, expect, expect.why if why is None else why, source)]
    found = []
    for index, branch in enumerate(expect.branches):
        found += _leaves(branch.expect, path + (index,), conds + expect.conditions_of(index),
                         why if why is not None else branch.why,
                         branch.source or expect.source or source)
    return found


def _requirement(variant: Variant, driver: str) -> Requirement | None:
    req = variant.requires
    return req if isinstance(req, Requirement) and req.applies_to(driver) else None


def _expectation(variant: Variant, driver: str) -> Expected | Rule:
    expect = variant.expect
    return expect[driver] if isinstance(expect, Mapping) else expect


def branches_of(scenario: Scenario) -> list[RuleBranch]:
    """Every branch of every rule and requirement in ``scenario``, nested rules flattened
    (a variant and driver with a plain expectation and no requirement has none)."""
    found = []
    for variant in scenario.variants:
        for driver in scenario.drivers:
            if driver in variant.not_for:
                continue
            expect, req = _expectation(variant, driver), _requirement(variant, driver)
            if req is None and isinstance(expect, Expected):
                continue
            leaves = _leaves(expect, (), (), None, "")
            if req is not None:
                leaves = [((0,), (req.condition.negate(),), NOT_APPLICABLE, req.why, req.source)] \
                    + [((1,) + p, (req.condition,) + c, e, w, s or req.source)
                       for p, c, e, w, s in leaves]
            found += [RuleBranch(scenario.id, variant.name, driver, *leaf) for leaf in leaves]
    return found


def chosen_path(variant: Variant, driver: str, env: RunEnv) -> tuple[int, ...]:
    """The path of the branch ``env`` takes (matches a :class:`RuleBranch`'s ``path``)."""
    path: tuple[int, ...] = ()
    req = _requirement(variant, driver)
    if req is not None:
        if not req.condition.holds(env):
            return (0,)
        path = (1,)
    expect = _expectation(variant, driver)
    while isinstance(expect, Rule):
        index = expect.choose(env)
        path += (index,)
        expect = expect.branches[index].expect
    return path


def catalogue(root: Path | None = None) -> list[Scenario]:
    """Every scenario (the ``scenarios/test_*.py`` modules of the checkout at ``root``), by id."""
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import scenarios as package

    found = [importlib.import_module(f"scenarios.{info.name}").SCENARIO
             for info in pkgutil.iter_modules(package.__path__) if info.name.startswith("test_")]
    return sorted(found, key=lambda s: s.id)


# -- observation ----------------------------------------------------------------------


@dataclass
class Observation:
    branch: RuleBranch
    seen: list[dict] = field(default_factory=list)
    contradicted: list[dict] = field(default_factory=list)
    # An n/a branch (a requires= check) whose cell ran and had an outcome: a run made
    # before the check existed, whose outcome is why it exists. Neither an observation
    # of the n/a nor a contradiction of it.
    ran_before: list[dict] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.contradicted:
            return "contradicted"
        return "observed" if self.seen else "unobserved"


def _agrees(expected: Expected, cell: Cell) -> bool:
    if cell.outcome != expected.outcome.value:
        return False
    if expected.outcome is Outcome.REPRODUCED and cell.signatures:
        return bool(set(cell.signatures) & set(expected.signatures))
    return True


def observe(all_scenarios: list[Scenario], cells: list[Cell]) -> list[Observation]:
    """Every branch of ``all_scenarios`` with the cells that observed or contradicted it."""
    found: dict[str, list[Observation]] = {}
    by_path: dict[tuple[str, tuple[int, ...]], Observation] = {}
    variants: dict[str, Variant] = {}
    for scenario in all_scenarios:
        for branch in branches_of(scenario):
            obs = Observation(branch)
            found.setdefault(branch.cell, []).append(obs)
            by_path[(branch.cell, branch.path)] = obs
            variants[branch.cell] = scenario.variant(branch.variant)
    for cell in cells:
        key = f"{cell.scenario}/{cell.variant}/{cell.driver}"
        if key not in found or cell.outcome in (Outcome.HARNESS_ERROR.value, ""):
            continue  # no rule here, or the harness could not run it: no evidence
        conds = [c for o in found[key] for c in o.branch.conditions]
        if not all(cell.env.knows(c) for c in conds):
            continue  # the run did not record what the rule looks at
        obs = by_path[(key, chosen_path(variants[key], cell.driver, cell.env.run_env(cell.driver)))]
        evidence = {"file": cell.env.file, "env": cell.env.id, "date": cell.env.date,
                    "versions": cell.env.versions(obs.branch.conditions, cell.driver)}
        if _agrees(obs.branch.expected, cell):
            if evidence not in obs.seen:
                obs.seen.append(evidence)
        else:
            evidence["outcome"] = cell.outcome + (
                f" ({' or '.join(cell.signatures)})" if cell.signatures else "")
            if obs.branch.expected.outcome is Outcome.NOT_APPLICABLE:
                obs.ran_before.append(evidence)
            else:
                obs.contradicted.append(evidence)
    return [o for group in found.values() for o in group]


# -- output ---------------------------------------------------------------------------


def _evidence_text(items: list[dict], limit: int = 2) -> str:
    """Evidence grouped by file: how many environments, their dates and versions, and
    the first few ids."""
    by_file: dict[str, list[dict]] = {}
    for item in items:
        by_file.setdefault(item["file"], []).append(item)
    parts = []
    for file, group in by_file.items():
        days = sorted({item["date"][:10] for item in group})
        versions = sorted({", ".join(f"{k} {v}" for k, v in item["versions"].items())
                           for item in group})
        saw = sorted({item["outcome"] for item in group if "outcome" in item})
        ids = [item["env"] for item in group[:limit]]
        more = f" and {len(group) - limit} more" if len(group) > limit else ""
        parts.append(f"{len(group)} environment{'s' if len(group) > 1 else ''} of {file} "
                     f"({', '.join(days)}; {'; '.join(versions)})"
                     + (f" saw {' / '.join(saw)}" if saw else "")
                     + f": {', '.join(ids)}{more}")
    return "; ".join(parts)


def listing(observations: list[Observation], *, only_unobserved: bool = False,
            why: bool = False) -> list[str]:
    """The branches, grouped by scenario / variant / driver, each with its state and
    evidence (and with ``why``, its reason and source)."""
    lines, last = [], None
    for obs in observations:
        if only_unobserved and obs.state != "unobserved":
            continue
        branch = obs.branch
        if branch.cell != last:
            lines.append(f"{branch.scenario} / {branch.variant} / {branch.driver}")
            last = branch.cell
        lines.append(f"  {obs.state:<13} {branch.condition} -> {branch.expected.describe()}")
        if why:
            lines += [f"{'':16}{label}: {text}" for label, text in
                      (("why", branch.why), ("source", branch.source)) if text]
        if obs.contradicted:
            lines.append(f"{'':16}contradicted in {_evidence_text(obs.contradicted)}")
        if obs.seen:
            lines.append(f"{'':16}observed in {_evidence_text(obs.seen)}")
        if obs.ran_before:
            lines.append(f"{'':16}ran before this requirement in "
                         f"{_evidence_text(obs.ran_before)}")
    return lines


def summary(observations: list[Observation], files: list[str]) -> str:
    states = [o.state for o in observations]
    return (f"{len(states)} branches: {states.count('observed')} observed, "
            f"{states.count('contradicted')} contradicted, {states.count('unobserved')} "
            f"unobserved (from {', '.join(files) or 'no recorded run'})")


def record(observations: list[Observation], files: list[str]) -> dict:
    """The document ``--record`` writes: every branch by id, with its fingerprint and state."""
    return {
        "schema": 1,
        "about": "Written by 'harness rules --record': every branch of every version rule and "
                 "requires= check, and the recorded runs that observed it. tests/test_rules.py "
                 "fails when a branch in the code is missing here or says something else.",
        "sources": files,
        "branches": [
            {"id": o.branch.id, "fingerprint": o.branch.fingerprint,
             "condition": o.branch.condition, "expect": o.branch.expected.describe(),
             "why": o.branch.why, "source": o.branch.source, "state": o.state,
             "observed": o.seen, "contradicted": o.contradicted,
             "ran_before": o.ran_before}
            for o in sorted(observations, key=lambda o: o.branch.id)],
    }


def dump_record(doc: dict) -> str:
    """The record as JSON a diff reads well: one line per piece of evidence."""
    def value(v: Any, indent: str) -> str:
        if isinstance(v, list) and v and isinstance(v[0], dict) and "file" in v[0]:
            inner = indent + "  "
            return "[\n" + ",\n".join(inner + json.dumps(e) for e in v) + "\n" + indent + "]"
        if isinstance(v, list) and v and isinstance(v[0], dict):
            inner = indent + " "
            return "[\n" + ",\n".join(inner + obj(e, inner) for e in v) + "\n" + indent + "]"
        return json.dumps(v)

    def obj(d: dict, indent: str) -> str:
        inner = indent + " "
        return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {value(v, inner)}"
                                    for k, v in d.items()) + "\n" + indent + "}"

    return obj(doc, "") + "\n"


def record_problems(recorded: dict, branches: list[RuleBranch]) -> list[str]:
    """What the record and the code disagree on, one line each (empty: they agree)."""
    have = {b["id"]: b["fingerprint"] for b in recorded.get("branches", [])}
    problems = [f"not in the record: {b.id} -> {b.expected.describe()}"
                for b in branches if b.id not in have]
    problems += [f"changed since it was recorded: {b.id} -> {b.expected.describe()}"
                 for b in branches if b.id in have and have[b.id] != b.fingerprint]
    current = {b.id for b in branches}
    problems += [f"in the record, no longer in the code: {i}" for i in have if i not in current]
    return problems


def record_out_of_date(recorded: dict, root: Path) -> list[str]:
    """Where the record's observations differ from what the runs in docs/matrix/ show
    now (a run added or replaced without ``--record``), one line each."""
    paths = default_sources(root)
    files = [shown(p, root) for p in paths]
    if files != recorded.get("sources"):
        made_from = recorded.get("sources")
        return [f"the record was made from {made_from}; docs/matrix/ now holds {files}"]
    fresh = record(observe(catalogue(root), load_cells(paths, root)), files)["branches"]
    old = {b["id"]: b for b in recorded.get("branches", [])}
    keys = ("state", "observed", "contradicted", "ran_before")
    return [f"{b['id']}: recorded {old[b['id']]['state']}, the runs show {b['state']}"
            + ("" if old[b["id"]]["state"] != b["state"] else " (other evidence)")
            for b in fresh if b["id"] in old
            and any(old[b["id"]].get(k) != b[k] for k in keys)]


def legend_lines(matrix: dict, recorded: dict | None = None) -> list[str]:
    """Legend lines for a rendered matrix: per scenario in it, the rule branches that no
    cell of this matrix observed (nor, with ``recorded``, the record of earlier runs).
    Variants that share a branch's condition and outcome are named together, with their
    drivers when not every driver of the scenario has the branch."""
    cells = cells_of(matrix, "this matrix")
    chosen = [s for s in catalogue() if s.id in {c.scenario for c in cells}]
    drivers = {s.id: set(s.drivers) for s in chosen}
    known = {b["id"] for b in (recorded or {}).get("branches", []) if b.get("state") == "observed"}
    groups: dict[str, dict[tuple[str, str], dict[str, set[str]]]] = {}
    for obs in observe(chosen, cells):
        b = obs.branch
        if obs.state == "unobserved" and b.id not in known:
            said = (b.condition, b.expected.describe())
            groups.setdefault(b.scenario, {}).setdefault(said, {}) \
                .setdefault(b.variant, set()).add(b.driver)
    lines = []
    for scenario, by_said in sorted(groups.items()):
        items = []
        for (condition, expect), variants in by_said.items():
            names = [name + ("" if ds == drivers[scenario] else f" [{'/'.join(sorted(ds))}]")
                     for name, ds in variants.items()]
            items.append(f"{', '.join(names)} where {condition}: {expect}")
        lines.append(f"Rule branches no run observed, {scenario}: " + "; ".join(items))
    return lines


# -- command --------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "rules", help="list every branch of every version rule and whether a recorded run "
        "observed it",
        description="Every branch of every version rule and requires= check of every "
        "scenario, with the recorded runs that observed it (by default docs/matrix/"
        "matrix.json and docs/matrix/runs/*.json).")
    parser.add_argument("--from", dest="sources", nargs="+", type=Path, metavar="FILE",
                        help="matrix.json or results.json files to match instead")
    parser.add_argument("-k", dest="keyword", default="",
                        help="only branches whose scenario/variant/driver contains this text")
    parser.add_argument("--unobserved", action="store_true",
                        help="list only the branches no recorded run observed")
    parser.add_argument("--why", action="store_true",
                        help="show each branch's reason and source")
    parser.add_argument("--record", action="store_true",
                        help=f"write {RECORD} (the record tests/test_rules.py checks)")


def rules_command(root: Path, args: argparse.Namespace) -> int:
    paths = [p if p.is_absolute() else Path.cwd() / p for p in (args.sources or [])] \
        or default_sources(root)
    if not paths:
        raise ConfigError(
            f"no recorded run in {root / 'docs/matrix'} (matrix.json, runs/*.json): copy a "
            f"matrix.json written by 'harness matrix' there, or pass files with --from.")
    cells = load_cells(paths, root)
    files = [shown(p, root) for p in paths]
    observations = observe(catalogue(root), cells)
    if args.record:
        out = root / RECORD
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(dump_record(record(observations, files)))
        print(f"wrote {RECORD}: {summary(observations, files)}")
        return 0
    chosen = [o for o in observations if args.keyword in o.branch.cell]
    for line in listing(chosen, only_unobserved=args.unobserved,
                        why=getattr(args, "why", False)):
        print(line)
    print(summary(chosen, files))
    return 0
