"""The example DAG run inside the built images: a Ray cluster of containers with S3 storage.

* an S3 server (moto's, a real S3 HTTP endpoint) on 127.0.0.1 in this process;
* a Ray head container and a Ray worker container of the functionfuse Ray image, on the
  host network, every Ray address 127.0.0.1 (``--node-ip-address``), ports chosen free;
  they share one /tmp/ray folder, as the nodes of ``ray.cluster_utils.Cluster`` do, so
  a driver can attach to either;
* a driver container (in the head's process namespace, as a driver on the head node)
  that runs examples/ml_pipeline.py's DAG with ``RayWorkflow``
  (``ray_init_args={"address": ...}``) and the ``S3`` storage kind, the ``model`` node
  placed on the worker by a custom resource (``_model``), the others free to run on
  either node (the head carries ``_disk``).

From the host, the stored results are read back through S3 and compared with a local
run (``LocalWorkflow``) of the same DAG; a second run in the containers loads everything
from storage and runs nothing. Only processes and containers this test started are
stopped, by id; nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
import time

import pytest

from kitsupport import ROOT, built_images, docker_client

pytestmark = pytest.mark.slow

WORKFLOW = "classifier"
BUCKET = "functionfuse-stack"
KEY, SECRET = "testing-key", "testing-secret"  # moto accepts any credentials


def _missing_parts() -> str | None:
    """Why the stack cannot run yet: the modules it is written against."""
    for module, what in [
        ("functionfuse.backends.builtin.rayback", "RayWorkflow (functionfuse.backends.builtin.rayback)"),
        ("functionfuse.storage.s3storage", "the S3 storage kind (functionfuse.storage.s3storage)"),
        ("moto.server", "moto[server] (requirements/s3.txt), the S3 server of this test"),
        ("s3fs", "s3fs (requirements/s3.txt), to read the results back"),
        ("numpy", "numpy"),
    ]:
        try:
            if importlib.util.find_spec(module) is None:
                return f"{what} is not importable"
        except ImportError:
            return f"{what} is not importable"
    return None


MISSING = _missing_parts()
if MISSING:
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason=f"container stack test needs {MISSING}")]


#: ``ray start`` on loopback only. Ray replaces 127.0.0.1 in node and GCS addresses with the
#: machine's own network address (so other machines can reach it) unless
#: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with that variable ``ray start --address``
#: refuses to start a second node. This launcher, run with the variable set, lets it start
#: while every address stays 127.0.0.1; the processes it starts inherit the variable.
RAY_NODE = r'''
import sys
from ray._private import ray_constants, services
from ray._common.network_utils import get_localhost_ip
ray_constants.ENABLE_RAY_CLUSTER = True  # allow `ray start --address` (a second node)
services.get_node_ip_address = lambda address=None: get_localhost_ip()  # and keep it on loopback
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint():
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield endpoint
    server.stop()


RUNNER = r'''
"""Run inside the driver container: the example DAG on the Ray cluster, S3 storage."""
import json, os, sys, time
sys.path.insert(0, "/dag")
import ray
from ml_pipeline import build
from functionfuse import workflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.backends.plugins import RandomStatePlugin
from functionfuse.storage import storage_factory

address = sys.argv[1]
storage_options = json.loads(sys.argv[2])
wf = RayWorkflow(build(), workflow_name="classifier", ray_init_args={"address": address})
wf.set_storage(storage_factory({"kind": "S3", "options": storage_options}))
wf.query("^model$").set_remote_args({"num_cpus": 1, "resources": {"_model": 1}})
wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
t0 = time.perf_counter()
wf.run()
first = {"ran": wf.last_run.ran, "loaded": wf.last_run.loaded, "seconds": time.perf_counter() - t0}
accuracy = wf.run(return_results=True)
second = {"ran": wf.last_run.ran, "loaded": wf.last_run.loaded}

@workflow
def role():
    return os.environ.get("FF_NODE_ROLE")

on_worker = role().set_name("on_worker")
on_head = role().set_name("on_head")
where = RayWorkflow(on_worker, on_head, workflow_name="placement")
where.query("^on_worker$").set_remote_args({"resources": {"_model": 0.01}})
where.query("^on_head$").set_remote_args({"resources": {"_disk": 0.01}})
placement = where.run(return_results=True)
nodes = [n for n in ray.nodes() if n["Alive"]]
print("RESULT " + json.dumps({
    "first": first, "second": second, "accuracy": accuracy, "placement": placement,
    "nodes": sorted(n["NodeManagerAddress"] for n in nodes),
    "resources": sorted(k for n in nodes for k in n["Resources"] if k.startswith("_")),
    "ray": ray.__version__,
}))
'''


def _ray_start(image: str, role: str, args: list[str], ray_tmp: str, dag_dir: str, client) -> object:
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    lo = 30000 if role == "head" else 31000
    env = {"FF_NODE_ROLE": role, "PYTHONPATH": "/dag", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = ["python", "/dag/ray_node.py", "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
               f"--min-worker-port={lo}", f"--max-worker-port={lo + 999}", "--num-cpus=1",
               "--object-store-memory=200000000", *[f"{k}={v}" for k, v in ports.items()], *args]
    return client.containers.run(
        image,
        command,
        detach=True,
        network_mode="host",
        shm_size="512m",
        environment=env,
        volumes={ray_tmp: {"bind": "/tmp/ray", "mode": "rw"}, dag_dir: {"bind": "/dag", "mode": "ro"}},
        name=f"functionfuse-stack-{role}-{os.getpid()}",
        labels={"io.functionfuse.test": "container-stack"},
    )


def _wait_for(predicate, timeout: float, what: str, logs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; logs:\n{logs()}")


@pytest.fixture(scope="module")
def ray_stack(tmp_path_factory):
    client = docker_client()
    images = built_images()
    image = images["ray"]["tag"]
    base = tmp_path_factory.mktemp("stack")
    ray_tmp = str(base / "ray")
    dag_dir = str(base / "dag")
    os.makedirs(ray_tmp)
    os.makedirs(dag_dir)
    os.chmod(ray_tmp, 0o777)
    shutil.copy(os.path.join(ROOT, "examples", "ml_pipeline.py"), dag_dir)
    with open(os.path.join(dag_dir, "run_stack.py"), "w") as f:
        f.write(RUNNER)
    with open(os.path.join(dag_dir, "ray_node.py"), "w") as f:
        f.write(RAY_NODE)
    for p in (dag_dir, *(os.path.join(dag_dir, n) for n in os.listdir(dag_dir))):
        os.chmod(p, 0o755 if os.path.isdir(p) else 0o644)
    gcs_port = free_port()
    containers = []
    try:
        head = _ray_start(image, "head", ["--head", f"--port={gcs_port}", f"--ray-client-server-port={free_port()}",
                                         "--include-dashboard=false", '--resources={"_disk": 1}'], ray_tmp, dag_dir, client)
        containers.append(head)
        _wait_for(lambda: b"Ray runtime started" in head.logs(), 120, "the Ray head", lambda: head.logs().decode()[-3000:])
        worker = _ray_start(image, "worker", [f"--address=127.0.0.1:{gcs_port}", '--resources={"_model": 1}'],
                            ray_tmp, dag_dir, client)
        containers.append(worker)
        _wait_for(lambda: b"Ray runtime started" in worker.logs(), 120, "the Ray worker", lambda: worker.logs().decode()[-3000:])
        yield {"client": client, "image": image, "address": f"127.0.0.1:{gcs_port}", "ray_tmp": ray_tmp,
               "dag_dir": dag_dir, "containers": containers}
    finally:
        for c in containers:  # only the containers this fixture started, by id
            try:
                c.remove(force=True)
            except Exception:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _tcp_table() -> dict[int, tuple[str, str, str]]:
    """inode -> (local address, remote address, state) of the TCP sockets of this network
    namespace (the host's: the containers use the host network)."""
    import ipaddress

    table: dict[int, tuple[str, str, str]] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            addrs = []
            for hexaddr in parts[1:3]:
                ip_hex, port_hex = hexaddr.split(":")
                raw = bytes.fromhex(ip_hex)
                if len(raw) == 4:
                    ip = ipaddress.IPv4Address(raw[::-1])
                else:
                    ip = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
                addrs.append(f"{ip}:{int(port_hex, 16)}")
            table[int(parts[9])] = (addrs[0], addrs[1], parts[3])
    return table


def _container_sockets(containers) -> list[tuple[str, str, str, str]]:
    """(process, local, remote, state) of every TCP socket the containers' processes hold."""
    from docker.errors import APIError

    table = _tcp_table()
    found = []
    for c in containers:
        try:
            top = c.top(ps_args="-eo pid,comm")
        except APIError as exc:
            if exc.status_code == 409:  # it exited since its status was read: nothing left to see
                continue
            raise
        for pid, comm in ((row[0], row[1]) for row in top["Processes"]):
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in table:
                        found.append((f"{c.name}/{comm}", *table[inode]))
    return found


def _is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _local_results() -> dict:
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        from ml_pipeline import build
    finally:
        sys.path.pop(0)
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.backends.plugins import RandomStatePlugin

    wf = LocalWorkflow(build(), workflow_name=WORKFLOW)
    wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
    results: dict = {}
    wf.run()
    # every node's value, from a storage-free run: run again with file storage in memory
    import tempfile

    from functionfuse.storage import storage_factory

    with tempfile.TemporaryDirectory() as tmp:
        storage = storage_factory({"kind": "file", "options": {"path": tmp}})
        wf.set_storage(storage)
        wf.run()
        for task in storage.list_tasks(WORKFLOW, "*"):
            results[task] = storage.read_task(WORKFLOW, task)
    return results


def _assert_same(a, b, where: str = "") -> None:
    import numpy as np

    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=0, err_msg=where)
    else:
        assert a == pytest.approx(b, rel=1e-10), where


