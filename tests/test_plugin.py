"""The pytest plugin, tested from outside with pytester on a real worker and services."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DEMO = textwrap.dedent('''
    from harness import signatures as sig
    from harness.plugin import assert_expected
    from harness.scenario import (Claim, Role, Scenario, Variant, Workload, clean,
                                  reproduces)

    SCENARIO = Scenario(
        id="demo",
        app="tests.apps.lifecycle",
        workload=Workload(task="echo", calls=3, concurrency=1, check_ran=True),
        signatures=(sig.ASYNCPG_ANOTHER_OPERATION,),
        claim=Claim(error="another operation is in progress", fix="none",
                    signature="asyncpg-another-operation", bad="fails", fixed="works"),
        variants=(
            Variant("works", Role.ARTICLE_FIX, {}, expect=clean()),
            Variant("fails", Role.BAD, {}, expect=reproduces("asyncpg-another-operation"),
                    workload=Workload(task="raise_wrapped", calls=2, concurrency=1),
                    not_for={"psycopg": "demo: this variant exists for asyncpg only"}),
            Variant("wrongly-expected", Role.FIX, {}, expect=clean(),
                    workload=Workload(task="answer_wrong", calls=2, concurrency=1)),
        ),
    )


    def test_variant(variant_run):
        assert_expected(variant_run)
''')


@pytest.fixture
def demo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the worker imports tests.apps.lifecycle
    pytester.makepyfile(test_demo=DEMO)
    return pytester


def load_results(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "latest" / "results.json").read_text())


def test_each_variant_and_driver_is_a_test_and_results_json_has_the_contract(demo):
    run = demo.runpytest_subprocess("-p", "no:cacheprovider", "--results-dir", "reports")
    run.assert_outcomes(passed=3, failed=2, skipped=1)
    run.stdout.fnmatch_lines([
        "*expected CLEAN, observed OTHER_FAILURE*",
        "*wrong result: expected*",
        "*fault-reproduction harness*",
        "scenario*variant*driver*role*expected*observed*",
        "demo*fails*psycopg*N/A*N/A*asyncpg only*",
        "*demo [[]asyncpg[]]: the article's claim HOLDS*",
        "*demo [[]psycopg[]]: the article's claim N/A*",
    ])
    doc = load_results(demo)
    assert doc["schema"] == 1
    assert set(doc["environment"]["services"]) >= {"backend", "postgres", "redis"}
    assert len(doc["results"]) == 6
    by_id = {(r["variant"], r["driver"]): r for r in doc["results"]}
    works = by_id[("works", "asyncpg")]
    assert works["outcome"] == "CLEAN" and works["tasks"]["ok"] == 3
    # The knobs the app ran with, defaults included (tests/apps/lifecycle.py declares them).
    assert works["knobs"] == {"fail_at_import": False, "sleep_at_import_s": None}
    assert works["worker_start_s"] > 0 and Path(works["log"]).exists()
    fails = by_id[("fails", "asyncpg")]
    assert fails["outcome"] == "REPRODUCED"
    assert fails["tasks"]["by_signature"] == {"asyncpg-another-operation": 2}
    na = by_id[("fails", "psycopg")]
    assert na["outcome"] == "N/A" and "asyncpg only" in na["reason"]
    assert by_id[("wrongly-expected", "psycopg")]["tasks"]["wrong"] == 2
    for field in ("scenario", "variant", "driver", "role", "expected", "outcome", "tasks",
                  "first_error", "worker_start_s", "run_s"):
        assert all(field in r for r in doc["results"])


def test_results_from_xdist_workers_reach_one_results_json(demo):
    run = demo.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    run.assert_outcomes(passed=3, failed=2, skipped=1)
    doc = load_results(demo)
    assert len(doc["results"]) == 6
    logs = {Path(r["log"]).parent.parent.parent.name for r in doc["results"] if r["log"]}
    assert logs == {doc["run_id"]}, "every xdist worker writes logs under the one run id"


def test_test_ids_show_the_variant_driver_and_versions(demo):
    run = demo.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    run.stdout.fnmatch_lines(["*test_variant[[]works-asyncpg-sa*-celery*-py3.*[]]*"])


def test_an_unknown_backend_is_a_usage_error(demo):
    run = demo.runpytest_subprocess("--backend", "cloud")
    assert run.ret != 0
    run.stderr.fnmatch_lines(["*--backend 'cloud' is not a backend. Choose one of*"])


def test_docker_backend_without_docker_says_what_to_do(demo, monkeypatch, tmp_path):
    # No engine answers at this socket, whether or not one runs on this machine.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    run = demo.runpytest_subprocess("--backend", "docker")
    assert run.ret != 0
    run.stderr.fnmatch_lines(["*--backend docker was asked for, but*use --backend local*"])
    run = demo.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    run.stdout.fnmatch_lines(["*6 tests collected*"])  # auto falls back to local


FORGETFUL = DEMO.replace("    assert_expected(variant_run)", "    pass  # forgets assert_expected")


def test_a_moved_cell_fails_even_when_the_test_forgets_to_assert(pytester, monkeypatch):
    """The plugin, not the scenario module, decides that a cell which moved fails."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    assert FORGETFUL != DEMO
    pytester.makepyfile(test_demo=FORGETFUL)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--variant",
                                        "wrongly-expected,works")
    run.assert_outcomes(passed=2, failed=2)
    run.stdout.fnmatch_lines(["*expected CLEAN, observed OTHER_FAILURE*"])
    # Its own status letter: M for a cell that moved (H would be a harness error).
    run.stdout.fnmatch_lines(["test_demo.py*MM*"])


