"""The audit as a pytest module: one test per hazard, results in the usual results.json.

From the root of a project whose pyproject.toml has ``[tool.harness.audit]``::

    pytest --pyargs harness.audit.suite

``harness audit`` runs this module too, passing the checked input in
``HARNESS_AUDIT_CONFIG``; run directly, it reads pyproject.toml and imports the
user's modules once (:mod:`harness.audit.preflight`) at collection, so bad input
stops the run before any service starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.audit import config as audit_config
from harness.audit import preflight
from harness.audit.hazards import audit_scenario
from harness.outcome import Outcome
from harness.plugin import assert_expected


def _load() -> audit_config.AuditConfig:
    raw = os.environ.get(audit_config.CONFIG_ENV)
    if raw:
        return audit_config.AuditConfig.from_json(raw)
    root = Path.cwd()
    found = audit_config.build(root, audit_config.read_pyproject(root), {})
    return preflight.check(found)


CONFIG = _load()
SCENARIO = audit_scenario(CONFIG)


def test_variant(variant_run):
    accepted = variant_run.variant.name in CONFIG.accept
    if accepted and not variant_run.passed \
            and variant_run.outcome is not Outcome.HARNESS_ERROR:
        pytest.xfail(f"accepted hazard {variant_run.variant.name} reproduced: "
                     f"{variant_run.outcome.value}")
    assert_expected(variant_run)
