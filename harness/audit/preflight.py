"""Import the user's modules once, in a subprocess, before anything slow starts.

Responsibility: turn the audit's import paths into facts (what the engine path
names, which driver its URL uses, what the Celery app configures) or into one
paragraph that says what is wrong: a module that does not import (with its
traceback), a path that names no engine, session factory or factory, a factory that
raises, a URL variable the code never reads.

The import runs in a child process (``python -m harness.audit.preflight``) because
the user's code runs at import: it must not touch the harness's own process, and a
hang is bounded. The URL variable points at a placeholder address no service listens
on; nothing connects to it unless the user's module queries the database at import,
which the report then says.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from typing import Any

from harness.audit.config import BUILTIN_RUNNERS, AuditConfig
from harness.errors import ConfigError

PLACEHOLDER_HOST = "127.0.0.1"
PLACEHOLDER_PORT = 9  # discard: nothing listens there here
PLACEHOLDER_DB = "harness_audit_placeholder"
TIMEOUT_S = 60.0
_MARK = "HARNESS-PREFLIGHT-RESULT "
DRIVERS = ("asyncpg", "psycopg")
# Celery settings the audit takes over from the user's app (the rest is the harness's:
# broker, backend, queue, serializers).
TAKEN_SETTINGS = ("task_time_limit", "task_soft_time_limit", "task_acks_late",
                  "task_reject_on_worker_lost", "task_default_retry_delay",
                  "worker_prefetch_multiplier", "task_acks_on_failure_or_timeout")


def placeholder_url(driver: str) -> str:
    return f"postgresql+{driver}://audit@{PLACEHOLDER_HOST}:{PLACEHOLDER_PORT}/{PLACEHOLDER_DB}"


def wanted_driver(url_env: str, environ: dict[str, str] | None = None) -> str:
    """The driver the user's own URL names, if the variable is set here (else asyncpg)."""
    value = (environ if environ is not None else os.environ).get(url_env, "")
    scheme = value.split("://", 1)[0]
    for driver in DRIVERS:
        if scheme.endswith(f"+{driver}"):
            return driver
    return "asyncpg"


def check(config: AuditConfig, *, python: str = sys.executable) -> AuditConfig:
    """Import the user's modules in a child process; the config with what was found.

    Raises:
        ConfigError: one paragraph per problem (see the module docstring).
    """
    env = dict(os.environ)
    env[config.url_env] = placeholder_url(wanted_driver(config.url_env))
    env["PYTHONPATH"] = os.pathsep.join([*config.search_path(), env.get("PYTHONPATH", "")])
    env["HARNESS_AUDIT_PREFLIGHT"] = config.to_json()
    try:
        proc = subprocess.run([python, "-m", "harness.audit.preflight"], env=env,
                              cwd=config.project_dir, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(
            f"Importing your modules ({config.engine}) did not finish within {TIMEOUT_S:g} s. "
            f"Does the module wait for something at import (a network call, input)? Move that "
            f"out of import time and try again.") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if not lines:
        raise ConfigError(
            f"The import check of your modules exited {proc.returncode} without an answer. "
            f"Its output ends:\n{(proc.stdout + proc.stderr)[-2000:]}")
    found = json.loads(lines[-1][len(_MARK):])
    if found.get("problem"):
        raise ConfigError(found["problem"])
    return config.with_found(driver=found["driver"], kind=found["kind"],
                             user_settings=found["user_settings"])


# --- the child process ------------------------------------------------------------------
def import_object(path: str, what: str) -> Any:
    """``"pkg.mod:name.attr"`` -> the object, or a ConfigError with the traceback."""
    return attribute_of(import_module(path, what), path, what)


def import_module(path: str, what: str) -> Any:
    module_name = path.partition(":")[0]
    try:
        return importlib.import_module(module_name)
    except BaseException as exc:  # noqa: BLE001 - any import failure is the user's to see
        raise ConfigError(
            f"{what} = {path!r}: the module {module_name!r} does not import. Its traceback "
            f"(fix it, or check python_path and the project folder):\n"
            f"{''.join(traceback.format_exception(exc))[-3000:]}") from None


def attribute_of(module: Any, path: str, what: str) -> Any:
    module_name, _, attribute = path.partition(":")
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} = {path!r}: the module {module_name!r} has no "
                              f"{attribute!r}. Check the name after the colon.")
        obj = getattr(obj, part)
    return obj


