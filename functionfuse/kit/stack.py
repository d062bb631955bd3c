"""``functionfuse stack up|down|install|steps``: the functionfuse stack on a cluster.

The commands come from :mod:`functionfuse.kit.steps` (one list for the runner and the
docs); this module runs them, idempotently:

* ``up``: on a local kind cluster: a registry container (``registry:3``) published on
  ``127.0.0.1:<port>`` only, the kind cluster whose nodes pull ``localhost:<port>/...``
  from it, the functionfuse images built and pushed there, then the install steps.
  A registry container that exists but is stopped is started; one this command created
  with other settings (image, port) is replaced; one it did not create is left alone
  and reported.
* ``install``: the install steps on any cluster (``--context``, else the current one of
  ``KUBECONFIG``): the KubeRay operator, Kubeflow Pipelines (``--no-kfp`` leaves it out),
  the umbrella chart (from this checkout or ``--chart oci://...``) and KFP's launcher
  settings.
* ``steps``: print the install steps as shell, run nothing (``install --dry-run``).
* ``down``: delete the kind cluster and the registry container, nothing else.

Names come from :class:`~functionfuse.kit.steps.StackConfig` (environment variables
``FUNCTIONFUSE_KIND_CLUSTER``, ``FUNCTIONFUSE_KIND_REGISTRY``,
``FUNCTIONFUSE_KIND_REGISTRY_PORT``, ``FUNCTIONFUSE_KIND_NODE_IMAGE``), so two stacks can
live side by side. Commands run in a functionfuse source tree (``--source DIR``, default
this checkout), where ``manifests/`` and ``charts/`` are.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from typing import Any, Callable

from ..errors import ConfigurationError, StackError
from .steps import KIND_VERSION, NODE_IMAGE, REGISTRY_LABEL, Command, StackConfig, Step, all_steps, install_steps, render

__all__ = ["StackConfig", "StackError", "Stack", "find_source", "missing_tools", "TOOLS", "add_stack_command"]

TOOLS = ("docker", "kind", "kubectl", "helm")
_INSTALL = {
    "docker": "https://docs.docker.com/engine/install/",
    "kind": "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "kubectl": "https://kubernetes.io/docs/tasks/tools/",
    "helm": "https://helm.sh/docs/intro/install/ (or scripts/setup-helm.sh)",
}


def missing_tools(tools: tuple[str, ...] = TOOLS) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def find_source(start: str | None = None) -> str:
    """The functionfuse source tree holding ``charts/`` and ``manifests/``: *start* if
    given, else the checkout this package is imported from, else the current folder."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidates = [start] if start else [here, os.getcwd()]
    for root in candidates:
        if root and all(os.path.isdir(os.path.join(root, d)) for d in ("charts", "manifests")):
            return os.path.abspath(root)
    where = start or " or ".join(dict.fromkeys(c for c in candidates if c))
    raise ConfigurationError(
        f"No functionfuse source tree (with charts/ and manifests/) at {where}: run from a checkout of "
        "functionfuse or pass --source DIR."
    )


