"""``functionfuse kfp compile|submit``: Kubeflow Pipelines from the command line.

    functionfuse kfp compile TARGET [-o FILE] [--workflow NAME] [--image IMAGE] [--storage SPEC] [--resume auto|plan]
                             [--cluster-settings FILE|NAMESPACE[/NAME] [--kube-context CTX]] [--no-fusion]
    functionfuse kfp submit  TARGET --host URL [--registry SERVER] [--username USER --password-stdin]
                             [--workflow NAME] [--baseimage IMAGE] [--project DIR] [--wheelhouse DIR]
                             [--storage SPEC] [--cluster-settings ...] [--wait]

TARGET is ``file.py:NAME`` or ``module:NAME``: a node, a list of nodes, a function
returning them, or a ``KFPWorkflow`` (whose settings, e.g. per-node resources, plugins,
the registry and its credentials, are kept, also under another ``--workflow`` name; the
options given here override them). The registry password comes from
``--password-stdin`` or ``$FUNCTIONFUSE_REGISTRY_PASSWORD``, the user from ``--username``
or ``$FUNCTIONFUSE_REGISTRY_USERNAME``. ``--cluster-settings`` applies the settings the
functionfuse-kfp chart publishes (``KFPWorkflow.set_cluster_settings``) before the other
options, which override them. ``compile`` prints how the nodes were put into container
steps (execution units: chains and groups share a step, at most 10 steps by default;
``--no-fusion``: one step per node). Only argparse is imported until a subcommand
runs; then :mod:`functionfuse.backends.addons.kfpback` (``pip install 'functionfuse[kfp]'``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any, Callable

__all__ = ["add_kfp_commands"]


def _workflow(args: argparse.Namespace, load: Callable[[str], Any], as_nodes: Callable[[Any], list],
              storage: Callable[[str | None], Any]) -> Any:
    from .backends.addons.kfpback import KFPWorkflow
    from .workflow import validate_name

    obj = load(args.target)
    if isinstance(obj, KFPWorkflow):
        wf = obj
        if args.workflow and args.workflow != wf.workflow_name:
            # the same settings under another name (the stored results are the new name's)
            wf = copy.copy(obj)
            wf.workflow_name = validate_name(args.workflow, "Workflow name")
    else:
        name = args.workflow or getattr(obj, "workflow_name", None) or args.target.rpartition(":")[2]
        wf = KFPWorkflow(*as_nodes(obj), workflow_name=name)
    if args.cluster_settings:  # before the options given here, which override them
        wf.set_cluster_settings(args.cluster_settings, context=args.kube_context)
    if args.storage:
        wf.set_storage(storage(args.storage))
    if args.no_fusion:
        wf.set_fusion(False)
    return wf


def cmd_compile(args: argparse.Namespace, load: Callable, as_nodes: Callable, storage: Callable) -> int:
    wf = _workflow(args, load, as_nodes, storage)
    if args.resume == "plan" and wf.storage is None:
        from .errors import ConfigurationError

        raise ConfigurationError("--resume plan decides from stored results: give --storage too.")
    out = args.output or f"{wf.workflow_name}.yaml"
    path = wf.compile(out, image=args.image, resume=args.resume)
    n = len(wf.graph)
    units = wf.last_units  # the execution units of the steps: which nodes share a step, and why
    steps = len(units.steps) if units is not None else n
    if args.json:
        listing = [[wf.graph.names[i] for i in u.indices] for u in units.steps] if units is not None else []
        print(json.dumps({"package": path, "workflow": wf.workflow_name, "nodes": n, "steps": steps,
                          "units": listing}))
    else:
        print(path)
        print(f"{n} node{'s' if n != 1 else ''} of workflow {wf.workflow_name!r} compiled into {steps} "
              f"step{'s' if steps != 1 else ''}", file=sys.stderr)
        if units is not None:
            print(units, file=sys.stderr)
    return 0


def cmd_submit(args: argparse.Namespace, load: Callable, as_nodes: Callable, storage: Callable) -> int:
    from .kit.cli import registry_password

    wf = _workflow(args, load, as_nodes, storage)
    wf.set_kfp_host(args.host)
    if args.username is None:
        args.username = os.environ.get("FUNCTIONFUSE_REGISTRY_USERNAME") or None
    password = registry_password(args)
    if not args.registry and not wf.registry:
        from .errors import ConfigurationError

        raise ConfigurationError(
            "kfp submit needs a registry the cluster pulls the step image from: --registry host[:port][/namespace] "
            "(or a KFPWorkflow target with registry_credentials={'server': ...})."
        )
    # the target's own user and password are kept for its registry host, never sent to another
    wf.set_registry(args.registry, username=args.username, password=password)
    if args.baseimage:
        wf.set_baseimage(args.baseimage)
    if args.project:
        wf.set_project(args.project)
    if args.wheelhouse:
        wf.set_wheelhouse(args.wheelhouse)
    result = wf.run(wait=args.wait, experiment_name=args.experiment)
    if args.wait:
        print(json.dumps(result, default=repr) if args.json else repr(result))
        return 0
    if args.json:
        print(json.dumps({"run_id": result.run_id, "url": result.url, "image": result.image}))
    else:
        print(f"run {result.run_id}: {result.url}")
    return 0


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-fusion", action="store_true", help="one container step per node (default: chains and "
                        "groups of nodes share a step, at most 10 steps; KFPWorkflow.set_fusion)")
    parser.add_argument("--cluster-settings", metavar="FILE|NAMESPACE[/NAME]",
                        help="the settings the functionfuse-kfp chart publishes (step storage and its Secret, service "
                        "account, image pull Secret, pipeline root, base image): a file holding the ConfigMap, or the "
                        "namespace to read it from with kubectl")
    parser.add_argument("--kube-context", help="kube context kubectl reads --cluster-settings with (default: current)")


def add_kfp_commands(sub: Any, load: Callable[[str], Any], as_nodes: Callable[[Any], list],
                     storage: Callable[[str | None], Any], storage_help: str) -> None:
    """Register ``kfp compile`` and ``kfp submit`` on the ``functionfuse`` parser."""
    from .kit.cli import add_auth_arguments

    kfp = sub.add_parser("kfp", help="compile a DAG to a Kubeflow Pipelines (v2) pipeline, or build, push and submit it")
    kfp_sub = kfp.add_subparsers(dest="kfp_command", required=True)
    target_help = "FILE.py:NAME or module:NAME: nodes, a function returning them, or a KFPWorkflow"

    comp = kfp_sub.add_parser("compile", help="write the pipeline YAML (offline: no Docker, no cluster)")
    comp.add_argument("target", help=target_help)
    comp.add_argument("-o", "--output", help="the pipeline file (default: WORKFLOW.yaml)")
    comp.add_argument("--workflow", help="workflow name (default: the workflow's, else NAME)")
    comp.add_argument("--image", help="step image reference (default: the one build_image() and push_image() give "
                      "for this project and DAG, computed here without Docker: REGISTRY/functionfuse-kfp-WORKFLOW:HASH "
                      "for a KFPWorkflow target with a registry, else functionfuse-kfp-WORKFLOW:HASH)")
    comp.add_argument("--storage", help="storage the steps save to and resume from: " + storage_help)
    comp.add_argument("--resume", choices=["auto", "plan"], default="auto",
                      help="auto: each step checks storage when it runs; plan: leave out what storage holds now")
    _settings_arguments(comp)
    comp.add_argument("--json", action="store_true", help="print JSON")
    comp.set_defaults(func=lambda a: cmd_compile(a, load, as_nodes, storage))

    sbm = kfp_sub.add_parser("submit", help="build and push the step image, compile, and submit to a KFP API")
    sbm.add_argument("target", help=target_help)
    sbm.add_argument("--host", required=True, help="the KFP API address, e.g. http://localhost:3000")
    sbm.add_argument("--registry", help="registry the cluster pulls from: host[:port][/namespace] (default: the "
                     "KFPWorkflow target's; its user and password are kept unless --username is given)")
    sbm.add_argument("--workflow", help="workflow name (default: the workflow's, else NAME)")
    sbm.add_argument("--baseimage", help="image the step image is built on (default: python)")
    sbm.add_argument("--project", help="project folder copied into the image (default: the current folder)")
    sbm.add_argument("--wheelhouse", help="install the image's Python packages from this folder (filled on first use)")
    sbm.add_argument("--storage", help="storage the steps save to: " + storage_help)
    sbm.add_argument("--experiment", help="KFP experiment name")
    sbm.add_argument("--wait", action="store_true", help="wait for the run and print the results (needs --storage)")
    _settings_arguments(sbm)
    sbm.add_argument("--json", action="store_true", help="print JSON")
    add_auth_arguments(sbm)
    sbm.set_defaults(func=lambda a: cmd_submit(a, load, as_nodes, storage))
