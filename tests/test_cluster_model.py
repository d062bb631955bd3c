"""The offline cluster-model checks (functionfuse.kit.clustermodel) over the rendered charts.

The umbrella is rendered by real helm into ``kubeflow`` (docs/deploy.md) with its default
values, with each documented override (a values file in charts/functionfuse/ci/ each), with
each part off and with every name overridden; each subchart alone with its own ci/ files.
Every check must pass on each. Then each check is shown to catch its defect:
a temporary copy of charts/ gets the defect back (a template or a value edited), is
rendered, and the check must fail with a message that names the object.

The facts the checks rest on (which objects KubeRay and KFP create, their CRD schemas,
KFP's launcher types) are read from the pinned upstream tags; a test here fails when a pin
in manifests/ moves without them.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import shutil
import subprocess
from typing import Sequence

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed: pip install -r requirements/kit.txt")
pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is needed: pip install -r requirements/kit.txt")
pytest.importorskip("jsonschema")

from functionfuse.kit import clustermodel as cm  # noqa: E402
from functionfuse.kit.release import DEFAULT_IMAGE_REGISTRY  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARTS = os.path.join(ROOT, "charts")
UMBRELLA = "functionfuse"
SUBCHARTS = ["functionfuse-ray", "functionfuse-prefect", "functionfuse-minio", "functionfuse-kfp"]
NAMESPACE = "kubeflow"  # where docs/deploy.md installs the umbrella
#: the documented overrides of the umbrella, one values file each in charts/functionfuse/ci/
OVERRIDE_FILES = ["existing-secret-values.yaml", "store-port-values.yaml", "fullname-values.yaml", "external-s3-values.yaml",
                  "no-ray-values.yaml", "no-prefect-values.yaml", "no-kfp-values.yaml"]
#: every name a user may override at once (fullname-values.yaml renames the store only)
EVERY_FULLNAME = {
    "global": {"s3": {"store": {"fullnameOverride": "s3"}}},
    "functionfuse-ray": {"fullnameOverride": "ray"},
    "functionfuse-prefect": {"fullnameOverride": "prefect"},
    "functionfuse-kfp": {"fullnameOverride": "kfp"},
}


#: TEMPORARY: configurations that fail a check on a finding the charts have not fixed yet
#: (/tmp/ff/findings.md); strict, so each entry must go the moment its finding is fixed
OPEN_FINDINGS: dict[str, str] = {}


def case(id_: str, *values):
    marks = [pytest.mark.xfail(strict=True, reason=OPEN_FINDINGS[id_])] if id_ in OPEN_FINDINGS else []
    return pytest.param(*values, id=id_, marks=marks)


def _helm_binary() -> str | None:
    local = os.path.join(ROOT, ".venv", "bin", "helm")
    return local if os.access(local, os.X_OK) else shutil.which("helm")


HELM = _helm_binary()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm is not installed: run scripts/setup-helm.sh (make test does)")
HELM_ENV = dict(os.environ, HELM_CACHE_HOME="/tmp/functionfuse-helm/cache", HELM_CONFIG_HOME="/tmp/functionfuse-helm/config",
                HELM_DATA_HOME="/tmp/functionfuse-helm/data")


def helm(*args: str) -> str:
    assert HELM is not None
    proc = subprocess.run([HELM, *args], capture_output=True, text=True, env=HELM_ENV, stdin=subprocess.DEVNULL, timeout=180)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def copy_charts(dest: str) -> str:
    shutil.copytree(CHARTS, dest, ignore=shutil.ignore_patterns("*.tgz"))
    return dest


def build(charts: str) -> None:
    helm("dependency", "build", os.path.join(charts, UMBRELLA))


@pytest.fixture(scope="module")
def charts(tmp_path_factory) -> str:
    dest = copy_charts(str(tmp_path_factory.mktemp("cm") / "charts"))
    build(dest)
    return dest


def render(charts: str, chart: str = UMBRELLA, values: Sequence[str] = (), sets: Sequence[str] = (), namespace: str = NAMESPACE) -> list[dict]:
    args = ["template", "ff", os.path.join(charts, chart), "--namespace", namespace]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args)) if isinstance(d, dict)]


def prerequisites(values: dict | None = None, namespace: str = NAMESPACE) -> cm.Inventory:
    """What the documented steps create before the chart: namespaces ray-system and
    kubeflow, the KubeRay and KFP manifests' objects, and the Secret the values name
    (global.s3.existingSecret: the values file's comment tells the user to create it)."""
    inv = cm.prerequisites(namespaces=("ray-system", "kubeflow", namespace))  # helm --create-namespace
    s3 = ((values or {}).get("global") or {}).get("s3") or {}
    if s3.get("existingSecret"):
        inv.add(cm.ObjectKey("Secret", namespace, s3["existingSecret"]),
                keys=[s3.get("accessKeyKey", "accessKey"), s3.get("secretKeyKey", "secretKey")])
    return inv


def registries(values: dict | None) -> set[str]:
    """The registries a release was published to for *values*: each ``image.registry`` they set
    (global.image.registry, a subchart's image.registry), else the release's default."""
    found = {v["registry"] for _, k, v in cm.objects.walk(values or {}) if k == "image" and isinstance(v, dict) and v.get("registry")}
    return found or {DEFAULT_IMAGE_REGISTRY}


def run_checks(objs, *, values: dict | None = None, namespace: str = NAMESPACE, checks=cm.CHECKS):
    """Every check over *objs*; images published by a release to the registries *values* name."""
    published = set().union(*(cm.published_images(r) for r in registries(values)))
    return cm.check_objects(objs, namespace, published=published, prerequisite=prerequisites(values, namespace), checks=checks)


def read_values(path: str | None) -> dict:
    if not path:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def report(findings) -> str:
    return "\n".join(str(f) for f in findings)


# -- every documented configuration passes every check --------------------------------------------
UMBRELLA_CASES = ["default"] + sorted(os.path.basename(p) for p in glob.glob(os.path.join(CHARTS, UMBRELLA, "ci", "*.yaml")))


def test_every_documented_override_has_a_values_file():
    missing = [f for f in OVERRIDE_FILES if not os.path.isfile(os.path.join(CHARTS, UMBRELLA, "ci", f))]
    assert not missing, f"charts/functionfuse/ci/ has no values file for the documented overrides {missing}"


@pytest.mark.parametrize("case", [case(f"umbrella-{c}", c) for c in UMBRELLA_CASES])
def test_umbrella_passes_every_check(charts, case):
    path = None if case == "default" else os.path.join(charts, UMBRELLA, "ci", case)
    objs = render(charts, values=[path] if path else [])
    findings = run_checks(objs, values=read_values(path))
    assert not findings, f"umbrella with {case}:\n{report(findings)}"


@pytest.mark.parametrize("part", [case(f"off-{p}", p) for p in SUBCHARTS])
def test_umbrella_with_a_part_off_passes_every_check(charts, part):
    values: dict = {part: {"enabled": False}}
    if part == "functionfuse-minio":  # the documented way: an external S3 store instead
        values = read_values(os.path.join(charts, UMBRELLA, "ci", "external-s3-values.yaml"))
    objs = render_values(charts, values)
    assert objs and not any(o["metadata"].get("labels", {}).get("app.kubernetes.io/name") == part for o in objs)
    findings = run_checks(objs, values=values)
    assert not findings, f"umbrella with {part}.enabled=false:\n{report(findings)}"


def test_umbrella_without_kfp_in_its_own_namespace_passes_every_check(charts):
    # docs/deploy.md: without KFP the stack goes to namespace functionfuse (--create-namespace)
    path = os.path.join(charts, UMBRELLA, "ci", "no-kfp-values.yaml")
    objs = render(charts, values=[path], namespace="functionfuse")
    assert {cm.key_of(o, "functionfuse").namespace for o in objs} == {"functionfuse"}
    findings = run_checks(objs, values=read_values(path), namespace="functionfuse")
    assert not findings, report(findings)


def render_values(charts: str, values: dict, chart: str = UMBRELLA) -> list[dict]:
    path = os.path.join(charts, f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(values, f)
    return render(charts, chart, values=[path])


@pytest.mark.parametrize("values", [case("every-fullname", EVERY_FULLNAME)])
def test_umbrella_with_every_name_overridden_passes_every_check(charts, values):
    findings = run_checks(render_values(charts, values), values=values)
    assert not findings, f"umbrella with every fullnameOverride:\n{report(findings)}"


@pytest.mark.parametrize("chart,values", [case(f"sub-{c}-None", c, None) for c in SUBCHARTS] + [
    case(f"sub-{c}-{os.path.basename(p)}", c, os.path.basename(p)) for c in SUBCHARTS for p in sorted(glob.glob(os.path.join(CHARTS, c, "ci", "*.yaml")))
])
def test_subchart_alone_passes_every_check(charts, chart, values):
    path = os.path.join(charts, chart, "ci", values) if values else None
    objs = render(charts, chart, values=[path] if path else [])
    # a subchart alone is wired to what its values name (another release's S3 store and
    # Secret, the user's): the references check needs the umbrella's whole inventory
    findings = run_checks(objs, values=read_values(path), checks=("collisions", "images", "schemas", "security"))
    assert not findings, f"{chart} {values or 'default'}:\n{report(findings)}"


@pytest.mark.parametrize("values", [case("kfp-example", "example-values.yaml")])
def test_kfp_chart_example_points_at_what_kfp_creates(charts, values):
    """functionfuse-kfp alone next to KFP: its example uses KFP's own object store and
    credentials, so every reference must resolve against the KFP facts (plus the pull
    secret the user creates)."""
    path = os.path.join(charts, "functionfuse-kfp", "ci", values)
    doc = read_values(path)
    inv = prerequisites()
    if (doc.get("imagePullSecret") or {}).get("existingSecret"):
        inv.add(cm.ObjectKey("Secret", NAMESPACE, doc["imagePullSecret"]["existingSecret"]))
    findings = cm.check_references(render(charts, "functionfuse-kfp", values=[path]), NAMESPACE, inv)
    assert not findings, report(findings)


# -- the facts -----------------------------------------------------------------------------------
def test_facts_are_read_at_the_versions_manifests_pin():
    pins = cm.pinned_refs(ROOT)
    for source in cm.upstream_sources():
        assert pins[source.manifest] == source.tag, (
            f"{source.manifest} pins {pins[source.manifest]!r} but the facts of {source.name!r} were read at {source.tag!r}: "
            "re-read them (functionfuse/kit/clustermodel/data/README.md) before moving the pin"
        )
    from functionfuse.kit import steps

    tags = {s.name: s.tag for s in cm.upstream_sources()}
    assert tags["kuberay"] == f"v{steps.KUBERAY_VERSION}" and tags["kfp"] == tags["kfp-cluster-scoped"] == steps.KFP_VERSION
    kuberay = {s.tag for s in cm.upstream_sources() if s.name == "kuberay"}
    for kind in cm.CRD_SCHEMAS:
        crd_source, _ = cm.crd_schema(kind)
        assert {crd_source["tag"]} == kuberay, f"the {kind} schema is from KubeRay {crd_source['tag']}, the manifests pin {kuberay}"


def test_facts_hold_the_objects_the_collisions_are_about():
    keys = {str(k) for s in cm.upstream_sources() for k in s.keys()}
    # what issue 14 names, and what a chart is most tempted to render itself
    for expected in ["ConfigMap/kubeflow/kfp-launcher", "ConfigMap/kubeflow/pipeline-install-config", "Service/kubeflow/ml-pipeline",
                     "Secret/kubeflow/mlpipeline-minio-artifact", "Namespace/kubeflow", "Deployment/ray-system/kuberay-operator",
                     "CustomResourceDefinition/rayclusters.ray.io", "CustomResourceDefinition/rayjobs.ray.io"]:
        assert expected in keys, f"{expected} missing from the upstream facts"
    for source in cm.upstream_sources():
        assert source.how and source.repository.startswith("https://github.com/") and source.objects


def test_vendored_crd_schemas_are_upstream_minus_descriptions():
    for kind in cm.CRD_SCHEMAS:
        with open(os.path.join(cm.DATA, cm.CRD_SCHEMAS[kind])) as f:
            doc = json.load(f)
        assert doc["source"]["path"].startswith("ray-operator/config/crd/bases/ray.io_") and doc["source"]["kind"] == kind
        assert re.fullmatch(r"[0-9a-f]{40}", doc["source"]["commit"])
        assert '"description"' not in json.dumps(doc["openAPIV3Schema"])
        spec = doc["openAPIV3Schema"]["properties"]["spec"]
        cluster = spec if kind == "RayCluster" else spec["properties"]["rayClusterSpec"]
        assert {"headGroupSpec", "workerGroupSpecs", "rayVersion", "authOptions"} <= set(cluster["properties"])


# -- the KFP launcher schema ---------------------------------------------------------------------
def launcher(providers) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ff-launcher"},
            "data": {"defaultPipelineRoot": "s3://bucket/root", "providers": providers if isinstance(providers, str) else yaml.safe_dump(providers)}}


GOOD_PROVIDERS = {"s3": {"default": {"endpoint": "minio.kubeflow:9000", "disableSSL": True, "region": "us-east-1", "forcePathStyle": True,
                                     "credentials": {"fromEnv": False, "secretRef": {"secretName": "s", "accessKeyKey": "a", "secretKeyKey": "b"}}},
                         "Overrides": [{"bucketName": "other", "keyPrefix": "x/", "credentials": {"fromEnv": True}}]},
                  "gs": {"default": {"credentials": {"fromEnv": True}}}}


def test_launcher_schema_accepts_what_kfp_parses():
    assert cm.check_schemas([launcher(GOOD_PROVIDERS)], NAMESPACE) == []


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda p: p["s3"]["default"]["credentials"].pop("secretRef"), "secretRef"),  # KFP dereferences it: a nil pointer
        (lambda p: p["s3"]["default"].update(forcePathstyle=True), "forcePathstyle"),  # silently ignored by KFP's decoder
        (lambda p: p["s3"]["default"].update(disableSSL="yes"), "disableSSL"),
        (lambda p: p["s3"]["default"].pop("credentials"), "credentials"),  # "missing default credentials"
        (lambda p: p.update(azure={}), "azure"),
    ],
    ids=["no-secretRef", "misspelled-key", "string-bool", "no-credentials", "unknown-provider"],
)
def test_launcher_schema_rejects_what_kfp_refuses_or_ignores(edit, expected):
    providers = copy.deepcopy(GOOD_PROVIDERS)
    edit(providers)
    findings = cm.check_schemas([launcher(providers)], NAMESPACE)
    assert findings and all(f.obj == "ConfigMap/kubeflow/ff-launcher" for f in findings)
    assert expected in report(findings)


