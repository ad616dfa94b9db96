"""Faults that strike a whole run: a service dies, an xdist worker dies, two runs share a machine.

Each test runs ``pytest`` in a subprocess on a real scenario, injects the fault for
real (SIGKILL to a real process, two real runs at once) and checks the promise from
outside: what ``results.json`` says, that pytest ends within a bound, and that no
process or temp folder of the run is left behind. A run's processes are found by
the marker in their environment, their working folder under the run's private
TMPDIR, or their parent (see :func:`tests._runs.run_processes`), so nothing outside
the run is ever touched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from harness import scratch
from harness.services.base import remove_tree
from tests._runs import (
    ROOT,
    Proc,
    assert_nothing_left,
    finish,
    log_tail,
    private_run_env,
    run_processes,
    start_pytest,
    wait_for_path,
)

# What tests/apps/faults.py logs just before its call sleeps in a query (that app
# cannot be imported here: it reads the worker configuration at import).
SLEEP_MARK = "faults: sleeping in a query"

# Two variants of one workload: the first sits in a 30 s query (the fault strikes
# then), the second answers at once. The second one runs after the fault, so it
# shows whether the run went on with working services.
FAULT_SCENARIO = textwrap.dedent('''
    from harness.plugin import assert_expected
    from harness.scenario import Claim, Role, Scenario, StackSpec, Variant, Workload, clean

    SCENARIO = Scenario(
        id="fault", app="tests.apps.faults",
        workload=Workload(task="sleep_in_query", calls=1, concurrency=1, timeout_s=60),
        stack=StackSpec(pgbouncer={pgbouncer}),
        signatures=(), claim=Claim("-", "-", None, "struck", "after"),
        variants=(
            Variant("struck", Role.CONTROL, {{"sleep_s": {sleep_s}}}, expect=clean()),
            Variant("after", Role.CONTROL, {{"sleep_s": 0}}, expect=clean()),
        ),
        # psycopg prepares nothing for a one-query connection, so PgBouncer's
        # transaction mode cannot add a failure of its own.
        drivers=("psycopg",))


    def test_variant(variant_run):
        assert_expected(variant_run)
''')


def results_of(results_dir: Path, output: Path) -> dict[str, dict[str, Any]]:
    """The run's results.json entries by variant x driver."""
    path = results_dir / "latest" / "results.json"
    assert path.exists(), f"the run wrote no {path}\n{log_tail(output)}"
    document = json.loads(path.read_text())
    return {f"{r['variant']}-{r['driver']}": r for r in document["results"]}


def service_process(mark: str, private_tmp: Path, service: str) -> Proc:
    """The one process of ``service`` the run started: for PostgreSQL the postmaster,
    whose argv is ``.../postgres -D ...`` (backends retitle themselves ``postgres: ...``;
    redis-server retitles itself ``.../redis-server 127.0.0.1:<port>`` in one string)."""
    binary = {"postgres": "postgres", "pgbouncer": "pgbouncer", "redis": "redis-server"}[service]
    procs = run_processes(mark, private_tmp)
    matches = [p for p in procs if p.argv and Path(p.argv[0].split()[0]).name == binary
               and (service != "postgres" or "-D" in p.argv)]
    assert len(matches) == 1, f"expected one {binary} of this run, found {[p.cmdline for p in procs]}"
    return matches[0]


