"""Service backends: which implementation starts Postgres, PgBouncer and Redis.

Responsibility: map a backend name (``local``, ``docker``, ``auto``) to the three
service factories, and explain the choice. Every backend's services have the
same shape as the local ones (see :class:`harness.services.base.Service` and
:class:`harness.services.postgres.LocalPostgres` for the Postgres extras:
``user``, ``password``, ``connect()``, ``execute()``, ``create_database()``,
``drop_database()``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import environment
from harness.errors import ConfigError
from harness.services.pgbouncer import LocalPgBouncer, PgBouncerSettings
from harness.services.postgres import LocalPostgres, PostgresSettings
from harness.services.redis import LocalRedis

NAMES = ("auto", "local", "docker")


@dataclass(frozen=True)
class Backend:
    name: str
    postgres: Callable[[PostgresSettings], Any]
    pgbouncer: Callable[[Any, PgBouncerSettings], Any]
    redis: Callable[[], Any]
    # The PgBouncer version this backend would start, known before starting it, so
    # variants that need a newer PgBouncer can be n/a without starting anything.
    pgbouncer_version: Callable[[], str | None] = environment.pgbouncer_version
    reason: str = ""  # why this backend was chosen (for 'auto')


LOCAL = Backend("local", LocalPostgres, LocalPgBouncer, LocalRedis)


def docker_unavailable() -> str | None:
    """Why the docker backend cannot run here, or None when it can."""
    try:
        from harness.services import docker
    except ImportError as exc:
        return f"the docker backend could not be loaded ({exc})"
    return docker.unavailable()


def _docker_backend(reason: str) -> Backend:
    from harness.services import docker

    return Backend("docker", docker.DockerPostgres, docker.DockerPgBouncer, docker.DockerRedis,
                   docker.pgbouncer_version, reason)


def choose(name: str) -> Backend:
    """The backend for ``name``; ``auto`` prefers docker when it can run, else local."""
    if name not in NAMES:
        raise ConfigError(f"--backend {name!r} is not a backend. Choose one of: "
                          f"{', '.join(NAMES)}.")
    if name == "local":
        return LOCAL
    problem = docker_unavailable()
    if name == "docker":
        if problem:
            raise ConfigError(
                f"--backend docker was asked for, but {problem}. Start a Docker engine and "
                f"build the images (see docker/README.md), or use --backend local.")
        return _docker_backend("asked for with --backend docker")
    if problem:
        return Backend(LOCAL.name, LOCAL.postgres, LOCAL.pgbouncer, LOCAL.redis,
                       reason=f"auto: local, because {problem}")
    return _docker_backend("auto: a Docker engine answers and the images are present")
