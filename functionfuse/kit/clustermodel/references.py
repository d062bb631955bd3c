"""Check 1: every object a rendered object refers to exists, in the render or as a prerequisite.

A reference is a Secret, ConfigMap, PersistentVolumeClaim, ServiceAccount or imagePullSecret
named by a pod template (env ``valueFrom``, ``envFrom``, volumes), by a custom resource
(``secretName``, KFP's ``secretRef``) or by a setting (``..._SECRET``,
``..._SERVICE_ACCOUNT``); a Service and port named by an endpoint (``host:port`` or a URL
whose host is ``svc``, ``svc.ns``, ``svc.ns.svc[.cluster.local]``) in an env value or a
ConfigMap; and the namespace of every object. The cluster resolves names in the
namespace of the object that holds them, so that is where the target must be. A rendered
Service must also select a rendered pod, and its named target ports must exist there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .objects import Finding, ObjectKey, embedded_documents, key_of, pod_templates, walk

__all__ = ["Inventory", "Reference", "references_of", "check_references"]

CHECK = "references"


@dataclass
class Inventory:
    """The objects a cluster holds after the install: each with its Service ports or
    Secret/ConfigMap keys when known (None: unknown, not checked)."""

    objects: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)

    def add(self, key: ObjectKey, *, ports: Iterable[int] | None = None, keys: Iterable[str] | None = None) -> None:
        self.objects[key] = {"ports": None if ports is None else set(ports), "keys": None if keys is None else set(keys)}
        if key.kind == "Namespace":
            self.namespaces.add(key.name)

    def add_rendered(self, objs: Sequence[Mapping[str, Any]], namespace: str) -> None:
        for obj in objs:
            key = key_of(obj, namespace)
            ports = keys = None
            if key.kind == "Service":
                ports = [int(p["port"]) for p in (obj.get("spec") or {}).get("ports") or [] if "port" in p]
            elif key.kind in ("Secret", "ConfigMap"):
                keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})
            self.add(key, ports=ports, keys=keys)

    def get(self, key: ObjectKey) -> dict[str, Any] | None:
        return self.objects.get(key)


@dataclass(frozen=True)
class Reference:
    """*source* (where, for the message) names *target*; *keys* that must be in it, *port* it must serve."""

    source: str
    target: ObjectKey
    keys: tuple[str, ...] = ()
    port: int | None = None
    optional: bool = False


#: the key of KubeRay's auth token Secret (ray-operator/controllers/ray/utils/constant.go RAY_AUTH_TOKEN_SECRET_KEY)
RAY_AUTH_TOKEN_KEY = "auth_token"
_SETTING_KINDS = (("_PULL_SECRET", "Secret"), ("_SERVICE_ACCOUNT", "ServiceAccount"), ("_SECRET", "Secret"), ("_SECRET_NAME", "Secret"))
_ENDPOINT = re.compile(
    r"(?:\b(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?:[^@/\s\"']+@)?"
    r"(?P<host>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*)"
    r"(?::(?P<port>\d{1,5}))?(?=[/\s\"',;}\]?]|$)"
)
#: URL schemes whose "host" is a bucket, not a Service
_BUCKET_SCHEMES = {"s3", "gs", "gcs", "minio", "mem", "file", "s3a", "abfs", "az"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _setting_kind(name: str) -> str | None:
    upper = name.upper()
    for suffix, kind in _SETTING_KINDS:
        if upper.endswith(suffix):
            return kind
    return None


def _service_of(host: str, namespace: str, namespaces: set[str]) -> tuple[str, str] | None:
    """(service, namespace) that a host name resolves to inside the cluster, or None for an outside host."""
    if host in ("localhost",) or re.fullmatch(r"[\d.]+", host):
        return None
    parts = host.split(".")
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 and parts[1] in namespaces:
        return parts[0], parts[1]
    if len(parts) >= 3 and parts[2] == "svc" and (len(parts) == 3 or parts[3:] == ["cluster", "local"]):
        return parts[0], parts[1]
    return None


def _endpoints(text: str, source: str, namespace: str, namespaces: set[str]) -> Iterator[Reference]:
    for m in _ENDPOINT.finditer(text):
        scheme, host, port = m.group("scheme"), m.group("host"), m.group("port")
        if scheme in _BUCKET_SCHEMES or (scheme is None and port is None):
            continue
        if scheme is None and m.start() > 0 and text[m.start() - 1] in "/@.-_":
            continue
        svc = _service_of(host, namespace, namespaces)
        if svc is None:
            continue
        number = int(port) if port else _DEFAULT_PORTS.get(scheme or "")
        yield Reference(f"{source} ({m.group(0)!r})", ObjectKey("Service", svc[1], svc[0]), port=number)


def _structured(tree: Any, source: str, namespace: str) -> Iterator[Reference]:
    """References written as Kubernetes API fields anywhere in *tree* (pods, CRs, job templates)."""
    for path, k, v in walk(tree):
        where = f"{source} {path}".strip()
        if isinstance(v, str) and "{{" in v:
            continue  # a template placeholder, filled in later (Prefect job templates)
        if k == "secretKeyRef" and isinstance(v, Mapping) and v.get("name"):
            yield Reference(where, ObjectKey("Secret", namespace, str(v["name"])), (str(v.get("key")),) if v.get("key") else (),
                            optional=bool(v.get("optional")))
        elif k == "configMapKeyRef" and isinstance(v, Mapping) and v.get("name"):
            yield Reference(where, ObjectKey("ConfigMap", namespace, str(v["name"])), (str(v.get("key")),) if v.get("key") else (),
                            optional=bool(v.get("optional")))
        elif k == "secretRef" and isinstance(v, Mapping):
            if v.get("name"):  # envFrom
                yield Reference(where, ObjectKey("Secret", namespace, str(v["name"])), optional=bool(v.get("optional")))
            elif v.get("secretName"):  # KFP launcher providers: the launcher reads these keys
                keys = tuple(str(v[x]) for x in ("accessKeyKey", "secretKeyKey", "tokenKey") if v.get(x))
                yield Reference(where, ObjectKey("Secret", namespace, str(v["secretName"])), keys)
        elif k == "configMapRef" and isinstance(v, Mapping) and v.get("name"):
            yield Reference(where, ObjectKey("ConfigMap", namespace, str(v["name"])), optional=bool(v.get("optional")))
        elif k == "secret" and isinstance(v, Mapping) and v.get("secretName"):  # volume
            keys = tuple(str(i["key"]) for i in v.get("items") or [] if "key" in i)
            yield Reference(where, ObjectKey("Secret", namespace, str(v["secretName"])), keys, optional=bool(v.get("optional")))
        elif k == "secretName" and isinstance(v, str) and v and not path.endswith("secretRef.secretName") and ".secret." not in f".{path}":
            # KubeRay (v1.7.0 raycluster_types.go): the token Secret "must have a data key auth_token"
            keys = (RAY_AUTH_TOKEN_KEY,) if path.endswith("authOptions.secretName") else ()
            yield Reference(where, ObjectKey("Secret", namespace, v), keys)
        elif k == "configMap" and isinstance(v, Mapping) and v.get("name"):  # volume
            keys = tuple(str(i["key"]) for i in v.get("items") or [] if "key" in i)
            yield Reference(where, ObjectKey("ConfigMap", namespace, str(v["name"])), keys, optional=bool(v.get("optional")))
        elif k == "persistentVolumeClaim" and isinstance(v, Mapping) and v.get("claimName"):
            yield Reference(where, ObjectKey("PersistentVolumeClaim", namespace, str(v["claimName"])))
        elif k == "imagePullSecrets" and isinstance(v, list):
            for item in v:
                if isinstance(item, Mapping) and item.get("name"):
                    yield Reference(where, ObjectKey("Secret", namespace, str(item["name"])))
        elif k in ("serviceAccountName", "serviceAccount") and isinstance(v, str) and v and v != "default":
            yield Reference(where, ObjectKey("ServiceAccount", namespace, v))


def _settings(pairs: Iterable[tuple[str, Any]], source: str, namespace: str, namespaces: set[str]) -> Iterator[Reference]:
    """References in settings: ``X_SECRET``/``X_SECRET_NAME`` (with ``X_SECRET_KEY``, a key
    in it), ``X_PULL_SECRET``, ``X_SERVICE_ACCOUNT`` name objects; values may hold endpoints."""
    pairs = list(pairs)
    values = {name: value for name, value in pairs}
    for name, value in pairs:
        if not isinstance(value, str) or not value or "{{" in value:
            continue
        kind = _setting_kind(name)
        if kind and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value):
            keys: tuple[str, ...] = ()
            if kind == "Secret":
                # keys in that Secret named by sibling settings: P_SECRET_NAME + P_SECRET_KEY (Prefect),
                # P_SECRET + P_..._KEY_KEY (functionfuse-kfp settings)
                prefix = re.sub(r"_SECRET(_NAME)?$", "", name, flags=re.I)
                keys = tuple(str(v) for n, v in values.items() if isinstance(v, str) and v and n != name and n.startswith(prefix + "_")
                             and (n.upper().endswith("_KEY_KEY") or n.upper() == f"{prefix}_SECRET_KEY".upper()))
            yield Reference(f"{source} {name}", ObjectKey(kind, namespace, value), keys)
        yield from _endpoints(value, f"{source} {name}", namespace, namespaces)


def references_of(obj: Mapping[str, Any], namespace: str, namespaces: set[str]) -> list[Reference]:
    """Every reference *obj* makes (see the module docstring)."""
    key = key_of(obj, namespace)
    ns = key.namespace or namespace
    refs: list[Reference] = []
    if key.kind != "ConfigMap":
        spec = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
        refs += _structured(spec, "", ns)
    for pod in pod_templates(obj, namespace):
        for c in list(pod.spec.get("initContainers") or []) + list(pod.spec.get("containers") or []):
            env = [(str(e.get("name")), e.get("value")) for e in c.get("env") or [] if "value" in e]
            refs += _settings(env, f"{pod.where}/{c.get('name')} env", ns, namespaces)
    if key.kind == "ConfigMap":
        data = obj.get("data") or {}
        refs += _settings(((str(k), v) for k, v in data.items()), "data", ns, namespaces)
        for data_key, doc in embedded_documents(obj):
            refs += _structured(doc, f"data.{data_key}", ns)
            for path, k, v in walk(doc):
                if isinstance(v, str) and isinstance(k, str):
                    refs += _settings([(k, v)], f"data.{data_key} {path}", ns, namespaces)
    return _dedupe(refs)


def _dedupe(refs: list[Reference]) -> list[Reference]:
    seen: set[tuple] = set()
    out = []
    for r in refs:
        ident = (r.target, r.keys, r.port, r.optional)
        if ident not in seen:
            seen.add(ident)
            out.append(r)
    return out


def _service_findings(objs: Sequence[Mapping[str, Any]], namespace: str) -> Iterator[Finding]:
    """A rendered Service must select a rendered pod, and a named targetPort must be a port of its containers."""
    pods = [(key_of(o, namespace).namespace, pod) for o in objs for pod in pod_templates(o, namespace)]
    for obj in objs:
        if obj.get("kind") != "Service":
            continue
        key = key_of(obj, namespace)
        spec = obj.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector or spec.get("type") == "ExternalName":
            continue
        chosen = [p for ns, p in pods if ns == key.namespace and all(p.labels.get(k) == v for k, v in selector.items())]
        if not chosen:
            yield Finding(CHECK, str(key), f"selector {dict(selector)} matches no pod the render creates: the Service has no endpoints")
            continue
        names = {str(port.get("name")) for p in chosen for c in p.spec.get("containers") or [] for port in c.get("ports") or [] if port.get("name")}
        for port in spec.get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in names:
                yield Finding(CHECK, str(key), f"port {port.get('name') or port.get('port')!r} targets {target!r}, which no selected container names "
                              f"(they name {sorted(names)})")


def check_references(objs: Sequence[Mapping[str, Any]], namespace: str, prerequisites: Inventory) -> list[Finding]:
    """Findings for each reference in *objs* (rendered into *namespace*) that neither the
    render nor *prerequisites* (upstream manifests, namespaces the documented steps create) satisfies."""
    inventory = Inventory(dict(prerequisites.objects), set(prerequisites.namespaces))
    inventory.add_rendered(objs, namespace)
    findings: list[Finding] = []
    for obj in objs:
        key = key_of(obj, namespace)
        if key.namespace and key.namespace not in inventory.namespaces:
            findings.append(Finding(CHECK, str(key), f"namespace {key.namespace!r} is neither rendered nor created by a documented step; "
                                    "create it in the install steps (kubectl create namespace / --create-namespace) or render into an existing one"))
        for ref in references_of(obj, namespace, inventory.namespaces):
            target = inventory.get(ref.target)
            if target is None:
                if not ref.optional:
                    findings.append(Finding(CHECK, str(key), f"{ref.source} names {ref.target}, which is neither rendered nor a prerequisite; "
                                            "render it, point the setting at an object that exists, or declare it as a prerequisite that the docs create"))
                continue
            missing = [k for k in ref.keys if target["keys"] is not None and k not in target["keys"]]
            if missing:
                findings.append(Finding(CHECK, str(key), f"{ref.source} reads key(s) {missing} of {ref.target}, which holds {sorted(target['keys'])}"))
            if ref.port is not None and target["ports"] is not None and ref.port not in target["ports"]:
                findings.append(Finding(CHECK, str(key), f"{ref.source} connects to port {ref.port} of {ref.target}, which serves {sorted(target['ports'])}"))
    findings += _service_findings(objs, namespace)
    return findings
