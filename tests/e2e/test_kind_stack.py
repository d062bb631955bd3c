"""End to end on a kind cluster: the same example DAG through the RayCluster, the Prefect
server and Kubeflow Pipelines, results compared from the laptop.

Run with ``make e2e-kind`` (it sets FUNCTIONFUSE_E2E_KIND=1), on a machine with Docker,
kind, kubectl, helm and internet access; ``tests/e2e/kind_stack.py up`` brings the stack up
first (registry on 127.0.0.1:5001, cluster, images, KubeRay, KFP, the umbrella chart) and
``down`` removes it. Elsewhere every test here is skipped with the reason.

What is checked: (a) the DAG submitted as a Ray job to the RayCluster stores its results
in the stack's S3 store (MinIO); (b) the same DAG through the Prefect server stores the
same results; (c) as a KFP pipeline (when KFPWorkflow exists); each compared with a local
run, read back through a port-forward of the S3 service with the generated credentials.
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
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import kind_stack  # noqa: E402

WORKFLOW = "classifier"


def _skip_reason() -> str | None:
    absent = kind_stack.missing_tools()
    if absent:
        return (f"{', '.join(absent)} not installed: the kind end-to-end tests need docker, kind, kubectl, helm "
                "and internet access (node and operator images are pulled)")
    if os.environ.get("FUNCTIONFUSE_E2E_KIND") != "1":
        return ("docker, kind, kubectl and helm are here; the kind end-to-end tests take about 20 minutes and "
                "pull images from the internet, so they run with `make e2e-kind` (FUNCTIONFUSE_E2E_KIND=1)")
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
            ["kubectl", "--context", f"kind-{kind_stack.CLUSTER}", "-n", kind_stack.NAMESPACE, "port-forward",
             "--address", "127.0.0.1", target, f"{self.port}:{remote}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
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


@pytest.fixture(scope="module")
def stack():
    kind_stack.up()
    release = kind_stack.RELEASE
    secret = json.loads(kind_stack.kubectl("get", "secret", f"{release}-functionfuse-minio", "-n", kind_stack.NAMESPACE,
                                           "-o", "json", capture=True))
    creds = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    forwards = {
        "s3": PortForward(f"svc/{release}-functionfuse-minio", 9000),
        "ray": PortForward(f"svc/{release}-functionfuse-ray", 8265),
        "prefect": PortForward(f"svc/{release}-functionfuse-prefect-server", 4200),
    }
    yield {"creds": creds, "ports": {k: f.port for k, f in forwards.items()}}
    for f in forwards.values():
        f.stop()
    if os.environ.get("FUNCTIONFUSE_E2E_KEEP") != "1":
        kind_stack.down()


def s3_storage(stack, prefix: str):
    from functionfuse.storage import storage_factory

    return storage_factory({"kind": "S3", "options": {
        "path": f"functionfuse/{prefix}",
        "s3fs": {"endpoint_url": f"http://127.0.0.1:{stack['ports']['s3']}",
                 "key": stack["creds"]["accessKey"], "secret": stack["creds"]["secretKey"]}}})


def local_results() -> dict:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from ml_pipeline import build

    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.backends.plugins import RandomStatePlugin
    from functionfuse.storage import storage_factory
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        wf = LocalWorkflow(build(), workflow_name=WORKFLOW)
        wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
        storage = storage_factory({"kind": "file", "options": {"path": tmp}})
        wf.set_storage(storage)
        wf.run()
        return {t: storage.read_task(WORKFLOW, t) for t in storage.list_tasks(WORKFLOW, "*")}


def assert_same(stored, local) -> None:
    import numpy as np

    assert sorted(stored) == sorted(local)
    for task in local:
        a, b = local[task], stored[task]
        if task == "model":
            np.testing.assert_allclose(a["w"], b["w"], rtol=1e-10)
        elif task == "accuracy":
            assert a == pytest.approx(b, rel=1e-12)


RAY_JOB = """
import os, sys
from ml_pipeline import build
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.backends.plugins import RandomStatePlugin
from functionfuse.storage import storage_factory
wf = RayWorkflow(build(), workflow_name="classifier", ray_init_args={"address": "auto"})
wf.set_storage(storage_factory({"kind": "S3", "options": {"path": "functionfuse/ray",
    "s3fs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL_S3"]}}}))
