"""Pairwise plans cover every pair of axis values, respect constraints, and stay small."""

from __future__ import annotations

import itertools

import pytest

from harness.errors import ConfigError
from harness.matrix import axes, pairwise

DEFAULT = {"python": ["3.13", "3.11"], "sqlalchemy": ["2.1.9", "2.0.58"],
           "celery": ["5.7.0", "5.6.3"], "asyncpg": ["0.32.0", "0.30.0"],
           "psycopg": ["3.3.9", "3.2.13"], "pgbouncer": ["1.18", "1.24"]}


def covered(rows: list[dict[str, str]], names: list[str]) -> set[pairwise.Pair]:
    return set().union(*(pairwise.pairs_of(r, names) for r in rows))


@pytest.mark.parametrize("shape", [
    DEFAULT,
    {**DEFAULT, "postgres": ["15", "18"]},
    {"python": ["3.10", "3.11", "3.12", "3.13"], "sqlalchemy": ["2.0.30", "2.1.9"],
     "celery": ["5.3.0", "5.4.0", "5.6.3", "5.7.0"], "asyncpg": ["0.28.0", "0.30.0", "0.32.0"],
     "psycopg": ["3.1.20", "3.3.9"], "pgbouncer": ["1.18", "1.24", "1.26"]},
])
def test_every_pair_is_covered_baseline_first(shape):
    plan = pairwise.cover(shape)
    names = list(shape)
    assert covered(plan.rows, names) == pairwise.all_pairs(shape)
    assert plan.rows[0] == {n: v[0] for n, v in shape.items()}
    assert not plan.impossible
    # Each row's "new" pairs are really new, and together they are every pair.
    seen: set = set()
    for row, new in zip(plan.rows, plan.new_pairs):
        assert set(new) <= pairwise.pairs_of(row, names) and not set(new) & seen
        seen |= set(new)
    assert seen == pairwise.all_pairs(shape)


def test_the_default_axes_need_fewer_environments_than_one_at_a_time():
    plan = pairwise.cover(DEFAULT)
    one_at_a_time = 1 + sum(len(v) - 1 for v in DEFAULT.values())
    assert len(plan.rows) < one_at_a_time  # 6 < 7, and every pair instead of 6 of 60
    assert len(plan.rows) < len(list(itertools.product(*DEFAULT.values())))


def test_forbidden_pairs_are_never_planned_and_are_reported():
    shape = {"python": ["3.11", "3.13"], "asyncpg": ["0.30.0", "0.28.0"],
             "celery": ["5.7.0", "5.3.0"]}
    no_wheel = ((("python", "3.13"), ("asyncpg", "0.28.0")),)
    plan = pairwise.cover(shape, pairwise.forbidding(no_wheel))
    assert all(not (r["python"] == "3.13" and r["asyncpg"] == "0.28.0") for r in plan.rows)
    assert plan.impossible == list(no_wheel)
    assert covered(plan.rows, list(shape)) == pairwise.all_pairs(shape) - set(no_wheel)


def test_the_same_axes_give_the_same_plan():
    assert pairwise.cover(DEFAULT).rows == pairwise.cover(DEFAULT).rows


def test_a_forbidden_baseline_is_refused_with_advice():
    with pytest.raises(ConfigError, match="first value"):
        pairwise.cover({"python": ["3.13"], "asyncpg": ["0.28.0"]},
                       pairwise.forbidding([(("python", "3.13"), ("asyncpg", "0.28.0"))]))


def test_a_mode_file_may_ask_for_pairwise():
    spec = axes.parse_spec({"mode": "pairwise", "axes": {k: v for k, v in DEFAULT.items()}},
                           "matrix.toml")
    combos = axes.plan(spec)
    assert combos[0].slot == axes.BASELINE
    assert [c.slot for c in combos[1:]] == [f"pairwise#{i}" for i in range(1, len(combos))]


def wheel(name: str, requires: str | None = None) -> dict:
    return {"filename": name, "requires-python": requires}


ASYNCPG_028 = [wheel("asyncpg-0.28.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                     ">=3.7.0"),
               wheel("asyncpg-0.28.0-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                     ">=3.7.0"),
               wheel("asyncpg-0.28.0.tar.gz", ">=3.7.0")]


@pytest.mark.parametrize(("files", "version", "python", "expected"), [
    (ASYNCPG_028, "0.28.0", "3.11", True),
    (ASYNCPG_028, "0.28.0", "3.13", False),  # no cp313 wheel; the sdist needs a compiler
    ([wheel("celery-5.7.0-py3-none-any.whl", ">=3.10")], "5.7.0", "3.13", True),
    ([wheel("celery-5.7.0-py3-none-any.whl", ">=3.10")], "5.7.0", "3.9", False),
    ([wheel("x-1.0-cp310-abi3-manylinux_2_17_x86_64.whl")], "1.0", "3.14", True),  # abi3
    ([wheel("x-1.0-cp312-cp312-macosx_11_0_arm64.whl")], "1.0", "3.12", False),  # not Linux
    ([wheel("x-1.0.tar.gz", ">=3.8")], "1.0", "3.15", True),  # sdist only: requires-python
])
def test_which_python_lines_a_release_installs_on(files, version, python, expected):
    from harness.matrix.python_support import supports
    assert supports(files, version, python) is expected
