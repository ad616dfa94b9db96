"""``harness matrix`` options are honoured wherever they stand, or refused with a message.

The axis options take one or more values, so argparse alone would read ``plan`` in
``harness matrix --python 3.11 plan`` as a Python version, and a sub-action's
defaults would erase options written before it.
"""

from __future__ import annotations

import pytest

from harness import cli
from harness.environment import pgbouncer_version

EXAMPLE = ["--python", "3.11", "--sqlalchemy", "2.0.30", "--celery", "5.4.0", "--asyncpg",
           "0.29.0", "--psycopg", "3.1.20", "--pgbouncer", "1.18"]


def test_axis_options_before_plan_are_read() -> None:
    before = cli.parse(["matrix", *EXAMPLE, "plan"])
    after = cli.parse(["matrix", "plan", *EXAMPLE])
    for args in (before, after):
        assert args.action == "plan"
        assert args.python == ["3.11"] and args.celery == ["5.4.0"]
        assert args.pgbouncer == ["1.18"]


def test_an_option_after_the_action_wins_and_both_sides_combine() -> None:
    args = cli.parse(["matrix", "--python", "3.11", "--full", "plan", "--python", "3.13",
                      "--format", "github"])
    assert args.python == ["3.13"] and args.full and args.format == "github"


def test_merge_reads_out_and_baseline_given_before_it(tmp_path) -> None:
    args = cli.parse(["matrix", "--out", str(tmp_path), "merge", "a.json"])
    assert args.out == tmp_path and [str(p) for p in args.paths] == ["a.json"]


@pytest.mark.skipif(pgbouncer_version() is None, reason="no pgbouncer on PATH")
def test_plan_prints_the_environment_the_options_before_it_asked_for(capsys) -> None:
    line = pgbouncer_version().rsplit(".", 1)[0]
    assert cli.main(["matrix", *EXAMPLE[:-1], "local", "plan"]) == 0
    assert capsys.readouterr().out.split() == [
        "baseline", f"py3.11-sa2.0.30-celery5.4.0-asyncpg0.29.0-psycopg3.1.20-pgb{line}"]


@pytest.mark.parametrize("argv, unused", [
    (["matrix", "-k", "loop", "plan"], "-k"),
    (["matrix", "--only", "x", "--resolve", "latest", "plan"], "--only, --resolve"),
    (["matrix", "--baseline", "b.json", "plan"], "--baseline"),
    (["matrix", "--python", "3.11", "merge", "a.json"], "--python"),
])
def test_options_an_action_would_ignore_are_refused(argv, unused, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"does not use {unused}" in err and "silently ignore" in err


def test_pytest_arguments_for_plan_are_refused(capsys) -> None:
    assert cli.main(["matrix", "plan", "--", "-x"]) == 2
    assert "runs no pytest" in capsys.readouterr().err
