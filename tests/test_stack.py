"""The install sequence (functionfuse.kit.steps) and its runner (functionfuse.kit.stack).

* The docs' marked command blocks equal the steps; an edit to either side alone fails.
* The order is what a fresh cluster accepts (namespaces, CRDs established, KFP's launcher
  patched after both KFP and the chart), modelled on the commands themselves.
* A non-default registry port reaches every place the stack names the registry, and, through
  the chart's global image registry, every image the umbrella renders (real helm).
* The runner runs exactly the documented commands, in order (recorded by stand-in
  docker/kind/kubectl/helm programs on PATH: no cluster can run here).
* registry_up against the real Docker engine: a missing, stopped, running, changed and
  foreign registry container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import replace

import pytest

from functionfuse.kit import steps
from functionfuse.kit.stack import Stack, StackError
from functionfuse.kit.steps import (
    DOC_BLOCKS,
    StackConfig,
    all_steps,
    doc_blocks,
    doc_steps,
    install_steps,
    render,
    stale_doc_blocks,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, p) for p in ("README.md", "docs/deploy.md", "manifests/README.md")] + sorted(
    os.path.join(ROOT, "charts", d, "README.md") for d in os.listdir(os.path.join(ROOT, "charts")))


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def config(**kw) -> StackConfig:
    base = dict(cluster="functionfuse", registry="kind-registry", registry_port=5001, registry_network="bridge",
                node_image=steps.NODE_IMAGE)
    return StackConfig(**{**base, **kw})


def flat(step_list) -> list[tuple[str, ...]]:
    return [c.argv for s in step_list for c in s.commands]


# -- the docs are the steps -------------------------------------------------------------------------
def test_every_marked_block_of_the_docs_is_the_rendered_steps():
    assert stale_doc_blocks(DOCS) == []


def test_the_docs_show_the_sequence_where_a_user_reads_it():
    found = {}
    for path in DOCS:
        with open(path) as f:
            for name, _, _ in doc_blocks(f.read()):
                found.setdefault(name, []).append(os.path.relpath(path, ROOT))
    assert set(found) == set(DOC_BLOCKS), "every block the steps can render is shown somewhere"
    assert "README.md" in found["install-published"] and "docs/deploy.md" in found["install"]
    assert "manifests/README.md" in found["kind"]


def test_an_edit_to_the_docs_alone_fails(tmp_path):
    src = os.path.join(ROOT, "docs", "deploy.md")
    copy = tmp_path / "deploy.md"
    text = read(src)
    assert "kubectl create namespace ray-system\n" in text
    copy.write_text(text.replace("kubectl create namespace ray-system\n", "", 1))  # the symptom of issue 14
    problems = stale_doc_blocks([str(copy)])
    assert problems and "'install'" in problems[0] and "+kubectl create namespace ray-system" in problems[0]
    # and the blocks can be rewritten from the steps
    assert steps.write_doc_blocks([str(copy)]) == [str(copy)]
    assert stale_doc_blocks([str(copy)]) == [] and copy.read_text() == text


def test_an_edit_to_the_steps_alone_fails(monkeypatch):
    real = steps.install_steps

    def without_crd_wait(c):
        out = real(c)
        return [replace(s, commands=tuple(x for x in s.commands if "condition=established" not in x.argv)) for s in out]

    monkeypatch.setattr(steps, "install_steps", without_crd_wait)
    problems = stale_doc_blocks(DOCS)
    assert problems and all("differs" in p for p in problems)
    assert any("-kubectl wait --for condition=established" in p for p in problems)


def test_a_block_without_a_fence_or_with_an_unknown_name_is_reported(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("<!-- stack-steps: install -->\ntext\n\n<!-- stack-steps: nothing -->\n```sh\nls\n```\n")
    problems = stale_doc_blocks([str(doc)])
    assert len(problems) == 2 and "no ```sh block" in problems[0] and "unknown stack-steps block 'nothing'" in problems[1]


def _ff(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNCTIONFUSE_KIND_")}
    return subprocess.run([sys.executable, "-m", "functionfuse", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**clean, **(env or {})}, stdin=subprocess.DEVNULL, timeout=60)


def test_stack_up_dry_run_prints_the_kind_block_and_steps_the_install_blocks():
    out = _ff("stack", "up", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout == doc_steps("kind")
    out = _ff("stack", "steps")
    assert out.returncode == 0 and out.stdout == doc_steps("install")
    out = _ff("stack", "steps", "--no-kfp")
    assert out.stdout == doc_steps("install-no-kfp")
    out = _ff("stack", "install", "--dry-run", "--chart", "oci://ghcr.io/functionfuse/charts/functionfuse")
    assert out.stdout == doc_steps("install-published")


def test_stack_up_without_the_tools_says_what_to_install(tmp_path):
    env = {"PATH": str(tmp_path)}  # none of docker, kind, kubectl, helm
    out = _ff("stack", "up", env=env)
    assert out.returncode == 1 and "kind.sigs.k8s.io" in out.stderr and "Traceback" not in out.stderr


def test_stack_needs_a_source_tree(tmp_path):
    out = _ff("stack", "down", "--dry-run", "--source", str(tmp_path))
    assert out.returncode == 1 and "--source DIR" in out.stderr


# -- what a fresh cluster accepts -------------------------------------------------------------------
def _index(commands, pred) -> int:
    hits = [i for i, c in enumerate(commands) if pred(c)]
    assert hits, "no such command"
    return hits[0]


@pytest.mark.parametrize("kfp", [True, False], ids=["with-kfp", "without-kfp"])
def test_the_order_is_what_a_fresh_cluster_accepts(kfp):
    c = config(kfp=kfp, namespace="kubeflow" if kfp else "functionfuse")
    cmds = flat(install_steps(c))
    ns = _index(cmds, lambda a: a[1:4] == ("create", "namespace", "ray-system"))
    kuberay = _index(cmds, lambda a: "manifests/kuberay" in a)
    crds = _index(cmds, lambda a: "crd/rayclusters.ray.io" in a)
    helm = _index(cmds, lambda a: a[0] == "helm" and "upgrade" in a)
    assert ns < kuberay < crds < helm, "ray-system before KubeRay, its CRDs established before a RayCluster"
    assert "--create-namespace" in cmds[helm], "the release namespace exists only if KFP made it"
    assert _index(cmds, lambda a: "raycluster/ff-functionfuse-ray" in a) > helm
    if kfp:
        scoped = _index(cmds, lambda a: "manifests/kfp/cluster-scoped" in a)
        app_crd = _index(cmds, lambda a: "crd/applications.app.k8s.io" in a)
        rest = _index(cmds, lambda a: a[-2:] == ("-k", "manifests/kfp"))
        patch = _index(cmds, lambda a: a[1:4] == ("patch", "configmap", "kfp-launcher"))
        assert scoped < app_crd < rest < helm < patch
        assert cmds[patch][cmds[patch].index("-n") + 1] == "kubeflow"
    else:
        assert not any("kfp" in " ".join(a) and "enabled=false" not in " ".join(a) for a in cmds)
        assert "functionfuse-kfp.enabled=false" in " ".join(cmds[helm])
    assert not any("kfp-launcher" in a for x in cmds for a in x if x[0] == "helm"), "the chart never makes kfp-launcher"


def test_every_file_the_steps_name_exists():
    for c in (config(), config(kfp=False)):
        for argv in flat(all_steps(c)):
            for i, arg in enumerate(argv[1:], 1):
                if argv[i - 1] in ("-k", "-f", "--config") and arg != "-":
                    assert os.path.exists(os.path.join(ROOT, arg)), arg
                if arg.startswith(("manifests/", "charts/")):
                    assert os.path.exists(os.path.join(ROOT, arg)), arg


def test_the_kfp_manifests_are_the_pinned_release():
    from functionfuse.kit.steps import KFP_VERSION, KUBERAY_VERSION

    for path in ("manifests/kfp/kustomization.yaml", "manifests/kfp/cluster-scoped/kustomization.yaml"):
        assert f"?ref={KFP_VERSION}\n" in read(os.path.join(ROOT, path))
    assert f"?ref=v{KUBERAY_VERSION}\n" in read(os.path.join(ROOT, "manifests/kuberay/kustomization.yaml"))


# -- a registry port that is not 5001 -----------------------------------------------------------------
def test_a_registry_port_reaches_every_registry_reference():
    c = config(registry_port=5123)
    text = render(all_steps(c), cluster=c.cluster)
    assert "5001" not in text
    assert "-p 127.0.0.1:5123:5000" in text and "--push 127.0.0.1:5123" in text
    assert "/etc/containerd/certs.d/localhost:5123/hosts.toml" in text
    assert 'host: "localhost:5123"' in text
    assert "--set global.image.registry=localhost:5123" in text


def _helm() -> str:
    for cand in (os.path.join(ROOT, ".venv", "bin", "helm"), shutil.which("helm")):
        if cand and os.access(cand, os.X_OK):
            return cand
    pytest.skip("helm is not installed (scripts/setup-helm.sh installs it)")


def test_the_umbrella_pulls_every_functionfuse_image_from_the_registry_port(tmp_path):
    """The helm command of the steps, run as `helm template` with real helm: every image of
    the umbrella that is not an upstream one comes from localhost:<port>."""
    import yaml

    c = config(registry_port=5123).for_kind()
    cmd = next(x.argv for s in install_steps(c) for x in s.commands if x.argv[0] == "helm" and "upgrade" in x.argv)
    chart = shutil.copytree(os.path.join(ROOT, "charts"), tmp_path / "charts")
    helm = _helm()
    subprocess.run([helm, "dependency", "build", str(chart / "functionfuse")], check=True, capture_output=True, timeout=120)
    args = list(cmd[cmd.index("upgrade") + 2:])  # after `upgrade --install`: release, chart, options
    args = [a for a in args if a not in ("--wait", "--create-namespace")]
    del args[args.index("--timeout"):args.index("--timeout") + 2]
    args = [str(tmp_path / a) if a.startswith("charts/") else a for a in args]
    out = subprocess.run([helm, "template", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    images = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str):
                    images.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for doc in yaml.safe_load_all(out.stdout):
        walk(doc)
    ours = {i for i in images if "functionfuse" in i.split("@")[0].rsplit("/", 1)[-1]}
    assert ours, images
    assert all(i.startswith("localhost:5123/") for i in ours), sorted(ours)


# -- the runner runs the documented commands ------------------------------------------------------------
FAKE_TOOL = textwrap.dedent('''\
    #!{python}
    """A stand-in docker/kind/kubectl/helm/functionfuse: records its command, answers the queries."""
    import json, os, sys
    name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps([name, *args]) + "\\n")
        if stdin:
            f.write(json.dumps(["<stdin>", stdin]) + "\\n")
    if name == "kind" and args[:1] == ["version"]:
        print(os.environ.get("FAKE_KIND_VERSION", "kind v0.32.0 go1.24.0 linux/amd64"))
    elif name == "kind" and args[:2] == ["get", "clusters"]:
        print(os.environ.get("FAKE_CLUSTERS", ""))
    elif name == "kind" and args[:2] == ["get", "nodes"]:
        print(args[-1] + "-control-plane\\n" + args[-1] + "-worker")
    elif name == "docker" and args[:1] == ["inspect"]:
        state = os.environ.get("FAKE_REGISTRY", "")
        print(state or "[]")
        sys.exit(0 if state else 1)
    elif name == "kubectl" and "create" in args and "namespace" in args and os.environ.get("FAKE_NS_EXISTS"):
        print('Error from server (AlreadyExists): namespaces "ray-system" already exists', file=sys.stderr)
        sys.exit(1)
    elif name == "kubectl" and "get" in args and "configmap" in args:
        print(json.dumps({{"defaultPipelineRoot": "s3://functionfuse/pipeline-root", "providers": "s3: {{}}"}}))
''')


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "_tool"
    script.write_text(FAKE_TOOL.format(python=sys.executable))
    script.chmod(0o755)
    for tool in ("docker", "kind", "kubectl", "helm", "functionfuse"):
        (bin_dir / tool).symlink_to(script)
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))

    def recorded() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return bin_dir, recorded


def expand(step_list, nodes, data) -> list[list[str]]:
    """The commands a shell would run for the rendered steps."""
    out = []
    for s in step_list:
        for c in s.commands:
            for n in (nodes if c.per_node else [None]):
                for sub in c.substitutions:
                    out.append(list(sub.argv))
                argv = [a.replace("{0}", data) for a in c.argv]
                out.append([a.replace("{node}", n) for a in argv] if n else argv)
                if c.stdin:
                    out.append(["<stdin>", c.stdin])
    return out


PROBES = (["kind", "version"], ["kind", "get", "clusters"], ["kind", "get", "nodes"], ["docker", "inspect"])


def test_up_runs_the_documented_commands_in_order(fake_tools, monkeypatch):
    bin_dir, recorded = fake_tools
    monkeypatch.setenv("FAKE_NS_EXISTS", "1")  # a second run: ray-system is there already
    c = config()
    stack = Stack(ROOT, c, echo=lambda line: None)
    stack.functionfuse = [str(bin_dir / "functionfuse")]
    stack.up()
    ran = [r for r in recorded() if not any(r[:len(p)] == p for p in PROBES)]
    data = json.dumps({"defaultPipelineRoot": "s3://functionfuse/pipeline-root", "providers": "s3: {}"})
    want = expand(all_steps(c), ["functionfuse-control-plane", "functionfuse-worker"], data)
    want = [w for w in want if not any(w[:len(p)] == p for p in PROBES)]
    assert ran == want
    patch = next(r for r in ran if "patch" in r)
    assert json.loads(patch[-1]) == {"data": json.loads(data)}, "the launcher patch is valid JSON"


def test_up_on_an_existing_cluster_does_not_create_it_again(fake_tools, monkeypatch):
    _, recorded = fake_tools
    monkeypatch.setenv("FAKE_CLUSTERS", "other\nfunctionfuse")
    stack = Stack(ROOT, config(), echo=lambda line: None)
    stack.functionfuse = [str(fake_tools[0] / "functionfuse")]
    stack.up()
    assert not any(r[:3] == ["kind", "create", "cluster"] for r in recorded())


def test_install_on_any_context_runs_only_the_install_steps(fake_tools):
    _, recorded = fake_tools
    c = config(context="my-cluster", kfp=False, namespace="functionfuse")
    Stack(ROOT, c, echo=lambda line: None).install()
    ran = recorded()
    assert ran == expand(install_steps(c), [], "")
    assert all(r[0] in ("kubectl", "helm") for r in ran)
    assert all(("--context" in r and "my-cluster" in r) or ("--kube-context" in r) or r[1] == "dependency" for r in ran)


def test_a_failing_command_stops_the_run_and_names_it(fake_tools, tmp_path):
    bin_dir, recorded = fake_tools
    (bin_dir / "helm").unlink()
    (bin_dir / "helm").write_text("#!/bin/sh\necho 'Error: INSTALLATION FAILED: boom' >&2\nexit 1\n")
    (bin_dir / "helm").chmod(0o755)
    with pytest.raises(StackError, match=r"`helm dependency build charts/functionfuse` failed .*boom"):
        Stack(ROOT, config(kfp=False), echo=lambda line: None).install()
    assert not any(r[0] == "kubectl" and "raycluster/ff-functionfuse-ray" in r for r in recorded())


# -- registry_up with the real Docker engine -------------------------------------------------------------
REGISTRY_TEST_IMAGE = "functionfuse-test/kind-registry:local"


@pytest.fixture(scope="module")
def registry_image(tmp_path_factory):
    """A registry image made here (no image can be pulled): Debian's docker-registry on the
    local base image, serving :5000 like registry:3."""
    from kitsupport import LOCAL_BASE, docker_client

    client = docker_client()
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (scripts/setup-docker.sh installs it)")
    ctx = tmp_path_factory.mktemp("registry-image")
    shutil.copy(binary, ctx / "registry")
    (ctx / "config.yml").write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n"
                                    "http:\n  addr: :5000\n")
    (ctx / "Dockerfile").write_text(f"FROM {LOCAL_BASE}\nCOPY registry /bin/registry\n"
                                    "COPY config.yml /etc/docker/registry/config.yml\n"
                                    'CMD ["/bin/registry", "serve", "/etc/docker/registry/config.yml"]\n')
    client.images.build(path=str(ctx), tag=REGISTRY_TEST_IMAGE, rm=True, network_mode="host")
    return client


@pytest.fixture
def registry_names(registry_image):
    client = registry_image
    names: list[str] = []
    yield client, names
    for name in names:
        try:
            client.containers.get(name).remove(force=True)
        except Exception:
            pass


def _answers(client, name: str) -> bool:
    probe = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:5000/v2/', timeout=5).status)"
    for _ in range(50):
        code, out = client.containers.get(name).exec_run(["python3", "-c", probe])
        if code == 0 and out.strip() == b"200":
            return True
        import time

        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_registry_up_creates_starts_keeps_and_replaces_its_container(registry_names):
    from functionfuse.kit.registry import free_port

    client, names = registry_names
    name = f"ff-test-registry-{uuid.uuid4().hex[:8]}"
    names.append(name)
    c = config(registry=name, registry_port=free_port(), registry_network="none", registry_image=REGISTRY_TEST_IMAGE)
    stack = Stack(ROOT, c, echo=lambda line: None)

    assert stack.registry_up() == "created"
    assert _answers(client, name), "a registry answers in the container"
    assert stack.registry_up() == "running"

    client.containers.get(name).stop(timeout=5)
    # the defect: the documented `docker run --name` refuses a stopped container of that name
    run = next(s for s in all_steps(c) if s.name == "registry").commands[0].argv
    refused = subprocess.run(list(run), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "already in use" in refused.stderr
    assert stack.registry_up() == "started"
    assert client.containers.get(name).status == "running" and _answers(client, name)

    moved = Stack(ROOT, replace(c, registry_port=free_port()), echo=lambda line: None)
    assert moved.registry_up() == "replaced"
    ports = client.containers.get(name).attrs["HostConfig"]["PortBindings"]["5000/tcp"]
    assert ports == [{"HostIp": "127.0.0.1", "HostPort": str(moved.config.registry_port)}]


@pytest.mark.slow
def test_registry_up_leaves_a_container_it_did_not_make_alone(registry_names):
    from kitsupport import LOCAL_BASE

    client, names = registry_names
    name = f"ff-test-registry-{uuid.uuid4().hex[:8]}"
    names.append(name)
    client.containers.create(LOCAL_BASE, ["sleep", "1"], name=name, network_mode="none")
    c = config(registry=name, registry_port=5123, registry_network="none", registry_image=REGISTRY_TEST_IMAGE)
    with pytest.raises(StackError, match=rf"{name}.*not made by `functionfuse stack up`.*docker rm -f {name}"):
        Stack(ROOT, c, echo=lambda line: None).registry_up()
    assert client.containers.get(name).image.tags == [LOCAL_BASE]


def render_notes(tmp_path, chart: str, *args: str) -> str:
    """A chart's NOTES.txt as `helm install` prints it, rendered offline: the notes are
    wrapped into a ConfigMap template of a copy of the charts and read back."""
    import yaml

    charts = tmp_path / "charts"
    if not charts.exists():
        shutil.copytree(os.path.join(ROOT, "charts"), charts)
    notes = (charts / chart / "templates" / "NOTES.txt").read_text()
    (charts / chart / "templates" / "zz-notes.yaml").write_text(
        '{{- define "zz.notes" }}' + notes + '{{- end }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n'
        'data:\n  notes: {{ include "zz.notes" . | quote }}\n')
    helm = _helm()
    if chart == "functionfuse":
        subprocess.run([helm, "dependency", "build", str(charts / chart)], check=True, capture_output=True, timeout=120)
    out = subprocess.run([helm, "template", *args, str(charts / chart), "--show-only", "templates/zz-notes.yaml"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["data"]["notes"]


@pytest.mark.parametrize("release,namespace", [("ff", "kubeflow"), ("team", "ml")])
def test_the_umbrella_notes_give_the_commands_of_the_steps(tmp_path, release, namespace):
    notes = render_notes(tmp_path, "functionfuse", release, "-n", namespace)
    lines = [line.strip() for line in notes.splitlines()]
    c = config(release=release, namespace=namespace)
    steps_by_name = {s.name: s for s in install_steps(c)}
    patch = steps_by_name["launcher"].commands[0].shell()
    wait = next(x for x in steps_by_name["chart"].commands if "raycluster/" in " ".join(x.argv)).shell()
    assert patch in lines, f"the NOTES must print the launcher step:\n{patch}\n{notes}"
    assert wait in lines
    assert not any("NodePort" in line for line in lines)
    no_kfp = render_notes(tmp_path, "functionfuse", release, "-n", namespace, "--set", "functionfuse-kfp.enabled=false")
    assert "kfp-launcher" not in no_kfp


def test_every_engine_dockerfile_defaults_to_the_base_image_the_kit_builds_it_on():
    """`docker build` of an engine Dockerfile without build arguments starts from the same
    image as `functionfuse image build` and `functionfuse release` (the base image of this
    version), not from another distribution's image."""
    import re

    from functionfuse import __version__
    from functionfuse.kit.images import RECIPES, image_tag

    for name, recipe in RECIPES.items():
        text = read(os.path.join(ROOT, recipe.dockerfile))
        default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
        assert default, recipe.dockerfile
        if recipe.on_base:
            assert default.group(1) == f"functionfuse:{image_tag(__version__, 'py311')}", recipe.dockerfile
        else:
            assert default.group(1) == "python:3.11-slim", recipe.dockerfile


