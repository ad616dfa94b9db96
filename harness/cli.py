"""The ``harness`` command.

Responsibility: command-line entry points. Today: ``harness doctor``, which says
what this machine has for the harness (binaries, versions, user, packages) and
what to install when something is missing.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys

from harness import environment
from harness.services.base import POSTGRES_BIN_DIRS, SERVICE_USER

# (binary, Debian package, version flag)
BINARIES = (("initdb", "postgresql", "--version"), ("postgres", "postgresql", "--version"),
            ("pgbouncer", "pgbouncer", "--version"), ("redis-server", "redis-server", "--version"),
            ("docker", "docker.io", "--version"))
REQUIRED = {"initdb", "postgres", "pgbouncer", "redis-server"}


def _locate(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for folder in POSTGRES_BIN_DIRS:
        if (folder / binary).exists():
            return str(folder / binary)
    return None


def _version(path: str, flag: str) -> str:
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(could not run: {exc})"
    found = re.search(r"\d+\.\d+(\.\d+)?", out.stdout + out.stderr)
    return found.group(0) if found else "(version unknown)"


def doctor() -> int:
    """Print what the harness found; exit 1 when the local backend cannot run."""
    problems: list[str] = []
    print(f"python      {environment.python_version()} ({sys.executable})")
    for name, version in environment.package_versions().items():
        print(f"  {name:<14} {version}")
    libpq = environment.libpq_info()
    if libpq:
        print(f"  psycopg uses the {libpq['impl']} implementation with libpq {libpq['libpq']}")
    print("binaries")
    for binary, package, flag in BINARIES:
        path = _locate(binary)
        if path is None:
            note = "required" if binary in REQUIRED else "optional (docker backend)"
            print(f"  {binary:<14} missing ({note}; apt-get install {package})")
            if binary in REQUIRED:
                problems.append(package)
        else:
            print(f"  {binary:<14} {_version(path, flag):<10} {path}")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
            print(f"user        root: services will run as '{SERVICE_USER}'")
        except KeyError:
            print(f"user        root, and no '{SERVICE_USER}' user to run services as")
            problems.append("postgresql")
    else:
        print(f"user        {pwd.getpwuid(os.geteuid()).pw_name}: services run as this user")
    if problems:
        packages = " ".join(sorted(set(problems)))
        print(f"\nThe local backend cannot run: install the missing packages with\n"
              f"    sudo apt-get install -y {packages}\nor run "
              f"'python3 -m harness.bootstrap scenarios' as root, which installs them.")
        return 1
    print("\nThe local backend can run: pytest scenarios/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="report binaries, versions and what is missing")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor()
    return 2  # argparse has already refused anything else


if __name__ == "__main__":
    sys.exit(main())
