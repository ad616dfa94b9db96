"""Where every interpreter and service axis value comes from, checked before anything is built.

Responsibility: for each planned environment, say where its Python comes from (an
interpreter on this host, else the interpreter image ``harness-python:X.Y``, which makes
it a container environment), where its PostgreSQL comes from (the local binaries of
that major, else the image ``harness-postgres:N``) and which backend and images its
scenarios then run on (:class:`EnvServices`). Every missing source is reported at once,
with the command that builds it.

Why a container environment runs its services on the docker backend with the same
images as a host environment would: the container shares the host's network, PID and
hostname namespaces and the Docker engine's socket, so its scenarios start PostgreSQL,
PgBouncer and Redis from the baseline's images (bookworm's PostgreSQL 15, PgBouncer
1.18, Redis 7.0). A Python-axis environment then differs from the baseline in its
Python and its backend only, instead of also in every service version (forky's
PostgreSQL 18, PgBouncer 1.26, Redis 8.0, which the local backend inside the image
would give). The matrix legend says so (see :func:`runs_in`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.matrix.axes import Combination, MatrixSpec, present
from harness.matrix.interpreters import Interpreter, find_python
from harness.matrix.pgbouncer_axis import IMAGE_VARIABLE, PGBOUNCER_IMAGE, PgBouncerSource

LOCAL = "local"
POSTGRES_IMAGE = "harness-postgres:{}"
PYTHON_IMAGE = "harness-python:{}"
REDIS_IMAGE = "harness-redis:7.0"  # the docker backend's default (docker_engine.IMAGE_SETTINGS)
POSTGRES_VARIABLE = "HARNESS_IMAGE_POSTGRES"
BUILD = "bash docker/build.sh"
BUILD_FORKY = 'HARNESS_SUITES="forky" bash docker/build.sh'
# What docker/build.sh can make, and the command that makes it.
BUILDABLE: dict[str, dict[str, str]] = {
    "python": {"3.14": BUILD_FORKY, "3.15": BUILD_FORKY},
    "postgres": {"15": BUILD, "17": BUILD, "18": BUILD_FORKY},
    "pgbouncer": {"1.18": BUILD, "1.24": BUILD, "1.26": BUILD_FORKY},
}
LabelReader = Callable[[str], "Mapping[str, str] | None"]


@dataclass(frozen=True)
class ContainerPython:
    """A Python line the host has no interpreter for, from an interpreter image.

    Attributes:
        line: the axis value's line, ``3.14``.
        version: the full version in the image, ``3.14.8``.
        image: the image name, ``harness-python:3.14``.
        image_id: the image's id: part of the environment's cache key.
    """

    line: str
    version: str
    image: str
    image_id: str

    @property
    def path(self) -> Path:
        """The interpreter inside the image (Debian's ``python3.X``)."""
        return Path(f"/usr/bin/python{self.line}")


PythonSource = Interpreter | ContainerPython


def image_labels(name: str) -> dict[str, str] | None:
    """An image's labels plus its id (key ``id``), or None when the engine lacks it.

    Asks the ``docker`` CLI: no service is started, and a missing engine reads as a
    missing image (the error then says to start one).
    """
    docker = shutil.which("docker")
    if not docker:
        return None
    try:
        out = subprocess.run([docker, "image", "inspect", "-f",
                              "{{.Id}} {{json .Config.Labels}}", name],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    image_id, _, labels = out.stdout.strip().partition(" ")
    return {**(json.loads(labels) or {}), "id": image_id}


def _build_hint(axis: str, value: str, image: str) -> str:
    command = BUILDABLE.get(axis, {}).get(value)
    if command:
        return f"Build it: {command} (as root, bash docker/ci-setup.sh first starts a Docker engine)."
    known = ", ".join(BUILDABLE.get(axis, {}))
    return (f"docker/build.sh makes {axis} {known} only: pick one of those, or tag an image "
            f"of {axis} {value} as {image} (see docker/README.md).")


# --- python ---------------------------------------------------------------------------
def _image_pythons(labels: Mapping[str, str]) -> dict[str, str]:
    """``org.harness.python.versions`` (``3.14=3.14.8 3.15=3.15.0``) as a dict."""
    found = {}
    for pair in labels.get("org.harness.python.versions", "").split():
        line, _, full = pair.partition("=")
        found[line] = full
    return found


def find_container_python(value: str, labels: LabelReader = image_labels) -> ContainerPython:
    """The interpreter image for ``value`` (``3.14`` or ``3.14.8``).

    Raises:
        ConfigError: no such image, or it carries another patch release.
    """
    line = ".".join(value.split(".")[:2])
    image = PYTHON_IMAGE.format(line)
    found = labels(image)
    if found is None:
        raise ConfigError(f"there is no interpreter image {image} either. "
                          + _build_hint("python", line, image))
    full = _image_pythons(found).get(line)
    if not full:
        raise ConfigError(f"the image {image} does not say which Python {line} it carries "
                          f"(no org.harness.python.versions label). Rebuild it: "
                          f"{BUILDABLE['python'].get(line, BUILD_FORKY)}.")
    if value != line and full != value:
        raise ConfigError(f"the image {image} carries Python {full}, not {value}. Ask for "
                          f"--python {line}, or build an image of {value}.")
    return ContainerPython(line, full, image, found.get("id", ""))


def python_sources(values: Iterable[str], *, find: Callable[[str], Interpreter] = find_python,
                   labels: LabelReader = image_labels) -> dict[str, PythonSource]:
    """An interpreter for every Python value: this host's first, else an image's.

    Raises:
        ConfigError: every value that has neither, in one message.
    """
    sources: dict[str, PythonSource] = {}
    problems = []
    for value in dict.fromkeys(values):
        try:
            sources[value] = find(value)
            continue
        except ConfigError as host:
            try:
                sources[value] = find_container_python(value, labels)
            except ConfigError as image:
                problems.append(f"{host} For a container environment, {image}")
    if problems:
        raise ConfigError("\n".join(problems))
    return sources


# --- postgres -------------------------------------------------------------------------
def postgres_major(version: str) -> str:
    """``15.18`` -> ``15``: the postgres axis names a major release."""
    return version.split(".")[0]


def local_postgres_version() -> str | None:
    """The version of the local ``postgres`` binary (PATH, then Debian's folders), or None."""
    from harness.services.base import POSTGRES_BIN_DIRS

    binary = shutil.which("postgres") or next(
        (str(d / "postgres") for d in POSTGRES_BIN_DIRS if (d / "postgres").exists()), None)
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"(\d+(?:\.\d+)+)", out.stdout)
    return found.group(1) if found else None


def resolve_postgres(spec: MatrixSpec, local: Callable[[], str | None] = local_postgres_version
                     ) -> MatrixSpec:
    """Check the form of the postgres axis (if any) and turn ``local`` into its major.

    Raises:
        ConfigError: a value that is not a major version or ``local``.
    """
    if "postgres" not in spec.axes:
        return spec
    values = []
    for value in spec.axes["postgres"]:
        if value != LOCAL and not re.fullmatch(r"\d+", value):
            raise ConfigError(f"PostgreSQL version {value!r} is not a major version or "
                              f"'local': write for example --postgres 15 17 18 (the minor "
                              f"release is whatever the binary or image has).")
        if value == LOCAL:
            found = local()
            if not found:
                raise ConfigError("PostgreSQL 'local' means the installed postgres binary, "
                                  "but none was found. Install postgresql, or name majors "
                                  "that have images, e.g. --postgres 15 17 18.")
            value = postgres_major(found)
        values.append(value)
    axes = {**spec.axes, "postgres": list(dict.fromkeys(values))}
    return MatrixSpec(axes={a: axes[a] for a in present(axes)}, mode=spec.mode,
                      source=spec.source)


# --- what one environment runs on -----------------------------------------------------
@dataclass(frozen=True)
class EnvServices(PgBouncerSource):
    """Where one environment's services come from, and what it runs in.

    A :class:`PgBouncerSource` (the run reads its backend, PgBouncer image and
    variables) plus the PostgreSQL image and the container, when there is one.

    Attributes:
        postgres: the postgres axis value (None: no such axis, the local major).
        postgres_image: the PostgreSQL image on the docker backend (None: local).
        redis_image: the Redis image on the docker backend (None: local).
        container: the interpreter image the whole run happens in (None: the host).
    """

    postgres: str | None = None
    postgres_image: str | None = None
    redis_image: str | None = None
    container: ContainerPython | None = None
    needed: tuple[str, ...] = field(default=(), compare=False)

    def environ(self) -> dict[str, str]:
        found = dict(super().environ())
        if self.postgres_image:
            found[POSTGRES_VARIABLE] = self.postgres_image
        return found

    def describe(self) -> str:
        if self.backend == "local":
            return super().describe() + ", local PostgreSQL and Redis"
        where = (f"in a container of {self.container.image} (Python "
                 f"{self.container.version}), " if self.container else "")
        return (f"{where}docker backend: {self.postgres_image}, {self.image}, "
                f"{self.redis_image}")

    def runs_in(self) -> dict[str, Any] | None:
        """What the sidecar and the matrix legend say about the container, if any."""
        if not self.container:
            return None
        return {"image": self.container.image, "python": self.container.version,
                "backend": self.backend, "images": [self.postgres_image, self.image,
                                                    self.redis_image]}


def env_services(combos: Sequence[Combination], pythons: Mapping[str, PythonSource],
                 pgbouncers: Mapping[str, PgBouncerSource], *,
                 local_postgres: Callable[[], str | None] = local_postgres_version,
                 labels: LabelReader = image_labels) -> dict[str, EnvServices]:
    """Per environment id, its backend and images; every image is checked to exist.

    The local backend is used only when every service of the environment can run from
    this host's binaries and its Python is the host's; otherwise all three services run
    on the docker backend (one backend per run), with the images of the environment's
    PostgreSQL major and PgBouncer line and the default Redis image.

    Raises:
        ConfigError: every missing image, with the command that builds it.
    """
    local_pg = local_postgres()
    local_major = postgres_major(local_pg) if local_pg else None
    problems: dict[str, str] = {}
    checked: dict[str, Mapping[str, str] | None] = {}

    def check(image: str, axis: str, value: str, label: str | None) -> None:
        if image not in checked:
            checked[image] = labels(image)
        found = checked[image]
        if found is None:
            problems.setdefault(image, f"{axis} {value} needs the image {image}, which the "
                                       f"Docker engine does not have (or no engine answers). "
                                       + _build_hint(axis, value, image))
        elif label and found.get(label) and not (found[label] == value
                                                 or found[label].startswith(value + ".")):
            problems.setdefault(image, f"the image {image} carries {axis} {found[label]}, "
                                       f"not {value}.")

    result = {}
    for combo in combos:
        python = pythons[combo.versions["python"]]
        container = python if isinstance(python, ContainerPython) else None
        pg_value = combo.versions.get("postgres") or local_major
        pgb = pgbouncers[combo.versions["pgbouncer"]]
        docker = container is not None or pgb.backend != "local" or pg_value != local_major
        if not docker:
            result[combo.id] = EnvServices(pgb.version, "local", pgb.found,
                                           postgres=combo.versions.get("postgres"))
            continue
        if pg_value is None:
            raise ConfigError("No local PostgreSQL was found, so the environment's "
                              "PostgreSQL major is unknown; give --postgres N.")
        pg_image = POSTGRES_IMAGE.format(pg_value)
        pgb_image = pgb.image or PGBOUNCER_IMAGE.format(pgb.version)
        check(pg_image, "postgres", pg_value, "org.harness.postgres.version")
        check(pgb_image, "pgbouncer", pgb.version, "org.harness.pgbouncer.version")
        check(REDIS_IMAGE, "redis", "7.0", None)
        result[combo.id] = EnvServices(pgb.version, "docker", pgb.found, pgb_image,
                                       postgres=combo.versions.get("postgres"),
                                       postgres_image=pg_image, redis_image=REDIS_IMAGE,
                                       container=container)
    if problems:
        raise ConfigError("Some planned environments cannot run here:\n  - "
                          + "\n  - ".join(problems.values()))
    return result


def describe_python(source: PythonSource) -> str:
    if isinstance(source, ContainerPython):
        return f"python {source.version} in {source.image}"
    return f"python {source.version}"


__all__ = [
    "BUILDABLE",
    "IMAGE_VARIABLE",
    "ContainerPython",
    "EnvServices",
    "env_services",
    "find_container_python",
    "python_sources",
    "resolve_postgres",
]
