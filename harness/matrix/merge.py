"""Merge results.json files from many environments into one matrix document.

Responsibility: the ``matrix.json`` contract. The same code merges a local
matrix run and the results a CI job collects from its shards, so the two give
the same matrix.

``matrix.json`` has the results schema number (its results are results.json
entries, unchanged) and ``"kind": "matrix"``::

    {"schema": 1, "kind": "matrix",
     "environments": [{"id": "py3.13-sa2.1.9-...-pgb1.18", "slot": "baseline",
                       "python": "3.13.0", "pgbouncer": "1.18",
                       "packages": {...}, "services": {...}, "libpq": {...},
                       "run_id": "...", "source": "runs/.../results.json"}],
     "results": [{...one results.json entry..., "env": "py3.13-sa2.1.9-..."}],
     "verdicts": [{"scenario": ..., "driver": ..., "claim": {...}, "overall": "holds",
                   "by_env": {"py3.13-...": {"verdict": "holds", "detail": "..."}}}]}

An environment block may also carry ``resolution``, ``installed``,
``install_settings`` and ``smoke`` from the sidecar (see ``ENV_FACTS``).

A CARRIED cell (:mod:`harness.matrix.carry`) was not run in its environment: it is the
result row of the environment named by its ``carried_from`` (an environment id), which
ran it, and ``env`` is the environment it stands in for. It counts for the verdicts
like any cell; the renderers and diffs say where it came from. The environment block
then has ``carried_cells`` (how many of its cells are carried) and ``carry_policy``, and
``carried_missing`` when the source of some was not merged. A run's sidecar lists the
cells it carried (``carried``: scenario, variant, driver, from); the merge copies their
rows from the source's results, so shards merged together keep them, and a fresh
result of the same cell (a later run of that environment) wins over a carried one.

``pgbouncer`` is the value of the PgBouncer axis the environment stood for (``X.Y``),
from the sidecar a matrix run writes. Results without it (a plain pytest run, a
matrix.json written before PgBouncer was an axis) take the line of the PgBouncer
their services recorded, else ``?``; :func:`load_any` brings an older matrix.json
up to date the same way, so it still merges, diffs and renders.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness import results as results_file
from harness import verdict as verdicts
from harness.errors import ConfigError
from harness.matrix.axes import AXES, BASELINE, PACKAGE_AXES, env_id
from harness.matrix.pgbouncer_axis import pgbouncer_line
from harness.matrix.run import SIDECAR

KIND = "matrix"
DEPENDS = "depends on version"
# Verdicts that say something about the claim; unknown / n/a say nothing.
REAL = (verdicts.HOLDS, verdicts.DIFFERENT_ERROR, verdicts.DOES_NOT_HOLD)
SLOT_ORDER = (BASELINE, *AXES)
# What a matrix run's sidecar (matrix-env.json) says about an environment beyond its
# results: ``resolution`` (mode, cutoff date), ``installed`` (every distribution and its
# version), ``install_settings`` and ``smoke`` (the smoke check; a failed one comes with
# no results, and its ``report`` says why the environment has no cells).
ENV_FACTS = ("resolution", "installed", "install_settings", "smoke")


def pgbouncer_axis(environment: Mapping[str, Any]) -> str:
    """The PgBouncer axis value of an environment block: its own, else the line of the
    PgBouncer its services recorded, else ``?`` (no PgBouncer was started)."""
    if environment.get("pgbouncer"):
        return str(environment["pgbouncer"])
    used = str((environment.get("services") or {}).get("pgbouncer", ""))
    return pgbouncer_line(used) if used[:1].isdigit() else "?"


def axis_values(environment: Mapping[str, Any]) -> dict[str, str]:
    """Axis -> version of a results.json or matrix ``environment`` block (python in full)."""
    packages = environment.get("packages", {})
    # The optional postgres axis is there only for environments that stood for one.
    postgres = {"postgres": str(environment["postgres"])} if environment.get("postgres") else {}
    return {"python": environment.get("python", "?"),
            **{axis: packages.get(axis, "?") for axis in PACKAGE_AXES},
            **postgres, "pgbouncer": pgbouncer_axis(environment)}


def environment_id(environment: Mapping[str, Any]) -> str:
    """The environment id of a results.json ``environment`` block."""
    return env_id(axis_values(environment))


def cell_key(result: Mapping[str, Any]) -> tuple[str, str, str]:
    return result["scenario"], result["variant"], result["driver"]


def find_results(paths: Iterable[Path]) -> list[Path]:
    """results.json files named directly or found under the given folders, once each.

    Raises:
        ConfigError: a path does not exist, or a folder holds no results.json.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.rglob("results.json") if p.is_file())
            if not inside:
                raise ConfigError(f"No results.json under {path}. Pass the folders that "
                                  f"'harness matrix' or 'pytest scenarios/' wrote.")
            for p in inside:
                found[p.resolve()] = None  # 'latest' links to a run already found
        elif path.is_file():
            found[path.resolve()] = None
        else:
            raise ConfigError(f"{path} does not exist. Pass results.json / matrix.json files "
                              f"or folders that hold them.")
    return list(found)


