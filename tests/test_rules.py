"""Version rules as data: conditions, branches, and which recorded runs observed them."""

import argparse
import itertools
import json
from pathlib import Path

import pytest

from harness import rules
from harness.conditions import (
    LIBPQ,
    PGBOUNCER,
    PYTHON,
    RunEnv,
    describe,
    installed,
    package,
)
from harness.errors import ConfigError
from harness.outcome import Outcome
from harness.scenario import (
    Role,
    Scenario,
    Variant,
    Workload,
    before_package,
    clean,
    needs,
    reproduces,
    resolve,
    until_pgbouncer,
    when,
)

ROOT = Path(__file__).resolve().parent.parent


def env(driver="asyncpg", python=(3, 13), pgbouncer="1.18", installed_list=None, **packages):
    return RunEnv(driver, python, packages, pgbouncer, installed=installed_list)


# -- conditions ----------------------------------------------------------------------

def test_a_package_condition_holds_below_its_boundary_and_not_from_it():
    cond = package("asyncpg") < "0.31"
    assert str(cond) == "asyncpg < 0.31" and str(cond.negate()) == "asyncpg >= 0.31"
    assert cond.holds(env(asyncpg="0.30.999"))
    assert cond.holds(env(asyncpg="0.31.0rc1"))  # a pre-release sorts before its release
    assert not cond.holds(env(asyncpg="0.31"))
    assert not cond.holds(env(asyncpg="0.32.0"))
    assert cond.holds(env(installed_list={}))  # missing counts as older
    assert cond.negate().holds(env(asyncpg="0.31.0"))


def test_a_python_condition_compares_major_and_minor():
    cond = PYTHON >= "3.14"
    assert str(cond) == "Python >= 3.14"
    assert not cond.holds(env(python=(3, 13))) and cond.holds(env(python=(3, 14)))
    assert cond.holds(env(python=(3, 15)))


def test_a_pgbouncer_condition_counts_a_missing_pgbouncer_as_older():
    cond = PGBOUNCER < "1.24"
    assert str(cond) == "PgBouncer < 1.24"
    assert cond.holds(env(pgbouncer="1.23.9")) and not cond.holds(env(pgbouncer="1.24.0"))
    assert cond.holds(env(pgbouncer=None)) and cond.holds(env(pgbouncer="unknown"))


def test_a_libpq_condition_reads_the_libpq_psycopg_uses():
    cond = LIBPQ < "17"
    assert str(cond) == "libpq < 17"
    assert cond.holds(RunEnv("psycopg", (3, 13), {}, libpq="15.18"))
    assert not cond.holds(RunEnv("psycopg", (3, 13), {}, libpq="18.6"))
    assert cond.holds(RunEnv("psycopg", (3, 13), {}))  # psycopg missing: older


def test_a_recorded_run_gives_its_libpq_to_the_rules_that_read_it(tmp_path):
    from harness.recorded_runs import cells_of

    doc = {"run_id": "20261130-160147-dff7ae", "results": [_row("nested", "psycopg", "",
                                                                 "CLEAN")],
           "environment": {"python": "3.11.7", "packages": {"psycopg": "3.3.9"},
                           "libpq": {"impl": "binary", "libpq": "18.6"}}}
    recorded = cells_of(doc, "results.json")[0].env
    assert recorded.libpq == "18.6" and recorded.knows(LIBPQ < "17")
    # A libpq the rule never saw would count as older: 18.6 must reach the condition.
    assert (LIBPQ >= "17").holds(recorded.run_env("psycopg"))
    del doc["environment"]["libpq"]
    assert not cells_of(doc, "results.json")[0].env.knows(LIBPQ < "17")


def test_a_rule_on_libpq_makes_a_cell_depend_on_the_psycopg_axis():
    from harness.matrix.carry import _rule_axes

    rule = when(LIBPQ < "17", reproduces("x"), clean(), why="DEALLOCATE before libpq 17")
    assert "psycopg" in _rule_axes(rule, "psycopg")


def test_installed_reads_the_recorded_list_and_only_then_this_interpreter():
    cond = installed("celery-aio-pool")
    assert str(cond) == "celery-aio-pool installed"
    assert str(cond.negate()) == "celery-aio-pool not installed"
    assert cond.holds(env(installed_list={"celery-aio-pool": "0.1.0rc8"}))
    assert not cond.holds(env(installed_list={}))
    assert not installed("no-such-distribution-here").holds(env())


