"""Recorded runs as cells: what each matrix.json or results.json cell observed, where.

Responsibility: read the files ``harness matrix`` and scenario runs write, check they
are such files (a clear error before any work when not), and give each result row
with the versions its environment recorded, so a version rule can be evaluated on
them. Nothing here knows about rules.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.conditions import Condition, RunEnv
from harness.errors import ConfigError


@dataclass(frozen=True)
class RecordedEnv:
    """An environment of a recorded run, with the versions it recorded."""

    id: str
    file: str
    date: str
    python: str
    packages: dict[str, str]
    installed: dict[str, str] | None  # None: the record lists no installed packages
    pgbouncer: str | None
    libpq: str | None = None

    def run_env(self, driver: str) -> RunEnv:
        major, minor = (int(p) for p in self.python.split(".")[:2])
        return RunEnv(driver, (major, minor), self.packages, self.pgbouncer,
                      installed=self.installed if self.installed is not None else self.packages,
                      libpq=self.libpq)

    def knows(self, cond: Condition) -> bool:
        """Did the run record what ``cond`` looks at?"""
        subject = cond.subject
        if subject.kind == "libpq":
            return self.libpq is not None
        return subject.kind != "package" or subject.name in self.packages \
            or self.installed is not None

    def versions(self, conds: Iterable[Condition], driver: str) -> dict[str, str]:
        env = self.run_env(driver)
        return {c.subject.name: c.subject.version_in(env) or "missing" for c in conds}


@dataclass(frozen=True)
class Cell:
    scenario: str
    variant: str
    driver: str
    outcome: str
    signatures: tuple[str, ...]
    env: RecordedEnv


def _date(run_id: str, fallback: str) -> str:
    stamp = run_id.split("-")
    if len(stamp) >= 2 and stamp[0].isdigit() and len(stamp[0]) == 8 and len(stamp[1]) >= 4:
        day, hour = stamp[0], stamp[1]
        return f"{day[:4]}-{day[4:6]}-{day[6:]} {hour[:2]}:{hour[2:4]}"
    return fallback


def _recorded_env(raw: dict, env_id: str, file: str, fallback_date: str) -> RecordedEnv:
    services = raw.get("services") or {}
    return RecordedEnv(
        id=env_id, file=file, date=_date(str(raw.get("run_id", "")), fallback_date),
        python=str(raw.get("python", "0.0")), packages=dict(raw.get("packages") or {}),
        installed=dict(raw["installed"]) if isinstance(raw.get("installed"), dict) else None,
        pgbouncer=services.get("pgbouncer") or raw.get("pgbouncer"),
        libpq=(raw.get("libpq") or {}).get("libpq") if isinstance(raw.get("libpq"), dict)
        else None)


def cells_of(data: Any, file: str, fallback_date: str = "") -> list[Cell]:
    """The cells of a matrix.json or results.json document; ConfigError when it is neither."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) \
            or not (isinstance(data.get("environments"), list)
                    or isinstance(data.get("environment"), dict)):
        raise ConfigError(
            f"{file} is not a matrix.json or a results.json: expected a JSON object with a "
            f"'results' list and either 'environments' (what 'harness matrix' writes) or "
            f"'environment' (what a scenario run writes under results/). Pass one of those "
            f"files with --from, or run 'harness matrix' to make one.")
    if "environments" in data:
        envs = {e.get("id"): _recorded_env(e, str(e.get("id")), file, fallback_date)
                for e in data["environments"]}
    else:
        run_id = str(data.get("run_id", ""))
        raw = {**data["environment"], "run_id": run_id}
        envs = {None: _recorded_env(raw, f"run {run_id}", file, fallback_date)}
    found = []
    for row in data["results"]:
        env = envs.get(row.get("env")) if "environments" in data else envs[None]
        if env is None or not isinstance(row, dict):
            continue
        by_signature = (row.get("tasks") or {}).get("by_signature") or {}
        found.append(Cell(row.get("scenario", ""), row.get("variant", ""),
                          row.get("driver", ""), row.get("outcome", ""),
                          tuple(sorted(by_signature)), env))
    return found


def load_cells(paths: list[Path], root: Path) -> list[Cell]:
    """Every cell of the given files, each checked before any is matched."""
    for path in paths:
        if not path.is_file():
            raise ConfigError(
                f"{shown(path, root)} does not exist: pass a matrix.json written by 'harness "
                f"matrix' or a results.json of a scenario run with --from, or record a run "
                f"under docs/matrix/ (matrix.json, runs/*.json) first.")
    found, read = [], set()
    for path in paths:
        name = shown(path, root)
        if path.resolve() in read:
            continue  # the same file twice (runs/<env>/latest is a link to a run)
        read.add(path.resolve())
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{name} is not readable JSON ({exc}): pass a matrix.json or "
                              f"results.json the harness wrote.") from exc
        mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
        found += cells_of(data, name, mtime.strftime("%Y-%m-%d %H:%M"))
    return found


def shown(path: Path, root: Path) -> str:
    """``path`` as the output names it: relative to the checkout when inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def default_sources(root: Path) -> list[Path]:
    """The recorded runs of the checkout: docs/matrix/matrix.json, then docs/matrix/runs/*.json."""
    main = root / "docs/matrix/matrix.json"
    return ([main] if main.is_file() else []) + sorted((root / "docs/matrix/runs").glob("*.json"))
