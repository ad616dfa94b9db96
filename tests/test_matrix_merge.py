"""Merging results.json files into a matrix: environments, cells, verdicts, shards."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.matrix import merge

CLAIMS = {
    "loop-bound-pool": {"error": "RuntimeError: loop is closed", "fix": "NullPool",
                        "signature": "event-loop-closed", "bad": "default-pool",
                        "fixed": "nullpool", "bad_fails": True},
    "engine-before-fork": {"error": "another operation is in progress", "fix": "dispose",
                           "signature": "asyncpg-another-operation", "bad": "import-pool",
                           "fixed": "process-init", "bad_fails": True},
}
# (scenario, variant, role) x drivers, with the outcome each has in the "normal" environment.
CELLS = {
    ("loop-bound-pool", "default-pool", "bad"): {"asyncpg": "REPRODUCED", "psycopg": "CLEAN"},
    ("loop-bound-pool", "nullpool", "article-fix"): {"asyncpg": "CLEAN", "psycopg": "CLEAN"},
    ("engine-before-fork", "import-pool", "bad"): {"asyncpg": "REPRODUCED",
                                                   "psycopg": "OTHER_FAILURE"},
    ("engine-before-fork", "process-init", "article-fix"): {"asyncpg": "CLEAN",
                                                            "psycopg": "CLEAN"},
}


def result(scenario: str, variant: str, role: str, driver: str, outcome: str,
           expected: str) -> dict[str, Any]:
    sig = {"REPRODUCED": {CLAIMS[scenario]["signature"]: 10}}.get(outcome, {})
    ok = 12 if outcome == "CLEAN" else 2
    return {"scenario": scenario, "variant": variant, "driver": driver, "role": role,
            "expected": expected, "outcome": outcome, "passed": outcome == expected,
            "tasks": {"total": 12, "ok": ok, "hung": 0, "wrong": 0,
                      "other": 10 if outcome == "OTHER_FAILURE" else 0, "not_run": 0,
                      "by_signature": sig},
            "first_error": "" if outcome == "CLEAN" else f"Error <{variant}> & \"{driver}\"",
            "worker_start_s": 1.0, "run_s": 0.5, "reason": "", "claim": CLAIMS[scenario]}


def results_doc(python: str, sqlalchemy: str, run_id: str = "20260101-000000-aaaaaa",
                moved: Mapping[tuple[str, str, str], str] | None = None,
                only: str | None = None, pgbouncer: str | None = "1.18.0",
                backend: str = "local") -> dict[str, Any]:
    """A results.json document; ``moved`` overrides outcomes (expectations stay).

    ``pgbouncer``: the PgBouncer its services recorded (None: the run started none).
    """
    rows = []
    for (scenario, variant, role), drivers in CELLS.items():
        if only and scenario != only:
            continue
        for driver, outcome in drivers.items():
            observed = (moved or {}).get((scenario, variant, driver), outcome)
            rows.append(result(scenario, variant, role, driver, observed, outcome))
    return {"schema": 1, "run_id": run_id,
            "environment": {"python": python,
                            "packages": {"sqlalchemy": sqlalchemy, "celery": "5.7.0",
                                         "asyncpg": "0.32.0", "psycopg": "3.3.9"},
                            "libpq": {}, "services": {
                                "backend": backend, "postgres": "15.18", "redis": "7.0.15",
                                **({"pgbouncer": pgbouncer} if pgbouncer else {})}},
            "results": rows}


def two_envs() -> dict[str, Any]:
    return merge.merge([
        (results_doc("3.11.7", "2.0.58", "20260101-000002-b",
                     moved={("loop-bound-pool", "default-pool", "psycopg"): "REPRODUCED"}),
         {"slot": "sqlalchemy"}, "b/results.json"),
        (results_doc("3.11.7", "2.1.9", "20260101-000001-a"), {"slot": "baseline"},
         "a/results.json"),
    ])


def test_environments_ordered_by_slot_and_cells_tagged() -> None:
    matrix = two_envs()
    assert matrix["kind"] == "matrix" and matrix["schema"] == 1
    assert [e["id"] for e in matrix["environments"]] == [
        "py3.11-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18",
        "py3.11-sa2.0.58-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18"]
    assert [e["slot"] for e in matrix["environments"]] == ["baseline", "sqlalchemy"]
    assert len(matrix["results"]) == 16
    assert {r["env"] for r in matrix["results"]} == {e["id"] for e in matrix["environments"]}


def test_verdict_depends_on_version_when_environments_disagree() -> None:
    verdicts = {(v["scenario"], v["driver"]): v for v in two_envs()["verdicts"]}
    psycopg = verdicts[("loop-bound-pool", "psycopg")]
    assert psycopg["overall"] == merge.DEPENDS
    assert sorted(v["verdict"] for v in psycopg["by_env"].values()) == ["does not hold",
                                                                        "holds"]
    assert verdicts[("loop-bound-pool", "asyncpg")]["overall"] == "holds"
    assert verdicts[("engine-before-fork", "psycopg")]["overall"] == "does not hold"
    assert psycopg["claim"]["error"] == "RuntimeError: loop is closed"


def test_overall_ignores_unknown_and_na() -> None:
    assert merge.overall(["holds", "unknown"]) == "holds"
    assert merge.overall(["n/a", "n/a"]) == "n/a"
    assert merge.overall(["unknown", "n/a"]) == "unknown"
    assert merge.overall(["holds", "holds with a different error"]) == merge.DEPENDS


def test_later_run_of_the_same_environment_wins_cell_by_cell() -> None:
    first = results_doc("3.11.7", "2.1.9", "20260101-000001-a")
    again = results_doc("3.11.7", "2.1.9", "20260101-000009-z", only="loop-bound-pool",
                        moved={("loop-bound-pool", "nullpool", "asyncpg"): "HARNESS_ERROR"})
    matrix = merge.merge([(again, None, "z"), (first, None, "a")])
    assert len(matrix["environments"]) == 1
    cells = {(r["scenario"], r["variant"], r["driver"]): r for r in matrix["results"]}
    assert len(cells) == 8  # engine-before-fork kept from the first run
    assert cells[("loop-bound-pool", "nullpool", "asyncpg")]["outcome"] == "HARNESS_ERROR"


def test_shards_merged_equal_one_merge() -> None:
    a = (results_doc("3.11.7", "2.1.9", "20260101-000001-a"), {"slot": "baseline"}, "a")
    b = (results_doc("3.13.0", "2.1.9", "20260101-000002-b"), {"slot": "python"}, "b")
    one = merge.merge([a, b])
    shard_a, shard_b = merge.merge([a]), merge.merge([b])
    again = merge.merge([(shard_b, None, "sb"), (shard_a, None, "sa")])
    assert again["results"] == one["results"]
    assert again["verdicts"] == one["verdicts"]
    assert [e["id"] for e in again["environments"]] == [e["id"] for e in one["environments"]]


def test_merge_paths_finds_results_once_and_reads_sidecars(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "env" / "20260101-000001-a"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results_doc("3.11.7", "2.1.9")))
    (run / "matrix-env.json").write_text(json.dumps({"slot": "baseline"}))
    (run.parent / "latest").symlink_to(run.name)
    matrix = merge.merge_paths([tmp_path / "runs"])
    assert len(matrix["environments"]) == 1
    assert matrix["environments"][0]["slot"] == "baseline"


def test_load_any_refuses_another_schema(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**results_doc("3.11.7", "2.1.9"), "schema": 2}))
    with pytest.raises(ConfigError, match="schema 2.*reads schema 1"):
        merge.load_any(path)


def test_load_any_turns_one_results_file_into_a_matrix(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_doc("3.11.7", "2.1.9")))
    matrix = merge.load_any(path)
    assert matrix["kind"] == "matrix"
    assert matrix["environments"][0]["slot"] == matrix["environments"][0]["id"]


def test_merge_paths_names_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        merge.merge_paths([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="No results.json under"):
        merge.merge_paths([tmp_path / "empty"])


# --- the pgbouncer axis in merged matrices ------------------------------------------
def test_the_pgbouncer_axis_comes_from_the_sidecar_else_the_services_else_unknown() -> None:
    axes = {"python": "3.11", "sqlalchemy": "2.1.9", "celery": "5.7.0", "asyncpg": "0.32.0",
            "psycopg": "3.3.9"}
    matrix = merge.merge([
        # A matrix run of the 1.24 variation that started no PgBouncer (-k loop_bound_pool).
        (results_doc("3.11.7", "2.1.9", "1", pgbouncer=None, backend="docker"),
         {"slot": "pgbouncer", "axes": {**axes, "pgbouncer": "1.24"}}, "a"),
        # A plain pytest run on PgBouncer 1.18.0: no sidecar.
        (results_doc("3.11.7", "2.1.9", "2"), None, "b"),
        # A plain pytest run that started no PgBouncer.
        (results_doc("3.11.7", "2.1.9", "3", pgbouncer=None), None, "c"),
    ])
    by_pgb = {e["pgbouncer"]: e["id"] for e in matrix["environments"]}
    assert sorted(by_pgb) == ["1.18", "1.24", "?"]
    assert by_pgb["1.24"].endswith("-psycopg3.3.9-pgb1.24")
    assert by_pgb["?"].endswith("-psycopg3.3.9-pgb?")


def old_matrix() -> dict[str, Any]:
    """A matrix.json written before PgBouncer was an axis: ids and environments without it."""
    matrix = two_envs()
    rename = {e["id"]: e["id"].rsplit("-pgb", 1)[0] for e in matrix["environments"]}
    for env in matrix["environments"]:
        del env["pgbouncer"]
        env["id"] = rename[env["id"]]
    for row in matrix["results"]:
        row["env"] = rename[row["env"]]
    for verdict in matrix["verdicts"]:
        verdict["by_env"] = {rename[k]: v for k, v in verdict["by_env"].items()}
    return matrix


def test_an_old_matrix_json_is_read_with_the_pgbouncer_its_services_recorded(
        tmp_path: Path) -> None:
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(old_matrix()))
    loaded = merge.load_any(path)
    assert [e["id"] for e in loaded["environments"]] == [e["id"]
                                                         for e in two_envs()["environments"]]
    assert [e["pgbouncer"] for e in loaded["environments"]] == ["1.18", "1.18"]
    assert [e["slot"] for e in loaded["environments"]] == ["baseline", "sqlalchemy"]
    assert loaded["results"] == two_envs()["results"]
    assert loaded["verdicts"] == two_envs()["verdicts"]
    # ...and merges with a new shard.
    again = merge.merge([(loaded, None, "old"), (results_doc("3.13.0", "2.1.9", "3"),
                                                 {"slot": "python"}, "new")])
    assert len(again["environments"]) == 3