def test_launcher_schema_rejects_a_pipeline_root_kfp_cannot_parse():
    cmap = launcher(GOOD_PROVIDERS)
    cmap["data"]["defaultPipelineRoot"] = "http://minio:9000/bucket"
    assert "defaultPipelineRoot" in report(cm.check_schemas([cmap], NAMESPACE))


# -- each check catches its defect, put back into a copy of the charts -----------------------------
class Defect:
    """A temporary copy of charts/ with edits: ``sub(path, pattern, replacement)`` must match
    (a test whose edit no longer applies fails instead of passing vacuously); ``add(path, text)``
    writes a new template."""

    def __init__(self, tmp_path):
        self.charts = copy_charts(str(tmp_path / "charts"))

    def sub(self, path: str, pattern: str, replacement: str, count: int = 0) -> "Defect":
        full = os.path.join(self.charts, path)
        with open(full) as f:
            text = f.read()
        new, n = re.subn(pattern, replacement, text, count=count, flags=re.M)
        assert n, f"the defect cannot be put back: {pattern!r} no longer occurs in charts/{path}; update this test"
        with open(full, "w") as f:
            f.write(new)
        return self

    def add(self, path: str, text: str) -> "Defect":
        with open(os.path.join(self.charts, path), "w") as f:
            f.write(text)
        return self

    def render(self, values=None, sets=()) -> list[dict]:
        build(self.charts)
        files = []
        if values:
            path = os.path.join(self.charts, "defect-values.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(values, f)
            files = [path]
        return render(self.charts, values=files, sets=list(sets))


def only(findings, check: str):
    return [f for f in findings if f.check == check]


def assert_named(findings, obj: str, *words: str) -> None:
    hits = [f for f in findings if f.obj == obj and all(w in f.message for w in words)]
    assert hits, f"no finding on {obj} mentioning {words}; findings:\n{report(findings)}"


# 1. references
def test_references_catch_a_hard_coded_secret_name(tmp_path):
    d = Defect(tmp_path)
    # the Ray pods read the S3 credentials from a literal name instead of the umbrella's Secret
    d.sub("functionfuse-ray/templates/_helpers.tpl", r"(secretKeyRef:\s*\{?\s*\n?\s*name:\s*)[^\n},]+", r"\g<1>ff-minio", count=1)
    findings = only(run_checks(d.render(), checks=("references",)), "references")
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "Secret/kubeflow/ff-minio")


