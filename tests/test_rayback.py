"""RayWorkflow on a real Ray: the conformance suite (file and ray storage, bounded and
unbounded submission, execution units on and off), what only Ray can show (actors, placement, crashes of a worker
or of the driver), and a multi-node cluster on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import raysupport  # noqa: I001 - sets the Ray environment before ray is imported
from contracts.backend import CALLS, BackendConformance, LoadErrorConformance, add, seed_incremental_sum, seed_quick_start
from contracts.units import UnitConformance

import numpy as np
import psutil
import ray

from functionfuse import workflow
from functionfuse.backends.builtin import rayback
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.builtin.rayback import RayWorkflow
from functionfuse.backends.plugins import InitializerPlugin, RandomStatePlugin
from functionfuse.errors import ConfigurationError, NodeExecutionError, ResultRecomputedWarning
from functionfuse.storage import storage_factory

pytestmark = pytest.mark.filterwarnings(
    # ray's own use of pkg_resources/deprecated APIs when workers are spawned
    "ignore::DeprecationWarning:ray.*",
)

CALLS_DIR = Path(raysupport.CALLS_DIR)


@pytest.fixture(scope="session", autouse=True)
def _ray_session():
    yield
    raysupport.stop_ray()
    shutil.rmtree(CALLS_DIR, ignore_errors=True)  # this test process's calls log


@pytest.fixture
def local_ray():
    raysupport.start_local_ray()


def ray_storage(path):
    return storage_factory(
        {"kind": "ray", "options": {"remoteArgs": {"resources": {"_disk": 0.001}}, "path": str(path)}}
    )


def returning(max_pending_tasks=0):
    """RayWorkflow whose run() returns results, as the conformance suite expects."""

    class Returning(RayWorkflow):
        def run(self, return_results=True, max_pending_tasks=max_pending_tasks):
            return super().run(return_results=return_results, max_pending_tasks=max_pending_tasks)

    return Returning


class _RayCalls:
    """Workers are started once, so the calls log lives in a folder fixed before Ray starts."""

    @pytest.fixture
    def calls(self, local_ray):
        assert os.environ[CALLS] == str(CALLS_DIR)
        log = CALLS_DIR / "calls.log"
        if log.exists():
            log.unlink()

        def read():
            return log.read_text().split() if log.exists() else []

        read.reset = lambda: log.unlink() if log.exists() else None
        return read


class TestRayConformance(_RayCalls, BackendConformance, LoadErrorConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self, local_ray):
        return returning()


class TestRayConformanceBoundedSubmission(_RayCalls, BackendConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self, local_ray):
        return returning(max_pending_tasks=2)


def unfused(cls):
    """*cls* with automatic fusion off: one Ray task per node, as before units."""

    class Unfused(cls):  # type: ignore[valid-type,misc]
        def __init__(self, *nodes, **kwargs):
            super().__init__(*nodes, **kwargs)
            self.set_fusion(False)

    return Unfused


class TestRayConformanceUnfused(_RayCalls, BackendConformance, LoadErrorConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self, local_ray):
        return unfused(returning())


class TestRayConformanceRayStorage(_RayCalls, BackendConformance):
    @pytest.fixture
    def make_workflow(self, local_ray):
        return returning()

    @pytest.fixture
    def storage(self, tmp_path, local_ray):
        return ray_storage(tmp_path / "storage")


# -- node functions (module level: Ray workers import them) ---------------------------------
@workflow
def where():
    return os.getpid()


@workflow
def after(x, delay):
    time.sleep(delay)
    return x


@workflow
class Recorder:
    def __init__(self):
        self.seen = []

    def append(self, x):
        self.seen.append(x)
        return (os.getpid(), list(self.seen))


@workflow
def crash_once(flag, value):
    if os.path.exists(flag):
        os.remove(flag)
        os._exit(1)  # the worker process dies
    return value


@workflow
def crash_always(flag, value):
    if os.path.exists(flag):
        os._exit(1)
    return value


@workflow
def slow_step(x, flag):
    while os.path.exists(flag):
        time.sleep(0.05)
    return x + 1


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no pickling")


@workflow
def raise_unpicklable():
    raise Unpicklable("cannot travel")


@workflow
def read_env(name):
    return os.environ.get(name)


@workflow
def draw(tag):
    return float(np.random.random())


@workflow
def node_id():
    return ray.get_runtime_context().get_node_id()


@workflow
class Placed:
    def __init__(self):
        self.calls = 0

    def where(self):
        self.calls += 1
        return ray.get_runtime_context().get_node_id(), self.calls


@workflow
def scale(x, k):
    return x * k


@workflow
def combine(items, mapping, *rest, bias=0):
    return sum(items) + sum(mapping.values()) + sum(rest) + bias


# -- Ray itself ------------------------------------------------------------------------------
def _ray_processes():
    me = psutil.Process()
    return [me] + me.children(recursive=True)


def test_ray_listens_on_loopback_only(local_ray):
    """What `ss -ltnp` shows for the Ray processes: every listening socket is on 127.0.0.0/8."""
    listening = []
    for proc in _ray_processes():
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [(proc.name(), c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN]
    assert listening, "the Ray processes should listen somewhere"
    for name, ip in listening:
        addr = ipaddress.ip_address(ip)
        if getattr(addr, "ipv4_mapped", None):
            addr = addr.ipv4_mapped
        assert addr.is_loopback, f"{name} listens on {ip}"


def test_existing_ray_is_reused_and_nodes_run_in_workers(local_ray):
    wf = RayWorkflow(where(), workflow_name="pid", ray_init_args={"num_cpus": 64})
    assert ray.cluster_resources()["CPU"] == 2  # not re-initialised
    pid = wf.run(return_results=True)
    assert pid != os.getpid()


def test_run_returns_none_unless_results_are_asked_for(local_ray, tmp_path):
    wf = RayWorkflow(seed_quick_start(), workflow_name="none")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf.set_storage(storage)
    assert wf.run() is None
    assert storage.read_task("none", "node3") == 6  # saved by the worker that computed it
    assert wf.run(return_results=True) == 6
    assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.skipped) == (0, 1, 2)


def test_same_results_as_local_workflow(local_ray):
    """A DAG with constants, containers, keywords, *args and items of results."""
    xs = [scale(i, 3).set_name(f"x{i}") for i in range(30)]
    pairs = [combine([xs[i], xs[i + 1]], {"a": xs[i + 2]}, 1, bias=i) for i in range(27)]
    parts = [scale(p, 2) for p in pairs]
    total = combine(parts, {"first": xs[0], "last": pairs[-1]}, bias=-5)
    items = [after((xs[i], {"k": pairs[i]}), 0)[1]["k"] for i in range(5)]
    expected = LocalWorkflow(total, *items, workflow_name="same").run()
    assert RayWorkflow(total, *items, workflow_name="same").run(return_results=True) == expected
    assert RayWorkflow(total, *items, workflow_name="same").run(True, max_pending_tasks=3) == expected


def test_class_node_is_one_actor_and_its_calls_keep_their_order(local_ray):
    rec = Recorder().set_name("rec")
    # arguments that become ready in reverse order of the calls
    outs = [rec.append(after(i, 0.3 - 0.05 * i)).set_name(f"append{i}") for i in range(6)]
    results = RayWorkflow(*outs, workflow_name="actor").run(return_results=True)
    pids = {pid for pid, _ in results}
    assert len(pids) == 1 and os.getpid() not in pids
    assert [seen for _, seen in results] == [list(range(k + 1)) for k in range(6)]


def test_seed_stateful_example_with_bounded_submission(local_ray):
    assert RayWorkflow(seed_incremental_sum(), workflow_name="stateful_bounded").run(True, max_pending_tasks=1) == 4


def test_a_failed_call_fails_the_later_calls_on_its_instance(local_ray, tmp_path):
    flag = tmp_path / "fail.flag"
    flag.touch()
    from contracts.backend import IncrementalSum, fail_if

    inst = IncrementalSum(0).set_name("inst")
    inst.add(fail_if(str(flag), 1).set_name("bad_arg")).set_name("first")  # its argument fails
    last = inst.add(10).set_name("second")  # would run on the wrong state
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    wf = RayWorkflow(last, workflow_name="chain_failure")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    assert info.value.node_name == "bad_arg"
    assert "second" not in storage.list_tasks("chain_failure")
    flag.unlink()
    assert returning()(last, workflow_name="chain_failure").run() == 11


def test_remote_error_names_node_and_workflow_with_the_remote_traceback(local_ray):
    from contracts.backend import fail_if

    wf = RayWorkflow(add(fail_if(__file__, 1).set_name("boom"), 1), workflow_name="traceback")
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    message = str(info.value)
    assert "'boom'" in message and "'traceback'" in message
    assert "Remote traceback" in message and "in fail_if" in message and "RuntimeError" in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_an_exception_that_cannot_be_pickled_is_still_reported(local_ray):
    with pytest.raises(NodeExecutionError, match="Unpicklable.*cannot travel"):
        RayWorkflow(raise_unpicklable().set_name("odd"), workflow_name="odd").run()


def test_max_pending_tasks_bounds_the_tasks_in_flight(local_ray, monkeypatch):
    seen = []
    real_wait = ray.wait

    def spy(refs, *args, **kwargs):
        seen.append(len(refs))
        return real_wait(refs, *args, **kwargs)

    monkeypatch.setattr(rayback.ray, "wait", spy)
    nodes = [scale(i, 2) for i in range(40)]
    assert RayWorkflow(*nodes, workflow_name="bounded").run(True, max_pending_tasks=5) == [2 * i for i in range(40)]
    assert seen and max(seen) <= 5


@workflow
def sleep_then(seconds, x):
    time.sleep(seconds)
    return x


def test_progress_counts_tasks_in_flight_and_its_time_moves(local_ray, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    wf = RayWorkflow(sleep_then(2.0, 1).set_name("long"), workflow_name="inflight")
    wf.set_progress(True)
    wf.run()
    lines = [x for x in stream.getvalue().split("\r") if x.startswith("[inflight] 0/1 nodes")]
    assert lines and all("in flight" in x and "running" not in x for x in lines), lines
    # redrawn while Ray runs the node, not only when it finishes
    assert any(float(x.rsplit(None, 2)[-2]) >= 0.9 for x in lines), lines


def test_plugins_run_in_the_worker_and_seed_like_local_workflow(local_ray):
    a = draw("a").set_name("draw_a")
    b = draw("b").set_name("draw_b")
    local = LocalWorkflow(a, b, workflow_name="rng")
    local.query("^draw_").set_plugin(RandomStatePlugin(seed=7))
    wf = RayWorkflow(a, b, workflow_name="rng")
    wf.query("^draw_").set_plugin(RandomStatePlugin(seed=7))
    assert wf.run(return_results=True) == local.run()

    env = read_env("FF_PLUGIN_TEST").set_name("env")
    wf = RayWorkflow(env, workflow_name="init")
    wf.query("^env$").set_plugin(InitializerPlugin(lambda: os.environ.__setitem__("FF_PLUGIN_TEST", "set")))
    assert wf.run(return_results=True) == "set"
    assert "FF_PLUGIN_TEST" not in os.environ  # it ran in the worker, not here


def test_set_remote_args_is_validated(local_ray):
    rec = Recorder().set_name("rec")
    call = rec.append(1).set_name("call")
    wf = RayWorkflow(call, scale(1, 2).set_name("fn"), workflow_name="args")
    with pytest.raises(ConfigurationError, match="invalid Ray task options for node 'fn'"):
        wf.query("^fn$").set_remote_args({"num_cpu": 1})
    with pytest.raises(ConfigurationError, match="num_returns"):
        wf.query("^fn$").set_remote_args({"num_returns": 2})
    with pytest.raises(ConfigurationError, match="in the order"):
        wf.query("^rec$").set_remote_args({"max_concurrency": 4})
    with pytest.raises(ConfigurationError, match="a dict"):
        wf.query("^fn$").set_remote_args([("num_cpus", 1)])
    # the same options on the constructor and its calls are fine (query(None) matches both)
    wf.query().set_remote_args({"num_cpus": 1})
    (_, seen), doubled = wf.run(return_results=True)
    assert (seen, doubled) == ([1], 2)
    wf.query("^call$").set_remote_args({"num_cpus": 2})
    with pytest.raises(ConfigurationError, match="constructor node"):
        wf.run()
    with pytest.raises(ConfigurationError, match="max_pending_tasks"):
        RayWorkflow(scale(1, 1), workflow_name="x").run(max_pending_tasks=-1)


def test_remote_args_reach_ray(local_ray):
    a = node_id().set_name("on_model")
    wf = RayWorkflow(a, workflow_name="resources")
    wf.query("^on_model$").set_remote_args({"num_cpus": 0, "resources": {"_model": 1}, "max_retries": 0})
    assert wf.run(return_results=True) == ray.get_runtime_context().get_node_id()


def test_a_crashed_worker_is_retried_by_ray(local_ray, tmp_path):
    flag = tmp_path / "crash.flag"
    flag.touch()
    wf = RayWorkflow(add(crash_once(str(flag), 20).set_name("crashy"), 1), workflow_name="retry")
    assert wf.run(return_results=True) == 21
    assert not flag.exists()


def test_a_worker_crash_loses_only_unfinished_nodes(local_ray, tmp_path):
    flag = tmp_path / "crash.flag"
    flag.touch()
    storage = ray_storage(tmp_path / "s")
    before = add(1, 2).set_name("before")
    out = add(crash_always(str(flag), before).set_name("crashy"), 1).set_name("out")
    wf = RayWorkflow(out, workflow_name="crash")
    wf.set_storage(storage)
    wf.query("^crashy$").set_remote_args({"max_retries": 0})
    with pytest.raises(NodeExecutionError, match="'crashy'") as info:
        wf.run()
    assert info.value.node_name == "crashy"
    assert storage.list_tasks("crash") == ["before"]
    flag.unlink()
    assert wf.run(return_results=True) == 4
    assert wf.last_run.ran == 2 and wf.last_run.loaded == 1


DRIVER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{tests!r}]
    import raysupport, ray
    from test_rayback import slow_step
    from functionfuse.backends.builtin.rayback import RayWorkflow
    from functionfuse.storage import storage_factory
    x = 0
    for k in range(4):
        x = slow_step(x, {flag!r} if k == 3 else "-").set_name(f"step{{k}}")
    wf = RayWorkflow(x, workflow_name="driver_crash", ray_init_args={{"address": {address!r}}})
    wf.set_storage(storage_factory({{"kind": "file", "options": {{"path": {path!r}}}}}))
    wf.run()
    """
)


