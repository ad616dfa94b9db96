#!/usr/bin/env bash
# Make a Debian 12 machine ready for the docker backend: install the Docker engine if
# it is missing, start dockerd when nothing answers, wait (bounded) until it does, and
# build the harness images offline (docker/build.sh). Safe to run again: every step is
# skipped when its work is already done. Needs root.
#
# Settings (environment):
#   HARNESS_DOCKERD_WAIT_S   how long to wait for `docker info` to answer (default 60)
#   HARNESS_DOCKERD_LOG      where dockerd writes its log (default /var/log/harness-dockerd.log)
#   HARNESS_SKIP_BUILD=1     only install and start the engine
#   DOCKER_HOST              unix:///path: start dockerd on that socket when none answers
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wait_s="${HARNESS_DOCKERD_WAIT_S:-60}"
dockerd_log="${HARNESS_DOCKERD_LOG:-/var/log/harness-dockerd.log}"
now_ms() { date +%s%3N; }
elapsed() { local ms=$(( $(now_ms) - $1 )); printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)); }
began=$(now_ms)
say() { echo "[ci-setup] $*"; }

if [ "$(id -u)" != 0 ]; then
    say "This script installs packages and starts dockerd, so it must run as root (try: sudo $0)."
    exit 1
fi

# 1. The engine and the image build tools, from Debian's packages.
step=$(now_ms)
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    say "installed ${missing[*]} in $(elapsed "$step") s"
else
    say "docker.io and mmdebstrap are already installed"
fi

# 2. The daemon: started in the background only when `docker info` does not answer.
step=$(now_ms)
if timeout 10 docker info >/dev/null 2>&1; then
    say "a Docker engine already answers"
else
    pidfile=/var/run/docker.pid
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        dockerd_pid="$(cat "$pidfile")"
        say "dockerd (pid $dockerd_pid) is running but does not answer yet; waiting for it"
    else
        # DOCKER_HOST=unix:///path: an engine of this machine's own on that socket (CI's
        # privileged container does this, so it never talks to its host's engine).
        host_args=()
        case "${DOCKER_HOST:-}" in unix://*) host_args=(--host "$DOCKER_HOST") ;; esac
        say "starting dockerd in the background ${host_args[*]} (log: $dockerd_log)"
        # setsid + nohup: the daemon outlives this script and the CI step that ran it.
        setsid nohup dockerd "${host_args[@]}" >>"$dockerd_log" 2>&1 </dev/null &
        dockerd_pid=$!
    fi
    deadline=$(( $(date +%s) + wait_s ))
    until timeout 10 docker info >/dev/null 2>&1; do
        if ! kill -0 "$dockerd_pid" 2>/dev/null && ! pidof dockerd >/dev/null; then
            say "dockerd exited while starting. Last lines of $dockerd_log:"
            tail -n 30 "$dockerd_log" 2>/dev/null || true
            say "Fix what the log says and run this script again."
            exit 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            say "The Docker engine did not answer 'docker info' within ${wait_s} s."
            say "'docker info' said: $(timeout 10 docker info 2>&1 | tail -n 3 | tr '\n' ' ')"
            say "Last lines of $dockerd_log:"
            tail -n 30 "$dockerd_log" 2>/dev/null || say "(no dockerd log)"
            say "Fix the daemon start (see the log above) or raise HARNESS_DOCKERD_WAIT_S."
            exit 1
        fi
        sleep 0.5
    done
    say "the Docker engine answers after $(elapsed "$step") s"
fi

# 3. The images (cached: seconds when nothing changed).
if [ "${HARNESS_SKIP_BUILD:-0}" != 1 ]; then
    "$here/build.sh"
fi
say "ready in $(elapsed "$began") s"
