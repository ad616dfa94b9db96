"""The matrix as rows and columns, shared by the Markdown and the HTML renderers.

Responsibility: one row per scenario x variant x driver, one column per
environment, the facts each renderer shows (short cell text, which rows differ
between environments, which cells moved from their expectation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.matrix.merge import axis_values
from harness.matrix.pgbouncer_axis import pgbouncer_line

# Column headings for the environment legend (axis -> label); the services that are
# not axes follow, and the backend they ran on (local binaries or docker images).
AXIS_LABELS = {"python": "Python", "sqlalchemy": "SQLAlchemy", "celery": "Celery",
               "asyncpg": "asyncpg", "psycopg": "psycopg", "pgbouncer": "PgBouncer"}
SERVICE_LABELS = {"postgres": "PostgreSQL", "redis": "Redis", "backend": "backend"}


@dataclass(frozen=True)
class Row:
    """One scenario x variant x driver across environments (None: not run there)."""

    scenario: str
    variant: str
    driver: str
    role: str
    cells: tuple[Mapping[str, Any] | None, ...]

    @property
    def differs(self) -> bool:
        """True when the cell's outcome is not the same in every environment that ran it."""
        return len({c["outcome"] for c in self.cells if c is not None}) > 1

    @property
    def outcomes(self) -> list[str]:
        return sorted({c["outcome"] for c in self.cells if c is not None})


def env_versions(env: Mapping[str, Any]) -> dict[str, str]:
    """Axis -> version to show for one matrix environment (python in full; PgBouncer in
    full when the run started one of its line, else the axis value ``X.Y``)."""
    versions = axis_values(env)
    used = str(env.get("services", {}).get("pgbouncer", ""))
    if used[:1].isdigit() and versions["pgbouncer"] in ("?", pgbouncer_line(used)):
        versions["pgbouncer"] = used
    # The legend's axis columns, in their order; the postgres axis (optional) shows in
    # the PostgreSQL service column, with the version the run really used.
    return {axis: versions.get(axis, "?") for axis in AXIS_LABELS}


def env_services(env: Mapping[str, Any]) -> dict[str, str]:
    services = env.get("services", {})
    return {label: services[key] for key, label in SERVICE_LABELS.items() if key in services}


def env_resolution(env: Mapping[str, Any]) -> str:
    """The legend's resolution column: ``dated 2024-07-01``, ``latest``, or ``-`` (a run
    that did not say: a plain pytest run, or a matrix written before it was recorded)."""
    resolution = env.get("resolution") or {}
    if resolution.get("mode") == "dated" and resolution.get("cutoff"):
        return f"dated {str(resolution['cutoff'])[:10]}"
    return str(resolution.get("mode") or "-")


