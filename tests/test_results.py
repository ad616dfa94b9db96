"""results.json: the contract's shape, the 'latest' link, and schema refusal."""

import json

import pytest

from harness import results
from harness.errors import ConfigError


def test_write_then_load_and_latest_points_at_the_run(tmp_path):
    doc = results.build_document([], {"backend": "local", "postgres": "15.18"}, "run-1")
    path = results.write(doc, tmp_path)
    assert path == tmp_path / "run-1" / "results.json"
    assert (tmp_path / "latest" / "results.json").read_text() == path.read_text()
    loaded = results.load(path)
    assert loaded["schema"] == results.SCHEMA
    assert set(loaded["environment"]) >= {"python", "packages", "services"}
    assert {"sqlalchemy", "celery", "asyncpg", "psycopg"} <= set(loaded["environment"]["packages"])
    doc2 = results.build_document([], {}, "run-2")
    results.write(doc2, tmp_path)
    assert (tmp_path / "latest").resolve() == (tmp_path / "run-2").resolve()


def test_another_schema_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": 99, "results": []}))
    with pytest.raises(ConfigError, match="schema 99.*Re-run the scenarios"):
        results.load(path)


def test_unreadable_file_is_refused(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="Could not read results file"):
        results.load(path)
