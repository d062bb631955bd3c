"""End to end on a cluster: the example DAG executed *in* the cluster by each engine, its
results read back from the laptop through S3 and compared with a local run.

* (a) Ray: the DAG submitted as a Ray job (the job API on 8265 through a port-forward,
  with the RayCluster's token when token auth is on) runs on the RayCluster's pods;
* (b) KFP: ``KFPWorkflow.run(wait=True)`` through the KFP API (port-forward of
  ``ml-pipeline``), its settings read from the functionfuse-kfp ConfigMap; every node is a
  pod of the pipeline run;
* (c) Prefect: a deployment on the chart's Kubernetes work pool, a flow run of it, which
  the chart's worker runs as a Kubernetes Job (checked: the Job of that flow run exists),
  ending ``COMPLETED``.

The cluster: ``make e2e-kind`` (FUNCTIONFUSE_E2E_KIND=1) makes a kind stack with
``functionfuse stack up`` and removes it afterwards; ``FUNCTIONFUSE_E2E_CONTEXT=CTX`` runs on
any cluster of your kubeconfig where the stack is installed (``FUNCTIONFUSE_E2E_INSTALL=1``
installs it first), pushing the images the tests build to ``FUNCTIONFUSE_E2E_REGISTRY``
(see tests/e2e/kind_stack.py). Without either, or without docker, kubectl and helm (and
kind, for the kind stack), every test here is skipped with the reason.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import kind_stack  # noqa: E402

WORKFLOW = "classifier"


def _skip_reason() -> str | None:
    if not kind_stack.EXTERNAL_CONTEXT and os.environ.get("FUNCTIONFUSE_E2E_KIND") != "1":
        absent = kind_stack.missing_tools(kind_stack.needed_tools())
        here = f" ({', '.join(absent)} not installed here)" if absent else ""
        return ("no cluster was asked for: `make e2e-kind` (FUNCTIONFUSE_E2E_KIND=1) makes a kind stack (docker, kind, "
                "kubectl, helm and internet access, about 20 minutes), FUNCTIONFUSE_E2E_CONTEXT=CTX uses a cluster of "
                f"your kubeconfig where the stack is installed{here}")
    absent = kind_stack.missing_tools(kind_stack.needed_tools())
    if absent:
        return f"{', '.join(absent)} not installed: the end-to-end tests need {', '.join(kind_stack.needed_tools())}"
    if kind_stack.EXTERNAL_CONTEXT and not kind_stack.REGISTRY:
        return ("FUNCTIONFUSE_E2E_REGISTRY is not set: on a cluster of your own the tests push the images they build "
                "to a registry the cluster pulls from")
    return None


REASON = _skip_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortForward:
    """``kubectl port-forward`` on 127.0.0.1, stopped by its PID."""

    def __init__(self, target: str, remote: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["kubectl", "--context", kind_stack.CONTEXT, "-n", kind_stack.NAMESPACE, "port-forward",
             "--address", "127.0.0.1", target, f"{self.port}:{remote}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"port-forward to {target} did not open")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def secret(name: str) -> dict[str, str] | None:
    out = kind_stack.kubectl("get", "secret", name, "-n", kind_stack.NAMESPACE, "-o", "json", capture=True, check=False)
    if not out.strip():
        return None
    return {k: base64.b64decode(v).decode() for k, v in (json.loads(out).get("data") or {}).items()}


@pytest.fixture(scope="module")
def stack():
    kind_stack.up()
    release = kind_stack.RELEASE
    s3 = secret(f"{release}-functionfuse-minio")
    assert s3, f"the S3 credentials Secret {release}-functionfuse-minio is missing"
    forwards = {
        "s3": PortForward(f"svc/{release}-functionfuse-minio", 9000),
        "ray": PortForward(f"svc/{release}-functionfuse-ray", 8265),
        "prefect": PortForward(f"svc/{release}-functionfuse-prefect-server", 4200),
    }
    try:
        yield {"creds": s3, "ports": {k: f.port for k, f in forwards.items()}}
    finally:
        for f in forwards.values():
            f.stop()
        kind_stack.down()


def s3_storage(stack, path: str):
    from functionfuse.storage import storage_factory

    return storage_factory({"kind": "S3", "options": {
        "path": path,
        "s3fs": {"endpoint_url": f"http://127.0.0.1:{stack['ports']['s3']}",
                 "key": stack["creds"]["accessKey"], "secret": stack["creds"]["secretKey"]}}})


def stored(storage) -> dict:
    return {t: storage.read_task(WORKFLOW, t) for t in storage.list_tasks(WORKFLOW, "*")}


def local_results() -> dict:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from ml_pipeline import build

    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.backends.plugins import RandomStatePlugin
    from functionfuse.storage import storage_factory

    with tempfile.TemporaryDirectory() as tmp:
        wf = LocalWorkflow(build(), workflow_name=WORKFLOW)
        wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
        storage = storage_factory({"kind": "file", "options": {"path": tmp}})
        wf.set_storage(storage)
        wf.run()
        return stored(storage)


def assert_same(got, local) -> None:
    import numpy as np

    assert sorted(got) == sorted(local)
    for task in local:
        a, b = local[task], got[task]
        if task == "model":
            np.testing.assert_allclose(a["w"], b["w"], rtol=1e-10)
        elif task == "accuracy":
            assert a == pytest.approx(b, rel=1e-12)


# -- (a) a Ray job on the RayCluster ------------------------------------------------------------------
RAY_JOB = """
import os, socket
from ml_pipeline import build
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.backends.plugins import RandomStatePlugin
from functionfuse.storage import storage_factory
wf = RayWorkflow(build(), workflow_name="classifier", ray_init_args={"address": "auto"})
wf.set_storage(storage_factory({"kind": "S3", "options": {"path": os.environ["E2E_PATH"],
    "s3fs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL_S3"]}}}))
