"""Redis from the system's binary: no persistence, a generated password, 127.0.0.1 only.

Responsibility: start one private Redis (the Celery broker and result backend),
prove it answers PING with the password, and remove every trace on stop.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis

from harness._process import ManagedProcess, StartStop, wait_for
from harness.errors import PortInUseError, ServiceStartError
from harness.services.base import (
    LOOPBACK,
    find_binary,
    free_port,
    generate_password,
    make_workdir,
    remove_tree,
    service_user,
    write_private,
)


class LocalRedis(StartStop):
    name = "redis"

    def __init__(self, port: int | None = None, start_timeout_s: float = 15.0) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.password = generate_password()
        self.version = ""
        self.start_s = 0.0
        self._wanted_port = port
        self._timeout_s = start_timeout_s
        self._dir: Path | None = None
        self._proc: ManagedProcess | None = None


    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, db=db,
                           socket_timeout=5, socket_connect_timeout=5)

    def start(self) -> None:
        began = time.monotonic()
        binary = find_binary("redis-server", "redis-server")
        self._dir = make_workdir("redis")
        attempts = 1 if self._wanted_port else 3
        for attempt in range(attempts):
            self.port = self._wanted_port or free_port()
            conf = self._dir / "redis.conf"
            # The password goes in a private file, not on the command line where ps shows it.
            write_private(conf, "\n".join([
                f"bind {LOOPBACK}", f"port {self.port}", "protected-mode yes",
                f"requirepass {self.password}", 'save ""', "appendonly no",
                f"dir {self._dir}", "databases 64", "",
            ]))
            self._proc = ManagedProcess([binary, str(conf)], self._dir / f"redis-{attempt}.log",
                                        user=service_user())
            if wait_for(lambda: self.client().ping(), timeout_s=self._timeout_s,
                        while_alive=self._proc):
                self.version = str(self.client().info("server")["redis_version"])
                self.start_s = time.monotonic() - began
                return
            log_tail = self._proc.tail()
            self._proc.stop(grace_s=2)
            if "Address already in use" in log_tail:
                if self._wanted_port:
                    raise PortInUseError(
                        f"Redis could not listen on {LOOPBACK}:{self.port}: the port is taken. "
                        f"Stop what uses it or leave the port unset.\n{log_tail}")
                continue
            raise ServiceStartError(
                f"Redis did not answer PING on {LOOPBACK}:{self.port} within "
                f"{self._timeout_s:.0f} s. Log tail:\n{log_tail}")
        raise PortInUseError(f"Redis found no free port after {attempts} tries.")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(grace_s=5)
            self._proc = None
        if self._dir is not None:
            remove_tree(self._dir)
            self._dir = None

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.tail(lines) if self._proc else "(redis is not running)"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()
