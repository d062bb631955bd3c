"""The functionfuse stack on a local kind cluster: ``functionfuse stack up|down``.

``up`` brings up, in order and each step idempotent:

1. a registry container (``registry:2``) published on ``127.0.0.1:<port>`` only;
2. a kind cluster (``manifests/kind/cluster.yaml``) whose nodes pull from that registry;
3. the functionfuse images, built and pushed to the registry;
4. the KubeRay operator and Kubeflow Pipelines (``manifests/kuberay``, ``manifests/kfp``);
5. the umbrella chart (``charts/functionfuse``: RayCluster, Prefect server, MinIO),
   waiting until the RayCluster is ready.

``down`` deletes the cluster and the registry container, and nothing else. Every name
comes from :class:`StackConfig` (environment variables ``FUNCTIONFUSE_KIND_CLUSTER``,
``FUNCTIONFUSE_KIND_REGISTRY``, ``FUNCTIONFUSE_KIND_REGISTRY_PORT``,
``FUNCTIONFUSE_KIND_NODE_IMAGE``), so two stacks can live side by side.

It needs docker, kind, kubectl and helm on PATH, internet access (kindest/node,
registry:2, python:3.11-slim, the KubeRay and KFP manifests) and a functionfuse source
tree for the manifests and charts (the checkout this package runs from, or
``--source DIR``). ``--dry-run`` prints the commands without running any.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigurationError, StackError

__all__ = ["StackConfig", "StackError", "Stack", "find_source", "missing_tools", "TOOLS"]

TOOLS = ("docker", "kind", "kubectl", "helm")
_INSTALL = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "kubectl": "https://kubernetes.io/docs/tasks/tools/",
    "helm": "https://helm.sh/docs/intro/install/ (or scripts/setup-helm.sh)",
}


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def find_source(start: str | None = None) -> str:
    """The functionfuse source tree holding ``charts/`` and ``manifests/``: *start* if
    given, else the checkout this package is imported from, else the current folder."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [start] if start else [here, os.getcwd()]
    for root in candidates:
        if root and all(os.path.isdir(os.path.join(root, d)) for d in ("charts", "manifests")):
            return os.path.abspath(root)
    where = start or " or ".join(dict.fromkeys(c for c in candidates if c))
    raise ConfigurationError(
        f"No functionfuse source tree (with charts/ and manifests/) at {where}: run from a checkout of "
        "functionfuse or pass --source DIR."
    )


@dataclass
class StackConfig:
    """Names of what the stack creates; defaults from the environment."""

    cluster: str = field(default_factory=lambda: os.environ.get("FUNCTIONFUSE_KIND_CLUSTER", "functionfuse"))
    registry: str = field(default_factory=lambda: os.environ.get("FUNCTIONFUSE_KIND_REGISTRY", "kind-registry"))
    registry_port: int = field(default_factory=lambda: int(os.environ.get("FUNCTIONFUSE_KIND_REGISTRY_PORT", "5001")))
    node_image: str = field(default_factory=lambda: os.environ.get("FUNCTIONFUSE_KIND_NODE_IMAGE", ""))
    namespace: str = "kubeflow"
    release: str = "ff"

    @property
    def context(self) -> str:
        return f"kind-{self.cluster}"


