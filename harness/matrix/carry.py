"""Carried cells: a cell that an environment's axes cannot move is not run there again.

Responsibility: which axes a cell (scenario x variant x driver) depends on, and, for
each environment of a plan, which cells it runs and which it carries from an
environment that ran them already (:func:`carried_cells`).

Why a cell depends on an axis, by default (:func:`cell_axes`):

- python, sqlalchemy, celery: every cell. Every cell is a Celery prefork worker
  running SQLAlchemy code on that interpreter; no scenario is free of any of them.
- postgres (when the matrix has that axis): every cell. Every scenario runs on a
  fresh database of that server.
- asyncpg only for asyncpg cells, psycopg only for psycopg cells: the driver is the
  URL's dialect (``postgresql+asyncpg`` / ``postgresql+psycopg``, harness.stack), and a
  scenario's app imports the other driver nowhere (scenarios/apps: retry_storm imports
  the driver of its cell only). One thing is shared: the harness's own connections
  (creating each variant's database, ``setup_sql``, ``inspect_sql``, ``runs_sql``, the
  PgBouncer console) go through the environment's psycopg in every cell. Carrying an
  asyncpg cell across psycopg versions assumes that instrument reads the same with
  either; were it not to, the psycopg cells of that environment, which do run, would
  show it.
- pgbouncer only where the cell's stack goes through PgBouncer (``StackSpec.pgbouncer``
  of the variant, else of the scenario): a cell that connects to PostgreSQL directly
  never talks to PgBouncer, whatever its version.
- any axis an expectation rule or a ``requires`` check reads, as far as the rule says
  so (``before_package`` names its package, the PgBouncer rules their boundary): a
  cell's expectation, and so its ``(!)`` mark, may move with it even where the
  outcome does not. tests/test_matrix_carry.py probes every scenario's rules with
  this matrix's versions to check that no rule reads an axis its cell is said to be
  free of.

A scenario module may declare more or fewer, with a reason, in ``CELL_AXES``: a mapping
of ``"*"`` (every variant) or a variant's name to :class:`Declared`::

    CELL_AXES = {"*": Declared(depends_on=("psycopg",), why="the task body calls "
                                "psycopg directly to ...")}

Carrying: an environment E takes cell c from an earlier environment S of the same run
when S ran c itself (not carried, not a harness error), S and E have the same version
of every axis c depends on, and the distributions installed in S and E differ only in
those of the axes c does not depend on (:data:`OWN_DISTRIBUTIONS`). Policies
(``carry`` in matrix.toml): ``axes`` (the default) also carries between environments
that differ besides their axes (the docker backend and its PostgreSQL / Redis
versions, a container), and the legend says which carried cells assumed that;
``strict`` carries only between environments on the same backend and host; ``off``
runs every cell everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.matrix.axes import AXES, PACKAGE_AXES

AXES_POLICY, STRICT, OFF = "axes", "strict", "off"
POLICIES = (AXES_POLICY, STRICT, OFF)
HARNESS_ERROR = "HARNESS_ERROR"
DRIVER_AXES = ("asyncpg", "psycopg")
# Why every cell depends on these axes (see the module's docstring).
ALWAYS = {
    "python": "every cell runs a Celery worker on this interpreter",
    "sqlalchemy": "every cell's app is SQLAlchemy code",
    "celery": "every cell is a Celery prefork worker",
    "postgres": "every cell runs on a fresh database of this server",
}
# Distributions that only the axis's own package brings in: they may differ between two
# environments where that axis differs, without blocking a cell free of that axis.
OWN_DISTRIBUTIONS = {
    "asyncpg": ("asyncpg", "async-timeout"),
    "psycopg": ("psycopg", "psycopg-binary", "psycopg-c", "psycopg-pool"),
}
CellKey = tuple[str, str, str]  # scenario, variant, driver


@dataclass(frozen=True)
class Declared:
    """A scenario's (or variant's) own word on the axes its cells depend on.

    Args:
        depends_on: axes its cells depend on beyond the defaults.
        independent_of: default axes its cells do not depend on after all.
        why: the reason; required, shown in ``harness matrix plan``.
    """

    depends_on: tuple[str, ...] = ()
    independent_of: tuple[str, ...] = ()
    why: str = ""

    def check(self, where: str) -> None:
        unknown = [a for a in (*self.depends_on, *self.independent_of) if a not in AXES]
        if unknown:
            raise ConfigError(f"{where}: CELL_AXES names {', '.join(unknown)}, which is not an "
                              f"axis; the axes are {', '.join(AXES)}.")
        if not self.why.strip():
            raise ConfigError(f"{where}: CELL_AXES declares axes without a reason; give "
                              f"Declared(..., why=\"...\") the reason the defaults do not hold.")


@dataclass(frozen=True)
class Cell:
    """One cell of the plan and the axes it depends on (axis -> why)."""

    scenario: str
    variant: str
    driver: str
    depends: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> CellKey:
        return self.scenario, self.variant, self.driver

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "variant": self.variant, "driver": self.driver,
                "depends": dict(self.depends)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return cls(data["scenario"], data["variant"], data["driver"], dict(data["depends"]))


def _subject_axis(subject: Any) -> str | None:
    """The axis a rule's condition reads (``PYTHON``, ``PGBOUNCER``, ``package("asyncpg")``),
    or None for a distribution that is no axis (kombu: the installed check covers it)."""
    kind = getattr(subject, "kind", None)
    if kind in ("python", "pgbouncer"):
        return str(kind)
    if kind == "libpq":  # psycopg's binary wheel bundles the libpq it uses
        return "psycopg"
    if kind == "package":
        name = _norm(str(getattr(subject, "name", "")))
        return next((a for a in PACKAGE_AXES
                     if name == a or name in OWN_DISTRIBUTIONS.get(a, ())), None)
    return None


def _rule_axes(rule: Any, driver: str, seen: set[int] | None = None) -> dict[str, str]:
    """The axes a rule or a ``requires`` check says it reads, recursively: the conditions
    of a rule's branches and of a requirement (rules as data), or the markers
    ``package_boundary`` / ``pgbouncer_boundary`` / ``children`` of rules as functions. A
    plain function says nothing; the probing test in tests/test_matrix_carry.py is what
    catches one that reads an axis its cell is said to be free of."""
    seen = seen if seen is not None else set()
    if rule is None or isinstance(rule, (str, bytes)) or id(rule) in seen:
        return {}
    seen.add(id(rule))
    drivers = getattr(rule, "drivers", None)
    if drivers and driver not in drivers:
        return {}  # a requirement for the other driver only: it lets this cell run
    found: dict[str, str] = {}
    conditions = [getattr(rule, "condition", None)]
    branches = tuple(getattr(rule, "branches", ()) or ())
    conditions += [getattr(b, "when", None) for b in branches]
    for condition in conditions:
        axis = _subject_axis(getattr(condition, "subject", None))
        if axis:
            found.setdefault(axis, f"its expectation or requirement reads {condition}")
    boundary = getattr(rule, "package_boundary", None)
    if boundary and _subject_axis(_Package(boundary[0])):
        found.setdefault(str(_subject_axis(_Package(boundary[0]))),
                         f"its expectation changes at {boundary[0]} {boundary[1]}")
    if getattr(rule, "pgbouncer_boundary", None):
        found.setdefault("pgbouncer", f"its expectation or requirement changes at PgBouncer "
                                      f"{rule.pgbouncer_boundary}")
    nested = [*(getattr(rule, "children", ()) or ()), *(getattr(b, "expect", None)
                                                       for b in branches)]
    for child in nested:
        if callable(child):
            for axis, why in _rule_axes(child, driver, seen).items():
                found.setdefault(axis, why)
    return found


@dataclass(frozen=True)
class _Package:
    name: str
    kind: str = "package"


def cell_axes(scenario: Any, variant: Any, driver: str,
              declared: Mapping[str, Declared] | None = None) -> dict[str, str]:
    """Axis -> why, for one cell of ``scenario`` (a :class:`harness.scenario.Scenario`).

    ``declared`` is the scenario module's ``CELL_AXES`` (``"*"`` or a variant's name to
    :class:`Declared`); the variant's entry applies after the scenario's.
    """
    found = dict(ALWAYS)
    found[driver] = f"the cell's driver is {driver}"
    if driver in (variant.not_for or {}):
        # Nothing runs (n/a with the variant's reason, the same everywhere): the cell is
        # carried with its driver's other cells, and no rule of the variant applies to it.
        return {axis: found[axis] for axis in AXES if axis in found}
    stack = variant.stack or scenario.stack
    if stack.pgbouncer:
        found["pgbouncer"] = "the cell's stack goes through PgBouncer"
    expect = variant.expect
    if isinstance(expect, Mapping):
        expect = expect.get(driver)
    for rule in (expect, variant.requires):
        for axis, why in _rule_axes(rule, driver).items():
            found.setdefault(axis, why)
    for name in ("*", variant.name):
        entry = (declared or {}).get(name)
        if entry is None:
            continue
        entry.check(f"scenario {scenario.id}" + ("" if name == "*" else f", variant {name}"))
        for axis in entry.depends_on:
            found[axis] = f"declared: {entry.why}"
        for axis in entry.independent_of:
            found.pop(axis, None)
    return {axis: found[axis] for axis in AXES if axis in found}


@dataclass
class Ran:
    """An environment as carrying sees it: its axes, what it observed itself, what is
    installed in it (None: not known yet, as in a plan) and where it runs."""

    id: str
    axes: Mapping[str, str]
    fresh: Mapping[CellKey, Mapping[str, Any]] = field(default_factory=dict)
    installed: Mapping[str, str] | None = None
    place: str = "local"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_apart(a: Mapping[str, str] | None, b: Mapping[str, str] | None) -> set[str] | None:
    """Distributions whose version differs between two environments (None: not known)."""
    if a is None or b is None:
        return None
    left = {_norm(k): v for k, v in a.items()}
    right = {_norm(k): v for k, v in b.items()}
    return {k for k in left.keys() | right.keys() if left.get(k) != right.get(k)}


def why_not(cell: Cell, source: Ran, target: Ran, policy: str = AXES_POLICY) -> str | None:
    """Why ``target`` cannot take ``cell`` from ``source`` (None: it can)."""
    if policy == OFF:
        return "carrying is off"
    row = source.fresh.get(cell.key)
    if row is None:
        return f"{source.id} did not run it"
    if row.get("outcome") == HARNESS_ERROR:
        return f"{source.id} has a harness error for it"
    differ = {a for a in set(source.axes) | set(target.axes)
              if source.axes.get(a) != target.axes.get(a)}
    moved = sorted(a for a in differ if a in cell.depends)
    if moved:
        return f"it depends on {', '.join(moved)}"
    if policy == STRICT and source.place != target.place:
        return f"{source.id} ran on {source.place}, this on {target.place}"
    apart = installed_apart(source.installed, target.installed)
    if apart:
        allowed = {_norm(d) for a in differ for d in OWN_DISTRIBUTIONS.get(a, ())}
        other = sorted(apart - allowed)
        if other:
            return f"installed distributions differ besides the axes: {', '.join(other)}"
    return None


def carried_cells(cells: Iterable[Cell], target: Ran, earlier: Sequence[Ran],
                  policy: str = AXES_POLICY) -> dict[CellKey, str]:
    """Cell key -> the id of the earlier environment it is carried from (the first that can
    give it); cells missing here run in ``target``."""
    if policy == OFF:
        return {}
    out: dict[CellKey, str] = {}
    for cell in cells:
        for source in earlier:
            if why_not(cell, source, target, policy) is None:
                out[cell.key] = source.id
                break
    return out


@dataclass(frozen=True)
class PlannedEnv:
    """One environment of a simulated plan: what it runs and what it carries, from where."""

    id: str
    runs: int
    carried: Mapping[str, int]  # source id -> cells

    @property
    def carried_total(self) -> int:
        return sum(self.carried.values())


def simulate(envs: Sequence[tuple[str, Mapping[str, str]]], cells: Sequence[Cell],
             policy: str = AXES_POLICY, places: Mapping[str, str] | None = None
             ) -> list[PlannedEnv]:
    """What each environment of a plan (id, axes; in run order) would run and carry, when
    every cell it runs gives a result other than a harness error. Installed packages
    are not known before building: a built environment may carry less."""
    earlier: list[Ran] = []
    out = []
    for env_id, axes in envs:
        target = Ran(env_id, axes, place=(places or {}).get(env_id, "local"))
        carried = carried_cells(cells, target, earlier, policy)
        target.fresh = {c.key: {"outcome": "?"} for c in cells if c.key not in carried}
        earlier.append(target)
        counts: dict[str, int] = {}
        for source in carried.values():
            counts[source] = counts.get(source, 0) + 1
        out.append(PlannedEnv(env_id, len(cells) - len(carried), counts))
    return out


def read_cells(path: Path) -> list[Cell]:
    """The cells a collection listed (``pytest --list-cells FILE``)."""
    return [Cell.from_dict(c) for c in json.loads(path.read_text())["cells"]]


def write_skip(path: Path, carried: Mapping[CellKey, str]) -> Path:
    """The file ``pytest --skip-cells`` reads: the cells this environment does not run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": [list(k) for k in sorted(carried)]}, indent=0) + "\n")
    return path


