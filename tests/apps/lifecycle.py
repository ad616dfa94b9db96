"""A Celery app for the harness's own tests: each task misbehaves in one known way.

Knobs (variant config): fail_at_import, sleep_at_import_s.
"""

from __future__ import annotations

import time

from harness.faults.cues import reach
from harness.knobs import Knob
from harness.task_support import call_index, make_app, mark_ran, settings

SETTINGS = settings(
    Knob("fail_at_import", bool, False, "raise while the worker imports this module"),
    Knob("sleep_at_import_s", (int, float), None, "sleep while the worker imports this module"),
)
app = make_app(__name__)

if SETTINGS.get("fail_at_import"):
    raise RuntimeError("this app fails at import on purpose")
if SETTINGS.get("sleep_at_import_s"):
    time.sleep(float(SETTINGS.get("sleep_at_import_s")))


@app.task
def echo(token: str) -> str:
    mark_ran(app, token)
    return token


@app.task
def hang_first(token: str) -> str:
    """The call with index 000 never finishes; the others answer at once."""
    if call_index(token) == 0:
        time.sleep(3600)
    return token


@app.task
def answer_wrong(token: str) -> str:
    return f"not-{token}"


@app.task
def raise_wrapped(token: str) -> str:
    """Raise what SQLAlchemy raises for an asyncpg failure: the driver error inside."""
    import asyncpg
    import sqlalchemy.exc

    driver = asyncpg.exceptions.InterfaceError(
        "cannot perform operation: another operation is in progress")
    raise sqlalchemy.exc.InterfaceError("select 1", {}, driver)


@app.task
def skip_body(token: str) -> str:
    """Returns without leaving the mark: to the harness, a body that never ran."""
    return token


@app.task
def reach_then_echo(token: str) -> str:
    """Announce the point ``midway`` (a fault may wait there), then answer."""
    reach(app, "midway")
    return token
