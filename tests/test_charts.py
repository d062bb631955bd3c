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


SECRET_ENV = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL|AUTH)", re.I)
#: settings whose names look like credentials but hold none (names of Secrets and keys)
NOT_SECRETS = {
    "FUNCTIONFUSE_S3_SECRET",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY",
}
#: the Secrets the charts generate (random content, kept across upgrades with lookup):
#: the S3 store's root credentials, the Ray token, the Prefect API auth string
GENERATED_SECRETS = re.compile(r"(functionfuse-minio|^s3|functionfuse-ray|functionfuse-prefect-api-auth)$")


@pytest.mark.parametrize("chart,name,files", CASES)
def test_no_credentials_in_plain_values(charts, chart, name, files):
    """Credentials reach pods only through Secrets; the only Secrets rendered are the ones
    the charts generate with random content (no default password anywhere)."""
    docs = render(charts, chart, files)
    for obj in docs:
        for where, spec in pod_specs(obj):
            for c in spec.get("initContainers", []) + spec["containers"]:
                for env in c.get("env", []):
                    if SECRET_ENV.search(env["name"]) and env["name"] not in NOT_SECRETS:
                        assert "value" not in env, f"{where}/{c['name']}: {env['name']} is a plain value, not a secretKeyRef"
        if obj["kind"] == "Secret":
            assert GENERATED_SECRETS.search(obj["metadata"]["name"]), f"unexpected Secret {obj['metadata']['name']}"
            assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # generated credentials differ between two renders: they are random, not defaults
    again = {d["metadata"]["name"]: d["data"] for d in render(charts, chart, files) if d["kind"] == "Secret"}
    first = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "Secret"}
    assert set(first) == set(again)
    for secret, data in first.items():
        for key, value in data.items():
            assert value != again[secret][key], f"Secret {secret} key {key} is the same in two renders: not random"


# -- the RayCluster -------------------------------------------------------------------------------
def rayclusters(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] == "RayCluster"]