def test_a_boundary_must_be_a_version_and_only_less_than_and_at_least_exist():
    with pytest.raises(ValueError, match="version string"):
        package("asyncpg") < "soon"  # noqa: B015 - building the condition must raise
    with pytest.raises(TypeError):
        package("asyncpg") <= "0.31"  # noqa: B015 - the comparison itself must raise


def test_conditions_on_one_subject_read_as_a_range():
    celery = package("celery")
    assert describe(()) == "always"
    assert describe((celery >= "5.6.3", celery < "5.7")) == "5.6.3 <= celery < 5.7"
    assert describe((celery < "5.7", celery < "5.6.3")) == "celery < 5.6.3"
    assert describe((package("asyncpg") < "0.31", PGBOUNCER >= "1.24")) == \
        "asyncpg < 0.31, PgBouncer >= 1.24"


def test_when_refuses_an_opaque_function():
    with pytest.raises(TypeError, match="condition"):
        when(lambda e: True, clean(), clean(), why="x")  # type: ignore[arg-type]


# -- branches --------------------------------------------------------------------------

NESTED = before_package("asyncpg", "0.31",
                        until_pgbouncer("1.24", reproduces("a"), why="pgbouncer"),
                        clean(), why="asyncpg")
SPEC = Scenario(
    id="spec", app="x", workload=Workload("t"), signatures=(), claim=None,
    variants=(
        Variant("plain", Role.CONTROL, {}, expect=clean()),
        Variant("nested", Role.BAD, {}, expect={"asyncpg": NESTED, "psycopg": clean()}),
        Variant("needs", Role.FIX, {}, expect=when(PYTHON >= "3.14", reproduces("b"), clean(),
                                                   why="py"),
                requires=needs(PGBOUNCER >= "1.21", "needs 1.21", source="changelog")),
        Variant("asyncpg-only", Role.FIX, {}, expect=clean(), not_for={"psycopg": "no"},
                requires=needs(package("asyncpg") >= "0.31", "old asyncpg",
                               drivers=("asyncpg",))),
    ))


def test_branches_flatten_nested_rules_and_put_a_requirement_first():
    found = {(b.variant, b.driver, b.condition): b for b in rules.branches_of(SPEC)}
    assert sorted(found) == [
        ("asyncpg-only", "asyncpg", "asyncpg < 0.31"),
        ("asyncpg-only", "asyncpg", "asyncpg >= 0.31"),
        ("needs", "asyncpg", "PgBouncer < 1.21"),
        ("needs", "asyncpg", "PgBouncer >= 1.21, Python < 3.14"),
        ("needs", "asyncpg", "PgBouncer >= 1.21, Python >= 3.14"),
        ("needs", "psycopg", "PgBouncer < 1.21"),
        ("needs", "psycopg", "PgBouncer >= 1.21, Python < 3.14"),
        ("needs", "psycopg", "PgBouncer >= 1.21, Python >= 3.14"),
        ("nested", "asyncpg", "asyncpg < 0.31, PgBouncer < 1.24"),
        ("nested", "asyncpg", "asyncpg < 0.31, PgBouncer >= 1.24"),
        ("nested", "asyncpg", "asyncpg >= 0.31"),
    ]
    na = found[("needs", "asyncpg", "PgBouncer < 1.21")]
    assert na.expected.outcome is Outcome.NOT_APPLICABLE and na.why == "needs 1.21"
    assert na.source == "changelog" and na.path == (0,)
    inner = found[("nested", "asyncpg", "asyncpg < 0.31, PgBouncer < 1.24")]
    assert inner.expected.signatures == ("a",) and inner.why == "asyncpg" and inner.path == (0, 0)
    assert found[("nested", "asyncpg", "asyncpg >= 0.31")].expected.outcome is Outcome.CLEAN


def test_ids_are_stable_and_fingerprints_change_with_what_a_branch_says():
    first = {b.id: b.fingerprint for b in rules.branches_of(SPEC)}
    assert first == {b.id: b.fingerprint for b in rules.branches_of(SPEC)}
    changed = Scenario(id="spec", app="x", workload=Workload("t"), signatures=(), claim=None,
                       variants=(Variant("nested", Role.BAD, {}, expect={
                           "asyncpg": before_package("asyncpg", "0.31", until_pgbouncer(
                               "1.24", reproduces("other"), why="pgbouncer"), clean(),
                               why="asyncpg"), "psycopg": clean()}),))
    again = {b.id: b.fingerprint for b in rules.branches_of(changed)}
    key = "spec/nested/asyncpg: asyncpg < 0.31, PgBouncer < 1.24"
    assert first[key] != again[key]
    assert first["spec/nested/asyncpg: asyncpg >= 0.31"] == \
        again["spec/nested/asyncpg: asyncpg >= 0.31"]


