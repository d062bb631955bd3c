"""The settings the functionfuse-kfp chart publishes, read by KFPWorkflow.

* The chart itself is rendered with the real ``helm template``, and its settings
  ConfigMap configures a workflow: the step storage and its Secret, the image pull
  Secret of every compiled step, and the ServiceAccount and pipeline root of a run
  submitted with the real ``kfp.Client`` (to :class:`kfpsupport.KFPAPIStandIn`: no KFP
  API server can run here).
* From a cluster, with the real ``kubectl`` binary: no Kubernetes API server can run
  here either, so :class:`kfpsupport.KubeAPIStandIn` answers kubectl's discovery and
  ConfigMap requests over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("kfp")

from functionfuse import workflow  # noqa: E402
from functionfuse.backends.addons._kfpstep import decode_storage  # noqa: E402
from functionfuse.backends.addons.kfpback import KFPWorkflow  # noqa: E402
from functionfuse.kit.kfpsettings import (  # noqa: E402
    LABEL,
    KFPSettingsError,
    read_cluster_settings,
    read_kfp_settings,
    read_settings_file,
)
from kfpsupport import KFPAPIStandIn, KubeAPIStandIn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts", "functionfuse-kfp")


def _helm() -> str | None:
    local = os.path.join(ROOT, ".venv", "bin", "helm")
    return local if os.access(local, os.X_OK) else shutil.which("helm")


@workflow
def add(a, b):
    return a + b


def make(name: str, **kwargs) -> KFPWorkflow:
    return KFPWorkflow(add(add(1, 2).set_name("three"), 4).set_name("seven"), workflow_name=name, **kwargs)


def render(tmp_path, *values: str, release: str = "ff-kfp", namespace: str = "kubeflow") -> tuple[str, list[dict]]:
    """``helm template`` of the chart: the file written and its objects."""
    helm = _helm()
    if helm is None:
        pytest.skip("helm is not installed: run scripts/setup-helm.sh (make test does)")
    env = dict(os.environ, HELM_CACHE_HOME=str(tmp_path / "helm-cache"), HELM_CONFIG_HOME=str(tmp_path / "helm-config"),
               HELM_DATA_HOME=str(tmp_path / "helm-data"))
    args = [helm, "template", release, CHART, "-n", namespace]
    for v in values:
        args += ["--set", v]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "rendered.yaml"
    path.write_text(proc.stdout)
    return str(path), [d for d in yaml.safe_load_all(proc.stdout) if d]


CHART_VALUES = (
    "storage.s3.endpoint=http://seaweedfs.kubeflow:9000",
    "storage.s3.existingSecret=mlpipeline-minio-artifact",
    "storage.s3.accessKeyKey=accesskey",
    "storage.s3.secretKeyKey=secretkey",
    "imagePullSecret.existingSecret=ff-registry",
)


def kube_executors(platform_doc: dict) -> dict:
    return platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_the_charts_settings_configure_the_steps_and_the_submitted_run(tmp_path):
    path, objects = render(tmp_path, *CHART_VALUES)
    # what the chart creates: the runner ServiceAccount (with the pull Secret attached)
    (account,) = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert account["imagePullSecrets"] == [{"name": "ff-registry"}]

    with KFPAPIStandIn() as api:
        wf = make("chart-settings", kfp_host=api.url)
        wf.set_fusion(False)  # one step per node: the settings must reach each of them
        settings = wf.set_cluster_settings(path)
        assert settings.service_account == account["metadata"]["name"]
        # the steps' storage: the chart's bucket/prefix at the in-cluster endpoint
        assert wf.step_storage is not None and repr(wf.step_storage) == (
            "S3Storage('s3://functionfuse/results', endpoint='http://seaweedfs.kubeflow:9000')")
        # the base image: the chart's functionfuse KFP image (the workflow chose none)
        assert wf.baseimage == settings.image and re.search(r"functionfuse:[^:]*-kfp$", wf.baseimage)
        package = wf.compile(tmp_path / "p.yaml", image="127.0.0.1:5000/functionfuse-kfp-chart-settings:abc")
        docs = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
        spec, platform = docs[0], docs[1]
        executors = kube_executors(platform)
        assert len(executors) == len(spec["deploymentSpec"]["executors"]) == 2
        for executor in executors.values():
            assert executor["imagePullSecret"] == [{"secretName": "ff-registry"}]
            # the chart's Secret and its keys reach the steps as AWS_* variables
            assert executor["secretAsEnv"] == [{"secretName": "mlpipeline-minio-artifact", "keyToEnv": [
                {"secretKey": "accesskey", "envVar": "AWS_ACCESS_KEY_ID"},
                {"secretKey": "secretkey", "envVar": "AWS_SECRET_ACCESS_KEY"}]}]
        for executor in spec["deploymentSpec"]["executors"].values():
            args = executor["container"]["args"]
            storage = decode_storage(args[args.index("--storage") + 1])
            assert storage.path == "functionfuse/results" and storage.endpoint == "http://seaweedfs.kubeflow:9000"
        wf.submit(package)
    (run,) = api.run_requests()
    assert run["service_account"] == account["metadata"]["name"]
    launcher = [o for o in objects if o["kind"] == "ConfigMap" and "defaultPipelineRoot" in (o.get("data") or {})]
    assert run["runtime_config"]["pipeline_root"] == launcher[0]["data"]["defaultPipelineRoot"] == settings.pipeline_root


def test_settings_override_nothing_chosen_and_are_overridden_by_later_calls(tmp_path):
    path, _objects = render(tmp_path, *CHART_VALUES)
    wf = make("chosen", baseimage="python:3.12-slim")
    wf.set_cluster_settings(path)
    assert wf.baseimage == "python:3.12-slim"  # chosen by the user: kept
    wf.set_service_account("my-runner")
    wf.set_image_pull_secrets([])
    wf.compile(tmp_path / "p.yaml", image="x:1")
    docs = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    assert all("imagePullSecret" not in e for e in kube_executors(docs[1]).values())
    assert wf.service_account == "my-runner"
    # a node's own pull secrets replace the workflow's for its step only
    wf.set_image_pull_secrets(["ff-registry"])
    wf.query("^seven$").set_task_args({"image_pull_secrets": ["team-registry"]})
    wf.compile(tmp_path / "q.yaml", image="x:1")
    docs = list(yaml.safe_load_all((tmp_path / "q.yaml").read_text()))
    secrets = sorted(e["imagePullSecret"][0]["secretName"] for e in kube_executors(docs[1]).values())
    assert secrets == ["ff-registry", "team-registry"]


def test_a_chart_without_a_secret_or_pull_secret_sets_neither(tmp_path):
    path, _objects = render(tmp_path, "storage.s3.endpoint=http://s3.example:9000")
    settings = read_settings_file(path)
    assert settings.s3_secret is None and settings.secret_keys() is None and settings.image_pull_secret is None
    wf = make("no-secret")
    wf.set_cluster_settings(settings)
    wf.compile(tmp_path / "p.yaml", image="x:1")
    docs = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    kube = kube_executors(docs[1]) if len(docs) > 1 else {}
    assert all("secretAsEnv" not in e and "imagePullSecret" not in e for e in kube.values())


def test_settings_files_in_each_form(tmp_path):
    data = {"FUNCTIONFUSE_STORAGE": "s3://bucket/p", "FUNCTIONFUSE_KFP_SERVICE_ACCOUNT": "runner", "OTHER": "ignored"}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(data))
    assert read_settings_file(plain).service_account == "runner"
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "namespace": "ns"}, "data": data}
    one = tmp_path / "one.yaml"
    one.write_text(yaml.safe_dump(config_map))
    assert read_settings_file(one).storage_options() == {"kind": "S3", "options": {"path": "bucket/p"}}
    listed = tmp_path / "list.json"
    labelled = {**config_map, "metadata": {"name": "t", "labels": {LABEL: "v1"}}}
    listed.write_text(json.dumps({"kind": "List", "items": [config_map, labelled]}))
    assert read_settings_file(listed).source.endswith("(?/t)")  # the labelled one of two
    assert read_settings_file(listed, name="s").source.endswith("(ns/s)")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"FUNCTIONFUSE_STORAGE": "/local/folder"}))
    with pytest.raises(KFPSettingsError, match=r"FUNCTIONFUSE_STORAGE of .* must be s3://bucket\[/prefix\]"):
        read_settings_file(bad)
    with pytest.raises(KFPSettingsError, match="Cannot read the KFP settings file"):
        read_settings_file(tmp_path / "missing.yaml")


def settings_map(name: str, namespace: str, account: str, labelled: bool = True) -> dict:
    labels = {LABEL: "v1"} if labelled else {}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "data": {"FUNCTIONFUSE_KFP_SERVICE_ACCOUNT": account, "FUNCTIONFUSE_KFP_IMAGE_PULL_SECRET": "pull"}}


@pytest.fixture
def kube(tmp_path, monkeypatch):
    """A Kubernetes API stand-in with settings ConfigMaps, and a kubeconfig (the
    current one) that points at it."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    maps = [settings_map("ff-kfp-settings", "kubeflow", "ff-runner"),
            settings_map("unrelated", "kubeflow", "nobody", labelled=False),
            settings_map("a-settings", "team", "a-runner"), settings_map("b-settings", "team", "b-runner")]
    monkeypatch.setenv("HOME", str(tmp_path))  # kubectl's discovery cache
    with KubeAPIStandIn(maps) as api:
        monkeypatch.setenv("KUBECONFIG", api.kubeconfig(str(tmp_path / "kubeconfig")))
        yield api


