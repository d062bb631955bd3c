"""Check 2 and the facts it rests on: the objects the pinned KubeRay and KFP manifests create.

The facts (data/upstream_objects.json) say for each source the repository, tag, commit,
which manifest of ours applies it and how the list was read (a ``kubectl kustomize`` of
the upstream tree at that tag). A rendered object with the kind, namespace and name of one
of them is refused by Helm ("exists and cannot be imported into the current release")
or, worse, overwrites what the other installer owns.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

from .objects import Finding, ObjectKey, key_of
from .references import Inventory

__all__ = ["DATA", "UpstreamSource", "upstream_sources", "objects_of", "pinned_refs", "prerequisites", "check_collisions"]

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CHECK = "collisions"


@dataclass(frozen=True)
class UpstreamSource:
    """One upstream manifest set: what of ours applies it, at which tag, and its objects."""

    name: str
    manifest: str
    repository: str
    tag: str
    how: str
    objects: tuple[Mapping[str, Any], ...]

    def keys(self) -> list[ObjectKey]:
        return [ObjectKey(o["kind"], o.get("namespace", ""), o["name"]) for o in self.objects]


def objects_of(docs: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The facts entries of a ``kubectl kustomize`` output (parsed YAML documents): kind,
    namespace, name, and Service ports or Secret/ConfigMap keys, sorted as the facts file is."""
    found = []
    for d in docs:
        if not d:
            continue
        meta = d.get("metadata") or {}
        o: dict[str, Any] = {"apiVersion": d["apiVersion"], "kind": d["kind"], "name": meta["name"]}
        if meta.get("namespace"):
            o["namespace"] = meta["namespace"]
        if d["kind"] == "Service":
            o["ports"] = sorted(int(p["port"]) for p in (d.get("spec") or {}).get("ports") or [])
        if d["kind"] in ("Secret", "ConfigMap"):
            o["keys"] = sorted(set(d.get("data") or {}) | set(d.get("stringData") or {}))
        found.append(o)
    return sorted(found, key=lambda o: (o["kind"], o.get("namespace", ""), o["name"]))


@lru_cache(maxsize=None)
def upstream_sources() -> tuple[UpstreamSource, ...]:
    with open(os.path.join(DATA, "upstream_objects.json")) as f:
        facts = json.load(f)
    return tuple(
        UpstreamSource(s["name"], s["manifest"], s["repository"], s["tag"], s["how"], tuple(s["objects"])) for s in facts["sources"]
    )


def pinned_refs(project: str) -> dict[str, str]:
    """``{manifest path: ref}`` of every remote resource pinned in *project*'s manifests the facts cover,
    to compare with the facts' tags (a new pin needs new facts)."""
    found = {}
    for source in upstream_sources():
        path = os.path.join(project, source.manifest)
        with open(path) as f:
            refs = re.findall(r"\?ref=([^\s&]+)", f.read())
        found[source.manifest] = ",".join(sorted(set(refs)))
    return found


def prerequisites(namespaces: Sequence[str] = ("ray-system", "kubeflow"), sources: Sequence[str] | None = None) -> Inventory:
    """What exists before a chart is installed when the documented steps ran: the
    *namespaces* they create and the objects of the upstream *sources* (all by default)."""
    inv = Inventory()
    for ns in namespaces:
        inv.add(ObjectKey("Namespace", "", ns))
    for source in upstream_sources():
        if sources is not None and source.name not in sources:
            continue
        for o in source.objects:
            inv.add(ObjectKey(o["kind"], o.get("namespace", ""), o["name"]), ports=o.get("ports"), keys=o.get("keys"))
    return inv


def check_collisions(objs: Sequence[Mapping[str, Any]], namespace: str) -> list[Finding]:
    """A finding for each object in *objs* (rendered into *namespace*) that an upstream manifest
    also creates, or that the render holds twice."""
    owned: dict[ObjectKey, UpstreamSource] = {}
    for source in upstream_sources():
        for key in source.keys():
            owned[key] = source
    findings = []
    seen: set[ObjectKey] = set()
    for obj in objs:
        key = key_of(obj, namespace)
        if key in seen:
            findings.append(Finding(CHECK, str(key), "rendered twice (two parts give objects the same name): Helm refuses the release"))
        seen.add(key)
        owner = owned.get(key)
        if owner is not None:
            findings.append(Finding(CHECK, str(key), f"{owner.repository} {owner.tag} creates this object too ({owner.manifest}); "
                                    "Helm refuses to take it over: give it another name, or change the upstream object in the install steps instead"))
    return findings
