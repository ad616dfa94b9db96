"""Regression diffs between matrices, and the Markdown and HTML renderings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harness.matrix import diff, merge, render_html, render_md, table
from tests.test_matrix_merge import old_matrix, results_doc, two_envs

ROOT = Path(__file__).resolve().parent.parent

MOVED_KEY = ("loop-bound-pool", "default-pool", "psycopg")


def single(python: str, sqlalchemy: str, slot: str, run_id: str, **kwargs: Any) -> dict:
    return merge.merge([(results_doc(python, sqlalchemy, run_id, **kwargs), {"slot": slot},
                         run_id)])


def test_same_environment_changed_cell_is_listed() -> None:
    old = single("3.11.7", "2.1.9", "baseline", "20260101-000001-a")
    new = single("3.11.7", "2.1.9", "baseline", "20260102-000001-a",
                 moved={MOVED_KEY: "REPRODUCED"})
    found = diff.compare(old, new)
    assert [(c.scenario, c.variant, c.driver, c.old, c.new) for c in found.changes] == [
        (*MOVED_KEY, "CLEAN", "REPRODUCED")]
    assert found.verdict_changes == [("loop-bound-pool [psycopg]: the claim's verdict was "
                                      "'does not hold', is 'holds'")]
    text = diff.render(found)
    assert "1 cell(s) changed outcome" in text
    assert "loop-bound-pool / default-pool / psycopg" in text and "CLEAN -> REPRODUCED" in text


def test_new_release_pairs_by_slot() -> None:
    old = merge.merge([(results_doc("3.11.7", "2.1.9", "1"), {"slot": "baseline"}, "a"),
                       (results_doc("3.11.7", "2.0.57", "2"), {"slot": "sqlalchemy"}, "b")])
    new = merge.merge([(results_doc("3.11.7", "2.1.9", "3"), {"slot": "baseline"}, "a"),
                       (results_doc("3.11.7", "2.0.58", "4", moved={MOVED_KEY: "HARNESS_ERROR"}),
                        {"slot": "sqlalchemy"}, "b")])
    found = diff.compare(old, new)
    assert ("py3.11-sa2.0.57-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18",
            "py3.11-sa2.0.58-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18") in found.pairs
    assert len(found.changes) == 1 and found.changes[0].new == "HARNESS_ERROR"
    assert not found.only_old_envs and not found.only_new_envs


def test_two_single_results_files_are_compared_with_each_other() -> None:
    old = single("3.11.7", "2.1.8", "py3.11-sa2.1.8", "1")
    new = single("3.13.0", "2.1.9", "py3.13-sa2.1.9", "2")
    found = diff.compare(old, new)
    assert len(found.pairs) == 1 and not found.changes
    assert "No cell changed outcome." in diff.render(found)


def test_cells_on_one_side_only_are_not_changes() -> None:
    old = single("3.11.7", "2.1.9", "baseline", "1")
    new = single("3.11.7", "2.1.9", "baseline", "2", only="loop-bound-pool")
    found = diff.compare(old, new)
    assert not found.changes and found.only_old_cells == 4
    assert "cells run on one side only" in diff.render(found)


def test_unpaired_environments_are_reported() -> None:
    old = merge.merge([(results_doc("3.11.7", "2.1.9", "1"), {"slot": "baseline"}, "a"),
                       (results_doc("3.13.0", "2.1.9", "2"), {"slot": "python"}, "b")])
    new = single("3.11.7", "2.1.9", "baseline", "3")
    found = diff.compare(old, new)
    assert found.only_old_envs == [
        "py3.13-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18"]


def test_markdown_has_legend_claims_and_one_row_per_cell() -> None:
    text = render_md.render(two_envs())
    assert ("| env | slot | Python | SQLAlchemy | Celery | asyncpg | psycopg | PgBouncer | "
            "PostgreSQL | Redis | backend |") in text
    assert ("| E2 | sqlalchemy | 3.11.7 | **2.0.58** | 5.7.0 | 0.32.0 | 3.3.9 | 1.18.0 | "
            "15.18 | 7.0.15 | local |") in text
    assert "## loop-bound-pool" in text and "## engine-before-fork" in text
    assert "- psycopg: **depends on version** (E1 does not hold; E2 holds)" in text
    assert "| default-pool | psycopg | bad | CLEAN 12/12 | REPRODUCED 2/12 (!) | yes |" in text
    assert "| nullpool | asyncpg | article-fix | CLEAN 12/12 | CLEAN 12/12 |  |" in text
    rows = [line for line in text.splitlines() if re.match(r"\| (default-pool|nullpool|"
                                                           r"import-pool|process-init) ", line)]
    assert len(rows) == 8


def test_markdown_marks_a_cell_not_run_in_one_environment() -> None:
    matrix = merge.merge([(results_doc("3.11.7", "2.1.9", "1"), {"slot": "baseline"}, "a"),
                          (results_doc("3.13.0", "2.1.9", "2", only="loop-bound-pool"),
                           {"slot": "python"}, "b")])
    assert "| import-pool | asyncpg | bad | REPRODUCED 2/12 | - |  |" in render_md.render(matrix)


def test_html_is_self_contained_escaped_and_has_every_row() -> None:
    matrix = two_envs()
    page = render_html.render(matrix)
    assert page.count('<tr class="cell-row') == len(table.rows(matrix)) == 8
    assert not re.search(r"(src|href)=\"?https?:", page)
    assert "<script>" in page and "<style>" in page
    assert "Error &lt;default-pool&gt; &amp; &quot;psycopg&quot;" in page
    assert "<default-pool>" not in page
    assert 'class="cell o-REPRODUCED moved"' in page
    assert 'data-differs="1"' in page and "depends on version" in page
    for select in ("f-scenario", "f-driver", "f-outcome"):
        assert f'id="{select}"' in page


def test_cell_text_and_counts() -> None:
    cell = next(r for r in two_envs()["results"] if r["outcome"] == "OTHER_FAILURE")
    assert table.cell_text(cell) == "OTHER_FAILURE 2/12"
    assert table.counts(cell) == "ok 2/12, other 10"
    assert table.cell_text(None) == "-"
    assert table.cell_text({"outcome": "N/A", "tasks": {}, "passed": True}) == "N/A"


# --- the pgbouncer axis -------------------------------------------------------------
def pgbouncer_matrix(started: bool = True) -> dict:
    """Baseline on the local PgBouncer 1.18 and its pgbouncer variation on the 1.24 image."""
    axes = {"python": "3.11", "sqlalchemy": "2.1.9", "celery": "5.7.0", "asyncpg": "0.32.0",
            "psycopg": "3.3.9"}
    return merge.merge([
        (results_doc("3.11.7", "2.1.9", "1", pgbouncer="1.18.0" if started else None),
         {"slot": "baseline", "axes": {**axes, "pgbouncer": "1.18"}}, "a"),
        (results_doc("3.11.7", "2.1.9", "2", pgbouncer="1.24.1" if started else None,
                     backend="docker", moved={MOVED_KEY: "REPRODUCED"}),
         {"slot": "pgbouncer", "axes": {**axes, "pgbouncer": "1.24"}}, "b")])


def test_the_legend_shows_the_pgbouncer_that_ran_and_bolds_the_axis_that_moved() -> None:
    text = render_md.render(pgbouncer_matrix())
    assert ("| E1 | baseline | 3.11.7 | 2.1.9 | 5.7.0 | 0.32.0 | 3.3.9 | 1.18.0 | 15.18 | "
            "7.0.15 | local |") in text
    assert ("| E2 | pgbouncer | 3.11.7 | 2.1.9 | 5.7.0 | 0.32.0 | 3.3.9 | **1.24.1** | 15.18 | "
            "7.0.15 | docker |") in text
    assert "| default-pool | psycopg | bad | CLEAN 12/12 | REPRODUCED 2/12 (!) | yes |" in text
    # No PgBouncer started (a -k without the PgBouncer scenarios): the axis value shows.
    text = render_md.render(pgbouncer_matrix(started=False))
    assert "| 3.3.9 | 1.18 | 15.18 |" in text and "| 3.3.9 | **1.24** | 15.18 |" in text
    assert table.changed_axes(pgbouncer_matrix()) == [set(), {"pgbouncer"}]
    page = render_html.render(pgbouncer_matrix())
    assert "<th>PgBouncer</th>" in page and '<td class="changed">1.24.1</td>' in page


def test_an_old_matrix_renders_and_diffs_against_a_new_one() -> None:
    old = old_matrix()  # as read without load_any: ids without -pgb, no pgbouncer field
    assert "| 3.3.9 | 1.18.0 | 15.18 |" in render_md.render(old)
    new = two_envs()
    found = diff.compare(old, new)
    assert len(found.pairs) == 2 and not found.only_old_envs and not found.only_new_envs
    assert [(c.old, c.new) for c in found.changes] == []


def test_unknown_pgbouncer_pairs_with_the_one_environment_that_agrees() -> None:
    """A results file from a run that started no PgBouncer (pgb?) against a matrix run."""
    old = merge.merge([(results_doc("3.11.7", "2.1.9", "1", pgbouncer=None), None, "a")])
    new = merge.merge([
        (results_doc("3.11.7", "2.1.9", "2", moved={MOVED_KEY: "REPRODUCED"}),
         {"slot": "baseline"}, "b"),
        (results_doc("3.13.0", "2.1.9", "3"), {"slot": "python"}, "c")])
    found = diff.compare(old, new)
    assert found.pairs == [(old["environments"][0]["id"], new["environments"][0]["id"])]
    assert old["environments"][0]["id"].endswith("-pgb?")
    assert [c.new for c in found.changes] == ["REPRODUCED"]
    # Ambiguous (both new environments agree with it): not paired by versions.
    new_two = pgbouncer_matrix()
    found = diff.compare(old, new_two)
    assert found.pairs == [] and found.only_old_envs == [old["environments"][0]["id"]]


def test_html_shows_what_a_variant_stands_for_its_knobs_and_its_signatures_meaning() -> None:
    doc = results_doc("3.11.7", "2.1.9", "1", only="loop-bound-pool")
    row = doc["results"][0]
    row.update(description="The engine is made at <import>.",
               knobs={"pool": "null", "loop": "per-task"},
               signature_help={"future-other-loop": "A Future bound to another loop."})
    page = render_html.render(merge.merge([(doc, {"slot": "baseline"}, "a")]))
    assert 'title="The engine is made at &lt;import&gt;."' in page
    assert "knobs in force: pool=&quot;null&quot;, loop=&quot;per-task&quot;" in page
    assert "<b>future-other-loop</b>: A Future bound to another loop." in page


def test_the_legend_names_rule_branches_no_run_observed(tmp_path, monkeypatch):
    # One environment on Celery 5.7: the branches of the Celery rules below 5.7 are not
    # in it. Rendered from a folder with no observation record, only this matrix counts.
    matrix = json.loads((ROOT / "docs/matrix/runs/python-3.14.json").read_text())
    monkeypatch.chdir(tmp_path)
    text = render_md.render(matrix)
    assert ("Rule branches no run observed, async-def-task: async-def-ignore-result where "
            "celery < 5.6.3: REPRODUCED (body-never-ran)") in text