def _grid(driver):
    for py, pgb, asyncpg, psycopg, sa, celery, kombu, aio in itertools.product(
            [(3, 11), (3, 12), (3, 14)], [None, "1.20", "1.21", "1.24", "1.26"],
            ["0.30.0", "0.32.0"], ["3.2.13", "3.3.9"], ["2.0.58", "2.1.9"],
            ["5.4.0", "5.6.3", "5.7.0"], ["5.3.7", "5.7.0"], [{}, {"celery-aio-pool": "0.1"}]):
        packages = {"asyncpg": asyncpg, "psycopg": psycopg, "sqlalchemy": sa,
                    "celery": celery, "kombu": kombu}
        yield RunEnv(driver, py, packages, pgb, installed={**packages, **aio})


def test_the_branch_an_environment_takes_says_what_resolve_says():
    """For every real scenario: the branch chosen for an environment carries the outcome,
    signatures and reason that resolve() and requires= give there."""
    checked = 0
    for scenario in rules.catalogue():
        leaves = {(b.variant, b.driver, b.path): b for b in rules.branches_of(scenario)}
        for (name, driver) in {(b.variant, b.driver) for b in leaves.values()}:
            variant = scenario.variant(name)
            for probe in _grid(driver):
                branch = leaves[(name, driver, rules.chosen_path(variant, driver, probe))]
                reason = variant.requires(probe) if variant.requires else None
                if reason is not None:
                    assert branch.expected.outcome is Outcome.NOT_APPLICABLE
                    assert reason.startswith(branch.why)
                else:
                    got = resolve(variant.expect, probe)
                    assert (branch.expected.outcome, branch.expected.signatures, branch.why) \
                        == (got.outcome, got.signatures, got.why), (scenario.id, name, probe)
                checked += 1
    assert checked > 1000


def test_every_requires_check_of_a_scenario_is_data():
    for scenario in rules.catalogue():
        for variant in scenario.variants:
            assert variant.requires is None or isinstance(variant.requires, rules.Requirement), (
                f"{scenario.id}/{variant.name}: requires= is a function; write "
                f"needs(condition, why) so 'harness rules' can list and match it")


def test_the_spawn_variant_is_na_exactly_where_celery_lacks_the_setting():
    """engine-before-fork reads Celery's version, not its settings: on the installed
    Celery both say the same."""
    from celery.app.defaults import DEFAULTS

    from harness.environment import package_versions
    from scenarios.test_engine_before_fork import NEEDS_SPAWN_START_METHOD

    here = RunEnv("asyncpg", (3, 13), package_versions())
    assert NEEDS_SPAWN_START_METHOD.condition.holds(here) == \
        ("worker_pool_start_method" in DEFAULTS)


# -- matching recorded runs -------------------------------------------------------------

def _environment(env_id, run_id, **packages):
    return {"id": env_id, "python": "3.13.0", "packages": packages, "run_id": run_id,
            "services": {"pgbouncer": "1.18.0"}, "pgbouncer": "1.18",
            "installed": {**packages, "celery": "5.7.0"}}


def _row(variant, driver, env_id, outcome, *signatures):
    return {"scenario": "spec", "variant": variant, "driver": driver, "env": env_id,
            "outcome": outcome, "tasks": {"by_signature": {s: 1 for s in signatures}}}


MATRIX = {
    "schema": 1, "kind": "matrix",
    "environments": [_environment("old", "20261130-091207-aaaaaa", asyncpg="0.30.0"),
                     _environment("new", "20261130-094123-bbbbbb", asyncpg="0.32.0")],
    "results": [
        _row("nested", "asyncpg", "old", "REPRODUCED", "a"),   # observes asyncpg < 0.31
        _row("nested", "asyncpg", "new", "OTHER_FAILURE"),     # contradicts asyncpg >= 0.31
        _row("nested", "psycopg", "new", "CLEAN"),             # no rule for psycopg
        _row("needs", "asyncpg", "old", "N/A"),                # observes PgBouncer < 1.21
        _row("needs", "psycopg", "old", "HARNESS_ERROR"),      # no evidence either way
        _row("asyncpg-only", "asyncpg", "new", "REPRODUCED", "x"),  # contradicts: runs CLEAN
        _row("asyncpg-only", "asyncpg", "old", "OTHER_FAILURE"),  # ran before its requirement
    ],
}


