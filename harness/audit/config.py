"""What to audit: ``[tool.harness.audit]`` in the user's pyproject.toml, and options.

Responsibility: read and check the audit's input, fast and without importing the
user's code (that is :mod:`harness.audit.preflight`'s job). Every mistake is one
paragraph that says what to write instead.

Example::

    [tool.harness.audit]
    engine = "myapp.db:engine"          # an AsyncEngine, an async_sessionmaker, or a factory
    url_env = "DATABASE_URL"            # the variable the code reads its URL from
    run = "asyncio.run"                 # or "loop-per-process", or "myapp.tasks:run_async"
    celery_app = "myapp.worker:app"     # optional: its settings are taken over
    retry_on = ["sqlalchemy.exc.OperationalError"]   # optional
    pgbouncer = true                    # deployed behind PgBouncer in transaction mode
    accept = ["network-stall"]          # hazards that may reproduce without failing the audit
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None  # type: ignore[assignment]

# In the order the report lists them. Each is explained by one scenario.
HAZARDS = ("loop-reuse", "parent-use-before-fork", "pgbouncer-prepared", "connection-storm",
           "soft-time-limit", "server-restart", "network-stall")
BUILTIN_RUNNERS = ("asyncio.run", "loop-per-process")
DEFAULT_URL_ENV = "DATABASE_URL"
CONFIG_ENV = "HARNESS_AUDIT_CONFIG"  # how the pytest suite receives the audit's input

# "package.module:attribute" (the attribute may be dotted: "module:Class.factory").
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_CLASS_PATH = re.compile(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYS = ("engine", "url_env", "run", "celery_app", "retry_on", "pgbouncer", "hazards",
        "accept", "python_path")


@dataclass(frozen=True)
class AuditConfig:
    """The audit's input, checked (see the module docstring for each key)."""

    engine: str
    project_dir: str
    url_env: str = DEFAULT_URL_ENV
    run: str = "asyncio.run"
    celery_app: str | None = None
    retry_on: tuple[str, ...] = ()
    pgbouncer: bool = False
    hazards: tuple[str, ...] = HAZARDS
    accept: tuple[str, ...] = ()
    # Folders put first on the worker's sys.path; relative to project_dir.
    python_path: tuple[str, ...] = (".",)
    # Filled in by the preflight: what the user's code turned out to be.
    driver: str = ""
    kind: str = ""
    user_settings: Mapping[str, Any] = field(default_factory=dict)

    def search_path(self) -> list[str]:
        root = Path(self.project_dir)
        return [str((root / p).resolve()) for p in self.python_path]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> AuditConfig:
        data = json.loads(raw)
        for key in ("retry_on", "hazards", "accept", "python_path"):
            data[key] = tuple(data[key])
        return cls(**data)

    def with_found(self, **found: Any) -> AuditConfig:
        return replace(self, **found)


def read_pyproject(project_dir: Path) -> dict[str, Any]:
    """The ``[tool.harness.audit]`` table of ``project_dir/pyproject.toml`` ({} if none)."""
    path = project_dir / "pyproject.toml"
    if not path.exists():
        return {}
    if tomllib is None:
        raise ConfigError("Reading pyproject.toml needs Python 3.11+ (tomllib) or the tomli "
                          "package: pip install tomli, or give the audit's input as options.")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix the line it names.") from exc
    table = data.get("tool", {}).get("harness", {}).get("audit", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.harness.audit] must be a table of keys "
                          f"({', '.join(KEYS)}).")
    return table


def build(project_dir: Path, table: Mapping[str, Any],
          options: Mapping[str, Any]) -> AuditConfig:
    """Merge the pyproject table and the options (options win) and check every value.

    Raises:
        ConfigError: one paragraph naming the key, what it holds and what it should.
    """
    where = f"{project_dir / 'pyproject.toml'} [tool.harness.audit]"
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}. "
                          f"The keys are: {', '.join(KEYS)}.")
    merged = {**table, **{k: v for k, v in options.items() if v is not None}}
    engine = merged.get("engine")
    if not engine:
        raise ConfigError(
            f"Nothing to audit: say where your engine is, with engine = \"myapp.db:engine\" "
            f"in {where} or --engine myapp.db:engine. It may name an AsyncEngine, an "
            f"async_sessionmaker, or a function that returns one.")
    _check_import_path("engine", engine)
    run = str(merged.get("run", "asyncio.run"))
    if run not in BUILTIN_RUNNERS:
        _check_import_path("run", run, extra=f" or one of {', '.join(BUILTIN_RUNNERS)}")
    celery_app = merged.get("celery_app")
    if celery_app is not None:
        _check_import_path("celery_app", celery_app)
    url_env = str(merged.get("url_env", DEFAULT_URL_ENV))
    if not _ENV_NAME.fullmatch(url_env):
        raise ConfigError(f"url_env = {url_env!r} is not an environment variable name; give "
                          f"the variable your code reads its database URL from, e.g. "
                          f"DATABASE_URL.")
    retry_on = _strings("retry_on", merged.get("retry_on", ()))
    for name in retry_on:
        if not _CLASS_PATH.fullmatch(name):
            raise ConfigError(f"retry_on names {name!r}; give exception classes by their full "
                              f"dotted path, e.g. sqlalchemy.exc.OperationalError.")
    hazards = _hazard_names("hazards", merged.get("hazards", HAZARDS))
    accept = _hazard_names("accept", merged.get("accept", ()))
    pgbouncer = merged.get("pgbouncer", False)
    if not isinstance(pgbouncer, bool):
        raise ConfigError(f"pgbouncer = {pgbouncer!r}: write true when your workers reach "
                          f"PostgreSQL through PgBouncer in transaction mode, false when not.")
    python_path = _strings("python_path", merged.get("python_path", (".",)))
    for folder in python_path:
        if not (project_dir / folder).is_dir():
            raise ConfigError(f"python_path names {folder!r}, which is not a folder under "
                              f"{project_dir}; list the folders your modules import from "
                              f"(\".\" or \"src\").")
    return AuditConfig(engine=engine, project_dir=str(project_dir.resolve()), url_env=url_env,
                       run=run, celery_app=celery_app, retry_on=retry_on, pgbouncer=pgbouncer,
                       hazards=hazards, accept=accept, python_path=python_path)


def _check_import_path(key: str, value: Any, extra: str = "") -> None:
    if not isinstance(value, str) or not _IMPORT_PATH.fullmatch(value):
        raise ConfigError(f"{key} = {value!r} is not an import path: write "
                          f"\"package.module:name\" (the module, a colon, the name in it){extra}.")


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, not {value!r}.")
    return tuple(value)


def _hazard_names(key: str, value: Any) -> tuple[str, ...]:
    names = _strings(key, value)
    unknown = [n for n in names if n not in HAZARDS]
    if unknown:
        raise ConfigError(f"{key} names unknown hazard(s) {', '.join(map(repr, unknown))}. "
                          f"The hazards are: {', '.join(HAZARDS)}.")
    return names