wf.query("^model$").set_remote_args({"resources": {"_model": 1}})
wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
wf.run()
print("done")
"""


def test_a_ray_cluster_runs_the_dag_into_minio(stack, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    shutil.copy(os.path.join(ROOT, "examples", "ml_pipeline.py"), tmp_path)
    (tmp_path / "ray_job.py").write_text(RAY_JOB)
    client = JobSubmissionClient(f"http://127.0.0.1:{stack['ports']['ray']}")
    job = client.submit_job(entrypoint="python ray_job.py", runtime_env={"working_dir": str(tmp_path)})
    deadline = time.monotonic() + 900
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, "the Ray job did not finish in 15 minutes"
        time.sleep(5)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
    storage = s3_storage(stack, "ray")
    assert_same({t: storage.read_task(WORKFLOW, t) for t in storage.list_tasks(WORKFLOW, "*")}, local_results())


def test_b_prefect_server_runs_the_dag_into_minio(stack, monkeypatch):
    if importlib.util.find_spec("functionfuse.backends.addons.prefectback") is None:
        pytest.skip("PrefectWorkflow is not available")
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{stack['ports']['prefect']}/api")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from ml_pipeline import build

    from functionfuse.backends.addons.prefectback import PrefectWorkflow
    from functionfuse.backends.plugins import RandomStatePlugin

    wf = PrefectWorkflow(build(), workflow_name=WORKFLOW)
    wf.set_storage(s3_storage(stack, "prefect"))
    wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
    wf.run()
    storage = s3_storage(stack, "prefect")
    assert_same({t: storage.read_task(WORKFLOW, t) for t in storage.list_tasks(WORKFLOW, "*")}, local_results())


def test_c_kfp_pipeline_runs_the_dag(stack):
    """KFPWorkflow from the laptop: build the step image on the functionfuse kfp image,
    push it to the stack's registry, submit to the KFP API, wait, read results from S3."""
    if importlib.util.find_spec("functionfuse.backends.addons.kfpback") is None:
        pytest.skip("KFPWorkflow (functionfuse.backends.addons.kfpback) is not available")
    import functionfuse
    from functionfuse.storage import storage_factory

    pf = PortForward("svc/ml-pipeline", 8888)
    try:
        sys.path.insert(0, os.path.join(ROOT, "examples"))
        from ml_pipeline import build

        from functionfuse.backends.addons.kfpback import KFPWorkflow
        from functionfuse.backends.plugins import RandomStatePlugin

        registry = f"localhost:{kind_stack.REGISTRY_PORT}"  # the same name inside kind (containerd certs.d)
        wf = KFPWorkflow(build(), workflow_name=WORKFLOW, kfp_host=f"http://127.0.0.1:{pf.port}",
                         baseimage=f"functionfuse:{functionfuse.__version__}-py311-kfp",  # built by `stack up`
                         registry_credentials={"server": registry})
        wf.set_project(os.path.join(ROOT, "examples"), exclude=["storage/", "*.ffr"])
        wf.set_storage(s3_storage(stack, "kfp"))  # as the laptop sees it (port-forward)
        release, ns = kind_stack.RELEASE, kind_stack.NAMESPACE
        wf.set_step_storage(storage_factory({"kind": "S3", "options": {  # as the steps see it
            "path": "functionfuse/kfp",
            "s3fs": {"endpoint_url": f"http://{release}-functionfuse-minio.{ns}.svc:9000"}}}))
        wf.set_storage_secret(f"{release}-functionfuse-minio")  # accessKey/secretKey as AWS_* variables
        wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
        wf.run(wait=True, timeout=1800)
    finally:
        pf.stop()
    storage = s3_storage(stack, "kfp")
    assert_same({t: storage.read_task(WORKFLOW, t) for t in storage.list_tasks(WORKFLOW, "*")}, local_results())
