"""One environment's run hands it its PgBouncer, and refuses results from another one.

The environment's python is a stand-in script that records the command line and the
``HARNESS_IMAGE_PGBOUNCER`` it was given and writes a results.json the way the plugin
does (the real runs are in tests/test_matrix_shards.py and ``harness matrix``).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from harness.matrix import merge
from harness.matrix.axes import Combination
from harness.matrix.environments import BuiltEnv
from harness.matrix.pgbouncer_axis import PgBouncerSource
from harness.matrix.run import SIDECAR, Progress, run_env, wrong_pgbouncer
from tests.test_matrix_merge import results_doc

VERSIONS = {"python": "3.11", "sqlalchemy": "2.1.9", "celery": "5.7.0", "asyncpg": "0.32.0",
            "psycopg": "3.3.9"}
FAKE_PYTEST = """
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
results = Path(argv[argv.index("--results-dir") + 1])
backend = argv[len(argv) - 1 - argv[::-1].index("--backend") + 1]  # the last one wins
image = os.environ.get("HARNESS_IMAGE_PGBOUNCER", "")
used = os.environ["FAKE_PGBOUNCER"] or {"harness-pgbouncer:1.24": "1.24.1"}.get(image, "1.18.0")
document = json.loads(os.environ["FAKE_DOCUMENT"])
document["environment"]["services"].update(backend=backend, pgbouncer=used)
run = results / "20260101-000000-aaaaaa"
run.mkdir(parents=True)
(run / "results.json").write_text(json.dumps(document))
(results / "latest").symlink_to(run.name)
Path(os.environ["FAKE_SEEN"]).write_text(json.dumps({"argv": argv, "image": image}))
print("scenarios/test_x.py::test_variant[a] PASSED")
"""


def fake_env(tmp_path: Path, pgbouncer: str) -> BuiltEnv:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (tmp_path / "fake_pytest.py").write_text(FAKE_PYTEST)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "fake_pytest.py"}" '
                      f'"$@"\n')
    python.chmod(0o755)
    slot = "pgbouncer" if pgbouncer != "1.18" else "baseline"
    return BuiltEnv(Combination({**VERSIONS, "pgbouncer": pgbouncer}, slot), venv,
                    reused=True, seconds=0.0)


def run(tmp_path: Path, monkeypatch, source: PgBouncerSource, used: str = "",
        user_args: tuple[str, ...] = ("-k", "x")):
    monkeypatch.setenv("FAKE_PGBOUNCER", used)
    monkeypatch.setenv("FAKE_DOCUMENT", json.dumps(results_doc("3.11.7", "2.1.9")))
    monkeypatch.setenv("FAKE_SEEN", str(tmp_path / "seen.json"))
    monkeypatch.delenv("HARNESS_IMAGE_PGBOUNCER", raising=False)
    built = fake_env(tmp_path, source.version)
    done = run_env(built, tmp_path, tmp_path / "runs", tmp_path / "logs" / "x.pytest.log",
                   workers=1, pytest_args=list(user_args), progress=Progress(1, 1, io.StringIO()),
                   timeout_s=60, pgbouncer=source)
    return done, json.loads((tmp_path / "seen.json").read_text())


def test_a_docker_pgbouncer_reaches_pytest_and_the_sidecar(tmp_path: Path, monkeypatch) -> None:
    source = PgBouncerSource("1.24", "docker", "1.24.1", "harness-pgbouncer:1.24")
    done, seen = run(tmp_path, monkeypatch, source)
    assert done.error is None and done.results is not None
    argv = seen["argv"]
    assert argv[argv.index("--backend"):][:4] == ["--backend", "docker", "-k", "x"]
    assert seen["image"] == "harness-pgbouncer:1.24"
    sidecar = json.loads((done.results.parent / SIDECAR).read_text())
    assert sidecar["axes"]["pgbouncer"] == "1.24" and sidecar["backend"] == "docker"
    assert sidecar["pgbouncer_image"] == "harness-pgbouncer:1.24"
    matrix = merge.merge_paths([tmp_path / "runs"])
    assert matrix["environments"][0]["id"].endswith("-psycopg3.3.9-pgb1.24")
    assert matrix["environments"][0]["services"]["pgbouncer"] == "1.24.1"


def test_a_local_pgbouncer_runs_on_the_local_backend(tmp_path: Path, monkeypatch) -> None:
    done, seen = run(tmp_path, monkeypatch, PgBouncerSource("1.18", "local", "1.18.0"))
    assert done.error is None
    assert seen["argv"][seen["argv"].index("--backend") + 1] == "local"
    assert seen["image"] == ""


def test_results_from_another_pgbouncer_are_left_out(tmp_path: Path, monkeypatch) -> None:
    """A --backend after -- overrode the matrix's choice: 1.24 asked, 1.18.0 ran."""
    source = PgBouncerSource("1.24", "docker", "1.24.1", "harness-pgbouncer:1.24")
    done, _ = run(tmp_path, monkeypatch, source, used="1.18.0",
                  user_args=("--backend", "local"))
    assert done.results is None
    assert "stands for PgBouncer 1.24, but its scenarios ran on PgBouncer 1.18.0" in done.error


def test_wrong_pgbouncer_checks_only_what_was_recorded() -> None:
    assert wrong_pgbouncer("1.24", {"pgbouncer": "1.24.1"}) is None
    assert wrong_pgbouncer("1.24", {}) is None  # no PgBouncer was started
    assert wrong_pgbouncer("1.24", {"pgbouncer": "unknown"}) is None
    assert wrong_pgbouncer("1.18", {"pgbouncer": "1.24.1", "backend": "docker"}).startswith(
        "the environment stands for PgBouncer 1.18")
