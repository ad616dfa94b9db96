"""Run ``pytest scenarios/`` in one built environment, and report progress while it runs.

Responsibility: one environment's scenario run, bounded in time, its console
output kept in a log, its ``results.json`` located, plus :class:`Progress`, the
one place that prints what the matrix is doing and how long is left.

A test that fails inside an environment is a cell that moved: that is data for
the matrix, not an error. Only a run that wrote no results.json is an error.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TextIO

from harness import _process
from harness.matrix.environments import BuiltEnv
from harness.matrix.pgbouncer_axis import PgBouncerSource, pgbouncer_line

RUN_TIMEOUT_S = 3600
# How long an environment's pytest may take to stop its services after SIGTERM.
STOP_GRACE_S = 20
SIDECAR = "matrix-env.json"
# One finished test in pytest -v output: xdist prints "[gw0] [ 40%] PASSED nodeid",
# plain pytest "nodeid PASSED [ 40%]".
_DONE = re.compile(r"(::\S*\s+|\]\s)(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
_FAILED = re.compile(r"(::\S*\s+|\]\s)(FAILED|ERROR)\b")


@dataclass
class EnvRun:
    """What one environment's scenario run left behind."""

    built: BuiltEnv
    log: Path
    exit_code: int | None
    seconds: float
    tests_done: int
    moved: int
    results: Path | None = None
    error: str | None = None


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Prints one line per step and a heartbeat while scenarios run, with time left.

    The estimate assumes every environment takes about as long per test as the
    ones measured so far, and every unbuilt environment as long to build as the
    ones built so far (a cached one counts as built in no time).
    """

    # The one a running ``harness matrix`` reports through, for its interrupt handler.
    current: ClassVar[Progress | None] = None

    def __init__(self, envs: int, tests_per_env: int, stream: TextIO = sys.stderr,
                 every_s: float = 15.0, ids: Sequence[str] = ()) -> None:
        self.envs = envs
        self.ids = list(ids)  # the plan, for what an interrupt left unrun
        self.ran_ids: list[str] = []
        self.tests_per_env = max(tests_per_env, 1)
        self.stream = stream
        self.every_s = every_s
        self.started = time.monotonic()
        self.built = 0
        self.build_s: list[float] = []
        self.ran = 0
        self.test_s = 0.0
        self.tests_done = 0
        self._last = 0.0
        # Environment id -> the scenario tests it runs, when that differs between
        # environments (carried cells are not run); empty: tests_per_env each.
        self.runs: dict[str, int] = {}

    def say(self, message: str) -> None:
        print(f"[matrix {_fmt(time.monotonic() - self.started)}] {message}",
              file=self.stream, flush=True)

    def env_built(self, built: BuiltEnv) -> None:
        self.built += 1
        if not built.reused:
            self.build_s.append(built.seconds)
        how = "reused from cache" if built.reused else f"built in {_fmt(built.seconds)}"
        self.say(f"environment {self.built}/{self.envs} {built.combo.id}: {how}")

    def env_skipped(self, combo_id: str) -> None:
        """An environment built but not run (its smoke check failed): it leaves the plan."""
        self.envs -= 1
        self.built -= 1
        self.say(f"environment {combo_id} is left out: its smoke check failed")

    def left_s(self, done_now: int = 0, elapsed_now: float = 0.0) -> float | None:
        """Seconds left, or None before the first test has finished."""
        done = self.tests_done + done_now
        if done == 0:
            return None
        per_test = (self.test_s + elapsed_now) / done
        build_each = sum(self.build_s) / len(self.build_s) if self.build_s else 0.0
        planned = sum(self.runs.values()) if self.runs else self.envs * self.tests_per_env
        tests_left = max(planned - done, 0)
        return (self.envs - self.built) * build_each + tests_left * per_test

    def _left(self, done_now: int = 0, elapsed_now: float = 0.0) -> str:
        left = self.left_s(done_now, elapsed_now)
        return f"; about {_fmt(left)} left" if left is not None else ""

    def heartbeat(self, combo_id: str, done: int, moved: int, elapsed: float) -> None:
        """A line every ``every_s`` seconds while one environment's scenarios run."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        self.say(f"running {self.ran + 1}/{self.envs} {combo_id}: {done}/"
                 f"{self.runs.get(combo_id, self.tests_per_env)} scenario tests done, "
                 f"{moved} moved"
                 f"{self._left(done, elapsed)}")

    def env_ran(self, run: EnvRun) -> None:
        self.ran += 1
        self.ran_ids.append(run.built.combo.id)
        self.tests_done += run.tests_done
        # The checkout may hold more scenarios than were collected at the start.
        self.tests_per_env = max(self.tests_per_env, run.tests_done)
        self.test_s += run.seconds
        state = run.error or (f"{run.tests_done} tests, {run.moved} cells moved from their "
                              f"expectation")
        self.say(f"ran {self.ran}/{self.envs} {run.built.combo.id} in {_fmt(run.seconds)}: "
                 f"{state}{self._left()}")


def interrupted_section(log: Path) -> str:
    """The plugin's "interrupted" section of a pytest log (which tests did not run)."""
    lines = _process.tail(log, 400).splitlines()
    start = next((i for i, line in enumerate(lines) if " interrupted " in line), None)
    if start is None:
        return f"(no list of unrun tests in {log}; last lines:)\n" + "\n".join(lines[-10:])
    kept = []
    for line in lines[start + 1:]:
        if line.startswith("="):
            break
        kept.append(line)
    return "\n".join(kept)


