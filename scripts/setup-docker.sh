#!/usr/bin/env bash
# Idempotent, non-interactive machine setup for the deployment kit's image tests:
#
#   1. Debian's docker.io (engine), docker-registry (distribution) and debootstrap,
#      installed with apt-get if missing;
#   2. a Docker daemon, started if none answers: --bridge=none --iptables=false
#      --ip-masq=false, so every build and container uses the host network and all
#      traffic stays on loopback (log: $FF_KIT_STATE/dockerd.log, PID: dockerd.pid);
#   3. a local base image, functionfuse-local/debian-python:bookworm, made with
#      debootstrap from the Debian mirror apt already uses, if it is missing (no base
#      image can be pulled here; Debian bookworm's python3 is 3.11, like python:3.11-slim).
#
# It never fails `make test`: when a step cannot be done (not root, no apt, the daemon
# does not start), it says why on stderr and writes the reason to
# $FF_KIT_STATE/docker-unavailable, which the Docker tests print as their skip reason.
# Set FF_REQUIRE_DOCKER=1 to make such a failure fatal instead.
set -uo pipefail

STATE=${FF_KIT_STATE:-/var/tmp/functionfuse-kit}
BASE_IMAGE=${FF_LOCAL_BASE_IMAGE:-functionfuse-local/debian-python:bookworm}
SUITE=${FF_DEBOOTSTRAP_SUITE:-bookworm}
mkdir -p "$STATE"
UNAVAILABLE="$STATE/docker-unavailable"

fail() {
    echo "setup-docker: $*" >&2
    echo "$*" >"$UNAVAILABLE"
    if [ "${FF_REQUIRE_DOCKER:-0}" = 1 ]; then exit 1; fi
    exit 0
}

log() { echo "setup-docker: $*"; }

is_root() { [ "$(id -u)" = 0 ]; }

daemon_answers() { timeout 20 docker info >/dev/null 2>&1; }

apt_install() {
    # apt-get update once per setup run, only when something has to be installed
    if [ ! -f "$STATE/.apt-updated" ] || [ -n "$(find "$STATE/.apt-updated" -mmin +720 2>/dev/null)" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >>"$STATE/apt.log" 2>&1 || return 1
        touch "$STATE/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >>"$STATE/apt.log" 2>&1
}

# -- 1. packages -----------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
        if ! daemon_answers; then
            fail "Docker is not usable: ${missing[*]} missing and this is not a root Debian machine (apt-get as root installs them)."
        fi
    else
        log "installing ${missing[*]} (apt log: $STATE/apt.log)"
        apt_install "${missing[@]}" || fail "apt-get install ${missing[*]} failed; see $STATE/apt.log"
    fi
fi
command -v docker >/dev/null 2>&1 || fail "no docker CLI on PATH after installing docker.io"

# -- 2. the daemon ------------------------------------------------------------------------
if ! daemon_answers; then
    is_root || fail "no Docker daemon answers and starting one needs root"
    log "starting dockerd --bridge=none (log: $STATE/dockerd.log)"
    # setsid: the daemon outlives this script and the make target that ran it
    setsid dockerd --bridge=none --iptables=false --ip-masq=false \
        --pidfile "$STATE/dockerd.pid" >>"$STATE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        daemon_answers && break
        sleep 1
    done
    daemon_answers || fail "dockerd did not answer within 60 s; its log: $STATE/dockerd.log"
fi

# -- 3. the local base image --------------------------------------------------------------
apt_mirror() {
    # the first Debian archive URI apt is configured with (deb822 or one-line format)
    local uri
    uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | head -n1)
    if [ -z "$uri" ]; then
        uri=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '{for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' | grep -v -- '-security' | head -n1)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    is_root || fail "the local base image $BASE_IMAGE is missing and debootstrap needs root"
    mirror=$(apt_mirror)
    rootfs=$(mktemp -d "$STATE/rootfs.XXXXXX")
    log "building $BASE_IMAGE with debootstrap from $mirror (log: $STATE/debootstrap.log)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 </dev/null; then
        rm -rf "$rootfs"
        fail "debootstrap of $SUITE from $mirror failed; see $STATE/debootstrap.log"
    fi
    # what a container image does not need: package caches, lists, docs, man pages
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    if ! tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >>"$STATE/debootstrap.log" 2>&1; then
        rm -rf "$rootfs"
        fail "docker import of the debootstrap root failed; see $STATE/debootstrap.log"
    fi
    rm -rf "$rootfs"
    log "base image $BASE_IMAGE ready ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
fi

rm -f "$UNAVAILABLE"
log "Docker $(docker version -f '{{.Server.Version}}' 2>/dev/null) ready; base image $BASE_IMAGE"
