"""The cluster the end-to-end tests run on: a kind stack made here, or any cluster you name.

    python tests/e2e/kind_stack.py up      # same as: functionfuse stack up
    python tests/e2e/kind_stack.py down    # same as: functionfuse stack down

Environment (all optional):

* ``FUNCTIONFUSE_E2E_CONTEXT``: run on this kube context (of ``KUBECONFIG``) instead of a
  kind cluster made by ``functionfuse stack up``; nothing is created or deleted there
  unless ``FUNCTIONFUSE_E2E_INSTALL=1``, which runs ``functionfuse stack install`` on it
  first (the published charts unless ``FUNCTIONFUSE_E2E_CHART`` names another).
* ``FUNCTIONFUSE_E2E_NAMESPACE`` / ``FUNCTIONFUSE_E2E_RELEASE``: where the stack is
  (default ``kubeflow`` / ``ff``).
* ``FUNCTIONFUSE_E2E_REGISTRY``: a registry this machine pushes to and the cluster pulls
  from, for the images the tests build (KFP step image, Prefect flow image); on kind,
  ``localhost:<registry port>``, which both sides resolve to the stack's registry.
* ``FUNCTIONFUSE_E2E_KEEP=1``: leave the kind stack up after the tests.

The steps live in :mod:`functionfuse.kit.steps`; this module gives the tests their names.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# helm may come from scripts/setup-helm.sh, which installs it into .venv/bin
os.environ["PATH"] = os.pathsep.join([os.path.join(ROOT, ".venv", "bin"), os.environ.get("PATH", "")])

from functionfuse.kit.stack import Stack, StackConfig, missing_tools  # noqa: E402

_env = os.environ.get
EXTERNAL_CONTEXT = _env("FUNCTIONFUSE_E2E_CONTEXT") or None
INSTALL = _env("FUNCTIONFUSE_E2E_INSTALL") == "1"

CONFIG = StackConfig()
if EXTERNAL_CONTEXT:
    CONFIG = replace(CONFIG, context=EXTERNAL_CONTEXT,
                     chart=_env("FUNCTIONFUSE_E2E_CHART", "oci://ghcr.io/functionfuse/charts/functionfuse"))
CONFIG = replace(CONFIG, namespace=_env("FUNCTIONFUSE_E2E_NAMESPACE", CONFIG.namespace),
                 release=_env("FUNCTIONFUSE_E2E_RELEASE", CONFIG.release))
CONTEXT = EXTERNAL_CONTEXT or CONFIG.kind_context
CLUSTER = CONFIG.cluster
NAMESPACE = CONFIG.namespace
RELEASE = CONFIG.release
REGISTRY_PORT = CONFIG.registry_port
REGISTRY = _env("FUNCTIONFUSE_E2E_REGISTRY") or ("" if EXTERNAL_CONTEXT else CONFIG.pull_registry)
STACK = Stack(ROOT, CONFIG)

__all__ = ["CLUSTER", "CONTEXT", "NAMESPACE", "RELEASE", "REGISTRY", "REGISTRY_PORT", "EXTERNAL_CONTEXT",
           "missing_tools", "needed_tools", "kubectl", "up", "down"]


def needed_tools() -> tuple[str, ...]:
    """What the tests need here: kubectl and helm always, docker for the images they build,
    kind when they make the cluster."""
    return ("docker", "kubectl", "helm") if EXTERNAL_CONTEXT else ("docker", "kind", "kubectl", "helm")


def kubectl(*args: str, check: bool = True, capture: bool = False) -> str:
    return STACK.sh("kubectl", "--context", CONTEXT, *args, check=check, capture=capture)


def up() -> None:
    if not EXTERNAL_CONTEXT:
        print(STACK.up())
    elif INSTALL:
        print(STACK.install())


def down() -> None:
    if not EXTERNAL_CONTEXT and _env("FUNCTIONFUSE_E2E_KEEP") != "1":
        print(STACK.down())


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("up", "down"):
        raise SystemExit(__doc__)
    {"up": up, "down": down}[sys.argv[1]]()
