"""The environment a version rule looks at, and the conditions that choose its branch.

Responsibility: compare the versions an environment has (a package, Python,
PgBouncer) with a boundary, and say so in words a reader and ``harness rules``
share. Nothing here runs anything.

A condition is data, written as a comparison::

    package("asyncpg") < "0.31"     # "asyncpg < 0.31"
    PYTHON >= "3.14"                # "Python >= 3.14"
    PGBOUNCER < "1.24"              # "PgBouncer < 1.24"
    LIBPQ < "17"                    # "libpq < 17" (the libpq psycopg uses)
    installed("celery-aio-pool")    # "celery-aio-pool installed"

Only ``<`` and ``>=`` exist, so every condition has an exact opposite (the branch
a rule takes otherwise), and a missing or unreadable version counts as older than
any boundary (a binary that printed no version, say).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class RunEnv:
    """What an expectation rule may depend on.

    Args:
        driver: the database driver of the run.
        python: the interpreter's (major, minor).
        packages: the versions of the packages the harness records for every run.
        pgbouncer: the PgBouncer version, or None when there is none.
        installed: every distribution installed, when known (a recorded matrix
            environment lists them); None: a package ``packages`` does not name is
            looked up in this interpreter, which is the run's own.
        libpq: the version of the libpq psycopg uses (its binary wheel bundles one; its
            C and pure-Python implementations use the system's), or None.
    """

    driver: str
    python: tuple[int, int]
    packages: Mapping[str, str]
    pgbouncer: str | None = None
    installed: Mapping[str, str] | None = None
    libpq: str | None = None

    def package_version(self, name: str) -> str | None:
        """The installed version of distribution ``name``, or None when it is not installed."""
        if name in self.packages:
            return self.packages[name]
        if self.installed is not None:
            return self.installed.get(name)
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None


def parse_version(version: str | None) -> Version | None:
    """A PEP 440 version (``"0.31.0rc1"`` sorts before ``"0.31"``), or None when
    missing or unreadable (a binary that printed no version, say)."""
    if not version:
        return None
    try:
        return Version(version)
    except InvalidVersion:
        return None


def older_than(version: str | None, boundary: str) -> bool:
    """Is ``version`` older than ``boundary``? A missing or unreadable one counts as older."""
    found = parse_version(version)
    return found is None or found < Version(boundary)


@dataclass(frozen=True)
class Subject:
    """Something with a version: a package (by its distribution name), Python or PgBouncer.

    Compare it with a version string to get a condition: ``package("kombu") < "5.7"``.
    """

    kind: str  # "package", "python", "pgbouncer" or "libpq"
    name: str  # the distribution name, or "Python" / "PgBouncer" / "libpq"

    def version_in(self, env: RunEnv) -> str | None:
        if self.kind == "python":
            return ".".join(map(str, env.python))
        if self.kind == "pgbouncer":
            return env.pgbouncer
        if self.kind == "libpq":
            return env.libpq
        return env.package_version(self.name)

    def __lt__(self, boundary: str) -> Compare:  # type: ignore[override]
        return Compare(self, "<", _checked(boundary))

    def __ge__(self, boundary: str) -> Compare:  # type: ignore[override]
        return Compare(self, ">=", _checked(boundary))


def _checked(boundary: object) -> str:
    if not isinstance(boundary, str) or parse_version(boundary) is None:
        raise ValueError(f"a version boundary must be a version string such as \"0.31\", "
                         f"not {boundary!r}")
    return boundary


PYTHON = Subject("python", "Python")
PGBOUNCER = Subject("pgbouncer", "PgBouncer")
LIBPQ = Subject("libpq", "libpq")


def package(name: str) -> Subject:
    """An installed distribution, by the name its package list gives (``"celery"``)."""
    return Subject("package", name)


@dataclass(frozen=True)
class Compare:
    """``subject op version``, with ``op`` one of ``<`` and ``>=``."""

    subject: Subject
    op: str
    version: str

    def __post_init__(self) -> None:
        if self.op not in ("<", ">="):
            raise ValueError(f"a condition compares with < or >=, not {self.op!r}")

    def holds(self, env: RunEnv) -> bool:
        older = older_than(self.subject.version_in(env), self.version)
        return older if self.op == "<" else not older

    def negate(self) -> Compare:
        return Compare(self.subject, ">=" if self.op == "<" else "<", self.version)

    def found(self, env: RunEnv) -> str:
        """What ``env`` has, in words, for a message: "the installed PgBouncer is 1.18"."""
        return f"the installed {self.subject.name} is {self.subject.version_in(env) or 'missing'}"

    def __str__(self) -> str:
        return f"{self.subject.name} {self.op} {self.version}"


@dataclass(frozen=True)
class Installed:
    """Is distribution ``package`` installed (``present``) or not?"""

    package: str
    present: bool = True

    @property
    def subject(self) -> Subject:
        return Subject("package", self.package)

    def holds(self, env: RunEnv) -> bool:
        return (env.package_version(self.package) is not None) == self.present

    def negate(self) -> Installed:
        return Installed(self.package, not self.present)

    def found(self, env: RunEnv) -> str:
        return ""

    def __str__(self) -> str:
        return f"{self.package} {'installed' if self.present else 'not installed'}"


def installed(name: str) -> Installed:
    """Distribution ``name`` is installed (any version)."""
    return Installed(name)


Condition = Compare | Installed


def describe(conditions: tuple[Condition, ...]) -> str:
    """Conditions joined into one readable text; two bounds on one subject become a
    range ("5.6.3 <= celery < 5.7"), a bound another makes redundant is dropped."""
    if not conditions:
        return "always"
    parts: list[str] = []
    bounds: dict[Subject, dict[str, str]] = {}
    order: list[Subject | Condition] = []
    for cond in conditions:
        if isinstance(cond, Compare):
            if cond.subject not in bounds:
                bounds[cond.subject] = {}
                order.append(cond.subject)
            have = bounds[cond.subject].get(cond.op)
            tighter = (have is None or (Version(cond.version) < Version(have)
                                        if cond.op == "<" else
                                        Version(cond.version) > Version(have)))
            if tighter:
                bounds[cond.subject][cond.op] = cond.version
        elif cond not in order:
            order.append(cond)
    for item in order:
        if isinstance(item, Subject):
            low, high = bounds[item].get(">="), bounds[item].get("<")
            if low and high:
                parts.append(f"{low} <= {item.name} < {high}")
            else:
                parts.append(f"{item.name} >= {low}" if low else f"{item.name} < {high}")
        else:
            parts.append(str(item))
    return ", ".join(parts)
