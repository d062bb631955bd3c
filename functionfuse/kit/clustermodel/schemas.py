"""Check 4: rendered objects against the schemas of the pinned upstream versions.

- RayCluster and RayJob: KubeRay's own CRD ``openAPIV3Schema`` (data/ray.io_*.v1.json, read
  from the tag the facts name). The API server prunes fields a structural schema does not
  declare, so a misspelled field is silently dropped; here it is an error: every object
  schema that declares ``properties`` and neither ``additionalProperties`` nor
  ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``. CEL rules
  (``x-kubernetes-validations``) are not evaluated.
- KFP's launcher configuration (a ConfigMap with ``defaultPipelineRoot`` / ``providers``):
  data/kfp-launcher.schema.json, derived from KFP's Go types (see its ``$comment``).
- Every core object, and every pod template inside a KubeRay resource as a core
  PodTemplate: the Kubernetes OpenAPI schemas of kubernetes-validate, strict.
"""

from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from typing import Any, Mapping, Sequence

from ...errors import missing_dependency
from .objects import Finding, key_of
from .upstream import DATA, upstream_sources

__all__ = ["K8S_VERSION", "CRD_SCHEMAS", "crd_schema", "launcher_config", "check_schemas"]

K8S_VERSION = "1.31.0"
CRD_SCHEMAS = {"RayCluster": "ray.io_rayclusters.v1.json", "RayJob": "ray.io_rayjobs.v1.json"}
CHECK = "schemas"
LAUNCHER_KEYS = ("defaultPipelineRoot", "providers")


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError as exc:  # pragma: no cover - a kit requirement
        raise missing_dependency("jsonschema", "kit", exc) from exc
    return jsonschema


def _close(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _close(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
            and not out.get("x-kubernetes-embedded-resource")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close(v) for v in schema]
    return schema


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> tuple[dict, dict]:
    """(source facts, closed openAPIV3Schema) of the vendored CRD of *kind*."""
    with open(os.path.join(DATA, CRD_SCHEMAS[kind])) as f:
        doc = json.load(f)
    return doc["source"], _close(doc["openAPIV3Schema"])


@lru_cache(maxsize=None)
def _validator(kind: str) -> Any:
    js = _jsonschema()
    if kind == "kfp-launcher":
        with open(os.path.join(DATA, "kfp-launcher.schema.json")) as f:
            return js.Draft7Validator(json.load(f))
    return js.Draft4Validator(crd_schema(kind)[1])


def _kfp_tag() -> str:
    return next((s.tag for s in upstream_sources() if s.name == "kfp"), "?")


def _errors(kind: str, instance: Any, limit: int = 5) -> list[str]:
    errors = sorted(_validator(kind).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message[:300]}" for e in errors[:limit]]


def launcher_config(obj: Mapping[str, Any]) -> dict | None:
    """The KFP launcher configuration a ConfigMap holds (``providers`` parsed), or None when it holds none."""
    data = obj.get("data") or {}
    if obj.get("kind") != "ConfigMap" or not any(k in data for k in LAUNCHER_KEYS):
        return None
    import yaml

    config = dict(data)
    if isinstance(config.get("providers"), str):
        try:
            config["providers"] = yaml.safe_load(config["providers"]) or {}
        except yaml.YAMLError as exc:
            config["providers"] = f"<not YAML: {exc}>"
    return config


def _core(obj: Mapping[str, Any], version: str) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError as exc:
        raise missing_dependency("kubernetes_validate", "kit", exc) from exc
    try:
        kubernetes_validate.validate(copy.deepcopy(dict(obj)), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)[:500]]
    except kubernetes_validate.SchemaNotFoundError:
        return []  # a custom resource of another operator: no schema to hold it to
    return []


def check_schemas(objs: Sequence[Mapping[str, Any]], namespace: str, k8s_version: str = K8S_VERSION) -> list[Finding]:
    """Findings for objects the pinned upstream schemas reject (see the module docstring)."""
    findings = []
    for obj in objs:
        key = key_of(obj, namespace)
        kind = obj.get("kind")
        if kind in CRD_SCHEMAS:
            source = crd_schema(str(kind))[0]
            for msg in _errors(str(kind), obj):
                findings.append(Finding(CHECK, str(key), f"KubeRay {source['tag']} {source['path']} rejects {msg}"))
            spec = obj.get("spec") or {}
            cluster = spec.get("rayClusterSpec") if kind == "RayJob" else spec
            templates = []
            if cluster:
                templates.append(("head", (cluster.get("headGroupSpec") or {}).get("template")))
                templates += [(str(g.get("groupName")), g.get("template")) for g in cluster.get("workerGroupSpecs") or []]
            if kind == "RayJob" and spec.get("submitterPodTemplate"):
                templates.append(("submitter", spec["submitterPodTemplate"]))
            for where, template in templates:
                if template:
                    pt = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{key.name}-{where}"}, "template": template}
                    findings += [Finding(CHECK, str(key), f"{where} pod template: {m}") for m in _core(pt, k8s_version)]
            continue
        config = launcher_config(obj)
        if config is not None:
            for msg in _errors("kfp-launcher", config):
                findings.append(Finding(CHECK, str(key), f"the KFP launcher config schema (KFP {_kfp_tag()}, data/kfp-launcher.schema.json) rejects {msg}"))
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):
            continue  # a custom resource of another operator: no schema to hold it to
        findings += [Finding(CHECK, str(key), f"Kubernetes {k8s_version}: {m}") for m in _core(obj, k8s_version)]
    return findings
