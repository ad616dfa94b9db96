#!/bin/sh
# Give the baked-in cluster the superuser the container was started with, then become
# PostgreSQL. Like the official image: POSTGRES_USER (default postgres) gets the
# password POSTGRES_PASSWORD; host connections need it (SCRAM), only the container's
# own Unix socket is trusted.
set -eu
if [ "${1:-}" = postgres ] && [ -n "${POSTGRES_PASSWORD:-}" ]; then
    user="${POSTGRES_USER:-postgres}"
    # Quote for SQL: double every ' in the literal and every " in the identifier.
    literal=$(printf '%s' "$POSTGRES_PASSWORD" | sed "s/'/''/g")
    ident=$(printf '%s' "$user" | sed 's/"/""/g')
    role=$(printf '%s' "$user" | sed "s/'/''/g")
    # Single-user mode runs before any client can connect. log_min_error_statement=panic
    # keeps a failing statement, which holds the password, out of the log.
    out=$(printf '%s\n' \
        "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN CREATE ROLE \"$ident\" SUPERUSER LOGIN; END IF; END \$\$;" \
        "ALTER ROLE \"$ident\" PASSWORD '$literal';" \
        | postgres --single -D "$PGDATA" -c log_min_error_statement=panic postgres 2>&1) || true
    if printf '%s' "$out" | grep -q 'ERROR\|FATAL'; then
        echo "harness-postgres-entrypoint: could not give role '$user' its password:" >&2
        printf '%s\n' "$out" | grep 'ERROR\|FATAL' >&2
        exit 1
    fi
fi
exec "$@"