def test_references_catch_an_existing_secret_nobody_created(charts):
    values = {"global": {"s3": {"existingSecret": "s3-credentials", "accessKeyKey": "ak", "secretKeyKey": "sk"}}}
    objs = render_values(charts, values)
    findings = run_checks(objs, checks=("references",))
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "Secret/kubeflow/s3-credentials")
    # created by the user (a prerequisite) with other keys than the values say
    inv = prerequisites()
    inv.add(cm.ObjectKey("Secret", NAMESPACE, "s3-credentials"), keys=["accessKey", "secretKey"])
    findings = cm.check_references(objs, NAMESPACE, inv)
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "'ak'", "Secret/kubeflow/s3-credentials")
    # created as the values say: nothing left to find
    assert run_checks(objs, values=values, checks=("references",)) == []


def test_references_catch_a_service_port_that_moved(tmp_path):
    d = Defect(tmp_path)
    # the S3 Service keeps serving 9000 while every client is told the configured port
    d.sub("functionfuse-minio/templates/server.yaml", r"(\{name: s3, port: )[^,]+", r"\g<1>9000")
    findings = only(run_checks(d.render(values={"global": {"s3": {"store": {"port": 9100}}}}), checks=("references",)), "references")
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "port 9100", "Service/kubeflow/ff-functionfuse-minio")