def test_the_kfp_chart_notes_give_the_launcher_step(tmp_path):
    notes = render_notes(tmp_path, "functionfuse-kfp", "team", "-n", "ml")
    patch = next(s for s in install_steps(config(release="team", namespace="ml")) if s.name == "launcher").commands[0]
    assert patch.shell() in [line.strip() for line in notes.splitlines()]
    assert "kfp-launcher" not in render_notes(tmp_path, "functionfuse-kfp", "team", "--set", "pipelineRoot.create=false")


@pytest.mark.parametrize("kind_version,warns", [("kind v0.32.0 go1.24.0 linux/amd64", False),
                                                 ("kind v0.33.1 go1.25 linux/amd64", False),
                                                 ("kind v0.26.0 go1.23.4 linux/amd64", True)],
                         ids=["same", "newer", "older"])
def test_an_older_kind_than_the_node_image_was_built_for_is_warned_about(fake_tools, monkeypatch, kind_version, warns):
    monkeypatch.setenv("FAKE_KIND_VERSION", kind_version)
    seen: list[str] = []
    stack = Stack(ROOT, config(), echo=seen.append)
    warning = stack.check_kind_version()
    assert (warning is not None) == warns
    if warns:
        assert "v0.26.0" in warning and "v0.32.0" in warning and "FUNCTIONFUSE_KIND_NODE_IMAGE=''" in warning
        assert warning in seen
    assert Stack(ROOT, config(node_image=""), echo=seen.append).check_kind_version() is None
