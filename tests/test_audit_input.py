"""harness audit refuses bad input in one paragraph, before any service starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.audit import config as audit_config
from harness.audit import preflight
from harness.audit.hazards import audit_scenario
from harness.errors import ConfigError

ENGINE_MODULE = """
import os
from sqlalchemy.ext.asyncio import create_async_engine, async_sessionmaker
engine = create_async_engine(os.environ["DATABASE_URL"])
sessions = async_sessionmaker(engine)
not_an_engine = 42
def make_engine():
    return create_async_engine(os.environ["DATABASE_URL"])
def broken_factory():
    raise RuntimeError("the factory needs a secret it cannot find")
elsewhere = create_async_engine("postgresql+asyncpg://app@db.internal:5432/prod")
"""


def project(tmp_path: Path, table: str = "", module: str = ENGINE_MODULE) -> Path:
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "db.py").write_text(textwrap.dedent(module))
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'myapp'\nversion = '0'\n\n[tool.harness.audit]\n"
        + textwrap.dedent(table))
    return tmp_path


def checked(root: Path, **options: object) -> audit_config.AuditConfig:
    found = audit_config.build(root, audit_config.read_pyproject(root), options)
    return preflight.check(found)


def test_an_engine_a_session_factory_and_a_factory_are_recognised(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:engine"\n')
    assert (checked(root).kind, checked(root).driver) == ("engine", "asyncpg")
    assert checked(root, engine="myapp.db:sessions").kind == "sessionmaker"
    assert checked(root, engine="myapp.db:make_engine").kind == "engine-factory"


def test_a_module_that_does_not_import_shows_its_traceback(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:engine"\n',
                   module="import os\nraise ImportError('no module named secrets_vault')\n")
    with pytest.raises(ConfigError, match="does not import") as err:
        checked(root)
    assert "secrets_vault" in str(err.value) and "Traceback" in str(err.value)


def test_a_path_that_names_no_engine_is_refused(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:not_an_engine"\n')
    with pytest.raises(ConfigError, match="names a int, not an AsyncEngine"):
        checked(root)
    with pytest.raises(ConfigError, match="has no 'missing'"):
        checked(root, engine="myapp.db:missing")


def test_a_factory_that_raises_is_refused_with_its_error(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:broken_factory"\n')
    with pytest.raises(ConfigError, match="calling it with no arguments raised RuntimeError: "
                                          "the factory needs a secret"):
        checked(root)


def test_a_url_variable_the_code_never_reads_is_refused(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:elsewhere"\n')
    with pytest.raises(ConfigError, match=r"does not read its URL from \$DATABASE_URL.*"
                                          r"db.internal:5432/prod"):
        checked(root)


def test_unknown_hazards_and_malformed_paths_are_refused_without_importing(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:engine"\nhazards = ["loop-reuse", "typo"]\n')
    with pytest.raises(ConfigError, match="unknown hazard.*'typo'.*The hazards are: loop-reuse"):
        audit_config.build(root, audit_config.read_pyproject(root), {})
    with pytest.raises(ConfigError, match="is not an import path"):
        audit_config.build(root, {}, {"engine": "myapp.db.engine"})
    with pytest.raises(ConfigError, match="Nothing to audit"):
        audit_config.build(root, {}, {})
    with pytest.raises(ConfigError, match="unknown key"):
        audit_config.build(root, {"engin": "x:y"}, {})


def test_the_cli_says_it_in_one_paragraph_and_exits_2(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:not_an_engine"\n')
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "audit", "--project", str(root)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("harness audit: engine = 'myapp.db:not_an_engine' names a int")
    assert "bringing up nodes" not in proc.stdout + proc.stderr  # nothing was started


def test_the_hazards_follow_the_input(tmp_path):
    root = project(tmp_path, 'engine = "myapp.db:engine"\nhazards = ["loop-reuse", '
                             '"pgbouncer-prepared"]\n')
    scenario = audit_scenario(checked(root))
    assert [v.name for v in scenario.variants] == ["loop-reuse", "pgbouncer-prepared"]
    assert scenario.drivers == ("asyncpg",)
    prepared = scenario.variant("pgbouncer-prepared")
    assert "pgbouncer = false" in prepared.requires(None)  # not deployed behind PgBouncer


def test_the_driver_is_the_one_the_users_own_url_names(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://app@db.internal/prod")
    root = project(tmp_path, 'engine = "myapp.db:engine"\n')
    assert checked(root).driver == "psycopg"