REFERENCE_ZOO = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: zoo
spec:
  selector: {matchLabels: {app: zoo}}
  template:
    metadata: {labels: {app: zoo}}
    spec:
      serviceAccountName: no-such-account
      imagePullSecrets: [{name: no-such-pull-secret}]
      containers:
        - name: zoo
          image: busybox
          envFrom: [{secretRef: {name: no-such-env-secret}}]
          env:
            - {name: API_URL, value: "http://no-such-service.kubeflow.svc:8080/api"}
            - {name: S3_ENDPOINT, value: "http://ml-pipeline.kubeflow:9999"}
            - name: FROM_CONFIGMAP
              valueFrom: {configMapKeyRef: {name: pipeline-install-config, key: no-such-key}}
      volumes:
        - {name: a, configMap: {name: no-such-configmap}}
        - {name: b, persistentVolumeClaim: {claimName: no-such-claim}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: zoo-elsewhere
  namespace: no-such-namespace
data: {}
"""


def test_references_catch_every_kind_of_dangling_name(tmp_path):
    d = Defect(tmp_path).add("functionfuse-kfp/templates/zoo.yaml", REFERENCE_ZOO)
    findings = only(run_checks(d.render(), checks=("references",)), "references")
    zoo = "Deployment/kubeflow/zoo"
    for target in ["ServiceAccount/kubeflow/no-such-account", "Secret/kubeflow/no-such-pull-secret", "Secret/kubeflow/no-such-env-secret",
                   "Service/kubeflow/no-such-service", "ConfigMap/kubeflow/no-such-configmap", "PersistentVolumeClaim/kubeflow/no-such-claim"]:
        assert_named(findings, zoo, target)
    assert_named(findings, zoo, "port 9999", "Service/kubeflow/ml-pipeline")  # a KFP Service, on a port it does not serve
    assert_named(findings, zoo, "no-such-key", "ConfigMap/kubeflow/pipeline-install-config")
    assert_named(findings, "ConfigMap/no-such-namespace/zoo-elsewhere", "namespace 'no-such-namespace'")


# 2. collisions
def test_collisions_catch_the_kfp_launcher_configmap(tmp_path):
    d = Defect(tmp_path).add("functionfuse-kfp/templates/launcher-again.yaml", """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: kfp-launcher
data:
  defaultPipelineRoot: s3://functionfuse/pipeline-root
""")
    findings = only(run_checks(d.render(), checks=("collisions",)), "collisions")
    assert_named(findings, "ConfigMap/kubeflow/kfp-launcher", "kubeflow/pipelines", "2.17.0")


def test_collisions_catch_an_object_of_the_kuberay_operator(tmp_path):
    d = Defect(tmp_path).add("functionfuse-ray/templates/operator-role.yaml", """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kuberay-operator
rules: []
""")
    findings = only(run_checks(d.render(), checks=("collisions",)), "collisions")
    assert_named(findings, "ClusterRole/kuberay-operator", "ray-project/kuberay", "v1.7.0")


# 3. images
def test_images_catch_an_upstream_image_without_digest(charts):
    objs = render(charts, sets=["functionfuse-minio.image.registry=docker.io", "functionfuse-minio.image.repository=minio/minio",
                                "functionfuse-minio.image.digest="])
    findings = only(run_checks(objs, checks=("images",)), "images")
    assert_named(findings, "Deployment/kubeflow/ff-functionfuse-minio", "minio/minio:RELEASE", "pinned by digest")


def test_images_catch_functionfuse_images_the_release_does_not_publish(charts):
    objs = render(charts, sets=["global.image.registry=docker.io/library"])
    findings = only(run_checks(objs, checks=("images",)), "images")
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "docker.io/library/functionfuse:")
    assert_named(findings, "ConfigMap/kubeflow/ff-functionfuse-kfp-settings", "FUNCTIONFUSE_KFP_IMAGE")


# 4. schemas
def test_schemas_catch_a_raycluster_field_the_crd_does_not_have(tmp_path):
    d = Defect(tmp_path).sub("functionfuse-ray/templates/raycluster.yaml", r"^(\s*)enableInTreeAutoscaling:", r"\g<1>enableInTreeAutoscalng:")
    findings = only(run_checks(d.render(), checks=("schemas",)), "schemas")
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "enableInTreeAutoscalng", "v1.7.0")


def test_schemas_catch_a_raycluster_value_of_the_wrong_type(tmp_path):
    d = Defect(tmp_path).sub("functionfuse-ray/templates/raycluster.yaml", r"^(\s*)rayVersion: .*$", r"\g<1>rayVersion: 2.6")
    findings = only(run_checks(d.render(), checks=("schemas",)), "schemas")
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "rayVersion")


def test_schemas_catch_a_launcher_config_without_credentials(tmp_path):
    # the providers block names the credentials under a key KFP's types do not have: the launcher ignores it
    d = Defect(tmp_path).sub("functionfuse-kfp/templates/_helpers.tpl", r'"secretRef"', '"secretReference"')
    findings = only(run_checks(d.render(), checks=("schemas",)), "schemas")
    assert [f for f in findings if f.obj.startswith("ConfigMap/kubeflow/") and "launcher" in f.message], report(findings)


def test_schemas_catch_an_invalid_core_object(tmp_path):
    d = Defect(tmp_path).sub("functionfuse-minio/templates/server.yaml", r"^(\s*)replicas: \d+", r"\g<1>replicas: one", count=1)
    findings = only(run_checks(d.render(), checks=("schemas",)), "schemas")
    assert_named(findings, "Deployment/kubeflow/ff-functionfuse-minio", "Kubernetes")


# 5. security
@pytest.mark.parametrize(
    "sets,obj,words",
    [
        (["functionfuse-ray.service.type=NodePort"], "Service/kubeflow/ff-functionfuse-ray", ("NodePort",)),
        (["functionfuse-prefect.securityContext.readOnlyRootFilesystem=false"], "Deployment/kubeflow/ff-functionfuse-prefect-server",
         ("readOnlyRootFilesystem",)),
        (["functionfuse-ray.securityContext.allowPrivilegeEscalation=true"], "RayCluster/kubeflow/ff-functionfuse-ray", ("allowPrivilegeEscalation",)),
        (["functionfuse-minio.networkPolicy.enabled=false"], "Deployment/kubeflow/ff-functionfuse-minio", ("NetworkPolicy",)),
        (["functionfuse-ray.head.env[0].name=AWS_SECRET_ACCESS_KEY", "functionfuse-ray.head.env[0].value=minioadmin"],
         "RayCluster/kubeflow/ff-functionfuse-ray", ("AWS_SECRET_ACCESS_KEY", "plain text")),
    ],
    ids=["nodeport", "writable-root", "privilege-escalation", "no-networkpolicy", "plain-password"],
)
def test_security_catches_a_value_that_weakens_a_pod(charts, sets, obj, words):
    findings = only(run_checks(render(charts, sets=sets), checks=("security",)), "security")
    assert_named(findings, obj, *words)


def test_security_catches_a_pod_without_run_as_non_root(tmp_path):
    # the values schema requires runAsNonRoot: the template drops it
    d = Defect(tmp_path).sub("functionfuse-minio/templates/server.yaml", r"toYaml \.Values\.podSecurityContext",
                             'toYaml (omit .Values.podSecurityContext "runAsNonRoot")')
    findings = only(run_checks(d.render(), checks=("security",)), "security")
    assert_named(findings, "Deployment/kubeflow/ff-functionfuse-minio", "runAsNonRoot")


def test_security_catches_a_container_without_limits(tmp_path):
    # the values schema requires limits: the template drops them
    d = Defect(tmp_path).sub("functionfuse-minio/templates/server.yaml", r"toYaml \.Values\.resources", 'toYaml (omit .Values.resources "limits")')
    findings = only(run_checks(d.render(), checks=("security",)), "security")
    assert_named(findings, "Deployment/kubeflow/ff-functionfuse-minio", "cpu limits")


def test_security_catches_a_default_password_in_a_generated_secret(tmp_path):
    d = Defect(tmp_path).add("functionfuse-minio/templates/zz-weak.yaml", """\
apiVersion: v1
kind: Secret
metadata:
  name: weak
data:
  secretKey: {{ "minioadmin" | b64enc }}
""")
    findings = only(run_checks(d.render(), checks=("security",)), "security")
    assert_named(findings, "Secret/kubeflow/weak", "data.secretKey", "minioadmin")


def test_security_looks_inside_the_prefect_flow_run_job_template(tmp_path):
    # the flow-run Jobs the worker creates from the base job template, without runAsNonRoot
    d = Defect(tmp_path).sub("functionfuse-prefect/templates/_jobtemplate.tpl", r"toYaml \.Values\.podSecurityContext",
                             'toYaml (omit .Values.podSecurityContext "runAsNonRoot")')
    findings = only(run_checks(d.render(sets=["functionfuse-prefect.worker.enabled=true"]), checks=("security",)), "security")
    hits = [f for f in findings if f.obj.startswith("ConfigMap/kubeflow/") and "job_manifest" in f.message and "runAsNonRoot" in f.message]
    assert hits, report(findings)


# -- functionfuse stack check ----------------------------------------------------------------------
def stack_check(*argv: str) -> tuple[int, str]:
    import contextlib
    import io

    from functionfuse.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["stack", "check", *argv])
    return code, out.getvalue()


def test_stack_check_passes_the_umbrella_with_an_existing_secret():
    code, out = stack_check("-f", os.path.join(CHARTS, UMBRELLA, "ci", "existing-secret-values.yaml"))
    assert code == 0, out
    assert "assumed: Secret/kubeflow/" in out and "0 finding(s)" in out


def test_stack_check_reports_each_finding_and_fails(tmp_path):
    d = Defect(tmp_path).add("functionfuse-kfp/templates/launcher-again.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kfp-launcher}\n")
    code, out = stack_check("--chart", os.path.join(d.charts, UMBRELLA))
    assert code == 1
    assert "[collisions] ConfigMap/kubeflow/kfp-launcher" in out and "1 finding(s)" in out


# -- the model's parts, on objects written here ------------------------------------------------------
def rayjob(**spec) -> dict:
    container = {"name": "ray-head", "image": "ghcr.io/functionfuse/functionfuse:0.1.0-py311-ray"}
    base = {"entrypoint": "python -m job", "shutdownAfterJobFinishes": True,
            "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [container]}}}}}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "job"}, "spec": {**base, **spec}}


def test_a_rayjob_is_held_to_kuberays_rayjob_schema():
    assert cm.check_schemas([rayjob()], NAMESPACE) == []
    findings = cm.check_schemas([rayjob(shutdownAfterJobFinishes="yes", entrypointNumCpus="two", submitterConfg={})], NAMESPACE)
    text = report(findings)
    assert all(f.obj == "RayJob/kubeflow/job" for f in findings)
    for field in ("shutdownAfterJobFinishes", "entrypointNumCpus", "submitterConfg"):
        assert field in text, text
    # its cluster's pod templates are core PodTemplates
    bad = rayjob()
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert "head pod template" in report(cm.check_schemas([bad], NAMESPACE))


@pytest.mark.parametrize(
    "value,target,port",
    [
        ("http://s3:9000", "Service/kubeflow/s3", 9000),
        ("http://s3.kubeflow:9000/bucket", "Service/kubeflow/s3", 9000),
        ("s3.ray-system.svc:6379", "Service/ray-system/s3", 6379),
        ("https://s3.other.svc.cluster.local/x", "Service/other/s3", 443),
        ("postgresql+asyncpg://user@db.kubeflow:5432/prefect", "Service/kubeflow/db", 5432),
        ("http://s3.eu-west-1.amazonaws.com", None, None),  # outside the cluster
        ("s3://bucket/prefix", None, None),  # a bucket, not a host
        ("http://localhost:8265", None, None),
    ],
)
def test_endpoints_that_name_a_service_are_references(value, target, port):
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"ENDPOINT": value}}
    refs = cm.references_of(obj, NAMESPACE, {"kubeflow", "ray-system"})
    assert [(str(r.target), r.port) for r in refs] == ([(target, port)] if target else [])


def test_security_sees_the_autoscaler_sidecar_kuberay_adds(tmp_path):
    # without autoscalerOptions.securityContext KubeRay runs its autoscaler container with none
    d = Defect(tmp_path).sub("functionfuse-ray/templates/raycluster.yaml",
                             r"(autoscalerOptions:[\s\S]*?)\n\s*securityContext:\n\s*\{\{- toYaml \.Values\.securityContext \| nindent 6 \}\}", r"\1")
    findings = only(run_checks(d.render(sets=["functionfuse-ray.autoscaling.enabled=true"]), checks=("security",)), "security")
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "head/autoscaler", "allowPrivilegeEscalation")


def test_references_catch_a_service_that_selects_nothing_or_targets_no_port(tmp_path):
    d = Defect(tmp_path).sub("functionfuse-minio/templates/server.yaml", r"targetPort: s3", "targetPort: s3-api")
    d.sub("functionfuse-ray/templates/service.yaml", r"ray\.io/node-type: head", "ray.io/node-type: leader")
    findings = only(run_checks(d.render(), checks=("references",)), "references")
    assert_named(findings, "Service/kubeflow/ff-functionfuse-minio", "'s3-api'")
    assert_named(findings, "Service/kubeflow/ff-functionfuse-ray", "matches no pod")


def test_charts_a_release_packages_deploy_only_what_it_publishes(tmp_path):
    """`functionfuse release REGISTRY` re-points the charts at REGISTRY: the packaged umbrella
    then names only images that release pushes (or upstream images pinned by digest)."""
    from functionfuse.kit import release as rel

    registry = "127.0.0.1:5000/ff"
    packages = rel.package_charts(ROOT, str(tmp_path), image_repository=f"{registry}/functionfuse", helm=HELM)
    (umbrella,) = [p for p in packages if os.path.basename(p).startswith(f"{UMBRELLA}-0")]
    objs = [d for d in yaml.safe_load_all(helm("template", "ff", umbrella, "--namespace", NAMESPACE)) if isinstance(d, dict)]
    findings = cm.check_images(objs, NAMESPACE, cm.published_images(registry))
    assert not findings, report(findings)
    assert cm.check_images(objs, NAMESPACE, cm.published_images()), "the check cannot tell the release's registry from the default"


# -- the install sequence against the model ---------------------------------------------------------
def sequence_render(charts: str):
    def render_for(chart: str, namespace: str, values, sets) -> list[dict]:
        assert chart == f"charts/{UMBRELLA}", chart
        return render(charts, values=[os.path.join(ROOT, v) for v in values], sets=sets, namespace=namespace)
    return render_for


def stack_configs():
    from dataclasses import replace

    from functionfuse.kit.steps import StackConfig

    return {"kfp": StackConfig(), "no-kfp": replace(StackConfig(), kfp=False, namespace="functionfuse")}


@pytest.mark.parametrize("config", ["kfp", "no-kfp"])
def test_the_install_steps_find_what_they_need_on_a_fresh_cluster(charts, config):
    from functionfuse.kit.steps import install_steps

    findings = cm.check_sequence(install_steps(stack_configs()[config]), sequence_render(charts))
    assert not findings, report(findings)


def edited_steps(config: str, drop=lambda step, command: False, move_first: str | None = None):
    from dataclasses import replace

    from functionfuse.kit.steps import install_steps

    steps = [replace(s, commands=tuple(c for c in s.commands if not drop(s, c))) for s in install_steps(stack_configs()[config])]
    if move_first:
        steps.sort(key=lambda s: s.name != move_first)
    return steps


def test_the_sequence_check_catches_kuberay_without_its_namespace(charts):
    steps = edited_steps("kfp", drop=lambda s, c: c.argv[1:3] == ("create", "namespace"))
    findings = cm.check_sequence(steps, sequence_render(charts))
    assert_named(findings, "Deployment/ray-system/kuberay-operator", "namespace 'ray-system' does not exist")


def test_the_sequence_check_catches_a_chart_before_the_crds(charts):
    findings = cm.check_sequence(edited_steps("kfp", move_first="chart"), sequence_render(charts))
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "rayclusters.ray.io is not established")
    # and the launcher patch before KFP: kfp-launcher does not exist yet
    findings = cm.check_sequence(edited_steps("kfp", move_first="launcher"), sequence_render(charts))
    assert_named(findings, "ConfigMap/kubeflow/kfp-launcher", "patches it")


def test_the_sequence_check_catches_a_namespace_helm_does_not_create(charts):
    steps = edited_steps("no-kfp")
    steps = [type(s)(s.name, s.title, tuple(type(c)(tuple(a for a in c.argv if a != "--create-namespace")) if c.argv[0] == "helm" else c
                                            for c in s.commands)) for s in steps]
    findings = cm.check_sequence(steps, sequence_render(charts))
    assert_named(findings, "Namespace/functionfuse", "installs into namespace 'functionfuse'")


def test_collisions_catch_two_parts_with_one_name(charts):
    objs = render(charts, sets=["functionfuse-ray.fullnameOverride=ff-functionfuse-minio"])
    findings = only(run_checks(objs, checks=("collisions",)), "collisions")
    assert_named(findings, "Service/kubeflow/ff-functionfuse-minio", "rendered twice")


def test_references_catch_a_ray_token_secret_without_the_key_kuberay_reads(tmp_path):
    d = Defect(tmp_path).sub("functionfuse-ray/templates/auth-secret.yaml", r"\bauth_token:", "token:")
    findings = only(run_checks(d.render(), checks=("references",)), "references")
    assert_named(findings, "RayCluster/kubeflow/ff-functionfuse-ray", "auth_token", "Secret/kubeflow/ff-functionfuse-ray")


def test_references_read_the_keys_settings_name_next_to_a_secret():
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"},
                "data": {"FUNCTIONFUSE_S3_SECRET": "s3", "FUNCTIONFUSE_S3_ACCESS_KEY_KEY": "ak", "FUNCTIONFUSE_S3_SECRET_KEY_KEY": "sk",
                         "WORKER_AUTH_SECRET_NAME": "auth", "WORKER_AUTH_SECRET_KEY": "auth-string"}}
    refs = {str(r.target): set(r.keys) for r in cm.references_of(settings, NAMESPACE, {NAMESPACE})}
    assert refs == {"Secret/kubeflow/s3": {"ak", "sk"}, "Secret/kubeflow/auth": {"auth-string"}}


def test_one_global_registry_moves_every_functionfuse_image(charts):
    """global.image.registry is the one value for every image of the umbrella (kind's local
    registry, a mirror): with it set, no image is left on the release's default."""
    registry = "registry.test:5000/mirror"
    objs = render(charts, sets=[f"global.image.registry={registry}", "functionfuse-prefect.worker.enabled=true"])
    findings = cm.check_images(objs, NAMESPACE, cm.published_images(registry))
    assert not findings, report(findings)
    assert len({i for o in objs for _, i in cm.image_references(o, NAMESPACE) if i.startswith(registry)}) == 4


def test_facts_are_in_the_shape_objects_of_writes():
    """The facts file is what upstream.objects_of makes of a kustomize output: re-reading it
    after a pin moves gives entries the checks understand."""
    for source in cm.upstream_sources():
        objects = [dict(o) for o in source.objects]
        as_docs = [{"apiVersion": o["apiVersion"], "kind": o["kind"],
                    "metadata": {"name": o["name"], **({"namespace": o["namespace"]} if "namespace" in o else {})},
                    **({"spec": {"ports": [{"port": p} for p in o["ports"]]}} if "ports" in o else {}),
                    **({"data": {k: "" for k in o["keys"]}} if "keys" in o else {})} for o in objects]
        assert cm.upstream.objects_of(as_docs) == objects, source.name
