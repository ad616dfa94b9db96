"""How an environment resolves the packages it does not pin: of their time, or today's.

Responsibility: turn a combination's pins and the ``--resolve`` mode into the
installer arguments that decide everything else in the environment, and say so in
a form the cache key and the results can record.

``dated`` (the default): every unpinned dependency resolves as it could have been
installed when the newest pinned release came out. The cutoff is that release's
first upload to the package index plus one day (companions are often uploaded
hours after the release they go with: kombu next to celery), read from the index's
JSON simple API (PEP 691 / PEP 700 ``upload-time``) and cached for good, since an
upload time never changes. It becomes uv's ``--exclude-newer``. So Celery 5.4.0 gets
the kombu, billiard and redis-py of its day, not today's kombu that needs a newer
redis-py than Celery 5.4.0 allows.

``latest``: today's resolution. An old pin next to today's companions is a real
signal too (does it still install and run now?); the smoke check says when it
breaks.

Two exemptions from the cutoff, both passed as ``--exclude-newer-package NAME=false``:

- the pinned packages themselves (they are exact pins; a wheel for a newer Python
  uploaded later must still be usable);
- the harness's own tools and what only they need: pytest, pytest-xdist,
  pytest-timeout, testcontainers, celery-aio-pool and uv, plus their dependencies
  that no stack package depends on (today's dependency tree of this interpreter,
  see :func:`harness_only`). They are not under test, and some cannot exist at an
  old cutoff: pyproject.toml asks for testcontainers>=4.9 (December 2024) and
  uv>=0.4 (August 2024), and celery-aio-pool 0.1.0rc8 is newer than Celery 5.3.
  A dependency they share with the stack (typing-extensions, redis) keeps the
  cutoff, and the resolver picks tool versions that accept it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from harness.errors import ConfigError, HarnessError

DATED, LATEST = "dated", "latest"
MODES = (DATED, LATEST)
GRACE = dt.timedelta(days=1)
DEFAULT_INDEX = "https://pypi.org/simple"
INDEX_TIMEOUT_S = 30
# The project's own requirements that are tools, not the stack under test.
TOOLS = ("pytest", "pytest-xdist", "pytest-timeout", "testcontainers", "celery-aio-pool", "uv")
# The stack under test: what the scenarios exercise (pyproject.toml's other requirements).
STACK = ("celery[redis]", "sqlalchemy[asyncio]", "asyncpg", "psycopg[binary]", "redis")
# The harness's own requirements that the stack needs too: they keep the cutoff (kombu
# requires packaging), and any version of their day serves the harness.
SHARED = ("packaging",)
# The distributions a pinned axis installs at exactly the pinned version.
PINNED_DISTRIBUTIONS = {"sqlalchemy": ("sqlalchemy",), "celery": ("celery",),
                        "asyncpg": ("asyncpg",), "psycopg": ("psycopg", "psycopg-binary")}
UploadTimes = Callable[[str, str], dt.datetime]


@dataclass(frozen=True)
class Resolution:
    """What decides an environment's unpinned packages.

    Attributes:
        mode: ``dated`` or ``latest``.
        cutoff: uv's ``--exclude-newer`` (ISO 8601, UTC), None for ``latest``.
        newest: the pinned release the cutoff comes from, e.g. ``sqlalchemy 2.0.30``.
        released: when that release was first uploaded (ISO 8601).
        exempt: distributions that ignore the cutoff (pins and harness-only tools).
    """

    mode: str
    cutoff: str | None = None
    newest: str | None = None
    released: str | None = None
    exempt: tuple[str, ...] = field(default_factory=tuple)

    def uv_args(self) -> list[str]:
        if self.cutoff is None:
            return []
        args = ["--exclude-newer", self.cutoff]
        for name in self.exempt:
            args += ["--exclude-newer-package", f"{name}=false"]
        return args

    def describe(self) -> str:
        if self.cutoff is None:
            return "latest (today's resolution)"
        return f"dated {self.cutoff[:10]} (as of {self.newest}, released {self.released[:10]})"

    def to_dict(self) -> dict[str, Any]:
        """The ``resolution`` block of an environment in matrix-env.json and matrix.json."""
        return {"mode": self.mode, "cutoff": self.cutoff, "newest": self.newest,
                "released": self.released, "exempt": list(self.exempt)}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"--resolve {mode!r} is not a resolution mode. Use 'dated' (the "
                          f"default: unpinned packages as of the newest pinned release) or "
                          f"'latest' (today's).")
    return mode


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None


class SimpleIndex:
    """The index's JSON simple API (PEP 691), with a file of answers kept across runs.

    Args:
        index_url: the simple index (``https://pypi.org/simple``); only http(s).
        cache_file: where answers are kept (one JSON object): what a release's files
            say never changes once uploaded.
        cafile: the CA bundle for HTTPS (pip's ``cert``), else the system's.
    """

    def __init__(self, index_url: str, cache_file: Path, cafile: str | None = None) -> None:
        self.url = index_url.rstrip("/")
        self.cache_file = cache_file
        self.context = ssl.create_default_context(cafile=cafile)
        try:
            self._cache: dict[str, Any] = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            self._cache = {}
        self._files: dict[str, list[dict[str, Any]]] = {}

    def remember(self, key: str, answer: Callable[[], Any]) -> Any:
        """The cached answer for ``key``, else ``answer()``, written to the file first."""
        if key not in self._cache:
            self._cache[key] = answer()
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._cache, indent=0, sort_keys=True))
            os.replace(tmp, self.cache_file)
        return self._cache[key]

    def files(self, package: str, why: str, instead: str) -> list[dict[str, Any]]:
        """Every file of ``package`` on the index (asked once per process).

        Raises:
            HarnessError: the index did not answer; ``why`` says what the answer was
                for, ``instead`` what the user can do without it.
        """
        if package not in self._files:
            url = f"{self.url}/{canonicalize_name(package)}/"
            request = urllib.request.Request(
                url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            try:
                with urllib.request.urlopen(request, timeout=INDEX_TIMEOUT_S,
                                            context=self.context) as response:
                    self._files[package] = json.loads(response.read()).get("files", [])
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise HarnessError(
                    f"Expected the package index {self.url} to {why} (GET {url}, JSON simple "
                    f"API), but the request failed: {exc}. Check the network, or "
                    f"{instead}.") from exc
        return self._files[package]


class IndexUploadTimes:
    """First upload time of a release, from the index's JSON simple API, cached in a file.

    Args:
        index_url: the simple index (``https://pypi.org/simple``); only http(s).
        cache_file: where answers are kept across runs (one JSON object).
        cafile: the CA bundle for HTTPS (pip's ``cert``), else the system's.
    """

    def __init__(self, index_url: str, cache_file: Path, cafile: str | None = None) -> None:
        self.index = SimpleIndex(index_url, cache_file, cafile)
        self.index_url = self.index.url

    def __call__(self, package: str, version: str) -> dt.datetime:
        key = f"{self.index_url} {canonicalize_name(package)}=={version}"
        return _parse_time(self.index.remember(key, lambda: _iso(self._ask(package, version))))

    def _ask(self, package: str, version: str) -> dt.datetime:
        files = self.index.files(
            package, f"say when {package} {version} was uploaded",
            "run with --resolve latest (today's resolution, no dates needed)")
        wanted = Version(version)
        times = [_parse_time(f["upload-time"]) for f in files
                 if f.get("upload-time") and _file_version(f.get("filename", "")) == wanted]
        if not times:
            raise HarnessError(
                f"The package index {self.index_url} lists no upload time for {package} "
                f"{version} (it needs the JSON simple API with upload-time, PEP 700, which "
                f"PyPI has). Point UV_DEFAULT_INDEX at such an index, or run with --resolve "
                f"latest.")
        return min(times)


def index_url(env: Mapping[str, str]) -> str:
    """The index uv installs from (its default index), if it can tell upload times."""
    for variable in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        value = env.get(variable, "").split()
        if value and value[0].startswith(("http://", "https://")):
            return value[0]
    return DEFAULT_INDEX


def _requirements(name: str, extras: Iterable[str] = ()) -> list[Requirement]:
    try:
        raw = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    found = []
    for line in raw:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            found.append(req)
    return found


def closure(roots: Iterable[str]) -> set[str]:
    """Every distribution the ``roots`` need, by this interpreter's installed metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        todo.extend(_requirements(name, req.extras))
    return {k.split("[")[0] for k in seen}


def harness_only() -> tuple[str, ...]:
    """The harness's tools and the dependencies that only they bring (sorted)."""
    return tuple(sorted(closure(TOOLS) - closure(STACK)))


def pinned_releases(versions: Mapping[str, str]) -> list[tuple[str, str]]:
    """(distribution, version) of every package axis pin, psycopg-binary included."""
    return [(dist, versions[axis]) for axis, dists in PINNED_DISTRIBUTIONS.items()
            for dist in dists if axis in versions]


def resolution_for(versions: Mapping[str, str], mode: str,
                   upload_times: UploadTimes | None) -> Resolution:
    """The resolution of one combination (``versions``: axis -> pinned version)."""
    if check_mode(mode) == LATEST:
        return Resolution(LATEST)
    if upload_times is None:
        raise HarnessError("a dated resolution needs the index's upload times")
    released = {f"{dist} {version}": upload_times(dist, version)
                for dist, version in pinned_releases(versions)
                if not dist.endswith("-binary")}  # uploaded with its package
    newest = max(released, key=lambda k: released[k])
    exempt = sorted({d for d, _ in pinned_releases(versions)} | set(harness_only()))
    return Resolution(DATED, cutoff=_iso(released[newest] + GRACE), newest=newest,
                      released=_iso(released[newest]), exempt=tuple(exempt))


def parse_freeze(text: str) -> dict[str, str]:
    """``uv pip freeze`` / ``pip freeze`` output as {distribution: version}; editable
    installs (the harness itself) are left out."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if match:
            found[canonicalize_name(match.group(1))] = match.group(2)
    return dict(sorted(found.items()))