def test_a_driver_crash_loses_only_unfinished_nodes(local_ray, tmp_path):
    flag = tmp_path / "hold.flag"
    flag.touch()
    path = tmp_path / "s"
    address = ray.get_runtime_context().gcs_address
    script = DRIVER.format(tests=raysupport.TESTS, flag=str(flag), address=address, path=str(path))
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=raysupport.ROOT)
    storage = storage_factory({"kind": "file", "options": {"path": str(path)}})
    try:
        deadline = time.monotonic() + 60
        while storage.list_tasks("driver_crash") != ["step0", "step1", "step2"]:
            assert driver.poll() is None, "the driver ended early"
            assert time.monotonic() < deadline, storage.list_tasks("driver_crash")
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)  # step3 is running (it waits for the flag)
        driver.wait(30)
        # the same DAG (step3 need not wait now): only the unfinished node runs
        x = 0
        for k in range(4):
            x = slow_step(x, "-").set_name(f"step{k}")
        wf = RayWorkflow(x, workflow_name="driver_crash")
        wf.set_storage(storage)
        assert wf.run(return_results=True) == 4
        assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.skipped) == (1, 1, 2)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(30)
        flag.unlink()  # lets the orphaned step3 of the killed driver end, if it still runs


def test_corrupted_stored_result_is_recomputed_with_a_warning(local_ray, tmp_path):
    storage = ray_storage(tmp_path / "s")
    wf = RayWorkflow(seed_quick_start(), workflow_name="corrupt")
    wf.set_storage(storage)
    wf.run()
    storage.remove_task("corrupt", task_name="node3")
    path = tmp_path / "s" / "corrupt" / "node2.ffr"
    os.truncate(path, path.stat().st_size - 3)
    with pytest.warns(ResultRecomputedWarning, match="node2") as caught:
        assert wf.run(return_results=True) == 6
    assert wf.last_run.recomputed == 1
    assert storage.read_task("corrupt", "node2") == 3
    assert len(caught) == 1 and os.path.samefile(caught[0].filename, __file__)  # the line that called run()
    # several damaged results: one warning for the run
    storage.remove_task("corrupt", task_name="node3")
    for name in ("node1", "node2"):
        path = tmp_path / "s" / "corrupt" / f"{name}.ffr"
        os.truncate(path, path.stat().st_size - 3)
    with pytest.warns(ResultRecomputedWarning, match="2 stored results.*'node1'.*'node2'") as caught:
        assert wf.run(return_results=True) == 6
    assert len(caught) == 1 and os.path.samefile(caught[0].filename, __file__)


