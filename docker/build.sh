#!/usr/bin/env bash
# Build the harness's service images with no container registry, from Debian packages.
#
#   bookworm: harness-postgres:15, harness-pgbouncer:1.18, harness-redis:7.0
#   trixie:   harness-postgres:17, harness-pgbouncer:1.24
#   forky:    harness-postgres:18, harness-pgbouncer:1.26, harness-redis:8.0, and the
#             interpreter image harness-python:3.14 / harness-python:3.15 (one image, both
#             Pythons) for the matrix's container environments. Optional: not built by
#             default; HARNESS_SUITES="bookworm trixie forky" adds it.
#
# Step 1 makes one base image per suite: a minimal Debian root filesystem with the
# service packages (mmdebstrap), streamed into `docker import`. It is the slow step
# (one to three minutes per suite) and is skipped when an image with the same recipe hash
# exists. Step 2 builds a small Dockerfile per service on top; the classic builder's
# layer cache makes that a few seconds when nothing changed.
#
# Settings (environment):
#   HARNESS_SUITES                 suites to build (default "bookworm trixie")
#   HARNESS_DEBIAN_MIRROR          Debian mirror (default: the one apt uses on this machine)
#   HARNESS_DEBIAN_SECURITY_MIRROR security mirror (default: the one apt uses here)
#   HARNESS_REBUILD_BASE=1         rebuild the base images even when their recipe is unchanged
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export DOCKER_BUILDKIT=0  # BuildKit/buildx is not part of Debian's docker.io
suites="${HARNESS_SUITES:-bookworm trixie}"
# Bump when the way the base is made changes in a way the hash below cannot see.
recipe_version=1

now_ms() { date +%s%3N; }
took() { local ms=$(( $(now_ms) - $1 )); printf '%d.%01d s' $((ms / 1000)) $((ms % 1000 / 100)); }
say() { echo "[build] $*"; }
die() { echo "[build] $*" >&2; exit 1; }

packages_for() {
    case "$1" in
        bookworm) echo "postgresql-15,pgbouncer,redis-server" ;;
        trixie) echo "postgresql-17,pgbouncer" ;;
        # Debian testing: the newest PostgreSQL, PgBouncer and Redis, and the Python lines
        # the host has no interpreter for (they need this suite's libc). ca-certificates:
        # the matrix mounts the host's CA bundle over it for pip/uv.
        forky) echo "postgresql-18,pgbouncer,redis-server,python3.14,python3.15,ca-certificates" ;;
        *) die "Unknown suite '$1': this script knows bookworm, trixie and forky; set HARNESS_SUITES to those." ;;
    esac
}

# The Python lines a suite's base carries for the interpreter image (none: no such image).
pythons_for() {
    case "$1" in
        forky) echo "3.14 3.15" ;;
        *) echo "" ;;
    esac
}

# Extra apt options per suite. The mirror's copy of testing's Release file is past its
# Valid-Until date (testing is not re-signed on the mirror's schedule), so apt refuses it
# unless told not to check that date.
aptopts_for() {
    case "$1" in
        forky) echo 'Acquire::Check-Valid-Until "false"' ;;
        *) echo "" ;;
    esac
}

# The mirrors apt already uses on this machine, so the build reaches only what apt reaches.
apt_uri() {  # $1: path suffix of the archive, "debian" or "debian-security"
    { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
      grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
    } | grep -E "/$1/?\$" | head -n 1 || true
}
mirror="${HARNESS_DEBIAN_MIRROR:-$(apt_uri debian)}"
security="${HARNESS_DEBIAN_SECURITY_MIRROR:-$(apt_uri debian-security)}"

command -v docker >/dev/null || die "docker is not installed. Run docker/ci-setup.sh as root, or install docker.io."
docker info >/dev/null 2>&1 || die "No Docker engine answers 'docker info'. Start dockerd (docker/ci-setup.sh does) and run this again."

