"""The Helm charts under charts/, linted and rendered by real helm, checked offline.

Every chart is linted with ``--strict`` and rendered with its default values and with each
example file in its ``ci/`` folder. Every rendered core object is validated against the
Kubernetes 1.31 schemas (kubernetes-validate, strict: unknown fields fail); the RayCluster
against KubeRay's own CRD schema at the pinned tag (functionfuse.kit.clustermodel), its pod
templates as core PodTemplates; and the kit's rules: pods run as non-root, every container has CPU and
memory requests and limits, no credential is written in plain values.

helm comes from scripts/setup-helm.sh (``.venv/bin/helm``) or PATH.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read rendered charts: pip install -r requirements/kit.txt")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is needed: pip install -r requirements/kit.txt"
)
jsonschema = pytest.importorskip("jsonschema")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARTS = os.path.join(ROOT, "charts")
SUBCHARTS = ["functionfuse-ray", "functionfuse-prefect", "functionfuse-minio", "functionfuse-kfp"]
ALL_CHARTS = SUBCHARTS + ["functionfuse"]
K8S_VERSION = "1.31.0"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def _helm_binary() -> str | None:
    local = os.path.join(ROOT, ".venv", "bin", "helm")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("helm")


HELM = _helm_binary()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm is not installed: run scripts/setup-helm.sh (make test does)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    assert HELM is not None
    env = dict(os.environ, HELM_CACHE_HOME="/tmp/functionfuse-helm/cache", HELM_CONFIG_HOME="/tmp/functionfuse-helm/config",
               HELM_DATA_HOME="/tmp/functionfuse-helm/data")
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def charts(tmp_path_factory) -> str:
    """A copy of charts/ with the umbrella's local dependencies built (helm dependency build)."""
    dest = str(tmp_path_factory.mktemp("charts") / "charts")
    shutil.copytree(CHARTS, dest, ignore=shutil.ignore_patterns("*.tgz"))
    helm("dependency", "build", os.path.join(dest, "functionfuse"))
    return dest


def value_sets(chart: str) -> list[tuple[str, list[str]]]:
    sets = [("default", [])]
    for path in sorted(glob.glob(os.path.join(CHARTS, chart, "ci", "*.yaml"))):
        sets.append((os.path.basename(path)[:-5], [os.path.basename(path)]))
    return sets


CASES = [pytest.param(chart, name, files, id=f"{chart}-{name}") for chart in ALL_CHARTS for name, files in value_sets(chart)]


