"""Carried cells: which axes a cell depends on, which cells each environment runs, and
how a carried cell is merged, rendered, diffed and written.

Pure logic, plus pytest collections of the scenarios (no services, no workers): the
axes every real scenario's cells depend on are probed against their own rules.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.matrix import axes, carry, diff, merge, pairwise, render_html, render_md, table
from harness.matrix.command import write_outputs
from harness.scenario import (
    Role,
    RunEnv,
    Scenario,
    StackSpec,
    Variant,
    Workload,
    before_package,
    clean,
    needs,
    needs_pgbouncer,
    package,
    reproduces,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]
MATRIX = axes.load_toml(ROOT / "matrix.toml")
DIRECT = ("python", "sqlalchemy", "celery")


def scenario(*variants: Variant, pgbouncer: bool = False) -> Scenario:
    return Scenario(id="s", app="scenarios.apps.echo_through_pgbouncer",
                    workload=Workload(task="t"), signatures=(), claim=None,
                    variants=variants, stack=StackSpec(pgbouncer=pgbouncer))


def variant(name: str = "v", **kwargs: Any) -> Variant:
    return Variant(name, Role.CONTROL, {}, **{"expect": clean(), **kwargs})


# --- which axes a cell depends on ---------------------------------------------------------
def test_a_direct_cell_depends_on_its_driver_only_among_the_driver_and_pgbouncer_axes() -> None:
    s = scenario(variant())
    for driver, other in (("asyncpg", "psycopg"), ("psycopg", "asyncpg")):
        found = carry.cell_axes(s, s.variants[0], driver)
        assert set(found) == {*DIRECT, "postgres", driver}
        assert other not in found and "pgbouncer" not in found
        assert all(found.values()), "every dependency says why"


def test_the_stack_decides_pgbouncer_and_a_variant_stack_wins() -> None:
    through = StackSpec(pgbouncer=True)
    s = scenario(variant("plain"), variant("via", stack=through))
    assert "pgbouncer" not in carry.cell_axes(s, s.variants[0], "psycopg")
    assert "pgbouncer" in carry.cell_axes(s, s.variants[1], "psycopg")
    direct_variant = variant("direct", stack=StackSpec())
    s2 = scenario(variant("inherits"), direct_variant, pgbouncer=True)
    assert "pgbouncer" in carry.cell_axes(s2, s2.variants[0], "asyncpg")
    assert "pgbouncer" not in carry.cell_axes(s2, direct_variant, "asyncpg")


def test_rules_and_requirements_add_the_axes_they_read() -> None:
    rule = before_package("asyncpg", "0.31", reproduces("x"), clean(), why="w")
    s = scenario(variant("r", expect={"psycopg": rule, "asyncpg": clean()}),
                 variant("q", requires=needs_pgbouncer("1.21", "tracking")),
                 variant("a", requires=needs(package("asyncpg") >= "0.31", "safe",
                                             drivers=("asyncpg",))))
    assert "asyncpg" in carry.cell_axes(s, s.variants[0], "psycopg")
    assert "pgbouncer" in carry.cell_axes(s, s.variants[1], "psycopg")
    # A requirement for the other driver only lets a psycopg cell run everywhere.
    assert "asyncpg" not in carry.cell_axes(s, s.variants[2], "psycopg")


def test_declarations_add_or_remove_axes_with_a_reason() -> None:
    s = scenario(variant("a"), variant("b"), pgbouncer=True)
    declared = {"*": carry.Declared(depends_on=("psycopg",), why="its task calls psycopg"),
                "b": carry.Declared(independent_of=("pgbouncer",), why="connects directly")}
    assert "psycopg" in carry.cell_axes(s, s.variants[0], "asyncpg", declared)
    assert "pgbouncer" in carry.cell_axes(s, s.variants[0], "asyncpg", declared)
    assert "pgbouncer" not in carry.cell_axes(s, s.variants[1], "asyncpg", declared)
    with pytest.raises(ConfigError, match="without a reason"):
        carry.cell_axes(s, s.variants[0], "asyncpg", {"*": carry.Declared(("psycopg",))})
    with pytest.raises(ConfigError, match="not an axis"):
        carry.cell_axes(s, s.variants[0], "asyncpg", {"*": carry.Declared(("kombu",), why="x")})


def _scenario_modules() -> list[Any]:
    return [importlib.import_module(f"scenarios.{p.stem}")
            for p in sorted((ROOT / "scenarios").glob("test_*.py"))]


def _rules(obj: Any, found: list[Any]) -> list[Any]:
    if isinstance(getattr(obj, "seen", None), set) and obj not in found:
        found.append(obj)
    if isinstance(obj, dict):
        for value in obj.values():
            _rules(value, found)
    for child in [*(getattr(obj, "children", ()) or ()),
                  *(getattr(b, "expect", None) for b in getattr(obj, "branches", ()) or ())]:
        _rules(child, found)
    return found


def _probe(v: Variant, driver: str, axis: str, value: str | None) -> tuple[Any, Any]:
    packages = {a: MATRIX.axes[a][0] for a in axes.PACKAGE_AXES}
    pgbouncer: str | None = "1.18.0"
    if axis == "pgbouncer":
        pgbouncer = value
    else:
        packages[axis] = str(value)
    env = RunEnv(driver=driver, python=(3, 13), packages=packages, pgbouncer=pgbouncer)
    expected = resolve(v.expect, env) if not isinstance(v.expect, dict) or driver in v.expect \
        else None
    return expected, v.requires(env) if v.requires else None


PROBES = {"asyncpg": [*MATRIX.axes["asyncpg"], "0.27.0", "0.29.0", "0.31.0"],
          "psycopg": [*MATRIX.axes["psycopg"], "3.1.20", "3.2.0", "3.3.0"],
          "pgbouncer": ["1.18.0", "1.21.0", "1.24.1", "1.26.0", None]}


def test_no_rule_of_a_real_scenario_reads_an_axis_its_cell_is_said_to_be_free_of() -> None:
    """The guard on the defaults: for every scenario cell, every value (the matrix's and
    each side of the boundaries in use) of a driver or PgBouncer axis the cell is free of
    gives the same expectation and the same n/a reason."""
    modules = _scenario_modules()
    rules = [r for m in modules for v in m.SCENARIO.variants for r in _rules(v.expect, [])
             + _rules(v.requires, [])]
    saved = [(r, set(r.seen)) for r in rules]  # the rules' branch coverage stays theirs
    wrong, checked = [], 0
    try:
        for module in modules:
            s = module.SCENARIO
            for v in s.variants:
                for driver in s.drivers:
                    if driver in v.not_for:
                        continue
                    free = set(PROBES) - set(carry.cell_axes(
                        s, v, driver, getattr(module, "CELL_AXES", None)))
                    for axis in sorted(free):
                        seen = {repr(_probe(v, driver, axis, value)) for value in PROBES[axis]}
                        checked += 1
                        if len(seen) > 1:
                            wrong.append(f"{s.id} / {v.name} / {driver} reads {axis}")
    finally:
        for rule, seen in saved:
            rule.seen.clear()
            rule.seen.update(seen)
    assert checked > 300
    assert not wrong, "cells said to be free of an axis their rules read:\n" + "\n".join(wrong)


def _collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "scenarios/", "--collect-only",
                           "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_plugin_lists_cells_with_their_axes_and_skips_the_listed_ones(tmp_path: Path
                                                                          ) -> None:
    listed = tmp_path / "cells.json"
    out = _collect("-k", "pgbouncer_prepared_psycopg or event_loop_helpers",
                   "--list-cells", str(listed))
    assert out.returncode == 0, out.stdout + out.stderr
    cells = carry.read_cells(listed)
    assert len(cells) == sum("::" in line for line in out.stdout.splitlines())
    through = [c for c in cells if c.scenario == "pgbouncer-prepared-psycopg"]
    helpers = [c for c in cells if c.scenario == "event-loop-helpers"]
    assert through and helpers
    # Its control variant connects directly (stack=DIRECT): PgBouncer cannot move it.
    assert all(("pgbouncer" in c.depends) == (c.variant != "direct-default-pool")
               for c in through)
    assert not any("pgbouncer" in c.depends for c in helpers)
    skip = carry.write_skip(tmp_path / "skip.json", {c.key: "E1" for c in helpers})
    out = _collect("-k", "pgbouncer_prepared_psycopg or event_loop_helpers",
                   "--skip-cells", str(skip))
    assert out.returncode == 0, out.stdout + out.stderr
    assert sum("::" in line for line in out.stdout.splitlines()) == len(through)
    assert "event_loop_helpers" not in out.stdout
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="is not a list of cells"):
        carry.read_skip(tmp_path / "bad.json")


# --- which cells each environment runs ----------------------------------------------------
def cell(scenario_id: str, driver: str, through: bool = False) -> carry.Cell:
    axes_ = {a: "why" for a in (*DIRECT, driver, *(("pgbouncer",) if through else ()))}
    return carry.Cell(scenario_id, "v", driver, axes_)


CELLS = [cell("direct", "asyncpg"), cell("direct", "psycopg"),
         cell("bouncer", "asyncpg", True), cell("bouncer", "psycopg", True)]


def test_one_at_a_time_each_environment_runs_only_what_its_axis_moves() -> None:
    combos = axes.plan(MATRIX)
    found = {p.id: p for p in carry.simulate([(c.id, c.versions) for c in combos], CELLS)}
    by_slot = {c.slot: found[c.id] for c in combos}
    baseline_id = combos[0].id
    assert by_slot["baseline"].runs == 4
    for slot in ("python", "sqlalchemy", "celery"):
        assert by_slot[slot].runs == 4 and by_slot[slot].carried_total == 0
    assert by_slot["asyncpg"].runs == 2 and by_slot["asyncpg"].carried == {baseline_id: 2}
    assert by_slot["psycopg"].runs == 2
    assert by_slot["pgbouncer"].runs == 2 and by_slot["pgbouncer"].carried == {baseline_id: 2}
    here = carry.Ran(combos[5].id, combos[5].versions)  # the psycopg variation
    base = carry.Ran(baseline_id, combos[0].versions, {c.key: {"outcome": "CLEAN"}
                                                      for c in CELLS})
    carried = carry.carried_cells(CELLS, here, [base])
    assert combos[5].slot == "psycopg"
    assert sorted(carried) == [("bouncer", "v", "asyncpg"), ("direct", "v", "asyncpg")]


def test_pairwise_carries_only_from_an_environment_equal_on_the_cells_axes_that_ran_it() -> None:
    spec = dataclasses.replace(MATRIX, mode=axes.PAIRWISE)
    combos = axes.plan(spec, rows=pairwise.cover(spec.axes).rows)
    earlier: list[carry.Ran] = []
    total_carried = 0
    for c in combos:
        here = carry.Ran(c.id, c.versions)
        carried = carry.carried_cells(CELLS, here, earlier)
        for key, source_id in carried.items():
            source = next(e for e in earlier if e.id == source_id)
            depends = next(x for x in CELLS if x.key == key).depends
            assert all(source.axes[a] == c.versions[a] for a in depends if a in c.versions)
            assert key in source.fresh, "carried from an environment that ran it itself"
        for x in CELLS:  # a cell runs only when no earlier environment could give it
            if x.key not in carried:
                assert all(carry.why_not(x, e, here) for e in earlier)
        here.fresh = {x.key: {"outcome": "CLEAN"} for x in CELLS if x.key not in carried}
        earlier.append(here)
        total_carried += len(carried)
    assert total_carried > 0


def test_what_blocks_carrying() -> None:
    direct = cell("direct", "psycopg")
    versions = {c: MATRIX.axes[c][0] for c in MATRIX.axes}
    installed = {"psycopg": "3.3.9", "asyncpg": "0.32.0", "kombu": "5.6.0"}
    source = carry.Ran("E1", versions, {direct.key: {"outcome": "CLEAN"}}, installed, "local")
    target = carry.Ran("E2", {**versions, "asyncpg": "0.30.0"},
                       installed={**installed, "asyncpg": "0.30.0", "async-timeout": "5.0"},
                       place="local")
    assert carry.why_not(direct, source, target) is None
    assert "kombu" in carry.why_not(direct, source, dataclasses.replace(
        target, installed={**target.installed, "kombu": "5.5.0"}))
    assert "depends on psycopg" in carry.why_not(direct, source, dataclasses.replace(
        target, axes={**versions, "psycopg": "3.2.13"}))
    errored = dataclasses.replace(source, fresh={direct.key: {"outcome": "HARNESS_ERROR"}})
    assert "harness error" in carry.why_not(direct, errored, target)
    docker = dataclasses.replace(target, place="docker backend")
    assert carry.why_not(direct, source, docker) is None
    assert "ran on local" in carry.why_not(direct, source, docker, carry.STRICT)
    assert carry.carried_cells([direct], target, [source], carry.OFF) == {}


def test_the_carry_setting_of_matrix_toml() -> None:
    base = {"axes": {a: MATRIX.axes[a] for a in MATRIX.axes}}
    assert axes.parse_spec(base, "m").carry == "axes"
    assert axes.parse_spec({**base, "carry": "off"}, "m").carry == "off"
    assert axes.parse_spec({**base, "carry": False}, "m").carry == "off"
    assert axes.with_options(axes.parse_spec({**base, "carry": "strict"}, "m"), {},
                             False).carry == "strict"
    with pytest.raises(ConfigError, match="carry is 'sometimes'"):
        axes.parse_spec({**base, "carry": "sometimes"}, "m")


# --- merged, rendered, diffed -------------------------------------------------------------
E1 = "py3.13-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18"
E2 = "py3.13-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.24"


def row(scenario_id: str, outcome: str = "CLEAN", passed: bool = True) -> dict[str, Any]:
    return {"scenario": scenario_id, "variant": "v", "driver": "psycopg", "role": "control",
            "expected": "CLEAN", "outcome": outcome, "passed": passed,
            "tasks": {"total": 8, "ok": 8 if outcome == "CLEAN" else 2}, "first_error": "",
            "reason": "", "claim": None}


def document(run_id: str, pgbouncer: str, postgres: str, rows: list[dict[str, Any]]
             ) -> dict[str, Any]:
    return {"schema": 1, "run_id": run_id, "results": rows, "environment": {
        "python": "3.13.0", "packages": {"sqlalchemy": "2.1.9", "celery": "5.7.0",
                                         "asyncpg": "0.32.0", "psycopg": "3.3.9"},
        "services": {"backend": "local" if pgbouncer.startswith("1.18") else "docker",
                     "postgres": postgres, "pgbouncer": pgbouncer}}}


def carried_matrix(direct_outcome: str = "CLEAN") -> dict[str, Any]:
    passed = direct_outcome == "CLEAN"
    first = document("20261130-1", "1.18.0", "15.18",
                     [row("direct", direct_outcome, passed), row("bouncer")])
    second = document("20261130-2", "1.24.1", "15.20", [row("bouncer", "REPRODUCED", False)])
    sidecar = {"slot": "pgbouncer", "axes": {"pgbouncer": "1.24"}, "carry_policy": "axes",
               "carried": [{"scenario": "direct", "variant": "v", "driver": "psycopg",
                            "from": E1}]}
    return merge.merge([(first, {"slot": "baseline"}, "a"), (second, sidecar, "b")])


def test_a_carried_cell_is_the_sources_row_with_carried_from_and_counts_for_verdicts() -> None:
    m = carried_matrix()
    assert [e["id"] for e in m["environments"]] == [E1, E2]
    here = [r for r in m["results"] if r["env"] == E2]
    assert {r["scenario"]: r.get("carried_from") for r in here} == {"direct": E1,
                                                                    "bouncer": None}
    assert m["environments"][1]["carried_cells"] == 1
    assert "carried_from" not in next(r for r in m["results"] if r["env"] == E1)
    # A fresh result of the same cell wins over the carried one.
    fresh = document("20261130-3", "1.24.1", "15.20", [row("direct", "OTHER_FAILURE", False)])
    again = merge.merge([(m, None, "m"), (fresh, {"slot": "pgbouncer"}, "c")])
    cell_ = next(r for r in again["results"] if r["env"] == E2 and r["scenario"] == "direct")
    assert cell_["outcome"] == "OTHER_FAILURE" and "carried_from" not in cell_
    # Re-merging a matrix keeps its carried cells.
    kept = merge.merge([(m, None, "m")])
    assert [r.get("carried_from") for r in kept["results"]] == [
        r.get("carried_from") for r in m["results"]]


def test_a_carried_cell_reads_as_carried_in_markdown_html_and_json(tmp_path: Path) -> None:
    m = carried_matrix()
    md = render_md.render(m)
    assert "| v | psycopg | control | CLEAN 8/8 | CLEAN 8/8 (= E1) |" in md
    assert "1 cells end in (= En)" in md
    notes = dict(table.env_notes(m))
    assert "1 cells carried from E1, not run here" in notes["E2"]
    assert "its services differ (PostgreSQL 15.18 there, 15.20 here" in notes["E2"]
    assert "backend local there, docker here" in notes["E2"]
    html = render_html.render(m)
    assert 'class="cell o-CLEAN carried"' in html
    assert "CLEAN 8/8 (= E1)" in html and f"carried from E1 ({E1})" in html
    written = write_outputs(m, tmp_path)
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert written[0] == tmp_path / "matrix.json"
    assert [r.get("carried_from") for r in data["results"] if r["env"] == E2
            and r["scenario"] == "direct"] == [E1]


def test_a_moved_carried_cell_and_a_diff_say_where_it_was_observed() -> None:
    moved = carried_matrix("REPRODUCED")
    assert table.cell_text(next(r for r in moved["results"] if r.get("carried_from")),
                           {E1: "E1"}) == "REPRODUCED 2/8 (!) (= E1)"
    found = diff.compare(carried_matrix(), moved)
    carried_change = next(c for c in found.changes if c.new_env == E2)
    assert carried_change.new_carried_from == E1 and carried_change.old_carried_from == E1
    text = diff.render(found)
    assert f"new cell carried from {E1}" in text


def test_matrix_plan_prints_cells_run_and_carried(capsys) -> None:
    from harness import cli

    assert cli.main(["matrix", "plan"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    runs = [line for line in lines if line.startswith("runs ")]
    assert len(runs) == len(axes.plan(MATRIX))
    assert runs[0].endswith("carries 0")
    assert "carried" in out.splitlines()[-1] and "carry policy axes" in out


def test_an_environment_that_carries_every_cell_is_merged_without_running(tmp_path: Path
                                                                           ) -> None:
    from harness import results as results_file
    from harness.matrix.command import all_carried
    from harness.matrix.environments import BuiltEnv
    from harness.matrix.pgbouncer_axis import PgBouncerSource

    first = document("20261130-1", "1.18.0", "15.18", [row("direct")])
    source = results_file.write(first, tmp_path / "runs" / E1)
    (source.parent / "matrix-env.json").write_text(json.dumps(
        {"slot": "baseline", "axes": {"pgbouncer": "1.18"}}))
    versions = {"python": "3.13", "sqlalchemy": "2.1.9", "celery": "5.7.0",
                "asyncpg": "0.30.0", "psycopg": "3.3.9", "pgbouncer": "1.18"}
    built = BuiltEnv(axes.Combination(versions, "asyncpg"), tmp_path / "venv", True, 0.0,
                     installed={"sqlalchemy": "2.1.9", "celery": "5.7.0", "asyncpg": "0.30.0",
                                "psycopg": "3.3.9"})
    entries = carry.sidecar_entries({("direct", "v", "psycopg"): E1})
    path = all_carried(built, PgBouncerSource("1.18", "local", "1.18.0"), "3.13.0",
                       tmp_path / "runs", {"carried": entries, "carry_policy": "axes"})
    m = merge.merge_paths([tmp_path / "runs"])
    here = built.combo.id
    assert [e["id"] for e in m["environments"]] == [E1, here]
    assert m["environments"][1]["carried_cells"] == 1 and path.exists()
    assert [(r["env"], r.get("carried_from")) for r in m["results"]] == [(E1, None),
                                                                       (here, E1)]
    assert "not recorded here" in dict(table.env_notes(m))["E2"]


def test_plan_strict_counts_where_each_environment_runs(capsys, monkeypatch) -> None:
    from harness import cli
    from harness.matrix import command

    combos = axes.plan(MATRIX)
    pgb = next(c for c in combos if c.slot == "pgbouncer")
    monkeypatch.setattr(command, "plan_places", lambda cs: (
        {c.id: "docker" if c.id == pgb.id else "local" for c in cs}, ""))
    assert cli.main(["matrix", "plan", "--carry", "strict"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().endswith(pgb.id))
    assert lines[at + 1].strip().endswith("carries 0"), lines[at + 1]
    assert cli.main(["matrix", "plan", "--carry", "axes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not lines[at + 1].strip().endswith("carries 0"), lines[at + 1]


def test_plan_strict_says_when_it_cannot_tell_where_environments_run(capsys, monkeypatch
                                                                      ) -> None:
    from harness import cli
    from harness.errors import ConfigError
    from harness.matrix import sources

    def no_images(*args, **kwargs):
        raise ConfigError("pgbouncer 1.24 needs the image harness-pgbouncer:1.24")

    monkeypatch.setattr(sources, "env_services", no_images)
    assert cli.main(["matrix", "plan", "--carry", "strict"]) == 0
    out = capsys.readouterr().out
    assert "assume one backend for all" in out and "harness-pgbouncer:1.24" in out
