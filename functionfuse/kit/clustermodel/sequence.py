"""The install sequence against the cluster model: does each documented command find what it needs?

:func:`check_sequence` plays the commands of :func:`functionfuse.kit.steps.install_steps`
(the one list the runner runs and the docs show) against a model of a fresh cluster:

- ``kubectl create namespace X`` creates X;
- ``kubectl apply -k manifests/...`` creates the objects the upstream facts list for that
  kustomization; each namespaced one needs its namespace already (KubeRay's kustomization
  has no Namespace object: without the step before it the operator is refused);
- ``kubectl wait --for condition=established crd/...`` needs those CRDs applied;
- ``kubectl rollout status``/``kubectl wait`` on a named object need that object;
- ``helm upgrade --install`` renders the chart (the same ``-n``/``--set``/``-f``) and needs
  its namespace (or ``--create-namespace``), the CRD of each custom resource established,
  and no rendered object that exists already;
- ``kubectl patch`` needs its object, and a ``kubectl get -l SELECTOR`` inside it an
  object the selector matches.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from .objects import CLUSTER_SCOPED, Finding, ObjectKey, key_of
from .upstream import upstream_sources

__all__ = ["check_sequence"]

CHECK = "sequence"
#: the CRD each custom resource kind needs (the kinds the charts render)
CRD_OF = {"RayCluster": "rayclusters.ray.io", "RayJob": "rayjobs.ray.io", "RayService": "rayservices.ray.io"}
#: kubectl resource names used in commands, by kind
_RESOURCES = {"deployment": "Deployment", "raycluster": "RayCluster", "rayjob": "RayJob", "configmap": "ConfigMap",
              "crd": "CustomResourceDefinition", "secret": "Secret", "service": "Service"}


def _option(argv: Sequence[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _options(argv: Sequence[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name and i + 1 < len(argv)]


#: helm options that take a value (the rest of the dashed arguments are flags)
_HELM_VALUED = {"-n", "--namespace", "--set", "--set-string", "-f", "--values", "--timeout", "--version", "--kube-context",
                "--kubeconfig", "--repo"}


#: kubectl options that take a value
_KUBECTL_VALUED = {"-n", "--namespace", "--context", "--kubeconfig", "-l", "--selector", "-o", "--output", "-p", "--patch",
                   "--type", "-k", "-f", "--for", "--timeout"}


def _positionals(args: Sequence[str], valued: set[str] = _HELM_VALUED) -> list[str]:
    """The arguments of *args* that are neither options nor the values of *valued* options."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in valued:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def _matches(selector: str, labels: Mapping[str, str]) -> bool:
    for term in filter(None, selector.split(",")):
        if "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
        elif term not in labels:
            return False
    return True


class _Cluster:
    def __init__(self) -> None:
        self.namespaces: set[str] = {"default", "kube-system", "kube-public"}
        self.objects: dict[ObjectKey, Mapping[str, Any]] = {}
        self.established: set[str] = set()

    def has(self, key: ObjectKey) -> bool:
        return key in self.objects

    def add(self, key: ObjectKey, obj: Mapping[str, Any]) -> None:
        self.objects[key] = obj
        if key.kind == "Namespace":
            self.namespaces.add(key.name)


def check_sequence(steps: Iterable[Any], render: Callable[[str, str, Sequence[str], Sequence[str]], list[dict]]) -> list[Finding]:
    """Findings for each command of *steps* (:class:`functionfuse.kit.steps.Step`) that a fresh
    cluster would refuse or that would find nothing.

    :param render: ``render(chart, namespace, values, sets)`` gives the objects ``helm template``
        renders for a ``helm upgrade --install`` of the sequence.
    """
    sources = {os.path.dirname(s.manifest): s for s in upstream_sources()}
    cluster = _Cluster()
    findings: list[Finding] = []
    for step in steps:
        for command in step.commands:
            where = f"step {step.name!r}: {' '.join(command.argv)}"
            findings += _play(cluster, list(command.argv), where, sources, render)
            for sub in command.substitutions:
                findings += _play(cluster, list(sub.argv), f"{where} (inner {' '.join(sub.argv)})", sources, render)
    return findings


