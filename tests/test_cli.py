"""The ``harness`` command: doctor, matrix plan/merge, report, and refusals of bad input.

Bad input must stop before any environment is built: each refusal test points
the environment cache at an empty folder and checks it stays empty. The
unknown-version test asks the real package index (through pip's configuration).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness import cli
from harness.matrix import pgbouncer_axis
from tests.test_matrix_merge import results_doc

ROOT = Path(__file__).resolve().parent.parent
GOOD_AXES = ("[axes]\npython = [\"3.11\"]\nsqlalchemy = [\"2.1.9\"]\ncelery = [\"5.7.0\"]\n"
             "asyncpg = [\"0.32.0\"]\npsycopg = [\"3.3.9\"]\n")


@pytest.fixture(autouse=True)
def in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.fixture
def fake_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """The versions of GOOD_AXES, without asking the network (for tests about other input),
    and PgBouncer 1.18.0 installed with a Docker engine holding the 1.18 and 1.24 images."""
    known = {"sqlalchemy": ["2.1.9"], "celery": ["5.7.0"], "asyncpg": ["0.32.0"],
             "psycopg": ["3.3.9"], "psycopg-binary": ["3.3.9"]}
    monkeypatch.setattr("harness.matrix.index.index_versions", known.__getitem__)
    monkeypatch.setattr("harness.environment.pgbouncer_version", lambda: "1.18.0")
    images = {"harness-pgbouncer:1.18": "1.18.0", "harness-pgbouncer:1.24": "1.24.1"}
    monkeypatch.setattr("harness.matrix.pgbouncer_axis.docker_state",
                        lambda: pgbouncer_axis.DockerState(None, images))


def refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> str:
    """Run a matrix command that must be refused; return its message."""
    cache = tmp_path / "cache"
    code = cli.main(["matrix", *argv, "--cache-dir", str(cache), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not cache.exists(), "an environment was built before the input was checked"
    return err


def test_doctor_says_the_local_backend_can_run(capsys: pytest.CaptureFixture[str]) -> None:
    # The tests run where the README's command installed every service binary.
    assert cli.main(["doctor"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert out.startswith("python") and "binaries" in out
    assert "The local backend can run" in out


def test_doctor_names_the_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A PATH with redis-server but no pgbouncer (PostgreSQL is found outside PATH).
    redis_server = shutil.which("redis-server")
    assert redis_server, "the tests need redis-server on PATH"
    (tmp_path / "redis-server").symlink_to(redis_server)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "pgbouncer      missing (required; apt-get install pgbouncer)" in out
    assert "sudo apt-get install -y pgbouncer" in out


def test_plan_github_prints_the_include_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["matrix", "plan", "--format", "github"]) == 0
    include = json.loads(capsys.readouterr().out)["include"]
    assert len(include) == 7 and include[0]["slot"] == "baseline"
    assert {"id", "python", "sqlalchemy", "celery", "asyncpg", "psycopg",
            "pgbouncer"} <= set(include[0])
    assert [(e["slot"], e["pgbouncer"]) for e in include if e["pgbouncer"] != "1.18"] == [
        ("pgbouncer", "1.24")]
    assert include[-1]["id"].endswith("-psycopg3.3.9-pgb1.24")


def test_plan_from_options_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["matrix", "plan", "--matrix-file", str(tmp_path / "m.toml")]) == 2
    assert "There is no matrix file" in capsys.readouterr().err
    assert cli.main(["matrix", "plan", "--python", "3.11", "3.12", "3.13", "--full"]) == 0
    assert len(_environment_lines(capsys.readouterr().out)) == 3 * 2 ** 5
    # The first PgBouncer is the baseline's; a repeated one is one environment.
    assert cli.main(["matrix", "plan", "--pgbouncer", "1.24", "1.18", "1.24"]) == 0
    lines = _environment_lines(capsys.readouterr().out)
    assert len(lines) == 7 and lines[0].endswith("-pgb1.24") and lines[-1].endswith("-pgb1.18")


def _environment_lines(plan: str) -> list[str]:
    """The plan's environment lines, without the cell counts under each and the total."""
    return [line for line in plan.splitlines()
            if line and not line[0].isspace() and not line.startswith("carry policy")]


def test_unknown_version_is_refused_before_building(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, tmp_path, "--sqlalchemy", "2.1.99")
    assert "sqlalchemy 2.1.99 does not exist on the package index" in err