build_base() {  # $1: suite
    local suite="$1" packages hash tag current began aptopt
    packages="$(packages_for "$suite")"
    aptopt="$(aptopts_for "$suite")"
    # The apt option joins the hash only where there is one: bookworm's and trixie's
    # recipes (and so their cached images) stay what they were.
    hash="$( { echo "$recipe_version $suite $packages${aptopt:+ $aptopt}"; cat "$here/base/finish-rootfs.sh"; } | sha256sum | cut -c1-16)"
    tag="harness-base:$suite"
    current="$(docker image inspect -f '{{index .Config.Labels "org.harness.recipe"}}' "$tag" 2>/dev/null || true)"
    if [ "$current" = "$hash" ] && [ "${HARNESS_REBUILD_BASE:-0}" != 1 ]; then
        say "$tag is up to date (recipe $hash)"
        return
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed; it makes the base images. Install it: apt-get install -y mmdebstrap (docker/ci-setup.sh does)."
    [ -n "$mirror" ] || die "No Debian mirror found in /etc/apt; set HARNESS_DEBIAN_MIRROR to your Debian mirror's URL."
    local sources=("deb $mirror $suite main")
    local extra=()
    if [ -n "$aptopt" ]; then
        # Testing: the mirror named explicitly and nothing else (no -updates, and no
        # security suite, which mmdebstrap would otherwise add on its own).
        extra=(--aptopt="$aptopt")
    else
        sources+=("deb $mirror $suite-updates main")
        [ -n "$security" ] && sources+=("deb $security $suite-security main")
    fi
    local pg_bin
    pg_bin="/usr/lib/postgresql/$(echo "$packages" | sed -n 's/.*postgresql-\([0-9]*\).*/\1/p')/bin"
    say "making $tag from Debian $suite ($packages); one to three minutes"
    began=$(now_ms)
    # No pipefail surprise: a failed mmdebstrap makes `docker import` get a short stream
    # and fail too; both exit codes are checked through pipefail.
    mmdebstrap --quiet --variant=minbase --include="$packages" "${extra[@]}" \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook="sh '$here/base/finish-rootfs.sh' \"\$1\"" \
        "$suite" - "${sources[@]}" \
    | docker import \
        --change "ENV PATH=$pg_bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL org.harness.recipe=$hash" --change "LABEL org.harness.image=base" \
        - "$tag" >/dev/null \
        || die "Making $tag failed (see mmdebstrap's messages above). Check that the mirror '$mirror' serves '$suite'."
    say "made $tag in $(took "$began")"
}

build_service() {  # $1: suite, $2: service, $3: image tag, $4: version
    local began
    began=$(now_ms)
    local out
    # The output is shown only on failure: a newer docker CLI warns on every classic build.
    out="$(docker build --quiet --force-rm --build-arg "BASE=harness-base:$1" \
        --label "org.harness.image=$2" --label "org.harness.suite=$1" \
        --label "org.harness.$2.version=$4" \
        -t "$3" "$here/$2" 2>&1)" \
        || die "docker build of $3 failed. Its output:"$'\n'"$out"
    say "built $3 ($2 $4) in $(took "$began")"
}

build_python() {  # $1: suite, $2: the Python lines its base carries ("3.14 3.15")
    local suite="$1" lines="$2" began out full found=() tags=() line
    began=$(now_ms)
    for line in $lines; do
        full="$(docker run --rm --network none "harness-base:$suite" "python$line" -c \
            'import platform; print(platform.python_version())')" \
            || die "harness-base:$suite has no python$line; check packages_for $suite."
        found+=("$line=$full")
        tags+=(-t "harness-python:$line")
    done
    # One image, one tag per Python line: the matrix looks an interpreter image up by its
    # line and reads the full version from the label.
    out="$(docker build --quiet --force-rm --build-arg "BASE=harness-base:$suite" \
        --label "org.harness.image=python" --label "org.harness.suite=$suite" \
        --label "org.harness.python.versions=${found[*]}" \
        "${tags[@]}" "$here/python" 2>&1)" \
        || die "docker build of the interpreter image failed. Its output:"$'\n'"$out"
    say "built harness-python:{${lines// /,}} (${found[*]}) in $(took "$began")"
    for line in $lines; do built+=("harness-python:$line"); done
}

total=$(now_ms)
built=()
for suite in $suites; do
    build_base "$suite"
    versions="$(docker run --rm --network none "harness-base:$suite" cat /etc/harness/versions)"
    for service in postgres pgbouncer redis; do
        version="$(echo "$versions" | sed -n "s/^$service=//p")"
        [ -n "$version" ] || continue  # that suite's base does not carry this service
        case "$service" in
            postgres) tag="harness-postgres:${version%%.*}" ;;
            *) tag="harness-$service:$(echo "$version" | cut -d. -f1-2)" ;;
        esac
        build_service "$suite" "$service" "$tag" "$version"
        built+=("$tag")
    done
    pythons="$(pythons_for "$suite")"
    [ -n "$pythons" ] && build_python "$suite" "$pythons"
done
# Rebuilt images leave their previous versions untagged; remove those of ours only.
docker image prune -f --filter label=org.harness.image >/dev/null
say "images ready in $(took "$total"): ${built[*]}"