def _states(observations):
    return {o.branch.id.removeprefix("spec/"): o for o in observations}


def test_a_branch_is_observed_where_it_is_chosen_and_the_outcome_agrees(tmp_path):
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(MATRIX))
    found = _states(rules.observe([SPEC], rules.load_cells([path], tmp_path)))
    seen = found["nested/asyncpg: asyncpg < 0.31, PgBouncer < 1.24"]
    assert seen.state == "observed"
    assert seen.seen == [{"file": "matrix.json", "env": "old", "date": "2026-11-30 09:12",
                          "versions": {"asyncpg": "0.30.0", "PgBouncer": "1.18.0"}}]
    wrong = found["nested/asyncpg: asyncpg >= 0.31"]
    assert wrong.state == "contradicted" and wrong.contradicted[0]["outcome"] == "OTHER_FAILURE"
    assert found["needs/asyncpg: PgBouncer < 1.21"].state == "observed"
    assert found["needs/psycopg: PgBouncer < 1.21"].state == "unobserved"  # harness error
    assert found["asyncpg-only/asyncpg: asyncpg >= 0.31"].contradicted[0]["outcome"] == \
        "REPRODUCED (x)"
    assert found["nested/asyncpg: asyncpg < 0.31, PgBouncer >= 1.24"].state == "unobserved"
    # A cell that ran where a requirement now says n/a is why the requirement exists:
    # neither an observation of the n/a nor a contradiction of it.
    before = found["asyncpg-only/asyncpg: asyncpg < 0.31"]
    assert before.state == "unobserved" and not before.contradicted
    assert before.ran_before[0]["outcome"] == "OTHER_FAILURE"
    assert "ran before this requirement in 1 environment of matrix.json" in "\n".join(
        rules.listing([before]))


