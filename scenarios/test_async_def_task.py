"""async-def-task: Celery never awaits an ``async def`` task body.

Symptom
    A task declared as ``@app.task async def`` never does its work. With a
    result backend every call fails with ``kombu.exceptions.EncodeError: Object
    of type coroutine is not JSON serializable``, an error that points at the
    serializer, not at the cause. With ``ignore_result=True`` (or no result
    backend) it is worse: the worker logs ``succeeded ... <coroutine object ...>``,
    the caller sees success, and no row is written.

Cause
    Celery 5.7's tracer calls the task body like any function
    (``celery/app/trace.py``: ``R = retval = fun(*args, **kwargs)``, where ``fun`` is
    ``task.run`` unless the Task class overrides ``__call__``) and treats whatever
    comes back as the return value. Calling a coroutine function only creates a
    coroutine object; nothing in ``celery/app/task.py`` or ``trace.py`` checks for
    one or awaits it. The result backend then tries to encode that object
    (``backend.mark_as_done`` -> ``store_result``), kombu's JSON encoder raises
    ``TypeError`` and Celery records the task as failed with ``EncodeError``.
    With ``ignore_result`` nothing is encoded, so the call "succeeds". The tracer
    is the same for every pool, and Celery 5.7's pools are prefork, eventlet,
    gevent, solo and threads (``celery/concurrency/__init__.py``): there is no
    asyncio pool.

The article's claim
    "Celery 5.1+ supports async def task functions natively when the worker runs
    under the gevent or eventlet pools, or when using the experimental asyncio
    pool. For most production deployments the prefork pool remains the default,
    so asyncio.run() in sync tasks is the recommended pattern." It quotes no error.

What really happens (Celery 5.7.0, kombu 5.7.0, SQLAlchemy 2.1.9, asyncpg 0.32.0,
psycopg 3.3.9, Python 3.11.7, PostgreSQL 15; PgBouncer is not used)
    * ``async-def`` (prefork, Redis result backend): REPRODUCED, every call
      ``coroutine-result-unencodable``; no row is written, on both drivers. In
      prefork the worker log shows no "was never awaited" warning for these
      calls: the coroutine is still referenced from the encoder's ``TypeError``
      traceback and is not finalised while the worker runs, so searching the
      logs for that warning finds nothing.
    * ``async-def-ignore-result``: REPRODUCED, every call ``body-never-ran``:
      Celery logs "succeeded", the body never ran, no row is written. The worker
      log has "coroutine ... was never awaited", but only once or twice per run:
      Python shows a warning once per code location in each worker process.
      On Celery 5.6.3 the same variant fails like ``async-def``
      (``coroutine-result-unencodable``): the task message carries
      ``ignore_result=False``, and that release's worker lets the message's value
      override the task's own setting (celery/celery#10184, "prioritize request
      ignore_result over task definition", merged 2026-03-08). On Celery 5.3.0 and
      5.4.0 (environments of their time, matrix runs of 2026-11-30) it is
      ``body-never-ran`` again: their worker reads only the task's ``ignore_result``
      (``app/trace.py``). Which release between 5.4.0 and 5.6.3 first behaves like
      5.6.3 has not been observed; the rule below puts the boundary at 5.6.3, the
      first release seen doing it.
    * ``sync-asyncio-run`` (the article's recommended pattern) is CLEAN, with and
      without ``ignore_result``; every call writes its row.
    * A Task base class whose ``__call__`` runs the coroutine with
      ``asyncio.run()`` (``async-def-base-class``) is CLEAN: it keeps the
      ``async def`` syntax and runs in prefork with a new loop per call.
    * The third-party pool celery-aio-pool 0.1.0rc8 (``async-def-celery-aio-pool``)
      is CLEAN: it replaces Celery's tracer with its own copy that awaits coroutine
      bodies, on one event loop in one process: prefork is gone, and
      ``worker_process_init`` fires once, in that process. n/a where the package
      is not installed.
    So the article's advice for prefork holds, but "supports async def natively"
    does not hold for any Celery 5.x pool: outside this scenario, the same worker
    with ``--pool=solo`` or ``--pool=threads`` fails the same way (EncodeError, and
    there the never-awaited warning is logged). gevent and eventlet run the same
    tracer. Native support is still an open feature request upstream.

Which fix works and why
    Drive the coroutine yourself: ``asyncio.run()`` in a sync task, or the same in
    a Task base class's ``__call__`` (the tracer calls ``task(...)`` when
    ``__call__`` is overridden; the request context the tracer pushed stays
    available while the coroutine runs). Pair it with an engine made after the
    fork and NullPool (see loop-bound-pool) so no connection outlives its loop.

Sources
    celery/celery#6552 "Support async function" and #3884 "Celery asyncio tasks"
    (open feature requests); celery/celery#7874 (the celery-aio-pool proposal);
    Celery user guide, Tasks, "Custom task classes"; ``celery/app/trace.py``
    (``build_tracer``), ``celery/backends/base.py`` (``mark_as_done``),
    ``celery/bin/worker.py`` (``WorkersPool.convert`` honours ``worker_pool``).
"""

