"""PgBouncer from the system's binary, in transaction mode, in front of one Postgres.

Responsibility: start one private PgBouncer with SCRAM auth and its own auth file,
prove a real query passes through it, and remove every trace on stop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from harness import environment
from harness._process import ManagedProcess, StartStop, wait_for
from harness.errors import PortInUseError, ServiceStartError
from harness.services.base import (
    LOOPBACK,
    find_binary,
    free_port,
    make_workdir,
    remove_tree,
    service_user,
    write_private,
)
from harness.services.postgres import LocalPostgres


@dataclass
class PgBouncerSettings:
    pool_mode: str = "transaction"
    default_pool_size: int = 20
    max_client_conn: int = 1000
    # PgBouncer >= 1.21 only; 1.18 refuses to start with this key set. None: leave it out.
    max_prepared_statements: int | None = None
    port: int | None = None
    start_timeout_s: float = 15.0


class LocalPgBouncer(StartStop):
    """PgBouncer routing every database name to ``postgres`` (a ``*`` entry)."""

    name = "pgbouncer"

    def __init__(self, postgres: LocalPostgres, settings: PgBouncerSettings | None = None) -> None:
        self.postgres = postgres
        self.settings = settings or PgBouncerSettings()
        self.host = LOOPBACK
        self.port = 0
        self.version = ""
        self.start_s = 0.0
        self._dir: Path | None = None
        self._proc: ManagedProcess | None = None


    def start(self) -> None:
        began = time.monotonic()
        binary = find_binary("pgbouncer", "pgbouncer")
        self.version = environment.pgbouncer_version() or "unknown"
        self._dir = make_workdir("pgbouncer")
        # PgBouncer needs the plain password to answer the server's SCRAM challenge
        # itself; the file is readable by the service user only and lives in a temp dir.
        write_private(self._dir / "userlist.txt",
                      f'"{self.postgres.user}" "{self.postgres.password}"\n')
        attempts = 1 if self.settings.port else 3
        for attempt in range(attempts):
            self.port = self.settings.port or free_port()
            ini = self._dir / "pgbouncer.ini"
            write_private(ini, self._config())
            self._proc = ManagedProcess([binary, str(ini)], self._dir / f"pgbouncer-{attempt}.log",
                                        user=service_user())
            if wait_for(self._answers, timeout_s=self.settings.start_timeout_s,
                        while_alive=self._proc):
                self.start_s = time.monotonic() - began
                return
            log_tail = self._proc.tail()
            self._proc.stop(grace_s=2)
            if "Address already in use" in log_tail:
                if self.settings.port:
                    raise PortInUseError(
                        f"PgBouncer could not listen on {LOOPBACK}:{self.port}: the port is "
                        f"taken. Stop what uses it or leave the port unset.\n{log_tail}")
                continue
            raise ServiceStartError(
                f"PgBouncer {self.version} did not pass 'select 1' through to PostgreSQL on "
                f"{LOOPBACK}:{self.port} within {self.settings.start_timeout_s:.0f} s. "
                f"Log tail:\n{log_tail}")
        raise PortInUseError(f"PgBouncer found no free port after {attempts} tries.")

    def _config(self) -> str:
        s = self.settings
        lines = [
            "[databases]",
            f"* = host={LOOPBACK} port={self.postgres.port}",
            "[pgbouncer]",
            f"listen_addr = {LOOPBACK}",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            f"auth_file = {self._dir / 'userlist.txt'}",
            f"pool_mode = {s.pool_mode}",
            f"default_pool_size = {s.default_pool_size}",
            f"max_client_conn = {s.max_client_conn}",
            # Drivers send these at start-up; PgBouncer refuses unknown ones otherwise.
            "ignore_startup_parameters = extra_float_digits,options",
            "server_check_delay = 0",
        ]
        if s.max_prepared_statements is not None:
            lines.append(f"max_prepared_statements = {s.max_prepared_statements}")
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(grace_s=5)
            self._proc = None
        if self._dir is not None:
            remove_tree(self._dir)
            self._dir = None

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.tail(lines) if self._proc else "(pgbouncer is not running)"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def _answers(self) -> bool:
        with psycopg.connect(self.postgres.conninfo(port=self.port), autocommit=True) as conn:
            return conn.execute("select 1").fetchone() == (1,)
