"""The Docker engine side of the docker backend: settings, ownership and clean-up.

Responsibility: which images the services use (settings), how testcontainers is
configured on a machine without a registry, the labels that tie every container and
network to the process that made it, the run's private network, and the removal of
all of them: on stop, at interpreter exit, and (for a run that was killed) by a sweep
at the next start.

Why a sweep: without the Ryuk reaper (its image cannot be pulled here), nothing
removes the containers of a process that died by SIGKILL. Each container carries
``io.harness.owner=<host>/<pid>/<process start time>``; the first start in a new
process removes the containers and networks whose owner on this host is gone. Live
owners (other pytest processes, xdist workers) are never touched.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid
from typing import Any

from harness import procinfo
from harness.errors import ServiceStartError
from harness.services.base import LOOPBACK

try:
    from docker.errors import DockerException, ImageNotFound, NotFound
    from testcontainers.core.config import ConnectionMode, testcontainers_config
    from testcontainers.core.network import Network

    import docker

    IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # the local backend must keep working without these
    IMPORT_ERROR = exc

log = logging.getLogger("harness.docker")

# Defaults are the images docker/build.sh makes: no registry is reachable here, and a
# missing image name would make testcontainers try a pull. See docker/README.md for
# switching to public images.
IMAGE_SETTINGS: dict[str, tuple[str, str]] = {
    "postgres": ("HARNESS_IMAGE_POSTGRES", "harness-postgres:15"),
    "pgbouncer": ("HARNESS_IMAGE_PGBOUNCER", "harness-pgbouncer:1.18"),
    "redis": ("HARNESS_IMAGE_REDIS", "harness-redis:7.0"),
}
PULL_SETTING = "HARNESS_DOCKER_PULL"  # "1": pull a missing image instead of failing
ENGINE_TIMEOUT_S = 60  # per engine API call; a stuck engine must not hang the run

LABEL_RUN = "io.harness.run"
LABEL_OWNER = "io.harness.owner"
LABEL_SERVICE = "io.harness.service"
RUN_ID = uuid.uuid4().hex[:12]
_PID = os.getpid()  # the atexit clean-up acts only in the process that imported us

_lock = threading.RLock()
_client: Any = None
_prepared = False
_network: Any = None
_network_users = 0


def image(service: str) -> str:
    """The image configured for ``service`` (``postgres``, ``pgbouncer`` or ``redis``)."""
    variable, default = IMAGE_SETTINGS[service]
    return os.environ.get(variable) or default


def pull_allowed() -> bool:
    return os.environ.get(PULL_SETTING, "") in ("1", "true", "yes")


def client() -> Any:
    """The process's Docker engine client, made on first use."""
    global _client
    if IMPORT_ERROR is not None:
        raise ServiceStartError(
            f"The docker backend needs the Python package testcontainers, which is not "
            f"installed ({IMPORT_ERROR}). Install it: pip install 'testcontainers>=4.9'.")
    with _lock:
        if _client is None:
            _client = docker.from_env(timeout=ENGINE_TIMEOUT_S)
        return _client


def ping(timeout_s: float = 5.0) -> None:
    """Raise unless an engine answers within ``timeout_s`` (a short probe for ``auto``)."""
    client()  # raises the clear "not installed" error first
    probe = docker.from_env(timeout=timeout_s)
    try:
        probe.ping()
    finally:
        probe.close()


def image_present(name: str) -> bool:
    try:
        client().images.get(name)
    except ImageNotFound:
        return False
    return True


def require_image(name: str, service: str) -> None:
    """Fail with what to do when ``name`` is missing, instead of letting a pull hang."""
    if pull_allowed() or image_present(name):
        return
    raise ServiceStartError(
        f"The {service} image '{name}' is not present in the local Docker engine, and the "
        f"harness does not pull images unless {PULL_SETTING}=1. Build the images with "
        f"docker/build.sh, or set {IMAGE_SETTINGS[service][0]} to an image you have.")


def prepare() -> None:
    """Configure testcontainers and sweep dead runs' leftovers, once per process."""
    global _prepared
    with _lock:
        if _prepared:
            return
        _configure_testcontainers()
        removed = sweep_orphans()
        if removed:
            log.warning("removed %d container(s)/network(s) left by dead harness runs: %s",
                        len(removed), ", ".join(removed))
        _prepared = True