def test_seed_ray_example_runs_as_written(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([raysupport.ROOT, os.environ.get("PYTHONPATH", "")]))
    env["RAY_ADDRESS"] = "local"  # its own Ray, even if a test cluster of another session is up
    example = os.path.join(raysupport.ROOT, "examples", "ray_pipeline.py")
    for _ in range(2):  # the second run reads everything back from storage
        out = subprocess.run(
            [sys.executable, example, "--storage", str(tmp_path / "storage")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    assert "accuracy" in out.stdout and "0 nodes run" in out.stdout
    files = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    assert files.list_tasks("classifier") == ["accuracy", "dataset", "model", "split"]


# -- a multi-node cluster on 127.0.0.1 -----------------------------------------------------------
@pytest.fixture(scope="class")
def cluster():
    c = raysupport.start_cluster(
        [
            {"num_cpus": 1},
            {"num_cpus": 1, "resources": {"_disk": 1.0}},
            {"num_cpus": 1, "resources": {"_model": 1.0}},
        ]
    )
    try:
        ids = {}
        for n in ray.nodes():
            role = "disk" if "_disk" in n["Resources"] else "model" if "_model" in n["Resources"] else "head"
            ids[role] = n["NodeID"]
        yield ids
    finally:
        ray.shutdown()
        c.shutdown()


class NodeTag:
    def __init__(self, node):
        self.node = node


class NodeTagSerializer:
    """Records which Ray node wrote and which read a stored result."""

    name = "NodeTag"
    serializer_class = NodeTag

    @classmethod
    def pickle(cls, obj, protocols):
        from functionfuse.serializers import FILE_PROTOCOL

        with protocols[FILE_PROTOCOL].open("node.txt", "w") as f:
            f.write(ray.get_runtime_context().get_node_id())
        return "node.txt"

    @classmethod
    def unpickle(cls, pid, protocols):
        from functionfuse.serializers import FILE_PROTOCOL

        with protocols[FILE_PROTOCOL].open(pid, "r") as f:
            return {"written_on": f.read(), "read_on": ray.get_runtime_context().get_node_id()}


@workflow
def tagged(x):
    return NodeTag(x)


class TestCluster:
    def test_custom_resources_place_nodes_actors_and_storage(self, cluster, tmp_path):
        ids = cluster
        assert set(ids) == {"head", "disk", "model"}
        storage = ray_storage(tmp_path / "storage")
        storage.register_persistent_serializers(NodeTagSerializer)
        on_model = node_id().set_name("model")
        placed = Placed().set_name("placed")
        calls = [placed.where().set_name(f"where{i}") for i in range(3)]
        tag = tagged(on_model).set_name("tag")
        wf = RayWorkflow(on_model, tag, *calls, workflow_name="placement", ray_init_args={"num_cpus": 8})
        wf.set_storage(storage)
        wf.query("^model$").set_remote_args({"num_cpus": 1, "resources": {"_model": 1}})
        wf.query("^placed$").set_remote_args({"num_cpus": 0, "resources": {"_model": 0.5}})
        model, _, *where = wf.run(return_results=True)
        assert model == ids["model"]
        assert where == [(ids["model"], k) for k in (1, 2, 3)]
        # the serializer ran where the storage lives, for the write and for the read
        assert storage.read_task("placement", "tag") == {"written_on": ids["disk"], "read_on": ids["disk"]}
        # same files as kind "file" on this machine
        files = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
        assert files.read_task("placement", "model") == ids["model"]
        assert files.list_tasks("placement") == storage.list_tasks("placement")
        # resume on the cluster
        assert wf.run(return_results=True)[0] == ids["model"]
        assert wf.last_run.ran == 0

    def test_seed_example_on_the_cluster(self, cluster, tmp_path):
        from contracts.backend import seed_incremental_sum

        storage = ray_storage(tmp_path / "storage")
        wf = RayWorkflow(seed_incremental_sum(), workflow_name="stateful")
        wf.set_storage(storage)
        wf.query("^IncrementalSum$").set_remote_args({"resources": {"_model": 0.5}})
        assert wf.run(return_results=True) == 4
        storage.remove_task("stateful", pattern="five_plus_one")
        assert wf.run(return_results=True, max_pending_tasks=2) == 4
        assert wf.last_run.ran == 4  # constructor, 2 replays and the missing call


BLOCK_RAY = textwrap.dedent(
    """
    import sys, importlib.abc
    class NoRay(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, NoRay())
    """
)


@pytest.mark.parametrize(
    "statement",
    [
        "import functionfuse.backends.builtin.rayback",
        "from functionfuse.storage import storage_factory; storage_factory({'kind': 'ray', 'options': {'path': 'x'}})",
    ],
    ids=["rayback", "ray-storage"],
)
def test_without_ray_the_error_names_the_extra(statement):
    code = BLOCK_RAY + f"try:\n    {statement}\nexcept ImportError as exc:\n    print(type(exc).__name__, exc)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("MissingDependencyError")
    assert "pip install 'functionfuse[ray]'" in out.stdout


# -- signed results in Ray workers ------------------------------------------------------------
SIGNING_KEY = "ray-signing-key-0123456789abcdef"


def test_workers_sign_with_the_key_they_are_given(local_ray, tmp_path, monkeypatch):
    """Workers sign what they store with the key of their own environment (a cluster's
    pods get it from a Secret; here a runtime environment gives it to them); the driver
    checks the signatures when it reads."""
    from functionfuse.errors import SigningKeyError
    from functionfuse.storage.signing import ENV_KEY

    monkeypatch.setenv(ENV_KEY, SIGNING_KEY)
    path = tmp_path / "s"
    wf = returning()(seed_quick_start(), workflow_name="signed")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(path)}}))
    wf.query(".*").set_remote_args({"runtime_env": {"env_vars": {ENV_KEY: SIGNING_KEY}}})
    assert wf.run() == 6
    plain = storage_factory({"kind": "file", "options": {"path": str(path)}})
    assert plain.read_metadata("signed", "node3")["signed"] is True
    assert plain.read_task("signed", "node3") == 6
    monkeypatch.setenv(ENV_KEY, "another-key-0123456789abcdef")
    with pytest.raises(SigningKeyError, match="key id"):
        plain.read_task("signed", "node3")


