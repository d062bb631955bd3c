"""Bring the functionfuse stack up on a kind cluster, and down again.

    python tests/e2e/kind_stack.py up      # registry, cluster, images, KubeRay, KFP, the umbrella chart
    python tests/e2e/kind_stack.py down    # delete the cluster and the registry container

Needs docker, kind, kubectl and helm on PATH and internet access (kindest/node, registry:2,
python:3.11-slim, the KubeRay and KFP manifests). Everything is named after
$FUNCTIONFUSE_KIND_CLUSTER (default ``functionfuse``); only what this script created is
deleted by ``down``. The steps are those of manifests/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.environ.get("FUNCTIONFUSE_KIND_CLUSTER", "functionfuse")
REGISTRY = os.environ.get("FUNCTIONFUSE_KIND_REGISTRY", "kind-registry")
REGISTRY_PORT = int(os.environ.get("FUNCTIONFUSE_KIND_REGISTRY_PORT", "5001"))
NODE_IMAGE = os.environ.get("FUNCTIONFUSE_KIND_NODE_IMAGE", "")  # e.g. kindest/node:v1.31.x
NAMESPACE = "kubeflow"
RELEASE = "ff"
TOOLS = ("docker", "kind", "kubectl", "helm")
# helm may come from scripts/setup-helm.sh, which installs it into .venv/bin
os.environ["PATH"] = os.pathsep.join([os.path.join(ROOT, ".venv", "bin"), os.environ.get("PATH", "")])


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def sh(*cmd: str, check: bool = True, capture: bool = False, input: str | None = None) -> str:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False, text=True, input=input, capture_output=capture)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}){': ' + proc.stderr if capture else ''}")
    return proc.stdout if capture else ""


def kubectl(*args: str, **kw) -> str:
    return sh("kubectl", "--context", f"kind-{CLUSTER}", *args, **kw)


def registry_up() -> None:
    running = sh("docker", "inspect", "-f", "{{.State.Running}}", REGISTRY, check=False, capture=True).strip()
    if running != "true":
        sh("docker", "run", "-d", "--restart=always", "-p", f"127.0.0.1:{REGISTRY_PORT}:5000",
           "--network", "bridge", "--name", REGISTRY, "registry:2")


def cluster_up() -> None:
    clusters = sh("kind", "get", "clusters", capture=True).split()
    if CLUSTER not in clusters:
        cmd = ["kind", "create", "cluster", "--name", CLUSTER, "--config", os.path.join(ROOT, "manifests/kind/cluster.yaml")]
        if NODE_IMAGE:
            cmd += ["--image", NODE_IMAGE]
        sh(*cmd)
    hosts = os.path.join(ROOT, "manifests/kind/certs.d/localhost:5001/hosts.toml")
    for node in sh("kind", "get", "nodes", "--name", CLUSTER, capture=True).split():
        sh("docker", "exec", node, "mkdir", "-p", f"/etc/containerd/certs.d/localhost:{REGISTRY_PORT}")
        sh("docker", "cp", hosts, f"{node}:/etc/containerd/certs.d/localhost:{REGISTRY_PORT}/hosts.toml")
    networks = sh("docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", REGISTRY, capture=True)
    if '"kind"' not in networks:
        sh("docker", "network", "connect", "kind", REGISTRY)
    kubectl("apply", "-f", os.path.join(ROOT, "manifests/kind/local-registry-hosting.yaml"))


def images_up() -> None:
    sh(sys.executable, "-m", "functionfuse", "image", "build", "--quiet", "--push", f"127.0.0.1:{REGISTRY_PORT}")


def operators_up() -> None:
    kubectl("create", "namespace", "ray-system", check=False)
    kubectl("apply", "--server-side", "-k", os.path.join(ROOT, "manifests/kuberay"))
    kubectl("apply", "-k", os.path.join(ROOT, "manifests/kfp/cluster-scoped"))
    kubectl("wait", "--for", "condition=established", "--timeout=120s", "crd/applications.app.k8s.io")
    kubectl("apply", "-k", os.path.join(ROOT, "manifests/kfp"))
    kubectl("wait", "-n", "ray-system", "--for=condition=Available", "deployment/kuberay-operator", "--timeout=600s")
    kubectl("wait", "-n", NAMESPACE, "--for=condition=Available", "deployment", "--all", "--timeout=1200s")


def chart_up() -> None:
    chart = os.path.join(ROOT, "charts/functionfuse")
    sh("helm", "dependency", "build", chart)
    sh("helm", "--kube-context", f"kind-{CLUSTER}", "upgrade", "--install", RELEASE, chart, "-n", NAMESPACE,
       "-f", os.path.join(chart, "ci/kind-values.yaml"), "--wait", "--timeout", "15m")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        state = kubectl("get", "raycluster", f"{RELEASE}-functionfuse-ray", "-n", NAMESPACE,
                        "-o", "jsonpath={.status.state}", capture=True, check=False)
        if state.strip() == "ready":
            return
        time.sleep(10)
    raise SystemExit("the RayCluster did not become ready within 15 minutes")


def up() -> None:
    absent = missing_tools()
    if absent:
        raise SystemExit(f"missing tools: {', '.join(absent)}")
    registry_up()
    cluster_up()
    images_up()
    operators_up()
    chart_up()
    print(f"functionfuse stack up: kind cluster {CLUSTER}, registry 127.0.0.1:{REGISTRY_PORT}, release {RELEASE} in {NAMESPACE}")


def down() -> None:
    if shutil.which("kind"):
        sh("kind", "delete", "cluster", "--name", CLUSTER, check=False)
    if shutil.which("docker"):
        sh("docker", "rm", "-f", REGISTRY, check=False)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("up", "down"):
        raise SystemExit(__doc__)
    {"up": up, "down": down}[sys.argv[1]]()
