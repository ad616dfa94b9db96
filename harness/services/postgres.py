"""PostgreSQL from the system's binaries: initdb once, then ``postgres`` on a free port.

Responsibility: start one private PostgreSQL server with password (SCRAM) auth on
127.0.0.1, prove it answers a real query, and remove every trace on stop.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from harness._process import ManagedProcess
from harness.errors import ServiceStartError
from harness.services.base import (
    LOOPBACK,
    POSTGRES_BIN_DIRS,
    find_binary,
    generate_password,
    service_user,
    write_private,
)
from harness.services.local import LocalService

SUPERUSER = "harness"


@dataclass
class PostgresSettings:
    """Server settings a scenario may change (``max_connections`` above all)."""

    max_connections: int = 100
    port: int | None = None  # None: a free port is chosen
    start_timeout_s: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)


class LocalPostgres(LocalService):
    """A PostgreSQL server in a temp dir, run as an unprivileged user.

    Durability is switched off (``fsync=off`` and friends): these databases live
    for one test run and speed matters more than surviving a power cut.
    """

    name = "postgres"
    label = "PostgreSQL"
    ready_what = "answer 'select version()'"
    stop_grace_s = 10.0

    def __init__(self, settings: PostgresSettings | None = None) -> None:
        self.settings = settings or PostgresSettings()
        super().__init__(port=self.settings.port, start_timeout_s=self.settings.start_timeout_s)
        self.user = SUPERUSER
        self.password = generate_password()

    # --- lifecycle -----------------------------------------------------------------

    def _prepare(self, folder: Path) -> None:
        initdb = find_binary("initdb", "postgresql", POSTGRES_BIN_DIRS)
        data = folder / "data"
        pwfile = folder / "pwfile"
        write_private(pwfile, self.password + "\n")
        result = subprocess.run(
            [initdb, "-D", str(data), "-U", SUPERUSER, "--pwfile", str(pwfile),
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, user=service_user(), timeout=120, check=False,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise ServiceStartError(
                f"initdb failed with exit code {result.returncode}; PostgreSQL could not "
                f"create its data folder in {data}. Its output:\n{result.stdout}{result.stderr}"
            )

    def _launch(self, folder: Path, attempt: int) -> ManagedProcess:
        postgres = find_binary("postgres", "postgresql", POSTGRES_BIN_DIRS)
        return ManagedProcess(
            [postgres, "-D", str(folder / "data"), "-c", f"port={self.port}",
             "-c", f"listen_addresses={LOOPBACK}",
             # TCP only: the harness never uses a Unix socket, and a socket path
             # under a long TMPDIR exceeds Linux's 107 bytes (PostgreSQL then refuses
             # to start: "could not create any Unix-domain sockets").
             "-c", "unix_socket_directories=",
             "-c", f"max_connections={self.settings.max_connections}",
             "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "shared_buffers=32MB",
             *[arg for k, v in self.settings.extra.items() for arg in ("-c", f"{k}={v}")]],
            folder / f"postgres-{attempt}.log", user=service_user(),
            stop_signal=signal.SIGINT,  # SIGINT: PostgreSQL's fast shutdown
        )

    def restart(self, *, immediate: bool = False) -> None:
        """Restart on the same port and data: a fast shutdown (SIGINT: sessions end, a
        checkpoint is written) or an immediate one (SIGQUIT: no checkpoint, crash
        recovery at the next start), as an operator's restart or a crash would."""
        self._restart(signal.SIGQUIT if immediate else signal.SIGINT)

    def _on_ready(self) -> None:
        self.version = self._query_one("show server_version").split()[0]

    # --- use -----------------------------------------------------------------------
    def conninfo(self, dbname: str = "postgres", *, port: int | None = None) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=port or self.port, user=self.user,
            password=self.password, dbname=dbname, connect_timeout=5,
        )

    def connect(self, dbname: str = "postgres", *, port: int | None = None) -> psycopg.Connection:
        """A sync admin connection (autocommit), for setup and for reading state."""
        return psycopg.connect(self.conninfo(dbname, port=port), autocommit=True)

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> None:
        self.execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        # FORCE ends sessions a worker or PgBouncer still holds (PostgreSQL >= 13).
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _answers(self) -> bool:
        return bool(self._query_one("select version()"))

    def _query_one(self, sql: str) -> str:
        with self.connect() as conn:
            row = conn.execute(sql).fetchone()
        return str(row[0]) if row else ""