wf.query("^model$").set_remote_args({"resources": {"_model": 1}})
wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
wf.run()
print("driver ran on", socket.gethostname())
"""


def test_a_ray_job_runs_the_dag_on_the_ray_cluster(stack, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    path = f"functionfuse/e2e-ray-{uuid.uuid4().hex[:8]}"
    shutil.copy(os.path.join(ROOT, "examples", "ml_pipeline.py"), tmp_path)
    (tmp_path / "ray_job.py").write_text(RAY_JOB)
    token = (secret(f"{kind_stack.RELEASE}-functionfuse-ray") or {}).get("auth_token")
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = JobSubmissionClient(f"http://127.0.0.1:{stack['ports']['ray']}", headers=headers)
    job = client.submit_job(entrypoint="python ray_job.py",
                            runtime_env={"working_dir": str(tmp_path), "env_vars": {"E2E_PATH": path}})
    deadline = time.monotonic() + 900
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, "the Ray job did not finish in 15 minutes"
        time.sleep(5)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
    head_pods = kind_stack.kubectl("get", "pods", "-n", kind_stack.NAMESPACE, "-l", "ray.io/node-type=head",
                                   "-o", "jsonpath={.items[*].metadata.name}", capture=True).split()
    assert any(f"driver ran on {pod}" in logs for pod in head_pods), "the driver ran in the RayCluster's head pod"
    assert_same(stored(s3_storage(stack, path)), local_results())


# -- (b) a KFP run through the KFP API -------------------------------------------------------------------
def test_b_kfp_runs_the_dag_as_pipeline_steps(stack):
    if importlib.util.find_spec("functionfuse.backends.addons.kfpback") is None:
        pytest.skip("KFPWorkflow (functionfuse.backends.addons.kfpback) is not available")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from ml_pipeline import build

    from functionfuse.backends.addons.kfpback import KFPWorkflow
    from functionfuse.backends.plugins import RandomStatePlugin

    pf = PortForward("svc/ml-pipeline", 8888)
    try:
        wf = KFPWorkflow(build(), workflow_name=WORKFLOW, kfp_host=f"http://127.0.0.1:{pf.port}",
                         registry_credentials={"server": kind_stack.REGISTRY})
        settings = wf.set_cluster_settings(kind_stack.NAMESPACE, context=kind_stack.CONTEXT)
        options = settings.storage_options()
        assert options is not None, "the functionfuse-kfp ConfigMap names the stack's S3 storage"
        wf.set_project(os.path.join(ROOT, "examples"), exclude=["storage/", "*.ffr"])
        wf.set_storage(s3_storage(stack, options["options"]["path"]))  # the same objects, seen from here
        wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
        wf.run(wait=True, timeout=1800)
    finally:
        pf.stop()
    assert_same(stored(s3_storage(stack, options["options"]["path"])), local_results())


# -- (c) a Prefect flow run in a Kubernetes Job -------------------------------------------------------------
FLOW = """
import os
from prefect import flow
from ml_pipeline import build  # next to this file: Prefect loads it with its folder on sys.path
from functionfuse.backends.addons.prefectback import PrefectWorkflow
from functionfuse.backends.plugins import RandomStatePlugin
from functionfuse.storage import storage_factory

