"""Container environments, the postgres axis, and where every axis value comes from.

The pure logic (plans, sources, the ``docker run`` command line, mounts, the legend)
is tested with stand-ins for the two questions asked of the machine: "is there an
interpreter for this Python here" and "what labels does this image carry". The real
thing is tested at the end, and only where the interpreter image exists
(``HARNESS_SUITES=forky bash docker/build.sh``; skipped otherwise, with that reason):
a container environment is built, one scenario variant runs inside it through the
launcher, its results come back to the host, and no container is left behind, also
when the launcher is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.matrix import axes, containers, interpreters, merge, pgbouncer_axis, sources, table

ROOT = Path(__file__).resolve().parent.parent
PY314 = "harness-python:3.14"
FORKY_LABELS = {"org.harness.python.versions": "3.14=3.14.8 3.15=3.15.0", "id": "sha256:abc"}


def spec(**overrides: list[str]) -> axes.MatrixSpec:
    base = {"python": ["3.11"], "sqlalchemy": ["2.1.9"], "celery": ["5.7.0"],
            "asyncpg": ["0.32.0"], "psycopg": ["3.3.9"], "pgbouncer": ["1.18"]}
    return axes.MatrixSpec(axes={**base, **overrides})


def no_host_python(value: str) -> interpreters.Interpreter:
    if value.startswith("3.11"):
        return interpreters.Interpreter(Path("/usr/bin/python3.11"), "3.11.7")
    raise ConfigError(f"No Python {value} interpreter was found.")


def images(present: dict[str, dict[str, str]]):
    return lambda name: present.get(name)


# --- the postgres axis ---------------------------------------------------------------
def test_a_matrix_without_the_postgres_axis_keeps_its_environment_ids() -> None:
    combos = axes.plan(spec())
    assert combos[0].id == "py3.11-sa2.1.9-celery5.7.0-asyncpg0.32.0-psycopg3.3.9-pgb1.18"
    assert "postgres" not in combos[0].versions


def test_the_postgres_axis_is_named_in_ids_and_varies_one_at_a_time() -> None:
    combos = axes.plan(spec(postgres=["15", "17", "18"]))
    assert [c.slot for c in combos] == ["baseline", "postgres", "postgres#2"]
    assert [c.id.split("-")[-2] for c in combos] == ["pg15", "pg17", "pg18"]
    assert len({c.venv_id for c in combos}) == 1  # a service axis installs nothing
    include = axes.github_include(combos)["include"]
    assert include[2]["postgres"] == "18"


def test_postgres_local_becomes_the_installed_major_and_other_forms_are_refused() -> None:
    resolved = sources.resolve_postgres(spec(postgres=["local", "18"]), local=lambda: "15.18")
    assert resolved.axes["postgres"] == ["15", "18"]
    with pytest.raises(ConfigError, match="not a major version"):
        sources.resolve_postgres(spec(postgres=["18.6"]), local=lambda: "15.18")
    assert sources.resolve_postgres(spec(), local=lambda: None) == spec()


# --- where a Python comes from -------------------------------------------------------
def test_a_python_the_host_has_runs_on_the_host_even_when_an_image_exists() -> None:
    found = sources.python_sources(["3.11"], find=no_host_python,
                                   labels=images({"harness-python:3.11": FORKY_LABELS}))
    assert isinstance(found["3.11"], interpreters.Interpreter)


def test_a_python_the_host_lacks_comes_from_its_interpreter_image() -> None:
    found = sources.python_sources(["3.14", "3.15"], find=no_host_python,
                                   labels=images({PY314: FORKY_LABELS,
                                                  "harness-python:3.15": FORKY_LABELS}))
    assert found["3.14"] == sources.ContainerPython("3.14", "3.14.8", PY314, "sha256:abc")
    assert found["3.15"].version == "3.15.0"
    assert found["3.14"].path == Path("/usr/bin/python3.14")


def test_a_missing_python_says_both_ways_to_get_it_with_the_exact_build_command() -> None:
    with pytest.raises(ConfigError) as raised:
        sources.python_sources(["3.14"], find=no_host_python, labels=images({}))
    text = str(raised.value)
    assert "No Python 3.14 interpreter was found" in text
    assert "harness-python:3.14" in text
    assert 'HARNESS_SUITES="forky" bash docker/build.sh' in text


def test_an_image_of_another_patch_release_is_refused() -> None:
    with pytest.raises(ConfigError, match="carries Python 3.14.8, not 3.14.10"):
        sources.python_sources(["3.14.10"], find=no_host_python,
                               labels=images({PY314: FORKY_LABELS}))


# --- what each environment runs on ---------------------------------------------------
ALL_IMAGES = {
    "harness-postgres:15": {"org.harness.postgres.version": "15.20"},
    "harness-postgres:18": {"org.harness.postgres.version": "18.6"},
    "harness-pgbouncer:1.18": {"org.harness.pgbouncer.version": "1.18.0"},
    "harness-pgbouncer:1.26": {"org.harness.pgbouncer.version": "1.26.1"},
    "harness-redis:7.0": {},
}
LOCAL_PGB = {"1.18": pgbouncer_axis.PgBouncerSource("1.18", "local", "1.18.0"),
             "1.26": pgbouncer_axis.PgBouncerSource("1.26", "docker", "1.26.1",
                                              "harness-pgbouncer:1.26")}


def services_for(matrix: axes.MatrixSpec, present=ALL_IMAGES,
                 pythons=None) -> dict[str, sources.EnvServices]:
    combos = axes.plan(matrix)
    pythons = pythons or {"3.11": interpreters.Interpreter(Path("/usr/bin/python3.11"), "3.11.7")}
    return sources.env_services(combos, pythons, LOCAL_PGB, local_postgres=lambda: "15.18",
                                labels=images(present))


def test_the_host_majors_and_lines_run_local_the_others_on_docker_images() -> None:
    found = list(services_for(spec(postgres=["15", "18"], pgbouncer=["1.18", "1.26"]))
                 .values())
    assert [s.backend for s in found] == ["local", "docker", "docker"]
    assert found[0].environ() == {}
    assert found[1].environ() == {"HARNESS_IMAGE_POSTGRES": "harness-postgres:18",
                                  "HARNESS_IMAGE_PGBOUNCER": "harness-pgbouncer:1.18"}
    assert found[2].environ()["HARNESS_IMAGE_POSTGRES"] == "harness-postgres:15"
    assert found[1].pytest_args() == ["--backend", "docker"]


def test_a_container_environment_keeps_the_baselines_service_images() -> None:
    container = sources.ContainerPython("3.14", "3.14.8", PY314, "sha256:abc")
    (found,) = services_for(spec(python=["3.14"]), pythons={"3.14": container}).values()
    assert found.backend == "docker" and found.container == container
    assert (found.postgres_image, found.image, found.redis_image) == (
        "harness-postgres:15", "harness-pgbouncer:1.18", "harness-redis:7.0")
    assert "in a container of harness-python:3.14" in found.describe()


def test_every_missing_image_is_named_with_its_build_command_before_anything_is_built() -> None:
    present = {k: v for k, v in ALL_IMAGES.items() if k != "harness-postgres:18"}
    with pytest.raises(ConfigError) as raised:
        services_for(spec(postgres=["15", "18", "16"]), present=present)
    text = str(raised.value)
    assert "harness-postgres:18" in text and 'HARNESS_SUITES="forky" bash docker/build.sh' in text
    assert "harness-postgres:16" in text and "docker/build.sh makes postgres 15, 17, 18" in text


def test_an_image_carrying_another_major_is_refused() -> None:
    present = {**ALL_IMAGES, "harness-postgres:18": {"org.harness.postgres.version": "17.12"}}
    with pytest.raises(ConfigError, match="carries postgres 17.12, not 18"):
        services_for(spec(postgres=["15", "18"]), present=present)


# --- the container's command line ----------------------------------------------------
def test_only_non_system_folders_named_on_the_command_line_are_mounted(tmp_path: Path) -> None:
    results = tmp_path / "runs"
    results.mkdir()
    assert containers.mountable(str(results)) == str(results.resolve())
    assert containers.mountable(str(results / "verdict.json")) == str(results.resolve())
    assert containers.mountable("/usr/bin/python3") is None
    assert containers.mountable("/etc/ssl/certs/x.pem") is None
    assert containers.mountable("-k") is None
    assert containers.mountable("/") is None


def test_a_local_index_is_mounted_with_the_folder_its_pages_link_into(tmp_path: Path) -> None:
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    found = containers.host_paths({"UV_INDEX": f"file://{tmp_path}/pypi/simple https://x/simple",
                                   "UV_FIND_LINKS": str(tmp_path / "wheels"),
                                   "UV_PYTHON": str(tmp_path)})
    assert found == [str(tmp_path / "pypi"), str(tmp_path / "wheels")]


def test_the_run_command_labels_shares_host_namespaces_and_passes_only_harness_settings(
        tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed")
    env_dir = tmp_path / "env"
    argv = containers.run_argv(
        PY314, env_dir, ["python", "-V"], cwd=str(ROOT), name="harness-env-x",
        environ={"HARNESS_IMAGE_POSTGRES": "harness-postgres:15", "TC_HOST": "127.0.0.1",
                 "HARNESS_MATRIX_RUN": "abc", "AWS_SECRET_ACCESS_KEY": "no", "HOME": "/x"},
        extra_mounts=[str(tmp_path)])
    joined = " ".join(argv)
    assert f"--label {containers.LABEL_MATRIX}=abc" in joined
    assert f"--label {containers.LABEL_OWNER}=" in joined
    assert "--network host --pid host --uts host" in joined
    assert f"--cpu-shares {containers.CPU_SHARES}" in joined
    assert f"-v {ROOT}:{ROOT}" in joined
    assert f"-v {tmp_path.resolve()}:{tmp_path.resolve()}" in joined
    assert "-e HARNESS_IMAGE_POSTGRES=harness-postgres:15" in joined
    assert "-e TC_HOST=127.0.0.1" in joined and "AWS_SECRET" not in joined
    assert f"-e VIRTUAL_ENV={env_dir}" in joined and "HOME=/root" in joined
    assert argv[-3:] == [PY314, "python", "-V"]


# --- results and the legend ----------------------------------------------------------
def _document(python: str, services: dict[str, str]) -> dict:
    return {"schema": 1, "run_id": "20261130-000000-" + python.replace(".", ""),
            "environment": {"python": python, "packages": {
                "sqlalchemy": "2.1.9", "celery": "5.7.0", "asyncpg": "0.32.0",
                "psycopg": "3.3.9"}, "services": services},
            "results": []}


def test_the_legend_says_what_differs_besides_the_axes() -> None:
    host = {"backend": "local", "postgres": "15.18", "redis": "7.0.15", "pgbouncer": "1.18.0"}
    docker = {"backend": "docker", "postgres": "15.20", "redis": "7.0.15", "pgbouncer": "1.18.0"}
    pg18 = {**docker, "postgres": "18.6"}
    matrix = merge.merge([
        (_document("3.11.7", host), {"slot": "baseline", "axes": {"postgres": "15"}}, "a"),
        (_document("3.14.8", docker), {"slot": "python", "axes": {"postgres": "15"},
                                       "runs_in": {"image": PY314, "python": "3.14.8"}}, "b"),
        (_document("3.11.7", pg18), {"slot": "postgres", "axes": {"postgres": "18"}}, "c"),
    ])
    ids = [e["id"] for e in matrix["environments"]]
    assert len(set(ids)) == 3 and ids[2].endswith("-pg18-pgb1.18")
    notes = dict(table.besides_axes(matrix))
    assert "E1" not in notes
    assert notes["E2"].startswith("besides its axes, differs from E1: runs in a container of "
                                  "harness-python:3.14 (Python 3.14.8)")
    assert "backend docker (E1: local)" in notes["E2"] and "PostgreSQL 15.20" in notes["E2"]
    assert "PostgreSQL" not in notes["E3"]  # its own axis, shown in the table
    assert list(table.env_versions(matrix["environments"][2])) == list(table.AXIS_LABELS)


# --- the real thing ------------------------------------------------------------------
def _image_problem() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    if sources.image_labels(PY314) is None:
        return (f"no {PY314} image (or no Docker engine): build it with "
                f"{sources.BUILD_FORKY}")
    return None


def _containers_of(label: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                         capture_output=True, text=True, timeout=60, check=False)
    return out.stdout.split()


@pytest.mark.skipif(_image_problem() is not None, reason=str(_image_problem()))
def test_a_container_environment_runs_a_scenario_and_leaves_nothing(tmp_path: Path) -> None:
    """Build (or reuse) a Python 3.14 environment in its image, run one scenario variant
    in it on the docker backend, read its results on the host, and stop a launcher with
    SIGTERM: no container of either is left."""
    run_id = f"test{os.getpid()}"
    os.environ[containers.MATRIX_RUN_VARIABLE] = run_id
    try:
        python = sources.find_container_python("3.14")
        combo = axes.plan(spec(python=["3.14"]))[0]
        # Its own cache folder: the matrix's environments (another resolution) stay as
        # they are; uv's wheel cache keeps this build to seconds.
        env = containers.build(combo, python, ROOT, root=tmp_path / "envs",
                               log_path=tmp_path / "build.log")
        assert env.python.name == "python" and env.python.parent.name == ".harness-launch"
        results = tmp_path / "results"
        results.mkdir()
        child_env = {**os.environ, "HARNESS_IMAGE_POSTGRES": "harness-postgres:15",
                     "HARNESS_IMAGE_PGBOUNCER": "harness-pgbouncer:1.18"}
        done = subprocess.run(
            [str(env.python), "-m", "pytest", "scenarios/test_event_loop_helpers.py", "-q",
             "-p", "no:cacheprovider", "--backend", "docker", "--results-dir", str(results),
             "-k", "test_variant[get-event-loop-asyncpg"],
            cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        document = json.loads((results / "latest" / "results.json").read_text())
        assert document["environment"]["python"] == python.version
        assert document["environment"]["services"]["postgres"].startswith("15.")
        (row,) = document["results"]
        # Python 3.14 no longer makes a loop in get_event_loop() (cpython gh-126353).
        assert (row["variant"], row["outcome"]) == ("get-event-loop", "REPRODUCED")

        sleeper = subprocess.Popen([str(env.python), "-c", "import time; time.sleep(120)"],
                                   cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _containers_of(f"{containers.LABEL_MATRIX}={run_id}"):
            assert time.monotonic() < deadline, "the launcher's container never started"
            time.sleep(0.2)
        sleeper.send_signal(signal.SIGTERM)
        assert sleeper.wait(timeout=containers.STOP_GRACE_S + 30) != 0
        assert _containers_of(f"{containers.LABEL_MATRIX}={run_id}") == []
    finally:
        containers.sweep(run_id)
        os.environ.pop(containers.MATRIX_RUN_VARIABLE, None)
    assert _containers_of(f"{containers.LABEL_MATRIX}={run_id}") == []
