"""Build one isolated, cached virtual environment per matrix combination.

Responsibility: given a :class:`Combination` and its interpreter, return a
virtualenv that has exactly those pinned versions and the project installed,
reusing the one built last time when nothing that decides its contents changed.

Why an editable install: the environment pins third-party versions; the harness
and the scenarios under test are always this working tree. So editing a scenario
never needs a rebuild, and the cache key is only what decides the installed
packages (interpreter, pins, pyproject.toml, project folder, installer, the
resolution mode and its cutoff date, and the installer settings that change what
resolves: index locations, constraint and override files by their contents). The
service axes (PgBouncer) install nothing: environments that differ only in them share
one folder, named by :attr:`Combination.venv_id`.

Installer: uv when it is installed (seconds per environment, a shared wheel
cache), else ``python -m venv`` + pip. uv does not read pip's configuration, so
the index URL, extra indexes, find-links and CA file of ``pip config list`` are
handed to it as its own settings: both installers see the same index.

Resolution: see :mod:`harness.matrix.resolution` (``dated`` by default, uv's
``--exclude-newer``; ``latest`` is today's). pip has no such option, so a dated
environment needs uv (a dependency of the project). Every built environment records
its full package list (``uv pip freeze``) in its stamp.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import _process, scratch
from harness.errors import HarnessError
from harness.matrix.axes import PACKAGE_AXES, Combination
from harness.matrix.interpreters import Interpreter
from harness.matrix.resolution import LATEST, Resolution, parse_freeze

STAMP = ".harness-env.json"
BUILD_TIMEOUT_S = 900
# The distribution that carries each package axis (psycopg[binary] adds psycopg-binary).
DISTRIBUTION = {"sqlalchemy": "sqlalchemy", "celery": "celery", "asyncpg": "asyncpg",
                "psycopg": "psycopg"}
# Installer settings that change what an environment resolves to. Variables naming
# files (constraints, overrides) count by the files' contents, not their names.
SETTINGS = ("UV_DEFAULT_INDEX", "UV_INDEX", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL",
            "UV_FIND_LINKS", "UV_INDEX_STRATEGY", "UV_PRERELEASE", "UV_RESOLUTION",
            "UV_EXCLUDE_NEWER", "UV_NO_BINARY", "UV_NO_BUILD", "UV_NO_BINARY_PACKAGE",
            "UV_NO_BUILD_PACKAGE", "UV_TORCH_BACKEND", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
            "PIP_FIND_LINKS", "PIP_NO_BINARY", "PIP_ONLY_BINARY", "PIP_PRE")
FILE_SETTINGS = ("UV_CONSTRAINT", "UV_OVERRIDE", "UV_BUILD_CONSTRAINT", "PIP_CONSTRAINT")


class EnvBuildError(HarnessError):
    """An environment could not be created or did not get the pinned versions."""


@dataclass(frozen=True)
class BuiltEnv:
    """A ready environment: its folder, its interpreter, and how it was obtained."""

    combo: Combination
    path: Path
    reused: bool
    seconds: float
    resolution: Resolution = field(default_factory=lambda: Resolution(LATEST))
    installed: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        """What decided its contents, for matrix-env.json: the resolution, the installer
        settings that mattered, and every installed distribution with its version."""
        return {"resolution": self.resolution.to_dict(), "install_settings": self.settings,
                "installed": self.installed}

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def cache_root() -> Path:
    """``$HARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME`` or ~/.cache, + the project's folder."""
    if os.environ.get("HARNESS_CACHE_DIR"):
        return Path(os.environ["HARNESS_CACHE_DIR"]) / "envs"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "celery-async-sa-harness" / "envs"


def find_uv() -> str | None:
    """uv on PATH or next to this interpreter (``pip install uv`` into .venv)."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


def _file_digest(names: str) -> str:
    """The contents of the files a setting names (space-separated), hashed."""
    digest = hashlib.sha256()
    for name in names.split():
        path = Path(name.removeprefix("file://"))
        digest.update(name.encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"(unreadable)")
    return "sha256:" + digest.hexdigest()[:16]


def install_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The installer settings in ``env`` that decide what resolves (files by contents)."""
    found = {k: env[k] for k in SETTINGS if env.get(k)}
    found.update({k: f"{env[k]} ({_file_digest(env[k])})" for k in FILE_SETTINGS
                  if env.get(k)})
    return dict(sorted(found.items()))


def env_key(combo: Combination, interpreter: Interpreter, project_root: Path,
            installer: str, resolution: Resolution | None = None,
            settings: Mapping[str, str] | None = None) -> str:
    """Folder name: readable id plus a hash of everything that decides the contents.

    Neither part depends on the service axes (``pgbouncer``): they change which
    services the scenarios run against, not what is installed. ``resolution`` and
    ``settings`` (:func:`install_settings`) enter the hash only when they say
    something, so an environment of today's resolution with no installer settings
    keeps the folder it had before they were part of the key.
    """
    facts: dict[str, Any] = {
        "requirements": combo.requirements(), "python": str(interpreter.path),
        "python_version": interpreter.version, "project": str(project_root.resolve()),
        "pyproject": hashlib.sha256((project_root / "pyproject.toml").read_bytes())
        .hexdigest(), "installer": installer}
    if resolution is not None and resolution.mode != LATEST:
        facts["resolution"] = resolution.to_dict()
    if settings:
        facts["settings"] = dict(settings)
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:10]
    return f"{combo.venv_id}-{digest}"


