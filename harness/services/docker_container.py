"""One service in one container: start, prove ready, report, stop.

Responsibility: what the docker backend's Postgres, PgBouncer and Redis share: create
the container through testcontainers on the run's network with its port published on
127.0.0.1 only, wait (bounded) for a real round trip, read its log tail, and remove it
whatever happened. The services themselves are in :mod:`harness.services.docker`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from harness._process import StartStop, wait_for
from harness.errors import PortInUseError, ServiceStartError
from harness.services import docker_engine as engine
from harness.services.base import LOOPBACK, free_port

READY_POLL_S = 0.05


class ContainerService(StartStop):
    """One service in one container, owned by the code that started it.

    Args:
        start_timeout_s: how long the service may take to answer its round trip.
        host_port: the port to publish on 127.0.0.1; None picks a free one.
    """

    name = "service"
    container_port = 0

    def __init__(self, start_timeout_s: float, host_port: int | None) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.version = ""
        self.start_s = 0.0
        self.image = engine.image(self.name)
        self._timeout_s = start_timeout_s
        self._host_port = host_port
        self._container: Any = None
        self._holds_network = False


    def start(self) -> None:  # pragma: no cover - every service defines it
        raise NotImplementedError

    def _launch(self, *, env: dict[str, str], command: list[str] | None = None,
                entrypoint: list[str] | None = None, aliases: tuple[str, ...] = (),
                **options: Any) -> None:
        """Create and start the container and learn its published port."""
        from testcontainers.core.container import DockerContainer

        engine.prepare()
        engine.require_image(self.image, self.name)
        network = engine.acquire_network()
        self._holds_network = True
        container = DockerContainer(self.image,
                                    docker_client_kw={"timeout": engine.ENGINE_TIMEOUT_S})
        container.with_command(command or [])
        for key, value in env.items():
            container.with_env(key, value)
        container.with_network(network).with_network_aliases(*aliases)
        # Published on 127.0.0.1 only: nothing outside this machine reaches the services.
        container.ports[f"{self.container_port}/tcp"] = (LOOPBACK, self._host_port)
        container.with_name(f"harness-{engine.RUN_ID}-{self.name}-{secrets.token_hex(3)}")
        container.with_kwargs(labels=engine.labels(self.name), entrypoint=entrypoint, **options)
        self._container = container
        try:
            container.start()
        except Exception as exc:
            text = str(exc)
            if "already allocated" in text or "address already in use" in text:
                raise PortInUseError(
                    f"The {self.name} container could not publish {LOOPBACK}:{self._host_port}: "
                    f"the port is taken. Stop what uses it or leave the port unset.") from exc
            raise ServiceStartError(
                f"Docker could not start the {self.name} container from image '{self.image}': "
                f"{text.splitlines()[0] if text else type(exc).__name__}. Check the image "
                f"(docker/build.sh makes the default ones) and the engine.") from exc
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        bindings = (wrapped.attrs["NetworkSettings"]["Ports"] or {}).get(
            f"{self.container_port}/tcp") or []
        if not bindings:
            raise ServiceStartError(
                f"The {self.name} container ({self.image}) has no published port "
                f"{self.container_port}; its state is '{wrapped.status}'. Log tail:\n"
                f"{self.log_tail()}")
        self.port = int(bindings[0]["HostPort"])

    def _launch_on_own_port(self, **launch: Any) -> None:
        """:meth:`_launch` with a host port chosen here, not by Docker.

        Docker gives an ephemeral binding a new port when the container restarts, and
        a restart fault must keep the address the worker knows. Another process may
        take the free port first: then a new one is tried.
        """
        wanted = self._host_port
        attempts = 1 if wanted else 3
        for attempt in range(attempts):
            self._host_port = wanted or free_port()
            try:
                self._launch(**launch)
                return
            except PortInUseError:
                self.stop()
                if attempt == attempts - 1:
                    raise

    def _restart_in_place(self, stop_signal: str, check: Callable[[], object],
                          what: str, down_s: float = 0.0) -> None:
        """Stop the container's main process with ``stop_signal``, start the same
        container again ``down_s`` seconds after it stopped (same data, same published
        port) and wait until ``check`` passes.

        Raises:
            ServiceStartError: it is not running, or came back on another port.
        """
        wrapped = self._wrapped()
        if wrapped is None:
            raise ServiceStartError(f"the {self.name} container is not running; nothing to "
                                    f"restart")
        wrapped.kill(signal=stop_signal)
        wrapped.wait(timeout=30)
        time.sleep(down_s)
        wrapped.start()
        wrapped.reload()
        bindings = (wrapped.attrs["NetworkSettings"]["Ports"] or {}).get(
            f"{self.container_port}/tcp") or []
        port = int(bindings[0]["HostPort"]) if bindings else None
        if port != self.port:
            raise ServiceStartError(
                f"after its restart the {self.name} container publishes port {port}, not "
                f"{self.port}: the worker's URL no longer reaches it")
        self._wait_ready(check, f"{what} after a restart")

    def _wait_ready(self, check: Callable[[], object], what: str) -> None:
        """Poll ``check`` (a real round trip) until it is true, bounded by the timeout."""
        waited = wait_for(check, timeout_s=self._timeout_s, interval_s=READY_POLL_S,
                          while_alive=self)
        if not waited:
            raise ServiceStartError(
                f"{self.name} in container {self.image} "
                f"{waited.explain(f'answer {what} on {LOOPBACK}:{self.port}')}. "
                f"Container log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            engine.remove_container(container)
        if self._holds_network:
            self._holds_network = False
            engine.release_network()

    def alive(self) -> bool:
        wrapped = self._wrapped()
        if wrapped is None:
            return False
        try:
            wrapped.reload()
        except Exception:  # noqa: BLE001 - gone or engine unreachable: not running
            return False
        return wrapped.status == "running"

    def log_tail(self, lines: int = 40) -> str:
        wrapped = self._wrapped()
        if wrapped is None:
            return f"({self.name} is not running)"
        try:
            text = wrapped.logs(tail=lines).decode(errors="replace").rstrip()
        except Exception as exc:  # noqa: BLE001 - the tail is only an aid
            return f"(could not read the {self.name} container's log: {exc})"
        return text or f"(the {self.name} container's log is empty)"

    def _wrapped(self) -> Any:
        return engine.wrapped(self._container)
