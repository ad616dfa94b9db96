"""What every service of the local backend does the same way.

Responsibility: the shape of a local service (PostgreSQL, PgBouncer, Redis): start
its binary as the service user on a free 127.0.0.1 port, retrying with a new port
when another process took the free one first, prove readiness with a real round
trip, and on stop end the process and remove its private folder. A service says
only what is its own: how to launch one attempt, how to ask it a real question,
and how it reports a port in use.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness._process import ManagedProcess, StartStop, wait_for
from harness.errors import PortInUseError, ServiceStartError
from harness.services.base import LOOPBACK, free_port, make_workdir, remove_tree

START_ATTEMPTS = 3  # free ports tried before giving up


class LocalService(StartStop):
    """One local service process with its own temp folder.

    Subclasses set ``name`` and ``label`` and implement :meth:`_prepare` (once per
    start), :meth:`_launch` (once per port) and :meth:`_answers` (the readiness
    round trip); ``ready_what`` names that round trip in messages.
    """

    name = "service"
    label = "The service"
    ready_what = "answer"
    stop_grace_s = 5.0

    def __init__(self, *, port: int | None, start_timeout_s: float) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.version = ""
        self.start_s = 0.0
        self._wanted_port = port
        self._timeout_s = start_timeout_s
        self._dir: Path | None = None
        self._proc: ManagedProcess | None = None
        self._restarts = 0

    # --- what a service says about itself ---------------------------------------------

    def _prepare(self, folder: Path) -> None:
        """Work done once before the first attempt (initdb, an auth file)."""

    def _launch(self, folder: Path, attempt: int) -> ManagedProcess:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def _on_ready(self) -> None:
        """Read what is only known once it answers (its version)."""

    # --- the shared part --------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        self._dir = make_workdir(self.name)
        self._prepare(self._dir)
        attempts = 1 if self._wanted_port else START_ATTEMPTS
        for attempt in range(attempts):
            self.port = self._wanted_port or free_port()
            self._proc = self._launch(self._dir, attempt)
            waited = wait_for(self._answers, timeout_s=self._timeout_s, while_alive=self._proc)
            if waited:
                self._on_ready()
                self.start_s = time.monotonic() - began
                return
            log_tail = self._proc.tail()
            exit_code = self._proc.popen.poll()  # None: it runs, but does not answer
            self._proc.stop(grace_s=2)
            if "already in use" in log_tail:
                if self._wanted_port:
                    raise PortInUseError(
                        f"{self.label} could not listen on {LOOPBACK}:{self.port}: the port is "
                        f"taken. Stop what uses it, or leave the port unset and a free one is "
                        f"picked.\n{log_tail}")
                continue  # another process took the free port first: pick a new one
            what = f"exited at start (code {exit_code}) and " if exit_code is not None else ""
            raise ServiceStartError(
                f"{self.label} {what}"
                f"{waited.explain(f'{self.ready_what} on {LOOPBACK}:{self.port}')}. "
                f"Its log tail:\n{log_tail}")
        raise PortInUseError(f"{self.label} found no free port on {LOOPBACK} after {attempts} "
                             f"tries; something keeps taking ports there.")

    def _restart(self, stop_signal: int, down_s: float = 0.0) -> None:
        """End the process with ``stop_signal`` and start it again on the same port and
        folder (a fault: the data and the address survive, every connection does not),
        ``down_s`` seconds after it ended.

        Raises:
            ServiceStartError: it did not answer again within the start timeout.
        """
        if self._proc is None or self._dir is None:
            raise ServiceStartError(f"{self.label} is not running; there is nothing to restart")
        self._proc.stop_signal = stop_signal
        self._proc.stop(grace_s=self.stop_grace_s)
        time.sleep(down_s)
        self._restarts += 1
        self._proc = self._launch(self._dir, START_ATTEMPTS + self._restarts)
        waited = wait_for(self._answers, timeout_s=self._timeout_s, while_alive=self._proc)
        if not waited:
            raise ServiceStartError(
                f"{self.label} {waited.explain(f'{self.ready_what} on {LOOPBACK}:{self.port}')} "
                f"after a restart. Its log tail:\n{self._proc.tail()}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(grace_s=self.stop_grace_s)
            self._proc = None
        if self._dir is not None:
            remove_tree(self._dir)
            self._dir = None

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.tail(lines) if self._proc else f"({self.name} is not running)"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()
