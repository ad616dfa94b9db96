"""The services one scenario run needs, wired together.

Responsibility: hand a variant run a fresh database, its URLs for each driver
(direct or through PgBouncer) and the Redis broker, reusing running services
across runs of the same pytest process.

One :class:`StackPool` lives per pytest process (so per xdist worker): one Redis,
one PostgreSQL per ``max_connections`` setting, one PgBouncer per PgBouncer setting.
Runs are isolated by a fresh database and a private queue each, never by luck.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from harness.scenario import StackSpec
from harness.services import PgBouncerSettings, PostgresSettings
from harness.services.backends import LOCAL, Backend
from harness.services.base import PostgresService, RedisService, Service, generate_password

DRIVER_SCHEMES = {"asyncpg": "postgresql+asyncpg", "psycopg": "postgresql+psycopg"}
APP_ROLE = "harness_app"  # StackSpec(app_role=True): the app logs in as this, not as superuser


@dataclass(frozen=True)
class Stack:
    """Running services for one spec."""

    spec: StackSpec
    postgres: PostgresService
    pgbouncer: Service | None
    redis: RedisService
    backend: str = "local"

    def database_url(self, driver: str, dbname: str, via: Any | None = None) -> str:
        """The SQLAlchemy URL a scenario's app uses: through PgBouncer if the spec says so,
        and through the fault proxy ``via`` when there is one; as the app role when the
        spec asks for one."""
        front = via or self.pgbouncer or self.postgres
        user, password = (APP_ROLE, self.app_role_password()) if self.spec.app_role \
            else (self.postgres.user, self.postgres.password)
        return (f"{DRIVER_SCHEMES[driver]}://{user}:{password}@{front.host}:{front.port}"
                f"/{dbname}")

    def app_role_password(self) -> str:
        """The app role's password, the role made on first use (once per server).

        A login that is not a superuser: PostgreSQL keeps ``superuser_reserved_connections``
        for the harness's own connections when the app takes every other slot.
        """
        pg = self.postgres
        password = getattr(pg, "app_role_password", None)
        if password is None:
            password = generate_password()  # URL- and SQL-safe characters only
            pg.execute(f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{password}'")
            pg.app_role_password = password
        return password

    @contextmanager
    def fault_proxy(self) -> Iterator[Any]:
        """A fault proxy in front of PgBouncer (if the spec has it) or PostgreSQL, for one
        variant run; stopped with it."""
        from harness.faults.proxy import FaultProxy

        upstream = self.pgbouncer or self.postgres
        with FaultProxy(upstream.host, upstream.port, name=f"proxy-{upstream.name}") as proxy:
            yield proxy

    @contextmanager
    def broker_proxy(self) -> Iterator[Any]:
        """A fault proxy in front of Redis for the worker's broker and result backend
        connections (the harness's own go direct), for one variant run; stopped with it."""
        from harness.faults.proxy import FaultProxy

        with FaultProxy(self.redis.host, self.redis.port, name="proxy-redis") as proxy:
            yield proxy

    def fresh_broker(self) -> None:
        """Empty the broker's database before a variant: the earlier variants' workers
        were killed, and what kombu keeps outside a queue's own keys (the ``unacked`` hash,
        its index and the sweep's ``unacked_mutex``, which expires after 300 s) would
        otherwise reach this variant's worker: a mutex a killed worker held stops this
        worker's sweep, so its unacknowledged messages never come back."""
        self.redis.client().flushdb()

    @contextmanager
    def fresh_database(self, label: str) -> Iterator[str]:
        """A new empty database for one run, dropped afterwards."""
        name = f"h_{label[:40].replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        self.postgres.create_database(name)
        try:
            yield name
        finally:
            if self.postgres.alive():
                self.postgres.drop_database(name)

    def versions(self) -> dict[str, str]:
        found = {"backend": self.backend, "postgres": self.postgres.version,
                 "redis": self.redis.version}
        if self.pgbouncer is not None:
            found["pgbouncer"] = self.pgbouncer.version
        return found

    def problems(self) -> list[str]:
        """Services of this stack that died (a crash mid-run is a harness error)."""
        services = [self.postgres, self.redis] + ([self.pgbouncer] if self.pgbouncer else [])
        return [f"{s.name} is no longer running; log tail:\n{s.log_tail(15)}"
                for s in services if not s.alive()]


class StackPool:
    """Starts services on first use and stops all of them on close."""

    def __init__(self, backend: Backend = LOCAL) -> None:
        self.backend = backend
        self._exit = ExitStack()
        self._redis: Any | None = None
        self._postgres: dict[int, Any] = {}
        self._pgbouncer: dict[tuple[Any, ...], Any] = {}

    def get(self, spec: StackSpec) -> Stack:
        self._forget_dead()
        if self._redis is None:
            self._redis = self._exit.enter_context(self.backend.redis())
        postgres = self._postgres.get(spec.max_connections)
        if postgres is None:
            postgres = self._exit.enter_context(
                self.backend.postgres(PostgresSettings(max_connections=spec.max_connections)))
            self._postgres[spec.max_connections] = postgres
        pgbouncer = None
        if spec.pgbouncer:
            key = (spec.max_connections, spec.pgbouncer_pool_size, spec.max_prepared_statements,
                   spec.pgbouncer_config)
            pgbouncer = self._pgbouncer.get(key)
            if pgbouncer is None:
                pgbouncer = self._exit.enter_context(self.backend.pgbouncer(postgres, PgBouncerSettings(
                    default_pool_size=spec.pgbouncer_pool_size,
                    max_prepared_statements=spec.max_prepared_statements,
                    extra=spec.pgbouncer_config)))
                self._pgbouncer[key] = pgbouncer
        return Stack(spec, postgres, pgbouncer, self._redis, self.backend.name)

    def _forget_dead(self) -> None:
        """Drop services that died (a crash, or a fault test's SIGKILL) so that the next
        variant gets fresh ones: one dead service spoils one variant, not the rest of the run.
        A PgBouncer in front of a dead PostgreSQL goes too; its server is gone."""
        if self._redis is not None and not self._redis.alive():
            self._redis.stop()
            self._redis = None
        for max_connections, postgres in list(self._postgres.items()):
            if not postgres.alive():
                postgres.stop()
                del self._postgres[max_connections]
        for key, pgbouncer in list(self._pgbouncer.items()):
            if not pgbouncer.alive() or key[0] not in self._postgres:
                pgbouncer.stop()
                del self._pgbouncer[key]

    def versions(self) -> dict[str, str]:
        """Versions of every service started so far."""
        found: dict[str, str] = {"backend": self.backend.name}
        if self.backend.reason:
            found["backend_reason"] = self.backend.reason
        if self._redis:
            found["redis"] = self._redis.version
        for pg in self._postgres.values():
            found["postgres"] = pg.version
        for pgb in self._pgbouncer.values():
            found["pgbouncer"] = pgb.version
        return found

    def close(self) -> None:
        self._exit.close()
        self._redis = None
        self._postgres.clear()
        self._pgbouncer.clear()