def test_example_dag_on_a_ray_cluster_of_containers_with_s3(ray_stack, s3_endpoint):
    client = ray_stack["client"]
    options = {"path": f"{BUCKET}/stack", "s3fs": {"endpoint_url": s3_endpoint, "key": KEY, "secret": SECRET}}
    driver = client.containers.run(
        ray_stack["image"],
        ["python", "/dag/run_stack.py", ray_stack["address"], json.dumps(options)],
        detach=True,
        network_mode="host",
        # a Ray driver looks for a raylet among the processes it can see: it shares the
        # head's process namespace (and /tmp/ray) as a driver on the head node would
        pid_mode=f"container:{ray_stack['containers'][0].id}",
        environment={"FF_NODE_ROLE": "driver", "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
                     "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        volumes={ray_stack["ray_tmp"]: {"bind": "/tmp/ray", "mode": "rw"}, ray_stack["dag_dir"]: {"bind": "/dag", "mode": "ro"}},
        labels={"io.functionfuse.test": "container-stack"},
    )
    sockets: list = []
    try:
        while driver.status != "exited":
            sockets += _container_sockets(ray_stack["containers"] + [driver])
            time.sleep(1)
            driver.reload()
        status = driver.wait(timeout=600)
        logs = driver.logs().decode(errors="replace")
    finally:
        driver.remove(force=True)
    sockets += _container_sockets(ray_stack["containers"])
    assert status["StatusCode"] == 0, f"driver failed:\n{logs[-6000:]}"
    (line,) = [ln for ln in logs.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])

    # every connection of every Ray process stayed on loopback (listening sockets: 0.0.0.0 = LISTEN only)
    LISTEN = "0A"
    connected = [s for s in sockets if s[3] != LISTEN]
    assert connected, "no TCP connection of the Ray containers was seen"
    outside = sorted({s for s in connected if not _is_loopback(s[2])})
    assert not outside, f"connections to addresses other than loopback: {outside[:10]}"
    listening_outside = sorted({(s[0], s[1]) for s in sockets if s[3] == LISTEN and not _is_loopback(s[1])})
    if listening_outside:
        print(f"\nRay sockets listening beyond loopback (no traffic seen on them): {listening_outside[:8]}")

    # a two-node cluster on loopback, with the custom resources of the chart's example
    assert result["nodes"] == ["127.0.0.1", "127.0.0.1"]
    assert result["resources"] == ["_disk", "_model"]
    assert result["placement"] == ["worker", "head"]
    # first run: every node ran; second run: every output loaded from S3, nothing ran
    assert result["first"]["ran"] == 4 and result["first"]["loaded"] == 0
    assert result["second"] == {"ran": 0, "loaded": 1}

    # read the results back from the host, through S3, and compare with a local run
    from functionfuse.storage import storage_factory

    storage = storage_factory({"kind": "S3", "options": options})
    assert storage.list_tasks(WORKFLOW, "*") == ["accuracy", "dataset", "model", "split"]
    local = _local_results()
    for task, value in local.items():
        _assert_same(value, storage.read_task(WORKFLOW, task), task)
    assert result["accuracy"] == pytest.approx(local["accuracy"], rel=1e-12)
    meta = storage.read_metadata(WORKFLOW, "model")
    print(f"\ncontainer stack: first run {result['first']['seconds']:.1f} s on Ray {result['ray']}, "
          f"accuracy {result['accuracy']:.4f}; model stored by {meta.get('versions', {}).get('python', '?')}")
