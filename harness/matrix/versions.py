"""Check every version of a matrix before anything is built.

Responsibility: resolve what the user wrote (``2.1.9``, ``2.0.x``, ``latest``) to
versions that exist on the package index, find a Python interpreter for each
Python version, and find a PgBouncer for each PgBouncer version (the local binary
of that line, else the docker image ``harness-pgbouncer:X.Y``). Everything here
fails with a message naming the package and version, so a typo costs seconds, not
a half-built matrix.

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
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from harness import environment
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


def find_pythons(spec: MatrixSpec, root: Path | None = None,
                 wanted: Iterable[str] | None = None) -> Mapping[str, Interpreter]:
    """An interpreter for every value of the python axis (or of ``wanted``, the ones the
    planned environments use), or the first clear error."""
    values = spec.axes["python"] if wanted is None else list(dict.fromkeys(wanted))
    return {value: find_python(value, root) for value in values}


# --- the pgbouncer axis -------------------------------------------------------------
LOCAL = "local"
PGBOUNCER_IMAGE = "harness-pgbouncer:{}"
IMAGE_VARIABLE = "HARNESS_IMAGE_PGBOUNCER"
# The PgBouncer images docker/build.sh makes, and the Debian release each comes from.
BUILDABLE = {"1.18": "Debian 12 bookworm", "1.24": "Debian 13 trixie",
             "1.26": "Debian forky, testing (an optional suite: HARNESS_SUITES=forky)"}
BUILD_HINT = ("'bash docker/build.sh' builds them offline from Debian packages ("
              + ", ".join(f"{PGBOUNCER_IMAGE.format(v)} from {d}" for v, d in BUILDABLE.items())
              + ", plus the PostgreSQL and Redis images the docker backend also needs); as "
              "root, 'bash docker/ci-setup.sh' first installs and starts a Docker engine if "
              "there is none")


def pgbouncer_line(version: str) -> str:
    """``1.24.1`` -> ``1.24``: the pgbouncer axis names a release line."""
    return ".".join(version.split(".")[:2])


@dataclass(frozen=True)
class PgBouncerSource:
    """Where an environment's scenarios get the PgBouncer of one pgbouncer axis value.

    Attributes:
        version: the axis value, ``X.Y``.
        backend: ``local`` (the binary on PATH) or ``docker``.
        found: the full version found (``1.18.0``), from the binary or the image's label.
        image: the PgBouncer image the docker backend uses (None for ``local``).
    """

    version: str
    backend: str
    found: str
    image: str | None = None

    def pytest_args(self) -> list[str]:
        """Arguments for the environment's pytest (before the user's, which win)."""
        return ["--backend", self.backend]

    def environ(self) -> dict[str, str]:
        """Variables for the environment's pytest process."""
        return {IMAGE_VARIABLE: self.image} if self.image else {}

    def describe(self) -> str:
        where = "the local binary" if self.backend == "local" else f"docker image {self.image}"
        return f"PgBouncer {self.found}, {where}"


@dataclass(frozen=True)
class DockerState:
    """What the Docker engine can offer the pgbouncer axis.

    Attributes:
        problem: why the docker backend cannot run here (one clause), or None.
        pgbouncer_images: every ``harness-pgbouncer:*`` image present -> the PgBouncer
            version it carries (None when unknown).
        missing: the other images the docker backend needs that are not present.
    """

    problem: str | None = None
    pgbouncer_images: Mapping[str, str | None] = field(default_factory=dict)
    missing: tuple[str, ...] = ()


def docker_state() -> DockerState:
    """Ask the Docker engine (if any) which images it has. Starts no service."""
    try:
        from harness.services import docker as docker_services
        from harness.services import docker_engine as engine
    except ImportError as exc:
        return DockerState(problem=f"the docker backend could not be loaded ({exc})")
    if engine.IMPORT_ERROR is not None:
        return DockerState(problem=f"the Python package testcontainers is not installed "
                                   f"({engine.IMPORT_ERROR})")
    try:
        engine.ping()
        listed = engine.client().images.list(name=PGBOUNCER_IMAGE.split(":")[0])
        missing = tuple(f"{engine.image(s)} ({engine.IMAGE_SETTINGS[s][0]})"
                        for s in ("postgres", "redis")
                        if not (engine.pull_allowed() or engine.image_present(engine.image(s))))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine means "no"
        return DockerState(problem=f"no Docker engine answers ({str(exc).splitlines()[0][:160]})")
    tags = sorted(t for image in listed for t in image.tags)
    return DockerState(pgbouncer_images={t: docker_services.image_pgbouncer_version(t)
                                         for t in tags}, missing=missing)


