"""``harness bisect AXIS OLD NEW``: the first release of one axis where selected cells change.

Responsibility: the command: check the input, list the releases of one axis between two
versions (every other axis at the matrix baseline, or as given), build and run each
release's environment as the search asks, record every step, and print the answer. The
search itself is :mod:`harness.matrix.bisect_search` (pure); what the answer says, with
the evidence of both sides, is :mod:`harness.matrix.bisect_report`. A version rule in a
scenario (``before_package("celery", "5.7", ...)``) is usually written from two matrix
runs; the releases between them were never run, and this says which one moved the cell.

The order of the steps, as in ``harness matrix``: everything that can be checked without
building is checked first (the axis, both versions on the package index, OLD before NEW,
the ``-k`` selection, an interpreter and a PgBouncer for every value), then the releases
between OLD and NEW are listed (final releases only unless ``--pre``; for ``python`` the
lines with an interpreter or an interpreter image here, for ``pgbouncer`` the lines with
a local binary or an image). Then OLD and NEW run; if their cells agree there is nothing
to find. Otherwise a binary search, one environment per step, built, smoke-checked and
run by the matrix's own machinery (:func:`containers.build_any`, :func:`smoke.check`,
:func:`run.run_env`; the same cache, so a release built once is reused in seconds).

What counts as a change, and how cells that split are searched, is told in
:mod:`harness.matrix.bisect_search`. An environment that cannot be built or fails its
smoke check is reported in one paragraph and skipped: its neighbours are searched, and it
is never read as a behaviour change.

Every step goes into ``<out>/<run id>/bisect.json`` as it happens (:func:`record`).

Exit codes: 0 done (a boundary found, or none in the range); 2 bad input (nothing was
built); 3 the budget ran out or an environment failed (the narrowed range is printed).
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from harness import interrupts
from harness import results as results_file
from harness.bootstrap import default_workers
from harness.errors import ConfigError, HarnessError
from harness.matrix import (
    axes,
    command,
    containers,
    environments,
    index,
    pgbouncer_axis,
    python_support,
    sources,
)
from harness.matrix import resolution as resolutions
from harness.matrix import smoke as smokes
from harness.matrix.bisect_report import rule_predictions, summary
from harness.matrix.bisect_search import (
    CellState,
    Key,
    SearchResult,
    cell_key,
    cell_name,
    classify,
    lines_between,
    python_lines_between,
    releases_between,
    search,
    states_of,
)
from harness.matrix.run import Progress, activated, run_env

BISECTABLE = ("python", *axes.PACKAGE_AXES, "pgbouncer")
DEFAULT_BUDGET_MIN = 60.0
EXIT_DONE, EXIT_UNFINISHED = 0, 3
RECORD = "bisect.json"
KIND = "bisect"


# --- the real steps ---------------------------------------------------------------------
@dataclass
class Step:
    """One environment of the search, as the JSON record keeps it."""

    release: str
    role: str
    env_id: str
    status: str = "pending"  # ran | build-failed | smoke-failed | run-failed
    seconds: dict[str, float] = field(default_factory=dict)
    results: str | None = None
    log: str | None = None
    report: str | None = None
    side: str | None = None
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "role": self.role, "env": self.env_id,
                "status": self.status, "side": self.side,
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                "results": self.results, "log": self.log, "report": self.report,
                "cells": self.cells}


@dataclass
class Plan:
    """Everything checked before building: the releases and how to run each one."""

    axis: str
    releases: list[str]
    skipped: dict[str, str]
    baseline: dict[str, str]
    pythons: dict[str, sources.PythonSource]
    pgbouncers: dict[str, pgbouncer_axis.PgBouncerSource]
    tests: int
    pytest_args: list[str]
    resolve: str
    cache_dir: Path | None
    workers: int
    env_timeout_s: float

    def combo(self, release: str) -> axes.Combination:
        return axes.Combination({**self.baseline, self.axis: release}, self.axis)


def _say(message: str, started: float) -> None:
    elapsed = int(time.monotonic() - started)
    print(f"[bisect {elapsed // 60}m{elapsed % 60:02d}s] {message}", file=sys.stderr, flush=True)


def _first_line(text: str) -> str:
    return next((line for line in str(text).splitlines() if line.strip()), "")[:400]


class Runner:
    """Builds, smoke-checks and runs one release's environment (the matrix's machinery)."""

    def __init__(self, plan: Plan, project_root: Path, out: Path, started: float,
                 deadline: float) -> None:
        self.plan, self.root, self.out = plan, project_root, out
        self.started, self.deadline = started, deadline
        self.steps: list[Step] = []
        self.entries: dict[int, dict[Key, dict[str, Any]]] = {}
        self.paths: dict[int, str] = {}
        self.on_step: Callable[[], None] = lambda: None

    def __call__(self, i: int) -> dict[Key, CellState] | None:
        plan, release = self.plan, self.plan.releases[i]
        combo = plan.combo(release)
        role = ("old end" if i == 0 else "new end" if i == len(plan.releases) - 1
                else "between")
        step = Step(release, role, combo.id)
        self.steps.append(step)
        try:
            return self._run(i, combo, step)
        finally:
            self.on_step()

    def _run(self, i: int, combo: axes.Combination, step: Step) -> dict[Key, CellState] | None:
        plan = self.plan
        python = plan.pythons[combo.versions["python"]]
        what = f"{plan.axis} {step.release}"
        logs = self.out / "logs"
        step.log = str(logs / f"{combo.id}.build.log")
        try:
            service = sources.env_services([combo], plan.pythons, plan.pgbouncers)[combo.id]
            resolution = command.resolutions_for([combo], plan.resolve,
                                                 plan.cache_dir)[combo.venv_id]
            _say(f"{what}: environment {combo.id} ({resolution.describe()})", self.started)
            env = containers.build_any(combo, python, self.root, root=plan.cache_dir,
                                       log_path=logs / f"{combo.id}.build.log",
                                       resolution=resolution)
        except HarnessError as exc:  # EnvBuildError, or the index did not answer
            step.status = "build-failed"
            step.report = (f"Environment {combo.id} ({what}) could not be built, so it is "
                           f"skipped and its neighbours are searched instead; it is not read "
                           f"as a change of behaviour. {_first_line(exc)} Log: {step.log}.")
            print(step.report, file=sys.stderr, flush=True)
            return None
        step.seconds["build"] = env.seconds
        _say(f"{what}: " + ("reused from cache" if env.reused else f"built in {env.seconds:.0f} s")
             + f" ({env.path})", self.started)
        smoke = smokes.check(env.python, self.root, logs / f"{combo.id}.smoke",
                             backend=service.backend, env=activated(env, service))
        step.seconds["smoke"] = smoke.seconds
        if not smoke.ok:
            step.status = "smoke-failed"
            pins = [f"{a} {combo.versions[a]}" for a in axes.PACKAGE_AXES]
            step.report = (smokes.paragraph(combo.id, smoke, env.installed,
                                            pins + [f"python {combo.versions['python']}"],
                                            resolution.describe(),
                                            latest=resolution.mode == resolutions.LATEST)
                           + f"\nSo {what} is skipped and its neighbours are searched "
                             f"instead; it is not read as a change of behaviour.")
            step.log = smoke.log
            print(step.report, file=sys.stderr, flush=True)
            return None
        progress = Progress(1, plan.tests, ids=[combo.id])
        timeout = max(60.0, min(plan.env_timeout_s, self.deadline - time.monotonic()))
        run = run_env(env, self.root, self.out / "runs", logs / f"{combo.id}.pytest.log",
                      workers=plan.workers, pytest_args=plan.pytest_args, progress=progress,
                      timeout_s=timeout, pgbouncer=service, facts={"smoke": smoke.to_dict()})
        step.seconds["run"] = run.seconds
        step.log = str(run.log)
        document = results_file.load(run.results) if run.results else None
        if document is None or not document.get("results"):
            step.status = "run-failed"
            why = run.error or "its results hold no cell: the -k selects nothing in it"
            step.report = (f"The scenarios of {combo.id} ({what}) did not run to a result, so "
                           f"it is skipped and its neighbours are searched instead: "
                           f"{_first_line(why)} Log: {run.log}.")
            print(step.report, file=sys.stderr, flush=True)
            return None
        step.status, step.results = "ran", str(run.results)
        self.entries[i] = {cell_key(e): e for e in document["results"]}
        self.paths[i] = str(run.results)
        states = states_of(document["results"])
        step.cells = {cell_name(k): {"outcome": s.outcome, "signatures": list(s.signatures),
                                     "tasks": self.entries[i][k].get("tasks"),
                                     "expected": self.entries[i][k].get("expected")}
                      for k, s in states.items()}
        _say(f"{what}: {len(states)} cell(s) in {run.seconds:.0f} s: "
             + "; ".join(f"{cell_name(k)} {s.describe()}" for k, s in states.items()),
             self.started)
        return states


# --- input ------------------------------------------------------------------------------
def _check_axis(axis: str, given: Mapping[str, str | None]) -> None:
    if axis not in BISECTABLE:
        known = "postgres is a service axis of majors (run harness matrix --postgres 15 17 " \
                "18 to compare them)" if axis == "postgres" else f"{axis!r} is not an axis"
        raise ConfigError(f"harness bisect cannot walk {axis!r}: {known}. It walks one of "
                          f"{', '.join(BISECTABLE)}, e.g. harness bisect celery 5.5.0 5.7.0 "
                          f"-k async_def_task.")
    if given.get(axis):
        raise ConfigError(f"--{axis} pins the axis being bisected; drop it (OLD and NEW give "
                          f"its versions) or bisect another axis.")


def check_selection(project_root: Path, pytest_args: Sequence[str]) -> int:
    """:func:`command.check_selection`, with a hint about how test ids spell names."""
    try:
        return command.check_selection(project_root, pytest_args)
    except ConfigError as exc:
        text = " ".join(pytest_args)
        if "No scenario test matches" in str(exc) and "_" in text:
            raise ConfigError(f"{exc} Test ids spell module names with underscores "
                              f"(test_async_def_task.py) and variant names with hyphens "
                              f"(async-def-ignore-result[...]): a variant name written with "
                              f"underscores matches nothing.") from exc
        raise


def _exact(axis: str, value: str, available: list[str]) -> str:
    """``5.5.x`` or ``latest`` as the release it names; anything else as written (checked
    by :func:`releases_between`)."""
    return index.resolve(axis, value, available) if value == "latest" or value.endswith(
        (".x", ".*")) else value


def _package_releases(axis: str, old: str, new: str, pre: bool,
                      lister: Callable[[str], list[str]], python: str,
                      cache_dir: Path | None) -> tuple[list[str], dict[str, str]]:
    """The releases of a package axis to search, and those left out (with why): no binary
    build of psycopg, or no build for the baseline's Python (requires-python, wheels)."""
    available = lister(axis)
    releases = releases_between(axis, available, _exact(axis, old, available),
                                _exact(axis, new, available), pre)
    skipped: dict[str, str] = {}
    companion = index.ALSO_NEEDS.get(axis)
    if companion:
        have = set(lister(companion))
        skipped.update({v: f"{companion} {v} (its binary build) is not on the index"
                        for v in releases if v not in have})
    env = environments.uv_environment()
    support = python_support.IndexPythonSupport(
        resolutions.index_url(env), (cache_dir or environments.cache_root()).parent
        / "python-support.json", cafile=env.get("SSL_CERT_FILE"))
    line = axes.python_minor(python)
    names = [axis, *([companion] if companion else [])]
    for v in releases:
        if v not in skipped and not all(support.supported(n, v, line) for n in names):
            skipped[v] = (f"the index has no build of it for Python {line} "
                          f"(requires-python or wheels)")
    for end in (releases[0], releases[-1]):
        if end in skipped:
            raise ConfigError(f"{axis} {end} is an end of the range but cannot be installed "
                              f"here: {skipped[end]}. Pick another end, or another Python with "
                              f"--python.")
    return [v for v in releases if v not in skipped], skipped


