"""The pytest plugin: one test per scenario variant x driver, results.json, a summary.

Responsibility: pytest wiring only. A scenario module declares ``SCENARIO`` and a
test that takes the ``variant_run`` fixture; this plugin parametrises that test
over the scenario's variants and drivers, runs each on real services and a real
prefork worker (:func:`harness.runner.run_variant`), records the result, and at
the end writes ``reports/<run-id>/results.json`` and prints the summary table.

Under pytest-xdist each worker process has its own services; results travel to
the controller in ``report.user_properties``, and only the controller writes.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from harness import _process, environment, interrupts, results, scratch, summary
from harness.errors import ConfigError
from harness.outcome import Outcome
from harness.runner import VariantRun, run_env, run_variant
from harness.scenario import Expected, Scenario
from harness.services import backends
from harness.stack import StackPool

RESULT_KEY = "harness_result"
SERVICES_KEY = "harness_services"
RUN_KEY = pytest.StashKey["VariantRun"]()
# How many tests that did not run an interrupted session names one by one.
NOT_RUN_LISTED = 40


class RunState:
    """What the controller gathers over the session."""

    def __init__(self, run_id: str, results_dir: Path, backend: backends.Backend) -> None:
        self.run_id = run_id
        self.backend = backend
        self.results_dir = results_dir
        self.results: dict[str, dict[str, Any]] = {}
        self.services: dict[str, str] = {}
        self.written: Path | None = None
        # Node ids in the order they were collected (by this process, or by the xdist
        # workers for the controller), and those that produced any report: after an
        # interrupt, the difference is what did not run.
        self.collected: dict[str, None] = {}
        self.reported: set[str] = set()


STATE = pytest.StashKey[RunState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "fault-reproduction harness")
    group.addoption("--backend", default=os.environ.get("HARNESS_BACKEND", "auto"),
                    help="where services run: 'local' (system binaries), 'docker' "
                         "(testcontainers, images from docker/) or 'auto' (default: docker "
                         "when an engine answers and the images exist, else local). "
                         "Env: HARNESS_BACKEND.")
    group.addoption("--scenario", action="append", default=[], metavar="ID",
                    help="run only these scenarios (repeat or comma-separate); an unknown "
                         "id is an error that lists the known ones")
    group.addoption("--variant", action="append", default=[], metavar="NAME",
                    help="run only these variants (repeat or comma-separate)")
    group.addoption("--results-dir", default=os.environ.get("HARNESS_RESULTS_DIR", "reports"),
                    help="folder for <run-id>/results.json, worker logs and 'latest' "
                         "(default: reports). Env: HARNESS_RESULTS_DIR.")
    group.addoption("--skip-cells", metavar="FILE",
                    help="do not run the cells (scenario, variant, driver) a JSON file lists: "
                         "'harness matrix' passes the cells an environment carries from "
                         "another that ran them")
    group.addoption("--list-cells", metavar="FILE",
                    help="write the selected cells and the axes each depends on to FILE "
                         "(JSON), as 'harness matrix' plans from them (with --collect-only)")


def pytest_configure(config: pytest.Config) -> None:
    try:
        backend = backends.choose(config.getoption("backend"))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from exc
    workerinput = getattr(config, "workerinput", None)
    run_id = workerinput["harness_run_id"] if workerinput else results.new_run_id()
    results_dir = Path(config.getoption("results_dir"))
    if not results_dir.is_absolute():
        results_dir = config.rootpath / results_dir
    if workerinput is None:
        # Folders of harness processes that were killed (a crashed xdist worker,
        # an earlier run that got SIGKILL) cannot remove themselves.
        scratch.sweep()
    config.stash[STATE] = state = RunState(run_id, results_dir, backend)
    config.pluginmanager.register(_Recorder(state, is_worker=workerinput is not None),
                                  "harness-recorder")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "harness-xdist")
    # SIGTERM and SIGHUP behave like Ctrl-C (pytest unwinds, every fixture stops its
    # services); a second signal kills everything at once. Outside the main thread
    # (embedded use) atexit and PR_SET_PDEATHSIG still stop what was started.
    interrupts.install()


@pytest.hookimpl(tryfirst=True)
def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    # Before pytest's terminal reporter formats the traceback, which it cannot do when
    # the signal landed on an instruction without a line number.
    interrupts.with_line_numbers(excinfo)


class _XdistHooks:
    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["harness_run_id"] = node.config.stash[STATE].run_id

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        node.config.stash[STATE].collected.update(dict.fromkeys(ids))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant_case" not in metafunc.fixturenames:
        return
    scenario = getattr(metafunc.module, "SCENARIO", None)
    if not isinstance(scenario, Scenario):
        raise ConfigError(f"{metafunc.module.__name__} uses variant_run but declares no "
                          f"SCENARIO = Scenario(...) at module level.")
    tag = environment.version_tag()
    cases = [(v, d) for v in scenario.variants for d in scenario.drivers]
    metafunc.parametrize("variant_case", cases, ids=[f"{v.name}-{d}-{tag}" for v, d in cases])


def _names(values: list[str]) -> set[str]:
    return {name.strip() for value in values for name in value.split(",") if name.strip()}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Apply --skip-cells, then --scenario / --variant, refusing names that match nothing."""
    if config.getoption("skip_cells", None):
        _skip_cells(config, items)
    wanted_scenarios = _names(config.getoption("scenario"))
    wanted_variants = _names(config.getoption("variant"))
    if not wanted_scenarios and not wanted_variants:
        return
    known_scenarios: set[str] = set()
    known_variants: set[str] = set()
    keep, drop = [], []
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("variant_case")
        scenario = getattr(item.module, "SCENARIO", None) if case else None
        if scenario is None:
            drop.append(item)
            continue
        variant, _driver = case
        known_scenarios.add(scenario.id)
        known_variants.add(variant.name)
        if ((not wanted_scenarios or scenario.id in wanted_scenarios)
                and (not wanted_variants or variant.name in wanted_variants)):
            keep.append(item)
        else:
            drop.append(item)
    for kind, wanted, known in (("scenario", wanted_scenarios, known_scenarios),
                                ("variant", wanted_variants, known_variants)):
        unknown = sorted(wanted - known)
        if unknown:
            raise pytest.UsageError(
                f"Unknown {kind} {', '.join(map(repr, unknown))}. Known {kind}s in the "
                f"collected files: {', '.join(sorted(known)) or '(none)'}. Check the spelling, "
                f"or collect the folder that holds it (pytest scenarios/).")
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def _cell_of(item: pytest.Item) -> tuple[Scenario, Any, str] | None:
    case = getattr(item, "callspec", None) and item.callspec.params.get("variant_case")
    scenario = getattr(item.module, "SCENARIO", None) if case else None
    return (scenario, *case) if isinstance(scenario, Scenario) else None


