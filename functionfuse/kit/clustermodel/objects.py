"""Rendered Kubernetes objects as the checks see them: keys, pod templates, embedded documents."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

__all__ = [
    "CLUSTER_SCOPED",
    "Finding",
    "ObjectKey",
    "PodTemplate",
    "key_of",
    "pod_templates",
    "embedded_documents",
    "embedded_workloads",
    "walk",
]

#: kinds that live outside namespaces (the ones a chart or the upstream manifests may create)
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "StorageClass",
        "PersistentVolume",
        "IngressClass",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "APIService",
        "RuntimeClass",
    }
)


@dataclass(frozen=True, order=True)
class ObjectKey:
    """What the API server identifies an object by: kind, namespace ("" when cluster-scoped), name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Finding:
    """One thing a cluster would refuse or a rule the kit sets: which check, which object, why."""

    check: str
    obj: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.obj}: {self.message}"


def key_of(obj: Mapping[str, Any], namespace: str) -> ObjectKey:
    """The key of a rendered object; *namespace* is the release namespace helm installs into."""
    meta = obj.get("metadata") or {}
    kind = str(obj.get("kind", ""))
    ns = "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or namespace)
    return ObjectKey(kind, ns, str(meta.get("name", "")))


@dataclass(frozen=True)
class PodTemplate:
    """A pod an object creates: where in the object ("pod", "head", a worker group, "submitter"),
    its labels as the pod will carry them, its spec."""

    where: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]


_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


#: what KubeRay gives the autoscaler sidecar unless autoscalerOptions say otherwise
#: (ray-operator/controllers/ray/common/pod.go, BuildAutoscalerContainer, v1.7.0)
_AUTOSCALER_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}


def _autoscaler(spec: Mapping[str, Any], head_image: Any) -> dict:
    """The sidecar KubeRay adds to the head pod with in-tree autoscaling (mergeAutoscalerOverrides)."""
    opts = spec.get("autoscalerOptions") or {}
    container: dict[str, Any] = {"name": "autoscaler", "image": opts.get("image") or head_image,
                                 "resources": opts.get("resources") or _AUTOSCALER_RESOURCES}
    for key in ("securityContext", "env", "envFrom", "volumeMounts"):
        if opts.get(key):
            container[key] = opts[key]
    return container


def _ray_cluster_pods(where: str, cluster: str, spec: Mapping[str, Any]) -> list[PodTemplate]:
    # KubeRay labels every pod it creates with these (ray-operator/controllers/ray/common/pod.go)
    head = spec.get("headGroupSpec") or {}
    template = head.get("template") or {}
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels.update({"ray.io/cluster": cluster, "ray.io/node-type": "head", "ray.io/group": "headgroup"})
    head_spec = dict(template.get("spec") or {})
    if spec.get("enableInTreeAutoscaling"):
        containers = list(head_spec.get("containers") or [])
        head_spec["containers"] = containers + [_autoscaler(spec, containers[0].get("image") if containers else None)]
    pods = [PodTemplate(f"{where}head", labels, head_spec)]
    for group in spec.get("workerGroupSpecs") or []:
        template = group.get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"ray.io/cluster": cluster, "ray.io/node-type": "worker", "ray.io/group": str(group.get("groupName"))})
        pods.append(PodTemplate(f"{where}{group.get('groupName')}", labels, template.get("spec") or {}))
    return pods


def pod_templates(obj: Mapping[str, Any], namespace: str) -> list[PodTemplate]:
    """Every pod *obj* makes the cluster run (workloads, CronJobs, KubeRay RayCluster and RayJob)."""
    kind = obj.get("kind")
    key = key_of(obj, namespace)
    spec = obj.get("spec") or {}
    if kind in _TEMPLATE_KINDS:
        template = spec.get("template") or {}
        return [PodTemplate("pod", (template.get("metadata") or {}).get("labels") or {}, template.get("spec") or {})]
    if kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        return [PodTemplate("pod", (template.get("metadata") or {}).get("labels") or {}, template.get("spec") or {})]
    if kind == "Pod":
        return [PodTemplate("pod", (obj.get("metadata") or {}).get("labels") or {}, spec)]
    if kind == "RayCluster":
        return _ray_cluster_pods("", key.name, spec)
    if kind == "RayJob":
        pods = _ray_cluster_pods("rayClusterSpec/", f"{key.name}-<id>", spec.get("rayClusterSpec") or {}) if spec.get("rayClusterSpec") else []
        submitter = spec.get("submitterPodTemplate")
        if submitter:
            pods.append(PodTemplate("submitter", (submitter.get("metadata") or {}).get("labels") or {}, submitter.get("spec") or {}))
        return pods
    return []


def _parse(text: str) -> Any:
    text = text.strip()
    if not text or text[0] not in "{[" and ":" not in text.split("\n", 1)[0]:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a kit requirement
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, (dict, list)) else None


def embedded_documents(obj: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(data key, parsed document) of each ConfigMap value that is a JSON or YAML mapping or
    list: job templates, launcher configs, which name Secrets, images and Services too."""
    if obj.get("kind") != "ConfigMap":
        return []
    found = []
    for k, v in (obj.get("data") or {}).items():
        if isinstance(v, str):
            doc = _parse(v)
            if doc is not None:
                found.append((str(k), doc))
    return found


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) of every mapping entry under *node*, depth first."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            here = f"{path}.{k}" if path else str(k)
            yield here, k, v
            yield from walk(v, here)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


_WORKLOAD_KINDS = _TEMPLATE_KINDS | {"CronJob", "Pod"}


def embedded_workloads(obj: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """(where, object) of each workload written inside a ConfigMap value, such as the Job
    manifest of a Prefect base job template: the cluster runs those pods too. Template
    placeholders stay as they are; the checks treat ``{{ ... }}`` values as set later."""
    found = []
    for data_key, doc in embedded_documents(obj):
        for path, k, v in walk({"": doc}):
            if isinstance(v, Mapping) and v.get("kind") in _WORKLOAD_KINDS and isinstance(v.get("spec"), Mapping):
                workload = dict(v)
                meta = dict(workload.get("metadata") or {})
                meta["name"] = str(meta.get("name") or meta.get("generateName") or "embedded")
                meta.pop("namespace", None)  # a placeholder: the workload runs where the template is used
                workload["metadata"] = meta
                found.append((f"data.{data_key} {path}", workload))
    return found
