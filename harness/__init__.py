"""A fault-reproduction harness for Celery prefork workers running async SQLAlchemy.

Public names are re-exported here lazily, so ``python3 -m harness.bootstrap``
(which runs before the dependencies are installed) can import this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Scenario": "harness.scenario", "Variant": "harness.scenario",
    "Workload": "harness.scenario", "StackSpec": "harness.scenario",
    "Claim": "harness.scenario", "Role": "harness.scenario",
    "reproduces": "harness.scenario", "clean": "harness.scenario",
    "other_failure": "harness.scenario", "when": "harness.scenario",
    "needs_pgbouncer": "harness.scenario",
    "Signature": "harness.signatures", "Outcome": "harness.outcome",
    "assert_expected": "harness.plugin",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - one list of names, in _EXPORTS


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
