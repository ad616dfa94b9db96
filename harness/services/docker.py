"""The docker backend (testcontainers). Not built yet: it reports itself unavailable."""

from __future__ import annotations


def unavailable() -> str | None:
    return "the docker backend is not implemented in this version"


def pgbouncer_version() -> str | None:
    return None
