#!/bin/sh
# Run by mmdebstrap (customize hook) with the new root filesystem as $1, before it is
# packed: drop what the packages made for a booted system and record the versions the
# build script turns into image tags and labels.
set -eu
root="$1"
# postgresql-common creates a "main" cluster; the postgres image bakes its own instead.
rm -rf "$root"/var/lib/postgresql/*/main "$root"/etc/postgresql/*/main
mkdir -p "$root/etc/harness"
{
    for bin in "$root"/usr/lib/postgresql/*/bin/postgres; do
        [ -x "$bin" ] && echo "postgres=$(chroot "$root" "${bin#"$root"}" --version | awk '{print $3}')"
    done
    if [ -x "$root/usr/sbin/pgbouncer" ]; then
        echo "pgbouncer=$(chroot "$root" pgbouncer --version | awk '/^PgBouncer/ {print $2}')"
    fi
    if [ -x "$root/usr/bin/redis-server" ]; then
        echo "redis=$(chroot "$root" redis-server --version | sed -n 's/.* v=\([0-9.]*\).*/\1/p')"
    fi
} > "$root/etc/harness/versions"
cat "$root/etc/harness/versions" >&2
