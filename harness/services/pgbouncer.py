"""PgBouncer from the system's binary, in transaction mode, in front of one Postgres.

Responsibility: start one private PgBouncer with SCRAM auth and its own auth file,
prove a real query passes through it, and remove every trace on stop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from harness import environment
from harness._process import ManagedProcess
from harness.errors import ConfigError
from harness.services.base import LOOPBACK, find_binary, service_user, write_private
from harness.services.local import LocalService
from harness.services.postgres import LocalPostgres


@dataclass
class PgBouncerSettings:
    pool_mode: str = "transaction"
    default_pool_size: int = 20
    max_client_conn: int = 1000
    # PgBouncer >= 1.21 only; 1.18 refuses to start with this key set. None: leave it out.
    max_prepared_statements: int | None = None
    # More pgbouncer.ini settings of the [pgbouncer] section, as (key, value) pairs; a key
    # given here replaces the harness's own line (ignore_startup_parameters, ...).
    extra: tuple[tuple[str, str], ...] = ()
    port: int | None = None
    start_timeout_s: float = 15.0


def pgbouncer_ini(settings: PgBouncerSettings, *, server: tuple[str, int],
                  listen: tuple[str, int], auth_file: str, admin_user: str) -> str:
    """The pgbouncer.ini of every PgBouncer the harness starts (local or in a container).

    Every database name is routed to one PostgreSQL (a ``*`` entry), in
    ``pool_mode`` (transaction by default), with SCRAM auth against ``auth_file``.
    ``admin_user`` may use the admin console (``pgbouncer`` database), where the
    fault layer sends RECONNECT, KILL, PAUSE and RESUME.
    """
    settings_lines = {
        "listen_addr": listen[0],
        "listen_port": str(listen[1]),
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": auth_file,
        "admin_users": admin_user,
        "pool_mode": settings.pool_mode,
        "default_pool_size": str(settings.default_pool_size),
        "max_client_conn": str(settings.max_client_conn),
        # Drivers send these at start-up; PgBouncer refuses unknown ones otherwise.
        "ignore_startup_parameters": "extra_float_digits,options",
        "server_check_delay": "0",
    }
    if settings.max_prepared_statements is not None:  # 1.18 refuses to start with this key
        settings_lines["max_prepared_statements"] = str(settings.max_prepared_statements)
    for key, value in settings.extra:
        check_ini_setting(key, value)
        settings_lines[key] = value
    lines = ["[databases]", f"* = host={server[0]} port={server[1]}", "[pgbouncer]"]
    lines += [f"{key} = {value}".rstrip() for key, value in settings_lines.items()]
    return "\n".join(lines) + "\n"


_INI_KEY = re.compile(r"[a-z_]+")


def check_ini_setting(key: str, value: str) -> None:
    """Refuse a setting that would not be one line of pgbouncer.ini."""
    if not _INI_KEY.fullmatch(key) or any(c in value for c in "\r\n"):
        raise ConfigError(
            f"The PgBouncer setting {key!r} = {value!r} cannot be written to pgbouncer.ini: a "
            f"key is lower-case letters and underscores, a value one line. Fix the scenario's "
            f"StackSpec(pgbouncer_config=...).")


def admin_command(host: str, port: int, postgres: LocalPostgres, command: str) -> None:
    """Run one command on PgBouncer's admin console (simple query protocol only)."""
    with psycopg.connect(postgres.conninfo("pgbouncer", port=port), autocommit=True) as conn:
        conn.cursor().execute(command, prepare=False)


def userlist(user: str, password: str) -> str:
    """PgBouncer's auth file: it needs the plain password to answer the server's SCRAM
    challenge itself, so the file is readable by the service user only."""
    return f'"{user}" "{password}"\n'


class LocalPgBouncer(LocalService):
    """PgBouncer routing every database name to ``postgres`` (a ``*`` entry)."""

    name = "pgbouncer"
    label = "PgBouncer"
    ready_what = "pass 'select 1' through to PostgreSQL"

    def __init__(self, postgres: LocalPostgres, settings: PgBouncerSettings | None = None) -> None:
        self.postgres = postgres
        self.settings = settings or PgBouncerSettings()
        super().__init__(port=self.settings.port, start_timeout_s=self.settings.start_timeout_s)

    def _prepare(self, folder: Path) -> None:
        self.version = environment.pgbouncer_version() or "unknown"
        self.label = f"PgBouncer {self.version}"
        write_private(folder / "userlist.txt", userlist(self.postgres.user, self.postgres.password))

    def _launch(self, folder: Path, attempt: int) -> ManagedProcess:
        ini = folder / "pgbouncer.ini"
        write_private(ini, pgbouncer_ini(self.settings, server=(LOOPBACK, self.postgres.port),
                                         listen=(LOOPBACK, self.port),
                                         auth_file=str(folder / "userlist.txt"),
                                         admin_user=self.postgres.user))
        return ManagedProcess([find_binary("pgbouncer", "pgbouncer"), str(ini)],
                              folder / f"pgbouncer-{attempt}.log", user=service_user())

    def admin(self, command: str) -> None:
        """A command on the admin console (``RECONNECT db``, ``KILL db``, ``PAUSE db``)."""
        admin_command(self.host, self.port, self.postgres, command)

    def _answers(self) -> bool:
        with psycopg.connect(self.postgres.conninfo(port=self.port), autocommit=True) as conn:
            return conn.execute("select 1").fetchone() == (1,)
