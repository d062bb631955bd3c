"""``functionfuse stack check``: the cluster-model checks on the umbrella chart, as a command."""

from __future__ import annotations

import os
from typing import Any, Sequence

from ...errors import ConfigurationError
from . import CHECKS, Finding, ObjectKey, check_objects, prerequisites, published_images, render_chart

__all__ = ["check_chart", "cmd_check"]


def _read_values(paths: Sequence[str]) -> list[dict]:
    import yaml

    docs = []
    for path in paths:
        try:
            with open(path) as f:
                docs.append(yaml.safe_load(f) or {})
        except OSError as exc:
            raise ConfigurationError(f"Cannot read values file {path!r}: {exc}") from exc
    return docs


def check_chart(
    chart: str,
    *,
    values: Sequence[str] = (),
    namespace: str = "kubeflow",
    release: str = "ff",
    image_registry: str | None = None,
    checks: Sequence[str] = CHECKS,
) -> tuple[list[Finding], list[str]]:
    """Render *chart* (``helm template``) with *values* and run *checks* on it.

    The cluster is modelled as the documented steps leave it (namespaces ray-system and
    kubeflow, the KubeRay and KFP manifests pinned in manifests/), plus the S3 Secret the
    values name in ``global.s3.existingSecret``, which the user creates.
    Returns (findings, assumptions: what was taken as created by the user).
    """
    docs = _read_values(values)
    registry = image_registry
    inventory = prerequisites(namespaces=("ray-system", "kubeflow", namespace))
    assumed = []
    for doc in docs:
        glob = doc.get("global") or {}
        registry = image_registry or ((glob.get("image") or {}).get("registry")) or registry
        s3 = glob.get("s3") or {}
        if s3.get("existingSecret"):
            keys = [s3.get("accessKeyKey", "accessKey"), s3.get("secretKeyKey", "secretKey")]
            key = ObjectKey("Secret", namespace, str(s3["existingSecret"]))
            inventory.add(key, keys=keys)
            assumed.append(f"{key} with keys {keys} (global.s3.existingSecret: you create it)")
    objs = render_chart(chart, release=release, namespace=namespace, values=values, build_dependencies=True)
    findings = check_objects(objs, namespace, published=published_images(registry), prerequisite=inventory, checks=checks)
    return findings, assumed


def cmd_check(args: Any, source: str) -> int:
    """Print every finding of the checks on the umbrella chart of *source* (or ``--chart``); 1 when there is any."""
    chart = args.chart or os.path.join(source, "charts", "functionfuse")
    if chart.startswith("oci://"):
        raise ConfigurationError(f"stack check renders a chart folder, not {chart!r}: helm pull it and pass the folder (--chart DIR).")
    namespace = args.namespace or ("functionfuse" if args.no_kfp else "kubeflow")
    findings, assumed = check_chart(
        chart, values=args.values or (), namespace=namespace, release=args.release or "ff", image_registry=args.image_registry
    )
    for line in assumed:
        print(f"assumed: {line}")
    for f in findings:
        print(f)
    print(f"{len(findings)} finding(s) in {chart} rendered into {namespace!r} ({', '.join(CHECKS)})")
    return 1 if findings else 0