def _pgbouncer_form(value: str) -> None:
    if value != LOCAL and not re.fullmatch(r"\d+\.\d+", value):
        hint = (f" (write {pgbouncer_line(value)}: the axis names a release line, and the "
                f"patch release is whatever the binary or image has)"
                if re.fullmatch(r"\d+\.\d+\.\d+", value) else "")
        raise ConfigError(f"PgBouncer version {value!r} is not of the form X.Y or 'local'"
                          f"{hint}. Write for example --pgbouncer 1.18 1.24, or "
                          f"pgbouncer = [\"1.18\", \"1.24\"] in matrix.toml.")


def resolve_pgbouncer(spec: MatrixSpec, local: Callable[[], str | None] | None = None
                      ) -> MatrixSpec:
    """Check the form of the pgbouncer axis and turn ``local`` into the binary's ``X.Y``.

    Cheap (no Docker): environment ids must be known before planning, and ``harness
    matrix plan`` and the run must agree on them. Whether each value can really run
    here is :func:`pgbouncer_sources`' question, asked for the planned environments.

    Raises:
        ConfigError: a value of another form, or ``local`` with no pgbouncer installed.
    """
    local = local or environment.pgbouncer_version
    values = []
    for value in spec.axes["pgbouncer"]:
        _pgbouncer_form(value)
        if value == LOCAL:
            found = local()
            if not found:
                raise ConfigError(
                    "PgBouncer 'local' means the installed pgbouncer binary, but there is "
                    "no pgbouncer on PATH. Install it (apt-get install pgbouncer; 'harness "
                    "doctor' shows what is found) or name a version that has a docker "
                    "image, e.g. --pgbouncer 1.18 1.24 (" + BUILD_HINT + ").")
            value = pgbouncer_line(found)
        values.append(value)
    axes = {**spec.axes, "pgbouncer": list(dict.fromkeys(values))}
    return MatrixSpec(axes={a: axes[a] for a in AXES if a in axes}, mode=spec.mode,
                      source=spec.source)


def _available(local_found: str | None, state: DockerState) -> str:
    have = [f"the local pgbouncer is {local_found}" if local_found
            else "there is no pgbouncer on PATH"]
    if state.problem:
        have.append(f"the docker backend cannot run ({state.problem})")
    elif state.pgbouncer_images:
        have.append("the Docker engine has " + ", ".join(
            f"{tag} ({found or 'version unknown'})"
            for tag, found in state.pgbouncer_images.items()))
    else:
        have.append("the Docker engine has no harness-pgbouncer image")
    return "; ".join(have)


def pgbouncer_sources(values: Iterable[str], local: Callable[[], str | None] | None = None,
                      docker: Callable[[], DockerState] | None = None
                      ) -> dict[str, PgBouncerSource]:
    """Where each pgbouncer value comes from, checked before anything is built.

    A value equal to the local binary's ``X.Y`` runs on the local backend. Any other
    needs the docker backend: an engine that answers, the image
    ``harness-pgbouncer:X.Y`` carrying that version, and the PostgreSQL and Redis
    images. The engine is asked only when some value needs it. ``local`` and ``docker``
    default to :func:`harness.environment.pgbouncer_version` and :func:`docker_state`.

    Raises:
        ConfigError: a value that cannot run here; the message names the version, what
            is available and what to do.
    """
    local_found = (local or environment.pgbouncer_version)()
    docker = docker or docker_state
    state: DockerState | None = None
    sources = {}
    for value in dict.fromkeys(values):
        _pgbouncer_form(value)
        if local_found and pgbouncer_line(local_found) == value:
            sources[value] = PgBouncerSource(value, "local", local_found)
            continue
        state = state or docker()
        image = PGBOUNCER_IMAGE.format(value)
        found = state.pgbouncer_images.get(image)
        if state.problem:
            why = f"it needs the docker backend, which cannot run here ({state.problem})"
        elif image not in state.pgbouncer_images:
            why = f"it needs the docker image {image}, which the Docker engine does not have"
        elif found and pgbouncer_line(found) != value:
            why = f"the image {image} carries PgBouncer {found}, not {value}"
        elif state.missing:
            why = (f"the docker backend also needs the image(s) {', '.join(state.missing)}, "
                   f"which are not present")
        else:
            sources[value] = PgBouncerSource(value, "docker", found or value, image)
            continue
        if value in BUILDABLE:
            todo = f"Build the images: {BUILD_HINT}."
        else:
            todo = (f"docker/build.sh knows only PgBouncer {' and '.join(BUILDABLE)}: pick one "
                    f"of those, install a pgbouncer {value}.x binary, or tag a PgBouncer "
                    f"{value} image as {image} (see docker/README.md).")
        raise ConfigError(f"PgBouncer {value} cannot run here: {why}. Available: "
                          f"{_available(local_found, state)}. {todo}")
    return sources
