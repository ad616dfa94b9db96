"""matrix-support.toml spans the support range: its lowest versions are pyproject's floors.

If a floor in pyproject.toml moves, the support matrix must move with it, or CI would
test a range users cannot install (or miss the one they can).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from harness.matrix import axes

if sys.version_info < (3, 11):  # pragma: no cover
    pytest.skip("reads pyproject.toml with tomllib", allow_module_level=True)
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {"python": project["requires-python"].removeprefix(">=")}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([a-z]+)(\[\w+\])?>=([\d.]+)", requirement)
        if match and match.group(1) in axes.PACKAGE_AXES:
            found[match.group(1)] = match.group(3)
    return found


def test_the_support_matrix_reaches_every_floor_and_starts_at_the_newest() -> None:
    support = axes.load_toml(ROOT / "matrix-support.toml")
    default = axes.load_toml(ROOT / "matrix.toml")
    for axis, floor in floors().items():
        lowest = support.axes[axis][-1]
        # Version("5.3") == Version("5.3.0"): the floor itself, not a release above it.
        assert Version(lowest) == Version(floor), (
            f"{axis}: matrix-support.toml stops at {lowest}, pyproject.toml's floor is {floor}")
    for axis in axes.PACKAGE_AXES:
        assert support.axes[axis][0] == default.axes[axis][0]  # the same newest stack
    assert len(axes.plan(support)) > len(axes.plan(default))
