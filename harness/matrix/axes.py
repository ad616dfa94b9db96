"""Matrix axes and the plan: which environments a matrix run builds.

Responsibility: read the axes (``matrix.toml`` or command-line options), and turn
them into a list of :class:`Combination`, either the baseline plus one-axis-at-a-time
variations (the default) or the full cross product. Version strings here are
still what the user wrote; :mod:`harness.matrix.index`,
:mod:`harness.matrix.interpreters` and :mod:`harness.matrix.pgbouncer_axis` resolve and
check them.

Two kinds of axis: the Python line and the four packages decide what is installed
in an environment's virtualenv; ``pgbouncer`` is a SERVICE axis: it decides which
PgBouncer the scenarios run against (the local binary or a docker image), not what
is installed, so environments that differ only in it share one virtualenv.
``postgres`` is a service axis too, and an OPTIONAL one: a matrix that does not name it
runs on the local PostgreSQL as before, and its environment ids do not mention it.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.matrix import pairwise

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None  # type: ignore[assignment]

# Declared once, in the order they appear in environment ids and report columns.
AXES = ("python", "sqlalchemy", "celery", "asyncpg", "psycopg", "postgres", "pgbouncer")
PACKAGE_AXES = ("sqlalchemy", "celery", "asyncpg", "psycopg")
# What decides a virtualenv's contents: every axis but the service ones.
VENV_AXES = ("python", *PACKAGE_AXES)
SERVICE_AXES = ("postgres", "pgbouncer")
# Axes a matrix may leave out entirely: absent, they are not in the plan's versions nor in
# environment ids (ids of matrices written before the axis existed stay what they were).
OPTIONAL_AXES = ("postgres",)
SHORT = {"python": "py", "sqlalchemy": "sa", "celery": "celery", "asyncpg": "asyncpg",
         "psycopg": "psycopg", "postgres": "pg", "pgbouncer": "pgb"}
# An axis a matrix file may leave out, and the value it then has. A matrix.toml written
# before PgBouncer was an axis keeps running on the installed PgBouncer.
DEFAULTS = {"pgbouncer": ["local"]}
# The extras the project's own dependencies ask for (pyproject.toml), so a pinned
# install resolves the same optional packages as the project's .venv.
REQUIREMENT = {"sqlalchemy": "sqlalchemy[asyncio]=={}", "celery": "celery[redis]=={}",
               "asyncpg": "asyncpg=={}", "psycopg": "psycopg[binary]=={}"}
ONE_AT_A_TIME = "one-at-a-time"
PRODUCT = "product"
PAIRWISE = "pairwise"
MODES = (ONE_AT_A_TIME, PAIRWISE, PRODUCT)
BASELINE = "baseline"


@dataclass(frozen=True)
class MatrixSpec:
    """The axes of a matrix; the first value of each axis is the baseline's.

    Attributes:
        axes: axis name -> versions as written (``"2.1.9"``, ``"2.0.x"``, ``"latest"``).
        mode: ``one-at-a-time``, ``pairwise`` or ``product``.
        source: where the axes came from, for error messages.
    """

    axes: dict[str, list[str]]
    mode: str = ONE_AT_A_TIME
    source: str = "options"
    # Which cells an environment carries from another instead of running them
    # (:mod:`harness.matrix.carry`): "axes", "strict" or "off".
    carry: str = "axes"


@dataclass(frozen=True)
class Combination:
    """One environment of the plan: one version per axis.

    Attributes:
        versions: axis name -> resolved version (python as ``major.minor``).
        slot: ``baseline``, the axis this environment varies (``sqlalchemy``, or
            ``sqlalchemy#2`` for that axis's third value), ``pairwise#N`` (the N-th
            row of a pairwise plan), or ``product``.
            Regression diffs pair environments by slot when versions moved.
    """

    versions: Mapping[str, str]
    slot: str = BASELINE

    @property
    def id(self) -> str:
        return env_id(self.versions)

    @property
    def venv_id(self) -> str:
        """The id of its virtualenv: the id without the service axes, which install nothing."""
        return env_id(self.versions, VENV_AXES)

    def requirements(self) -> list[str]:
        """Pinned requirement strings for the package axes."""
        return [REQUIREMENT[axis].format(self.versions[axis]) for axis in PACKAGE_AXES]


def python_minor(version: str) -> str:
    """``3.11.7`` -> ``3.11``: environment ids name the Python line, not the patch."""
    return ".".join(version.split(".")[:2])


def env_id(versions: Mapping[str, str], axes: Sequence[str] = AXES) -> str:
    """The stable name of an environment, e.g. ``py3.13-sa2.1.9-...-psycopg3.3.9-pgb1.18``."""
    parts = []
    for axis in axes:
        if axis in OPTIONAL_AXES and axis not in versions:
            continue
        value = versions.get(axis, "?")
        parts.append(SHORT[axis] + (python_minor(value) if axis == "python" else value))
    return "-".join(parts)


def load_toml(path: Path) -> MatrixSpec:
    """Read ``matrix.toml``: an ``[axes]`` table of version lists and an optional ``mode``.

    Raises:
        ConfigError: the file is missing, is not TOML, or does not have that shape.
    """
    if tomllib is None:
        raise ConfigError("Reading matrix.toml needs Python 3.11+ (tomllib) or the tomli "
                          "package: run the harness on Python 3.11+, or pip install tomli.")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"There is no matrix file at {path}. Create one (see the "
                          f"project's matrix.toml) or give every axis as an option, "
                          f"e.g. --python 3.11 --sqlalchemy 2.1.9 ...") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix the line it names.") from exc
    return parse_spec(data, source=str(path))


def parse_spec(data: Mapping[str, Any], source: str) -> MatrixSpec:
    """Check the shape of a parsed matrix file and build a :class:`MatrixSpec`."""
    unknown = set(data) - {"mode", "axes", "carry"}
    if unknown:
        raise ConfigError(f"{source} has unknown top-level keys {sorted(unknown)}; "
                          f"only 'mode', 'carry' and an [axes] table are read.")
    from harness.matrix.carry import check_policy  # carry reads this module's AXES

    carry = check_policy(data.get("carry", "axes"), source)
    mode = data.get("mode", ONE_AT_A_TIME)
    if mode not in MODES:
        raise ConfigError(f"{source}: mode is {mode!r}; use one of {', '.join(MODES)}.")
    axes = data.get("axes")
    if not isinstance(axes, dict):
        raise ConfigError(f"{source} has no [axes] table. Add one with a list of versions "
                          f"for each of: {', '.join(AXES)}.")
    checked: dict[str, list[str]] = {}
    for name, values in axes.items():
        if name not in AXES:
            raise ConfigError(f"{source}: unknown axis {name!r}; the axes are "
                              f"{', '.join(AXES)}.")
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, str) and v.strip() for v in values)):
            raise ConfigError(f"{source}: axis {name!r} must be a non-empty list of version "
                              f"strings, like {name} = [\"1.2.3\"]; it is {values!r}.")
        if len(set(values)) != len(values):
            raise ConfigError(f"{source}: axis {name!r} lists a version twice: {values}.")
        checked[name] = [v.strip() for v in values]
    return MatrixSpec(axes=checked, mode=mode, source=source, carry=carry)


def with_options(spec: MatrixSpec | None, options: Mapping[str, Sequence[str] | None],
                 full: bool, pairwise: bool = False) -> MatrixSpec:
    """Override axes of ``spec`` (None: no file) with the ones given as options.

    Raises:
        ConfigError: an axis has values neither in the file nor in the options.
    """
    axes = dict(spec.axes) if spec else {}
    given = {k: list(v) for k, v in options.items() if v}
    axes.update(given)
    for axis, default in DEFAULTS.items():
        axes.setdefault(axis, list(default))
    missing = [axis for axis in AXES if axis not in axes and axis not in OPTIONAL_AXES]
    if missing:
        where = f"{spec.source}" if spec else "the options (no matrix file was read)"
        raise ConfigError(f"No versions for {', '.join(missing)} in {where}. Give them as "
                          f"options ({' '.join('--' + m + ' X.Y.Z' for m in missing)}) or "
                          f"in the [axes] table of matrix.toml.")
    if full and pairwise:
        raise ConfigError("--full and --pairwise ask for two different plans; give one of them.")
    mode = PRODUCT if full else PAIRWISE if pairwise else (spec.mode if spec else ONE_AT_A_TIME)
    source = spec.source + (" + options" if given else "") if spec else "options"
    return MatrixSpec(axes={a: axes[a] for a in AXES if a in axes}, mode=mode, source=source,
                      carry=spec.carry if spec else "axes")


def present(spec_axes: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """The axes a spec has, in :data:`AXES` order (optional ones may be absent)."""
    return tuple(axis for axis in AXES if axis in spec_axes)


def plan(spec: MatrixSpec, rows: Sequence[Mapping[str, str]] | None = None
         ) -> list[Combination]:
    """The environments to build, baseline first.

    One-at-a-time keeps a 2-core machine's matrix to ``1 + sum(len(axis) - 1)``
    environments instead of the product of all axis lengths, and still answers
    "which version moves this cell", because each variation differs from the
    baseline in exactly one axis. Pairwise (:mod:`harness.matrix.pairwise`) has every
    pair of values of any two axes in some environment, at about the same size;
    ``rows`` is a pairwise cover already made with the index's constraints (else one
    is made without constraints).
    """
    names = present(spec.axes)
    baseline = {axis: spec.axes[axis][0] for axis in names}
    if spec.mode == PAIRWISE:
        if rows is None:
            rows = pairwise.cover({axis: spec.axes[axis] for axis in names}).rows
        return [Combination(dict(row), BASELINE if i == 0 else f"{PAIRWISE}#{i}")
                for i, row in enumerate(rows)]
    if spec.mode == PRODUCT:
        combos = [Combination(dict(zip(names, values)), PRODUCT)
                  for values in itertools.product(*(spec.axes[a] for a in names))]
        # The baseline keeps its slot name so diffs pair it with a one-at-a-time run.
        return [Combination(c.versions, BASELINE) if dict(c.versions) == baseline else c
                for c in combos]
    combos = [Combination(baseline, BASELINE)]
    for axis in names:
        for index, value in enumerate(spec.axes[axis][1:], start=1):
            slot = axis if index == 1 else f"{axis}#{index}"
            combos.append(Combination({**baseline, axis: value}, slot))
    return combos


def github_include(combos: Sequence[Combination]) -> dict[str, list[dict[str, str]]]:
    """The ``strategy.matrix`` value of a GitHub Actions job: one entry per environment."""
    return {"include": [{"id": c.id, "slot": c.slot,
                         **{a: c.versions[a] for a in AXES if a in c.versions}}
                        for c in combos]}
