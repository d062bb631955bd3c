#!/usr/bin/env bash
# Idempotent setup of .venv-rayworkflow: functionfuse (editable) with ray 2.47, the last
# Ray release that ships Ray Workflows (ray.workflow), for the Ray Workflows addon and
# its tests. The main environment (.venv, scripts/setup.sh) has a newer Ray without it.
# Safe to run again: it only reinstalls when pyproject.toml or the pins change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${RAYWORKFLOW_VENV:-.venv-rayworkflow}
REQS=requirements/rayworkflow/ray247.txt

if ! "$PYTHON" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
    echo "The Ray Workflows environment needs Python 3.10-3.12 (ray 2.47 wheels); $PYTHON is $("$PYTHON" --version 2>&1)." >&2
    exit 1
fi

stamp_src=$(cat pyproject.toml "$REQS" | sha256sum | cut -c1-16)
stamp="$VENV/.functionfuse-setup-$stamp_src"
if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
log="$VENV/setup.log"
: >"$log"
pip_install() {
    if ! "$VENV/bin/python" -m pip install -q "$@" </dev/null >>"$log" 2>&1; then
        echo "pip install $* failed; its output:" >&2
        cat "$log" >&2
        exit 1
    fi
}
echo "Setting up the Ray Workflows environment in $VENV (log: $log) ..."
pip_install --upgrade "pip>=24"
pip_install -r "$REQS"
pip_install --no-deps -e .
rm -f "$VENV"/.functionfuse-setup-*
touch "$stamp"
echo "Ray Workflows environment ready in $VENV"
