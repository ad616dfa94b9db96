"""Ctrl-C or SIGTERM in the middle of a variant: nothing the run started survives."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import pytest

from harness.services.base import remove_tree
from tests._runs import (
    assert_nothing_left,
    finish,
    log_tail,
    private_run_env,
    run_processes,
    start_pytest,
    wait_for_path,
)

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


def test_a_completed_run_leaves_no_process_and_no_temp_folder(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_quick.py").write_text(SLOW.replace('"hang_first", calls=2', '"echo", calls=2'))
    output = tmp_path / "pytest.out"
    env, private_tmp, mark = private_run_env()
    run = start_pytest(["test_quick.py"], project, env, output)
    try:
        assert finish(run, output) == 0, log_tail(output, 3000)
        # A run that ended normally has stopped everything itself: no waiting here.
        assert_nothing_left(mark, private_tmp, wait=False)
    finally:
        run.kill()
        run.wait(timeout=10)
        remove_tree(private_tmp)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_leaves_no_process_and_no_temp_folder(tmp_path: Path, signum: int):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_slow.py").write_text(SLOW)
    output = tmp_path / "pytest.out"
    env, private_tmp, mark = private_run_env()
    run = start_pytest(["test_slow.py"], project, env, output)
    try:
        assert wait_for_path("reports/*/logs/slow/*.log", project, " ready.", 90), \
            f"the worker never got ready\n{log_tail(output, 3000)}"
        time.sleep(1.0)  # the calls are sent and one of them hangs in a pool process
        assert run_processes(mark, private_tmp), \
            "the run's processes should be alive before the signal"
        run.send_signal(signum)
        code = finish(run, output, timeout_s=60)
        assert_nothing_left(mark, private_tmp, context="\n" + log_tail(output, 3000))
        assert code != 0
    finally:
        run.kill()
        run.wait(timeout=10)
        remove_tree(private_tmp)
