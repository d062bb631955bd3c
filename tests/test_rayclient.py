"""RayWorkflow over Ray Client (``ray://``): a clear error when the laptop's Ray or Python is
not the cluster's (functionfuse.backends.builtin._rayclient).

A real Ray head with its Ray Client server (port chosen free, 127.0.0.1 only) runs in a
subprocess; drivers connect to it from other subprocesses, as a laptop would.

No real mismatch can run here: one Python (3.11) and one Ray (2.60.0) are installed, and a
second Ray wheel is not fetched by the test suite. So the mismatch is simulated on the
client side only: the driver reports another Ray version (``ray.__version__``) to Ray's
own version check and to functionfuse, while the cluster's versions are read for real
from the running server.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")

from functionfuse.backends.builtin import _rayclient  # noqa: E402
from functionfuse.errors import ConfigurationError, VersionMismatchError  # noqa: E402
from functionfuse.kit.registry import free_port  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = textwrap.dedent("""
    import os, sys
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "ray_client_server_port": int(sys.argv[1]), "include_dashboard": False,
        "object_store_memory": 128 * 1024 * 1024})
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    cluster.shutdown()
""")

DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    if sys.argv[2]:
        ray.__version__ = sys.argv[2]  # the simulated client-side version (see the module docstring)
    from functionfuse import task, workflow
    from functionfuse.backends.builtin.rayback import RayWorkflow
    from functionfuse.errors import VersionMismatchError

    @workflow
    def double(x):
        return 2 * x

    try:
        RayWorkflow(double(21), workflow_name="client", ray_init_args={"address": sys.argv[1]})
        # connected as a Ray Client: a task runs on the cluster
        print(json.dumps({"result": ray.get(ray.remote(lambda x: 2 * x).remote(21)),
                          "client": ray.util.client.ray.is_connected()}))
    except VersionMismatchError as exc:
        print(json.dumps({"error": str(exc), "local": exc.local, "cluster": exc.cluster,
                          "cause": type(exc.__cause__).__name__}))
""")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def ray_client_address(tmp_path_factory):
    port = free_port()
    script = tmp_path_factory.mktemp("rayclient") / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the client server starts after the head
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"ray://127.0.0.1:{port}"
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def drive(address: str, pretend_ray: str = "", attempts: int = 3) -> dict:
    """Run a driver process; another attempt when Ray's proxy failed to start the session's
    server on the cluster ("Starting Ray client server failed": the server process of a
    session sometimes exits at start on this loaded 2-core machine, before it logs a line),
    which is not what these tests are about."""
    for attempt in range(attempts):
        out = subprocess.run([sys.executable, "-c", DRIVER, address, pretend_ray], capture_output=True, text=True,
                             env=_env(), timeout=300, stdin=subprocess.DEVNULL, cwd=ROOT)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if lines or "Starting Ray client server failed" not in out.stderr or attempt == attempts - 1:
            break
        time.sleep(3)
    assert lines, out.stderr[-3000:]
    return json.loads(lines[-1])


def test_matching_versions_connect_and_run(ray_client_address):
    assert drive(ray_client_address) == {"result": 42, "client": True}


def test_another_ray_on_the_laptop_is_named_with_both_versions_and_the_fix(ray_client_address):
    import ray

    got = drive(ray_client_address, pretend_ray="2.59.0")
    assert "error" in got, got
    assert got["local"]["ray"] == "2.59.0" and got["cluster"]["ray"] == ray.__version__
    assert got["cluster"]["python"] == platform.python_version()  # read from the server
    assert f"Ray 2.59.0 on Python {platform.python_version()}" in got["error"]
    assert f"the cluster Ray {ray.__version__}" in got["error"]
    assert f"pip install 'ray[client]=={ray.__version__}'" in got["error"] and "ray job submit" in got["error"]
    # chained to Ray's own failure: its version check, or a refused session start
    assert got["cause"] in ("RuntimeError", "ConnectionAbortedError"), got["cause"]


def test_the_cluster_reports_its_versions_without_a_pickled_job_config(ray_client_address):
    """Last of the tests on the server: a Ray Client session opened right after another
    one closed sometimes fails to start its server on the cluster (Ray 2.60's proxy), which
    is not what these tests are about."""
    import ray

    versions = _rayclient.cluster_versions(ray_client_address)
    assert versions == {"ray": ray.__version__, "python": platform.python_version()}


@pytest.mark.parametrize("local,cluster,bad", [
    ({"ray": "2.60.0", "python": "3.11.2"}, {"ray": "2.60.0", "python": "3.11.9"}, False),
    ({"ray": "2.60.0", "python": "3.12.1"}, {"ray": "2.60.0", "python": "3.11.9"}, True),
    ({"ray": "2.9.3", "python": "3.11.9"}, {"ray": "2.60.0", "python": "3.11.9"}, True),
], ids=["patch-differs", "python-minor-differs", "ray-differs"])
def test_what_ray_client_accepts(local, cluster, bad):
    error = _rayclient.mismatch("ray://h:10001", local, cluster)
    assert (error is not None) == bad
    if error:
        assert isinstance(error, ConfigurationError) and error.local == local and error.cluster == cluster
        assert "Python 3.11 with `pip install 'ray[client]==2.60.0'`" in str(error)


def test_the_error_survives_pickling():
    import pickle

    error = _rayclient.mismatch("ray://h:1", {"ray": "1", "python": "3.12.0"}, {"ray": "2", "python": "3.11.0"})
    back = pickle.loads(pickle.dumps(error))
    assert isinstance(back, VersionMismatchError) and back.local == error.local and str(back) == str(error)