def test_settings_read_with_kubectl_from_a_namespace(kube):
    settings = read_cluster_settings("kubeflow")
    assert settings.source == "kubeflow/ff-kfp-settings" and settings.service_account == "ff-runner"
    assert any("labelSelector=functionfuse.io%2Fkfp-settings" in p for p in kube.requests)  # found by its label
    # NAMESPACE/NAME, through the workflow
    wf = make("from-cluster")
    wf.set_cluster_settings("team/b-settings")
    assert wf.service_account == "b-runner" and wf.image_pull_secrets == ["pull"]
    with pytest.raises(KFPSettingsError,
                       match=r"Several ConfigMaps labelled .* \(team/a-settings, team/b-settings\): name the one"):
        read_kfp_settings("team")
    with pytest.raises(KFPSettingsError, match=r"No ConfigMap labelled 'functionfuse.io/kfp-settings' in namespace "
                                               r"'empty': install the functionfuse-kfp chart there"):
        read_kfp_settings("empty")
    with pytest.raises(KFPSettingsError, match=r"kubectl could not read .*namespace 'kubeflow'.*not ?found"):
        read_cluster_settings("kubeflow", "no-such-map")


def test_a_kube_context_that_reaches_no_cluster_is_named(tmp_path, monkeypatch):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "gone", "user": {}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KFPSettingsError, match=r"kubectl could not read the KFP settings of namespace 'kubeflow' "
                                               r"\(context 'gone'\): .*127\.0\.0\.1"):
        read_cluster_settings("kubeflow", context="gone")


def test_without_kubectl_the_fix_is_named(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(KFPSettingsError, match="needs 'kubectl', which is not on PATH"):
        read_cluster_settings("kubeflow")


def test_the_example_compiles_with_the_charts_settings(tmp_path):
    path, _objects = render(tmp_path, *CHART_VALUES)
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "kfp_pipeline.py"), "--compile", str(out),
         "--cluster-settings", path], capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    kube = kube_executors(platform)
    assert len(kube) == len(spec["deploymentSpec"]["executors"])
    assert all(e["imagePullSecret"] == [{"secretName": "ff-registry"}] for e in kube.values())
    assert all(e["secretAsEnv"][0]["secretName"] == "mlpipeline-minio-artifact" for e in kube.values())
