"""Container environments: a matrix environment whose Python runs in an interpreter image.

Responsibility: build (and cache) the virtualenv of an environment whose Python the
host cannot run (Debian forky's python3.14 / python3.15, see docker/build.sh), run any
command of that environment inside a container, and make sure no container outlives
the run that started it.

How it fits the rest of the matrix: :func:`build` returns a :class:`ContainerEnv`, a
:class:`~harness.matrix.environments.BuiltEnv` whose ``python`` is a small launcher
script. Whatever the matrix runs with an environment's python (the version check, the
smoke check, ``python -m pytest scenarios/``) therefore runs inside a container of the
image, with no other change to the code that runs it.

What the container sees: the checkout, the environment's folder and any absolute
folder named on the command line (the results folder) are bind-mounted at their host
paths, so every path in results.json and the virtualenv's editable install is the same
inside and outside. It shares the host's network, PID and hostname namespaces and the
Docker engine's socket, so its scenarios run on the docker backend with the same
service images a host environment uses (see :mod:`harness.matrix.sources`), and the
docker backend's owner labels (host/pid/start time) mean the same thing inside and
outside. pip and uv reach the package index only with the host's CA bundle (``pip
config list``'s ``cert``), mounted read-only and named by ``SSL_CERT_FILE`` and
``PIP_CERT``; local index folders and constraint files are mounted read-only too.

Clean-up: every container carries ``io.harness.container-env`` (the environment),
``io.harness.owner`` (the launcher process, as the docker backend writes it) and
``io.harness.matrix-run``. The launcher removes its container in a ``finally``, also on
SIGTERM/SIGINT; :func:`removing_containers` wraps a matrix run and removes whatever of
that run is left, however it ends; :func:`sweep` also removes containers whose owner
process is gone (a launcher killed with SIGKILL).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import HarnessError
from harness.matrix import environments
from harness.matrix.axes import Combination
from harness.matrix.sources import ContainerPython

LABEL_ENV = "io.harness.container-env"
LABEL_OWNER = "io.harness.owner"  # the same label the docker backend's sweep reads
LABEL_MATRIX = "io.harness.matrix-run"
MATRIX_RUN_VARIABLE = "HARNESS_MATRIX_RUN"
LAUNCHER = ".harness-launch/python"
FREEZE = ".harness-freeze.txt"
CA_PATH = "/etc/harness/host-ca.pem"
# The scenarios' own clean-up (services, workers) after SIGTERM; below the matrix's own
# grace for the launcher (run.STOP_GRACE_S, 20 s), so the finally here gets to run.
STOP_GRACE_S = 15
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# CPU weight of a container environment. Under cgroup v1 a container is ONE scheduling
# entity with the weight of one host process (cpu.shares 1024), while a host run's
# processes compete one by one: with -n 4 (four pytest processes, each with a worker and
# its pool) on a busy machine, the container got a twentieth of the CPU and its workers
# missed their start timeouts (measured: 2 of 22 reached "ready"). This weight makes the
# container count like the 16 or so processes it runs; it changes nothing on an idle host.
CPU_SHARES = 16 * 1024
# Variables of the host process that the container's run gets (the rest is the image's).
PASS_PREFIXES = ("HARNESS_", "TC_", "TESTCONTAINERS_", "PYTEST_", "CELERY_")
PASS_NAMES = ("PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
              "PYTHONFAULTHANDLER", "COLUMNS", "TERM")
# Installer settings whose values may name host files or folders to mount.
PATH_SETTINGS = ("UV_DEFAULT_INDEX", "UV_INDEX", "UV_FIND_LINKS", "UV_CONSTRAINT",
                 "UV_OVERRIDE", "UV_BUILD_CONSTRAINT")
T = TypeVar("T")


@dataclass(frozen=True)
class ContainerEnv(environments.BuiltEnv):
    """A built environment whose interpreter runs in a container of ``image``."""

    image: str = ""
    python_version: str = ""

    @property
    def python(self) -> Path:  # type: ignore[override]
        return self.path / LAUNCHER

    def facts(self) -> dict[str, Any]:
        """The host environment's facts plus where it ran (the matrix legend shows it)."""
        base = getattr(super(), "facts", None)
        return {**(base() if base else {}),
                "runs_in": {"image": self.image, "python": self.python_version}}


# --- docker run -------------------------------------------------------------------------
def docker_cli() -> str:
    found = shutil.which("docker")
    if not found:
        raise HarnessError("A container environment needs the docker CLI, which is not on "
                           "PATH. Install docker.io (bash docker/ci-setup.sh does).")
    return found


