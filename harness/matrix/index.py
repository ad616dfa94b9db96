"""Resolve the package axes against the package index, before anything is built.

Responsibility: turn what the user wrote (``2.1.9``, ``2.0.x``, ``latest``) into
versions that exist on the package index, and fail with a message naming the package
and version, so a typo costs seconds, not a half-built matrix.

The index is asked through ``pip index versions`` run by this interpreter: pip
reads the machine's own configuration (``pip config list``: index URL, extra
indexes, certificates), so the matrix sees exactly the index its installs use.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from packaging.version import InvalidVersion, Version

from harness.errors import ConfigError, HarnessError
from harness.matrix.axes import AXES, PACKAGE_AXES, MatrixSpec

INDEX_TIMEOUT_S = 120
# psycopg[binary] installs psycopg-binary of the same version; a few psycopg
# releases (3.1.7, for one) have no binary build, so both must exist.
ALSO_NEEDS = {"psycopg": "psycopg-binary"}
VersionLister = Callable[[str], list[str]]


def index_versions(package: str) -> list[str]:
    """Release versions of ``package`` on the configured index, newest first.

    Raises:
        HarnessError: pip could not ask the index (network, configuration).
        ConfigError: the index has no package of that name.
    """
    argv = [sys.executable, "-m", "pip", "index", "versions", package]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=INDEX_TIMEOUT_S,
                             check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"Asking the package index for {package}'s versions took more "
                           f"than {INDEX_TIMEOUT_S} s ({' '.join(argv)}). Check the network "
                           f"and 'pip config list', then try again.") from exc
    text = out.stdout + out.stderr
    found = re.search(r"^Available versions: (.+)$", text, re.MULTILINE)
    if found:
        return [v.strip() for v in found.group(1).split(",")]
    tail = "\n".join(text.strip().splitlines()[-8:])
    if "No matching distribution" in text:
        raise ConfigError(f"The package index has no package named {package!r}. "
                          f"pip said:\n{tail}")
    raise HarnessError(f"Could not list the versions of {package} on the package index "
                       f"({' '.join(argv)} exited {out.returncode}). Check the network and "
                       f"'pip config list'. pip said:\n{tail}")


def version_key(version: str) -> Version:
    """A sort key for release strings; an unreadable one sorts first."""
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


def resolve(package: str, wanted: str, available: list[str]) -> str:
    """One exact version for ``wanted`` (exact, ``X.Y.x`` / ``X.Y.*``, or ``latest``).

    Raises:
        ConfigError: no release matches; the message lists the nearest ones.
    """
    releases = sorted((v for v in available if not version_key(v).is_prerelease),
                      key=version_key, reverse=True)
    if wanted == "latest":
        if releases:
            return releases[0]
    elif wanted.endswith((".x", ".*")):
        prefix = wanted[:-1]
        line = [v for v in releases if v.startswith(prefix)]
        if line:
            return line[0]
    elif wanted in available:
        return wanted
    else:
        near = [v for v in releases if v.startswith(wanted.rsplit(".", 1)[0] + ".")][:5]
        hint = f" Releases of that line: {', '.join(near)}." if near else ""
        raise ConfigError(f"{package} {wanted} does not exist on the package index "
                          f"(pip index versions {package}).{hint} Fix the version in "
                          f"matrix.toml or in --{package}.")
    raise ConfigError(f"No release of {package} matches {wanted!r} on the package index "
                      f"(newest: {', '.join(releases[:5]) or 'none'}). Fix the version in "
                      f"matrix.toml or in --{package}.")


def resolve_spec(spec: MatrixSpec, lister: VersionLister | None = None) -> MatrixSpec:
    """The same spec with every package version resolved and checked on the index.

    The packages are asked in parallel: each question is a network round trip, and
    none of them uses the CPU. ``lister`` defaults to :func:`index_versions`.
    """
    lister = lister or index_versions
    packages = sorted(set(PACKAGE_AXES) | {ALSO_NEEDS[p] for p in ALSO_NEEDS})
    with ThreadPoolExecutor(max_workers=4) as pool:
        listed = dict(zip(packages, pool.map(lister, packages)))
    # Only the package axes are on the index; the others pass through unchanged.
    axes: dict[str, list[str]] = {a: list(v) for a, v in spec.axes.items()}
    for axis in PACKAGE_AXES:
        resolved = [resolve(axis, wanted, listed[axis]) for wanted in spec.axes[axis]]
        companion = ALSO_NEEDS.get(axis)
        for version in resolved:
            if companion and version not in listed[companion]:
                raise ConfigError(f"{axis} {version} exists, but {companion} {version} (its "
                                  f"binary build, installed by {axis}[binary]) does not. Pick "
                                  f"another {axis} version.")
        axes[axis] = list(dict.fromkeys(resolved))  # "2.1.x" and "2.1.9" are one value
    return MatrixSpec(axes={a: axes[a] for a in AXES if a in axes}, mode=spec.mode,
                      source=spec.source)
