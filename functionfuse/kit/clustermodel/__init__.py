"""Offline checks of what a cluster would refuse or get wrong in the rendered charts.

No Kubernetes API is needed: the charts are rendered with ``helm template`` and the
objects are checked against a model of the cluster they are installed into, which the
documented install steps build (the KubeRay and KFP manifests pinned in manifests/, the
namespaces the steps create):

============ =================================================================================
references   every Secret, ConfigMap, Service and port, ServiceAccount, PVC, imagePullSecret
             and namespace an object names exists in the render or as a prerequisite
collisions   no object has the kind/namespace/name of one the pinned upstream manifests create
images       every image is one the release publishes, or an upstream image pinned by digest
schemas      RayCluster/RayJob against KubeRay's CRD schemas, the KFP launcher config against a
             schema derived from KFP's types, core objects against Kubernetes' schemas
security     non-root, no privilege escalation, read-only root, resources, NetworkPolicies,
             no NodePort/LoadBalancer, no credential in plain text
sequence     the documented install steps (functionfuse.kit.steps) played against a fresh
             cluster: namespaces, established CRDs and patched objects exist when needed
============ =================================================================================

``functionfuse stack check [-f values.yaml ...]`` runs them on the umbrella chart; the
facts they rest on (upstream versions, how they were read) are in ``data/`` with a README.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Any, Callable, Mapping, Sequence

from ...errors import ConfigurationError, KitError, missing_dependency
from .objects import CLUSTER_SCOPED, Finding, ObjectKey, PodTemplate, key_of, pod_templates
from .references import Inventory, Reference, check_references, references_of
from .rules import DIGEST_PINNED, READ_ONLY_ROOT_EXCEPTIONS, check_images, check_security, image_references, published_images
from .schemas import CRD_SCHEMAS, K8S_VERSION, check_schemas, crd_schema, launcher_config
from .sequence import check_sequence
from .upstream import DATA, UpstreamSource, check_collisions, pinned_refs, prerequisites, upstream_sources

__all__ = [
    "CHECKS",
    "CLUSTER_SCOPED",
    "CRD_SCHEMAS",
    "DATA",
    "DIGEST_PINNED",
    "K8S_VERSION",
    "READ_ONLY_ROOT_EXCEPTIONS",
    "Finding",
    "Inventory",
    "ObjectKey",
    "PodTemplate",
    "Reference",
    "UpstreamSource",
    "check_collisions",
    "check_images",
    "check_objects",
    "check_references",
    "check_schemas",
    "check_security",
    "check_sequence",
    "crd_schema",
    "image_references",
    "key_of",
    "launcher_config",
    "pinned_refs",
    "pod_templates",
    "prerequisites",
    "published_images",
    "references_of",
    "render_chart",
    "upstream_sources",
]

CHECKS = ("references", "collisions", "images", "schemas", "security")


def render_chart(
    chart: str,
    *,
    release: str = "ff",
    namespace: str = "kubeflow",
    values: Sequence[str] = (),
    sets: Sequence[str] = (),
    helm: str | None = None,
    build_dependencies: bool = False,
) -> list[dict]:
    """The objects ``helm template RELEASE CHART -n NAMESPACE -f VALUES... --set SETS...`` renders.

    :param build_dependencies: run ``helm dependency build`` first, on a temporary copy of
        the chart's folder (the umbrella's local subcharts are found next to it).
    """
    try:
        import yaml
    except ImportError as exc:
        raise missing_dependency("yaml", "kit", exc) from exc
    if not os.path.isfile(os.path.join(chart, "Chart.yaml")):
        raise ConfigurationError(f"{chart!r} is not a Helm chart (no Chart.yaml); pass the folder of a chart, e.g. charts/functionfuse.")
    if helm is None:
        from ..release import helm_binary

        helm = helm_binary()
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="ff-clustermodel-") as tmp:
        if build_dependencies:
            parent = os.path.dirname(os.path.abspath(chart))
            copy = os.path.join(tmp, "charts")
            shutil.copytree(parent, copy, ignore=shutil.ignore_patterns("*.tgz"))
            chart = os.path.join(copy, os.path.basename(os.path.abspath(chart)))
            _helm(helm, ["dependency", "build", chart], env)
        args = ["template", release, chart, "--namespace", namespace]
        for v in values:
            args += ["-f", os.path.abspath(v)]
        for s in sets:
            args += ["--set", s]
        out = _helm(helm, args, env)
    return [d for d in yaml.safe_load_all(out) if isinstance(d, dict)]


def _helm(helm: str, args: list[str], env: Mapping[str, str]) -> str:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, env=dict(env), stdin=subprocess.DEVNULL, timeout=180)
    if proc.returncode != 0:
        raise KitError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def check_objects(
    objs: Sequence[Mapping[str, Any]],
    namespace: str,
    *,
    published: Sequence[str] | set[str],
    prerequisite: Inventory | None = None,
    checks: Sequence[str] = CHECKS,
    read_only_exceptions: Mapping[str, str] = READ_ONLY_ROOT_EXCEPTIONS,
    k8s_version: str = K8S_VERSION,
) -> list[Finding]:
    """Run *checks* over *objs* rendered into *namespace* and return every finding (empty: all pass).

    :param published: the image references the release publishes (see :func:`published_images`).
    :param prerequisite: what exists before the install (default: :func:`prerequisites`).
    """
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        raise ConfigurationError(f"Unknown cluster-model checks {unknown}; choose from {list(CHECKS)}.")
    runners: dict[str, Callable[[], list[Finding]]] = {
        "references": lambda: check_references(objs, namespace, prerequisite if prerequisite is not None else prerequisites()),
        "collisions": lambda: check_collisions(objs, namespace),
        "images": lambda: check_images(objs, namespace, published),
        "schemas": lambda: check_schemas(objs, namespace, k8s_version),
        "security": lambda: check_security(objs, namespace, read_only_exceptions),
    }
    findings: list[Finding] = []
    for name in CHECKS:
        if name in checks:
            findings += runners[name]()
    return findings
