"""The docker backend: Postgres, PgBouncer and Redis in containers, via testcontainers.

Responsibility: the same services as the local backend (same attributes, same
methods, same readiness rule: a real round trip), each in its own container on the
run's user-defined network, reached from the host through a port published on
127.0.0.1 only. The container lifecycle is in :mod:`docker_container`; images, labels
and clean-up in :mod:`docker_engine`.

Each service writes its configuration inside its container from environment
variables, so nothing is mounted from the host and public images with ``sh`` and the
service binary work too (see docker/README.md).
"""

from __future__ import annotations

import re
import secrets
import time

from harness.errors import ConfigError
from harness.services import docker_engine as engine
from harness.services.base import generate_password
from harness.services.docker_container import ContainerService
from harness.services.pgbouncer import PgBouncerSettings, admin_command, pgbouncer_ini, userlist
from harness.services.postgres import SUPERUSER, LocalPostgres, PostgresSettings
from harness.services.redis import SNAPSHOT, LocalRedis

_versions: dict[str, str] = {}


def unavailable() -> str | None:
    """Why the docker backend cannot run here (one clause), or None when it can."""
    if engine.IMPORT_ERROR is not None:
        return (f"the Python package testcontainers is not installed ({engine.IMPORT_ERROR}); "
                f"install it with pip install 'testcontainers>=4.9'")
    try:
        engine.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine means "no"
        return f"no Docker engine answers ({str(exc).splitlines()[0][:160]})"
    if engine.pull_allowed():
        return None
    missing = [f"{engine.image(s)} ({engine.IMAGE_SETTINGS[s][0]})"
               for s in engine.IMAGE_SETTINGS if not engine.image_present(engine.image(s))]
    if missing:
        return (f"the image(s) {', '.join(missing)} are not present locally; build them with "
                f"docker/build.sh or point those settings at images you have")
    return None


def pgbouncer_version() -> str | None:
    """Version of the configured PgBouncer image, without starting a service."""
    return image_pgbouncer_version(engine.image("pgbouncer"))


def image_pgbouncer_version(name: str) -> str | None:
    """The image's ``org.harness.pgbouncer.version`` label (set by docker/build.sh), else
    what ``pgbouncer --version`` prints in a throwaway container. Cached per image."""
    if name in _versions:
        return _versions[name]
    try:
        found = engine.client().images.get(name).attrs["Config"].get("Labels") or {}
    except Exception:  # noqa: BLE001 - no engine or no image: the version is unknown
        return None
    version = found.get("org.harness.pgbouncer.version") or _ask_binary(name)
    if version:
        _versions[name] = version
    return version


def _ask_binary(name: str) -> str | None:
    container = engine.client().containers.create(
        name, entrypoint=["pgbouncer", "--version"], command=[], network_disabled=True,
        labels=engine.labels("pgbouncer-version"))
    try:
        container.start()
        container.wait(timeout=30)
        out = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    found = re.search(r"PgBouncer (\d+\.\d+\.\d+)", out)
    return found.group(1) if found else None


class DockerPostgres(ContainerService):
    """PostgreSQL in a container; durability off as in the local backend."""

    name = "postgres"
    container_port = 5432
    # The same client-side behaviour as the local backend, shared rather than copied.
    conninfo = LocalPostgres.conninfo
    connect = LocalPostgres.connect
    execute = LocalPostgres.execute
    create_database = LocalPostgres.create_database
    drop_database = LocalPostgres.drop_database
    _answers = LocalPostgres._answers
    _query_one = LocalPostgres._query_one

    def __init__(self, settings: PostgresSettings | None = None) -> None:
        self.settings = settings or PostgresSettings()
        super().__init__(self.settings.start_timeout_s, self.settings.port)
        self.user = SUPERUSER
        self.password = generate_password()
        self.alias = f"postgres-{secrets.token_hex(4)}"  # its name on the run's network

    def start(self) -> None:
        began = time.monotonic()
        s = self.settings
        args = ["postgres", "-c", "listen_addresses=*",
                "-c", f"max_connections={s.max_connections}", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "shared_buffers=32MB",
                *[arg for k, v in s.extra.items() for arg in ("-c", f"{k}={v}")]]
        # shm_size: Docker's 64 MB /dev/shm is tight for many connections' parallel workers.
        self._launch_on_own_port(
            env={"POSTGRES_USER": self.user, "POSTGRES_PASSWORD": self.password},
            command=args, aliases=(self.alias,), shm_size="256m")
        self._wait_ready(self._answers, "'select version()'")
        self.version = self._query_one("show server_version").split()[0]
        self.start_s = time.monotonic() - began

    def restart(self, *, immediate: bool = False) -> None:
        """Restart in the same container (same data, same published port): SIGINT is
        PostgreSQL's fast shutdown, SIGQUIT its immediate one, as in the local backend."""
        self._restart_in_place("SIGQUIT" if immediate else "SIGINT", self._answers,
                               "'select version()'")