class Stack:
    """The steps of ``up`` and ``down``; with *dry_run*, commands are printed, not run."""

    def __init__(
        self,
        source: str,
        config: StackConfig | None = None,
        *,
        dry_run: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.config = config or StackConfig()
        self.dry_run = dry_run
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.commands: list[list[str]] = []

    # -- running commands ----------------------------------------------------------------
    def sh(self, *cmd: str, check: bool = True, capture: bool = False) -> str:
        self.commands.append(list(cmd))
        self.echo("+ " + " ".join(cmd))
        if self.dry_run:
            return ""
        proc = subprocess.run(cmd, check=False, text=True, capture_output=capture)
        if check and proc.returncode != 0:
            detail = f": {proc.stderr.strip()}" if capture and proc.stderr else ""
            raise StackError(f"`{' '.join(cmd)}` failed with exit status {proc.returncode}{detail}")
        return proc.stdout if capture else ""

    def kubectl(self, *args: str, check: bool = True, capture: bool = False) -> str:
        return self.sh("kubectl", "--context", self.config.context, *args, check=check, capture=capture)

    def path(self, *parts: str) -> str:
        return os.path.join(self.source, *parts)

    # -- steps ---------------------------------------------------------------------------
    def registry_up(self) -> None:
        c = self.config
        running = self.sh("docker", "inspect", "-f", "{{.State.Running}}", c.registry, check=False, capture=True)
        if running.strip() != "true":
            self.sh("docker", "run", "-d", "--restart=always", "-p", f"127.0.0.1:{c.registry_port}:5000",
                    "--network", "bridge", "--name", c.registry, "registry:2")

    def cluster_up(self) -> None:
        c = self.config
        clusters = self.sh("kind", "get", "clusters", capture=True).split()
        if c.cluster not in clusters:
            cmd = ["kind", "create", "cluster", "--name", c.cluster, "--config", self.path("manifests/kind/cluster.yaml")]
            if c.node_image:
                cmd += ["--image", c.node_image]
            self.sh(*cmd)
        hosts = self.path("manifests/kind/certs.d/localhost:5001/hosts.toml")
        nodes = self.sh("kind", "get", "nodes", "--name", c.cluster, capture=True).split() or (["<node>"] if self.dry_run else [])
        for node in nodes:
            self.sh("docker", "exec", node, "mkdir", "-p", f"/etc/containerd/certs.d/localhost:{c.registry_port}")
            self.sh("docker", "cp", hosts, f"{node}:/etc/containerd/certs.d/localhost:{c.registry_port}/hosts.toml")
        networks = self.sh("docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", c.registry, capture=True)
        if '"kind"' not in networks:
            self.sh("docker", "network", "connect", "kind", c.registry)
        self.kubectl("apply", "-f", self.path("manifests/kind/local-registry-hosting.yaml"))

    def images_up(self) -> None:
        self.sh(sys.executable, "-m", "functionfuse", "image", "build", "--quiet", "--push",
                f"127.0.0.1:{self.config.registry_port}")

    def operators_up(self) -> None:
        ns = self.config.namespace
        self.kubectl("create", "namespace", "ray-system", check=False)
        self.kubectl("apply", "--server-side", "-k", self.path("manifests/kuberay"))
        self.kubectl("apply", "-k", self.path("manifests/kfp/cluster-scoped"))
        self.kubectl("wait", "--for", "condition=established", "--timeout=120s", "crd/applications.app.k8s.io")
        self.kubectl("apply", "-k", self.path("manifests/kfp"))
        self.kubectl("wait", "-n", "ray-system", "--for=condition=Available", "deployment/kuberay-operator", "--timeout=600s")
        self.kubectl("wait", "-n", ns, "--for=condition=Available", "deployment", "--all", "--timeout=1200s")

    def chart_up(self, timeout: float = 900.0) -> None:
        c = self.config
        chart = self.path("charts/functionfuse")
        self.sh("helm", "dependency", "build", chart)
        self.sh("helm", "--kube-context", c.context, "upgrade", "--install", c.release, chart, "-n", c.namespace,
                "-f", os.path.join(chart, "ci/kind-values.yaml"), "--wait", "--timeout", "15m")
        if self.dry_run:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.kubectl("get", "raycluster", f"{c.release}-functionfuse-ray", "-n", c.namespace,
                                 "-o", "jsonpath={.status.state}", capture=True, check=False)
            if state.strip() == "ready":
                return
            time.sleep(10)
        raise StackError(f"the RayCluster did not become ready within {timeout:.0f} s; see `kubectl --context {c.context} "
                         f"-n {c.namespace} describe raycluster`")

    # -- up and down ---------------------------------------------------------------------
    def check_tools(self) -> None:
        absent = missing_tools()
        if absent and not self.dry_run:
            how = "; ".join(f"{t}: {_INSTALL[t]}" for t in absent)
            raise StackError(f"`functionfuse stack` needs {', '.join(absent)} on PATH. Install: {how}")

    def up(self) -> str:
        self.check_tools()
        for step in (self.registry_up, self.cluster_up, self.images_up, self.operators_up, self.chart_up):
            step()
        c = self.config
        return (f"functionfuse stack up: kind cluster {c.cluster} (context {c.context}), registry "
                f"127.0.0.1:{c.registry_port}, release {c.release} in namespace {c.namespace}")

    def down(self) -> str:
        c = self.config
        if self.dry_run or shutil.which("kind"):
            self.sh("kind", "delete", "cluster", "--name", c.cluster, check=False)
        if self.dry_run or shutil.which("docker"):
            self.sh("docker", "rm", "-f", c.registry, check=False)
        return f"functionfuse stack down: cluster {c.cluster} and registry container {c.registry} removed"