def _configure_testcontainers() -> None:
    """The settings that work on a machine with no registry (see docker/README.md).

    A setting the user made in the environment wins; ours only fill the gaps. They go
    on the configuration object because testcontainers reads the environment once, at
    import, and it may have been imported before us.
    """
    config = testcontainers_config
    if "TESTCONTAINERS_CONNECTION_MODE" not in os.environ:
        # /.dockerenv makes testcontainers think it runs inside a container and hand out
        # the bridge gateway; the ports are published on the host's 127.0.0.1.
        config.connection_mode_override = ConnectionMode.docker_host
    if not (os.environ.get("TC_HOST") or os.environ.get("TESTCONTAINERS_HOST_OVERRIDE")):
        config.tc_host_override = LOOPBACK
    if "TC_POOLING_INTERVAL" not in os.environ:
        config.sleep_time = 0.1  # the default 1 s adds up to a second per start
    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ and not image_present(config.ryuk_image):
        config.ryuk_disabled = True  # it cannot be pulled; our labels and sweep clean up


# --- ownership --------------------------------------------------------------------
def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): tells a reused PID apart."""
    ticks = procinfo.start_ticks(pid)
    return None if ticks is None else str(ticks)


def owner_label(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_ticks(pid)}"


def labels(service: str = "") -> dict[str, str]:
    """Labels for a container or network this process owns."""
    found = {LABEL_RUN: RUN_ID, LABEL_OWNER: owner_label()}
    if service:
        found[LABEL_SERVICE] = service
    return found


def owner_alive(label: str) -> bool | None:
    """True/False for an owner on this host; None when it is another host's (unknown)."""
    try:
        host, pid, ticks = label.split("/")
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    return _start_ticks(int(pid)) == ticks


def sweep_orphans() -> list[str]:
    """Remove containers and networks whose owning process on this host is gone."""
    removed: list[str] = []
    engine = client()
    for container in engine.containers.list(all=True, filters={"label": LABEL_OWNER}):
        if owner_alive(container.labels.get(LABEL_OWNER, "")) is False:
            _quietly(lambda c=container: c.remove(force=True, v=True))
            removed.append(container.name)
    for network in engine.networks.list(filters={"label": LABEL_OWNER}):
        if owner_alive((network.attrs.get("Labels") or {}).get(LABEL_OWNER, "")) is False:
            _quietly(network.remove)
            removed.append(network.name)
    return removed


def remove_own() -> None:
    """Remove every container and network of this run (at exit, after a failure)."""
    global _network, _network_users
    if os.getpid() != _PID or _client is None:
        return  # a forked child must not remove its parent's services
    own = {"label": f"{LABEL_RUN}={RUN_ID}"}
    try:
        for container in _client.containers.list(all=True, filters=own):
            _quietly(lambda c=container: c.remove(force=True, v=True))
        for network in _client.networks.list(filters=own):
            _quietly(network.remove)
    except DockerException as exc:
        log.warning("could not list this run's containers to remove them: %s", exc)
    _network, _network_users = None, 0


def wrapped(container: Any) -> Any:
    """The docker SDK container behind a testcontainers one; None before it was created."""
    # testcontainers' accessor raises until start() succeeded; a failed start still
    # leaves a created container that must be removed.
    return getattr(container, "_container", None) if container is not None else None


def remove_container(container: Any) -> None:
    """Remove a testcontainers container (killed: these services keep nothing) and close
    its engine connection."""
    sdk_container = wrapped(container)
    if sdk_container is not None:
        _quietly(lambda: sdk_container.remove(force=True, v=True))
    _quietly(lambda: container.get_docker_client().client.close())


def _quietly(action: Any) -> None:
    try:
        action()
    except NotFound:
        pass  # already gone: that is what we wanted
    except DockerException as exc:
        log.warning("docker clean-up step failed: %s", exc)


atexit.register(remove_own)


# --- the run's network ------------------------------------------------------------
def acquire_network() -> Any:
    """The run's user-defined network (PgBouncer finds Postgres by alias on it)."""
    global _network, _network_users
    with _lock:
        if _network is None:
            network = Network(docker_client_kw={"timeout": ENGINE_TIMEOUT_S},
                              docker_network_kw={"labels": labels("network")})
            network.name = f"harness-{RUN_ID}"
            _network = network.create()
        _network_users += 1
        return _network


def release_network() -> None:
    """Drop one user; the last one removes the network."""
    global _network, _network_users
    with _lock:
        _network_users -= 1
        if _network_users > 0 or _network is None:
            return
        network, _network, _network_users = _network, None, 0
    _quietly(network.remove)