def _slot_rank(slot: str) -> tuple[int, str]:
    base = slot.split("#")[0]
    return (SLOT_ORDER.index(base) if base in SLOT_ORDER else len(SLOT_ORDER), slot)


def merge(documents: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None, str]]
          ) -> dict[str, Any]:
    """One matrix from (results document, sidecar or None, source) triples.

    Two runs of one environment are combined cell by cell, the later run (by run
    id, which starts with its time) winning: a user may run an environment's
    scenarios in several goes. Documents that are matrices already are unpacked.
    """
    envs: dict[str, dict[str, Any]] = {}
    cells: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    wanted_carry: list[tuple[str, Mapping[str, Any]]] = []
    flat = []
    for document, sidecar, source in documents:
        if document.get("kind") == KIND:
            flat.extend(_unpack(document, source))
        else:
            flat.append((document, sidecar, source))
    for document, sidecar, source in sorted(flat, key=lambda d: d[0].get("run_id", "")):
        environment = dict(document["environment"])
        wanted = ((sidecar or {}).get("axes") or {}).get("pgbouncer")
        environment["pgbouncer"] = wanted or pgbouncer_axis(environment)
        for key, value in _sidecar_extras(sidecar).items():
            environment.setdefault(key, value)
        for key in ENV_FACTS:  # how it was resolved, what it holds, its smoke check
            if (sidecar or {}).get(key) is not None:
                environment.setdefault(key, sidecar[key])
        eid = environment_id(environment)
        slot = (sidecar or {}).get("slot") or envs.get(eid, {}).get("slot") or eid
        envs[eid] = {"id": eid, "slot": slot, **environment,
                     "run_id": document.get("run_id", ""), "source": source}
        for result in document["results"]:
            cells[(eid, *cell_key(result))] = {**result, "env": eid}
        wanted_carry += [(eid, entry) for entry in (sidecar or {}).get("carried") or ()]
        if (sidecar or {}).get("carry_policy"):
            envs[eid]["carry_policy"] = sidecar["carry_policy"]
    _add_carried(envs, cells, wanted_carry)
    ordered = sorted(envs.values(), key=lambda e: (_slot_rank(e["slot"]), e["id"]))
    rank = {e["id"]: i for i, e in enumerate(ordered)}
    merged = sorted(cells.values(), key=lambda r: (*cell_key(r), rank[r["env"]]))
    return {"schema": results_file.SCHEMA, "kind": KIND, "environments": ordered,
            "results": merged, "verdicts": matrix_verdicts(ordered, merged)}