def _python_releases(old: str, new: str) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """The Python lines to search: those with an interpreter or an interpreter image here."""
    lines = python_lines_between(old, new)
    found: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for line in lines:
        try:
            found.update(sources.python_sources([line]))
        except ConfigError as exc:
            if line in (old, new):
                raise ConfigError(f"python {line} is an end of the range, but: {exc}") from exc
            skipped[line] = f"no interpreter and no interpreter image here ({_first_line(exc)})"
    return [v for v in lines if v not in skipped], skipped, found


def _pgbouncer_releases(old: str, new: str) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """The PgBouncer lines to search: the local binary's, the images' and the ones
    docker/build.sh makes; those that cannot run here are left out (ends: bad input)."""
    from harness import environment

    local = environment.pgbouncer_version()
    state = functools.lru_cache(maxsize=1)(pgbouncer_axis.docker_state)
    lines = set(pgbouncer_axis.BUILDABLE) | ({pgbouncer_axis.pgbouncer_line(local)} if local
                                             else set())
    lines |= {pgbouncer_axis.pgbouncer_line(tag.split(":", 1)[1])
              for tag in state().pgbouncer_images if ":" in tag}
    found: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    candidates = lines_between(lines, old, new, "pgbouncer")
    for line in candidates:
        try:
            found.update(pgbouncer_axis.pgbouncer_sources([line], docker=state))
        except ConfigError as exc:
            if line in (old, new):
                raise ConfigError(f"pgbouncer {line} is an end of the range, but: {exc}") from exc
            skipped[line] = _first_line(exc)
    return [v for v in candidates if v not in skipped], skipped, found