def classify(obj: Any, path: str) -> tuple[str, Any]:
    """What the engine path names, and the engine behind it."""
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from sqlalchemy.orm import sessionmaker

    def engine_of(maker: Any) -> Any:
        return maker.kw.get("bind")

    if isinstance(obj, AsyncEngine):
        return "engine", obj
    if isinstance(obj, async_sessionmaker) or (
            isinstance(obj, sessionmaker) and isinstance(obj.class_, type)
            and issubclass(obj.class_, AsyncSession)):
        return "sessionmaker", engine_of(obj)
    if isinstance(obj, (Engine, sessionmaker)):
        raise ConfigError(f"engine = {path!r} names a synchronous {type(obj).__name__}; the "
                          f"audit is for async SQLAlchemy (create_async_engine, "
                          f"async_sessionmaker).")
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except BaseException as exc:  # noqa: BLE001
            raise ConfigError(
                f"engine = {path!r} is a function, and calling it with no arguments raised "
                f"{type(exc).__name__}: {exc}. The audit calls it as a task would; make it "
                f"work with no arguments, or point engine at the engine itself. Traceback:\n"
                f"{''.join(traceback.format_exception(exc))[-2000:]}") from None
        if isinstance(made, AsyncEngine):
            return "engine-factory", made
        if isinstance(made, async_sessionmaker):
            return "sessionmaker-factory", engine_of(made)
        raise ConfigError(f"engine = {path!r} is a function that returned a "
                          f"{type(made).__name__}, not an AsyncEngine or async_sessionmaker.")
    raise ConfigError(f"engine = {path!r} names a {type(obj).__name__}, not an AsyncEngine, "
                      f"an async_sessionmaker, or a function that returns one.")


def celery_settings(path: str) -> dict[str, Any]:
    """What the audit takes over from the user's Celery app: ``conf`` (its settings in
    :data:`TAKEN_SETTINGS`) and ``retry`` (the retry policy of its first task that
    retries automatically, and the exceptions any of its tasks retry on)."""
    from celery import Celery

    app = import_object(path, "celery_app")
    if not isinstance(app, Celery):
        raise ConfigError(f"celery_app = {path!r} names a {type(app).__name__}, not a Celery "
                          f"app (celery.Celery).")
    app.loader.import_default_modules()  # its tasks, as its worker would import them
    conf = {k: app.conf.get(k) for k in TAKEN_SETTINGS if app.conf.get(k) is not None}
    retry: dict[str, Any] = {}
    retry_on: set[str] = set()
    limits: list[float] = []
    for name, task in sorted(app.tasks.items()):
        if name.startswith("celery."):
            continue
        classes = tuple(getattr(task, "autoretry_for", ()) or ())
        retry_on.update(f"{c.__module__}.{c.__qualname__}" for c in classes)
        if classes and not retry:
            retry = {key: getattr(task, key) for key in (
                "max_retries", "retry_backoff", "retry_backoff_max", "retry_jitter",
                "default_retry_delay") if getattr(task, key, None) is not None}
        if getattr(task, "soft_time_limit", None):
            limits.append(float(task.soft_time_limit))
    retry["autoretry_for"] = sorted(retry_on)
    if limits and "task_soft_time_limit" not in conf:
        conf["task_soft_time_limit"] = min(limits)
    return {"conf": conf, "retry": retry}


def as_pool_process() -> None:
    """What a prefork pool process gets after the fork: ``worker_process_init``. An engine
    or session factory the user's code makes there exists only after it."""
    from celery.signals import worker_process_init

    worker_process_init.send(sender=None)


def _inspect(config: AuditConfig) -> dict[str, Any]:
    module = import_module(config.engine, "engine")
    user_settings = celery_settings(config.celery_app) if config.celery_app else {}
    try:
        as_pool_process()
    except BaseException as exc:  # noqa: BLE001
        raise ConfigError(
            f"Your worker_process_init handler raised {type(exc).__name__}: {exc}. The audit "
            f"sends that signal as a pool process gets it after the fork. Traceback:\n"
            f"{''.join(traceback.format_exception(exc))[-2000:]}") from None
    kind, engine = classify(attribute_of(module, config.engine, "engine"), config.engine)
    if engine is None:
        raise ConfigError(f"engine = {config.engine!r} is a session factory with no engine "
                          f"bound (bind=...); the audit needs the engine it uses.")
    url = engine.url
    if (url.host, url.port, url.database) != (PLACEHOLDER_HOST, PLACEHOLDER_PORT,
                                              PLACEHOLDER_DB):
        raise ConfigError(
            f"Your engine does not read its URL from ${config.url_env}: with that variable "
            f"set to the audit's address it still points at {url.host}:{url.port}/"
            f"{url.database}. Set url_env to the variable your code reads (url_env = "
            f"\"...\" in [tool.harness.audit], or --url-env).")
    driver = url.get_driver_name()
    if driver not in DRIVERS:
        raise ConfigError(f"Your engine uses the driver {driver!r}; the audit runs asyncpg "
                          f"and psycopg (postgresql+asyncpg://, postgresql+psycopg://).")
    if config.run not in BUILTIN_RUNNERS and not callable(import_object(config.run, "run")):
        raise ConfigError(f"run = {config.run!r} is not callable; name the function your "
                          f"tasks pass a coroutine to.")
    for name in config.retry_on:
        module, _, cls = name.rpartition(".")
        found = import_object(f"{module}:{cls}", "retry_on")
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise ConfigError(f"retry_on names {name!r}, which is not an exception class.")
    return {"kind": kind, "driver": driver, "user_settings": user_settings}


def main() -> int:
    config = AuditConfig.from_json(os.environ["HARNESS_AUDIT_PREFLIGHT"])
    for folder in reversed(config.search_path()):
        sys.path.insert(0, folder)
    try:
        found = _inspect(config)
    except ConfigError as exc:
        found = {"problem": str(exc)}
    print(_MARK + json.dumps(found), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(main())