def test_workers_without_the_key_stop_the_run_instead_of_writing_unsigned(local_ray, tmp_path, monkeypatch):
    from functionfuse.errors import SigningKeyError, StorageError
    from functionfuse.storage.signing import ENV_KEY

    monkeypatch.setenv(ENV_KEY, SIGNING_KEY)  # the driver has it, the local Ray's workers do not
    wf = returning()(seed_quick_start(), workflow_name="unsigned")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}}))
    with pytest.raises((SigningKeyError, StorageError), match="no signing key is set in this process"):
        wf.run()
    assert not list((tmp_path / "s").glob("unsigned/*.ffr"))


# -- names and logs ------------------------------------------------------------------------------
@workflow
def own_task_name(*_):
    return ray.get_runtime_context().get_task_name()


@workflow
class NameProbe:
    def __init__(self):
        context = ray.get_runtime_context()
        self.seen = [context.get_actor_name(), context.get_task_name()]

    def names(self, *_):
        context = ray.get_runtime_context()
        return self.seen + [context.get_actor_name(), context.get_task_name()]


def test_tasks_and_actors_carry_node_names(local_ray, tmp_path):
    fn = own_task_name().set_name("fn_node")
    probe = NameProbe().set_name("probe")
    call = probe.names(fn).set_name("probe_call")
    wf = RayWorkflow(fn, call, workflow_name="named_tasks")
    wf.set_storage(ray_storage(tmp_path))
    first, (actor, construct, actor_again, method) = wf.run(return_results=True)
    assert first == "fn_node"
    assert (construct, method) == ("probe", "probe_call")
    assert actor == actor_again and actor.startswith("probe (workflow named_tasks, run ")
    # a stored result is loaded by a task named after its node too
    wf.query("^probe").set_cache("off")
    assert wf.run(return_results=True)[0] == "fn_node"


