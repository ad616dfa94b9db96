"""Verdicts on the article's claims and the summary table, from result dicts."""

import pytest

from harness.summary import render_table, render_verdicts
from harness.verdict import (
    DIFFERENT_ERROR,
    DOES_NOT_HOLD,
    HOLDS,
    NOT_APPLICABLE,
    UNKNOWN,
    verdicts,
)

CLAIM = {"error": "loop is closed", "fix": "NullPool", "signature": "event-loop-closed",
         "bad": "bad", "fixed": "fix"}


def result(variant: str, outcome: str, by_signature=None, driver="asyncpg", **extra):
    tasks = {"total": 4, "ok": 4 if outcome == "CLEAN" else 1, "hung": 0, "wrong": 0,
             "other": 0, "by_signature": by_signature or {}}
    return {"scenario": "s", "variant": variant, "driver": driver, "role": "bad",
            "expected": outcome, "outcome": outcome, "tasks": tasks, "claim": CLAIM,
            "worker_start_s": 1.0, "run_s": 0.5, "reason": "", **extra}


@pytest.mark.parametrize(("bad", "fix", "verdict"), [
    (("REPRODUCED", {"event-loop-closed": 3}), ("CLEAN", None), HOLDS),
    (("REPRODUCED", {"future-other-loop": 3}), ("CLEAN", None), DIFFERENT_ERROR),
    (("CLEAN", None), ("CLEAN", None), DOES_NOT_HOLD),
    (("REPRODUCED", {"event-loop-closed": 3}), ("REPRODUCED", {"event-loop-closed": 1}),
     DOES_NOT_HOLD),
    (("HARNESS_ERROR", None), ("CLEAN", None), UNKNOWN),
])
def test_claim_verdicts(bad, fix, verdict):
    found = verdicts([result("bad", *bad), result("fix", *fix)])
    assert [v.verdict for v in found] == [verdict]


def test_missing_variant_is_unknown():
    assert verdicts([result("bad", "REPRODUCED", {"event-loop-closed": 1})])[0].verdict == UNKNOWN


def test_verdicts_are_per_driver():
    rows = [result("bad", "REPRODUCED", {"event-loop-closed": 1}),
            result("fix", "CLEAN"),
            result("bad", "CLEAN", driver="psycopg"), result("fix", "CLEAN", driver="psycopg")]
    assert {(v.driver, v.verdict) for v in verdicts(rows)} == {
        ("asyncpg", HOLDS), ("psycopg", DOES_NOT_HOLD)}
    assert "DOES NOT HOLD" in render_verdicts(rows)


def test_table_has_a_row_per_result_and_marks_unexpected_outcomes():
    rows = [result("bad", "REPRODUCED", {"event-loop-closed": 3}, log_findings={"never-awaited": 2},
                   passed=True),
            result("fix", "OTHER_FAILURE", passed=False)]
    text = render_table(rows).splitlines()
    assert len(text) == 2 + len(rows)
    assert "event-loop-closed:3" in text[2] and "never-awaited:2" in text[2]
    assert "OTHER_FAILURE (!)" in text[3]


def test_table_shows_the_reason_of_a_harness_error():
    rows = [result("bad", "HARNESS_ERROR", reason="PostgreSQL did not answer\nlog...")]
    assert "PostgreSQL did not answer" in render_table(rows)


def test_a_claim_of_support_does_not_hold_when_that_configuration_fails():
    support = dict(CLAIM, bad_fails=False)
    rows = [dict(result("bad", "REPRODUCED", {"body-never-ran": 8}), claim=support),
            dict(result("fix", "CLEAN"), claim=support)]
    [found] = verdicts(rows)
    assert found.verdict == DOES_NOT_HOLD and "body-never-ran" in found.detail
    rows[0] = dict(result("bad", "CLEAN"), claim=support)
    assert verdicts(rows)[0].verdict == HOLDS


def test_a_variant_that_is_not_applicable_gives_an_na_verdict():
    rows = [result("bad", "N/A", reason="needs PgBouncer >= 1.21"), result("fix", "CLEAN")]
    assert verdicts(rows)[0].verdict == NOT_APPLICABLE


def test_a_maintainers_recommendation_holds_on_failure_and_fix_without_a_quoted_error():
    """A production fault's claim quotes no error: any failure of the bad variant and a
    clean recommended fix make it hold; the article's unquoted error stays 'different'."""
    recommended = dict(CLAIM, signature=None, source="SQLAlchemy's pooling documentation")
    rows = [dict(result("bad", "REPRODUCED", {"asyncpg-connection-lost": 1}), claim=recommended),
            dict(result("fix", "CLEAN"), claim=recommended)]
    [found] = verdicts(rows)
    assert found.verdict == HOLDS and found.source == recommended["source"]
    assert "the claim (SQLAlchemy's pooling documentation) HOLDS" in render_verdicts(rows)
    article = dict(CLAIM, signature=None)
    rows = [dict(row, claim=article) for row in rows]
    assert verdicts(rows)[0].verdict == DIFFERENT_ERROR
    rows[1] = dict(result("fix", "REPRODUCED", {"asyncpg-connection-lost": 1}),
                   claim=recommended)
    rows[0] = dict(rows[0], claim=recommended)
    assert verdicts(rows)[0].verdict == DOES_NOT_HOLD
