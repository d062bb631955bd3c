"""Bring the functionfuse stack up on a kind cluster, and down again.

    python tests/e2e/kind_stack.py up      # same as: functionfuse stack up
    python tests/e2e/kind_stack.py down    # same as: functionfuse stack down

The steps live in :mod:`functionfuse.kit.stack`; this module gives the end-to-end tests
the names they use (cluster, namespace, release, registry port, ``kubectl``).
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# helm may come from scripts/setup-helm.sh, which installs it into .venv/bin
os.environ["PATH"] = os.pathsep.join([os.path.join(ROOT, ".venv", "bin"), os.environ.get("PATH", "")])

from functionfuse.kit.stack import Stack, StackConfig, missing_tools  # noqa: E402

CONFIG = StackConfig()
CLUSTER = CONFIG.cluster
NAMESPACE = CONFIG.namespace
RELEASE = CONFIG.release
REGISTRY_PORT = CONFIG.registry_port
STACK = Stack(ROOT, CONFIG)

__all__ = ["CLUSTER", "NAMESPACE", "RELEASE", "REGISTRY_PORT", "missing_tools", "kubectl", "up", "down"]


def kubectl(*args: str, check: bool = True, capture: bool = False) -> str:
    return STACK.kubectl(*args, check=check, capture=capture)


def up() -> None:
    print(STACK.up())


def down() -> None:
    print(STACK.down())


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("up", "down"):
        raise SystemExit(__doc__)
    {"up": up, "down": down}[sys.argv[1]]()