def test_unknown_scenario_is_refused_before_building(tmp_path: Path, fake_index: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.toml").write_text(GOOD_AXES)
    err = refused(capsys, tmp_path, "--matrix-file", str(tmp_path / "matrix.toml"),
                  "-k", "no_such_scenario")
    assert "No scenario test matches the pytest arguments -k no_such_scenario" in err


def test_malformed_matrix_toml_is_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.toml").write_text("[axes\npython = 3.11\n")
    err = refused(capsys, tmp_path, "--matrix-file", str(tmp_path / "matrix.toml"))
    assert "is not valid TOML" in err


def test_missing_interpreter_is_refused(tmp_path: Path, fake_index: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.toml").write_text(GOOD_AXES.replace('"3.11"', '"3.5"'))
    err = refused(capsys, tmp_path, "--matrix-file", str(tmp_path / "matrix.toml"))
    assert "No Python 3.5 interpreter was found" in err


def test_only_must_name_a_planned_environment(tmp_path: Path, fake_index: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.toml").write_text(GOOD_AXES)
    err = refused(capsys, tmp_path, "--matrix-file", str(tmp_path / "matrix.toml"),
                  "--only", "py3.12-nothing")
    assert "--only names py3.12-nothing, which is not in the plan" in err


def test_pgbouncer_without_a_binary_or_image_is_refused_before_building(
        tmp_path: Path, fake_index: None, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.toml").write_text(GOOD_AXES)
    err = refused(capsys, tmp_path, "--matrix-file", str(tmp_path / "matrix.toml"),
                  "--pgbouncer", "1.18", "1.21")
    assert ("PgBouncer 1.21 cannot run here: it needs the docker image harness-pgbouncer:1.21, "
            "which the Docker engine does not have. Available: the local pgbouncer is 1.18.0; "
            "the Docker engine has harness-pgbouncer:1.18 (1.18.0), harness-pgbouncer:1.24 "
            "(1.24.1). docker/build.sh knows only PgBouncer 1.18 and 1.24") in err


def test_bad_pgbouncer_value_is_refused_before_building(
        tmp_path: Path, fake_index: None, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.toml").write_text(GOOD_AXES)
    err = refused(capsys, tmp_path, "--matrix-file", str(tmp_path / "matrix.toml"),
                  "--pgbouncer", "1.24.1")
    assert "PgBouncer version '1.24.1' is not of the form X.Y or 'local' (write 1.24" in err


def test_a_shard_checks_only_its_own_pgbouncer(tmp_path: Path, fake_index: None,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--only the 1.18 environment: the 1.24 image is not asked for (a CI shard)."""
    def no_docker() -> pgbouncer_axis.DockerState:
        raise AssertionError("Docker was asked although the shard runs on the local binary")

    monkeypatch.setattr("harness.matrix.pgbouncer_axis.docker_state", no_docker)
    (tmp_path / "matrix.toml").write_text(GOOD_AXES)
    baseline = "py3.11-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18"
    err = refused(capsys, tmp_path, "--matrix-file", str(tmp_path / "matrix.toml"),
                  "--pgbouncer", "local", "1.24", "--only", baseline, "-k", "no_such_scenario")
    assert "No scenario test matches the pytest arguments -k no_such_scenario" in err


def test_plan_names_environments_by_pgbouncer_line(tmp_path: Path, fake_index: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "matrix.toml").write_text(GOOD_AXES)  # no pgbouncer axis: the installed one
    assert cli.main(["matrix", "plan", "--matrix-file", str(tmp_path / "matrix.toml")]) == 0
    assert capsys.readouterr().out.split() == [
        "baseline", "py3.11-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18"]
    assert cli.main(["matrix", "plan", "--matrix-file", str(tmp_path / "matrix.toml"),
                     "--pgbouncer", "local", "1.24", "--format", "github"]) == 0
    include = json.loads(capsys.readouterr().out)["include"]
    assert [(e["slot"], e["pgbouncer"]) for e in include] == [("baseline", "1.18"),
                                                              ("pgbouncer", "1.24")]


def _write(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def test_report_diff_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _write(tmp_path / "old" / "results.json", results_doc("3.11.7", "2.1.9", "1"))
    same = _write(tmp_path / "same" / "results.json", results_doc("3.11.7", "2.1.9", "2"))
    moved = _write(tmp_path / "new" / "results.json", results_doc(
        "3.11.7", "2.1.9", "3", moved={("engine-before-fork", "process-init", "asyncpg"):
                                       "OTHER_FAILURE"}))
    assert cli.main(["report", "diff", str(old), str(same)]) == 0
    assert "No cell changed outcome." in capsys.readouterr().out
    assert cli.main(["report", "diff", str(old), str(moved)]) == 1
    out = capsys.readouterr().out
    assert "engine-before-fork / process-init / asyncpg" in out and "CLEAN -> OTHER_FAILURE" in out
    assert cli.main(["report", "diff", str(old)]) == 2
    assert "Usage: harness report diff OLD NEW" in capsys.readouterr().err


def test_report_rerenders_and_refuses_other_schemas(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "results.json", results_doc("3.11.7", "2.1.9"))
    assert cli.main(["report", str(path), "--out", str(tmp_path / "html")]) == 0
    assert (tmp_path / "html" / "matrix.md").read_text().startswith("# Compatibility matrix")
    assert (tmp_path / "html" / "matrix.html").exists()
    other = _write(tmp_path / "v2.json", {**results_doc("3.11.7", "2.1.9"), "schema": 2})
    assert cli.main(["report", str(other)]) == 2
    assert "has results schema 2, but this harness reads schema 1" in capsys.readouterr().err


def test_merge_writes_three_outputs_and_checks_a_baseline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path / "shard-a" / "r1" / "results.json", results_doc("3.11.7", "2.1.9", "1"))
    _write(tmp_path / "shard-b" / "r2" / "results.json", results_doc("3.13.0", "2.1.9", "2"))
    out = tmp_path / "merged"
    assert cli.main(["matrix", "merge", str(tmp_path / "shard-a"), str(tmp_path / "shard-b"),
                     "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["matrix.html", "matrix.json", "matrix.md"]
    assert len(json.loads((out / "matrix.json").read_text())["environments"]) == 2
    capsys.readouterr()
    broken = {("loop-bound-pool", "nullpool", "psycopg"): "HARNESS_ERROR"}
    _write(tmp_path / "shard-b" / "r2" / "results.json",
           results_doc("3.13.0", "2.1.9", "2", moved=broken))
    assert cli.main(["matrix", "merge", str(tmp_path / "shard-a"), str(tmp_path / "shard-b"),
                     "--out", str(tmp_path / "again"), "--baseline",
                     str(out / "matrix.json")]) == 1
    assert "1 cell(s) changed outcome" in capsys.readouterr().out


def test_bench_runs_the_checkouts_script(capfd: pytest.CaptureFixture[str]) -> None:
    """``harness bench repeat`` without N reaches bench/repeat.py, which prints its usage."""
    assert cli.main(["bench", "repeat"]) == 2
    assert "bench.repeat N" in capfd.readouterr().out


def test_bench_outside_a_checkout_says_where_to_run(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "fixes"]) == 2
    assert "cd into the checkout" in capsys.readouterr().err


def test_plan_pairwise_names_the_pairs_and_leaves_out_what_cannot_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The index's files decide which python x release pairs exist: asyncpg 0.28.0 has
    no cp313 wheel, so no environment pairs them and the plan says so."""
    known = {"sqlalchemy": ["2.1.9"], "celery": ["5.7.0"], "asyncpg": ["0.32.0", "0.28.0"],
             "psycopg": ["3.3.9"], "psycopg-binary": ["3.3.9"]}
    monkeypatch.setattr("harness.matrix.index.index_versions", known.__getitem__)
    monkeypatch.setattr("harness.environment.pgbouncer_version", lambda: "1.18.0")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    wheels = {"asyncpg": [f"asyncpg-{v}-cp{py}-cp{py}-manylinux_2_17_x86_64.whl"
                          for v, pys in (("0.32.0", (311, 313)), ("0.28.0", (311,)))
                          for py in pys],
              "sqlalchemy": ["SQLAlchemy-2.1.9-py3-none-any.whl"],
              "celery": ["celery-5.7.0-py3-none-any.whl"],
              "psycopg": ["psycopg-3.3.9-py3-none-any.whl"],
              "psycopg-binary": [f"psycopg_binary-3.3.9-cp{py}-cp{py}-manylinux_2_17_x86_64.whl"
                                 for py in (311, 313)]}
    monkeypatch.setattr("harness.matrix.python_support.IndexPythonSupport._list",
                        lambda self, package: [{"filename": f} for f in wheels[package]])
    code = cli.main(["matrix", "plan", "--pairwise", "--python", "3.11", "3.13",
                     "--sqlalchemy", "2.1.9", "--celery", "5.7.0", "--asyncpg", "0.32.0",
                     "0.28.0", "--psycopg", "3.3.9", "--pgbouncer", "local"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line.split() for line in out.splitlines() if line.startswith(("baseline", "pair"))]
    assert [slot for slot, _ in lines] == ["baseline", "pairwise#1", "pairwise#2"]
    assert not any("py3.13" in env and "asyncpg0.28.0" in env for _, env in lines)
    assert "covers 15 new pair(s)" in out
    assert "not installable, so not covered: python 3.13 + asyncpg 0.28.0" in out


def test_full_and_pairwise_together_are_refused(capsys, tmp_path, fake_index) -> None:
    assert "give one of them" in refused(capsys, tmp_path, "--full", "--pairwise")
