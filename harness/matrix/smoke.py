"""The smoke check: can an environment run a scenario at all, asked in seconds.

Responsibility: before an environment's scenarios run, prove inside it that the
stack imports, the scenario apps import, one real ``celery worker --pool=prefork``
of a scenario app boots on a private Redis, answers a control ping and runs one
call; and when it cannot, say so once, in one paragraph with the first error,
the packages it involves, what to pin, and the log tail.

Without it an environment whose worker dies at start (an old Celery next to today's
kombu: ``kombu.exceptions.VersionMismatch``) costs minutes of ``HARNESS_ERROR``
cells that read as regressions. With it, that environment has no cells at all,
the matrix legend says why, and ``harness matrix`` exits 3.

Two halves: :func:`main` runs in the environment's own interpreter
(``python -m harness.matrix.smoke``; the harness is installed editable there) and
writes a JSON verdict; :func:`check` runs it from the matrix, bounded in time, and
turns the verdict into a :class:`Smoke`. The call is Celery's own
``celery.accumulate`` task, which every app has: it runs in a pool process of the
scenario app's worker (after ``worker_process_init`` made the app's engine) and
needs no database, so the check needs only Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import _process

# A worker that dies at start is reported as soon as it dies; these bound a hang. The
# check takes 3 to 5 s on a quiet 2-core machine and up to 33 s under a load of 30.
SMOKE_TIMEOUT_S = 60.0
WORKER_START_TIMEOUT_S = 45.0
CALL_TIMEOUT_S = 10.0
# The app whose worker boots: it makes its engine in worker_process_init, as most do.
SMOKE_APP = "scenarios.apps.loop_bound_pool"
STACK_MODULES = ("celery", "kombu", "billiard", "redis", "sqlalchemy", "asyncpg", "psycopg")
STAGES = {"import": "importing the stack", "apps": "importing the scenario apps",
          "services": "starting Redis", "worker": "booting a prefork worker of " + SMOKE_APP,
          "call": "running one call on that worker", "run": "running the smoke check"}
# The last "package.module.Error: message" line of a traceback or log.
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Mismatch|Exit|Interrupt|"
                         r"Warning|Failure|Timeout)\w*)(: .*)?$")
_FRAME_PACKAGE = re.compile(r"site-packages/([A-Za-z0-9_]+)")


@dataclass
class Smoke:
    """What the smoke check of one environment saw.

    Attributes:
        ok: the worker booted, answered a ping and ran the call.
        seconds: wall time of the whole check.
        stage: where it failed (a key of ``STAGES``), None when ok.
        error: the first error, one line.
        detail: the traceback or the worker's log tail.
        log: the smoke check's own log (and the worker's, beside it).
    """

    ok: bool
    seconds: float
    stage: str | None = None
    error: str = ""
    detail: str = ""
    log: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 2), "stage": self.stage,
                "error": self.error, "log": self.log}


# --- inside the environment -----------------------------------------------------------

def first_error(text: str) -> str:
    """The exception line of the last traceback in ``text`` (else its last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line
    return lines[-1] if lines else "(no output)"


def _fail(stage: str, started: float, exc: BaseException | None = None, detail: str = ""
          ) -> dict[str, Any]:
    if detail:
        text, error = detail, first_error(detail)
    else:
        assert exc is not None
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        name = f"{type(exc).__module__}.{type(exc).__name__}".removeprefix("builtins.")
        error = f"{name}: {exc}".splitlines()[0]
    return {"ok": False, "stage": stage, "error": error, "detail": text[-4000:],
            "seconds": time.monotonic() - started}


def _smoke(backend_name: str, log_dir: Path, project_root: Path) -> dict[str, Any]:
    started = time.monotonic()
    try:
        for module in STACK_MODULES:
            __import__(module)
        from harness.errors import WorkerStartError
        from harness.services import backends
        from harness.task_support import WorkerSettings
        from harness.worker import CeleryWorker
    except Exception as exc:  # noqa: BLE001 - whatever breaks the import is the finding
        return _fail("import", started, exc)
    try:
        backend = backends.choose(backend_name)
        redis = backend.redis()
        redis.start()
    except Exception as exc:  # noqa: BLE001
        return _fail("services", started, exc)
    try:
        settings = WorkerSettings.for_variant(
            scenario="smoke", variant="smoke", driver="asyncpg",
            # Never connected to: the call below does not touch the database.
            database_url="postgresql+asyncpg://smoke:smoke@127.0.0.1:9/smoke",
            broker_url=redis.url(), queue=f"harness.smoke.{uuid.uuid4().hex}", config={})
        os.environ.update(settings.to_env())
        try:
            apps = sorted(p.stem for p in (project_root / "scenarios" / "apps").glob("*.py")
                          if not p.stem.startswith("_"))
            for app in apps:
                __import__(f"scenarios.apps.{app}")
        except Exception as exc:  # noqa: BLE001
            return _fail("apps", started, exc)
        try:
            worker = CeleryWorker(app_module=SMOKE_APP, settings=settings,
                                  log_path=log_dir / "smoke-worker.log", concurrency=1,
                                  project_root=project_root,
                                  start_timeout_s=WORKER_START_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001
            return _fail("worker", started, exc)
        try:
            try:
                worker.start()
            except Exception as exc:  # noqa: BLE001
                # A worker that died says why in its log (the tail ends the message);
                # anything else failed here, and the worker's log may still say more.
                formatted = "".join(traceback.format_exception(type(exc), exc,
                                                               exc.__traceback__))
                return _fail("worker", started, exc, detail=str(exc) if isinstance(
                    exc, WorkerStartError) else formatted + "\nworker log tail:\n"
                    + worker.log_tail(30))
            try:
                calls = worker.run("celery.accumulate", calls=1, timeout_s=CALL_TIMEOUT_S,
                                   kwargs={"index": 0})
            except Exception as exc:  # noqa: BLE001
                return _fail("call", started, exc)
            call = calls[0]
            if call.status.value != "ok":
                what = call.error.chain[-1].message if call.error else call.status.value
                return _fail("call", started, detail=f"the call ended {call.status.value}: "
                             f"{what}\n{worker.log_tail(30)}")
            return {"ok": True, "stage": None, "error": "", "detail": "",
                    "seconds": time.monotonic() - started, "worker_start_s": worker.start_s}
        finally:
            worker.stop(grace_s=0)
    finally:
        redis.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.matrix.smoke --out FILE``: exit 0 when the check passed."""
    parser = argparse.ArgumentParser(prog="python -m harness.matrix.smoke")
    parser.add_argument("--backend", default="local")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--project-root", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    verdict = _smoke(args.backend, args.out.parent, args.project_root.resolve())
    args.out.write_text(json.dumps(verdict, indent=1) + "\n")
    if not verdict["ok"]:
        print(verdict["detail"], file=sys.stderr)
    return 0 if verdict["ok"] else 1


# --- from the matrix --------------------------------------------------------------------

def check(python: Path, project_root: Path, log_dir: Path, *, backend: str,
          env: Mapping[str, str], timeout_s: float = SMOKE_TIMEOUT_S) -> Smoke:
    """Run the smoke check in the environment of ``python``, at most ``timeout_s``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, log = log_dir / "smoke.json", log_dir / "smoke.log"
    out.unlink(missing_ok=True)
    log.write_text("")
    started = time.monotonic()
    argv = [str(python), "-m", "harness.matrix.smoke", "--backend", backend, "--out", str(out),
            "--project-root", str(project_root)]
    proc = _process.ManagedProcess(argv, log, env=env, cwd=project_root)
    try:
        finished = _process.wait_for(lambda: not proc.alive(), timeout_s=timeout_s,
                                     interval_s=0.1)
    finally:
        proc.stop(grace_s=5)
    seconds = time.monotonic() - started
    if out.exists():
        verdict = json.loads(out.read_text())
        return Smoke(bool(verdict["ok"]), seconds, verdict.get("stage"), verdict.get("error", ""),
                     verdict.get("detail", ""), str(log))
    text = _process.tail(log, 40)
    if not finished:
        return Smoke(False, seconds, "run", f"no answer within {timeout_s:.0f} s", text, str(log))
    return Smoke(False, seconds, "import", first_error(text), text, str(log))


def involved(smoke: Smoke, installed: Mapping[str, str]) -> list[str]:
    """Installed distributions the failure names: the one that raised (its traceback's
    last site-packages frame) first, then those named in the error line."""
    names: list[str] = []
    frames = _FRAME_PACKAGE.findall(smoke.detail)
    if frames:
        names.append(frames[-1].lower().replace("_", "-"))
    words = re.findall(r"[a-z][a-z0-9_.-]*[a-z0-9]", smoke.error.lower())
    for word in words:
        for candidate in (word, word.removesuffix("-py")):
            if candidate in installed and len(candidate) > 3:
                names.append(candidate)
    return [n for n in dict.fromkeys(names) if n in installed]


def paragraph(env_id: str, smoke: Smoke, installed: Mapping[str, str], pins: Sequence[str],
              resolution: str, latest: bool) -> str:
    """The one-paragraph report of a failed smoke check, then its log tail."""
    names = involved(smoke, installed)
    found = [f"{n} {installed[n]}" for n in names]
    if found and _FRAME_PACKAGE.search(smoke.detail):
        found[0] += " (which raised it)"
    conflict = (f" It involves {' and '.join(found)}, installed next to the pins "
                f"{', '.join(pins)}." if names else f" The pins are {', '.join(pins)}.")
    pin = " or ".join(names) or "the package the error names"
    if latest:
        todo = (f"This is today's resolution of old pins (--resolve latest): a release made "
                f"since does not work with them. Run with the default --resolve dated to get "
                f"the companions of their day, or pin {pin} to a version of the pins' day in "
                f"a constraint file named by UV_CONSTRAINT (part of the environment's cache "
                f"key).")
    else:
        todo = (f"Pin {pin} to a version that works with the pins in a constraint file named "
                f"by UV_CONSTRAINT (part of the environment's cache key), or drop this "
                f"combination.")
    head = (f"Environment {env_id} cannot run its scenarios, so it has no cells in the "
            f"matrix: expected the smoke check (import the stack and the scenario apps, boot "
            f"one prefork worker, answer a ping, run one call) to pass, but it failed after "
            f"{smoke.seconds:.1f} s while {STAGES.get(smoke.stage or 'run', smoke.stage)} "
            f"with: {smoke.error}.{conflict} Resolution: {resolution}. {todo} Log: "
            f"{smoke.log}.")
    detail = "\n".join("    " + line for line in smoke.detail.strip().splitlines()[-12:])
    return head + ("\n" + detail if detail else "")


if __name__ == "__main__":
    sys.exit(main())