def read_skip(path: Path) -> set[CellKey]:
    """The cells in a ``--skip-cells`` file.

    Raises:
        ConfigError: it cannot be read or is not such a file.
    """
    try:
        data = json.loads(Path(path).read_text())
        return {(str(s), str(v), str(d)) for s, v, d in data["cells"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--skip-cells {path} is not a list of cells ({exc}). It is the file "
                          f"'harness matrix' writes: a JSON object whose \"cells\" is a list "
                          f"of [scenario, variant, driver].") from exc


def sidecar_entries(carried: Mapping[CellKey, str]) -> list[dict[str, str]]:
    """The ``carried`` list of an environment's sidecar (matrix-env.json)."""
    return [{"scenario": s, "variant": v, "driver": d, "from": source}
            for (s, v, d), source in sorted(carried.items())]


def check_policy(value: Any, source: str) -> str:
    """A ``carry`` setting as one of :data:`POLICIES` (true/false mean axes/off).

    Raises:
        ConfigError: any other value.
    """
    if value is True:
        return AXES_POLICY
    if value is False:
        return OFF
    if value in POLICIES:
        return str(value)
    raise ConfigError(f"{source}: carry is {value!r}; use \"axes\" (carry cells an "
                      f"environment's axes cannot move, the default), \"strict\" (only "
                      f"between environments on the same backend) or \"off\" (run every "
                      f"cell in every environment).")
