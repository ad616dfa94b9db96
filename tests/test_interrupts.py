"""The README's two commands and ``harness matrix`` stop their run when they are stopped.

Each test starts one command as a user or a CI runner would, waits until a run of
several tests is under way, sends one signal to the top process only (what
``kill``, ``timeout``, a cancelled CI job or a closed terminal does), and checks,
within a bound, that the command exited non-zero, said which tests did not run,
ran none of them, and left no process and no temp folder behind. (Each run gets a
``--basetemp`` of its own: pytest keeps its usual temp folders by design.)
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import environment
from harness.services.base import remove_tree
from tests._runs import (
    ROOT,
    assert_nothing_left,
    finish,
    log_tail,
    private_run_env,
    run_processes,
)

STOP_BOUND_S = 45  # from the signal to the command's exit, services stopped
KILL_BOUND_S = 5  # from a second signal to the exit
START_BOUND_S = 240  # until the run is under way (a first matrix build included)
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@dataclass
class Command:
    """One of the commands under test, and how to see that its run is under way."""

    argv: Callable[[Path], list[str]]
    under_way: Callable[[Path, Path], bool]  # (work folder, output file) -> started?
    least: int  # tests the selection holds at least


def _scenarios(work: Path) -> list[str]:
    return [sys.executable, "-m", "harness.bootstrap", "scenarios", "-p", "no:cacheprovider",
            "--scenario", "loop-bound-pool", "-n", "2", "--backend", "local",
            "--results-dir", str(work / "reports"), "--basetemp", str(work / "basetemp")]


def _tests(work: Path) -> list[str]:
    return [sys.executable, "-m", "harness.bootstrap", "tests", "-p", "no:cacheprovider",
            "-k", "test_worker", "--basetemp", str(work / "basetemp")]


def _matrix(work: Path) -> list[str]:
    installed = environment.package_versions()
    py = ".".join(map(str, environment.python_tuple()))
    return [sys.executable, "-m", "harness.cli", "matrix", "--python", py,
            *(a for name in ("sqlalchemy", "celery", "asyncpg", "psycopg")
              for a in (f"--{name}", installed[name])),
            "--pgbouncer", "local", "--out", str(work / "matrix"),
            "--", "--scenario", "loop-bound-pool", "--basetemp", str(work / "basetemp")]


def _a_scenario_test_finished(work: Path, output: Path) -> bool:
    # pytest-xdist prints a status letter per finished test after "[N items]".
    text = output.read_text(errors="replace") if output.exists() else ""
    after = text.split(" items]", 1)[1].strip() if " items]" in text else ""
    return after[:1] in (".", "M", "H", "n", "F", "s")


def _a_harness_test_passed(work: Path, output: Path) -> bool:
    text = output.read_text(errors="replace") if output.exists() else ""
    return "tests/test_worker.py ." in text


def _a_matrix_cell_passed(work: Path, output: Path) -> bool:
    return any("PASSED" in p.read_text(errors="replace")
               for p in (work / "matrix" / "logs").glob("*.pytest.log"))


COMMANDS = {
    "scenario-command": Command(_scenarios, _a_scenario_test_finished, 10),
    "test-command": Command(_tests, _a_harness_test_passed, 8),
    "harness-matrix": Command(_matrix, _a_matrix_cell_passed, 10),
}


def _start(argv: list[str], env: dict[str, str], output: Path) -> subprocess.Popen:
    with open(output, "wb") as sink:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                # A shell without job control starts background jobs with
                                # SIGINT ignored; a user's terminal does not.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509


def _wait_until(check: Callable[[], bool], bound_s: float, what: str, output: Path,
                run: subprocess.Popen) -> None:
    deadline = time.monotonic() + bound_s
    while not check():
        if run.poll() is not None:
            pytest.fail(f"the command exited ({run.returncode}) before {what}:\n"
                        f"{log_tail(output)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {bound_s} s:\n{log_tail(output)}",
                        pytrace=False)
        time.sleep(0.2)


@contextmanager
def _under_way(command: Command, work: Path) -> Iterator[tuple[subprocess.Popen, Path, Path, str]]:
    """Start ``command`` and wait until its run of several tests is under way.

    Yields the process, its output file, the run's private TMPDIR and its marker; the
    process is killed and the TMPDIR removed however the test ends.
    """
    output = work / "output.txt"
    env, private_tmp, mark = private_run_env()
    run = _start(command.argv(work), env, output)
    try:
        _wait_until(lambda: command.under_way(work, output), START_BOUND_S,
                    "the run got under way", output, run)
        yield run, output, private_tmp, mark
    finally:
        run.kill()
        run.wait(timeout=10)
        remove_tree(private_tmp)


def _not_run_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith("not run: ")]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_signal_to_the_top_process_stops_the_run(tmp_path: Path, name: str, signum: int):
    command = COMMANDS[name]
    with _under_way(command, tmp_path) as (run, output, private_tmp, mark):
        assert run_processes(mark, private_tmp), "the run should be alive before the signal"
        run.send_signal(signum)
        sent = time.monotonic()
        code = finish(run, output, timeout_s=STOP_BOUND_S)
        took = time.monotonic() - sent
        text = output.read_text(errors="replace")
        assert code != 0, f"an interrupted run must not exit 0\n{text[-3000:]}"
        not_run = _not_run_lines(text)
        assert not_run, f"the run did not say which tests did not run\n{text[-3000:]}"
        counted = re.search(r"(\d+) of (\d+) tests did not run", text)
        assert counted, text[-3000:]
        unrun, collected = int(counted.group(1)), int(counted.group(2))
        assert collected >= command.least, f"the selection should hold several tests: {collected}"
        assert len(not_run) == unrun, "every unrun test is named"
        assert unrun < collected, "a test had finished before the signal"
        assert took < STOP_BOUND_S
        # Tests named as not run really did not: no result of theirs was recorded.
        ran = _recorded(tmp_path)
        for line in not_run:
            param = line.split("[", 1)[-1]
            assert not any(param.startswith(prefix) for prefix in ran), (line, ran)
        assert_nothing_left(mark, private_tmp, context=f"\n{text[-3000:]}")


def _recorded(work: Path) -> set[str]:
    """``<variant>-<driver>-``, the start of the test id of every result this run wrote."""
    return {f"{row['variant']}-{row['driver']}-"
            for path in work.rglob("results.json")
            for row in json.loads(path.read_text()).get("results", [])}


def test_a_second_ctrl_c_kills_at_once(tmp_path: Path):
    with _under_way(COMMANDS["scenario-command"], tmp_path) as (run, output, private_tmp, mark):
        run.send_signal(signal.SIGINT)
        time.sleep(0.3)  # the first one is being handled: services are stopping
        run.send_signal(signal.SIGINT)
        sent = time.monotonic()
        code = finish(run, output, timeout_s=KILL_BOUND_S + 5)
        took = time.monotonic() - sent
        assert code == 128 + signal.SIGINT, log_tail(output)
        assert took < KILL_BOUND_S, f"the second Ctrl-C took {took:.1f} s to end the run"
        assert_nothing_left(mark, private_tmp, context="\n" + log_tail(output))