def _add_carried(envs: Mapping[str, dict[str, Any]],
                 cells: dict[tuple[str, str, str, str], dict[str, Any]],
                 wanted: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Copy each carried cell's row from the environment that ran it (when it is merged
    too), unless the carrying environment has a fresh result of that cell."""
    for eid, entry in wanted:
        key = (entry["scenario"], entry["variant"], entry["driver"])
        source = cells.get((entry["from"], *key))
        if (eid, *key) in cells and not cells[(eid, *key)].get("carried_from"):
            continue  # observed here after all: the observation wins
        if source is None:
            envs[eid]["carried_missing"] = envs[eid].get("carried_missing", 0) + 1
            continue
        # A source that carried the cell itself names the environment that observed it.
        cells[(eid, *key)] = {**source, "env": eid,
                              "carried_from": source.get("carried_from") or entry["from"]}
    for eid, env in envs.items():
        carried = sum(1 for (e, *_), row in cells.items() if e == eid and row.get("carried_from"))
        if carried:
            env["carried_cells"] = carried


def _sidecar_extras(sidecar: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a matrix run's sidecar adds to an environment block: the postgres axis value
    (when the matrix had that axis) and ``runs_in`` (the container an environment ran in,
    see :mod:`harness.matrix.containers`)."""
    sidecar = sidecar or {}
    extras: dict[str, Any] = {}
    if (sidecar.get("axes") or {}).get("postgres"):
        extras["postgres"] = str(sidecar["axes"]["postgres"])
    if sidecar.get("runs_in"):
        extras["runs_in"] = sidecar["runs_in"]
    return extras


def _unpack(matrix: Mapping[str, Any], source: str
            ) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """A matrix back into one results document per environment (for re-merging)."""
    out = []
    for env in matrix["environments"]:
        environment = {k: v for k, v in env.items()
                       if k not in ("id", "slot", "run_id", "source", "carried_cells")}
        rows = [{k: v for k, v in r.items() if k != "env"}
                for r in matrix["results"] if r["env"] == env["id"]]
        out.append(({"schema": matrix["schema"], "run_id": env.get("run_id", ""),
                     "environment": environment, "results": rows},
                    {"slot": env["slot"]}, env.get("source", source)))
    return out


def overall(found: Sequence[str]) -> str:
    """One verdict over environments: ``depends on version`` when real verdicts differ."""
    real = sorted({v for v in found if v in REAL})
    if len(real) > 1:
        return DEPENDS
    if real:
        return real[0]
    return verdicts.NOT_APPLICABLE if found and all(
        v == verdicts.NOT_APPLICABLE for v in found) else verdicts.UNKNOWN


def matrix_verdicts(environments: Sequence[Mapping[str, Any]],
                    rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The article's claim and its verdict per scenario and driver, in each environment."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for env in environments:
        env_rows = [r for r in rows if r["env"] == env["id"]]
        claims = {(r["scenario"], r["driver"]): r["claim"] for r in env_rows if r.get("claim")}
        for v in verdicts.verdicts(env_rows):
            entry = table.setdefault((v.scenario, v.driver), {
                "scenario": v.scenario, "driver": v.driver,
                "claim": claims[(v.scenario, v.driver)], "by_env": {}})
            entry["by_env"][env["id"]] = {"verdict": v.verdict, "detail": v.detail}
    for entry in table.values():
        entry["overall"] = overall([x["verdict"] for x in entry["by_env"].values()])
    return [table[k] for k in sorted(table)]


def load_any(path: Path) -> dict[str, Any]:
    """A matrix from a matrix.json, or from one results.json (a one-environment matrix).

    Raises:
        ConfigError: unreadable, or another schema (see :func:`harness.results.load`).
    """
    document = results_file.load(path)
    if document.get("kind") == KIND:
        if all("pgbouncer" in env for env in document["environments"]):
            return document
        return merge([(document, None, str(path))])  # written before the pgbouncer axis
    return merge([(document, read_sidecar(path), str(path))])


def read_sidecar(results_path: Path) -> dict[str, Any] | None:
    sidecar = results_path.parent / SIDECAR
    try:
        return json.loads(sidecar.read_text()) if sidecar.exists() else None
    except (OSError, json.JSONDecodeError):
        return None  # a damaged sidecar only loses the slot name: the id still pairs


def merge_paths(paths: Iterable[Path]) -> dict[str, Any]:
    """Merge every results.json / matrix.json named by or found under ``paths``."""
    return merge([(results_file.load(p), read_sidecar(p), str(p)) for p in find_results(paths)])