def test_a_results_json_counts_as_one_environment_and_needs_its_packages(tmp_path):
    doc = {"schema": 1, "run_id": "20261130-110150-ed28dd",
           "environment": {"python": "3.11.7", "packages": {"asyncpg": "0.30.0"},
                           "services": {"pgbouncer": "1.24.1"}},
           "results": [{k: v for k, v in _row("nested", "asyncpg", "", "CLEAN").items()
                        if k != "env"}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    found = _states(rules.observe([SPEC], rules.load_cells([path], tmp_path)))
    seen = found["nested/asyncpg: asyncpg < 0.31, PgBouncer >= 1.24"]
    assert seen.state == "observed" and seen.seen[0]["env"] == "run 20261130-110150-ed28dd"
    assert seen.seen[0]["date"] == "2026-11-30 11:01"
    # No installed list and no asyncpg: the run did not record what the rule asks.
    doc["environment"]["packages"] = {}
    path.write_text(json.dumps(doc))
    assert all(o.state == "unobserved"
               for o in rules.observe([SPEC], rules.load_cells([path], tmp_path)))


def test_a_missing_or_foreign_file_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: pass a matrix.json"):
        rules.load_cells([tmp_path / "nope.json"], tmp_path)
    (tmp_path / "other.json").write_text(json.dumps({"results": "x"}))
    with pytest.raises(ConfigError, match="is not a matrix.json or a results.json"):
        rules.load_cells([tmp_path / "other.json"], tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="is not readable JSON"):
        rules.load_cells([tmp_path / "broken.json"], tmp_path)
    with pytest.raises(ConfigError, match="no recorded run"):
        rules.rules_command(tmp_path, argparse.Namespace(
            sources=None, keyword="", unobserved=False, record=False))


def test_the_command_lists_branches_with_their_state(tmp_path, capsys):
    matrix = {**MATRIX, "results": [
        {**_row("get-event-loop", "asyncpg", "old", "CLEAN"), "scenario": "event-loop-helpers"}]}
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(matrix))
    args = argparse.Namespace(sources=[path], keyword="event-loop-helpers/get-event-loop/",
                              unobserved=False, record=False)
    assert rules.rules_command(ROOT, args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        "event-loop-helpers / get-event-loop / asyncpg",
        "  unobserved    Python >= 3.14 -> REPRODUCED (no-current-event-loop)",
        "  observed      Python < 3.14 -> CLEAN",
        f"{'':16}observed in 1 environment of {path} (2026-11-30; Python 3.13): old",
    ]
    assert out[-1].startswith("4 branches: 1 observed, 0 contradicted, 3 unobserved")
    args.unobserved = True
    rules.rules_command(ROOT, args)
    assert "  observed" not in capsys.readouterr().out
    args.why = True
    rules.rules_command(ROOT, args)
    assert f"{'':16}why: get_event_loop() creates a loop in the main thread up to 3.13" \
        in capsys.readouterr().out


def test_legend_lines_name_the_branches_this_matrix_did_not_observe():
    matrix = {**MATRIX, "results": [
        {**_row("get-event-loop", d, "old", "CLEAN"), "scenario": "event-loop-helpers"}
        for d in ("asyncpg", "psycopg")]}
    lines = rules.legend_lines(matrix)
    assert len(lines) == 1 and lines[0].startswith(
        "Rule branches no run observed, event-loop-helpers: get-event-loop where "
        "Python >= 3.14: REPRODUCED (no-current-event-loop); get-event-loop-warnings-as-errors "
        "where Python >= 3.12: REPRODUCED (implicit-loop-deprecated or no-current-event-loop)")
    assert "get-event-loop where Python < 3.14" not in lines[0]
    matrix["results"].pop()  # psycopg's cell: that driver's branches are named apart
    assert "get-event-loop [psycopg] where Python < 3.14: CLEAN" in rules.legend_lines(matrix)[0]
    recorded = {"branches": [{"id": o.branch.id, "state": "observed"}
                             for o in rules.observe(rules.catalogue(), [])
                             if o.branch.scenario == "event-loop-helpers"]}
    assert rules.legend_lines(matrix, recorded) == []


# -- the record ---------------------------------------------------------------------------

def test_the_record_round_trips_and_names_what_changed():
    observations = rules.observe([SPEC], [])
    doc = rules.record(observations, ["docs/matrix/matrix.json"])
    assert json.loads(rules.dump_record(doc)) == doc
    assert rules.record_problems(doc, [o.branch for o in observations]) == []
    doc["branches"][0]["fingerprint"] = "0" * 12
    del doc["branches"][1]
    doc["branches"].append({"id": "spec/gone/asyncpg: x", "fingerprint": "1"})
    problems = rules.record_problems(doc, [o.branch for o in observations])
    assert [p.split(":")[0] for p in problems] == [
        "not in the record", "changed since it was recorded", "in the record, no longer in the code"]


def test_every_branch_in_the_code_is_in_the_observation_record_as_it_says():
    """Guards docs/matrix/rule-observations.json: a branch added or changed in a scenario
    must have its observations recorded again."""
    what_to_do = ("Re-run the matrix over the changed scenarios (harness matrix, then copy "
                  "its matrix.json to docs/matrix/) and record the observations with "
                  "'harness rules --record'.")
    path = ROOT / rules.RECORD
    if not path.is_file():
        pytest.fail(f"{rules.RECORD} is missing. {what_to_do}", pytrace=False)
    branches = [b for s in rules.catalogue() for b in rules.branches_of(s)]
    problems = rules.record_problems(json.loads(path.read_text()), branches)
    shown = problems[:12] + ([f"and {len(problems) - 12} more"] if len(problems) > 12 else [])
    if problems:
        pytest.fail(f"{rules.RECORD} does not match the version rules in the code:\n  "
                    + "\n  ".join(shown) + f"\n{what_to_do}", pytrace=False)


def test_the_observation_record_says_what_the_recorded_runs_show():
    """Guards the record against the runs in docs/matrix/: a run added or replaced there
    must be recorded again."""
    path = ROOT / rules.RECORD
    if not path.is_file():
        pytest.fail(f"{rules.RECORD} is missing: run 'harness rules --record'.", pytrace=False)
    recorded = json.loads(path.read_text())
    absent = [f for f in recorded.get("sources", []) if not (ROOT / f).is_file()]
    if absent:
        pytest.skip(f"the runs the record was made from are not in this checkout: {absent}")
    problems = rules.record_out_of_date(recorded, ROOT)
    shown = problems[:12] + ([f"and {len(problems) - 12} more"] if len(problems) > 12 else [])
    if problems:
        pytest.fail(f"{rules.RECORD} is out of date with the runs in docs/matrix/:\n  "
                    + "\n  ".join(shown) + "\nRecord them with 'harness rules --record'.",
                    pytrace=False)
