"""Ctrl-C or SIGTERM in the middle of a variant: nothing the run started survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from harness.services.base import chown_to_service_user, remove_tree

ROOT = Path(__file__).resolve().parent.parent

SLOW = textwrap.dedent('''
    from harness.plugin import assert_expected
    from harness.scenario import Claim, Role, Scenario, Variant, Workload, clean

    SCENARIO = Scenario(
        id="slow", app="tests.apps.lifecycle",
        workload=Workload(task="hang_first", calls=2, concurrency=2, timeout_s=120),
        signatures=(), claim=Claim("-", "-", None, "hangs", "hangs"),
        variants=(Variant("hangs", Role.BAD, {}, expect=clean()),), drivers=("asyncpg",))


    def test_variant(variant_run):
        assert_expected(variant_run)
''')


def processes_with(mark: str) -> list[str]:
    """Processes whose environment carries ``mark``: everything the run started inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark.encode() in (entry / "environ").read_bytes():
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def wait_for_path(pattern: str, folder: Path, text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in folder.glob(pattern):
            if text in path.read_text(errors="replace"):
                return True
        time.sleep(0.2)
    return False


def private_run_env() -> tuple[dict[str, str], Path, str]:
    """An environment whose TMPDIR and marker belong to one pytest run only."""
    private_tmp = Path(tempfile.mkdtemp(prefix="harness-cleanup-test-"))
    private_tmp.chmod(0o755)  # the service user must reach its own folders inside
    chown_to_service_user(private_tmp)
    mark = f"harness-test-{uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(private_tmp), HARNESS_TEST_MARK=mark)
    return env, private_tmp, mark


def test_a_completed_run_leaves_no_process_and_no_temp_folder(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_quick.py").write_text(SLOW.replace('"hang_first", calls=2', '"echo", calls=2'))
    env, private_tmp, mark = private_run_env()
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                              "test_quick.py"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=180)
        assert run.returncode == 0, run.stdout[-3000:]
        assert processes_with(mark) == []
        assert list(private_tmp.iterdir()) == [], "temp folders were left behind"
    finally:
        remove_tree(private_tmp)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_leaves_no_process_and_no_temp_folder(tmp_path: Path, signum: int):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_slow.py").write_text(SLOW)
    env, private_tmp, mark = private_run_env()
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_slow.py"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # A shell without job control starts background jobs with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for_path("reports/*/logs/slow/*.log", project, " ready.", 90), \
            "the worker never got ready"
        time.sleep(1.0)  # the calls are sent and one of them hangs in a pool process
        assert processes_with(mark), "the run's processes should be alive before the signal"
        run.send_signal(signum)
        output, _ = run.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while processes_with(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_with(mark) == [], output[-3000:]
        assert list(private_tmp.iterdir()) == [], "temp folders were left behind"
        assert run.returncode != 0
    finally:
        run.kill()
        remove_tree(private_tmp)