def _count(log: Path) -> tuple[int, int]:
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return 0, 0
    return len(_DONE.findall(text)), len(_FAILED.findall(text))


def activated(built: BuiltEnv, pgbouncer: PgBouncerSource | None = None) -> dict[str, str]:
    """This process's variables as if ``built`` were activated: nothing a run starts by
    name can come from the virtualenv the harness itself runs in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env["VIRTUAL_ENV"] = str(built.path)
    env["PATH"] = os.pathsep.join([str(built.path / "bin"), env.get("PATH", "")])
    env.update(pgbouncer.environ() if pgbouncer else {})
    return env


def run_env(built: BuiltEnv, project_root: Path, runs_dir: Path, log: Path, *,
            workers: int, pytest_args: Sequence[str], progress: Progress,
            timeout_s: float = RUN_TIMEOUT_S, pgbouncer: PgBouncerSource | None = None,
            facts: Mapping[str, Any] | None = None, target: Sequence[str] = ("scenarios/",),
            extra_env: Mapping[str, str] | None = None) -> EnvRun:
    """Run the scenarios in ``built``; results go to ``runs_dir/<env id>/<run id>/``.

    ``pgbouncer`` says where this environment's PgBouncer comes from: its backend goes
    on pytest's command line (before the user's arguments, which win) and its image
    into ``HARNESS_IMAGE_PGBOUNCER`` of the pytest process only. ``facts`` go into the
    sidecar beside the environment's own (resolution, installed packages). ``target`` is
    what pytest collects (the audit's suite instead of the scenarios), ``extra_env`` more
    variables for it.
    """
    results_dir = runs_dir / built.combo.id
    results_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    argv = [str(built.python), "-m", "pytest", *target, "-v", "-p", "no:cacheprovider",
            "--results-dir", str(results_dir), *(["-n", str(workers)] if workers > 1 else []),
            *(pgbouncer.pytest_args() if pgbouncer else []), *pytest_args]
    before = _latest(results_dir)
    started = time.monotonic()
    proc = _process.ManagedProcess(argv, log, env={**activated(built, pgbouncer),
                                                   **(extra_env or {})}, cwd=project_root)
    timed_out = False
    try:
        while proc.alive():
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                timed_out = True
                break
            done, failed = _count(log)
            progress.heartbeat(built.combo.id, done, failed, elapsed)
            time.sleep(1.0)
    finally:
        # Also when the matrix itself is interrupted: the pytest child runs in its own
        # session, so only this SIGTERM reaches it; its plugin then stops its services
        # and writes which tests did not run into the log.
        code = None if timed_out else proc.popen.poll()
        proc.stop(grace_s=STOP_GRACE_S)
        if sys.exc_info()[0] is KeyboardInterrupt:
            progress.say(f"stopped {built.combo.id}; what its scenario run reported:\n"
                         + interrupted_section(log))
    done, failed = _count(log)
    run = EnvRun(built, log, code, time.monotonic() - started, done, failed)
    after = _latest(results_dir)
    if timed_out:
        run.error = (f"the scenario run did not finish within {timeout_s:.0f} s and was "
                     f"stopped; last lines of {log}:\n{_process.tail(log, 20)}")
    elif after is None or after == before:
        run.error = (f"pytest exited {code} without writing results.json; last lines of "
                     f"{log}:\n{_process.tail(log, 20)}")
    if after is not None and after != before:
        document = json.loads(after.read_text())
        # The final counts come from results.json, not from the console log.
        rows = document.get("results", [])
        run.tests_done = len(rows)
        run.moved = sum(1 for r in rows if r.get("passed") is False)
        wrong = wrong_pgbouncer(built.combo.versions.get("pgbouncer"),
                                document.get("environment", {}).get("services", {}))
        if wrong:  # its cells would be shown under a PgBouncer they did not run on
            run.error = f"{wrong}; its results ({after}) are left out of the matrix"
            return run
        run.results = after
        (after.parent / SIDECAR).write_text(json.dumps(
            {"id": built.combo.id, "slot": built.combo.slot,
             "axes": dict(built.combo.versions), "env_path": str(built.path),
             "backend": pgbouncer.backend if pgbouncer else None,
             "pgbouncer_image": pgbouncer.image if pgbouncer else None,
             "pytest_exit": code, "pytest_args": list(pytest_args), **built.facts(),
             **(facts or {})},
            indent=1) + "\n")
    return run


def wrong_pgbouncer(wanted: str | None, services: dict[str, str]) -> str | None:
    """Why the PgBouncer a run used is not the one its environment stands for, or None.

    Only a run that started a PgBouncer recorded one; a version the image did not
    say (``unknown``) cannot be checked.
    """
    used = services.get("pgbouncer")
    if not wanted or not used or not used[:1].isdigit() or pgbouncer_line(used) == wanted:
        return None
    return (f"the environment stands for PgBouncer {wanted}, but its scenarios ran on "
            f"PgBouncer {used} (backend {services.get('backend', '?')}): a --backend after "
            f"-- overrode the matrix's choice, or HARNESS_IMAGE_PGBOUNCER names another image")


def _latest(results_dir: Path) -> Path | None:
    """The results.json that ``latest`` points at, resolved (None before the first run)."""
    path = results_dir / "latest" / "results.json"
    return path.resolve() if path.exists() else None