RAY_CASES = [c for c in CASES if c.values[0] in ("functionfuse-ray", "functionfuse") and c.values[1] != "no-ray-values"]


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
    assert {"RayCluster", "Deployment", "Service", "Secret", "Job", "ConfigMap", "ServiceAccount", "NetworkPolicy"} <= set(kinds)
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "ff-functionfuse-minio"]
    (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "ff-functionfuse-minio"]
    (rc,) = rayclusters(docs)
    env = {e["name"]: e for e in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == f"http://{svc['metadata']['name']}.functionfuse.svc:9000"
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


@pytest.mark.parametrize("part", SUBCHARTS)
def test_umbrella_parts_can_be_turned_off(charts, part):
    def sources(docs: list[dict]) -> set[str]:
        return {d["metadata"]["labels"].get("app.kubernetes.io/name") for d in docs}

    assert part in sources(render(charts, "functionfuse"))
    sets = [f"{part}.enabled=false"]
    if part == "functionfuse-minio":  # the other parts then need an external store
        sets += ["global.s3.endpoint=https://s3.example.com", "global.s3.existingSecret=s3-credentials"]
    assert part not in sources(render(charts, "functionfuse", sets=sets))


# -- the umbrella's wiring under every documented override ---------------------------------------
UMBRELLA_SETS = [pytest.param(name, files, id=name) for name, files in value_sets("functionfuse")]
NAMESPACE = "functionfuse"
#: Secrets a values file tells the user to create before the install (name: keys)
PREREQUISITE_SECRETS = {
    "existing-secret-values": {"functionfuse-s3": {"ak", "sk"}},
    "external-s3-values": {"aws-s3-credentials": {"accessKey", "secretKey"}},
}
#: the S3 endpoint every part must use, per values file
EXPECTED_ENDPOINT = {
    "store-port-values": f"http://ff-functionfuse-minio.{NAMESPACE}.svc:9100",
    "fullname-values": f"http://s3.{NAMESPACE}.svc:9000",
    "external-s3-values": "https://s3.eu-west-1.amazonaws.com",
}


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def prefect_job_template(docs: list[dict]) -> dict | None:
    found = [d for d in docs if d["kind"] == "ConfigMap" and "baseJobTemplate.json" in d.get("data", {})]
    return json.loads(found[0]["data"]["baseJobTemplate.json"]) if found else None


def s3_uses(docs: list[dict]) -> list[tuple[str, str, str | None, tuple[str, str] | None]]:
    """(where, endpoint, secret, (access key key, secret key key)) of every S3 client the render configures."""
    uses = []
    specs = [pair for obj in docs for pair in pod_specs(obj)]
    template = prefect_job_template(docs)
    if template:
        specs.append(("prefect flow-run Job", template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]))
    for where, spec in specs:
        for c in containers(spec):
            env = {e["name"]: e for e in c.get("env", [])}
            endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("S3_ENDPOINT") or {}).get("value")
            if endpoint is None:
                continue
            keys = [env[k]["valueFrom"]["secretKeyRef"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k in env]
            secret = keys[0]["name"] if keys else None
            assert all(k["name"] == secret for k in keys), f"{where}/{c['name']}: the two keys come from two Secrets"
            uses.append((f"{where}/{c['name']}", endpoint, secret, (keys[0]["key"], keys[1]["key"]) if keys else None))
    for cm in docs:
        if cm["kind"] != "ConfigMap":
            continue
        data = cm.get("data", {})
        if "FUNCTIONFUSE_S3_ENDPOINT" in data:
            uses.append((f"ConfigMap/{cm['metadata']['name']}", data["FUNCTIONFUSE_S3_ENDPOINT"], data["FUNCTIONFUSE_S3_SECRET"] or None,
                         (data["FUNCTIONFUSE_S3_ACCESS_KEY_KEY"], data["FUNCTIONFUSE_S3_SECRET_KEY_KEY"])))
        if "providers" in data:
            default = yaml.safe_load(data["providers"])["s3"]["default"]
            scheme = "http" if default["disableSSL"] else "https"
            ref = default["credentials"].get("secretRef")
            uses.append((f"ConfigMap/{cm['metadata']['name']} providers", f"{scheme}://{default['endpoint']}",
                         ref["secretName"] if ref else None, (ref["accessKeyKey"], ref["secretKeyKey"]) if ref else None))
    return uses


def service_reaches_a_pod(docs: list[dict], name: str, port: int) -> bool:
    """A Service *name* in the render exposes *port*, and its target port is a container port
    of a pod (Deployment) it selects."""
    for svc in docs:
        if svc["kind"] != "Service" or svc["metadata"]["name"] != name:
            continue
        (sp,) = [p for p in svc["spec"]["ports"] if p["port"] == port] or [None]
        if sp is None:
            return False
        for obj in docs:
            if obj["kind"] != "Deployment":
                continue
            labels = obj["spec"]["template"]["metadata"]["labels"]
            if all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
                ports = [p for c in obj["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
                if any(sp["targetPort"] in (p.get("name"), p["containerPort"]) for p in ports):
                    return True
    return False


@pytest.mark.parametrize("name,files", UMBRELLA_SETS)
def test_umbrella_points_every_part_at_objects_that_exist(charts, name, files):
    """Every S3 client (Ray, Prefect server/worker/flow runs, KFP settings and launcher config,
    the bucket job) uses one endpoint and one Secret, and they exist: a rendered Service that
    reaches the store's container port (or the external endpoint given), a rendered Secret
    holding the keys, or a Secret the values file declares as a prerequisite."""
    docs = render(charts, "functionfuse", files)
    secrets = {d["metadata"]["name"]: set(d["data"]) for d in docs if d["kind"] == "Secret"}
    secrets.update(PREREQUISITE_SECRETS.get(name, {}))
    uses = s3_uses(docs)
    assert len(uses) >= 3, uses
    endpoints = {u[1] for u in uses}
    assert len(endpoints) == 1, f"the parts use different S3 endpoints: {uses}"
    (endpoint,) = endpoints
    assert endpoint == EXPECTED_ENDPOINT.get(name, f"http://ff-functionfuse-minio.{NAMESPACE}.svc:9000")
    m = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", endpoint)
    if m:
        assert m.group(2) == NAMESPACE
        assert service_reaches_a_pod(docs, m.group(1), int(m.group(3))), f"no Service {m.group(1)}:{m.group(3)} reaches the store"
    for where, _, secret, keys in uses:
        assert secret is not None, f"{where}: no credentials"
        assert secret in secrets, f"{where}: Secret {secret!r} is neither rendered nor a declared prerequisite"
        assert set(keys) <= secrets[secret], f"{where}: Secret {secret!r} has no keys {keys}"


@pytest.mark.parametrize(
    "sets,message",
    [
        (["functionfuse-minio.service.port=9100"], "global.s3.store.port=9100"),
        (["functionfuse-minio.fullnameOverride=s3"], "global.s3.store.fullnameOverride=s3"),
        (["functionfuse-minio.auth.existingSecret=mine"], "global.s3.existingSecret=mine"),
        (["functionfuse-minio.enabled=false"], "global.s3.endpoint"),
    ],
    ids=["port", "fullname", "secret", "store-off"],
)
def test_umbrella_refuses_overrides_the_other_parts_cannot_follow(charts, sets, message):
    args = ["template", "ff", os.path.join(charts, "functionfuse")] + [a for s in sets for a in ("--set", s)]
    proc = helm(*args, check=False)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert message in proc.stderr


def images(docs: list[dict]) -> set[str]:
    found = {c["image"] for obj in docs for _, spec in pod_specs(obj) for c in containers(spec)}
    found |= {d["data"]["FUNCTIONFUSE_KFP_IMAGE"] for d in docs if d["kind"] == "ConfigMap" and "FUNCTIONFUSE_KFP_IMAGE" in d["data"]}
    template = prefect_job_template(docs)
    if template:
        found.add(template["variables"]["properties"]["image"]["default"])
    return found


@pytest.mark.parametrize("name,files", UMBRELLA_SETS)
def test_every_umbrella_image_is_released_or_pinned_by_digest(charts, name, files):
    from functionfuse._version import __version__
    from functionfuse.kit.release import DEFAULT_IMAGE_REGISTRY

    registry = "localhost:5001" if name == "kind-values" else DEFAULT_IMAGE_REGISTRY
    found = images(render(charts, "functionfuse", files))
    ours = {i for i in found if re.fullmatch(rf"{re.escape(registry)}/functionfuse:{re.escape(__version__)}-py311(-ray|-prefect|-kfp)?", i)}
    others = found - ours
    assert all(re.search(r"@sha256:[0-9a-f]{64}$", i) for i in others), f"neither released nor pinned by digest: {others}"
    if name not in ("no-ray-values", "no-prefect-values", "no-kfp-values", "external-s3-values"):
        assert len(ours) == 4, ours


def test_one_global_registry_and_version_move_every_functionfuse_image(charts):
    found = images(render(charts, "functionfuse", sets=["global.image.registry=registry.example.com:5000/team",
                                                        "global.image.version=1.2.3", "functionfuse-prefect.worker.enabled=true"]))
    ours = {i for i in found if "@sha256:" not in i}
    assert ours == {f"registry.example.com:5000/team/functionfuse:1.2.3-py311{s}" for s in ("", "-ray", "-prefect", "-kfp")}
    assert {i for i in found if "@sha256:" in i} == {
        "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z@sha256:14cea493d9a34af32f524e538b8346cf79f3321eff8e708c1e2960462bd8936e"}


# -- KFP: KFP's own ConfigMap is left alone; the launcher settings and what KFPWorkflow reads ---------
@pytest.mark.parametrize("sets", [[], ["functionfuse-kfp.fullnameOverride=kfp"]], ids=["default", "fullname-kfp"])
def test_kfp_settings_never_collide_with_kfps_own_configmap(charts, sets):
    docs = render(charts, "functionfuse", sets=sets)
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    assert "kfp-launcher" not in names
    (launcher,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("functionfuse.io/kfp-launcher") == "v1"]
    assert set(launcher["data"]) == {"defaultPipelineRoot", "providers"}
    (settings,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("functionfuse.io/kfp-settings") == "v1"]
    assert settings["data"]["FUNCTIONFUSE_KFP_PIPELINE_ROOT"] == launcher["data"]["defaultPipelineRoot"] == "s3://functionfuse/pipeline-root"
    default = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]
    assert default["endpoint"] == f"ff-functionfuse-minio.{NAMESPACE}.svc:9000" and default["disableSSL"] is True
    assert default["forcePathStyle"] is True
    assert default["credentials"] == {"fromEnv": False, "secretRef": {
        "secretName": "ff-functionfuse-minio", "accessKeyKey": "accessKey", "secretKeyKey": "secretKey"}}
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == settings["data"]["FUNCTIONFUSE_KFP_SERVICE_ACCOUNT"]]


def test_kfp_settings_carry_every_key_kfpworkflow_reads(charts):
    docs = render(charts, "functionfuse-kfp", ["example-values.yaml"])
    (settings,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings")]
    assert settings["data"] == {
        "FUNCTIONFUSE_KFP_IMAGE": "127.0.0.1:5001/functionfuse:0.1.0-py311-kfp",
        "FUNCTIONFUSE_STORAGE": "s3://mlpipeline/functionfuse",
        "FUNCTIONFUSE_S3_ENDPOINT": "http://seaweedfs.kubeflow:9000",
        "FUNCTIONFUSE_S3_SECRET": "mlpipeline-minio-artifact",
        "FUNCTIONFUSE_S3_ACCESS_KEY_KEY": "accesskey",
        "FUNCTIONFUSE_S3_SECRET_KEY_KEY": "secretkey",
        "FUNCTIONFUSE_KFP_SERVICE_ACCOUNT": "functionfuse-steps",
        "FUNCTIONFUSE_KFP_IMAGE_PULL_SECRET": "registry-credentials",
        "FUNCTIONFUSE_KFP_PIPELINE_ROOT": "s3://mlpipeline/v2/artifacts",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # AWS without an endpoint and without a Secret: the launcher takes the pods' own identity
    docs = render(charts, "functionfuse-kfp", sets=["pipelineRoot.root=s3://bucket/root"])
    (launcher,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-launcher-config")]
    default = yaml.safe_load(launcher["data"]["providers"])["s3"]["default"]
    assert default == {"endpoint": "s3.amazonaws.com", "region": "us-east-1", "disableSSL": False, "credentials": {"fromEnv": True}}


# -- Prefect: flow-run Jobs from the chart's base job template -----------------------------------------
def test_prefect_flow_run_jobs_run_functionfuse_with_storage_and_a_restricted_context(charts):
    """The work pool's base job template, filled with its own defaults by Prefect's templating
    (what the worker does), gives a valid batch/v1 Job on the functionfuse Prefect image, with
    the storage settings and credentials, non-root, read-only root, requests and limits."""
    templating = pytest.importorskip("prefect.utilities.templating", reason="prefect is needed: pip install -r requirements/prefect.txt")
    docs = render(charts, "functionfuse", ["kind-values.yaml"])
    (worker,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("prefect-worker")]
    template = prefect_job_template(docs)
    volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    assert volumes["job-template"]["configMap"]["name"] in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    assert "--base-job-template /etc/functionfuse/baseJobTemplate.json" in worker["spec"]["template"]["spec"]["containers"][0]["args"][0]
    variables = template["variables"]["properties"]
    values = {k: v["default"] for k, v in variables.items() if "default" in v}
    # the worker turns the command into a list (KubernetesWorkerJobConfiguration.prepare_for_flow_run)
    values.update(name="flow-run-1", command=["prefect", "flow-run", "execute"])
    job = templating.apply_values(template["job_configuration"], values)["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("completions"), pod.pop("parallelism")) == (1, 1)  # prefect-kubernetes requires them there
    job["metadata"]["name"] = job["metadata"].pop("generateName") + "x"
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    (c,) = pod["containers"]
    assert c["image"] == "localhost:5001/functionfuse:0.1.0-py311-prefect"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == f"http://ff-functionfuse-minio.{NAMESPACE}.svc:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "ff-functionfuse-minio", "key": "accessKey"}
    # the worker hands the API auth string to flow runs as a secretKeyRef, not a plain value
    wenv = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    secret = wenv["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"]["value"]
    assert wenv["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {
        "name": secret, "key": wenv["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"]["value"]}
    assert secret in {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}


def test_a_prefect_server_takes_the_work_pool_template_the_worker_sets(charts, tmp_path):
    """A real Prefect server (127.0.0.1, basic auth on as the chart sets it) accepts the base job
    template through the worker's own start script, twice (create, then overwrite on a restart),
    stores it as rendered, and refuses a wrong auth string."""
    pytest.importorskip("prefect", reason="prefect is needed: pip install -r requirements/prefect.txt")
    import base64
    import socket
    import time
    import urllib.error
    import urllib.request

    docs = render(charts, "functionfuse-prefect", sets=["worker.enabled=true"])
    template = prefect_job_template(docs)
    (tmp_path / "baseJobTemplate.json").write_text(json.dumps(template))
    (worker,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-worker")]
    container = worker["spec"]["template"]["spec"]["containers"][0]
    # the worker's script: wait for the server, create (or overwrite) the pool, start the worker
    script = container["args"][0].replace("/etc/functionfuse/baseJobTemplate.json", str(tmp_path / "baseJobTemplate.json"))
    create = script.split("\nexec prefect worker start", 1)[0]
    assert "work-pool create" in create
    pool = {e["name"]: e.get("value") for e in container["env"]}["WORK_POOL"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prefect_cli = os.path.join(os.path.dirname(sys.executable), "prefect")
    auth = "admin:only-for-this-test"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    server = subprocess.Popen([prefect_cli, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=dict(env, PREFECT_SERVER_API_AUTH_STRING=auth), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"

    def get(path: str, secret: str) -> tuple[int, bytes]:
        req = urllib.request.Request(api + path, headers={"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except OSError:  # not listening yet
            return 0, b""

    try:
        deadline = time.monotonic() + 90
        while get("/health", "")[0] != 200:  # the probes' path needs no auth
            assert time.monotonic() < deadline and server.poll() is None, "the Prefect server did not start"
            time.sleep(0.5)
        client = dict(env, PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=auth, WORK_POOL=pool,
                      PATH=os.path.dirname(prefect_cli) + os.pathsep + os.environ.get("PATH", ""))
        for _ in range(2):
            proc = subprocess.run(["sh", "-ec", create], env=client, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        status, body = get(f"/work_pools/{pool}", auth)
        assert status == 200
        stored = json.loads(body)
        assert stored["type"] == "kubernetes" and stored["base_job_template"] == template
        assert get(f"/work_pools/{pool}", "admin:wrong")[0] == 401
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- security defaults -------------------------------------------------------------------------------
def selected_by(policy: dict, labels: dict) -> bool:
    sel = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", []) if e["operator"] == "In")


def pod_labels(obj: dict) -> list[tuple[str, dict]]:
    name = obj["metadata"]["name"]
    if obj["kind"] in POD_KINDS:
        return [(f"{obj['kind']}/{name}", obj["spec"]["template"]["metadata"]["labels"])]
    if obj["kind"] == "RayCluster":  # KubeRay adds these labels to the pods it creates
        return [(f"RayCluster/{name}/{kind}", {"ray.io/cluster": name, "ray.io/node-type": kind}) for kind in ("head", "worker")]
    return []


@pytest.mark.parametrize("chart,name,files", CASES)
def test_secure_defaults(charts, chart, name, files):
    """Read-only root filesystems, no capabilities, RuntimeDefault seccomp; every pod selected
    by a NetworkPolicy; no NodePort or LoadBalancer; Ray token auth and Prefect API auth on."""
    docs = render(charts, chart, files)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    template = prefect_job_template(docs)
    extra = []
    if template:
        spec = template["job_configuration"]["job_manifest"]["spec"]["template"]
        extra.append(("prefect flow-run Job", spec["spec"]))
        assert any(selected_by(p, spec["metadata"]["labels"]) for p in policies), "flow-run pods: no NetworkPolicy"
    for obj in docs:
        for where, spec in pod_specs(obj) + extra:
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            for c in containers(spec):
                csc = c["securityContext"]
                assert csc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}: writable root filesystem"
                assert csc["capabilities"]["drop"] == ["ALL"], f"{where}/{c['name']}: capabilities kept"
        extra = []
        for where, labels in pod_labels(obj):
            assert any(selected_by(p, labels) for p in policies), f"{where}: no NetworkPolicy selects these pods"
        if obj["kind"] == "Service":
            assert obj["spec"]["type"] == "ClusterIP", f"Service/{obj['metadata']['name']} is a {obj['spec']['type']}"
        if obj["kind"] == "RayCluster":
            assert obj["spec"]["authOptions"] == {"mode": "token", "secretName": obj["metadata"]["name"]}
            # the Secret and key KubeRay reads: authOptions.secretName (>= 1.7), the cluster's name (1.5, 1.6)
            (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == obj["metadata"]["name"]]
            assert set(secret["data"]) == {"auth_token"}
        if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith("prefect-server"):
            env = {e["name"]: e for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]}
            ref = env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] in {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"} or name == "example-values"


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