def env_notes(matrix: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(short name, why) for every environment that has no cells because its smoke check
    failed; the legend lists them under the table."""
    notes = []
    for name, env in zip(short_names(matrix), matrix["environments"]):
        smoke = env.get("smoke") or {}
        if smoke.get("ok") is False:
            report = str(smoke.get("report") or "").split("\n")[0]
            notes.append((name, report or f"no cells: its smoke check failed "
                                          f"({smoke.get('error', '')})."))
    return notes + besides_axes(matrix) + carried_notes(matrix)


def besides_axes(matrix: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(short name, what) for every environment that differs from E1 in more than its
    axes: the container it ran in, its backend, the PostgreSQL and Redis it really ran on.

    A cell that moved in such an environment may have moved for either reason; the
    legend says so instead of letting the axis take the blame alone.
    """
    envs = matrix["environments"]
    if not envs:
        return []
    first, first_services = envs[0], envs[0].get("services", {})
    notes = []
    for name, env, moved in zip(short_names(matrix), envs, changed_axes(matrix)):
        parts = []
        runs_in = env.get("runs_in") or {}
        if runs_in:
            parts.append(f"runs in a container of {runs_in.get('image', '?')} (Python "
                         f"{runs_in.get('python', '?')})")
        elif first.get("runs_in") and env is not first:
            parts.append("runs on the host")
        services = env.get("services", {})
        if env is not first:
            for key, label in SERVICE_LABELS.items():
                if key == "postgres" and "postgres" in moved:
                    continue  # an axis of its own: the legend shows it already
                if key in services and services.get(key) != first_services.get(key):
                    parts.append(f"{label} {services[key]} (E1: "
                                 f"{first_services.get(key, 'not recorded')})")
        if parts:
            lead = "besides its axes, differs from E1: " if env is not first else ""
            notes.append((name, lead + "; ".join(parts) + "."))
    return notes


def short_names(matrix: Mapping[str, Any]) -> list[str]:
    """``E1``, ``E2``...: column names narrow enough for a terminal."""
    return [f"E{i}" for i in range(1, len(matrix["environments"]) + 1)]


def changed_axes(matrix: Mapping[str, Any]) -> list[set[str]]:
    """Per environment, the axes whose version differs from the first environment's."""
    envs = matrix["environments"]
    if not envs:
        return []
    # Axis values, not the versions shown: an environment that started no PgBouncer
    # (a -k without the PgBouncer scenarios) knows only its line, 1.18, not 1.18.0.
    first = axis_values(envs[0])
    return [{a for a, v in axis_values(e).items() if v != first[a]} for e in envs]


def rows(matrix: Mapping[str, Any]) -> list[Row]:
    """Every row, sorted by scenario, variant, driver."""
    ids = [e["id"] for e in matrix["environments"]]
    grouped: dict[tuple[str, str, str], dict[str, Mapping[str, Any]]] = {}
    for r in matrix["results"]:
        grouped.setdefault((r["scenario"], r["variant"], r["driver"]), {})[r["env"]] = r
    out = []
    for key in sorted(grouped):
        by_env = grouped[key]
        role = next(iter(by_env.values())).get("role", "")
        out.append(Row(*key, role=role, cells=tuple(by_env.get(i) for i in ids)))
    return out


def counts(cell: Mapping[str, Any]) -> str:
    """``ok 2/12, asyncpg-another-operation 8, future-other-loop 2``: a cell's counts."""
    t = cell.get("tasks", {})
    parts = [f"ok {t.get('ok', 0)}/{t.get('total', 0)}"]
    parts += [f"{k} {v}" for k, v in t.get("by_signature", {}).items()]
    parts += [f"{k} {t[k]}" for k in ("hung", "wrong", "other") if t.get(k)]
    return ", ".join(parts)


def cell_text(cell: Mapping[str, Any] | None,
              names: Mapping[str, str] | None = None) -> str:
    """Short text of a cell: ``REPRODUCED 2/12``, ``CLEAN 12/12``, ``N/A``, ``-``.

    A trailing ``(!)`` marks a cell whose outcome is not the scenario's expectation:
    a cell that moved in this environment. A carried cell ends in ``(= E1)``: it was
    not run here, it is what E1 observed (``names``: environment id -> short name;
    without it, the id).
    """
    if cell is None:
        return "-"
    t = cell.get("tasks", {})
    text = cell["outcome"]
    if cell["outcome"] not in ("N/A", "HARNESS_ERROR") and t.get("total"):
        text += f" {t.get('ok', 0)}/{t['total']}"
    if cell.get("passed") is False:
        text += " (!)"
    if cell.get("carried_from"):
        text += f" (= {carried_name(cell, names)})"
    return text


def carried_name(cell: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """The short name (else the id) of the environment a carried cell was observed in."""
    source = str(cell.get("carried_from") or "")
    return (names or {}).get(source, source)


def carried_notes(matrix: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(short name, what) for every environment with carried cells: how many, from where,
    and what carrying assumed.

    Carrying (policy ``axes``) takes a cell across differences that are not axes: the
    backend, the PostgreSQL and Redis versions it started, a container. The note names
    each such difference, so a carried cell is read as the other environment's
    observation, made on that environment's services. An asyncpg cell carried across
    psycopg versions also assumes that the harness's own psycopg connections (each
    variant's database, ``inspect_sql``) read the same with either version.
    """
    envs = matrix["environments"]
    names = dict(zip((e["id"] for e in envs), short_names(matrix)))
    by_id = {e["id"]: e for e in envs}
    sources: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for r in matrix["results"]:
        if r.get("carried_from"):
            sources.setdefault(r["env"], {}).setdefault(r["carried_from"], []).append(r)
    notes = []
    for env in envs:
        name = names[env["id"]]
        parts = []
        for source_id, rows_ in sorted(sources.get(env["id"], {}).items()):
            source = by_id.get(source_id, {})
            there = names.get(source_id, source_id)
            text = (f"{len(rows_)} cells carried from {there}, not run here: none depends "
                    f"on an axis in which {name} differs from {there}")
            apart = _apart(source, env)
            if apart:
                text += (" but its services differ (" + "; ".join(apart) + "): carrying "
                         "assumed that moves no cell; carry = \"strict\" in matrix.toml runs "
                         "them here instead")
            old_pg, new_pg = axis_values(source).get("psycopg"), axis_values(env).get("psycopg")
            if old_pg != new_pg and any(r["driver"] == "asyncpg" for r in rows_):
                text += (f"; its asyncpg cells assume that the harness's own psycopg "
                         f"connections (each variant's database, inspect_sql) read the same "
                         f"under psycopg {old_pg} and {new_pg}")
            parts.append(text)
        if env.get("carried_missing"):
            parts.append(f"{env['carried_missing']} carried cell(s) missing: the results of "
                         f"the environment they came from were not merged")
        if parts:
            policy = env.get("carry_policy")
            notes.append((name, "; ".join(parts) + (f" [carry policy: {policy}]." if policy
                                                    else ".")))
    return notes


def _apart(source: Mapping[str, Any], env: Mapping[str, Any]) -> list[str]:
    """What differs between two environments besides their axes, as far as recorded."""
    parts = []
    a, b = source.get("services", {}), env.get("services", {})
    for key, label in SERVICE_LABELS.items():
        if key in a and key in b and a[key] != b[key]:
            parts.append(f"{label} {a[key]} there, {b[key]} here")
        elif key == "postgres" and key in a and key not in b:
            parts.append(f"{label} {a[key]} there, not recorded here (no cell ran here)")
    ra, rb = (source.get("runs_in") or {}).get("image"), (env.get("runs_in") or {}).get("image")
    if ra != rb:
        parts.append(f"runs in {ra or 'the host'} there, {rb or 'the host'} here")
    if source.get("python") and env.get("python") and source["python"] != env["python"] \
            and source["python"].split(".")[:2] == env["python"].split(".")[:2]:
        parts.append(f"Python {source['python']} there, {env['python']} here")
    return parts


def verdict_index(matrix: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(v["scenario"], v["driver"]): v for v in matrix.get("verdicts", [])}
