"""What every service backend offers, and the helpers they share.

Responsibility: the contract between a service (Postgres, PgBouncer, Redis) and
the stack that wires them together. A backend (``local`` today) implements
:class:`Service` for each kind.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from harness import scratch
from harness.errors import MissingBinaryError

LOOPBACK = "127.0.0.1"
# When the harness runs as root, services run as this user: PostgreSQL refuses root
# and PgBouncer wants an unprivileged user too. Debian's postgresql packages create it.
SERVICE_USER = "postgres"


@runtime_checkable
class Service(Protocol):
    """One running service, owned by the code that started it."""

    name: str
    host: str
    port: int
    version: str
    start_s: float

    def log_tail(self, lines: int = 40) -> str: ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


@runtime_checkable
class PostgresService(Service, Protocol):
    """A PostgreSQL server: what the stack and the runner ask of it."""

    user: str
    password: str

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]: ...

    def create_database(self, name: str) -> None: ...

    def drop_database(self, name: str) -> None: ...


@runtime_checkable
class RedisService(Service, Protocol):
    """The broker and result backend."""

    password: str

    def url(self, db: int = 0, via: Any | None = None) -> str: ...


def generate_password() -> str:
    """A fresh random password; services never get a fixed one."""
    return secrets.token_urlsafe(18)


def free_port() -> int:
    """Ask the kernel for a free port on 127.0.0.1.

    There is a window between closing this socket and the service binding it;
    services detect "address in use" at start and retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def service_user() -> str | None:
    """The user services run as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise MissingBinaryError(
            f"The harness runs as root, and PostgreSQL refuses to run as root, so services "
            f"run as the '{SERVICE_USER}' user; that user does not exist here. Install "
            f"PostgreSQL from your distribution (apt-get install postgresql), which creates "
            f"it, or run the harness as an ordinary user."
        ) from exc
    return SERVICE_USER


def make_workdir(prefix: str) -> Path:
    """A private temp dir the service user can write to; the caller removes it."""
    path = scratch.mkdtemp(prefix=f"harness-{prefix}-")
    user = service_user()
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(path, info.pw_uid, info.pw_gid)
    path.chmod(0o700)
    return path


def chown_to_service_user(path: Path) -> None:
    user = service_user()
    if user is not None:
        info = pwd.getpwnam(user)
        os.chown(path, info.pw_uid, info.pw_gid)


def write_private(path: Path, text: str) -> None:
    """Write a file only the service user can read (configs with passwords)."""
    path.write_text(text)
    path.chmod(0o600)
    chown_to_service_user(path)


POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def find_binary(name: str, package: str, extra_dirs: list[Path] | None = None) -> str:
    """Locate a service binary or say exactly how to install it."""
    found = shutil.which(name)
    if found:
        return found
    for folder in extra_dirs or []:
        candidate = folder / name
        if candidate.exists():
            return str(candidate)
    raise MissingBinaryError(
        f"The local backend needs '{name}', which was not found on PATH"
        + (f" or in {', '.join(map(str, extra_dirs))}" if extra_dirs else "")
        + f". Install it with: sudo apt-get install -y {package} "
        f"(the README's setup command does this when run as root)."
    )


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