def test_nodes_finishing_on_ray_are_logged_and_the_oldest_in_flight_is_named(local_ray, monkeypatch, caplog):
    import io
    import logging

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    wf = RayWorkflow(sleep_then(1.5, 1).set_name("long"), workflow_name="ray_logged")
    wf.set_progress(True)
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    assert any("now: long" in x for x in stream.getvalue().split("\r"))
    records = [r.getMessage() for r in caplog.records if r.name == "functionfuse.nodes"]
    assert any(m.startswith("node 'long' of workflow 'ray_logged' finished in 1.") for m in records), records


@workflow
class Tally:
    def __init__(self, start):
        self.total = start

    def plus(self, k, times=1):
        self.total += k * times
        return self.total


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_a_node_task_sends_its_compiled_call_by_the_name_of_its_code(position):
    """The fast path of node specs: a compiled call (a closure of functionfuse._calls,
    whose code every worker has) travels as the name of its code and its cells, so a
    spec stays small; pickled by value, each would carry its code (twice the size)."""
    x = add(1, 2).set_name("x")
    y = add(x, b=3).set_name("y")
    obj = Tally(y).set_name("obj")
    z = obj.plus(x, times=2).set_name("z")
    wf = LocalWorkflow(z, workflow_name="spec")
    task = wf.node_task(position, save=False)
    data = rayback.pack_task(task, {})
    assert b"_rebuild_closure" in data, "the compiled call was pickled by value"
    assert len(data) < 1200, len(data)
    if position == 3:  # a method call gets its instance apart from its arguments
        value = rayback.run_packed(data, [3], 2, Tally.__wrapped__(6))
        assert value == 12
        return
    value = rayback.run_packed(data, [[], [3], [6]][position])
    assert (value.total if position == 2 else value) == [3, 6, 6][position]