def _play(cluster: _Cluster, argv: list[str], where: str, sources: Mapping[str, Any], render: Callable[..., list[dict]]) -> list[Finding]:
    out: list[Finding] = []

    def need(key: ObjectKey, why: str) -> None:
        if not cluster.has(key):
            out.append(Finding(CHECK, str(key), f"{where}: {why}, but no earlier step creates it"))

    if argv[:1] == ["kubectl"]:
        words = _positionals(argv[1:], _KUBECTL_VALUED)
        verb = words[0] if words else ""
        ns = _option(argv, "-n", "--namespace")
        if words[:2] == ["create", "namespace"] and len(words) > 2:
            cluster.namespaces.add(words[2])
        elif verb == "apply":
            path = _option(argv, "-k")
            source = sources.get(path.rstrip("/")) if path else None
            if source is None:
                out.append(Finding(CHECK, str(path), f"{where}: the cluster model has no facts for {path!r} (upstream_objects.json)"))
                return out
            created = {o["name"] for o in source.objects if o["kind"] == "Namespace"}
            for o in source.objects:
                key = ObjectKey(o["kind"], o.get("namespace", ""), o["name"])
                if key.namespace and key.namespace not in cluster.namespaces | created:
                    out.append(Finding(CHECK, str(key), f"{where}: namespace {key.namespace!r} does not exist yet, so the API server "
                                       "refuses this object; create the namespace in an earlier step"))
                cluster.add(key, o)
        elif verb == "wait" or words[:2] == ["rollout", "status"]:
            for arg in words[1:]:
                resource, _, name = arg.partition("/")
                if not name or resource.lower() not in _RESOURCES:
                    continue
                k = _RESOURCES[resource.lower()]
                key = ObjectKey(k, "" if k in CLUSTER_SCOPED else (ns or "default"), name)
                need(key, f"waits for {key}")
                if k == "CustomResourceDefinition" and any("established" in a for a in argv):
                    cluster.established.add(name)
            if ns and ns not in cluster.namespaces:
                out.append(Finding(CHECK, f"Namespace/{ns}", f"{where}: waits in namespace {ns!r}, which no earlier step creates"))
        elif verb in ("patch", "get") and len(words) > 1:
            kind = _RESOURCES.get(words[1].lower())
            selector = _option(argv, "-l", "--selector")
            if kind and selector:
                hits = [k for k, o in cluster.objects.items() if k.kind == kind and k.namespace == (ns or "default")
                        and _matches(selector, ((o.get("metadata") or {}).get("labels") or {}))]
                if not hits:
                    out.append(Finding(CHECK, f"{kind}/{ns}", f"{where}: no {kind} in {ns!r} matches -l {selector!r}"))
            elif kind and verb == "patch" and len(words) > 2:
                need(ObjectKey(kind, ns or "default", words[2]), "patches it")
    elif argv[:1] == ["helm"] and len(argv) > 4 and argv[1] in ("upgrade", "install"):
        positional = _positionals(argv[2:])
        chart = positional[1] if len(positional) > 1 else positional[-1]
        ns = _option(argv, "-n", "--namespace") or "default"
        if "--create-namespace" in argv:
            cluster.namespaces.add(ns)
        elif ns not in cluster.namespaces:
            out.append(Finding(CHECK, f"Namespace/{ns}", f"{where}: installs into namespace {ns!r}, which no earlier step creates "
                               "(add --create-namespace or a kubectl create namespace step)"))
        objs = render(chart, ns, _options(argv, "-f") + _options(argv, "--values"), _options(argv, "--set"))
        for obj in objs:
            key = key_of(obj, ns)
            crd = CRD_OF.get(key.kind)
            if crd and crd not in cluster.established:
                out.append(Finding(CHECK, str(key), f"{where}: the CRD {crd} is not established by an earlier step "
                                   "(kubectl wait --for condition=established), so the install fails on this object"))
            if key.namespace and key.namespace not in cluster.namespaces:
                out.append(Finding(CHECK, str(key), f"{where}: namespace {key.namespace!r} does not exist"))
            if cluster.has(key):
                out.append(Finding(CHECK, str(key), f"{where}: an earlier step created this object; Helm refuses to adopt it"))
            cluster.add(key, obj)
    return out
