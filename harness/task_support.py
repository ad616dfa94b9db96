"""What a scenario's Celery app imports inside the worker.

Responsibility: give the worker its configuration (from the environment, never
from edited code) and report each task failure in full to the harness.

Celery's result backend keeps only the exception's class name and message. The
harness needs the whole chain (SQLAlchemy's ``.orig``, the driver's exception,
SQLSTATE, SQLAlchemy's error code) to match signatures on stable keys, so the
app's task class stores that chain in Redis under the task id. It does so in
``Task.__call__``, before Celery stores the FAILURE state: Celery sends
``task_failure`` only after storing the state (celery/app/trace.py,
``handle_failure``), so a record written there can arrive after the harness has
already read the result. The ``task_failure`` handler stays for failures raised
outside the task body (a time limit hit outside ``__call__``, for example).
"""

from __future__ import annotations

import json
import os
import traceback as tb
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.exceptions import Retry
from celery.signals import task_failure

from harness import knobs as knob_rules
from harness.knobs import Knob
from harness.signatures import public_name

CONFIG_ENV = "HARNESS_WORKER_CONFIG"
FAILURE_KEY = "harness:failure:{task_id}"
RAN_KEY = "harness:ran:{queue}:{token}"
COUNTER_KEY = "harness:count:{queue}:{name}"
START_KEY = "harness:start:{queue}:{what}"
KNOBS_KEY = "harness:knobs:{queue}"
FAILURE_TTL_S = 3600


@dataclass(frozen=True)
class WorkerSettings:
    """The variant run's settings, as the harness passed them to the worker.

    ``config`` is the variant's config as written; ``knobs`` the value in force of
    every knob the app declares (:func:`settings`), defaults included.
    """

    scenario: str
    variant: str
    driver: str
    database_url: str
    broker_url: str
    queue: str
    config: Mapping[str, Any]
    start_together: int = 0  # processes whose first calls start at once (0: no barrier)
    cue_points: tuple[str, ...] = ()  # points a fault waits at (harness.faults.cues.reach)
    cue_passing: tuple[str, ...] = ()  # of those, points a task announces and passes at once
    # The result backend's Redis URL when it is not the broker's: direct, past a fault
    # proxy the broker goes through (Workload.result_backend_direct).
    backend_url: str = ""
    knobs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_variant(cls, *, scenario: str, variant: str, driver: str, database_url: str,
                    broker_url: str, queue: str, config: Mapping[str, Any],
                    start_together: int = 0, cue_points: Iterable[str] = (),
                    cue_passing: Iterable[str] = (), backend_url: str = "") -> WorkerSettings:
        """The settings the harness hands a worker (the one place they are built)."""
        return cls(scenario, variant, driver, database_url, broker_url, queue, dict(config),
                   start_together, tuple(cue_points), tuple(cue_passing), backend_url)

    def to_env(self) -> dict[str, str]:
        """The worker's environment variable that carries these settings."""
        fields = {"scenario": self.scenario, "variant": self.variant, "driver": self.driver,
                  "database_url": self.database_url, "broker_url": self.broker_url,
                  "queue": self.queue, "config": dict(self.config),
                  "start_together": self.start_together, "cue_points": list(self.cue_points),
                  "cue_passing": list(self.cue_passing), "backend_url": self.backend_url}
        return {CONFIG_ENV: json.dumps(fields)}

    def get(self, name: str) -> Any:
        """The value in force of a declared knob.

        Raises:
            KeyError: the app reads a knob it did not declare (a misspelling in the app).
        """
        try:
            return self.knobs[name]
        except KeyError:
            raise KeyError(f"knob {name!r} is not declared by this app; it declares: "
                           f"{', '.join(self.knobs) or '(none)'}") from None


_settings: WorkerSettings | None = None


def settings(*declared: Knob | Iterable[Knob]) -> WorkerSettings:
    """The run's settings, with the app's knobs checked against the variant's config.

    The app's module calls this once at import with every knob it reads (groups such
    as ``scenarios.apps.common.ENGINE_KNOBS`` included); later calls without
    arguments return the same settings.

    Raises:
        KnobError: the config sets a knob the app does not declare, or a value of the
            wrong type; the worker then fails at import with that message.
    """
    global _settings
    if _settings is not None and not declared:
        return _settings
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(
            f"{CONFIG_ENV} is not set: this Celery app is meant to be started by the "
            f"harness (pytest scenarios/), which passes the variant's configuration.")
    data = json.loads(raw)
    values = knob_rules.effective(knob_rules.declare(*declared), data["config"],
                                  where=f"{data['scenario']} / {data['variant']}")
    data["cue_points"] = tuple(data.get("cue_points", ()))
    data["cue_passing"] = tuple(data.get("cue_passing", ()))
    _settings = WorkerSettings(**data, knobs=values)
    return _settings


def make_app(main: str) -> Celery:
    """A Celery app wired to the run's broker, result backend and private queue.

    The knobs in force are published for the harness, which records them with the
    variant's result (``knobs`` in results.json).
    """
    s = settings()
    app = Celery(main, broker=s.broker_url, backend=s.backend_url or s.broker_url,
                 set_as_current=True)
    app.conf.update(
        task_default_queue=s.queue,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        worker_hijack_root_logger=True,
        broker_connection_retry_on_startup=True,
        # A lost worker process must show as a failed call, not as a silent requeue.
        task_acks_late=False, task_reject_on_worker_lost=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        result_expires=3600,
    )
    _install_failure_reporter(app)
    app.backend.client.set(KNOBS_KEY.format(queue=s.queue), json.dumps(dict(s.knobs)),
                           ex=FAILURE_TTL_S)
    return app