def _version(text: str) -> tuple[int, ...] | None:
    """``(0, 32, 0)`` from ``kind v0.32.0 go1.24 linux/amd64`` or ``v0.32.0``."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in m.groups()) if m else None


class Stack:
    """Runs the steps of :mod:`functionfuse.kit.steps`; with *dry_run*, prints them instead."""

    def __init__(
        self,
        source: str,
        config: StackConfig | None = None,
        *,
        dry_run: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.config = config or StackConfig()
        self.dry_run = dry_run
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.commands: list[list[str]] = []  # every command run, in order
        #: how ``functionfuse`` in a step is run: this Python's
        self.functionfuse = [sys.executable, "-m", "functionfuse"]

    # -- running commands ----------------------------------------------------------------
    def sh(self, *cmd: str, check: bool = True, capture: bool = False, stdin: str | None = None,
           exists_ok: bool = False) -> str:
        """Run *cmd* in the source tree; its output if *capture*. ``functionfuse`` is this Python's."""
        argv = [*self.functionfuse, *cmd[1:]] if cmd[0] == "functionfuse" else list(cmd)
        self.commands.append(list(cmd))
        self.echo("+ " + " ".join(cmd))
        feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        proc = subprocess.run(argv, cwd=self.source, check=False, text=True, stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE, **feed)
        err = (proc.stderr or "").strip()
        if err and not capture:
            print(err, file=sys.stderr)
        if proc.returncode != 0:
            if exists_ok and ("AlreadyExists" in err or "already exists" in err):
                return proc.stdout or ""
            if check:
                raise StackError(f"`{' '.join(cmd)}` failed with exit status {proc.returncode}" + (f": {err[-2000:]}" if err else ""))
        return proc.stdout if capture else ""

    def run(self, command: Command, nodes: list[str] | None = None) -> None:
        """Run one command of a step: per node, with its substitutions and standard input."""
        argv = list(command.argv)
        for i, sub in enumerate(command.substitutions):
            out = self.sh(*sub.argv, capture=True).strip()
            argv = [a.replace(f"{{{i}}}", out) for a in argv]
        targets: list[str | None] = list(nodes or []) if command.per_node else [None]
        for node in targets:
            cmd = [a.replace("{node}", node) for a in argv] if node else argv
            self.sh(*cmd, stdin=command.stdin, exists_ok=command.exists_ok)

    def run_step(self, step: Step) -> None:
        handler = getattr(self, f"_step_{step.name}", None)
        if handler is not None:
            handler(step)
            return
        for command in step.commands:
            self.run(command)

    # -- the kind steps that need more than running their commands ------------------------
    def registry_state(self) -> dict[str, Any] | None:
        """``docker inspect`` of the registry container, or None when there is none."""
        out = self.sh("docker", "inspect", "--type", "container", self.config.registry, capture=True, check=False)
        try:
            found = json.loads(out) if out.strip() else []
        except ValueError:
            found = []
        return found[0] if found else None

    def registry_differences(self, state: dict[str, Any]) -> list[str]:
        """How an existing registry container differs from what the config asks for."""
        c, diff = self.config, []
        image = (state.get("Config") or {}).get("Image")
        if image != c.registry_image:
            diff.append(f"image {image!r}, not {c.registry_image!r}")
        bindings = ((state.get("HostConfig") or {}).get("PortBindings") or {}).get("5000/tcp") or []
        published = sorted(f"{b.get('HostIp') or '0.0.0.0'}:{b.get('HostPort')}" for b in bindings)
        if published != [c.push_registry]:
            diff.append(f"port 5000 published on {', '.join(published) or 'nothing'}, not {c.push_registry}")
        return diff

    def registry_up(self) -> str:
        """A running registry container as the config describes: ``created``, ``started``,
        ``replaced`` or ``running``."""
        c = self.config
        run = next(s for s in all_steps(c) if s.name == "registry").commands[0]
        state = self.registry_state()
        if state is None:
            self.run(run)
            return "created"
        diff = self.registry_differences(state)
        if diff:
            if ((state.get("Config") or {}).get("Labels") or {}).get(REGISTRY_LABEL[0]) != REGISTRY_LABEL[1]:
                raise StackError(
                    f"A container named {c.registry!r} exists and was not made by `functionfuse stack up`: "
                    f"{'; '.join(diff)}. Remove it (docker rm -f {c.registry}) or choose another name "
                    "with FUNCTIONFUSE_KIND_REGISTRY (and a free port with FUNCTIONFUSE_KIND_REGISTRY_PORT)."
                )
            self.echo(f"registry container {c.registry!r} has {'; '.join(diff)}: replacing it")
            self.sh("docker", "rm", "-f", c.registry)
            self.run(run)
            return "replaced"
        if not (state.get("State") or {}).get("Running"):
            self.sh("docker", "start", c.registry)
            return "started"
        return "running"

    def _step_registry(self, step: Step) -> None:
        self.registry_up()

    def _step_cluster(self, step: Step) -> None:
        c = self.config
        create, *rest = step.commands
        if c.cluster not in self.sh("kind", "get", "clusters", capture=True).split():
            self.run(create)
        nodes = self.sh("kind", "get", "nodes", "--name", c.cluster, capture=True).split()
        for command in rest:
            if command.argv[:3] == ("docker", "network", "connect"):
                state = self.registry_state() or {}
                if "kind" in ((state.get("NetworkSettings") or {}).get("Networks") or {}):
                    continue
            self.run(command, nodes)

    # -- up, install, down ----------------------------------------------------------------
    def check_tools(self, tools: tuple[str, ...] = TOOLS) -> None:
        absent = missing_tools(tools)
        if absent:
            how = "; ".join(f"{t}: {_INSTALL[t]}" for t in absent)
            raise StackError(f"`functionfuse stack` needs {', '.join(absent)} on PATH. Install: {how}")

    def check_kind_version(self) -> str | None:
        """A warning (echoed, and returned) when the pinned node image is used with an older
        kind than the release it was built for: kind ties node images to its releases."""
        if self.config.node_image != NODE_IMAGE:
            return None
        out = self.sh("kind", "version", capture=True, check=False)
        found, want = _version(out), _version(KIND_VERSION)
        if found is None or want is None or found >= want:
            return None
        warning = (f"warning: kind {out.split()[1] if len(out.split()) > 1 else out.strip()!r} is older than "
                   f"{KIND_VERSION}, which {NODE_IMAGE.split('@')[0]} was built for: upgrade kind, or set "
                   "FUNCTIONFUSE_KIND_NODE_IMAGE='' for your kind's own node image")
        self.echo(warning)
        return warning

    def up(self) -> str:
        """The kind stack; with dry_run, the commands as shell text."""
        steps = all_steps(self.config)
        if self.dry_run:
            return render(steps, cluster=self.config.cluster)
        self.check_tools()
        self.check_kind_version()
        for step in steps:
            self.run_step(step)
        c = self.config.for_kind()
        return (f"functionfuse stack up: kind cluster {c.cluster} (context {c.context}), registry "
                f"{c.push_registry}, release {c.release} in namespace {c.namespace}")

    def install(self) -> str:
        """The install steps on the configured (or current) cluster; with dry_run, as shell text."""
        steps = install_steps(self.config)
        if self.dry_run:
            return render(steps)
        self.check_tools(("kubectl", "helm"))
        for step in steps:
            self.run_step(step)
        c = self.config
        return f"functionfuse installed: release {c.release} in namespace {c.namespace} (context {c.context or 'current'})"

    def down(self) -> str:
        c = self.config
        if self.dry_run:
            return f"kind delete cluster --name {c.cluster}\ndocker rm -f {c.registry}\n"
        if shutil.which("kind"):
            self.sh("kind", "delete", "cluster", "--name", c.cluster, check=False)
        if shutil.which("docker"):
            self.sh("docker", "rm", "-f", c.registry, check=False)
        return f"functionfuse stack down: cluster {c.cluster} and registry container {c.registry} removed"


