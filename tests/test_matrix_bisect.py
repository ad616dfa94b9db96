"""``harness bisect``: the release list, the search, the evidence, and bad input refused.

The search is pure: it is driven here by a fake outcome function over release indexes,
so every path (one boundary, no change, a split, a failed environment, the budget) is
checked in milliseconds. The real command is checked on bad input only, which it must
refuse before building anything.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from harness import cli
from harness.errors import ConfigError
from harness.matrix import bisect
from harness.matrix.bisect_report import evidence, rule_predictions, segments, summary
from harness.matrix.bisect_search import (
    ABSENT,
    Boundary,
    CellState,
    cell_state,
    classify,
    lines_between,
    python_lines_between,
    releases_between,
    search,
    states_of,
)

ROOT = Path(__file__).resolve().parents[1]
CELERY = ["5.4.0", "5.5.0rc1", "5.5.0", "5.5.1", "5.5.2", "5.5.3", "5.6.0b1", "5.6.0",
          "5.6.1", "5.6.2", "5.6.3", "5.7.0", "5.10.0"]
A = ("async-def-task", "async-def-ignore-result", "asyncpg")
B = ("async-def-task", "async-def-ignore-result", "psycopg")
NEVER = CellState("REPRODUCED", ("body-never-ran",))
UNENCODABLE = CellState("REPRODUCED", ("coroutine-result-unencodable",))


# --- the release list -------------------------------------------------------------------
def test_final_releases_between_the_ends_oldest_first() -> None:
    got = releases_between("celery", reversed(CELERY), "5.5.0", "5.7.0")
    assert got == ["5.5.0", "5.5.1", "5.5.2", "5.5.3", "5.6.0", "5.6.1", "5.6.2", "5.6.3",
                   "5.7.0"]


def test_pre_releases_only_when_asked_and_the_ends_always() -> None:
    assert "5.6.0b1" in releases_between("celery", CELERY, "5.5.0", "5.7.0", pre=True)
    got = releases_between("celery", CELERY, "5.5.0rc1", "5.5.1")
    assert got == ["5.5.0rc1", "5.5.0", "5.5.1"]


def test_versions_compare_as_versions_not_as_text() -> None:
    assert releases_between("celery", CELERY, "5.7.0", "5.10.0") == ["5.7.0", "5.10.0"]


def test_a_version_not_on_the_index_is_refused_with_the_releases_there() -> None:
    with pytest.raises(ConfigError, match=r"celery 5\.5\.9 is not on the package index.*"
                                          r"5\.10\.0, 5\.7\.0"):
        releases_between("celery", CELERY, "5.5.9", "5.7.0")


@pytest.mark.parametrize("old,new,word", [("5.7.0", "5.5.0", "newer than"),
                                          ("5.7.0", "5.7.0", "the same release as")])
def test_old_must_be_older_than_new(old: str, new: str, word: str) -> None:
    with pytest.raises(ConfigError, match=f"{word}.*harness bisect celery {new} {old}"):
        releases_between("celery", CELERY, old, new)


def test_python_and_service_lines() -> None:
    assert python_lines_between("3.11", "3.14") == ["3.11", "3.12", "3.13", "3.14"]
    with pytest.raises(ConfigError, match="not a Python line"):
        python_lines_between("3.11.7", "3.13")
    with pytest.raises(ConfigError, match="newer than"):
        python_lines_between("3.13", "3.11")
    got = lines_between({"1.18", "1.24", "1.26", "1.21"}, "1.18", "1.24", "pgbouncer")
    assert got == ["1.18", "1.21", "1.24"]
    with pytest.raises(ConfigError, match="not a release line"):
        lines_between((), "1.18.0", "1.24", "pgbouncer")


# --- the search -------------------------------------------------------------------------
def fake(states_at: dict[int, dict] | None = None, boundary: dict | None = None,
         failing: set[int] = frozenset()):
    """An outcome function: each cell is NEVER before its boundary index, UNENCODABLE
    from it; ``states_at`` overrides a release; ``failing`` releases fail to build."""
    calls: list[int] = []

    def observe(i: int):
        calls.append(i)
        if i in failing:
            return None
        if states_at and i in states_at:
            return states_at[i]
        return {key: NEVER if i < at else UNENCODABLE for key, at in (boundary or {}).items()}

    return observe, calls


def test_one_boundary_is_found_in_a_logarithmic_number_of_environments() -> None:
    releases = [f"1.{i}" for i in range(17)]
    observe, calls = fake(boundary={A: 11, B: 11})
    result = search(releases, observe)
    assert result.status == "found"
    (only,) = result.boundaries
    assert (only.last_old, only.first_new, only.exact) == (10, 11, True)
    assert sorted(only.cells) == [A, B]
    assert calls[:2] == [0, 16]  # both ends first
    assert len(calls) <= 2 + 4  # log2(15 releases between) rounded up
    assert len(set(calls)) == len(calls)  # no environment twice


def test_each_step_reports_its_side_and_the_range_left() -> None:
    lines: list[str] = []
    observe, _ = fake(boundary={A: 3})
    search(["a", "b", "c", "d", "e"], observe, report=lines.append)
    assert lines == ["1 cell(s) differ between a and e",
                     "c is old; the change lies in c..e (1 untried between)",
                     "d is new; the change lies in c..d"]


def test_ends_that_agree_mean_no_boundary_and_nothing_else_runs() -> None:
    observe, calls = fake(boundary={A: 99})
    result = search(["5.5.0", "5.6.0", "5.7.0"], observe)
    assert result.status == "no-change" and result.moving == [] and calls == [0, 2]


def test_a_third_state_between_counts_as_changed_from_old() -> None:
    third = CellState("CLEAN")
    observe, _ = fake(boundary={A: 3}, states_at={2: {A: third}})
    result = search([str(i) for i in range(6)], observe)
    (only,) = result.boundaries
    assert (only.last_old, only.first_new) == (1, 2)


def test_cells_that_move_at_different_releases_split() -> None:
    observe, calls = fake(boundary={A: 3, B: 7})
    result = search([str(i) for i in range(10)], observe)
    assert result.status == "split"
    assert [(b.cells, b.last_old, b.first_new) for b in result.boundaries] == [
        ([A], 2, 3), ([B], 6, 7)]
    assert len(calls) <= 2 + 3 + 3


def test_a_release_that_cannot_build_is_skipped_not_read_as_a_change() -> None:
    observe, calls = fake(boundary={A: 6}, failing={4})
    result = search([str(i) for i in range(9)], observe)
    assert result.status == "found"
    assert (result.boundaries[0].last_old, result.boundaries[0].first_new) == (5, 6)
    assert 4 in calls and result.failed == [4]


def test_a_failed_release_at_the_boundary_leaves_it_unresolved() -> None:
    observe, _ = fake(boundary={A: 5}, failing={5})
    result = search([str(i) for i in range(9)], observe)
    assert result.status == "unresolved"
    (b,) = result.boundaries
    assert (b.last_old, b.first_new, b.failed, b.untried, b.exact) == (4, 6, [5], [], False)


def test_a_failed_end_moves_inward() -> None:
    observe, calls = fake(boundary={A: 3}, failing={0, 5})
    result = search([str(i) for i in range(6)], observe)
    assert calls[:4] == [0, 5, 1, 4]  # both ends first, then each failed one's neighbour
    assert (result.old_index, result.new_index, result.status) == (1, 4, "found")


HARNESS_ERROR = CellState("HARNESS_ERROR")


def test_a_harness_error_is_never_read_as_a_change() -> None:
    observe, calls = fake(boundary={A: 5}, states_at={4: {A: HARNESS_ERROR}})
    result = search([str(i) for i in range(9)], observe)
    (b,) = result.boundaries
    assert (b.last_old, b.first_new, b.failed, b.exact) == (3, 5, [4], False)
    assert result.status == "unresolved" and calls.count(4) == 1


def test_an_end_with_a_harness_error_gives_its_place_to_its_neighbour() -> None:
    observe, calls = fake(boundary={A: 2}, states_at={4: {A: HARNESS_ERROR}})
    result = search([str(i) for i in range(5)], observe)
    assert calls[:3] == [0, 4, 3] and result.new_index == 3
    assert (result.boundaries[0].last_old, result.boundaries[0].first_new) == (1, 2)
    assert result.failed == [4]


def test_no_two_releases_that_run_is_reported_as_such() -> None:
    observe, _ = fake(boundary={A: 1}, failing={0, 1, 2})
    result = search(["a", "b", "c"], observe)
    assert result.status == "no-ends"
    assert "could be run" in summary("celery", result, {}, {})[0]


def test_the_budget_stops_with_the_range_narrowed_so_far() -> None:
    observe, calls = fake(boundary={A: 11})
    result = search([str(i) for i in range(17)], observe, out_of_budget=lambda: len(calls) >= 3)
    assert result.status == "budget" and len(calls) == 3
    (b,) = result.boundaries
    assert b.last_old == 8 and b.first_new == 16 and b.untried == list(range(9, 16))
    text = "\n".join(summary("celery", result, {}, {}))
    assert "budget ran out" in text and "not yet tried: 9, 10" in text


def test_a_change_and_its_reversal_inside_the_range_is_noted() -> None:
    observe, _ = fake(boundary={A: 2, B: 99}, states_at={1: {A: NEVER, B: UNENCODABLE}})
    result = search(["0", "1", "2", "3"], observe)
    assert result.status == "found" and result.came_back() == [(B, 1)]


def test_classify_a_release_against_the_ends() -> None:
    old, new = {A: NEVER, B: NEVER}, {A: UNENCODABLE, B: UNENCODABLE}
    moving = [A, B]
    assert classify({A: NEVER, B: NEVER}, old, new, moving) == "old"
    assert classify({A: UNENCODABLE, B: UNENCODABLE}, old, new, moving) == "new"
    assert classify({A: NEVER, B: UNENCODABLE}, old, new, moving) == "split"
    assert classify({A: CellState("CLEAN"), B: NEVER}, old, new, moving) == "other"
    assert classify(None, old, new, moving) == "failed"
    assert classify({A: HARNESS_ERROR, B: NEVER}, old, new, moving) == "unknown"


def test_the_signature_set_counts_not_the_counts() -> None:
    one = {"outcome": "REPRODUCED", "tasks": {"by_signature": {"b": 1, "a": 7}}}
    two = {"outcome": "REPRODUCED", "tasks": {"by_signature": {"a": 2, "b": 6}}}
    assert cell_state(one) == cell_state(two) == CellState("REPRODUCED", ("a", "b"))
    assert cell_state({"outcome": "REPRODUCED", "tasks": {}}) != cell_state(one)
    assert ABSENT.describe() == "(not run)"


# --- evidence ---------------------------------------------------------------------------
def entry(sig: str, expected: str) -> dict:
    return {"scenario": A[0], "variant": A[1], "driver": A[2], "outcome": "REPRODUCED",
            "expected": "REPRODUCED", "expected_signatures": [expected],
            "tasks": {"total": 8, "ok": 0, "hung": 0, "wrong": 0, "other": 8 if
                      sig == "coroutine-result-unencodable" else 0,
                      "not_run": 8 if sig == "body-never-ran" else 0,
                      "by_signature": {sig: 8}}}


def test_evidence_shows_both_sides_and_whether_the_rule_moves_there_too() -> None:
    releases = ["5.6.2", "5.6.3", "5.7.0"]
    entries = {0: {A: entry("body-never-ran", "body-never-ran")},
               1: {A: entry("coroutine-result-unencodable", "coroutine-result-unencodable")},
               2: {A: entry("body-never-ran", "body-never-ran")}}
    paths = {0: "runs/a/results.json", 1: "runs/b/results.json"}
    lines = evidence("celery", Boundary([A], 0, 1), releases, entries, paths,
                            new_index=2)
    text = "\n".join(lines)
    assert "async-def-task / async-def-ignore-result / asyncpg" in text
    assert ("celery 5.6.2      (last old) REPRODUCED {body-never-ran}: ok 0/8, not_run 8; "
            "signatures: body-never-ran 8; expected REPRODUCED (body-never-ran)") in text
    assert "(first new) REPRODUCED {coroutine-result-unencodable}: ok 0/8, other 8" in text
    assert "both sides are as expected: its rule's boundary is right (celery 5.6.3)" in text
    assert "changes again later" in text and "bisect celery 5.6.3 5.7.0" in text
    assert "runs/a/results.json" in text and "runs/b/results.json" in text


def test_evidence_says_when_the_scenario_expects_no_change_there() -> None:
    entries = {0: {A: entry("body-never-ran", "body-never-ran")},
               1: {A: {**entry("coroutine-result-unencodable", "body-never-ran"),
                       "passed": False}}}
    text = "\n".join(evidence("celery", Boundary([A], 0, 1), ["5.5.0", "5.5.1"],
                                     entries, {}))
    assert ("the scenario expects the same on both sides: its rules put no boundary at celery "
            "5.5.1 (celery 5.5.1 is not its expectation)") in text


def test_a_release_left_out_between_the_two_sides_is_named() -> None:
    observe, _ = fake(boundary={A: 1})
    result = search(["0.29.0", "0.30.0"], observe)
    text = "\n".join(summary("asyncpg", result, {}, {},
                                    {"0.29.1": "no build for Python 3.13", "0.31.0": "x"}))
    assert "left out between them: 0.29.1 (no build for Python 3.13)" in text
    assert "0.31.0" not in text


def test_no_change_prints_both_sides() -> None:
    observe, _ = fake(boundary={A: 99})
    result = search(["5.5.0", "5.7.0"], observe)
    entries = {0: {A: entry("body-never-ran", "body-never-ran")},
               1: {A: entry("body-never-ran", "body-never-ran")}}
    text = "\n".join(summary("celery", result, entries, {0: "x.json", 1: "y.json"}))
    assert "No boundary in celery 5.5.0..5.7.0" in text
    assert text.count("REPRODUCED {body-never-ran}") == 2 and "y.json" in text


def test_segments_say_where_an_expectation_changes() -> None:
    assert segments(["A", "A", "B", "A"], ["1", "2", "3", "4"]) == \
        "A at 1..2; B at 3; A at 4"


def test_the_rules_predict_each_release_without_running_it() -> None:
    """The scenarios' own rules, read in this process: asyncpg >= 0.31 stops naming every
    statement, so the article's fix is clean behind PgBouncer 1.18 only from 0.31 on."""
    key = ("pgbouncer-prepared-asyncpg", "statement-cache-size-0-nullpool", "asyncpg")
    base = {"python": "3.13", "sqlalchemy": "2.1.9", "celery": "5.7.0", "psycopg": "3.3.9",
            "pgbouncer": "1.18"}
    got = rule_predictions(ROOT, "asyncpg", ["0.30.0", "0.32.0"],
                                  lambda v: {**base, "asyncpg": v}, "1.18.0",
                                  [key, ("no-such-scenario", "x", "asyncpg")])
    assert list(got) == [key]
    assert got[key][0].startswith("REPRODUCED") and got[key][1] == "CLEAN"