PGBOUNCER_SCRIPT = (
    # Files only the container's user reads; the variables are dropped before exec.
    'umask 077 && printf "%s" "$PGBOUNCER_AUTH" > /tmp/userlist.txt && '
    'printf "%s" "$PGBOUNCER_INI" > /tmp/pgbouncer.ini && '
    "unset PGBOUNCER_AUTH PGBOUNCER_INI && exec pgbouncer /tmp/pgbouncer.ini")


class DockerPgBouncer(ContainerService):
    """PgBouncer in a container, routing every database name to one DockerPostgres."""

    name = "pgbouncer"
    container_port = 6432

    def __init__(self, postgres: DockerPostgres, settings: PgBouncerSettings | None = None) -> None:
        if not isinstance(postgres, DockerPostgres):
            raise ConfigError("The docker PgBouncer needs a DockerPostgres (it reaches it by its "
                              "name on the run's network); start both with the docker backend.")
        self.postgres = postgres
        self.settings = settings or PgBouncerSettings()
        super().__init__(self.settings.start_timeout_s, self.settings.port)

    def start(self) -> None:
        began = time.monotonic()
        self.version = image_pgbouncer_version(self.image) or "unknown"
        auth = userlist(self.postgres.user, self.postgres.password)
        self._launch(env={"PGBOUNCER_AUTH": auth, "PGBOUNCER_INI": self._config()},
                     entrypoint=["/bin/sh", "-c", PGBOUNCER_SCRIPT], command=[])
        self._wait_ready(self._answers, "'select 1' through to PostgreSQL")
        self.start_s = time.monotonic() - began

    def _config(self) -> str:
        return pgbouncer_ini(self.settings,
                             server=(self.postgres.alias, DockerPostgres.container_port),
                             listen=("0.0.0.0", self.container_port),
                             auth_file="/tmp/userlist.txt", admin_user=SUPERUSER)

    def admin(self, command: str) -> None:
        """A command on the admin console (``RECONNECT db``, ``KILL db``, ``PAUSE db``)."""
        admin_command(self.host, self.port, self.postgres, command)

    def _answers(self) -> bool:
        with self.postgres.connect(port=self.port) as conn:
            return conn.execute("select 1").fetchone() == (1,)


REDIS_SCRIPT = (
    'umask 077 && printf "requirepass %s\\n" "$REDIS_PASSWORD" > /tmp/redis.conf && '
    "unset REDIS_PASSWORD && exec redis-server /tmp/redis.conf --bind 0.0.0.0 --port 6379 "
    "--protected-mode yes --save '' --appendonly no --databases 64 --dir /tmp")


class DockerRedis(ContainerService):
    """Redis in a container: no persistence, a generated password."""

    name = "redis"
    container_port = 6379
    url = LocalRedis.url
    client = LocalRedis.client

    def __init__(self, port: int | None = None, start_timeout_s: float = 15.0) -> None:
        super().__init__(start_timeout_s, port)
        self.password = generate_password()

    def start(self) -> None:
        began = time.monotonic()
        self._launch_on_own_port(env={"REDIS_PASSWORD": self.password},
                                 entrypoint=["/bin/sh", "-c", REDIS_SCRIPT], command=[])
        self._wait_ready(lambda: self.client().ping(), "PING with its password")
        self.version = str(self.client().info("server")["redis_version"])
        self.start_s = time.monotonic() - began

    def restart(self, keep_data: bool = False, down_s: float = 0.0) -> None:
        """Restart in the same container on the same port, ``down_s`` seconds after it
        stopped; with no persistence, every queued message and stored result is gone, as
        after a real Redis restart.
        ``keep_data``: snapshot first, load it at start, then delete it (see LocalRedis)."""
        if keep_data:
            self.client().save()
        self._restart_in_place("SIGTERM", lambda: self.client().ping(), "PING", down_s=down_s)
        wrapped = self._wrapped()
        if keep_data and wrapped is not None:
            wrapped.exec_run(["rm", "-f", f"/tmp/{SNAPSHOT}"])
