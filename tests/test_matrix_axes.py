"""Matrix axes, the plan, version resolution, interpreter and PgBouncer lookup (no network,
no Docker: the local binary and the engine's answers are stand-ins)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.matrix import axes, index, interpreters, pgbouncer_axis

ROOT = Path(__file__).resolve().parent.parent
INDEX = {"sqlalchemy": ["2.1.9", "2.1.8", "2.1.0b1", "2.0.58", "2.0.57"],
         "celery": ["5.7.0", "5.6.3", "5.6.2"], "asyncpg": ["0.32.0", "0.30.0"],
         "psycopg": ["3.3.9", "3.2.13", "3.1.7"], "psycopg-binary": ["3.3.9", "3.2.13"]}


def spec(**overrides: list[str]) -> axes.MatrixSpec:
    base = {"python": ["3.13", "3.11"], "sqlalchemy": ["2.1.9", "2.0.58"],
            "celery": ["5.7.0", "5.6.3"], "asyncpg": ["0.32.0", "0.30.0"],
            "psycopg": ["3.3.9", "3.2.13"], "pgbouncer": ["1.18", "1.24"]}
    return axes.MatrixSpec(axes={**base, **overrides})


def test_repository_matrix_toml_is_the_documented_default() -> None:
    loaded = axes.load_toml(ROOT / "matrix.toml")
    assert loaded.mode == axes.ONE_AT_A_TIME
    # Every axis but the optional ones (postgres: the local PostgreSQL when absent).
    assert {a: len(v) for a, v in loaded.axes.items()} == dict.fromkeys(
        (a for a in axes.AXES if a not in axes.OPTIONAL_AXES), 2)
    assert loaded.axes["pgbouncer"] == ["1.18", "1.24"]
    assert len(axes.plan(loaded)) == 7


def test_one_at_a_time_varies_one_axis_from_the_baseline() -> None:
    combos = axes.plan(spec(sqlalchemy=["2.1.9", "2.0.58", "2.0.40"]))
    assert combos[0].slot == "baseline"
    assert combos[0].id == "py3.13-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18"
    assert [c.slot for c in combos] == ["baseline", "python", "sqlalchemy", "sqlalchemy#2",
                                        "celery", "asyncpg", "psycopg", "pgbouncer"]
    assert combos[-1].id.endswith("-psycopg3.3.9-pgb1.24")
    base = combos[0].versions
    for combo in combos[1:]:
        assert sum(combo.versions[a] != base[a] for a in base) == 1


def test_full_product_keeps_the_baseline_slot() -> None:
    combos = axes.plan(axes.MatrixSpec(spec().axes, mode=axes.PRODUCT))
    assert len(combos) == 64 and len({c.id for c in combos}) == 64
    assert [c.slot for c in combos].count("baseline") == 1


def test_requirements_pin_with_the_projects_extras() -> None:
    combo = axes.plan(spec())[0]
    assert combo.requirements() == ["sqlalchemy[asyncio]==2.1.9", "celery[redis]==5.7.0",
                                    "asyncpg==0.32.0", "psycopg[binary]==3.3.9"]


def test_github_include_is_one_entry_per_environment() -> None:
    include = axes.github_include(axes.plan(spec()))["include"]
    assert len(include) == 7
    assert include[0] == {"id": "py3.13-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18",
                          "slot": "baseline", "python": "3.13", "sqlalchemy": "2.1.9",
                          "celery": "5.7.0", "asyncpg": "0.32.0", "psycopg": "3.3.9",
                          "pgbouncer": "1.18"}
    assert include[-1]["slot"] == "pgbouncer" and include[-1]["pgbouncer"] == "1.24"
    json.dumps(include)  # the workflow reads it with fromJSON


def test_options_override_axes_and_full_switches_mode() -> None:
    merged = axes.with_options(spec(), {"sqlalchemy": ["2.1.8"], "python": None}, full=True)
    assert merged.axes["sqlalchemy"] == ["2.1.8"]
    assert merged.axes["python"] == ["3.13", "3.11"]
    assert merged.mode == axes.PRODUCT


def test_options_without_a_file_must_name_every_axis() -> None:
    with pytest.raises(ConfigError, match=r"No versions for celery, asyncpg, psycopg in"):
        axes.with_options(None, {"python": ["3.11"], "sqlalchemy": ["2.1.9"]}, full=False)


def test_a_matrix_without_the_pgbouncer_axis_runs_on_the_installed_one(tmp_path: Path) -> None:
    """A matrix.toml written before PgBouncer was an axis still loads: pgbouncer = local."""
    path = tmp_path / "matrix.toml"
    path.write_text("[axes]\n" + "".join(f"{a} = {json.dumps(v[:1])}\n"
                                         for a, v in spec().axes.items() if a != "pgbouncer"))
    merged = axes.with_options(axes.load_toml(path), {}, full=False)
    assert merged.axes["pgbouncer"] == ["local"]
    resolved = pgbouncer_axis.resolve_pgbouncer(merged, local=lambda: "1.18.0")
    assert resolved.axes["pgbouncer"] == ["1.18"]
    assert axes.plan(resolved)[0].id.endswith("-pgb1.18")


@pytest.mark.parametrize(("text", "message"), [
    ("mode = one-at-a-time\n", "not valid TOML"),
    ("[axes]\npython = [\"3.11\"]\ndjango = [\"5.0\"]\n", "unknown axis 'django'"),
    ("[axes]\npython = []\n", "must be a non-empty list"),
    ("[axes]\npython = \"3.11\"\n", "must be a non-empty list"),
    ("mode = \"everything\"\n[axes]\npython = [\"3.11\"]\n", "mode is 'everything'"),
    ("python = [\"3.11\"]\n", "unknown top-level keys"),
    ("mode = \"product\"\n", "has no \\[axes\\] table"),
    ("[axes]\ncelery = [\"5.7.0\", \"5.7.0\"]\n", "lists a version twice"),
])
def test_malformed_matrix_toml_is_refused_with_the_reason(tmp_path: Path, text: str,
                                                         message: str) -> None:
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        axes.load_toml(path)


def test_missing_matrix_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="There is no matrix file"):
        axes.load_toml(tmp_path / "matrix.toml")


def test_resolve_exact_line_and_latest() -> None:
    available = INDEX["sqlalchemy"]
    assert index.resolve("sqlalchemy", "2.0.58", available) == "2.0.58"
    assert index.resolve("sqlalchemy", "2.0.x", available) == "2.0.58"
    assert index.resolve("sqlalchemy", "2.1.*", available) == "2.1.9"
    assert index.resolve("sqlalchemy", "latest", available) == "2.1.9"  # not the beta


def test_unknown_version_names_package_version_and_neighbours() -> None:
    with pytest.raises(ConfigError, match=r"sqlalchemy 2\.1\.99 does not exist on the package "
                                          r"index.*2\.1\.9, 2\.1\.8"):
        index.resolve("sqlalchemy", "2.1.99", INDEX["sqlalchemy"])
    with pytest.raises(ConfigError, match="No release of celery matches '4.4.x'"):
        index.resolve("celery", "4.4.x", INDEX["celery"])


def test_resolve_spec_checks_every_axis_before_anything_runs() -> None:
    asked: list[str] = []

    def lister(package: str) -> list[str]:
        asked.append(package)
        return INDEX[package]

    resolved = index.resolve_spec(spec(sqlalchemy=["2.1.x", "2.1.9", "2.0.x"]), lister)
    assert resolved.axes["sqlalchemy"] == ["2.1.9", "2.0.58"]
    assert sorted(asked) == sorted(INDEX)
    with pytest.raises(ConfigError, match=r"psycopg 3\.1\.7 exists, but psycopg-binary 3\.1\.7"):
        index.resolve_spec(spec(psycopg=["3.1.7"]), lister)


def _fake_pyenv(root: Path, *names: str) -> None:
    for name in names:
        python = root / "versions" / name / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("#!/bin/sh\n")
        python.chmod(0o755)


def test_find_python_takes_the_newest_patch_of_the_line(tmp_path: Path) -> None:
    _fake_pyenv(tmp_path, "3.11.2", "3.11.10", "3.11.7", "3.13.0", "3.13-dev")
    found = interpreters.find_python("3.11", tmp_path)
    assert found.version == "3.11.10"
    assert found.path == tmp_path / "versions" / "3.11.10" / "bin" / "python"
    assert interpreters.find_python("3.11.7", tmp_path).version == "3.11.7"


def test_missing_python_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    _fake_pyenv(tmp_path, "3.11.7")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(ConfigError, match=r"No Python 3\.9 interpreter was found.*pyenv "
                                          r"install 3\.9"):
        interpreters.find_python("3.9", tmp_path)
    with pytest.raises(ConfigError, match="not of the form"):
        interpreters.find_python("three", tmp_path)


# --- the pgbouncer axis: a service, resolved before anything is built ---------------
IMAGES = {"harness-pgbouncer:1.18": "1.18.0", "harness-pgbouncer:1.24": "1.24.1"}


def engine(images: dict[str, str | None] | None = None, problem: str | None = None,
           missing: tuple[str, ...] = ()):
    """A stand-in for pgbouncer_axis.docker_state that counts how often it was asked."""
    def state() -> pgbouncer_axis.DockerState:
        state.asked += 1  # type: ignore[attr-defined]
        return pgbouncer_axis.DockerState(problem, IMAGES if images is None else images, missing)
    state.asked = 0  # type: ignore[attr-defined]
    return state


def test_environments_differing_only_in_pgbouncer_share_a_virtualenv() -> None:
    combos = axes.plan(spec())
    baseline, pgb = combos[0], combos[-1]
    assert pgb.slot == "pgbouncer" and baseline.id != pgb.id
    assert baseline.venv_id == pgb.venv_id == \
        "py3.13-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9"
    assert baseline.requirements() == pgb.requirements()
    assert len({c.venv_id for c in combos}) == len(combos) - 1


def test_pgbouncer_of_the_local_binary_runs_locally_without_asking_docker() -> None:
    docker = engine()
    found = pgbouncer_axis.pgbouncer_sources(["1.18"], local=lambda: "1.18.0", docker=docker)
    assert found["1.18"] == pgbouncer_axis.PgBouncerSource("1.18", "local", "1.18.0", None)
    assert found["1.18"].pytest_args() == ["--backend", "local"]
    assert found["1.18"].environ() == {}
    assert docker.asked == 0


def test_other_pgbouncer_versions_run_on_their_docker_image() -> None:
    docker = engine()
    found = pgbouncer_axis.pgbouncer_sources(["1.18", "1.24", "1.24"], local=lambda: "1.18.0",
                                       docker=docker)
    assert found["1.24"] == pgbouncer_axis.PgBouncerSource("1.24", "docker", "1.24.1",
                                                     "harness-pgbouncer:1.24")
    assert found["1.24"].pytest_args() == ["--backend", "docker"]
    assert found["1.24"].environ() == {"HARNESS_IMAGE_PGBOUNCER": "harness-pgbouncer:1.24"}
    assert docker.asked == 1
    # No local binary at all: every version comes from its image.
    found = pgbouncer_axis.pgbouncer_sources(["1.18"], local=lambda: None, docker=engine())
    assert found["1.18"].backend == "docker" and found["1.18"].found == "1.18.0"


@pytest.mark.parametrize(("docker", "message"), [
    (engine(images={"harness-pgbouncer:1.18": "1.18.0"}),
     (r"PgBouncer 1\.24 cannot run here: it needs the docker image harness-pgbouncer:1\.24, "
      r"which the Docker engine does not have\. Available: the local pgbouncer is 1\.18\.0; "
      r"the Docker engine has harness-pgbouncer:1\.18 \(1\.18\.0\)\. Build the images: "
      r"'bash docker/build.sh' builds them")),
    (engine(problem="no Docker engine answers (connection refused)"),
     (r"PgBouncer 1\.24 cannot run here: it needs the docker backend, which cannot run here "
      r"\(no Docker engine answers \(connection refused\)\).*bash docker/ci-setup\.sh")),
    (engine(images={"harness-pgbouncer:1.24": "1.18.0"}),
     r"the image harness-pgbouncer:1\.24 carries PgBouncer 1\.18\.0, not 1\.24"),
    (engine(missing=("harness-postgres:15 (HARNESS_IMAGE_POSTGRES)",)),
     r"also needs the image\(s\) harness-postgres:15 \(HARNESS_IMAGE_POSTGRES\)"),
])
def test_a_pgbouncer_version_that_cannot_run_is_refused_with_what_to_do(docker, message) -> None:
    with pytest.raises(ConfigError, match=message):
        pgbouncer_axis.pgbouncer_sources(["1.18", "1.24"], local=lambda: "1.18.0", docker=docker)


def test_a_pgbouncer_version_build_sh_does_not_know_says_which_it_knows() -> None:
    with pytest.raises(ConfigError, match=r"PgBouncer 1\.21 cannot run here.*docker/build\.sh "
                                          r"knows only PgBouncer 1\.18 and 1\.24"):
        pgbouncer_axis.pgbouncer_sources(["1.21"], local=lambda: "1.18.0", docker=engine())


@pytest.mark.parametrize(("value", "message"), [
    ("1.24.1", r"'1\.24\.1' is not of the form X\.Y or 'local' \(write 1\.24"),
    ("latest", r"'latest' is not of the form X\.Y or 'local'\. Write for example"),
    ("pgbouncer-1.18", "is not of the form X.Y"),
])
def test_a_bad_pgbouncer_value_is_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pgbouncer_axis.resolve_pgbouncer(spec(pgbouncer=[value]), local=lambda: "1.18.0")


def test_local_is_the_installed_binarys_line_and_needs_one() -> None:
    resolved = pgbouncer_axis.resolve_pgbouncer(spec(pgbouncer=["local", "1.18", "1.24"]),
                                          local=lambda: "1.18.0")
    assert resolved.axes["pgbouncer"] == ["1.18", "1.24"]  # local and 1.18 are one value
    with pytest.raises(ConfigError, match=r"'local' means the installed pgbouncer binary, but "
                                          r"there is no pgbouncer on PATH"):
        pgbouncer_axis.resolve_pgbouncer(spec(pgbouncer=["local"]), local=lambda: None)


def test_package_resolution_keeps_the_pgbouncer_axis() -> None:
    resolved = index.resolve_spec(spec(), INDEX.__getitem__)
    assert resolved.axes["pgbouncer"] == ["1.18", "1.24"]