def _skip_cells(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the cells ``--skip-cells`` lists (a matrix environment's carried cells)."""
    from harness.matrix.carry import read_skip

    try:
        skip = read_skip(Path(config.getoption("skip_cells")))
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from exc
    keep, drop = [], []
    for item in items:
        cell = _cell_of(item)
        (drop if cell and (cell[0].id, cell[1].name, cell[2]) in skip else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    """``--list-cells FILE``: the selected cells and the axes each depends on."""
    path = session.config.getoption("list_cells", None)
    if not path or getattr(session.config, "workerinput", None):
        return
    from harness.matrix.carry import Cell, cell_axes

    cells: dict[tuple[str, str, str], Cell] = {}
    for item in session.items:
        found = _cell_of(item)
        if found:
            scenario, variant, driver = found
            try:
                axes = cell_axes(scenario, variant, driver,
                                 getattr(item.module, "CELL_AXES", None))
            except ConfigError as exc:
                raise pytest.UsageError(str(exc)) from exc
            cells[(scenario.id, variant.name, driver)] = Cell(scenario.id, variant.name,
                                                              driver, axes)
    Path(path).write_text(json.dumps({"cells": [c.to_dict() for c in cells.values()]},
                                     indent=0) + "\n")


@pytest.fixture(scope="session")
def harness_stacks(request: pytest.FixtureRequest) -> Any:
    """Services for this pytest process, started on first use, stopped at the end."""
    pool = StackPool(request.config.stash[STATE].backend)
    try:
        yield pool
    finally:
        pool.close()
        _process.stop_all()
        scratch.release()


@pytest.fixture
def variant_run(request: pytest.FixtureRequest, variant_case: Any,
                harness_stacks: StackPool) -> VariantRun:
    """Run this test's variant x driver and record what was observed."""
    variant, driver = variant_case
    scenario: Scenario = request.module.SCENARIO
    state = request.config.stash[STATE]
    reason = variant.not_for.get(driver)
    if reason is None and variant.requires is not None:
        reason = variant.requires(run_env(driver, state.backend.pgbouncer_version()))
    if reason is not None:
        # No expectation applies to a variant that cannot run here.
        run = VariantRun(scenario, variant, driver, Expected(Outcome.NOT_APPLICABLE),
                         Outcome.NOT_APPLICABLE, reason=reason)
        _record(request, run, harness_stacks)
        pytest.skip(f"n/a: {reason}")
    run = run_variant(scenario, variant, driver, stacks=harness_stacks,
                      logs_dir=state.results_dir / state.run_id / "logs",
                      project_root=request.config.rootpath)
    _record(request, run, harness_stacks)
    request.node.stash[RUN_KEY] = run
    return run


def _record(request: pytest.FixtureRequest, run: VariantRun, stacks: StackPool) -> None:
    request.node.user_properties.append((RESULT_KEY, run.to_result()))
    request.node.user_properties.append((SERVICES_KEY, run.services or stacks.versions()))


def assert_expected(run: VariantRun) -> None:
    """Fail the test unless the observed outcome is the expected one.

    The plugin applies the same check to every variant test after its body
    (:func:`pytest_runtest_makereport`), so a scenario that forgets this call still
    fails a cell that moved; calling it keeps the failure inside the test body.
    """
    if not run.passed:
        pytest.fail(run.failure_message(), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A variant test whose outcome differs from its expectation fails, whatever its body did.

    As pytest's own ``skipping`` plugin decides xfail outcomes here: the test body
    cannot turn a moved cell into a pass by forgetting :func:`assert_expected`.
    """
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    run = item.stash.get(RUN_KEY, None)
    if run is not None and report.when == "call" and report.passed and not run.passed:
        report.outcome = "failed"
        report.longrepr = run.failure_message()


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config
                             ) -> tuple[str, str, str] | None:
    """Short letters for variant tests: M a cell that moved, H the harness failed, n N/A.

    The verbose words stay PASSED/FAILED/SKIPPED (``harness matrix`` counts them).
    """
    result = dict(getattr(report, "user_properties", ())).get(RESULT_KEY)
    if result is None:
        return None
    if report.skipped and report.when == "setup":
        return "skipped", "n", "SKIPPED"
    if report.failed and report.when == "call":
        letter = "H" if result.get("outcome") == Outcome.HARNESS_ERROR.value else "M"
        return "failed", letter, "FAILED"
    return None


class _Recorder:
    """Gathers results from test reports (also those forwarded by xdist workers)."""

    def __init__(self, state: RunState, is_worker: bool) -> None:
        self.state = state
        self.is_worker = is_worker

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.state.collected.update(dict.fromkeys(item.nodeid for item in session.items))

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.state.reported.add(report.nodeid)
        if report.when != "setup":  # the fixture records during setup
            return
        for key, value in report.user_properties:
            if key == RESULT_KEY:
                self.state.results[report.nodeid] = value
            elif key == SERVICES_KEY:
                self.state.services.update(value)

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.is_worker:
            scratch.sweep()  # what a crashed xdist worker of this run left behind
        if self.is_worker or not self.state.results:
            return  # an xdist worker's results reach the controller, which writes
        services = dict(self.state.services, backend=self.state.backend.name)
        if self.state.backend.reason:
            services["backend_reason"] = self.state.backend.reason
        document = results.build_document(list(self.state.results.values()), services,
                                          self.state.run_id)
        self.state.written = results.write(document, self.state.results_dir)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int) -> None:
        if self.is_worker:
            return
        # pytest says INTERRUPTED for a collection error too: nothing was collected and no
        # signal came, so there is no "stopped by" to report (pytest shows the error).
        if exitstatus == pytest.ExitCode.INTERRUPTED \
                and (self.state.collected or interrupts.received() is not None):
            self._not_run(terminalreporter)
        if not self.state.results:
            return
        rows = list(self.state.results.values())
        terminalreporter.section("fault-reproduction harness")
        backend = self.state.backend
        terminalreporter.write_line(f"backend: {backend.name}"
                                    + (f" ({backend.reason})" if backend.reason else ""))
        terminalreporter.write_line(summary.render_table(rows))
        verdict_text = summary.render_verdicts(rows)
        if verdict_text:
            terminalreporter.write_line("")
            terminalreporter.write_line(verdict_text)
        if self.state.written:
            terminalreporter.write_line("")
            terminalreporter.write_line(f"results: {self.state.written}")

    def _not_run(self, terminalreporter: Any) -> None:
        """After an interrupt: which of the collected tests never ran."""
        not_run = [n for n in self.state.collected if n not in self.state.reported]
        signum = interrupts.received()
        how = signal.Signals(signum).name if signum else "an interrupt"
        terminalreporter.section("interrupted", red=True)
        terminalreporter.write_line(
            f"stopped by {how}: {len(not_run)} of {len(self.state.collected)} tests did not run"
            + (" (those under way were stopped before they finished):" if not_run else "."))
        for nodeid in not_run[:NOT_RUN_LISTED]:
            terminalreporter.write_line(f"  not run: {nodeid}")
        if len(not_run) > NOT_RUN_LISTED:
            terminalreporter.write_line(f"  ... and {len(not_run) - NOT_RUN_LISTED} more")