@flow(name="functionfuse-e2e")
def classifier(path: str):
    wf = PrefectWorkflow(build(), workflow_name="classifier")
    wf.set_storage(storage_factory({"kind": "S3", "options": {"path": path,
        "s3fs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL_S3"]}}}))
    wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
    wf.run()
    return os.environ.get("HOSTNAME", "")
"""


def flow_image(tag: str) -> str:
    """The functionfuse Prefect image plus this test's flow, pushed to the test registry."""
    import functionfuse
    from functionfuse.kit.images import docker_client

    client = docker_client()
    base = f"functionfuse:{functionfuse.__version__}-py311-prefect"
    try:
        client.images.get(base)  # built here by `functionfuse stack up`
    except Exception:
        base = f"{kind_stack.REGISTRY}/{base}"
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(os.path.join(ROOT, "examples", "ml_pipeline.py"), ctx)
        with open(os.path.join(ctx, "e2e_flow.py"), "w") as f:
            f.write(FLOW)
        with open(os.path.join(ctx, "Dockerfile"), "w") as f:
            f.write(f"FROM {base}\nCOPY ml_pipeline.py e2e_flow.py /opt/flows/\n")
        ref = f"{kind_stack.REGISTRY}/functionfuse-e2e-flow:{tag}"
        client.images.build(path=ctx, tag=ref, rm=True, network_mode="host")
    for line in client.images.push(ref.rsplit(":", 1)[0], tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    return ref


def test_c_a_prefect_worker_runs_a_flow_run_as_a_kubernetes_job(stack, monkeypatch):
    import anyio

    auth = secret(f"{kind_stack.RELEASE}-functionfuse-prefect-api-auth") or {}
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{stack['ports']['prefect']}/api")
    if auth.get("auth-string"):
        monkeypatch.setenv("PREFECT_API_AUTH_STRING", auth["auth-string"])
    tag = uuid.uuid4().hex[:8]
    image = flow_image(tag)
    path = f"functionfuse/e2e-prefect-{tag}"

    async def deploy_and_run():
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            flow_id = await client.create_flow_from_name("functionfuse-e2e")
            deployment = await client.create_deployment(
                flow_id, f"e2e-{tag}", work_pool_name="functionfuse", entrypoint="e2e_flow.py:classifier",
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/flows"}}],
                job_variables={"image": image}, parameters={"path": path})
            run = await client.create_flow_run_from_deployment(deployment)
            deadline = time.monotonic() + 1200
            while True:
                run = await client.read_flow_run(run.id)
                if run.state is not None and run.state.is_final():
                    return run
                assert time.monotonic() < deadline, f"flow run {run.id} did not finish: {run.state}"
                await anyio.sleep(5)

    run = anyio.run(deploy_and_run)
    assert run.state is not None and run.state.is_completed(), run.state
    jobs = kind_stack.kubectl("get", "jobs", "-n", kind_stack.NAMESPACE, "-l", f"prefect.io/flow-run-id={run.id}",
                              "-o", "jsonpath={.items[*].metadata.name}", capture=True).split()
    assert jobs, "the flow run ran in a Kubernetes Job of the worker"
    assert_same(stored(s3_storage(stack, path)), local_results())