# -- execution units: one Ray task per unit --------------------------------------------------
@workflow
def traced(x, tag=None):
    """x + 1, with the process and the Ray task that computed it."""
    context = ray.get_runtime_context()
    value = x["value"] if isinstance(x, dict) else x
    return {"value": value + 1, "pid": os.getpid(), "task": context.get_task_id(), "name": context.get_task_name()}


def traced_chain(n, prefix="t"):
    x = 0
    for k in range(n):
        x = traced(x).set_name(f"{prefix}{k}")
    return x


def test_a_fused_chain_is_one_ray_task_and_every_node_is_stored(local_ray, tmp_path):
    end = traced_chain(12)
    wf = RayWorkflow(end, workflow_name="fused")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf.set_storage(storage)
    assert [len(u.indices) for u in wf.units().running] == [12]
    assert wf.run(return_results=True)["value"] == 12
    assert (wf.last_run.ran, wf.last_run.loaded) == (12, 0)
    stored = [storage.read_task("fused", f"t{k}") for k in range(12)]
    assert [v["value"] for v in stored] == list(range(1, 13))  # each node's own value, stored
    assert len({v["task"] for v in stored}) == 1 and len({v["pid"] for v in stored}) == 1
    assert stored[0]["pid"] != os.getpid()
    assert stored[0]["name"] == "t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11"  # the task names its nodes
    # fusion off: one task per node again
    wf = RayWorkflow(end, workflow_name="unfused")
    wf.set_fusion(False)
    wf.set_storage(storage)
    assert wf.run(return_results=True)["value"] == 12
    tasks = [storage.read_task("unfused", f"t{k}") for k in range(12)]
    assert len({v["task"] for v in tasks}) == 12 and [v["name"] for v in tasks] == [f"t{k}" for k in range(12)]


