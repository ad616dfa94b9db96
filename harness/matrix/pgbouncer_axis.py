"""Find a PgBouncer for each value of the pgbouncer axis, before anything is built.

Responsibility: check the form of each value (a release line, ``X.Y``, or
``local``), and say where each comes from: the local binary of that line, else the
docker image ``harness-pgbouncer:X.Y``. A value that cannot run here fails with a
message naming what is available and how to build the missing image.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from harness import environment
from harness.errors import ConfigError
from harness.matrix.axes import AXES, MatrixSpec

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
