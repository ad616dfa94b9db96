"""Find a Python interpreter on this machine for each value of the python axis.

Responsibility: pyenv's interpreters first, then ``pythonX.Y`` on PATH. A value
this machine has no interpreter for fails with a message saying where it looked;
:mod:`harness.matrix.sources` then decides whether a container can run it instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError
from harness.matrix.axes import MatrixSpec
from harness.matrix.index import version_key


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter for one value of the python axis."""

    path: Path
    version: str  # full, e.g. 3.13.0


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
        best = max(candidates, key=version_key)
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


def find_pythons(spec: MatrixSpec, root: Path | None = None,
                 wanted: Iterable[str] | None = None) -> Mapping[str, Interpreter]:
    """An interpreter for every value of the python axis (or of ``wanted``, the ones the
    planned environments use), or the first clear error."""
    values = spec.axes["python"] if wanted is None else list(dict.fromkeys(wanted))
    return {value: find_python(value, root) for value in values}
