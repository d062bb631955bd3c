"""Check 3 (images) and check 5 (security) over rendered objects."""

from __future__ import annotations

import base64
import fnmatch
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..._version import __version__
from ...errors import ConfigurationError
from .objects import Finding, PodTemplate, embedded_documents, embedded_workloads, key_of, pod_templates, walk

__all__ = [
    "DIGEST_PINNED",
    "READ_ONLY_ROOT_EXCEPTIONS",
    "published_images",
    "image_references",
    "check_images",
    "check_security",
]

#: an image reference pinned by content: ``name[:tag]@sha256:<64 hex>``
DIGEST_PINNED = re.compile(r"[^\s@]+@sha256:[0-9a-f]{64}")

#: containers allowed a writable root filesystem: ``{"<pod where>/<container>" glob: reason}``.
#: Empty: every program the charts run works with a read-only root and emptyDir scratch space.
READ_ONLY_ROOT_EXCEPTIONS: Mapping[str, str] = {}

_PASSWORD_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET_ACCESS_KEY|SECRET_KEY|ACCESS_KEY_ID|ACCESS_KEY|API_KEY|TOKEN|CREDENTIALS?)$", re.I)
#: names that match but hold the name of a Secret or of a key in it, not a credential
_NAMES_OF_CREDENTIALS = re.compile(r"(_KEY_KEY|_SECRET|_SECRET_NAME|_FOR_API_KEY|_KEY_REF)$", re.I)
_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]+:[^@/\s]+@")
_WELL_KNOWN_PASSWORDS = {"minioadmin", "admin", "password", "changeme", "prefect", "root", "secret", "minio123", "mlpipeline"}


def published_images(registry: str | None = None, version: str = __version__, pythons: Sequence[str] | None = None) -> set[str]:
    """The image references ``functionfuse release REGISTRY`` pushes for *version*:
    ``REGISTRY/functionfuse:<version>-py3XX[-engine]`` for every image recipe (REGISTRY:
    the one releases publish to and the charts name by default; py3XX: the Python of the
    release's default base image, e.g. ``python:3.11-slim`` -> py311)."""
    from ..images import DEFAULT_BASE_IMAGE, DEFAULT_REPOSITORY, RECIPES, image_tag, registry_repository
    from ..release import DEFAULT_IMAGE_REGISTRY

    registry = DEFAULT_IMAGE_REGISTRY if registry is None else registry
    if pythons is None:
        m = re.search(r"python:(\d)\.(\d+)", DEFAULT_BASE_IMAGE)
        if m is None:
            raise ConfigurationError(f"Cannot tell the Python of the release's base image {DEFAULT_BASE_IMAGE!r}: pass pythons=('py3XX',).")
        pythons = (f"py{m.group(1)}{m.group(2)}",)
    repo = registry_repository(registry, DEFAULT_REPOSITORY)
    return {f"{repo}:{image_tag(version, py, name)}" for py in pythons for name in RECIPES}


def image_references(obj: Mapping[str, Any], namespace: str) -> list[tuple[str, str]]:
    """(where, image) of every image *obj* makes a node pull: container ``image`` fields
    anywhere in it (CRs and embedded job templates too) and settings named ``..._IMAGE``."""
    trees: list[tuple[str, Any]] = [("", {k: v for k, v in obj.items() if k != "metadata"})]
    trees += [(f"data.{k}", doc) for k, doc in embedded_documents(obj)]
    found = []
    for where, tree in trees:
        for path, k, v in walk(tree):
            if not isinstance(v, str) or not v or "{{" in v:
                continue
            if k == "image" or (isinstance(k, str) and k.upper().endswith("_IMAGE")):
                found.append((f"{where} {path}".strip(), v))
            elif k == "default" and path.endswith(".image.default"):  # a job template's variable (Prefect)
                found.append((f"{where} {path}".strip(), v))
    for pod in pod_templates(obj, namespace):
        for c in list(pod.spec.get("initContainers") or []) + list(pod.spec.get("containers") or []):
            for e in c.get("env") or []:
                if str(e.get("name", "")).upper().endswith("_IMAGE") and e.get("value") and "{{" not in e["value"]:
                    found.append((f"{pod.where}/{c.get('name')} env {e['name']}", e["value"]))
    return sorted(set(found))


def check_images(objs: Sequence[Mapping[str, Any]], namespace: str, published: Iterable[str]) -> list[Finding]:
    """A finding for each image that is neither one the release publishes (*published*) nor pinned by digest."""
    allowed = set(published)
    findings = []
    for obj in objs:
        for where, image in image_references(obj, namespace):
            if image in allowed or DIGEST_PINNED.fullmatch(image):
                continue
            example = f"such as {sorted(allowed)[0]!r}" if allowed else "none given"
            findings.append(Finding("images", str(key_of(obj, namespace)), f"{where}: {image!r} is neither one of the {len(allowed)} images "
                                    f"the release publishes ({example}) nor pinned by digest (name@sha256:<64 hex>)"))
    return findings


# -- security --------------------------------------------------------------------------------------
def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        op, k, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and labels.get(k) in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def _containers(pod: PodTemplate) -> Iterator[Mapping[str, Any]]:
    yield from pod.spec.get("initContainers") or []
    yield from pod.spec.get("containers") or []