from harness import signatures as sig
from harness.plugin import assert_expected
from harness.scenario import (
    Claim,
    Role,
    Scenario,
    Variant,
    Workload,
    before_package,
    clean,
    installed,
    needs,
    reproduces,
)

# 8 calls over 2 prefork processes: every process runs several calls, and each
# call must leave its row and its ran-mark, so a body that never ran cannot hide.
WORKLOAD = Workload(task="record_token", calls=8, concurrency=2, check_ran=True)
# ignore_result: no value comes back, so the ran-mark is the only proof of work.
NO_RESULT_WORKLOAD = Workload(task="record_token", calls=8, concurrency=2, check_ran=True,
                              ignore_result=True)


# n/a unless the third-party pool (PyPI: celery-aio-pool) is installed.
NEEDS_CELERY_AIO_POOL = needs(
    installed("celery-aio-pool"),
    "the celery-aio-pool package is not installed (pip install celery-aio-pool)")


# Celery < 5.7 puts ignore_result=False in every task message unless the caller
# passes it (app/base.py send_task: options.pop('ignore_result', False); app/task.py
# apply_async likewise). From the release that carries celery/celery#10184 the
# worker lets that value override the task's ignore_result=True: the coroutine is
# stored as a result after all and fails to encode (seen with 5.6.3 in two matrix
# runs). Older workers read only the task's own setting (seen with 5.3.0 and 5.4.0:
# body-never-ran), and Celery 5.7 sends the task's own setting. The lower boundary
# is the first release seen behaving so (5.6.3); releases between 5.4.0 and 5.6.3
# are unobserved.
OVERRIDE_WINDOW = ("Celery 5.6.3 up to 5.7 sends ignore_result=False in the message and lets "
                   "it override the task's ignore_result=True, so the coroutine is stored and "
                   "fails to encode")
IGNORED_BEFORE_CELERY_57 = before_package(
    "celery", "5.6.3",
    reproduces("body-never-ran", why="Celery 5.3.0 and 5.4.0 read only the task's own "
                                     "ignore_result: the body never runs"),
    before_package("celery", "5.7", reproduces("coroutine-result-unencodable"),
                   reproduces("body-never-ran"), why=OVERRIDE_WINDOW),
    why="Celery 5.3.0 and 5.4.0 read only the task's own ignore_result (app/trace.py): "
        "the body never runs, as on 5.7")

SCENARIO = Scenario(
    id="async-def-task",
    app="scenarios.apps.async_def_task",
    workload=WORKLOAD,
    signatures=(sig.COROUTINE_RESULT_UNENCODABLE, sig.BODY_NEVER_RAN),
    claim=Claim(
        error="(none quoted: 'Celery 5.1+ supports async def task functions natively')",
        fix="asyncio.run() in sync tasks is the recommended pattern (for prefork)",
        signature=None, bad="async-def", fixed="sync-asyncio-run",
        # The article claims async def tasks work: that claim holds only if they are clean.
        bad_fails=False),
    setup_sql=("create table recorded_tokens (token text primary key, pid integer not null)",),
    # How many bodies really wrote their row, and in how many worker processes.
    inspect_sql={"recorded": "select count(*), count(distinct pid) from recorded_tokens"},
    variants=(
        Variant("async-def", Role.BAD, {"pool": "null", "task_style": "async-def"},
                expect=reproduces("coroutine-result-unencodable")),
        Variant("async-def-ignore-result", Role.BAD,
                {"pool": "null", "task_style": "async-def", "ignore_result": True},
                workload=NO_RESULT_WORKLOAD, expect=IGNORED_BEFORE_CELERY_57),
        Variant("sync-asyncio-run", Role.ARTICLE_FIX,
                {"pool": "null", "task_style": "sync-asyncio-run"}, expect=clean()),
        # Proves the ignore_result workload sees bodies that did run.
        Variant("sync-asyncio-run-ignore-result", Role.CONTROL,
                {"pool": "null", "task_style": "sync-asyncio-run", "ignore_result": True},
                workload=NO_RESULT_WORKLOAD, expect=clean()),
        Variant("async-def-base-class", Role.FIX,
                {"pool": "null", "task_style": "async-def-base-class"}, expect=clean()),
        Variant("async-def-celery-aio-pool", Role.FIX,
                {"pool": "null", "task_style": "async-def", "worker_pool": "celery-aio-pool"},
                requires=NEEDS_CELERY_AIO_POOL, expect=clean()),
    ),
)


def test_variant(variant_run):
    assert_expected(variant_run)
