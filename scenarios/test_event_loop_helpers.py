"""event-loop-helpers: which asyncio helper a sync Celery task may use to run a coroutine.

Symptom
    A sync task that runs its async database work with
    ``asyncio.get_event_loop().run_until_complete(...)`` works for years, then fails
    after an unrelated change: another task (or an earlier step of the same task)
    starts using ``asyncio.run()``, warnings become errors in CI, or the worker
    moves to Python 3.14. The failing call then raises ``RuntimeError: There is no
    current event loop in thread 'MainThread'.``; the article's text, ``RuntimeError:
    no running event loop``, comes from ``asyncio.get_running_loop()`` instead.

Cause
    A prefork child runs its tasks in its main thread, where no loop is running.
    ``get_running_loop()`` only ever returns a *running* loop, so outside a
    coroutine it always raises "no running event loop". ``get_event_loop()`` falls
    back to the policy (``BaseDefaultEventLoopPolicy.get_event_loop`` in
    ``asyncio/events.py``): in the main thread it creates and sets a loop, but only
    if ``set_event_loop()`` was never called in that thread (``_set_called``).
    ``asyncio.run()`` calls ``set_event_loop(loop)`` and, when it finishes,
    ``set_event_loop(None)`` (``asyncio/runners.py``, ``Runner.close``). After one
    ``asyncio.run()`` in a process, every later ``get_event_loop()`` there raises.
    In the other order, ``asyncio.run()`` discards the loop ``get_event_loop()``
    had created (the worker logs ``ResourceWarning: unclosed event loop``), so the
    first call of each process succeeds and every later one fails.
    Python versions: 3.10.10+ and 3.11.2+ create the loop silently; 3.12 and 3.13
    create it with ``DeprecationWarning: There is no current event loop``;
    3.14 no longer creates one and raises ``RuntimeError`` (cpython gh-126353).
    (3.10.0-3.10.9 and 3.11.0-3.11.1 warned as well; the rules below see only
    ``(major, minor)``, so they describe the later patch releases.)

The article's claim
    "RuntimeError: no running event loop | asyncio.get_event_loop() called inside a
    sync task where no loop exists (Python 3.10+ deprecated the implicit loop). |
    Replace with asyncio.run(coroutine()) — creates its own loop."

What really happens (SQLAlchemy 2.1.9, Celery 5.7.0, asyncpg 0.32.0, psycopg 3.3.9,
Python 3.11.7, PostgreSQL 15; every variant uses NullPool, made after the fork;
the same outcomes on Python 3.10.13 with SQLAlchemy 2.0.58, and on 3.12.1 and
3.13.0 with the same packages; and on Python 3.14.8, Debian forky's, in a container
environment of ``harness matrix --python 3.14`` with the same packages and PostgreSQL
15, where every variant met its rule below on 2026-11-30; Python 3.15.0 gave the same
cells as 3.14.8). Both drivers behave the
same: only the loop helper matters.
    * ``get-event-loop`` (the article's bad code): CLEAN on 3.10-3.13. Each process
      creates one loop implicitly (``implicit-loops`` = processes) and reuses it;
      3.12 and 3.13 show one DeprecationWarning per process. The claim does not
      hold: no error at all, and the quoted text belongs to ``get_running_loop()``.
      On 3.14 this variant fails with ``no-current-event-loop`` on every call
      (observed on 3.14.8: 12 of 12).
    * ``get-running-loop``: REPRODUCED, every call ``no-running-loop`` (the article's
      exact text), on every version.
    * ``asyncio-run-then-get-event-loop`` (each call runs ``asyncio.run()``, then
      ``get_event_loop()``): REPRODUCED, every call ``no-current-event-loop``.
    * ``get-event-loop-then-asyncio-run``: REPRODUCED ``no-current-event-loop``; the
      first call of each process succeeds and every later one fails (ok = processes
      that ran a call: 2 of 12, or 1 when one process took every call under load).
      A mixed code base fails from the second task a process runs. On 3.14 the
      first call fails too (observed on 3.14.8: 0 of 12 ok): ``get_event_loop()``
      no longer makes the loop that call used to get.
    * ``get-event-loop-warnings-as-errors`` (the bad code with DeprecationWarning
      raised, as under ``-W error`` or pytest's ``filterwarnings = error``): CLEAN on
      3.10 and 3.11; REPRODUCED ``implicit-loop-deprecated`` on every call on 3.12
      and 3.13 (the warning fires before the loop is set, so no loop is ever kept);
      on 3.14 ``no-current-event-loop`` on every call (observed on 3.14.8: there is
      no warning any more, only the RuntimeError).
    * ``asyncio-run`` (the article's fix): CLEAN on every version.
    * ``loop-set-at-process-start`` (``new_event_loop()`` + ``set_event_loop()`` in
      ``worker_process_init``, then ``get_event_loop()`` under warnings-as-errors):
      CLEAN: a loop that was set is returned without a warning on every version.

Which fix works and why
    ``asyncio.run()`` in every task: it makes, sets and closes its own loop and never
    asks for the current one (it only refuses to start inside a running loop), so
    it does not care what other code in the process did. Do not mix it with
    ``get_event_loop()`` in one process. Code that must keep one loop per process
    (for a pooled engine, see loop-bound-pool) should create it explicitly at
    process start (``asyncio.Runner`` or ``new_event_loop()``) and run every task
    on it, never relying on ``get_event_loop()`` to create it.

Sources
    CPython docs: asyncio "Event Loop" (``get_event_loop``: deprecated 3.12, raises
    from 3.14) and "Policies"; python/cpython gh-93453 (PRs 99949, 100059: warn only
    when a loop is created, 3.10.9 / 3.11.1), gh-100160 (PRs 100410, 100412: no
    warning in 3.10/3.11, DeprecationWarning in 3.12), gh-126353 (PR 126354: 3.14
    raises; reviewers point to ``asyncio.run``/``asyncio.Runner`` instead);
    ``Lib/asyncio/events.py``, ``Lib/asyncio/runners.py``.
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.scenario import (
    PYTHON,
    Claim,
    Role,
    Scenario,
    Variant,
    Workload,
    clean,
    reproduces,
    when,
)

# No engine pool: a pooled connection would tie the run to a loop (loop-bound-pool),
# and here only the loop helper may differ between variants.
NULLPOOL = {"pool": "null"}

SCENARIO = Scenario(
    id="event-loop-helpers",
    app="scenarios.apps.event_loop_helpers",
    # 12 calls over 2 processes: every process runs several calls, so a helper that
    # only breaks from a process's second call on cannot go unnoticed.
    workload=Workload(task="echo_token", calls=12, concurrency=2),
    signatures=(sig.NO_RUNNING_LOOP, sig.NO_CURRENT_LOOP, sig.IMPLICIT_LOOP_DEPRECATED),
    claim=Claim(
        error="RuntimeError: no running event loop",
        fix="Replace with asyncio.run(coroutine()) — creates its own loop.",
        signature="no-running-loop", bad="get-event-loop", fixed="asyncio-run"),
    variants=(
        Variant("get-event-loop", Role.BAD, {**NULLPOOL, "steps": ["get_event_loop"]},
                expect=when(PYTHON >= "3.14", reproduces("no-current-event-loop"), clean(),
                            why="get_event_loop() creates a loop in the main thread up to "
                                "3.13 (with a DeprecationWarning on 3.12-3.13); 3.14 raises")),
        Variant("get-running-loop", Role.BAD, {**NULLPOOL, "steps": ["get_running_loop"]},
                expect=reproduces("no-running-loop")),
        Variant("asyncio-run-then-get-event-loop", Role.BAD,
                {**NULLPOOL, "steps": ["asyncio.run", "get_event_loop"]},
                expect=reproduces("no-current-event-loop")),
        Variant("get-event-loop-then-asyncio-run", Role.BAD,
                {**NULLPOOL, "steps": ["get_event_loop", "asyncio.run"]},
                expect=reproduces("no-current-event-loop")),
        Variant("get-event-loop-warnings-as-errors", Role.BAD,
                {**NULLPOOL, "steps": ["get_event_loop"], "deprecation_warnings": "error"},
                expect=when(PYTHON >= "3.12",
                            reproduces("implicit-loop-deprecated", "no-current-event-loop"),
                            clean(),
                            why="3.10.10+/3.11.2+ create the loop silently; 3.12-3.13 warn "
                                "first (an error here); 3.14 raises RuntimeError")),
        Variant("asyncio-run", Role.ARTICLE_FIX, {**NULLPOOL, "steps": ["asyncio.run"]},
                expect=clean()),
        Variant("loop-set-at-process-start", Role.FIX,
                {**NULLPOOL, "steps": ["get_event_loop"], "deprecation_warnings": "error",
                 "set_loop_at_process_start": True},
                expect=clean()),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