def render(charts: str, chart: str, files: list[str] = (), sets: list[str] = ()) -> list[dict]:
    args = ["template", "ff", os.path.join(charts, chart), "--namespace", "functionfuse"]
    for f in files:
        args += ["-f", os.path.join(charts, chart, "ci", f)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod an object creates."""
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    if kind in POD_KINDS:
        return [(f"{kind}/{name}", obj["spec"]["template"]["spec"])]
    if kind == "CronJob":
        return [(f"{kind}/{name}", obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "RayCluster":
        specs = [(f"RayCluster/{name}/head", obj["spec"]["headGroupSpec"]["template"]["spec"])]
        specs += [
            (f"RayCluster/{name}/{g['groupName']}", g["template"]["spec"]) for g in obj["spec"].get("workerGroupSpecs", [])
        ]
        return specs
    return []


# -- lint and render -----------------------------------------------------------------------------
@pytest.mark.parametrize("chart,name,files", CASES)
def test_chart_lints_strict(charts, chart, name, files):
    args = ["lint", "--strict", os.path.join(charts, chart)]
    for f in files:
        args += ["-f", os.path.join(charts, chart, "ci", f)]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("chart,name,files", CASES)
def test_rendered_objects_validate_against_kubernetes_1_31(charts, chart, name, files):
    docs = render(charts, chart, files)
    assert docs, f"{chart} rendered nothing"
    core = [d for d in docs if d["kind"] != "RayCluster"]
    for obj in core:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']} is not valid Kubernetes {K8S_VERSION}: {exc}") from None


@pytest.mark.parametrize("chart,name,files", CASES)
def test_pods_run_as_non_root_with_requests_and_limits(charts, chart, name, files):
    for obj in render(charts, chart, files):
        for where, spec in pod_specs(obj):
            psc = spec.get("securityContext", {})
            assert psc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot is not true"
            assert psc.get("runAsUser", 0) > 0, f"{where}: pod runs as uid 0"
            for c in spec.get("initContainers", []) + spec["containers"]:
                csc = c.get("securityContext", {})
                assert csc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: privilege escalation allowed"
                assert csc.get("runAsUser", 1) != 0, f"{where}/{c['name']}: container runs as uid 0"
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        assert r in res.get(part, {}), f"{where}/{c['name']}: no {r} {part}"


SECRET_ENV = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL)", re.I)
#: settings whose names look like credentials but hold none
NOT_SECRETS = {"FUNCTIONFUSE_S3_SECRET", "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY"}


@pytest.mark.parametrize("chart,name,files", CASES)
def test_no_credentials_in_plain_values(charts, chart, name, files):
    """Credentials reach pods only through Secrets; the only Secret rendered is the one
    functionfuse-minio generates with random keys."""
    docs = render(charts, chart, files)
    for obj in docs:
        for where, spec in pod_specs(obj):
            for c in spec.get("initContainers", []) + spec["containers"]:
                for env in c.get("env", []):
                    if SECRET_ENV.search(env["name"]) and env["name"] not in NOT_SECRETS:
                        assert "value" not in env, f"{where}/{c['name']}: {env['name']} is a plain value, not a secretKeyRef"
        if obj["kind"] == "Secret":
            assert obj["metadata"]["name"].endswith("functionfuse-minio"), f"unexpected Secret {obj['metadata']['name']}"
    # generated credentials differ between two renders: they are random, not defaults
    if chart in ("functionfuse-minio", "functionfuse"):
        again = [d for d in render(charts, chart, files) if d["kind"] == "Secret"]
        first = [d for d in docs if d["kind"] == "Secret"]
        assert len(first) == len(again)
        if first:
            assert first[0]["data"] != again[0]["data"]


# -- the RayCluster -------------------------------------------------------------------------------
def rayclusters(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "RayCluster"]


RAY_CASES = [c for c in CASES if c.values[0] in ("functionfuse-ray", "functionfuse")]


@pytest.mark.parametrize("chart,name,files", RAY_CASES)
def test_raycluster_has_the_fields_kuberay_v1_requires(charts, chart, name, files):
    from functionfuse.kit.clustermodel import check_schemas

    (rc,) = rayclusters(render(charts, chart, files))
    # KubeRay's own CRD schema at the pinned tag (functionfuse/kit/clustermodel/data)
    assert check_schemas([rc], "functionfuse") == []
    spec = rc["spec"]
    # what the KubeRay operator checks beyond the schema
    groups = spec.get("workerGroupSpecs", [])
    assert len({g["groupName"] for g in groups}) == len(groups), "worker group names must be unique"
    for g in groups:
        assert g["minReplicas"] <= g["maxReplicas"], f"group {g['groupName']}: minReplicas > maxReplicas"
        if "replicas" in g:
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"group {g['groupName']}: replicas out of bounds"
    # the Ray container is the first one; its image is the functionfuse Ray image
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert re.search(r":\d+\.\d+\.\d+-py3\d+-ray$", head["image"]), head["image"]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 10001}
    # pod templates are valid core v1 pod templates
    for where, template in [("head", spec["headGroupSpec"]["template"])] + [(g["groupName"], g["template"]) for g in groups]:
        pt = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"ray-{where}"}, "template": template}
        try:
            kubernetes_validate.validate(pt, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"RayCluster {where} pod template is not a valid PodTemplate: {exc}") from None


def test_raycluster_custom_resources_and_storage_secret(charts):
    (rc,) = rayclusters(render(charts, "functionfuse-ray", ["example-values.yaml"]))
    head = rc["spec"]["headGroupSpec"]
    # KubeRay passes rayStartParams["resources"] to `ray start --resources=...` through a shell
    assert head["rayStartParams"]["resources"] == '"{\\"_disk\\":1}"'
    assert json.loads(json.loads(head["rayStartParams"]["resources"])) == {"_disk": 1}
    model = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}["model"]
    assert json.loads(json.loads(model["rayStartParams"]["resources"])) == {"_model": 1}
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    env = {e["name"]: e for e in head["template"]["spec"]["containers"][0]["env"]}
    assert env["FUNCTIONFUSE_STORAGE"]["value"] == "s3://experiments/classifier"
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://ff-minio:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "ff-minio", "key": "accessKey"}


def test_ray_service_selects_the_head_pod(charts):
    docs = render(charts, "functionfuse-ray")
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    (rc,) = rayclusters(docs)
    assert svc["spec"]["selector"] == {"ray.io/cluster": rc["metadata"]["name"], "ray.io/node-type": "head"}
    assert {p["port"] for p in svc["spec"]["ports"]} == {8265, 10001, 6379}


# -- the umbrella ---------------------------------------------------------------------------------
def test_umbrella_wires_storage_to_the_generated_secret(charts):
    docs = render(charts, "functionfuse")
    kinds = sorted({d["kind"] for d in docs})
    assert {"RayCluster", "Deployment", "Service", "Secret", "Job", "ConfigMap", "ServiceAccount"} <= set(kinds)
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ff-functionfuse-minio"]
    (rc,) = rayclusters(docs)
    env = {e["name"]: e for e in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == f"http://{svc['metadata']['name']}:9000"
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


@pytest.mark.parametrize("part", SUBCHARTS)
def test_umbrella_parts_can_be_turned_off(charts, part):
    def sources(docs: list[dict]) -> set[str]:
        return {d["metadata"]["labels"].get("app.kubernetes.io/name") for d in docs}

    assert part in sources(render(charts, "functionfuse"))
    assert part not in sources(render(charts, "functionfuse", sets=[f"{part}.enabled=false"]))


# -- values: schema and documentation -------------------------------------------------------------
@pytest.mark.parametrize(
    "chart,setting,message",
    [
        ("functionfuse-ray", "workerGroups[0].minReplicas=-1", "minReplicas"),
        ("functionfuse-ray", "image.pullPolicy=Sometimes", "pullPolicy"),
        ("functionfuse-ray", "podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
        ("functionfuse-minio", "resources.limits=null", "limits"),
        ("functionfuse-prefect", "worker.type=docker", "type"),
        ("functionfuse-kfp", "storage.s3.bucket=Not_A_Bucket", "bucket"),
        ("functionfuse", "functionfuse-ray.enabled=maybe", "enabled"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_values_schema_rejects_bad_values(charts, chart, setting, message):
    proc = helm("template", "ff", os.path.join(charts, chart), "--set", setting, check=False)
    assert proc.returncode != 0, f"--set {setting} was accepted"
    assert message in proc.stderr


def test_external_postgres_needs_a_secret(charts):
    proc = helm("template", "ff", os.path.join(charts, "functionfuse-prefect"), "--set", "database.external.enabled=true", check=False)
    assert proc.returncode != 0 and "existingSecret" in proc.stderr


def _leaf_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in values.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and k not in ("resources", "requests", "limits", "customResources", "rayStartParams"):
            keys += _leaf_keys(v, path + ".")
        else:
            keys.append(path)
    return keys


@pytest.mark.parametrize("chart", ALL_CHARTS)
def test_every_value_is_documented_and_in_the_schema(chart):
    with open(os.path.join(CHARTS, chart, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(os.path.join(CHARTS, chart, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(CHARTS, chart, "values.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)
    if chart == "functionfuse":
        keys = list(values)  # the subcharts' READMEs document their keys
    else:
        keys = [k for k in _leaf_keys(values) if k not in ("global", "enabled")]
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"{chart}/README.md does not document {missing}"
    top = set(schema.get("properties", {}))
    assert set(values) <= top, f"{chart}/values.schema.json misses {sorted(set(values) - top)}"


@pytest.mark.parametrize("chart", ALL_CHARTS)
def test_chart_packages(charts, chart, tmp_path):
    out = helm("package", os.path.join(charts, chart), "--destination", str(tmp_path)).stdout
    assert re.search(rf"{chart}-0\.1\.0\.tgz", out)


def test_chart_versions_follow_the_package_version():
    sys.path.insert(0, ROOT)
    from functionfuse._version import __version__

    for chart in ALL_CHARTS:
        with open(os.path.join(CHARTS, chart, "Chart.yaml")) as f:
            meta = yaml.safe_load(f)
        assert meta["apiVersion"] == "v2"
        assert meta["appVersion"] == __version__, f"{chart}: appVersion {meta['appVersion']} != functionfuse {__version__}"