def test_units_pass_values_between_them_as_refs_and_return_middle_outputs(local_ray):
    """A chain feeding a fan-out: the chain is one task whose middle node is also an
    output; the fan-out nodes each take the chain's end (an export of the unit)."""
    mid = traced_chain(3, "a")
    end = traced(mid).set_name("a_end")
    fan = [traced(end, tag=k).set_name(f"f{k}") for k in range(3)]
    outs = [traced(f).set_name(f"g{k}") for k, f in enumerate(fan)]
    wf = RayWorkflow(mid, *outs, workflow_name="refs")
    running = wf.units().running
    assert sorted(len(u.indices) for u in running) == [2, 2, 2, 4]
    first, *rest = wf.run(return_results=True)
    assert first["value"] == 3 and [r["value"] for r in rest] == [6, 6, 6]
    tasks = {r["task"] for r in rest}
    assert len(tasks) == 3 and first["task"] not in tasks


def test_a_failure_inside_a_fused_chain_names_its_node_and_resume_starts_there(local_ray, tmp_path):
    from contracts.backend import fail_if

    flag = tmp_path / "fail.flag"
    flag.touch()
    c1 = add(add(1, 1).set_name("c0"), 1).set_name("c1")
    c3 = add(fail_if(str(flag), c1).set_name("c2"), 1).set_name("c3")
    out = add(c3, 1).set_name("c4")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    wf = RayWorkflow(out, workflow_name="unit_failure")
    wf.set_storage(storage)
    assert [len(u.indices) for u in wf.units().running] == [5]
    with pytest.raises(NodeExecutionError, match="'c2'.*flag fail.flag is set") as info:
        wf.run()
    assert info.value.node_name == "c2"
    assert "Remote traceback" in str(info.value)
    assert storage.list_tasks("unit_failure") == ["c0", "c1"]  # stored before the failure
    assert wf.last_run.failed == "c2" and wf.last_run.ran == 2
    flag.unlink()
    assert wf.run(return_results=True) == 5
    assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.skipped) == (3, 1, 1)  # from c2 on
    assert storage.list_tasks("unit_failure") == ["c0", "c1", "c2", "c3", "c4"]


def test_the_tasks_after_a_failed_unit_do_not_count_its_stored_nodes_again(local_ray, tmp_path):
    """Each task that needed the failed unit's value fails with the unit's error (Ray
    passes it on): the nodes the unit stored are done once, not once per such task."""
    from contracts.backend import fail_if

    flag = tmp_path / "fail.flag"
    flag.touch()
    failing = fail_if(str(flag), add(add(1, 1).set_name("c0"), 1).set_name("c1")).set_name("c2")
    branches = [add(failing, k).set_name(f"b{k}") for k in range(3)]
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    wf = RayWorkflow(*branches, workflow_name="fan_after_failure")
    wf.set_storage(storage)
    assert [len(u.indices) for u in wf.units().running] == [3, 1, 1, 1]
    with pytest.raises(NodeExecutionError, match="'c2'"):
        wf.run()
    assert (wf.last_run.failed, wf.last_run.ran) == ("c2", 2)
    assert storage.list_tasks("fan_after_failure") == ["c0", "c1"]


@workflow
def seen_by(recorder, *after):
    return list(recorder.seen)


@pytest.mark.parametrize("fusion", [True, False], ids=["fused", "unfused"])
def test_a_node_taking_an_object_sees_it_as_the_calls_written_before_it_left_it(local_ray, tmp_path, fusion):
    """As in LocalWorkflow: ``seen`` is written after ``add(1)`` and before ``add(2)``;
    the actor hands it the object between the two calls. Also on a resume that runs
    ``seen`` alone (the calls before it are replayed in a new actor)."""

    def build():
        rec = Recorder().set_name("rec")
        first = rec.append(1).set_name("first")
        seen = seen_by(rec).set_name("seen")
        late = seen_by(rec).set_name("late")
        second = rec.append(2).set_name("second")
        after_all = seen_by(rec, second).set_name("after_all")
        return first, seen, late, second, after_all

    def values(out):
        return [v[1] if isinstance(v, tuple) else v for v in out]

    expected = [[1], [1], [1], [1, 2], [1, 2]]
    assert values(LocalWorkflow(*build(), workflow_name="objects").run()) == expected
    # the object itself as an output: as its calls left it
    rec = Recorder().set_name("rec")
    wf = RayWorkflow(rec, rec.append(1).set_name("first"), workflow_name="object-output")
    wf.set_fusion(fusion)
    obj, first = wf.run(return_results=True)
    assert obj.seen == [1] and first[1] == [1]
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    wf = RayWorkflow(*build(), workflow_name="objects")
    wf.set_fusion(fusion)
    wf.set_storage(storage)
    assert values(wf.run(return_results=True)) == expected
    storage.remove_task("objects", "seen")
    wf = RayWorkflow(*build(), workflow_name="objects")
    wf.set_fusion(fusion)
    wf.set_storage(storage)
    assert values(wf.run(return_results=True)) == expected
    assert storage.read_task("objects", "seen") == [1]


