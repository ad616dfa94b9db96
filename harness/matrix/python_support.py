"""Which Python lines a pinned release can be installed on, read from the package index.

Responsibility: the constraints of a pairwise plan. A pairwise plan puts versions
together that no one-at-a-time plan would (asyncpg 0.28.0 on Python 3.13); some of
those pairs cannot be installed, and an environment planned on one would only fail
its build. The index says which: a release's ``requires-python``, and for a package
with compiled wheels, whether any wheel is built for that CPython line (asyncpg
0.28.0 has none for 3.12 or newer; its sdist needs a compiler and headers).

Asked once per package through the JSON simple API (PEP 691), like the upload times
of :mod:`harness.matrix.resolution`, and cached in a file: a release's files never
change once uploaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from harness.matrix.index import ALSO_NEEDS
from harness.matrix.pairwise import Pair
from harness.matrix.resolution import SimpleIndex, _file_version

# The platform every environment runs on (host or container): Linux on x86-64.
PLATFORM = re.compile(r"manylinux.*x86_64|linux_x86_64|^any$")


def supports(files: Iterable[Mapping[str, Any]], version: str, python: str) -> bool:
    """Can ``version`` (given the index's files of its package) install on ``python``
    (``3.Y``) without a compiler?

    ``requires-python`` must admit the line; then, if the release has platform wheels
    at all, one must be for this CPython line (or an abi3 wheel for an older one). A
    release of pure wheels or only an sdist installs wherever ``requires-python``
    admits it.
    """
    wanted = Version(version)
    mine = [f for f in files if _file_version(f.get("filename", "")) == wanted]
    probe = Version(f"{python}.99")
    for f in mine:
        spec = f.get("requires-python")
        if spec:
            try:
                if probe not in SpecifierSet(spec):
                    return False
            except InvalidSpecifier:
                pass  # an unreadable constraint decides nothing
    tags = [tag for f in mine if f.get("filename", "").endswith(".whl")
            for tag in parse_wheel_filename(f["filename"])[3]]
    compiled = [t for t in tags if t.abi != "none"]
    if not compiled:
        return True
    cp = f"cp{python.replace('.', '')}"
    minor = int(python.split(".")[1])
    for tag in compiled:
        if not PLATFORM.search(tag.platform):
            continue
        if tag.interpreter == cp:
            return True
        if tag.abi == "abi3" and tag.interpreter.startswith("cp3") \
                and int(tag.interpreter[3:] or 99) <= minor:
            return True
    return False


class IndexPythonSupport:
    """``forbidden(axes)``: the python x package pairs the index says cannot install."""

    def __init__(self, index_url: str, cache_file: Path, cafile: str | None = None) -> None:
        self.index = SimpleIndex(index_url, cache_file, cafile)

    def forbidden(self, axes: Mapping[str, list[str]]) -> list[Pair]:
        found = []
        for package in ("sqlalchemy", "celery", "asyncpg", "psycopg"):
            for version in axes.get(package, []):
                for python in axes.get("python", []):
                    names = [package, *([ALSO_NEEDS[package]] if package in ALSO_NEEDS else [])]
                    if not all(self.supported(name, version, python) for name in names):
                        found.append((("python", python), (package, version)))
        return found

    def supported(self, package: str, version: str, python: str) -> bool:
        key = f"{self.index.url} {canonicalize_name(package)}=={version} py{python}"
        return bool(self.index.remember(key, lambda: supports(self._list(package), version,
                                                              python)))

    def _list(self, package: str) -> list[Mapping[str, Any]]:
        return self.index.files(package, "list its files, to know which Python lines each "
                                "release installs on", "plan one axis at a time (no --pairwise)")
