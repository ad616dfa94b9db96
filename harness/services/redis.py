"""Redis from the system's binary: no persistence, a generated password, 127.0.0.1 only.

Responsibility: start one private Redis (the Celery broker and result backend),
prove it answers PING with the password, and remove every trace on stop.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import redis

from harness._process import ManagedProcess
from harness.services.base import (
    LOOPBACK,
    find_binary,
    generate_password,
    service_user,
    write_private,
)
from harness.services.local import LocalService

SNAPSHOT = "dump.rdb"  # Redis's default dbfilename, in its dir: loaded at start


class LocalRedis(LocalService):
    name = "redis"
    label = "Redis"
    ready_what = "answer PING"

    def __init__(self, port: int | None = None, start_timeout_s: float = 15.0) -> None:
        super().__init__(port=port, start_timeout_s=start_timeout_s)
        self.password = generate_password()

    def url(self, db: int = 0, via: Any | None = None) -> str:
        """The URL of database ``db``; through ``via`` (a fault proxy in front of this
        Redis) when given."""
        front = via or self
        return f"redis://:{self.password}@{front.host}:{front.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password, db=db,
                           socket_timeout=5, socket_connect_timeout=5)

    def _launch(self, folder: Path, attempt: int) -> ManagedProcess:
        conf = folder / "redis.conf"
        # The password goes in a private file, not on the command line where ps shows it.
        write_private(conf, "\n".join([
            f"bind {LOOPBACK}", f"port {self.port}", "protected-mode yes",
            f"requirepass {self.password}", 'save ""', "appendonly no",
            f"dir {folder}", "databases 64", "",
        ]))
        return ManagedProcess([find_binary("redis-server", "redis-server"), str(conf)],
                              folder / f"redis-{attempt}.log", user=service_user())

    def restart(self, keep_data: bool = False, down_s: float = 0.0) -> None:
        """Restart on the same port (SIGTERM, then start again ``down_s`` seconds after
        it ended); with no persistence, every queued message and stored result is gone,
        as after a real Redis restart.

        ``keep_data``: as a Redis with save points does on SIGTERM, write a snapshot
        first; the new process loads it. The snapshot is then deleted, so a later
        restart of this Redis keeps nothing again.
        """
        if keep_data:
            self.client().save()
        self._restart(signal.SIGTERM, down_s)
        if keep_data and self._dir is not None:
            (self._dir / SNAPSHOT).unlink(missing_ok=True)

    def _answers(self) -> bool:
        return bool(self.client().ping())

    def _on_ready(self) -> None:
        self.version = str(self.client().info("server")["redis_version"])