def test_ends_that_agree_point_at_a_change_the_rules_expect_inside() -> None:
    observe, _ = fake(boundary={A: 99})
    result = search(["5.5.0", "5.6.3", "5.7.0"], observe)
    same = {A: entry("body-never-ran", "body-never-ran")}
    text = "\n".join(summary("celery", result, {0: same, 2: same}, {}, predicted={
        A: ["REPRODUCED (body-never-ran)", "REPRODUCED (coroutine-result-unencodable)",
            "REPRODUCED (body-never-ran)"]}))
    assert "rules expect: REPRODUCED (body-never-ran) at 5.5.0; " in text
    assert "bisect celery 5.5.0 5.6.3 to check where it begins" in text


def test_the_record_holds_every_step(tmp_path: Path) -> None:
    plan = bisect.Plan("celery", ["5.5.0", "5.6.0", "5.7.0"], {"5.5.1": "why"},
                       {"python": "3.13", "celery": "5.7.0"}, {}, {}, 2, ["-k", "x"],
                       "dated", None, 2, 60.0)
    args = argparse.Namespace(old="5.5.0", new="5.7.0", pre=False, keyword="x", budget=5.0)
    observe, _ = fake(boundary={A: 1})
    result = search(plan.releases, observe)
    steps = [bisect.Step("5.5.0", "old end", "py3.13-...", "ran", {"build": 1.04})]
    bisect.record(tmp_path / "bisect.json", plan, args, steps, result, 0, "now", 3.0)
    document = json.loads((tmp_path / "bisect.json").read_text())
    assert document["kind"] == "bisect" and document["others"] == {"python": "3.13"}
    assert document["steps"][0]["seconds"] == {"build": 1.0}
    assert document["result"]["boundaries"] == [{
        "cells": [" / ".join(A)], "last_old": "5.5.0", "first_new": "5.6.0", "exact": True,
        "untried": [], "failed": []}]