@pytest.mark.parametrize("service", ["postgres", "pgbouncer", "redis"])
def test_a_service_that_dies_mid_run_spoils_one_variant_not_the_run(tmp_path: Path,
                                                                    service: str):
    """A service killed while a variant uses it makes that variant HARNESS_ERROR with a
    reason naming the service; the run goes on (the next variant gets working services
    and its expected outcome), pytest exits within a bound, and nothing is left behind."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_fault.py").write_text(
        FAULT_SCENARIO.format(pgbouncer=service == "pgbouncer", sleep_s=30))
    results_dir = tmp_path / "results"
    output = tmp_path / "pytest.out"
    env, private_tmp, mark = private_run_env()
    run = start_pytest(["--results-dir", str(results_dir), "test_fault.py"], project, env, output)
    try:
        assert wait_for_path("*/logs/fault/struck-psycopg.log", results_dir, SLEEP_MARK, 90), \
            f"the first variant's call never reached its query\n{log_tail(output)}"
        time.sleep(0.5)  # the call's pg_sleep is now on the server, not about to be sent
        os.kill(service_process(mark, private_tmp, service).pid, signal.SIGKILL)

        code = finish(run, output)
        results = results_of(results_dir, output)
        struck, after = results["struck-psycopg"], results["after-psycopg"]
        assert struck["outcome"] == "HARNESS_ERROR", struck
        # The reason must name the service, as a word: "postgresql" in a URL is no proof.
        assert re.search(rf"\b{service}\b", struck["reason"]), struck["reason"]
        assert after["outcome"] == after["expected"] == "CLEAN", \
            f"the variant after the fault did not get working services: {after}"
        assert code == 1, f"only the struck variant should fail\n{log_tail(output)}"
        assert_nothing_left(mark, private_tmp)
    finally:
        run.kill()
        run.wait(timeout=10)
        remove_tree(private_tmp)


def test_a_crashed_xdist_worker_takes_its_celery_worker_and_services_with_it(tmp_path: Path):
    """SIGKILL to an xdist worker while its Celery worker runs a call: pytest still ends
    within a bound, that worker's Celery worker (with its pool processes) and services
    die with it (PR_SET_PDEATHSIG), so no process of the run remains, and the pytest
    controller sweeps the dead worker's temp folders (harness.scratch), so none remains
    either."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_fault.py").write_text(FAULT_SCENARIO.format(pgbouncer=False, sleep_s=60))
    results_dir = tmp_path / "results"
    output = tmp_path / "pytest.out"
    env, private_tmp, mark = private_run_env()
    # xdist makes pytest's own base temp folder (pytest-of-<user>) for its workers, by
    # default under TMPDIR: put it elsewhere, so the private TMPDIR holds only what the
    # harness made there, and its emptiness at the end says the sweep did its work.
    run = start_pytest(["-n", "2", "--basetemp", str(tmp_path / "basetemp"),
                        "--results-dir", str(results_dir), "test_fault.py"], project, env, output)
    try:
        assert wait_for_path("*/logs/fault/struck-psycopg.log", results_dir, SLEEP_MARK, 90), \
            f"the blocking call never reached its query\n{log_tail(output)}"
        procs = {p.pid: p for p in run_processes(mark, private_tmp)}
        # The struck variant's Celery worker (its configuration names the variant) is a
        # child of the xdist worker that runs it: execnet starts that one as
        # "python -u -c <bootstrap>". The other xdist worker may be running "after".
        celery_main = [p for p in procs.values() if "celery" in p.argv and "worker" in p.argv
                       and p.ppid in procs and "-c" in procs[p.ppid].argv
                       and b'"variant": "struck"' in Path(f"/proc/{p.pid}/environ").read_bytes()]
        assert len(celery_main) == 1, [p.cmdline for p in procs.values()]
        xdist_worker = procs[celery_main[0].ppid]
        assert xdist_worker.ppid == run.pid, "the Celery worker's parent is not an xdist worker"
        # Its services' folders are in its parent folder, which SIGKILL leaves behind.
        worker_folder = list(private_tmp.glob(f"{scratch.PREFIX}{xdist_worker.pid}-*"))
        assert len(worker_folder) == 1, sorted(p.name for p in private_tmp.iterdir())
        os.kill(xdist_worker.pid, signal.SIGKILL)

        finish(run, output)
        assert "crashed" in log_tail(output, 20000), \
            f"xdist did not report the crash\n{log_tail(output)}"
        # The crash costs the struck variant only: the other one ran (on the other xdist
        # worker, or on the one xdist starts in place of the dead one) and got its result.
        after = results_of(results_dir, output)["after-psycopg"]
        assert after["outcome"] == after["expected"] == "CLEAN", after
        # The killed worker could not remove its harness-run-* folder; the controller's
        # sweep at the end of the session must have.
        assert_nothing_left(mark, private_tmp, context=" (after the xdist worker was killed)")
    finally:
        run.kill()
        run.wait(timeout=10)
        remove_tree(private_tmp)


def test_two_runs_at_once_do_not_see_each_other(tmp_path: Path):
    """Two whole runs of the same real scenario started together, each with its own
    results folder: both exit 0 and each results.json shows every expected outcome."""
    variants = ["default-pool", "nullpool"]  # one cell reproduces, the others are clean
    runs = []
    try:
        for name in ("first", "second"):
            env, private_tmp, mark = private_run_env()
            output = tmp_path / f"{name}.out"
            results_dir = tmp_path / name
            run = start_pytest(["--results-dir", str(results_dir), "--variant", ",".join(variants),
                                "scenarios/test_loop_bound_pool.py"], ROOT, env, output)
            runs.append((run, output, results_dir, private_tmp, mark))
        for run, output, results_dir, _private_tmp, _mark in runs:
            assert finish(run, output) == 0, log_tail(output)
            results = results_of(results_dir, output)
            assert sorted(results) == sorted(f"{v}-{d}" for v in variants
                                             for d in ("asyncpg", "psycopg")), sorted(results)
            for cell, result in results.items():
                assert result["passed"] and result["outcome"] == result["expected"], (cell, result)
        for _run, _output, _results_dir, private_tmp, mark in runs:
            assert_nothing_left(mark, private_tmp)
    finally:
        for run, _output, _results_dir, private_tmp, _mark in runs:
            run.kill()
            run.wait(timeout=10)
            remove_tree(private_tmp)
