"""Services a scenario run needs: PostgreSQL, PgBouncer and Redis.

Backends implement :class:`harness.services.base.Service`. The ``local`` backend
runs the system's binaries on free 127.0.0.1 ports in temp dirs.
"""

from harness.services.base import Service
from harness.services.pgbouncer import LocalPgBouncer, PgBouncerSettings
from harness.services.postgres import LocalPostgres, PostgresSettings
from harness.services.redis import LocalRedis

__all__ = [
    "LocalPgBouncer",
    "LocalPostgres",
    "LocalRedis",
    "PgBouncerSettings",
    "PostgresSettings",
    "Service",
]