# -- the command line --------------------------------------------------------------------------
def cmd_stack(args: Any) -> int:
    config = StackConfig()
    if args.context:
        config.context = args.context
    if args.no_kfp:
        config = replace(config, kfp=False, namespace=args.namespace or "functionfuse")
    if args.namespace:
        config.namespace = args.namespace
    if args.release:
        config.release = args.release
    if args.chart:
        config.chart, config.chart_version = args.chart, args.version
    if args.values:
        config.values = tuple(args.values)
    if args.image_registry:
        config.image_registry = args.image_registry
    what = args.stack_command
    if what == "check":  # offline: the cluster-model checks on the rendered umbrella chart
        from .clustermodel.command import cmd_check

        return cmd_check(args, find_source(args.source))
    stack = Stack(find_source(args.source), config, dry_run=args.dry_run or what == "steps")
    out = {"up": stack.up, "down": stack.down, "install": stack.install, "steps": stack.install}[what]()
    print(out, end="" if out.endswith("\n") else "\n")
    return 0


def add_stack_command(sub: Any) -> None:
    """Add ``stack`` to the ``functionfuse`` command's subparsers."""
    p = sub.add_parser(
        "stack", help="install the functionfuse stack: on a local kind cluster (up/down) or any cluster (install/steps)",
        description="up: registry, kind cluster, images, then the install steps; install: the KubeRay operator, "
                    "Kubeflow Pipelines, the umbrella chart and KFP's launcher settings on the current (or --context) "
                    "cluster; steps: print the install steps; down: delete the kind cluster and the registry container; "
                    "check: render the umbrella chart (-f values) and run the offline cluster-model checks on it.",
    )
    p.add_argument("stack_command", choices=["up", "down", "install", "steps", "check"])
    p.add_argument("--source", help="functionfuse source tree with charts/ and manifests/ (default: this checkout)")
    p.add_argument("--dry-run", action="store_true", help="print the commands as shell without running them")
    p.add_argument("--context", help="kube context (install/steps; default: the current one; up: kind-<cluster>)")
    p.add_argument("--no-kfp", action="store_true", help="leave Kubeflow Pipelines out (namespace: functionfuse)")
    p.add_argument("--namespace", help="namespace of the release (default: kubeflow, or functionfuse with --no-kfp)")
    p.add_argument("--release", help="Helm release name (default: ff)")
    p.add_argument("--chart", help="umbrella chart: a folder or oci://REGISTRY/charts/functionfuse (default: this checkout's)")
    p.add_argument("--version", help="chart version for an oci:// chart (default: this functionfuse's version)")
    p.add_argument("-f", "--values", action="append", metavar="FILE", help="values file for the chart (repeatable)")
    p.add_argument("--image-registry", metavar="HOST[:PORT]", help="global image registry of the chart's images")
    p.set_defaults(func=cmd_stack)
