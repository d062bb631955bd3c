#!/usr/bin/env bash
# Install Debian packages if their commands are missing: apt-install.sh CMD:PACKAGE ...
# Non-interactive, idempotent, waits for another apt to finish.
set -euo pipefail
missing=()
for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "Missing system packages: ${missing[*]}. Install them (Debian: apt-get install ${missing[*]})." >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o DPkg::Lock::Timeout=600)
if ! apt-get install "${apt_opts[@]}" "${missing[@]}" </dev/null >/tmp/functionfuse-apt.log 2>&1; then
    apt-get update -q -o DPkg::Lock::Timeout=600 </dev/null >>/tmp/functionfuse-apt.log 2>&1
    apt-get install "${apt_opts[@]}" "${missing[@]}" </dev/null >>/tmp/functionfuse-apt.log 2>&1 || {
        echo "apt-get install ${missing[*]} failed:" >&2
        tail -20 /tmp/functionfuse-apt.log >&2
        exit 1
    }
fi
