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

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from harness import _process, environment, results, scratch, summary
from harness.errors import ConfigError
from harness.outcome import Outcome
from harness.runner import VariantRun, run_env, run_variant
from harness.scenario import Expected, Scenario
from harness.services import backends
from harness.stack import StackPool

RESULT_KEY = "harness_result"
SERVICES_KEY = "harness_services"


class RunState:
    """What the controller gathers over the session."""

    def __init__(self, run_id: str, results_dir: Path, backend: backends.Backend) -> None:
        self.run_id = run_id
        self.backend = backend
        self.results_dir = results_dir
        self.results: dict[str, dict[str, Any]] = {}
        self.services: dict[str, str] = {}
        self.written: Path | None = None


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
    _install_signal_handlers()


class _XdistHooks:
    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["harness_run_id"] = node.config.stash[STATE].run_id


def _install_signal_handlers() -> None:
    """SIGTERM behaves like Ctrl-C: pytest unwinds and every fixture stops its services."""
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (embedded use): atexit still stops processes
        pass


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
    """Apply --scenario / --variant, refusing names that match nothing."""
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
    return run


def _record(request: pytest.FixtureRequest, run: VariantRun, stacks: StackPool) -> None:
    request.node.user_properties.append((RESULT_KEY, run.to_result()))
    request.node.user_properties.append((SERVICES_KEY, run.services or stacks.versions()))


def assert_expected(run: VariantRun) -> None:
    """Fail the test unless the observed outcome is the expected one."""
    if not run.passed:
        pytest.fail(run.failure_message(), pytrace=False)


class _Recorder:
    """Gathers results from test reports (also those forwarded by xdist workers)."""

    def __init__(self, state: RunState, is_worker: bool) -> None:
        self.state = state
        self.is_worker = is_worker

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
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
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or not self.state.results:
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
