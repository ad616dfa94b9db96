"""The GitHub Actions workflows pass actionlint, so a broken workflow fails here first.

actionlint checks the syntax, the expressions, the inputs of every action against
that action's own definition, and that no step uses an action whose runtime GitHub
has removed (node20, September 2026). It comes from the project's ``test`` extra
(``python3 -m harness.bootstrap tests`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or \
        shutil.which("actionlint")
    assert found, ("actionlint is not installed: python3 -m harness.bootstrap tests installs "
                   "the project's 'test' extra (pip install -e '.[test]')")
    return found


def test_there_is_a_push_workflow_and_the_matrix_workflow():
    names = {p.name for p in WORKFLOWS}
    assert {"ci.yml", "compat-matrix.yml"} <= names
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "push:" in ci and "pull_request:" in ci and "bash .ci/run" in ci


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_passes_actionlint(workflow: Path):
    out = subprocess.run([_actionlint(), "-no-color", str(workflow)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_fails_a_workflow_on_a_removed_runtime(tmp_path: Path):
    """The check has teeth: the node20 actions this project used before fail it."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
                   "      - uses: actions/checkout@v4\n")
    out = subprocess.run([_actionlint(), "-no-color", str(bad)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode != 0 and "node20" in out.stdout, out.stdout + out.stderr


def test_no_workflow_or_script_names_a_package_host():
    """Mirrors come from apt's own sources on the machine that builds (docker/build.sh)."""
    for path in [*WORKFLOWS, *(ROOT / "docker").rglob("*.sh"), ROOT / ".ci" / "run"]:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text, f"{path} names an address"