def test_nodes_with_different_remote_args_never_share_a_task(local_ray):
    x, nodes = 0, []
    for k in range(6):
        x = traced(x).set_name(f"t{k}")
        nodes.append(x)
    wf = RayWorkflow(*nodes, workflow_name="options")
    wf.query("^t[23]$").set_remote_args({"num_cpus": 1, "resources": {"_disk": 0.01, "_model": 0.01}})
    wf.query("^t4$").set_remote_args({"resources": {"_model": 0.01, "_disk": 0.01}, "num_cpus": 1})  # same, by value
    wf.query("^t5$").set_remote_args({"num_cpus": 1, "max_retries": 0})
    names = wf.graph.names
    assert [[names[i] for i in u.indices] for u in wf.units().running] == [["t0", "t1"], ["t2", "t3", "t4"], ["t5"]]
    values = wf.run(return_results=True)
    assert [v["value"] for v in values] == [1, 2, 3, 4, 5, 6]
    tasks = [v["task"] for v in values]
    assert tasks[0] == tasks[1] and tasks[2] == tasks[3] == tasks[4] and len(set(tasks)) == 3
    # an instance and its calls run in an actor: never fused
    rec = Recorder().set_name("rec")
    wf = RayWorkflow(rec.append(traced(0).set_name("arg")).set_name("call"), workflow_name="actors")
    assert wf.fusion_key(wf.graph.names.index("rec")) is None
    assert wf.fusion_key(wf.graph.names.index("call")) is None
    assert all(len(u.indices) == 1 for u in wf.units().running)


def test_a_unit_whose_values_nothing_needs_returns_only_its_token(local_ray, tmp_path):
    """Two nodes recomputed (cache off) before a stored output: a unit of two whose
    values no later step needs (the output is loaded), so its task has one return."""
    out = traced(traced_chain(2, "u")).set_name("out")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = RayWorkflow(out, workflow_name="no_exports")
    wf.set_storage(storage)
    assert wf.run(return_results=True)["value"] == 3
    wf.query("^u").set_cache("off")
    running = wf.units().running
    assert [(len(u.indices), u.exports) for u in running] == [(2, ())]
    assert wf.run(return_results=True)["value"] == 3
    assert (wf.last_run.ran, wf.last_run.loaded) == (2, 1)
    first = storage.read_task("no_exports", "u0")
    assert first["task"] == storage.read_task("no_exports", "u1")["task"]  # still one task, stored again


@workflow
def logged_step(x, k, log, flag):
    """x + k; logs its start; node 3 kills its worker once (while *flag* exists)."""
    with open(log, "a") as f:
        f.write(f"{k}\n")
    if k == 3 and os.path.exists(flag):
        os.remove(flag)
        os._exit(1)
    return x + k


def test_ray_retries_a_unit_after_the_nodes_it_stored(local_ray, tmp_path):
    """The worker running a fused chain dies in its 4th node; Ray retries the task (the
    default max_retries), and the retry reads back the 3 nodes stored before instead of
    running them again."""
    log, flag = tmp_path / "starts.log", tmp_path / "crash.flag"
    flag.touch()
    x = 0
    for k in range(6):
        x = logged_step(x, k, str(log), str(flag)).set_name(f"s{k}")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    wf = RayWorkflow(x, workflow_name="unit_retry")
    wf.set_storage(storage)
    assert [len(u.indices) for u in wf.units().running] == [6]
    assert wf.run(return_results=True) == 15
    assert not flag.exists()  # the crash happened
    assert log.read_text().split() == ["0", "1", "2", "3", "3", "4", "5"]
    assert wf.last_run.ran == 6 and set(storage.list_tasks("unit_retry")) == {f"s{k}" for k in range(6)}
    # without storage a retry runs the whole unit again (nothing to read back)
    log.unlink()
    flag.touch()
    assert RayWorkflow(x, workflow_name="unit_retry_unstored").run(return_results=True) == 15
    assert log.read_text().split() == ["0", "1", "2", "3", "0", "1", "2", "3", "4", "5"]
