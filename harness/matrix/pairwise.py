"""Pairwise plans: the fewest environments in which every two axis values meet.

Responsibility: build a covering array of strength 2 over the matrix axes. One axis
at a time never shows two changed axes together (asyncpg 0.29 behind PgBouncer 1.24
needs both); the full product does, at a cost that doubles with every axis. A
pairwise plan has every pair of values of any two axes in at least one environment,
so an interaction between two versions is observed, at about the size of one axis
at a time.

The construction is greedy over the product of the axes (small for a matrix: 2^7 =
128 rows for seven axes of two values): the baseline first, then each time the
combination that covers the most pairs not yet covered, ties going to the one
closest to the baseline. Greedy is not always smallest (seven environments for six
axes of two values, where six suffice), so a local search then tries to do with one
row fewer, again and again, from a fixed seed: the same axes always give the same
plan. Combinations a constraint forbids (an interpreter a release cannot be
installed on) are never chosen, and a pair only such combinations hold is reported
as impossible rather than silently missing.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.errors import ConfigError

# (axis, value), (axis, value) in axis order: two values that must meet.
Pair = tuple[tuple[str, str], tuple[str, str]]
Allowed = Callable[[Mapping[str, str]], bool]
MAX_PRODUCT = 200_000  # rows the greedy search looks at; far above any 2-core matrix
SEARCH_STEPS = 4_000  # local-search moves per attempt at one row fewer
SEED = 20261130  # fixed: the same axes always give the same plan


@dataclass(frozen=True)
class Cover:
    """A pairwise plan: its rows, the pairs each row covered first, and the pairs no
    allowed row can hold."""

    rows: list[dict[str, str]]
    new_pairs: list[list[Pair]]
    impossible: list[Pair]


def all_pairs(axes: Mapping[str, Sequence[str]]) -> set[Pair]:
    names = list(axes)
    return {((a, x), (b, y)) for i, a in enumerate(names) for b in names[i + 1:]
            for x in axes[a] for y in axes[b]}


def pairs_of(row: Mapping[str, str], names: Sequence[str]) -> set[Pair]:
    return {((a, row[a]), (b, row[b])) for i, a in enumerate(names) for b in names[i + 1:]}


def cover(axes: Mapping[str, Sequence[str]], allowed: Allowed = lambda row: True) -> Cover:
    """A covering array for ``axes`` (first value of each axis = the baseline's).

    Raises:
        ConfigError: the product is too large to search, or the baseline itself is
            not allowed.
    """
    names = list(axes)
    size = 1
    for name in names:
        size *= len(axes[name])
    if size > MAX_PRODUCT:
        raise ConfigError(f"A pairwise plan over {size} combinations is too large to search "
                          f"here (at most {MAX_PRODUCT}); split the axes over several "
                          f"matrix runs.")
    baseline = {name: axes[name][0] for name in names}
    if not allowed(baseline):
        raise ConfigError(f"The baseline ({', '.join(f'{k} {v}' for k, v in baseline.items())}) "
                          f"cannot be installed together; change the first value of an axis.")
    rank = {name: {value: i for i, value in enumerate(axes[name])} for name in names}
    candidates = [dict(zip(names, values))
                  for values in itertools.product(*(axes[name] for name in names))]
    candidates = [row for row in candidates if allowed(row)]
    coverable = set().union(*(pairs_of(row, names) for row in candidates))
    uncovered = all_pairs(axes) & coverable
    rows = [baseline]
    uncovered -= pairs_of(baseline, names)
    def score(row: dict[str, str], open_pairs: set[Pair]) -> tuple[int, int, list[int]]:
        gained = len(pairs_of(row, names) & open_pairs)
        distance = sum(row[n] != baseline[n] for n in names)
        return (-gained, distance, [rank[n][row[n]] for n in names])

    while uncovered:
        best = min(candidates, key=lambda row, open_pairs=uncovered: score(row, open_pairs))
        rows.append(best)
        uncovered -= pairs_of(best, names)
    rows = _shrink(rows, axes, allowed, all_pairs(axes) & coverable)
    new_pairs, seen = [], set()
    for row in rows:
        gained = pairs_of(row, names) - seen
        new_pairs.append(sorted(gained))
        seen |= gained
    return Cover(rows, new_pairs, sorted(all_pairs(axes) - coverable))


def _shrink(rows: list[dict[str, str]], axes: Mapping[str, Sequence[str]], allowed: Allowed,
            wanted: set[Pair]) -> list[dict[str, str]]:
    """Try to cover ``wanted`` with one row fewer, until an attempt fails.

    Each attempt drops the last row and repairs what it left uncovered: pick an
    uncovered pair, write its two values into a row other than the baseline (row 0
    never changes), keep the move unless it uncovers more than it covers.
    """
    names = list(axes)
    rng = random.Random(SEED)
    best = rows
    while len(best) > 2:
        trial = [dict(r) for r in best[:-1]]
        for _ in range(SEARCH_STEPS):
            have = set().union(*(pairs_of(r, names) for r in trial))
            missing = sorted(wanted - have)
            if not missing:
                break
            (a, x), (b, y) = rng.choice(missing)
            index = rng.randrange(1, len(trial))
            moved = {**trial[index], a: x, b: y}
            if not allowed(moved):
                continue
            before = len(missing)
            old, trial[index] = trial[index], moved
            after = len(wanted - set().union(*(pairs_of(r, names) for r in trial)))
            if after > before and rng.random() > 0.1:  # mostly downhill, sometimes not
                trial[index] = old
        else:
            return best
        if wanted - set().union(*(pairs_of(r, names) for r in trial)):
            return best
        best = trial
    return best


def forbidding(forbidden: Iterable[Pair]) -> Allowed:
    """A constraint from pairs that cannot exist together."""
    pairs = set(forbidden)

    def allowed(row: Mapping[str, str]) -> bool:
        return not any(row.get(a) == x and row.get(b) == y for (a, x), (b, y) in pairs)

    return allowed


def describe(pair: Pair) -> str:
    (a, x), (b, y) = pair
    return f"{a} {x} + {b} {y}"
