"""Releases: one version in every artifact, published to a real registry on 127.0.0.1.

Without Docker: the version agrees in every chart, image default and manifest (and a
disagreement is reported); the charts' default image tags follow it; image labels come
from the commit; the CI workflows parse and say what they must; the multi-arch image
script tags and labels images as the local build does.

With Docker: ``functionfuse release`` into Debian's docker-registry on a free loopback
port, run twice (the second run pushes nothing); every image pulled back runs
``functionfuse --version``; every chart is read and rendered straight from
``oci://127.0.0.1:PORT/...`` and names images that are in the registry; the wheel,
installed into a new virtual environment, runs the demo and resumes it.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from kitsupport import LOCAL_BASE, ROOT, WHEELHOUSE, built_images, docker_client, modules_imported_parsing

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install -r requirements/kit.txt")

from functionfuse import __version__  # noqa: E402
from functionfuse.kit import release as rel  # noqa: E402

CHARTS = ["functionfuse-kfp", "functionfuse-minio", "functionfuse-prefect", "functionfuse-ray", "functionfuse"]
ENGINES = {"base": "", "ray": "-ray", "prefect": "-prefect", "kfp": "-kfp"}
NAMESPACE = "ff"


def _helm() -> str | None:
    try:
        return rel.helm_binary(ROOT)
    except Exception:
        return None


HELM = _helm()
needs_helm = pytest.mark.skipif(HELM is None, reason="helm is not installed: run scripts/setup-helm.sh (make test does)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    assert HELM is not None
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli(*argv: str) -> tuple[int, str]:
    from functionfuse.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def functionfuse_images(docs: list[dict]) -> set[str]:
    """Every functionfuse image a rendered chart names (containers and the KFP settings)."""
    found: set[str] = set()

    def walk(obj: object) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key in ("image", "FUNCTIONFUSE_KFP_IMAGE") and isinstance(value, str) and re.search(r"(^|/)functionfuse:", value):
                    found.add(value)
                walk(value)
        elif isinstance(obj, list):
            for item in obj:
                walk(item)

    for doc in docs:
        walk(doc)
    return found


# -- one version everywhere ----------------------------------------------------------------------
def test_the_version_agrees_everywhere():
    assert rel.version_mismatches(ROOT) == []
    code, out = cli("release", "--check-versions")
    assert code == 0 and __version__ in out


def test_a_disagreeing_chart_dockerfile_or_manifest_is_reported(tmp_path, capsys):
    for part in ("charts", "images", "manifests"):
        shutil.copytree(os.path.join(ROOT, part), tmp_path / part, ignore=shutil.ignore_patterns("*.tgz"))
    shutil.copy(os.path.join(ROOT, "Dockerfile"), tmp_path / "Dockerfile")
    chart = tmp_path / "charts" / "functionfuse-ray" / "Chart.yaml"
    chart.write_text(chart.read_text().replace(f'appVersion: "{__version__}"', 'appVersion: "9.9.9"'))
    umbrella = tmp_path / "charts" / "functionfuse" / "Chart.yaml"
    umbrella.write_text(umbrella.read_text().replace(f"    version: {__version__}\n    repository: file://../functionfuse-kfp",
                                                     "    version: 0.0.1\n    repository: file://../functionfuse-kfp"))
    dockerfile = tmp_path / "images" / "kfp" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace(f"ARG BASE_IMAGE=functionfuse:{__version__}-py311", "ARG BASE_IMAGE=functionfuse:0.0.9-py311"))
    (tmp_path / "manifests" / "extra.yaml").write_text("image: registry.example.com/functionfuse:0.0.8-py311-ray\n")

    wrong = rel.version_mismatches(str(tmp_path))
    assert len(wrong) == 4, wrong
    assert any("functionfuse-ray/Chart.yaml: appVersion is '9.9.9'" in w for w in wrong)
    assert any("dependency functionfuse-kfp is '0.0.1'" in w for w in wrong)
    assert any("images/kfp/Dockerfile:" in w and "'0.0.9'" in w for w in wrong)
    assert any("manifests/extra.yaml:1" in w and "'0.0.8'" in w for w in wrong)
    code, _ = cli("release", "--check-versions", "--project", str(tmp_path))
    assert code == 1
    assert "9.9.9" in capsys.readouterr().err
    # and a release from such a tree stops before building anything
    with pytest.raises(rel.ReleaseError, match="disagree on the version"):
        rel.release("127.0.0.1:5000/ff", steps=["charts"], project=str(tmp_path))


@needs_helm
@pytest.mark.parametrize("chart", CHARTS)
def test_default_image_tags_follow_the_version(chart, tmp_path):
    """Without any value set, a chart deploys the images of its own version, from the
    registry releases publish to."""
    src = os.path.join(ROOT, "charts", chart)
    if chart == "functionfuse":
        shutil.copytree(os.path.join(ROOT, "charts"), tmp_path / "charts", ignore=shutil.ignore_patterns("*.tgz"))
        src = str(tmp_path / "charts" / chart)
        helm("dependency", "build", src)
    docs = [d for d in yaml.safe_load_all(helm("template", "ff", src).stdout) if d]
    images = functionfuse_images(docs)
    assert images, f"{chart} names no functionfuse image"
    for image in images:
        # from the registry releases publish to (global.image.registry)
        assert re.fullmatch(rf"{re.escape(rel.DEFAULT_IMAGE_REGISTRY)}/functionfuse:{re.escape(__version__)}-py311(-ray|-prefect|-kfp)?", image), image
    if chart == "functionfuse":
        assert len(images) == 4


def test_image_labels_come_from_the_commit(monkeypatch):
    from functionfuse.kit.images import OCI, git_revision, oci_labels

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    labels = oci_labels(ROOT)
    assert labels[OCI + "created"] == "2023-11-14T22:13:20Z"
    assert labels[OCI + "version"] == __version__
    assert labels[OCI + "source"] == "https://github.com/functionfuse/functionfuse"
    assert labels[OCI + "revision"] == git_revision(ROOT)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    committed = subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%ct"], capture_output=True, text=True)
    if committed.returncode != 0:
        pytest.skip("not a git checkout")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", labels[OCI + "revision"])
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(committed.stdout)))
    assert oci_labels(ROOT)[OCI + "created"] == created
    assert oci_labels(ROOT) == oci_labels(ROOT), "labels must not depend on the time of the build"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH"):
        oci_labels(ROOT)


def test_release_arguments_are_checked(capsys):
    assert cli("release", "--steps", "images")[0] == 1
    assert "needs a registry" in capsys.readouterr().err
    assert cli("release", "127.0.0.1:5000/ff", "--steps", "dist,wheels")[0] == 1
    assert "Unknown release step(s) ['wheels']" in capsys.readouterr().err
    assert cli("release", "https://127.0.0.1:5000", "--steps", "charts")[0] == 1
    assert "host[:port][/namespace]" in capsys.readouterr().err
    assert rel.is_loopback("127.0.0.1:5000/ff") and rel.is_loopback("localhost:5000")
    assert not rel.is_loopback("ghcr.io/functionfuse")


def test_release_command_keeps_import_light():
    assert modules_imported_parsing(["release", "127.0.0.1:5000/ff"], ("docker", "yaml", "functionfuse.kit.release")) == []


@needs_helm
def test_repackaging_the_same_charts_compares_equal(tmp_path):
    """helm stamps packaged files with the time: contents, not bytes, say whether a chart changed."""
    first = rel.package_charts(ROOT, str(tmp_path / "a"), image_repository="127.0.0.1:5000/ff/functionfuse", helm=HELM)
    time.sleep(1.1)
    second = rel.package_charts(ROOT, str(tmp_path / "b"), image_repository="127.0.0.1:5000/ff/functionfuse", helm=HELM)
    assert [os.path.basename(p) for p in first] == [f"{c}-{__version__}.tgz" for c in CHARTS]
    umbrella_a, umbrella_b = first[-1], second[-1]
    assert rel.chart_contents(umbrella_a) == rel.chart_contents(umbrella_b)
    contents = rel.chart_contents(umbrella_a)
    for chart in CHARTS:
        path = "functionfuse/values.yaml" if chart == "functionfuse" else f"functionfuse/charts/{chart}/values.yaml"
        values = yaml.safe_load(contents[path])
        assert values["global"]["image"]["registry"] == "127.0.0.1:5000/ff", chart
    values = yaml.safe_load(contents["functionfuse/charts/functionfuse-ray/values.yaml"])
    assert values["image"]["repository"] == "functionfuse" and not values["image"]["registry"]
    values = yaml.safe_load(contents["functionfuse/charts/functionfuse-minio/values.yaml"])
    assert values["bucketJob"]["image"]["repository"] == "functionfuse" and not values["bucketJob"]["image"]["registry"]
    other = rel.package_charts(ROOT, str(tmp_path / "c"), image_repository="registry.example.com/functionfuse", helm=HELM)
    assert rel.chart_contents(other[-1]) != contents


def test_a_release_refuses_images_it_cannot_point_at_its_registry(tmp_path):
    """The release moves every functionfuse image by global.image.registry: an image that names
    its own registry, or a target that is not REGISTRY/functionfuse, is refused before packaging."""
    shutil.copytree(os.path.join(ROOT, "charts"), tmp_path / "charts", ignore=shutil.ignore_patterns("*.tgz"))
    values = tmp_path / "charts" / "functionfuse-kfp" / "values.yaml"
    values.write_text(values.read_text().replace('image:\n  registry: ""', "image:\n  registry: quay.io/elsewhere", 1))
    with pytest.raises(rel.ReleaseError, match="image name their own registry"):
        rel.package_charts(str(tmp_path), str(tmp_path / "out"), image_repository="127.0.0.1:5000/ff/functionfuse", helm="helm-not-called")
    with pytest.raises(rel.ReleaseError, match="REGISTRY/functionfuse"):
        rel.package_charts(ROOT, str(tmp_path / "out"), image_repository="127.0.0.1:5000/ff/other", helm="helm-not-called")


# -- CI workflows ----------------------------------------------------------------------------------
def workflow(name: str) -> dict:
    with open(os.path.join(ROOT, ".github", "workflows", name)) as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict) and doc.get("name") and doc.get("jobs"), f"{name}: needs name and jobs"
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    for job_id, job in doc["jobs"].items():
        assert "runs-on" in job, f"{name}: job {job_id} has no runs-on"
        assert job.get("steps"), f"{name}: job {job_id} has no steps"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}: a step of {job_id} needs exactly one of uses/run: {step}"
        for need in [job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []):
            assert need in doc["jobs"], f"{name}: job {job_id} needs unknown job {need!r}"
    return doc


def steps_text(job: dict) -> str:
    return "\n".join(str(s.get("run", "")) + " " + str(s.get("uses", "")) for s in job["steps"])


def test_ci_workflow_builds_and_tests_every_push():
    doc = workflow("ci.yml")
    assert "push" in doc["on"]
    push = doc["on"]["push"] or {}
    assert "tags" not in push and "paths" not in push, "every push is tested"
    texts = [steps_text(job) for job in doc["jobs"].values()]
    assert any(re.search(r"(^|\n)make test\b", t) for t in texts)
    assert any("actions/checkout" in t for t in texts)


def test_release_workflow_publishes_everything_on_a_version_tag():
    doc = workflow("release.yml")
    assert list(doc["on"]) == ["push"]
    assert doc["on"]["push"] == {"tags": ["v*"]}
    jobs = doc["jobs"]
    text = {job_id: steps_text(job) for job_id, job in jobs.items()}
    everything = "\n".join(text.values())
    platforms = doc["env"]["PLATFORMS"].split(",")
    assert set(platforms) == {"linux/amd64", "linux/arm64"}
    images = next(j for j, t in text.items() if "release-images-buildx.sh" in t)
    assert "docker/setup-buildx-action" in text[images] and "docker/setup-qemu-action" in text[images]
    assert "docker/login-action" in text[images]
    assert jobs[images]["permissions"]["packages"] == "write"
    charts = next(j for j, t in text.items() if "--steps charts" in t)
    assert images in jobs[charts]["needs"], "charts are published after the images they deploy"
    assert "azure/setup-helm" in text[charts]
    assert "GITHUB_REF_NAME" in everything and "--check-versions" in everything, "the tag is checked against the version"
    assert "pypa/gh-action-pypi-publish" in everything and "--steps dist" in everything
    assert re.search(r"(^|\n)make test\b", everything), "a release is tested first"
    # no credentials in the repository: only secrets and the job token
    with open(os.path.join(ROOT, ".github", "workflows", "release.yml")) as f:
        assert not re.search(r"(?i)password:\s*(?!\$\{\{)\S", f.read())


def test_multiarch_script_tags_and_labels_images_like_the_local_build(monkeypatch):
    """The CI image script (buildx) and `functionfuse image build` agree on tags and labels."""
    from functionfuse.kit.images import image_tag, oci_labels

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.setenv("DRY_RUN", "1")
    out = subprocess.run([os.path.join(ROOT, "scripts", "release-images-buildx.sh"), "ghcr.io/example"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    commands = [line for line in out.splitlines() if line.strip()]
    assert len(commands) == 4
    labels = oci_labels(ROOT)
    for command, (name, suffix) in zip(commands, ENGINES.items()):
        assert command.startswith("docker buildx build ")
        assert "--platform linux/amd64\\,linux/arm64" in command
        assert f"--tag ghcr.io/example/functionfuse:{image_tag(__version__, 'py311', name)}" in command
        assert "--push" in command
        for key, value in labels.items():
            assert f"--label {key}={value}" in command.replace("\\", "")
        if name != "base":
            assert f"BASE_IMAGE=ghcr.io/example/functionfuse:{__version__}-py311 " in command


# -- a real release into a registry on 127.0.0.1 ---------------------------------------------------
def registry_digest(registry, repository: str, reference: str, accept: str) -> str:
    req = urllib.request.Request(f"http://{registry.address}/v2/{repository}/manifests/{reference}", method="HEAD")
    req.add_header("Accept", accept)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as resp:
        return resp.headers["Docker-Content-Digest"]


DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


SNAPSHOT_PARTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "functionfuse", "images", "charts", "manifests", "requirements")


def snapshot(dest: str) -> str:
    """A copy of the sources a release reads: the release runs from it, so edits to the
    checkout while the tests run cannot change what the two releases build."""
    os.makedirs(dest)
    for part in SNAPSHOT_PARTS:
        src = os.path.join(ROOT, part)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dest, part), ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tgz", "*.egg-info"))
        else:
            shutil.copy2(src, os.path.join(dest, part))
    return dest


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """`functionfuse release` run twice into a fresh registry, from a snapshot of the
    sources: {registry, first, second, dist, labels}."""
    from functionfuse.kit.images import git_revision, oci_labels, source_date_epoch
    from functionfuse.kit.registry import LocalRegistry, RegistryError

    if HELM is None:
        pytest.skip("helm is not installed: run scripts/setup-helm.sh (make test does)")
    docker_client()
    built_images()  # the session's images: the release's build is then a layer-cache hit
    project = snapshot(str(tmp_path_factory.mktemp("release") / "project"))
    try:
        registry = LocalRegistry().start()
    except RegistryError as exc:
        pytest.skip(f"no local registry: {exc}")
    dist = str(tmp_path_factory.mktemp("dist"))
    target = f"{registry.address}/{NAMESPACE}"
    argv = ["release", target, "--project", project, "--base-image", LOCAL_BASE, "--wheelhouse", WHEELHOUSE, "--dist", dist, "--json"]
    try:
        with pytest.MonkeyPatch.context() as mp:
            # the snapshot is no git checkout: the labels of the checkout it was taken from
            mp.setenv("FUNCTIONFUSE_REVISION", git_revision(ROOT))
            mp.setenv("SOURCE_DATE_EPOCH", str(source_date_epoch(ROOT)))
            labels = oci_labels(project)
            runs = []
            for _ in range(2):
                t0 = time.perf_counter()
                code, out = cli(*argv)
                assert code == 0, out
                report = json.loads(out)
                report["wall"] = time.perf_counter() - t0
                runs.append(report)
        print(f"\nrelease: first run {runs[0]['wall']:.1f} s, second run {runs[1]['wall']:.1f} s")
        yield {"registry": registry, "first": runs[0], "second": runs[1], "dist": dist, "labels": labels}
    finally:
        registry.stop()


def artifacts(report: dict, kind: str) -> dict[str, dict]:
    return {a["reference"]: a for a in report["artifacts"] if a["kind"] == kind}


@pytest.mark.slow
def test_release_publishes_every_artifact_once(released):
    registry, first, dist = released["registry"], released["first"], released["dist"]
    target = f"{registry.address}/{NAMESPACE}"
    assert first["version"] == __version__
    images = artifacts(first, "image")
    assert set(images) == {f"{target}/functionfuse:{__version__}-py311{s}" for s in ENGINES.values()}
    charts = artifacts(first, "chart")
    assert set(charts) == {f"oci://{target}/charts/{c}:{__version__}" for c in CHARTS}
    assert {a["action"] for a in first["artifacts"] if a["kind"] != "dist"} == {"pushed"}
    assert sorted(os.listdir(dist)) == sorted([f"functionfuse-{__version__}.tar.gz", f"functionfuse-{__version__}-py3-none-any.whl"])
    # what the registry holds is what the release reported
    assert registry.tags(f"{NAMESPACE}/functionfuse") == sorted(f"{__version__}-py311{s}" for s in ENGINES.values())
    for ref, record in images.items():
        tag = ref.rsplit(":", 1)[1]
        assert registry_digest(registry, f"{NAMESPACE}/functionfuse", tag, DOCKER_MANIFEST) == record["digest"]
    for chart in CHARTS:
        assert registry.tags(f"{NAMESPACE}/charts/{chart}") == [__version__]
        digest = registry_digest(registry, f"{NAMESPACE}/charts/{chart}", __version__, OCI_MANIFEST)
        assert digest == charts[f"oci://{target}/charts/{chart}:{__version__}"]["digest"]


@pytest.mark.slow
def test_a_second_release_pushes_nothing(released):
    registry, first, second = released["registry"], released["first"], released["second"]
    actions = {a["reference"]: a["action"] for a in second["artifacts"] if a["kind"] != "dist"}
    assert set(actions.values()) == {"unchanged"}, actions
    assert set(actions) == {a["reference"] for a in first["artifacts"] if a["kind"] != "dist"}
    for ref, record in artifacts(second, "image").items():
        assert record["digest"] == artifacts(first, "image")[ref]["digest"]
    for chart in CHARTS:
        assert registry.tags(f"{NAMESPACE}/charts/{chart}") == [__version__]
        digest = registry_digest(registry, f"{NAMESPACE}/charts/{chart}", __version__, OCI_MANIFEST)
        assert digest == artifacts(first, "chart")[f"oci://{registry.address}/{NAMESPACE}/charts/{chart}:{__version__}"]["digest"]


@pytest.mark.slow
def test_every_published_image_pulls_back_and_runs_its_version(released):
    from functionfuse.kit.images import OCI

    registry, first, expected = released["registry"], released["first"], released["labels"]
    client = docker_client()
    for ref, record in artifacts(first, "image").items():
        repository, tag = ref.rsplit(":", 1)
        client.images.remove(ref)
        pulled = client.images.pull(repository, tag=tag)
        assert f"{repository}@{record['digest']}" in pulled.attrs["RepoDigests"]
        out = client.containers.run(ref, ["functionfuse", "--version"], remove=True, network_mode="none")
        assert out.decode().strip() == f"functionfuse {__version__}", ref
        labels = pulled.labels
        for key in ("version", "source", "revision", "created"):
            assert labels[OCI + key] == expected[OCI + key], (ref, key)


@pytest.mark.slow
@pytest.mark.parametrize("chart", CHARTS)
def test_every_published_chart_reads_and_renders_from_the_registry(released, chart):
    registry = released["registry"]
    target = f"{registry.address}/{NAMESPACE}"
    url = f"oci://{target}/charts/{chart}"
    meta = yaml.safe_load(helm("show", "chart", url, "--version", __version__, "--plain-http").stdout)
    assert meta["name"] == chart
    assert meta["version"] == __version__ and meta["appVersion"] == __version__
    docs = [d for d in yaml.safe_load_all(helm("template", "ff", url, "--version", __version__, "--plain-http").stdout) if d]
    assert docs
    images = functionfuse_images(docs)
    assert images
    published = set(registry.tags(f"{NAMESPACE}/functionfuse"))
    for image in images:
        repository, tag = image.rsplit(":", 1)
        assert repository == f"{target}/functionfuse", image
        assert tag in published, f"{chart} deploys {image}, which the registry does not hold"
        assert tag.startswith(f"{__version__}-py311")
    if chart == "functionfuse":
        assert {i.rsplit(":", 1)[1] for i in images} == published, "the umbrella deploys every image"
    # every image the chart makes a node pull (pods, KFP settings, job templates) was pushed
    # by this release or is an upstream image pinned by digest
    from functionfuse.kit.clustermodel import check_images

    pushed = set(artifacts(released["first"], "image"))
    unpushed = check_images(docs, "default", pushed)
    assert not unpushed, "\n".join(str(f) for f in unpushed)


@pytest.mark.slow
def test_the_wheel_installs_into_a_new_environment_and_runs_the_demo(released, tmp_path):
    dist = released["dist"]
    # nothing of this checkout may be visible: with ROOT on PYTHONPATH (the Ray tests put it
    # there), pip finds functionfuse.egg-info, calls the wheel "already satisfied" and skips it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    py = str(venv / "bin" / "python")
    wheel = os.path.join(dist, f"functionfuse-{__version__}-py3-none-any.whl")
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--find-links", WHEELHOUSE,
                    wheel, "numpy"], check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    version = subprocess.run([str(venv / "bin" / "functionfuse"), "--version"], capture_output=True, text=True, check=True, env=env)
    assert version.stdout.strip() == f"functionfuse {__version__}"
    where = subprocess.run([py, "-c", "import functionfuse; print(functionfuse.__file__)"], capture_output=True, text=True,
                           check=True, cwd=tmp_path, env=env).stdout
    assert where.startswith(str(venv)), where
    demo = tmp_path / "ml_pipeline.py"
    shutil.copy(os.path.join(ROOT, "examples", "ml_pipeline.py"), demo)
    runs = [
        subprocess.run([py, str(demo), "--storage", str(tmp_path / "storage")], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=300)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert re.search(r"accuracy = 0\.\d+ .*4 nodes run, 0 loaded from storage", runs[0].stdout), runs[0].stdout
    assert re.search(r"accuracy = 0\.\d+ .*0 nodes run, 1 loaded from storage", runs[1].stdout), runs[1].stdout
    accuracy = [re.search(r"accuracy = (\S+)", r.stdout).group(1) for r in runs]
    assert accuracy[0] == accuracy[1]


@pytest.mark.slow
def test_a_published_chart_version_is_never_overwritten(released, tmp_path):
    registry = released["registry"]
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(os.path.join(ROOT, "charts"), project / "charts", ignore=shutil.ignore_patterns("*.tgz"))
    values = project / "charts" / "functionfuse-minio" / "values.yaml"
    values.write_text(values.read_text().replace("pullPolicy: IfNotPresent", "pullPolicy: Always", 1))
    packages = rel.package_charts(str(project), str(tmp_path / "out"), image_repository=None, helm=HELM)
    minio = [p for p in packages if "functionfuse-minio-" in p]
    target = f"{registry.address}/{NAMESPACE}"
    with pytest.raises(rel.ReleaseError, match="already published with other content"):
        rel.publish_charts(minio, target, helm=HELM, plain_http=True)


@pytest.mark.slow
def test_chart_credentials_come_from_the_environment(tmp_path, monkeypatch):
    """Against a registry that asks for credentials: refused without them, pushed with
    $FUNCTIONFUSE_REGISTRY_USERNAME/PASSWORD, and nothing of them left in a file."""
    from functionfuse.kit.registry import LocalRegistry, RegistryError

    if HELM is None:
        pytest.skip("helm is not installed")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("HELM_REGISTRY_CONFIG", "DOCKER_CONFIG", "FUNCTIONFUSE_REGISTRY_USERNAME", "FUNCTIONFUSE_REGISTRY_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    try:
        registry = LocalRegistry(users={"ci": "s3cr3t-pw"}).start()
    except RegistryError as exc:
        pytest.skip(f"no local registry: {exc}")
    try:
        target = f"{registry.address}/{NAMESPACE}"
        code, _ = cli("release", target, "--steps", "charts", "--json")
        assert code == 1
        monkeypatch.setenv("FUNCTIONFUSE_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("FUNCTIONFUSE_REGISTRY_PASSWORD", "s3cr3t-pw")
        code, out = cli("release", target, "--steps", "charts", "--json")
        assert code == 0, out
        assert {a["action"] for a in json.loads(out)["artifacts"]} == {"pushed"}
        assert registry.tags(f"{NAMESPACE}/charts/functionfuse", auth=("ci", "s3cr3t-pw")) == [__version__]
        token = base64.b64encode(b"ci:s3cr3t-pw")

        def holds_secret(path: str) -> bool:
            with open(path, "rb") as f:
                body = f.read()
            return b"s3cr3t-pw" in body or token in body

        files = glob.glob(str(tmp_path / "**" / "*"), recursive=True) + glob.glob(os.path.join(ROOT, "build", "release", "**"), recursive=True)
        leaked = [p for p in files if os.path.isfile(p) and holds_secret(p)]
        assert leaked == []
    finally:
        registry.stop()
