"""Set up a fresh Debian/Ubuntu machine and run the scenarios or the tests.

Responsibility: the README's two commands. Standard library only, because it
runs before the virtualenv exists::

    python3 -m harness.bootstrap scenarios [pytest args...]   # run scenarios/, print the summary
    python3 -m harness.bootstrap tests [pytest args...]       # run the harness's own tests

It installs the system packages it needs when run as root (when not root it
stops and prints the exact command to run), creates ``.venv`` next to this
project, installs the project into it (again only when pyproject.toml changed),
then runs pytest with the same interpreter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("HARNESS_VENV", ROOT / ".venv"))
TARGETS = {"scenarios": "scenarios/", "tests": "tests/"}

# binary -> Debian package. PostgreSQL's binaries live outside PATH on Debian.
SERVICE_BINARIES = {"initdb": "postgresql", "postgres": "postgresql",
                    "pgbouncer": "pgbouncer", "redis-server": "redis-server"}
POSTGRES_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def say(message: str) -> None:
    print(f"[harness] {message}", flush=True)


def missing_packages() -> list[str]:
    missing = []
    for binary, package in SERVICE_BINARIES.items():
        found = shutil.which(binary) or any((d / binary).exists() for d in POSTGRES_DIRS)
        if not found and package not in missing:
            missing.append(package)
    if not _venv_works():
        missing.append("python3-venv")
    return missing


def _venv_works() -> bool:
    if (VENV / "bin" / "python").exists():
        return True
    probe = subprocess.run([sys.executable, "-c", "import ensurepip, venv"],
                           capture_output=True, check=False)
    return probe.returncode == 0


# Only for the harness's own tests: the HTML matrix is checked in a real headless
# browser (tests/test_matrix_html_browser.py skips, saying why, when it is missing).
TEST_PACKAGES = {"chromium": "chromium"}


def install_system_packages(target: str) -> None:
    missing = missing_packages()
    if target == "tests":
        missing += [pkg for binary, pkg in TEST_PACKAGES.items()
                    if not shutil.which(binary) and pkg not in missing]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        sys.exit(
            f"[harness] The local backend needs {', '.join(missing)}, which are not installed. "
            f"Install them, then run this command again:\n\n"
            f"    sudo apt-get update && sudo {' '.join(command)}\n")
    say(f"installing {', '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*command, "-qq"], check=True, env=env)


# The project's optional dependencies each target installs besides its own.
EXTRAS = {"scenarios": "", "tests": "test"}


def ensure_venv(extra: str = "") -> Path:
    """The virtualenv, with the project (and ``extra``) installed when pyproject.toml changed.

    The stamp holds the pyproject hash and the extras installed with it, so running
    the scenarios after the tests does not reinstall, and the tests after the
    scenarios install only what they add.
    """
    python = VENV / "bin" / "python"
    if not python.exists():
        say(f"creating the virtualenv {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    stamp = VENV / ".harness-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    have_digest, _, have_extras = (stamp.read_text() if stamp.exists() else "").partition(" ")
    extras = set(filter(None, have_extras.split(","))) if have_digest == digest else set()
    if have_digest != digest or (extra and extra not in extras):
        extras |= {extra} if extra else set()
        say("installing the project and its dependencies into the virtualenv")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                       check=True)
        spec = f"{ROOT}[{','.join(sorted(extras))}]" if extras else str(ROOT)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", spec], check=True)
        stamp.write_text(f"{digest} {','.join(sorted(extras))}")
    return python


def default_workers() -> int:
    """xdist processes for the scenarios: twice the CPUs, at most 8.

    A variant spends most of its time waiting (time limits, held connections,
    retries), not computing: on 2 cores, 4 processes ran the suite in 3 min 58 s
    against 4 min 31 s with 2 and 7 min 40 s serially, with the same outcome words
    (bench/suite.py).
    """
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def chooses_parallelism(args: list[str]) -> bool:
    """Did the user pass -n / --numprocesses / -p no:xdist themselves?"""
    return any(a in ("-n", "--numprocesses", "no:xdist") or a.startswith(("-n", "--numprocesses="))
               for a in args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in TARGETS:
        sys.exit("[harness] usage: python3 -m harness.bootstrap {scenarios|tests} "
                 "[pytest options...]\n'scenarios' runs every scenario and prints the "
                 "summary table; 'tests' runs the harness's own tests.")
    target, extra = args[0], args[1:]
    if sys.version_info < (3, 10):  # noqa: UP036 - bootstrap runs on any python3 first
        sys.exit(f"[harness] Python 3.10 or newer is needed; this is {sys.version.split()[0]}. "
                 f"Run the command with a newer python3.")
    install_system_packages(target)
    python = ensure_venv(EXTRAS[target])
    if target == "scenarios" and not chooses_parallelism(extra):
        extra = ["-n", str(default_workers()), *extra]
    command = [str(python), "-m", "pytest", TARGETS[target], *extra]
    say("running " + " ".join(command[2:]))
    os.chdir(ROOT)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child process: this process becomes pytest, so the SIGINT, SIGTERM
    # or SIGHUP that a user, a CI runner, `timeout` or a closed terminal sends to this
    # command reaches pytest itself, which stops the run, says which tests did not
    # run and leaves nothing behind. A child would be orphaned and run on.
    os.execv(command[0], command)
    return 1  # not reached: execv replaces this process or raises OSError


if __name__ == "__main__":
    sys.exit(main())