def test_the_command_prints_the_boundary_and_records_every_step(tmp_path: Path, capsys,
                                                                 monkeypatch) -> None:
    """The whole command over a fake outcome function in place of the environments."""
    releases = ["5.5.0", "5.5.1", "5.5.2", "5.6.0", "5.6.3", "5.7.0"]
    plan = bisect.Plan("celery", releases, {}, {"python": "3.13", "celery": "5.7.0"}, {}, {},
                       1, ["-k", "x"], "dated", None, 1, 60.0)
    monkeypatch.setattr(bisect, "make_plan", lambda *a: plan)

    def run(self, i, combo, step):
        sig = "body-never-ran" if i < 4 else "coroutine-result-unencodable"
        self.entries[i] = {A: entry(sig, sig)}
        self.paths[i] = f"runs/{i}/results.json"
        step.status = "ran" if i != 2 else "build-failed"
        return None if i == 2 else states_of(self.entries[i].values())

    monkeypatch.setattr(bisect.Runner, "_run", run)
    args = argparse.Namespace(out=tmp_path, budget=5.0, pre=False, old="5.5.0", new="5.7.0",
                              keyword="x")
    code = bisect.bisect_command(ROOT, args, [])
    out = capsys.readouterr().out
    assert code == 3  # the search found the boundary, but one environment failed
    assert "First release where the selected cells changed: celery 5.6.3" in out
    assert "between celery 5.6.0 and 5.6.3 (adjacent releases)" in out
    assert "1 release(s) gave no answer" in out and "celery 5.5.2" in out
    (path,) = tmp_path.glob("*/bisect.json")
    document = json.loads(path.read_text())
    steps = [(s["release"], s["role"], s["side"]) for s in document["steps"]]
    assert steps == [("5.5.0", "old end", "old"), ("5.7.0", "new end", "new"),
                     ("5.5.2", "between", "failed"), ("5.6.0", "between", "old"),
                     ("5.6.3", "between", "new")]
    assert document["result"]["status"] == "found" and document["exit_code"] == 3