def _record_failure(app: Celery, task_id: str | None, exc: BaseException,
                    overwrite: bool) -> None:
    """Keep the call's exception chain for the harness, riding out a Redis restart.

    Never raises: the task's own exception is what propagates. If Redis stays away
    the record is lost and the harness falls back to what the result backend knows.
    """
    if task_id is None:
        return
    from harness.faults.cues import RIDE_OUT_S, with_reconnect

    record = {"chain": exception_chain(exc),
              "traceback": "".join(tb.format_exception(exc))[-8000:]}
    try:
        with_reconnect(lambda: app.backend.client.set(
            FAILURE_KEY.format(task_id=task_id), json.dumps(record), ex=FAILURE_TTL_S,
            nx=not overwrite), timeout_s=RIDE_OUT_S)
    except Exception:  # noqa: BLE001, S110 - reporting must not replace the task's failure
        pass


def mark_ran(app: Celery, token: str) -> None:
    """Leave the side effect that proves a task body really ran (see ``Workload.check_ran``)."""
    s = settings()
    app.backend.client.set(RAN_KEY.format(queue=s.queue, token=token), "1", ex=FAILURE_TTL_S)


def count(app: Celery, name: str, amount: int = 1) -> None:
    """Add to a named counter of this run (retries, connections opened...).

    The harness reads every counter after the calls and keeps them in the result
    (``counters``), so a scenario can report what is not a pass/fail fact.
    """
    s = settings()
    key = COUNTER_KEY.format(queue=s.queue, name=name)
    app.backend.client.incrby(key, amount)
    app.backend.client.expire(key, FAILURE_TTL_S)


def call_token(prefix: str, index: int) -> str:
    """The token the harness sends as a call's first argument: ``"ab12cd34-007"``."""
    return f"{prefix}-{index:03d}"


def call_index(token: str) -> int:
    """The index of the call a token belongs to (``"ab12cd34-007"`` -> 7), in sending order.

    For a task that treats some calls differently (the first hangs, the first two are
    slow): which calls those are follows from the workload, not from timing.
    """
    return int(token.rsplit("-", 1)[1])


_joined_start = False


def start_together(app: Celery, processes: int, timeout_s: float = 10.0) -> None:
    """Hold this process's first call until ``processes`` processes have one, then go.

    Prefork hands a call to whichever process is idle: a process that is still
    starting misses the first calls, and a hazard that needs two processes at work
    at once (a socket both inherited) may then never show. Each process joins once;
    the last to arrive releases the others through a Redis list, so all of them go
    within a millisecond. If they do not all arrive within ``timeout_s`` the call
    goes on alone and the run's counter ``start-together-timeout`` says so.

    The app's task class joins it before every call's body when the workload asks
    for it (``Workload(start_together=True)``); apps do not call it themselves.
    """
    global _joined_start
    if _joined_start or processes < 2:
        return
    _joined_start = True
    s = settings()
    client = app.backend.client
    arrived_key = START_KEY.format(queue=s.queue, what="arrived")
    go_key = START_KEY.format(queue=s.queue, what="go")
    arrived = client.incr(arrived_key)
    client.expire(arrived_key, FAILURE_TTL_S)
    if arrived == processes:
        client.rpush(go_key, *["go"] * (processes - 1))
        client.expire(go_key, FAILURE_TTL_S)
    elif arrived < processes and client.blpop([go_key], timeout=timeout_s) is None:
        count(app, "start-together-timeout")


def exception_chain(exc: BaseException, limit: int = 10) -> list[dict[str, Any]]:
    """The raised exception and everything it wraps, without repeats, outermost first."""
    seen: set[int] = set()
    chain: list[dict[str, Any]] = []
    pending: list[BaseException] = [exc]
    while pending and len(chain) < limit:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        cls = type(current)
        chain.append({
            "type": public_name(cls.__module__, cls.__qualname__),
            "bases": [public_name(k.__module__, k.__qualname__) for k in cls.__mro__
                    if k is not object],
            "message": str(current)[:2000],
            "sa_code": getattr(current, "code", None) if isinstance(
                getattr(current, "code", None), str) else None,
            "sqlstate": _sqlstate(current),
        })
        for attr in ("orig", "driver_exception", "__cause__", "__context__"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                pending.append(inner)
    return chain


def _sqlstate(exc: BaseException) -> str | None:
    for attr in ("sqlstate", "pgcode"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _install_failure_reporter(app: Celery) -> None:
    base = app.Task

    class ReportingTask(base):  # type: ignore[misc, valid-type]
        """Records the exception chain before Celery stores the FAILURE state, and
        holds a process's first call at the workload's start barrier."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            processes = settings().start_together
            if processes:
                start_together(app, processes)  # once per process; a retry does not wait
            try:
                return super().__call__(*args, **kwargs)
            except Retry:
                raise  # not a failure: the call will run again
            except BaseException as exc:
                _record_failure(app, self.request.id, exc, overwrite=True)
                raise

    app.Task = ReportingTask

    @task_failure.connect(weak=False)
    def _report(task_id: str | None = None, exception: BaseException | None = None,
                **_: Any) -> None:
        if exception is not None:  # only when __call__ did not record it already
            _record_failure(app, task_id, exception, overwrite=False)
