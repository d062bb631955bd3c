#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with functionfuse (editable) and the
# pinned development requirements. Safe to run again: it only reinstalls when
# pyproject.toml or the pinned requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "functionfuse needs Python >= 3.10; $PYTHON is $("$PYTHON" --version 2>&1)." >&2
    exit 1
fi

if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv </dev/null
    else
        echo "The Python venv module is missing: install python3-venv." >&2
        exit 1
    fi
fi

# system packages: graphviz draws DAGs (GraphWorkflow)
./scripts/apt-install.sh dot:graphviz

stamp_src=$(cat pyproject.toml requirements/*.txt | sha256sum | cut -c1-16)
stamp="$VENV/.functionfuse-setup-$stamp_src"
if [ -f "$stamp" ] && [ -x "$VENV/bin/python" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
log="$VENV/setup.log"
pip_install() {
    if ! "$VENV/bin/python" -m pip install -q "$@" </dev/null >>"$log" 2>&1; then
        echo "pip install $* failed; its output:" >&2
        cat "$log" >&2
        exit 1
    fi
}
: >"$log"
echo "Setting up the development environment in $VENV (log: $log) ..."
pip_install --upgrade "pip>=24"
reqs=()
for f in requirements/*.txt; do reqs+=(-r "$f"); done
pip_install "${reqs[@]}"
pip_install --no-deps -e .
rm -f "$VENV"/.functionfuse-setup-*
touch "$stamp"
echo "functionfuse development environment ready in $VENV"