def test_a_spent_budget_exits_3_with_what_it_knows(tmp_path: Path, capsys, monkeypatch) -> None:
    plan = bisect.Plan("celery", ["5.5.0", "5.7.0"], {}, {"python": "3.13"}, {}, {}, 1, [],
                       "dated", None, 1, 60.0)
    monkeypatch.setattr(bisect, "make_plan", lambda *a: plan)
    args = argparse.Namespace(out=tmp_path, budget=1e-9, pre=False, old="5.5.0", new="5.7.0",
                              keyword=None)
    assert bisect.bisect_command(ROOT, args, []) == 3
    assert "budget ran out before both ends ran" in capsys.readouterr().out


# --- bad input: refused before anything is built ------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["bisect", "kombu", "5.3.0", "5.4.0"], "cannot walk 'kombu'"),
    (["bisect", "postgres", "15", "17"], "postgres is a service axis"),
    (["bisect", "celery", "5.7.0", "5.5.0"], "OLD must be older than NEW"),
    (["bisect", "python", "3.13", "3.11"], "OLD must be older than NEW"),
    (["bisect", "celery", "5.5.0", "5.7.0", "--celery", "5.6.0"], "pins the axis"),
    (["bisect", "celery", "5.5.0", "5.7.0", "--budget", "0"], "--budget 0 is not a time"),
])
def test_bad_input_is_refused_at_once(argv: list[str], message: str, capsys,
                                      monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    started = time.monotonic()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness bisect: ") and message in err
    assert time.monotonic() - started < 5


def test_a_k_that_selects_nothing_is_refused_with_how_ids_spell_names(capsys,
                                                                     monkeypatch) -> None:
    """Real collection of the scenarios (a few seconds); nothing is built."""
    monkeypatch.chdir(ROOT)
    code = cli.main(["bisect", "celery", "5.5.0", "5.7.0", "-k",
                     "async_def_task and ignore_result", "--out", "/nonexistent"])
    err = capsys.readouterr().err
    assert code == 2
    assert "No scenario test matches" in err and "variant names with hyphens" in err