def test_a_module_without_scenario_is_a_clear_error(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_bad="def test_variant(variant_run):\n    pass\n")
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert run.ret != 0
    run.stdout.fnmatch_lines(["*declares no SCENARIO = Scenario(...)*"])


def test_a_scenario_that_does_not_import_shows_its_error_not_a_plugin_crash(pytester,
                                                                            monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_broken="SCENARIO = (\n")
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert run.ret == pytest.ExitCode.INTERRUPTED
    output = run.stdout.str() + run.stderr.str()
    assert "SyntaxError" in output and "ERROR test_broken.py" in output
    # Not the plugin's own failure, and not an interrupt it never received.
    assert "AttributeError" not in output and "stopped by" not in output


def test_scenario_and_variant_options_select_and_refuse_unknown_names(demo):
    run = demo.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q",
                                    "--variant", "works")
    run.stdout.fnmatch_lines(["*works-asyncpg*", "*works-psycopg*", "*2/6 tests collected*"])
    run = demo.runpytest_subprocess("--scenario", "dmeo")
    assert run.ret != 0
    run.stderr.fnmatch_lines([("*Unknown scenario 'dmeo'. Known scenarios in the collected "
                              "files: demo*")])
    run = demo.runpytest_subprocess("--variant", "works,nope")
    run.stderr.fnmatch_lines(["*Unknown variant 'nope'*fails, works, wrongly-expected*"])


# A test interrupted where the interpreter has no line number: the signal landed in
# the code Python 3.11+ emits to push a caught exception (``PUSH_EXC_INFO`` carries no
# location), so the innermost traceback entry has ``tb_lineno = None``.
INTERRUPTED_WITHOUT_A_LINE = textwrap.dedent('''
    import dis
    import sys
    import types


    def _frame_that_caught():
        try:
            raise ValueError
        except ValueError:
            return sys._getframe()


    def test_interrupted_where_there_is_no_line():
        frame = _frame_that_caught()
        offset = next(ins.offset for ins in dis.get_instructions(frame.f_code)
                      if ins.positions is None or ins.positions.lineno is None)
        where = types.TracebackType(None, frame, offset, -1)
        assert where.tb_lineno is None
        raise KeyboardInterrupt("SIGTERM received").with_traceback(where)


    def test_never_reached():
        pass
''')


def test_an_interrupt_without_a_line_number_still_says_what_did_not_run(pytester):
    pytester.makepyfile(test_interrupted=INTERRUPTED_WITHOUT_A_LINE)
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    text = run.stdout.str() + run.stderr.str()
    assert "TypeError" not in text, text
    run.stdout.fnmatch_lines(["*stopped by an interrupt: 1 of 2 tests did not run*",
                              "*not run: test_interrupted.py::test_never_reached*"])
    assert run.ret == pytest.ExitCode.INTERRUPTED
