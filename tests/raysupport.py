"""A real Ray for the Ray tests: one local Ray per test session, on 127.0.0.1 only.

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every Ray process on the loopback
address (by default Ray also listens on the machine's address);
``test_rayback.py::test_ray_listens_on_loopback_only`` checks it with the sockets of
the Ray processes (what ``ss -ltnp`` shows). Ray is never stopped with ``ray stop``:
``ray.shutdown()`` (and ``Cluster.shutdown()``) end only the processes these tests started.

Workers import the test modules (node functions are defined there), so ``tests/`` and
the project root are put on ``PYTHONPATH`` before Ray starts its workers.
"""

from __future__ import annotations

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # failing-node tests would print noise

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
#: custom resources of the local test Ray: a storage "node" and a model "node"
LOCAL_RESOURCES = {"_disk": 1.0, "_model": 1.0}
#: where node functions of the backend conformance suite log their calls: workers see
#: the environment of the moment Ray starts, so it is fixed before Ray starts; one folder
#: per test process, so two test runs at once (each with its own Ray) never share a log
CALLS_DIR = os.path.join(ROOT, ".pytest_cache", f"ray-calls-{os.getpid()}")
_started_here = False


def _worker_path() -> None:
    parts = [TESTS, ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    os.makedirs(CALLS_DIR, exist_ok=True)
    os.environ["FUNCTIONFUSE_TEST_CALLS"] = CALLS_DIR


def _loopback_only() -> None:
    # The variable is read when ray is first imported; if something imported ray
    # before this module (e.g. doctest collection), apply it now.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray() -> None:
    """Start the shared local Ray (2 CPUs, the custom resources above) if none runs."""
    global _started_here
    import ray

    if ray.is_initialized():
        return
    _worker_path()
    _loopback_only()
    ray.init(
        address="local",  # a new instance, never a cluster another process started
        num_cpus=2,
        resources=LOCAL_RESOURCES,
        include_dashboard=False,
        object_store_memory=512 * 1024 * 1024,
        configure_logging=False,
    )
    _started_here = True


def stop_ray() -> None:
    import ray

    if "ray" in sys.modules and ray.is_initialized():
        ray.shutdown()


def start_cluster(nodes: list[dict]) -> object:
    """A multi-node Ray cluster on 127.0.0.1 (ray.cluster_utils.Cluster), connected.

    *nodes* are ``add_node`` arguments; the first one is the head.
    """
    _worker_path()
    _loopback_only()
    from ray.cluster_utils import Cluster

    stop_ray()
    head, *others = nodes
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"include_dashboard": False, "object_store_memory": 128 * 1024 * 1024, **head},
    )
    for args in others:
        cluster.add_node(object_store_memory=128 * 1024 * 1024, **args)
    cluster.wait_for_nodes()
    cluster.connect()
    return cluster