def docker_socket() -> str | None:
    """The engine's Unix socket on the host, to hand to the container's docker backend."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    path = host[len("unix://"):] if host.startswith("unix://") else None
    return path if path and Path(path).exists() else None


def _owner() -> str:
    from harness.services import docker_engine

    return docker_engine.owner_label(os.getpid())


def host_paths(settings: Mapping[str, str]) -> list[str]:
    """The absolute host paths that installer settings name (``file://`` URLs, lists).

    A local index is mounted with its parent folder: a PEP 503 ``simple/`` page links
    its files relatively (``../files/...``).
    """
    found = []
    for key, value in settings.items():
        if key not in PATH_SETTINGS:
            continue
        for item in value.replace(",", " ").split():
            path = item.removeprefix("file://")
            if not (path.startswith("/") and Path(path).exists()):
                continue
            index = key in ("UV_DEFAULT_INDEX", "UV_INDEX") and len(Path(path).parts) > 2
            found.append(str(Path(path).parent) if index else path)
    return found


SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
               "/run", "/sbin", "/sys", "/usr", "/var/lib", "/var/run")


def mountable(arg: str) -> str | None:
    """The host folder an argument names (itself, or a file's folder), if it may be mounted.

    Never a system folder nor a top-level one: mounting the host's /usr over the image's
    would replace the interpreter the container exists for.
    """
    if not arg.startswith("/"):
        return None
    path = Path(arg)
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir() or len(folder.resolve().parts) < 3:
        return None
    real = str(folder.resolve())
    if any(real == d or real.startswith(d + "/") for d in SYSTEM_DIRS):
        return None
    return real


def mount_args(paths: Sequence[str], read_only: Sequence[str] = ()) -> list[str]:
    """``-v`` arguments, each path at itself; a path inside another is not mounted twice."""
    args, seen = [], []
    for path, ro in [*((p, False) for p in paths), *((p, True) for p in read_only)]:
        real = str(Path(path).resolve())
        if any(real == s or real.startswith(s.rstrip("/") + "/") for s in seen):
            continue
        seen.append(real)
        args += ["-v", f"{real}:{real}" + (":ro" if ro else "")]
    return args


def run_argv(image: str, env_dir: Path, argv: Sequence[str], *, cwd: str, name: str,
             environ: Mapping[str, str], extra_mounts: Sequence[str] = ()) -> list[str]:
    """The ``docker run`` command line for one command of a container environment."""
    labels = {LABEL_ENV: env_dir.name, LABEL_OWNER: _owner(),
              LABEL_MATRIX: environ.get(MATRIX_RUN_VARIABLE, "")}
    passed = {k: v for k, v in environ.items()
              if k.startswith(PASS_PREFIXES) or k in PASS_NAMES}
    passed.update({"VIRTUAL_ENV": str(env_dir), "PATH": f"{env_dir}/bin:{SYSTEM_PATH}",
                   "HOME": "/root"})
    socket = docker_socket()
    mounts = [cwd, str(env_dir), *extra_mounts]
    out = [docker_cli(), "run", "--rm", "--name", name,
           *(a for k, v in labels.items() for a in ("--label", f"{k}={v}")),
           "--network", "host", "--pid", "host", "--uts", "host",
           "--cpu-shares", str(CPU_SHARES),
           *mount_args(mounts),
           *(["-v", f"{socket}:/var/run/docker.sock"] if socket else []),
           *(a for k, v in sorted(passed.items()) for a in ("-e", f"{k}={v}")),
           "-w", cwd, image, *argv]
    return out


def remove(name: str) -> None:
    """Remove one container by name, quietly (it may be gone already)."""
    subprocess.run([docker_cli(), "rm", "-f", name], capture_output=True, timeout=60,
                   check=False)


def launch(image: str, env_dir: Path, args: Sequence[str]) -> int:
    """Run ``python ARGS`` of the environment in a container; its exit code.

    The launcher script calls this. SIGTERM and SIGINT reach the container's process
    (docker run forwards them) and end this process's wait; the container is removed
    in the ``finally`` after at most :data:`STOP_GRACE_S` for the scenarios' own
    clean-up, and service containers whose owner is gone are swept after it.
    """
    cwd = os.getcwd()
    # Absolute paths on the command line (--results-dir DIR, --out FILE) must exist inside.
    extra = [m for m in (mountable(a) for a in args) if m]
    name = f"harness-env-{uuid.uuid4().hex[:12]}"
    argv = run_argv(image, env_dir, [str(env_dir / "bin" / "python"), *args], cwd=cwd,
                    name=name, environ=os.environ, extra_mounts=extra)
    proc = subprocess.Popen(argv)

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
        except (subprocess.TimeoutExpired, OSError, KeyboardInterrupt):
            pass
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
        remove(name)
        sweep_services()


def write_launcher(env_dir: Path, image: str) -> Path:
    """The script that stands for the environment's python on the host."""
    launcher = env_dir / LAUNCHER
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text("#!/bin/sh\n# Runs this environment's python in a container of "
                        f"{image} (harness/matrix/containers.py).\n"
                        f"exec {shlex.quote(sys.executable)} -m harness.matrix.containers "
                        f"{shlex.quote(image)} {shlex.quote(str(env_dir))} \"$@\"\n")
    launcher.chmod(0o755)
    return launcher


# --- clean-up -------------------------------------------------------------------------
def _listed() -> list[tuple[str, str, str]]:
    out = subprocess.run([docker_cli(), "ps", "-a", "--filter", f"label={LABEL_ENV}",
                          "--format", (f'{{{{.ID}}}}\t{{{{.Label "{LABEL_OWNER}"}}}}\t'
                                      f'{{{{.Label "{LABEL_MATRIX}"}}}}')],
                         capture_output=True, text=True, timeout=60, check=False)
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.strip()]
    return [(r + ["", ""])[:3] for r in rows]  # type: ignore[misc]


def sweep(matrix_run: str | None = None) -> list[str]:
    """Remove container environments of ``matrix_run`` and those whose owner is gone."""
    if not shutil.which("docker"):
        return []
    from harness.services.docker_engine import owner_alive

    removed = []
    for cid, owner, run in _listed():
        if (matrix_run and run == matrix_run) or owner_alive(owner) is False:
            remove(cid)
            removed.append(cid)
    return removed


def sweep_services() -> None:
    """The docker backend's own sweep: service containers whose owner process is gone."""
    try:
        from harness.services import docker_engine

        if docker_engine.IMPORT_ERROR is None:
            docker_engine.sweep_orphans()
    except Exception:  # noqa: BLE001, S110 - a sweep must not turn an ending run into a crash
        pass


def removing_containers(func: Callable[..., T]) -> Callable[..., T]:
    """Give a matrix run an id for its containers, and remove all of them when it ends."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        run = os.environ.setdefault(MATRIX_RUN_VARIABLE, uuid.uuid4().hex[:12])
        try:
            return func(*args, **kwargs)
        finally:
            try:
                if sweep(run):
                    sweep_services()
            except (OSError, subprocess.SubprocessError):
                pass

    return wrapper


# --- the environment ------------------------------------------------------------------
def _install_env() -> tuple[dict[str, str], dict[str, str]]:
    """(variables for uv inside the container, the settings that decide what resolves)."""
    host = environments.uv_environment()
    settings_of = getattr(environments, "install_settings", None)
    settings = settings_of(host) if settings_of else {}
    inside = {k: v for k, v in host.items() if k.startswith("UV_") and k != "UV_CACHE_DIR"}
    if host.get("SSL_CERT_FILE") and Path(host["SSL_CERT_FILE"]).is_file():
        inside.update(SSL_CERT_FILE=CA_PATH, PIP_CERT=CA_PATH, REQUESTS_CA_BUNDLE=CA_PATH)
    # The venv is on another mount than the cache: uv's hard links cannot cross it.
    inside["UV_LINK_MODE"] = "copy"
    return inside, settings


def uv_cache_dir(uv: str) -> str | None:
    try:
        out = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def env_key(combo: Combination, python: ContainerPython, project_root: Path,
            resolution: Any, settings: Mapping[str, str]) -> str:
    """Folder name: the venv id plus a hash of the image, the pins and what resolves them."""
    facts = {"requirements": combo.requirements(), "image": python.image_id,
             "python_version": python.version, "project": str(project_root.resolve()),
             "pyproject": hashlib.sha256((project_root / "pyproject.toml").read_bytes())
             .hexdigest(), "installer": "uv in container",
             "resolution": resolution.to_dict() if resolution is not None else None,
             "settings": dict(settings)}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:10]
    return f"{combo.venv_id}-{digest}"


def build(combo: Combination, python: ContainerPython, project_root: Path, *,
          root: Path | None = None, log_path: Path,
          timeout_s: float = environments.BUILD_TIMEOUT_S, resolution: Any = None
          ) -> ContainerEnv:
    """The container environment for ``combo``, built inside the image unless cached.

    The virtualenv is made inside a container by the host's uv (mounted read-only) with
    the host's uv cache, and kept in the matrix's environment cache on the host, keyed by
    the image id, the pins, pyproject.toml and the resolution.

    Raises:
        EnvBuildError: the build failed or timed out, or the pins did not install.
    """
    started = time.monotonic()
    uv = environments.find_uv()
    if not uv:
        raise environments.EnvBuildError(
            "A container environment is built with uv, which was not found: pip install uv.")
    inside, settings = _install_env()
    path = (root or environments.cache_root()) / env_key(combo, python, project_root,
                                                         resolution, settings)
    stamp = path / environments.STAMP
    extra = {"image": python.image, "python_version": python.version}
    if stamp.exists() and (path / "bin" / "python").is_symlink():
        write_launcher(path, python.image)  # the harness's interpreter may have moved
        installed = json.loads(stamp.read_text()).get("installed") or {}
        return _env(combo, path, True, started, resolution, installed, settings, extra)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env_python = path / "bin" / "python"
    uv_args = resolution.uv_args() if resolution is not None else []
    script = " && ".join([
        shlex.join(["uv", "venv", "--quiet", "--python", str(python.path), str(path)]),
        shlex.join(["uv", "pip", "install", "--compile-bytecode", "--python", str(env_python),
                    *uv_args, "-e", str(project_root), *combo.requirements()]),
        shlex.join(["uv", "pip", "freeze", "--python", str(env_python)]) + " > "
        + shlex.quote(str(path / FREEZE))])
    cache = uv_cache_dir(uv)
    read_only = host_paths(inside)
    mounts = ["-v", f"{uv}:/usr/local/bin/uv:ro",
              *(["-v", f"{cache}:{cache}", "-e", f"UV_CACHE_DIR={cache}"] if cache else []),
              *mount_args([], read_only)]
    ca = environments.uv_environment().get("SSL_CERT_FILE")
    if ca and Path(ca).is_file():
        mounts += ["-v", f"{ca}:{CA_PATH}:ro"]
    name = f"harness-envbuild-{uuid.uuid4().hex[:12]}"
    argv = run_argv(python.image, path, ["sh", "-c", script], cwd=str(project_root),
                    name=name, environ={**os.environ, **inside})
    argv[argv.index("-w"):argv.index("-w")] = mounts
    argv[argv.index("-w"):argv.index("-w")] = [a for k, v in inside.items()
                                                for a in ("-e", f"{k}={v}")]
    try:
        environments.run_bounded(argv, log_path, timeout_s=timeout_s,
                                 what=f"uv in {python.image} to build {combo.venv_id}")
    finally:
        remove(name)
    launcher = write_launcher(path, python.image)
    have = environments._check_versions(combo, launcher, log_path)
    installed = _parse_freeze((path / FREEZE).read_text())
    stamp.write_text(json.dumps({"id": combo.venv_id, "installer": "uv in container",
                                 "packages": have, "python": python.version,
                                 "image": python.image, "image_id": python.image_id,
                                 "project": str(project_root.resolve()),
                                 "resolution": resolution.to_dict() if resolution else None,
                                 "settings": dict(settings), "installed": installed,
                                 "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    environments.prune_superseded(path, project_root)
    return _env(combo, path, False, started, resolution, installed, settings, extra)


def _parse_freeze(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            found[name.strip().lower()] = version.strip()
    return found


def _env(combo: Combination, path: Path, reused: bool, started: float, resolution: Any,
         installed: dict[str, str], settings: Mapping[str, str], extra: Mapping[str, str]
         ) -> ContainerEnv:
    kwargs: dict[str, Any] = {}
    fields = getattr(environments.BuiltEnv, "__dataclass_fields__", {})
    for key, value in (("resolution", resolution), ("installed", installed),
                       ("settings", dict(settings))):
        if key in fields and value is not None:
            kwargs[key] = value
    return ContainerEnv(combo, path, reused, time.monotonic() - started, **kwargs, **extra)


def build_any(combo: Combination, python: Any, project_root: Path, **kwargs: Any
              ) -> environments.BuiltEnv:
    """A container environment for an image's Python, else the host's virtualenv."""
    if isinstance(python, ContainerPython):
        return build(combo, python, project_root, **kwargs)
    return environments.build(combo, python, project_root, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.matrix.containers IMAGE ENV_DIR ARGS...`` (the launcher)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m harness.matrix.containers IMAGE ENV_DIR [PYTHON ARGS...]",
              file=sys.stderr)
        return 2
    return launch(args[0], Path(args[1]), args[2:])


if __name__ == "__main__":
    sys.exit(main())
