"""Errors the harness raises for its users.

Every message is a full sentence: what was expected, what was seen, what to do.

    HarnessError                  the harness itself could not do its job
    ├── ConfigError               bad input: unknown scenario, bad option, bad file
    ├── MissingBinaryError        postgres / pgbouncer / redis-server not installed
    ├── ServiceStartError         a service did not start or never answered
    │   └── PortInUseError        a port the service wanted was taken
    └── WorkerStartError          the Celery worker failed at import or never became ready

A ``HarnessError`` during a variant run becomes the outcome ``HARNESS_ERROR``:
it is never read as a pass.
"""

from __future__ import annotations


class HarnessError(Exception):
    """The harness could not run what it was asked to run."""


class ConfigError(HarnessError):
    """The user's input (options, scenario names, files) is not valid."""


class MissingBinaryError(HarnessError):
    """A service binary the local backend needs is not installed."""


class ServiceStartError(HarnessError):
    """A service process exited early or did not answer a real query in time."""


class PortInUseError(ServiceStartError):
    """The port a service was told to use is already taken."""


class WorkerStartError(HarnessError):
    """The Celery worker subprocess failed at import or never became ready."""
