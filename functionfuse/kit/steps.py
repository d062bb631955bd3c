"""The install sequence of the functionfuse stack, as data: one source for the runner and the docs.

:func:`install_steps` gives, in order, what a cluster needs (the KubeRay operator, Kubeflow
Pipelines if wanted, the umbrella chart, KFP's launcher settings); :func:`kind_steps` what a
local kind cluster needs before that (a registry, the cluster, the images). Each
:class:`Step` holds plain :class:`Command` s; :func:`render` writes them as the shell text the
docs show (``functionfuse stack steps``, ``functionfuse stack up --dry-run``), and
:class:`functionfuse.kit.stack.Stack` runs the same commands. A command block in the docs
marked ``<!-- stack-steps: NAME -->`` must equal ``render(doc_steps(NAME))``
(tests/test_stack.py), so the docs and the runner cannot drift apart.

Why the order (each a refusal seen on a fresh cluster):

* ``ray-system`` is created before KubeRay's kustomization, which has no Namespace object;
* the KubeRay CRDs are ``Established`` before anything creates a RayCluster;
* KFP's cluster-scoped part (CRDs, the ``kubeflow`` namespace) before the rest of KFP;
* the umbrella is installed with ``--create-namespace`` (KFP, which creates ``kubeflow``,
  is optional);
* KFP's own ``kfp-launcher`` ConfigMap is patched after both KFP and the chart are up,
  with the pipeline root and ``providers`` block the chart renders (the chart never
  creates ``kfp-launcher``: KFP owns it).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field, replace

from .._version import __version__

__all__ = [
    "KUBERAY_VERSION",
    "KFP_VERSION",
    "KIND_VERSION",
    "NODE_IMAGE",
    "REGISTRY_IMAGE",
    "REGISTRY_LABEL",
    "LAUNCHER_LABEL",
    "Command",
    "Step",
    "StackConfig",
    "install_steps",
    "kind_steps",
    "all_steps",
    "render",
    "doc_steps",
    "DOC_BLOCKS",
    "doc_blocks",
    "stale_doc_blocks",
    "write_doc_blocks",
    "hosts_toml",
    "registry_hosting",
]

#: KubeRay release of manifests/kuberay (operator and CRDs; manifests/README.md says why)
KUBERAY_VERSION = "1.7.0"
#: Kubeflow Pipelines release of manifests/kfp (the SDK's version: KFP documents matched versions only)
KFP_VERSION = "2.17.0"
#: kind release the node image below was published with (manifests/README.md says why)
KIND_VERSION = "v0.32.0"
#: kind v0.32.0's default node image (pkg/apis/config/defaults/image.go at tag v0.32.0)
NODE_IMAGE = "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
#: the registry of kind's local-registry recipe since kind commit e2d7ad9f (2026-05-11)
REGISTRY_IMAGE = "registry:3"
#: the label of functionfuse-kfp's launcher settings ConfigMap (charts/functionfuse-kfp)
LAUNCHER_LABEL = "functionfuse.io/kfp-launcher"
#: the label of a registry container made by these steps (``stack up`` replaces only such a one)
REGISTRY_LABEL = ("io.functionfuse.stack", "registry")

_env = os.environ.get


@dataclass(frozen=True)
class Command:
    """One command of a step.

    :param argv: the program and its arguments; ``"{node}"`` stands for a kind node's name
        when *per_node*; ``"{0}"``, ``"{1}"``... for the output of *substitutions*.
    :param stdin: text fed to the command (a here-document in the docs).
    :param per_node: run once per node of the kind cluster.
    :param exists_ok: an ``AlreadyExists`` refusal counts as done (re-runs are idempotent).
    :param substitutions: commands whose output replaces ``"{i}"`` inside an argument
        (``$(...)`` in the docs).
    """

    argv: tuple[str, ...]
    stdin: str | None = None
    per_node: bool = False
    exists_ok: bool = False
    substitutions: tuple["Command", ...] = ()

    def words(self) -> list[str]:
        """The command as shell words (placeholders written as ``"$node"`` and ``$(...)``)."""
        words = []
        for arg in self.argv:
            if self.per_node and "{node}" in arg:
                words.append(_dq(arg).replace("{node}", "$node"))
            elif self.substitutions and any(f"{{{i}}}" in arg for i in range(len(self.substitutions))):
                text = _dq(arg)
                for i, sub in enumerate(self.substitutions):
                    text = text.replace(f"{{{i}}}", f"$({sub.shell()})")
                words.append(text)
            else:
                words.append(shlex.quote(arg))
        return words

    def shell(self) -> str:
        """The command as one line of POSIX shell."""
        return " ".join(self.words())


def _dq(arg: str) -> str:
    """*arg* in double quotes, shell-escaped (placeholders in braces left as they are)."""
    return '"' + "".join("\\" + c if c in '"\\$`' else c for c in arg) + '"'


@dataclass(frozen=True)
class Step:
    """A titled group of commands; *name* is stable (the runner and the tests refer to it)."""

    name: str
    title: str
    commands: tuple[Command, ...]


@dataclass
class StackConfig:
    """What the stack is made of and where it goes; defaults from the environment.

    :param cluster: kind cluster name (``FUNCTIONFUSE_KIND_CLUSTER``).
    :param registry: name of the registry container (``FUNCTIONFUSE_KIND_REGISTRY``).
    :param registry_port: its port on the host's 127.0.0.1 (``FUNCTIONFUSE_KIND_REGISTRY_PORT``);
        images are pushed to ``127.0.0.1:<port>`` and pulled in the cluster as
        ``localhost:<port>/...``, which the chart values get as the global image registry.
    :param registry_network: Docker network of the registry container (``bridge``, as kind's recipe).
    :param node_image: kind node image (``FUNCTIONFUSE_KIND_NODE_IMAGE``; empty: kind's default).
    :param context: kube context for kubectl and helm (None: the current one; ``up`` uses
        ``kind-<cluster>``).
    :param namespace: namespace of the umbrella release (KFP's, ``kubeflow``, when KFP is on).
    :param release: Helm release name.
    :param kfp: install Kubeflow Pipelines and patch its launcher settings.
    :param chart: the umbrella chart: a folder of this checkout or an ``oci://`` reference.
    :param chart_version: ``--version`` for an ``oci://`` chart (default: this package's version).
    :param values: ``-f`` values files for the chart.
    :param image_registry: global image registry of the chart (None: the chart's default,
        the registry the release publishes to).
    """

    cluster: str = field(default_factory=lambda: _env("FUNCTIONFUSE_KIND_CLUSTER", "functionfuse"))
    registry: str = field(default_factory=lambda: _env("FUNCTIONFUSE_KIND_REGISTRY", "kind-registry"))
    registry_port: int = field(default_factory=lambda: int(_env("FUNCTIONFUSE_KIND_REGISTRY_PORT", "5001")))
    registry_network: str = field(default_factory=lambda: _env("FUNCTIONFUSE_KIND_REGISTRY_NETWORK", "bridge"))
    registry_image: str = REGISTRY_IMAGE
    node_image: str = field(default_factory=lambda: _env("FUNCTIONFUSE_KIND_NODE_IMAGE", NODE_IMAGE))
    context: str | None = None
    namespace: str = "kubeflow"
    release: str = "ff"
    kfp: bool = True
    chart: str = "charts/functionfuse"
    chart_version: str | None = None
    values: tuple[str, ...] = ()
    image_registry: str | None = None

    @property
    def kind_context(self) -> str:
        return f"kind-{self.cluster}"

    @property
    def push_registry(self) -> str:
        """Where the host pushes images: the registry container's published port."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def pull_registry(self) -> str:
        """What the kind nodes pull from: ``localhost:<port>``, mapped by hosts.toml to the container."""
        return f"localhost:{self.registry_port}"

    @property
    def ray_cluster(self) -> str:
        return f"{self.release}-functionfuse-ray"

    @property
    def launcher_selector(self) -> str:
        """Label selector of the functionfuse-kfp ConfigMap holding what KFP's ``kfp-launcher``
        needs (found by label, so ``fullnameOverride`` cannot break the step)."""
        return f"{LAUNCHER_LABEL},app.kubernetes.io/instance={self.release}"

    def for_kind(self) -> "StackConfig":
        """This configuration on its kind cluster: kind context, kind values, local registry."""
        values = self.values or ("charts/functionfuse/ci/kind-values.yaml",)
        return replace(self, context=self.context or self.kind_context, values=values,
                       image_registry=self.image_registry or self.pull_registry)


def _kubectl(c: StackConfig, *args: str, **kw: object) -> Command:
    ctx = ("--context", c.context) if c.context else ()
    return Command(("kubectl", *ctx, *args), **kw)  # type: ignore[arg-type]


def hosts_toml(c: StackConfig) -> str:
    """containerd's hosts.toml on each kind node: ``localhost:<port>`` is the registry container."""
    return f'[host."http://{c.registry}:5000"]\n'


def registry_hosting(c: StackConfig) -> str:
    """The KEP-1755 ConfigMap that tells tools where the cluster's local registry is."""
    return (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: local-registry-hosting\n  namespace: kube-public\n"
        "data:\n  localRegistryHosting.v1: |\n"
        f'    host: "{c.pull_registry}"\n'
        f'    hostFromContainerRuntime: "{c.registry}:5000"\n'
        f'    hostFromClusterNetwork: "{c.registry}:5000"\n'
        '    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"\n'
    )


def kind_steps(c: StackConfig) -> list[Step]:
    """A kind cluster pulling from a local registry, and the images pushed there."""
    certs = f"/etc/containerd/certs.d/{c.pull_registry}"
    create = ["kind", "create", "cluster", "--name", c.cluster, "--config", "manifests/kind/cluster.yaml"]
    if c.node_image:
        create += ["--image", c.node_image]
    return [
        Step("registry", f"a registry container, published on {c.push_registry} only", (
            Command(("docker", "run", "-d", "--restart=always", "-p", f"{c.push_registry}:5000",
                     "--network", c.registry_network, "--name", c.registry,
                     "--label", "=".join(REGISTRY_LABEL), c.registry_image)),
        )),
        Step("cluster", f"the kind cluster {c.cluster}, its nodes pulling {c.pull_registry}/... from {c.registry}", (
            Command(tuple(create)),
            Command(("docker", "exec", "{node}", "mkdir", "-p", certs), per_node=True),
            Command(("docker", "exec", "-i", "{node}", "cp", "/dev/stdin", f"{certs}/hosts.toml"),
                    stdin=hosts_toml(c), per_node=True),
            Command(("docker", "network", "connect", "kind", c.registry)),
            _kubectl(c, "apply", "-f", "-", stdin=registry_hosting(c)),
        )),
        Step("images", f"the functionfuse images, built here and pushed to {c.push_registry}", (
            Command(("functionfuse", "image", "build", "--quiet", "--push", c.push_registry)),
        )),
    ]


def install_steps(c: StackConfig) -> list[Step]:
    """The operators, the umbrella chart and KFP's launcher settings, on the cluster of *c*."""
    ns, helm_ctx = c.namespace, (("--kube-context", c.context) if c.context else ())
    steps = [Step("kuberay", f"the KubeRay operator {KUBERAY_VERSION} and its CRDs (manifests/kuberay)", (
        _kubectl(c, "create", "namespace", "ray-system", exists_ok=True),
        _kubectl(c, "apply", "--server-side", "-k", "manifests/kuberay"),
        _kubectl(c, "wait", "--for", "condition=established", "--timeout=120s",
                 "crd/rayclusters.ray.io", "crd/rayjobs.ray.io"),
        _kubectl(c, "rollout", "status", "deployment/kuberay-operator", "-n", "ray-system", "--timeout=300s"),
    ))]
    if c.kfp:
        steps.append(Step("kfp", f"Kubeflow Pipelines {KFP_VERSION}, standalone (manifests/kfp; it creates the kubeflow namespace)", (
            _kubectl(c, "apply", "-k", "manifests/kfp/cluster-scoped"),
            _kubectl(c, "wait", "--for", "condition=established", "--timeout=120s", "crd/applications.app.k8s.io"),
            _kubectl(c, "apply", "-k", "manifests/kfp"),
            _kubectl(c, "wait", "-n", "kubeflow", "--for=condition=Available", "deployment", "--all", "--timeout=1200s"),
        )))
    chart, commands = c.chart, []
    version: tuple[str, ...]
    if chart.startswith("oci://"):
        version = ("--version", c.chart_version or __version__)
    else:
        version = ()
        commands.append(Command(("helm", "dependency", "build", chart)))
    helm = ["helm", *helm_ctx, "upgrade", "--install", c.release, chart, *version, "-n", ns, "--create-namespace"]
    for v in c.values:
        helm += ["-f", v]
    if c.image_registry:
        helm += ["--set", f"global.image.registry={c.image_registry}"]
    if not c.kfp:
        helm += ["--set", "functionfuse-kfp.enabled=false"]
    helm += ["--wait", "--timeout", "15m"]
    commands.append(Command(tuple(helm)))
    commands.append(_kubectl(c, "wait", "-n", ns, f"raycluster/{c.ray_cluster}",
                             "--for=jsonpath={.status.state}=ready", "--timeout=900s"))
    steps.append(Step("chart", f"the functionfuse umbrella chart, release {c.release} in {ns}", tuple(commands)))
    if c.kfp:
        read = _kubectl(c, "get", "configmap", "-n", ns, "-l", c.launcher_selector, "-o", "jsonpath={.items[0].data}")
        steps.append(Step("launcher", "KFP's kfp-launcher ConfigMap: functionfuse's pipeline root and S3 providers", (
            _kubectl(c, "patch", "configmap", "kfp-launcher", "-n", ns, "--type", "merge",
                     "-p", '{"data": {0}}', substitutions=(read,)),
        )))
    return steps


def all_steps(c: StackConfig) -> list[Step]:
    """What ``functionfuse stack up`` does: the kind steps, then the install steps on kind."""
    k = c.for_kind()
    return kind_steps(k) + install_steps(k)


_WIDTH = 100


def _wrap(words: list[str]) -> str:
    """One line, or lines broken before options (an option kept with its value) when long."""
    line = " ".join(words)
    if len(line) <= _WIDTH:
        return line
    lines, cur, i = [], "", 0
    while i < len(words):
        tok = words[i]
        if tok.startswith("-") and "=" not in tok and i + 1 < len(words) and not words[i + 1].startswith("-"):
            tok, i = f"{tok} {words[i + 1]}", i + 1
        if cur and len(cur) + 1 + len(tok) > _WIDTH - 2:
            lines.append(cur)
            cur = "    " + tok
        else:
            cur = f"{cur} {tok}" if cur else tok
        i += 1
    lines.append(cur)
    return " \\\n".join(lines)


def _render_command(cmd: Command, indent: str = "") -> str:
    text = indent + _wrap(cmd.words()).replace("\n", "\n" + indent)
    if cmd.stdin is not None:
        text += " <<'EOF'\n" + cmd.stdin + ("" if cmd.stdin.endswith("\n") else "\n") + "EOF"
    return text


def render(steps: list[Step], *, cluster: str = "") -> str:
    """The steps as shell text: a ``# title`` line per step, then its commands; commands run
    per kind node become one ``for node in $(kind get nodes ...)`` loop."""
    lines: list[str] = []
    for step in steps:
        lines.append(f"# {step.title}")
        cmds = list(step.commands)
        i = 0
        while i < len(cmds):
            if cmds[i].per_node:
                group = []
                while i < len(cmds) and cmds[i].per_node:
                    group.append(cmds[i])
                    i += 1
                lines.append(f"for node in $(kind get nodes --name {shlex.quote(cluster)}); do")
                lines += [_render_command(c, "  ") for c in group]
                lines.append("done")
            else:
                lines.append(_render_command(cmds[i]))
                i += 1
    return "\n".join(lines) + "\n"


#: the command blocks of the docs, by the name in their ``<!-- stack-steps: NAME -->`` marker
DOC_BLOCKS: dict[str, str] = {
    "kind": "functionfuse stack up: registry, kind cluster, images, then the install steps on it",
    "install": "an existing cluster, charts from this checkout, with KFP",
    "install-no-kfp": "an existing cluster, charts from this checkout, without KFP",
    "install-published": "an existing cluster, the published umbrella chart (OCI), with KFP",
    "kuberay": "the KubeRay step alone (before a functionfuse-ray release of its own)",
}


def doc_steps(name: str) -> str:
    """The rendered command block the docs show under ``<!-- stack-steps: NAME -->``."""
    from ..errors import ConfigurationError

    base = StackConfig(cluster="functionfuse", registry="kind-registry", registry_port=5001,
                       registry_network="bridge", node_image=NODE_IMAGE)
    if name == "kind":
        return render(all_steps(base), cluster=base.cluster)
    if name == "install":
        return render(install_steps(base))
    if name == "install-no-kfp":
        return render(install_steps(replace(base, kfp=False, namespace="functionfuse")))
    if name == "kuberay":
        return render([s for s in install_steps(base) if s.name == "kuberay"])
    if name == "install-published":
        return render(install_steps(replace(base, chart="oci://ghcr.io/functionfuse/charts/functionfuse")))
    raise ConfigurationError(f"No stack-steps block named {name!r}: use one of {', '.join(DOC_BLOCKS)}.")


_MARKER = "<!-- stack-steps: "


def doc_blocks(text: str) -> list[tuple[str, int, str]]:
    """The marked command blocks of a Markdown text: ``(name, line number, block text)``
    for each ``<!-- stack-steps: NAME -->`` line followed by a fenced ``sh`` block."""
    lines, found = text.splitlines(), []
    for i, line in enumerate(lines):
        if not line.startswith(_MARKER):
            continue
        name = line[len(_MARKER):].split("-->", 1)[0].strip()
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```sh":
            found.append((name, i + 1, "<no ```sh block follows the marker>"))
            continue
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), len(lines))
        found.append((name, i + 1, "\n".join(lines[i + 2:end]) + "\n"))
    return found


def stale_doc_blocks(paths: list[str]) -> list[str]:
    """Every marked block of *paths* that is not what :func:`doc_steps` renders, as
    ``path:line: NAME differs`` lines with a unified diff (empty: the docs are current)."""
    import difflib

    problems = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            blocks = doc_blocks(f.read())
        for name, line, block in blocks:
            if name not in DOC_BLOCKS:
                problems.append(f"{path}:{line}: unknown stack-steps block {name!r} (known: {', '.join(DOC_BLOCKS)})")
                continue
            want = doc_steps(name)
            if block != want:
                diff = "".join(difflib.unified_diff(block.splitlines(True), want.splitlines(True), "docs", "steps"))
                problems.append(f"{path}:{line}: stack-steps block {name!r} differs from `functionfuse stack`:\n{diff}")
    return problems


def write_doc_blocks(paths: list[str]) -> list[str]:
    """Rewrite the marked blocks of *paths* from :func:`doc_steps`; the paths changed."""
    changed = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.splitlines(True)
        for name, line, block in reversed(doc_blocks(text)):
            if name in DOC_BLOCKS and lines[line].strip() == "```sh":
                end = next(j for j in range(line + 1, len(lines)) if lines[j].strip() == "```")
                lines[line + 1:end] = doc_steps(name).splitlines(True)
        new = "".join(lines)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            changed.append(path)
    return changed


if __name__ == "__main__":  # python -m functionfuse.kit.steps DOC.md ...: rewrite the marked blocks
    import sys

    for changed in write_doc_blocks(sys.argv[1:]):
        print(f"rewrote the stack-steps blocks of {changed}")
