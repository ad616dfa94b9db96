"""PostgreSQL from the system's binaries: initdb once, then ``postgres`` on a free port.

Responsibility: start one private PostgreSQL server with password (SCRAM) auth on
127.0.0.1, prove it answers a real query, and remove every trace on stop.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from harness._process import ManagedProcess, StartStop, wait_for
from harness.errors import PortInUseError, ServiceStartError
from harness.services.base import (
    LOOPBACK,
    POSTGRES_BIN_DIRS,
    find_binary,
    free_port,
    generate_password,
    make_workdir,
    remove_tree,
    service_user,
    write_private,
)

SUPERUSER = "harness"


@dataclass
class PostgresSettings:
    """Server settings a scenario may change (``max_connections`` above all)."""

    max_connections: int = 100
    port: int | None = None  # None: a free port is chosen
    start_timeout_s: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)


class LocalPostgres(StartStop):
    """A PostgreSQL server in a temp dir, run as an unprivileged user.

    Durability is switched off (``fsync=off`` and friends): these databases live
    for one test run and speed matters more than surviving a power cut.
    """

    name = "postgres"

    def __init__(self, settings: PostgresSettings | None = None) -> None:
        self.settings = settings or PostgresSettings()
        self.host = LOOPBACK
        self.port = 0
        self.user = SUPERUSER
        self.password = generate_password()
        self.version = ""
        self.start_s = 0.0
        self._dir: Path | None = None
        self._proc: ManagedProcess | None = None

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        initdb = find_binary("initdb", "postgresql", POSTGRES_BIN_DIRS)
        postgres = find_binary("postgres", "postgresql", POSTGRES_BIN_DIRS)
        self._dir = make_workdir("postgres")
        data = self._dir / "data"
        pwfile = self._dir / "pwfile"
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
        attempts = 1 if self.settings.port else 3
        for attempt in range(attempts):
            self.port = self.settings.port or free_port()
            log = self._dir / f"postgres-{attempt}.log"
            self._proc = ManagedProcess(
                [postgres, "-D", str(data), "-c", f"port={self.port}",
                 "-c", f"listen_addresses={LOOPBACK}",
                 # TCP only: the harness never uses a Unix socket, and a socket path
                 # under a long TMPDIR exceeds Linux's 107 bytes (PostgreSQL then refuses
                 # to start: "could not create any Unix-domain sockets").
                 "-c", "unix_socket_directories=",
                 "-c", f"max_connections={self.settings.max_connections}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "shared_buffers=32MB",
                 *[arg for k, v in self.settings.extra.items() for arg in ("-c", f"{k}={v}")]],
                log, user=service_user(), stop_signal=signal.SIGINT,  # SIGINT: fast shutdown
            )
            if wait_for(self._answers, timeout_s=self.settings.start_timeout_s,
                        while_alive=self._proc):
                self.version = self._query_one("show server_version").split()[0]
                self.start_s = time.monotonic() - began
                return
            log_tail = self._proc.tail()
            exit_code = self._proc.popen.poll()  # None: it is still running, just silent
            self._proc.stop(grace_s=2)
            if "already in use" in log_tail:
                if self.settings.port:
                    raise PortInUseError(
                        f"PostgreSQL could not listen on {LOOPBACK}:{self.port}: the port is "
                        f"taken. Stop what uses it or choose another port (leave it unset "
                        f"and a free one is picked).\n{log_tail}"
                    )
                continue  # another process took the free port first: pick a new one
            what = (f"exited at start (code {exit_code})" if exit_code is not None
                    else f"did not answer 'select version()' on {LOOPBACK}:{self.port} "
                         f"within {self.settings.start_timeout_s:.0f} s")
            raise ServiceStartError(f"PostgreSQL {what}. Its log tail:\n{log_tail}")
        raise PortInUseError(
            f"PostgreSQL found no free port after {attempts} tries; something keeps "
            f"taking ports on {LOOPBACK}."
        )

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(grace_s=10)
            self._proc = None
        if self._dir is not None:
            remove_tree(self._dir)
            self._dir = None

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

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.tail(lines) if self._proc else "(postgres is not running)"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def _answers(self) -> bool:
        return bool(self._query_one("select version()"))

    def _query_one(self, sql: str) -> str:
        with self.connect() as conn:
            row = conn.execute(sql).fetchone()
        return str(row[0]) if row else ""