def run_bounded(argv: Sequence[str], log_path: Path, *, timeout_s: float, what: str,
                env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a command to completion within ``timeout_s``; raise with the log tail if not.

    Raises:
        EnvBuildError: it timed out (the process group is killed) or exited non-zero.
    """
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
    # A private TMPDIR, removed afterwards: uv leaves build locks there
    # (uv-setuptools-<hash>.lock), and nothing a run starts may outlive it.
    tmp = scratch.mkdtemp("installer-")
    proc = _process.ManagedProcess(argv, log_path, cwd=cwd,
                                   env={**(env if env is not None else os.environ),
                                        "TMPDIR": str(tmp)})
    try:
        finished = _process.wait_for(lambda: not proc.alive(), timeout_s=timeout_s,
                                     interval_s=0.2)
        code = proc.popen.returncode if finished else None
    finally:
        proc.stop(grace_s=5)
        shutil.rmtree(tmp, ignore_errors=True)
    if not finished:
        raise EnvBuildError(f"Timed out after {timeout_s:.0f} s waiting for {what} "
                            f"({' '.join(argv[:4])} ...). Last lines of {log_path}:\n"
                            f"{_process.tail(log_path, 25)}")
    if code != 0:
        raise EnvBuildError(f"{what} failed (exit {code}). Last lines of {log_path}:\n"
                            f"{_process.tail(log_path, 25)}\nIf a pinned version has no "
                            f"build for this Python, drop that version or that Python.")


@functools.lru_cache(maxsize=1)
def _pip_config() -> str:
    """``pip config list``, asked once per process (a subprocess: about a second)."""
    try:
        return subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True, timeout=30, check=False).stdout
    except subprocess.TimeoutExpired:
        return ""


def _pip_settings() -> dict[str, str]:
    """pip's effective configuration as ``{'index-url': ..., ...}`` (last value wins)."""
    out = _pip_config()
    found: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        found[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    for key in ("index-url", "extra-index-url", "find-links", "cert", "constraint"):
        if os.environ.get("PIP_" + key.upper().replace("-", "_")):
            found[key] = os.environ["PIP_" + key.upper().replace("-", "_")]
    return found


def uv_environment() -> dict[str, str]:
    """This process's environment plus uv settings that mirror pip's configuration."""
    pip = _pip_settings()
    env = dict(os.environ)
    # pip's constraint files hold for uv too: they decide what a user's installs get.
    mapping = {"index-url": "UV_DEFAULT_INDEX", "extra-index-url": "UV_INDEX",
               "find-links": "UV_FIND_LINKS", "cert": "SSL_CERT_FILE",
               "constraint": "UV_CONSTRAINT"}
    for key, variable in mapping.items():
        if not pip.get(key) or variable in env:
            continue
        # uv refuses local (file://) locations that do not exist; pip only warns.
        values = [v for v in pip[key].split() if not v.startswith("file://")
                  or Path(v[7:]).exists()]
        if values:
            env[variable] = ("," if key == "find-links" else " ").join(values)
    if "UV_INDEX" in env and "UV_INDEX_STRATEGY" not in env:
        # pip picks the best version across all indexes; uv by default takes every
        # version of a package from the first index that has it, so a partial
        # extra index would hide the pinned release. Behave like pip.
        env["UV_INDEX_STRATEGY"] = "unsafe-best-match"
    return env


def _check_versions(combo: Combination, python: Path, log_path: Path) -> dict[str, str]:
    """Ask the new environment which versions it really has; they must be the pins."""
    code = ("import json, importlib.metadata as m; print(json.dumps({n: m.version(n) "
            f"for n in {[DISTRIBUTION[a] for a in PACKAGE_AXES]!r}}}))")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                             timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise EnvBuildError(f"The new environment's python ({python}) did not answer within "
                            f"60 s when asked for its package versions.") from exc
    if out.returncode != 0:
        raise EnvBuildError(f"The new environment at {python.parent.parent} cannot import "
                            f"its packages:\n{out.stderr[-1500:]}\nSee {log_path}.")
    have = json.loads(out.stdout)
    wrong = {a: have.get(DISTRIBUTION[a]) for a in PACKAGE_AXES
             if have.get(DISTRIBUTION[a]) != combo.versions[a]}
    if wrong:
        raise EnvBuildError(f"The environment for {combo.venv_id} got {wrong} instead of the "
                            f"pinned versions. See {log_path}.")
    return have


def _freeze(python: Path, uv: str | None, env: Mapping[str, str] | None) -> dict[str, str]:
    """Every distribution installed in the environment, with its version."""
    argv = ([uv, "pip", "freeze", "--python", str(python)] if uv
            else [str(python), "-m", "pip", "freeze"])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                             env=dict(env) if env else None)
    except subprocess.TimeoutExpired:
        return {}
    return parse_freeze(out.stdout) if out.returncode == 0 else {}


def build(combo: Combination, interpreter: Interpreter, project_root: Path, *,
          root: Path | None = None, log_path: Path, timeout_s: float = BUILD_TIMEOUT_S,
          resolution: Resolution | None = None) -> BuiltEnv:
    """Return the environment for ``combo``, building it only when it is not cached.

    Raises:
        EnvBuildError: it could not be built, or did not get the pins; also a dated
            ``resolution`` without uv (pip cannot resolve as of a date).
    """
    started = time.monotonic()
    resolution = resolution or Resolution(LATEST)
    uv = find_uv()
    installer = "uv" if uv else "pip"
    if resolution.cutoff and not uv:
        raise EnvBuildError(f"Resolving {combo.venv_id} as of {resolution.cutoff[:10]} needs "
                            f"uv (pip cannot resolve as of a date), and no uv was found. "
                            f"Install it (pip install uv) or run with --resolve latest.")
    # pip's own configuration, mirrored as uv settings, keys pip-built environments too.
    env = uv_environment()
    settings = install_settings(env)
    path = (root or cache_root()) / env_key(combo, interpreter, project_root, installer,
                                            resolution, settings)
    stamp = path / STAMP
    if stamp.exists() and (path / "bin" / "python").exists():
        try:
            installed = json.loads(stamp.read_text()).get("installed") or {}
        except (OSError, ValueError):
            installed = {}
        return BuiltEnv(combo, path, reused=True, seconds=time.monotonic() - started,
                        resolution=resolution, installed=installed or _freeze(
                            path / "bin" / "python", uv, env), settings=settings)
    # No stamp means a build that never finished: start that folder again from nothing.
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    python = path / "bin" / "python"
    what = f"the environment {combo.venv_id}"
    packages = ["-e", str(project_root), *combo.requirements()]
    if uv:
        run_bounded([uv, "venv", "--quiet", "--python", str(interpreter.path), str(path)],
                    log_path, timeout_s=120, what=f"uv to create {what}", env=env)
        # Compile bytecode now, so the first scenario run does not pay for it in
        # every worker's start time (and in its timeouts).
        run_bounded([uv, "pip", "install", "--compile-bytecode", "--python", str(python),
                     *resolution.uv_args(), *packages], log_path, timeout_s=timeout_s,
                    what=f"uv to install the pinned packages into {what} (resolution: "
                         f"{resolution.describe()})", env=env)
    else:
        run_bounded([str(interpreter.path), "-m", "venv", str(path)], log_path,
                    timeout_s=120, what=f"venv to create {what}")
        run_bounded([str(python), "-m", "pip", "install", "--quiet", *packages], log_path,
                    timeout_s=timeout_s, what=f"pip to install the pinned packages into {what}")
    have = _check_versions(combo, python, log_path)
    installed = _freeze(python, uv, env)
    stamp.write_text(json.dumps({"id": combo.venv_id, "installer": installer, "packages": have,
                                 "python": interpreter.version,
                                 "project": str(project_root.resolve()),
                                 "resolution": resolution.to_dict(), "settings": settings,
                                 "installed": installed,
                                 "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    prune_superseded(path, project_root)
    return BuiltEnv(combo, path, reused=False, seconds=time.monotonic() - started,
                    resolution=resolution, installed=installed, settings=settings)


def prune_superseded(current: Path, project_root: Path) -> list[Path]:
    """Remove older builds of the same combination for this checkout.

    A change to pyproject.toml, the interpreter or the installer gives a combination
    a new folder; without this the cache would keep every old one (about 70 MB each).
    Builds of other checkouts are theirs to keep; so is anything this code did not make.
    So is a build of another resolution (``--resolve latest`` next to dated) or of other
    installer settings (a constraint file): it is an alternative, not an older build,
    and another run may be using it right now.
    """
    combo_id = current.name.rsplit("-", 1)[0]
    try:
        mine = json.loads((current / STAMP).read_text())
    except (OSError, ValueError):
        mine = {}
    removed = []
    for sibling in current.parent.glob(f"{combo_id}-*"):
        if sibling == current or sibling.name.rsplit("-", 1)[0] != combo_id:
            continue
        try:
            stamp = json.loads((sibling / STAMP).read_text())
        except (OSError, ValueError):
            stamp = {}
        # Stamps written before the project was recorded belong to whoever built them:
        # only a folder this checkout provably made, or an abandoned build, goes.
        if stamp and stamp.get("project") != str(project_root.resolve()):
            continue
        if stamp and any(stamp.get(k, {}) != mine.get(k, {}) for k in ("resolution", "settings")
                         if k in stamp):
            continue  # an alternative of this combination, not an older build
        if not stamp and time.time() - sibling.stat().st_mtime < BUILD_TIMEOUT_S:
            continue  # maybe another run building it right now
        shutil.rmtree(sibling, ignore_errors=True)
        removed.append(sibling)
    return removed
