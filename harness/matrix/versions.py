"""Check every version of a matrix before anything is built.

Responsibility: resolve what the user wrote (``2.1.9``, ``2.0.x``, ``latest``) to
versions that exist on the package index, and find a Python interpreter for each
Python version. Everything here fails with a message naming the package and
version, so a typo costs seconds, not a half-built matrix.

The index is asked through ``pip index versions`` run by this interpreter: pip
reads the machine's own configuration (``pip config list``: index URL, extra
indexes, certificates), so the matrix sees exactly the index its installs use.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from harness.errors import ConfigError, HarnessError
from harness.matrix.axes import AXES, PACKAGE_AXES, MatrixSpec

INDEX_TIMEOUT_S = 120
# psycopg[binary] installs psycopg-binary of the same version; a few psycopg
# releases (3.1.7, for one) have no binary build, so both must exist.
ALSO_NEEDS = {"psycopg": "psycopg-binary"}
VersionLister = Callable[[str], list[str]]


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter for one value of the python axis."""

    path: Path
    version: str  # full, e.g. 3.13.0


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


def _sort_key(version: str) -> Version:
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0")


def resolve(package: str, wanted: str, available: list[str]) -> str:
    """One exact version for ``wanted`` (exact, ``X.Y.x`` / ``X.Y.*``, or ``latest``).

    Raises:
        ConfigError: no release matches; the message lists the nearest ones.
    """
    releases = sorted((v for v in available if not _sort_key(v).is_prerelease),
                      key=_sort_key, reverse=True)
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
    axes: dict[str, list[str]] = {"python": list(spec.axes["python"])}
    for axis in PACKAGE_AXES:
        resolved = [resolve(axis, wanted, listed[axis]) for wanted in spec.axes[axis]]
        companion = ALSO_NEEDS.get(axis)
        for version in resolved:
            if companion and version not in listed[companion]:
                raise ConfigError(f"{axis} {version} exists, but {companion} {version} (its "
                                  f"binary build, installed by {axis}[binary]) does not. Pick "
                                  f"another {axis} version.")
        axes[axis] = list(dict.fromkeys(resolved))  # "2.1.x" and "2.1.9" are one value
    return MatrixSpec(axes={a: axes[a] for a in AXES}, mode=spec.mode, source=spec.source)


def pyenv_root() -> Path:
    """Where pyenv keeps its interpreters: $PYENV_ROOT, ``pyenv root``, or ~/.pyenv."""
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10,
                                 check=False)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except subprocess.TimeoutExpired:
            pass  # fall back to the default location below
    return Path.home() / ".pyenv"


def _exact_version(python: Path) -> str | None:
    try:
        out = subprocess.run([str(python), "-c",
                              "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(wanted: str, root: Path | None = None) -> Interpreter:
    """The newest interpreter of the ``X.Y`` line (or exactly ``X.Y.Z``).

    Looks in pyenv's versions folder first, then for ``pythonX.Y`` on PATH (what
    actions/setup-python and Debian provide).

    Raises:
        ConfigError: no such interpreter; the message says where it looked.
    """
    if not re.fullmatch(r"3\.\d+(\.\d+)?", wanted):
        raise ConfigError(f"Python version {wanted!r} is not of the form 3.Y or 3.Y.Z; "
                          f"write for example --python 3.11 3.13.")
    root = root or pyenv_root()
    candidates = []
    for folder in (root / "versions").glob(f"{wanted}*"):
        name = folder.name
        if (re.fullmatch(r"\d+\.\d+\.\d+", name) and (folder / "bin" / "python").exists()
                and (name == wanted or name.startswith(wanted + "."))):
            candidates.append(name)
    if candidates:
        best = max(candidates, key=_sort_key)
        return Interpreter(root / "versions" / best / "bin" / "python", best)
    minor = ".".join(wanted.split(".")[:2])
    on_path = shutil.which(f"python{minor}")
    if on_path:
        exact = _exact_version(Path(on_path))
        if exact and (exact == wanted or exact.startswith(wanted + ".") or wanted == minor):
            return Interpreter(Path(on_path), exact)
    raise ConfigError(f"No Python {wanted} interpreter was found: looked for "
                      f"{root}/versions/{wanted}*/bin/python and for python{minor} on PATH. "
                      f"Install it (pyenv install {wanted}, or your system's python{minor} "
                      f"package), or drop {wanted} from the python axis.")


def find_pythons(spec: MatrixSpec, root: Path | None = None) -> Mapping[str, Interpreter]:
    """An interpreter for every value of the python axis, or the first clear error."""
    return {wanted: find_python(wanted, root) for wanted in spec.axes["python"]}