def _early_order(axis: str, old: str, new: str) -> None:
    """OLD before NEW, checked before the network when both are plain versions."""
    if axis == "python":
        python_lines_between(old, new)
    elif axis == "pgbouncer":
        lines_between((), old, new, axis)
    else:
        try:
            low, high = Version(old), Version(new)
        except InvalidVersion:
            return  # 5.5.x, latest: resolved on the index first
        if low >= high:
            releases_between(axis, (old, new), old, new)


def make_plan(project_root: Path, args: argparse.Namespace, pytest_extra: Sequence[str]) -> Plan:
    """Check every input and list the releases; build nothing.

    Raises:
        ConfigError: bad input, each in one paragraph that says what to do.
    """
    axis = args.axis
    given = {a: getattr(args, a, None) for a in axes.AXES}
    _check_axis(axis, given)
    if args.budget <= 0:
        raise ConfigError(f"--budget {args.budget:g} is not a time: give minutes > 0 (the "
                          f"default is {DEFAULT_BUDGET_MIN:g}).")
    _early_order(axis, args.old, args.new)
    resolutions.check_mode(args.resolve)
    # The selection next (seconds, no network): a -k that selects nothing costs nothing.
    pytest_args = (["-k", args.keyword] if args.keyword else []) + list(pytest_extra)
    tests = check_selection(project_root, pytest_args)
    # The other axes resolve exactly as harness matrix resolves its baseline (X.Y.x,
    # latest, local); the bisected axis's own baseline value is not used.
    spec = command.load_spec(project_root, args.matrix_file,
                             {a: ([v] if v else None) for a, v in given.items()}, full=False)
    lister = functools.lru_cache(maxsize=None)(index.index_versions)
    spec = index.resolve_spec(spec, lister)
    baseline = {a: spec.axes[a][0] for a in axes.present(spec.axes)}
    pythons: dict[str, Any] = {}
    pgbouncers: dict[str, Any] = {}
    if axis in axes.PACKAGE_AXES:
        releases, skipped = _package_releases(axis, args.old, args.new, args.pre, lister,
                                              baseline["python"], args.cache_dir)
    elif axis == "python":
        releases, skipped, pythons = _python_releases(args.old, args.new)
    else:
        releases, skipped, pgbouncers = _pgbouncer_releases(args.old, args.new)
    if axis != "python":
        pythons = sources.python_sources([baseline["python"]])
    if axis != "pgbouncer":
        pgbouncers = pgbouncer_axis.pgbouncer_sources([baseline["pgbouncer"]])
    # Every image an environment needs, checked now: missing at an end is bad input, a
    # release between is left out.
    for v in list(releases):
        try:
            sources.env_services([axes.Combination({**baseline, axis: v})], pythons, pgbouncers)
        except ConfigError as exc:
            if v in (releases[0], releases[-1]):
                raise
            skipped[v] = _first_line(exc)
            releases.remove(v)
    workers = max(1, min(args.workers or default_workers(), tests))
    return Plan(axis, releases, skipped, baseline, pythons, pgbouncers, tests, pytest_args,
                args.resolve, args.cache_dir, workers, args.env_timeout)