def _pod_findings(pod: PodTemplate, read_only_exceptions: Mapping[str, str]) -> Iterator[str]:
    psc = pod.spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.spec.get(flag):
            yield f"{pod.where}: {flag} is true"
    for vol in pod.spec.get("volumes") or []:
        if "hostPath" in vol:
            yield f"{pod.where}: volume {vol.get('name')!r} mounts a hostPath"
    for c in _containers(pod):
        where = f"{pod.where}/{c.get('name')}"
        csc = c.get("securityContext") or {}
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            yield f"{where}: runAsNonRoot is not true (set it in the pod securityContext)"
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            yield f"{where}: runs as uid 0"
        if csc.get("allowPrivilegeEscalation") is not False:
            yield f"{where}: allowPrivilegeEscalation is not false"
        if csc.get("privileged"):
            yield f"{where}: privileged"
        if csc.get("readOnlyRootFilesystem") is not True and not any(fnmatch.fnmatchcase(where, p) for p in read_only_exceptions):
            yield (f"{where}: readOnlyRootFilesystem is not true; mount emptyDir volumes where the program writes "
                   "(e.g. /tmp), or add it to READ_ONLY_ROOT_EXCEPTIONS with the reason")
        res: Any = c.get("resources") or {}
        if isinstance(res, str) and "{{" in res:
            res = {"requests": {"cpu": res, "memory": res}, "limits": {"cpu": res, "memory": res}}  # filled in per run
        missing = [f"{r} {part}" for part in ("requests", "limits") for r in ("cpu", "memory") if r not in ((res.get(part) if isinstance(res, Mapping) else None) or {})]
        if missing:
            yield f"{where}: no {', '.join(missing)}"
        names = {str(e.get("name", "")) for e in c.get("env") or []}
        for e in c.get("env") or []:
            name = str(e.get("name", ""))
            value = e.get("value")
            # X_SECRET_KEY next to X_SECRET_NAME is the key within that Secret
            names_a_key = name.upper().endswith("_SECRET_KEY") and name[: -len("_KEY")] + "_NAME" in names
            if isinstance(value, str) and value:
                if _PASSWORD_NAME.search(name) and not _NAMES_OF_CREDENTIALS.search(name) and not names_a_key:
                    yield f"{where}: env {name} holds a credential in plain text; use valueFrom.secretKeyRef"
                elif _URL_WITH_PASSWORD.search(value):
                    yield f"{where}: env {name} is a URL with a password in it; build it from a Secret"


def check_security(
    objs: Sequence[Mapping[str, Any]], namespace: str, read_only_exceptions: Mapping[str, str] = READ_ONLY_ROOT_EXCEPTIONS
) -> list[Finding]:
    """Findings for pods that may run as root, escalate privileges, write their root
    filesystem or run unbounded; pods no NetworkPolicy selects; NodePort/LoadBalancer
    exposure; credentials in plain text or with a well-known default."""
    findings: list[Finding] = []
    policies = [(key_of(o, namespace), (o.get("spec") or {}).get("podSelector") or {}) for o in objs if o.get("kind") == "NetworkPolicy"]
    for obj in objs:
        key = key_of(obj, namespace)
        pods = [(str(key), key.namespace, pod) for pod in pod_templates(obj, namespace)]
        for where, workload in embedded_workloads(obj):
            pods += [(str(key), key.namespace, PodTemplate(f"{where} {pod.where}", pod.labels, pod.spec)) for pod in pod_templates(workload, key.namespace)]
        for _, pod_ns, pod in pods:
            findings += [Finding("security", str(key), msg) for msg in _pod_findings(pod, read_only_exceptions)]
            if not any(pk.namespace == pod_ns and _selects(sel, pod.labels) for pk, sel in policies):
                shown = {k: v for k, v in pod.labels.items() if k.startswith(("app.kubernetes.io/name", "app.kubernetes.io/component", "ray.io/"))}
                findings.append(Finding("security", str(key), f"{pod.where}: no NetworkPolicy in {key.namespace!r} selects this pod (labels {shown or dict(pod.labels)})"))
        spec = obj.get("spec") or {}
        if key.kind == "Service" and spec.get("type") in ("NodePort", "LoadBalancer"):
            findings.append(Finding("security", str(key), f"Service type {spec['type']} exposes it on every node; use ClusterIP (kubectl port-forward or an Ingress)"))
        for path, k, v in walk(spec):
            if k == "nodePort" and v:
                findings.append(Finding("security", str(key), f"{path}: fixed nodePort {v}"))
            elif k == "serviceType" and v in ("NodePort", "LoadBalancer"):
                findings.append(Finding("security", str(key), f"{path}: {v} exposes the service on every node; use ClusterIP"))
        if key.kind == "Secret":
            values = [(f"stringData.{k2}", v2) for k2, v2 in (obj.get("stringData") or {}).items()]
            for k2, v2 in (obj.get("data") or {}).items():
                try:
                    values.append((f"data.{k2}", base64.b64decode(str(v2), validate=True).decode()))
                except (ValueError, UnicodeDecodeError):
                    continue
            for where, v2 in values:
                if isinstance(v2, str) and v2.lower() in _WELL_KNOWN_PASSWORDS:
                    findings.append(Finding("security", str(key), f"{where} is the well-known default {v2!r}; generate it or require an existing Secret"))
        if key.kind == "ConfigMap":
            for k2, v2 in (obj.get("data") or {}).items():
                if not isinstance(v2, str) or not v2:
                    continue
                if _PASSWORD_NAME.search(str(k2)) and not _NAMES_OF_CREDENTIALS.search(str(k2)):
                    findings.append(Finding("security", str(key), f"data.{k2} holds a credential in a ConfigMap; use a Secret"))
                elif _URL_WITH_PASSWORD.search(v2):
                    findings.append(Finding("security", str(key), f"data.{k2} holds a URL with a password; use a Secret"))
    if any(pod_templates(o, namespace) for o in objs) and not policies:
        findings.append(Finding("security", "NetworkPolicy", "the render has pods but no NetworkPolicy; render one per component by default"))
    return findings
