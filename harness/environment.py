"""Facts about the environment a run happens in: Python and package versions.

Responsibility: the ``environment`` block of results.json and the values
expectation rules may depend on.
"""

from __future__ import annotations

import functools
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata

PACKAGES = ("sqlalchemy", "celery", "kombu", "billiard", "asyncpg", "psycopg",
            "psycopg-binary", "redis", "greenlet")


def package_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def python_version() -> str:
    return platform.python_version()


def python_tuple() -> tuple[int, int]:
    return sys.version_info[:2]


def libpq_info() -> dict[str, str]:
    """Which libpq psycopg uses: the binary wheel bundles its own, the C build the system's."""
    try:
        import psycopg

        version = psycopg.pq.version()
        return {"impl": psycopg.pq.__impl__,
                "libpq": f"{version // 10000}.{version % 10000}"}
    except Exception:  # noqa: BLE001 - psycopg missing or broken: just omit the fact
        return {}


@functools.lru_cache(maxsize=1)
def pgbouncer_version() -> str | None:
    """Version of the pgbouncer binary on PATH, or None when there is none."""
    binary = shutil.which("pgbouncer")
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                         timeout=10, check=False).stdout
    found = re.search(r"PgBouncer (\d+\.\d+\.\d+)", out)
    return found.group(1) if found else None


def version_tag() -> str:
    """The axis values that go in test ids, e.g. ``sa2.1.9-celery5.7.0-py3.11``."""
    pkgs = package_versions()
    return (f"sa{pkgs.get('sqlalchemy', '?')}-celery{pkgs.get('celery', '?')}"
            f"-py{python_version().rsplit('.', 1)[0]}")