# --- the record -------------------------------------------------------------------------
def record(path: Path, plan: Plan, args: argparse.Namespace, steps: Sequence[Step],
           result: SearchResult | None, code: int | None, started_at: str,
           seconds: float) -> None:
    """Write the JSON record of every step so far (atomically: a reader never sees half)."""
    document: dict[str, Any] = {
        "kind": KIND, "schema": 1, "started": started_at, "seconds": round(seconds, 1),
        "axis": plan.axis, "old": plan.releases[0], "new": plan.releases[-1],
        "asked": [args.old, args.new], "pre": bool(args.pre),
        "keyword": args.keyword, "pytest_args": plan.pytest_args, "budget_min": args.budget,
        "others": {a: v for a, v in plan.baseline.items() if a != plan.axis},
        "resolve": plan.resolve, "releases": plan.releases, "skipped": plan.skipped,
        "steps": [s.to_dict() for s in steps], "exit_code": code}
    if result is not None:
        r = result.releases
        document["result"] = {
            "status": result.status,
            "old_end": r[result.old_index] if result.old_index is not None else None,
            "new_end": r[result.new_index] if result.new_index is not None else None,
            "moving_cells": [cell_name(k) for k in result.moving],
            "boundaries": [{"cells": [cell_name(k) for k in b.cells],
                            "last_old": r[b.last_old], "first_new": r[b.first_new],
                            "exact": b.exact, "untried": [r[i] for i in b.untried],
                            "failed": [r[i] for i in b.failed]} for b in result.boundaries],
            "failed": [r[i] for i in result.failed]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    tmp.replace(path)


# --- the command ------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    """``harness bisect AXIS OLD NEW [-k EXPR] [--pre] [--budget MINUTES] [axes] ...``."""
    p = sub.add_parser(
        "bisect", help="find the first release of one axis (between OLD and NEW) where the "
                       "selected scenario cells change",
        description="Walk the releases of AXIS from OLD to NEW (every other axis at the "
                    "matrix baseline, or as given), run the cells -k selects at each end, "
                    "then binary-search the releases between for the first one where a cell's "
                    "outcome word or signature set changes. Environments are the matrix's, "
                    "cached alike.",
        epilog="Arguments after -- go to pytest. Exit codes: 0 done (a boundary found, or "
               "none in the range); 2 bad input (nothing was built); 3 the budget ran out or "
               "an environment failed (the narrowed range is printed). Each step is written "
               "to OUT/<run id>/bisect.json.")
    p.add_argument("axis", metavar="AXIS", help=f"one of {', '.join(BISECTABLE)}")
    p.add_argument("old", metavar="OLD", help="the older release (python: 3.Y; pgbouncer: X.Y)")
    p.add_argument("new", metavar="NEW", help="the newer release")
    p.add_argument("-k", dest="keyword", metavar="EXPR",
                   help="the scenario tests to run (pytest -k), e.g. 'async_def_task and "
                        "async-def-ignore-result'")
    p.add_argument("--pre", action="store_true",
                   help="search pre-releases too (default: final releases only)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_MIN, metavar="MINUTES",
                   help=f"stop starting environments after this long and print the range "
                        f"narrowed so far (exit 3); default {DEFAULT_BUDGET_MIN:g}")
    p.add_argument("--out", type=Path, default=Path("reports/bisect"),
                   help="output folder (default: reports/bisect)")
    p.add_argument("--cache-dir", type=Path, help="environment cache (default: the matrix's, "
                   "$HARNESS_CACHE_DIR/envs or ~/.cache/celery-async-sa-harness/envs)")
    group = p.add_argument_group("the other axes (default: the baseline of matrix.toml)")
    for axis in axes.AXES:
        group.add_argument(f"--{axis}", metavar="VERSION",
                           help="one version: exact, X.Y.x or latest" if axis in
                           axes.PACKAGE_AXES else "one value, as for harness matrix")
    p.add_argument("--matrix-file", type=Path, metavar="FILE",
                   help="the axes file whose baseline pins the other axes (default: matrix.toml)")
    p.add_argument("--resolve", choices=resolutions.MODES, default=resolutions.DATED,
                   help="how each environment resolves what it does not pin (as harness matrix)")
    p.add_argument("-n", "--workers", type=int, default=None,
                   help="pytest-xdist processes (default: as harness matrix, at most one per "
                        "selected test)")
    p.add_argument("--env-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="bound on one environment's scenario run (default: 3600)")


def bisect_command(root: Path, args: argparse.Namespace, pytest_extra: list[str]) -> int:
    """``harness bisect``: check, then search, then print and record the answer."""
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    plan = make_plan(root, args, pytest_extra)
    out = (args.out / results_file.new_run_id()).resolve()
    path = out / RECORD
    deadline = started + args.budget * 60
    r = plan.releases
    print(f"harness bisect {plan.axis} {r[0]} .. {r[-1]}: {len(r)} release(s) to search"
          f" ({'with' if args.pre else 'final releases only, no'} pre-releases): {' '.join(r)}")
    for v, why in plan.skipped.items():
        print(f"  left out: {plan.axis} {v}: {why}")
    print("  other axes: " + ", ".join(f"{a} {v}" for a, v in plan.baseline.items()
                                        if a != plan.axis))
    print(f"  {plan.tests} scenario test(s) per environment ({' '.join(plan.pytest_args) or 'all'}"
          f"), -n {plan.workers}; budget {args.budget:g} min; record {path}", flush=True)
    runner = Runner(plan, root, out, started, deadline)
    runner.on_step = lambda: record(path, plan, args, runner.steps, None, None, started_at,
                                    time.monotonic() - started)
    interrupts.install()
    try:
        result = _search_with_containers(plan, runner, deadline)
    except KeyboardInterrupt:
        signum = interrupts.received() or signal.SIGINT
        record(path, plan, args, runner.steps, None, 128 + signum, started_at,
               time.monotonic() - started)
        _say(f"interrupted by {signal.Signals(signum).name}; the steps so far are in {path}",
             started)
        return 128 + signum
    old, new = ((result.seen.get(result.old_index) or {}) if result.old_index is not None
                else {}, (result.seen.get(result.new_index) or {})
                if result.new_index is not None else {})
    for step, i in zip(runner.steps, result.order):
        step.role = ("old end" if result.old_index is None or i <= result.old_index else
                     "new end" if result.new_index is None or i >= result.new_index
                     else "between")
        step.side = classify(result.seen.get(i), old, new, result.moving) \
            if result.moving else None
    code = EXIT_DONE if result.status in ("found", "split", "no-change") else EXIT_UNFINISHED
    if result.failed:
        code = EXIT_UNFINISHED
    elapsed = time.monotonic() - started
    record(path, plan, args, runner.steps, result, code, started_at, elapsed)
    print("\nsteps:")
    for n, step in enumerate(runner.steps, start=1):
        spent = " + ".join(f"{k} {v:.0f}s" for k, v in step.seconds.items())
        print(f"  {n}. {plan.axis} {step.release:<10} {step.role:<8} {step.status:<12} "
              f"{step.side or '':<6} {spent}")
    print()
    cells = sorted({k for e in runner.entries.values() for k in e})
    predicted = rule_predictions(root, plan.axis, r, lambda v: plan.combo(v).versions,
                                 _pgbouncer_found(plan), cells)
    for line in summary(plan.axis, result, runner.entries, runner.paths, plan.skipped,
                        predicted):
        print(line)
    if result.failed:
        print(f"{len(result.failed)} release(s) gave no answer (an environment that failed, "
              f"or a HARNESS_ERROR cell; see above): "
              + ", ".join(f"{plan.axis} {r[i]}" for i in result.failed))
    print(f"{len(runner.steps)} environment(s) in {int(elapsed) // 60}m{int(elapsed) % 60:02d}s; "
          f"record: {path}")
    return code


def _pgbouncer_found(plan: Plan) -> str | None:
    """The PgBouncer version the baseline's environments run (for the rules), if known."""
    source = plan.pgbouncers.get(plan.baseline.get("pgbouncer", ""))
    return source.found if source else None


@containers.removing_containers
def _search_with_containers(plan: Plan, runner: Runner, deadline: float) -> SearchResult:
    """The search, with every container a step starts removed when it ends."""
    return search(plan.releases, runner, out_of_budget=lambda: time.monotonic() >= deadline,
                  report=lambda line: _say(f"{plan.axis} {line}", runner.started))
