"""PrefectWorkflow: the conformance suite on real Prefect flows, plus what Prefect adds.

Most tests run flows against Prefect's temporary local server (no server configured),
which Prefect starts once for this process. ``test_example_against_a_real_prefect_server``
starts ``prefect server start`` on 127.0.0.1 and runs the example against it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

# Prefect reads its settings (PREFECT_HOME above all) once, when it is first imported,
# and creates PREFECT_HOME then: a fixture would be too late. This module is collected
# before anything imports prefect, so this keeps every Prefect file of the test session
# (profiles, the temporary server's database) out of ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="functionfuse-test-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # busy CI machines
os.environ.pop("PREFECT_API_URL", None)  # the temporary local server, whatever the shell says
os.environ.pop("PREFECT_PROFILE", None)

prefect = pytest.importorskip("prefect")

from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from contracts.backend import BackendConformance, LoadErrorConformance, seed_quick_start  # noqa: E402
from contracts.units import UnitConformance  # noqa: E402
from functionfuse import workflow  # noqa: E402
from functionfuse.backends.addons.prefectback import PrefectWorkflow  # noqa: E402
from functionfuse.backends.plugins import RandomStatePlugin  # noqa: E402
from functionfuse.errors import ConfigurationError, NodeExecutionError, ResultRecomputedWarning  # noqa: E402
from functionfuse.storage import storage_factory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "prefect_pipeline.py"


@pytest.fixture(scope="module", autouse=True)
def stop_temporary_server():
    """Stop the temporary server Prefect started for this process, while output is still open."""
    yield
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all(timeout=20)  # send what is queued while the server still answers
    EventsWorker.drain_all(timeout=20)
    SubprocessASGIServer().stop()


class TestPrefectConformance(BackendConformance, LoadErrorConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self):
        return PrefectWorkflow


class UnfusedPrefectWorkflow(PrefectWorkflow):
    """Automatic fusion off: one Prefect task per node, as before execution units."""

    def __init__(self, *nodes, **kwargs):
        super().__init__(*nodes, **kwargs)
        self.set_fusion(False)


class TestPrefectConformanceUnfused(BackendConformance, LoadErrorConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self):
        return UnfusedPrefectWorkflow


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})


# -- nodes used below ----------------------------------------------------------------------
@workflow
def nap(seconds):
    """Sleep in small steps (so a Prefect timeout can interrupt it); return (start, end)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(0.01)
    return start, time.monotonic()


@workflow
def pair(a, b):
    return a, b


@workflow
def flaky(counter_file, failures):
    """Fail the first *failures* calls, then return the number of calls."""
    path = Path(counter_file)
    calls = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(calls))
    if calls <= failures:
        raise ConnectionError(f"transient failure {calls}")
    return calls


@workflow
def stored_now(storage_path, workflow_name, parent_value):
    """What storage holds while this node runs."""
    st = storage_factory({"kind": "file", "options": {"path": storage_path}})
    return st.list_tasks(workflow_name, "*")


@workflow
def identity(x):
    return x


@workflow
class Recorder:
    def __init__(self):
        self.seen = []

    def record(self, value):
        self.seen.append(value)
        return list(self.seen)


def task_runs_of(flow_run_id, expected: int, timeout: float = 30.0):
    """The task runs of a flow run as the server has them (it records them asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.NAME_ASC,
                limit=200,
            )
            final = [r for r in runs if r.state is not None and r.state.is_final()]
            if len(final) >= expected or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)


# -- Prefect specifics ----------------------------------------------------------------------
def test_runs_on_the_temporary_server_with_one_task_per_node_named_after_it():
    """No server configured: Prefect's temporary local server records the flow run."""
    from prefect.settings import PREFECT_API_URL

    assert not PREFECT_API_URL.value()
    wf = PrefectWorkflow(seed_quick_start(), workflow_name="task_names")
    wf.query("^node[12]$").set_task_args({"tags": ["first-two"]})
    assert wf.run() == 6
    runs = task_runs_of(wf.last_flow_run_id, expected=3)
    assert sorted(r.name for r in runs) == ["node1", "node2", "node3"]
    assert all(r.state.is_completed() for r in runs)
    tags = {r.name: set(r.tags) for r in runs}
    assert tags == {"node1": {"first-two"}, "node2": {"first-two"}, "node3": set()}
    # the dependencies are Prefect's own: node3's inputs are the task runs of node1 and node2
    ids = {r.name: r.id for r in runs}
    node3 = next(r for r in runs if r.name == "node3")
    upstream = {i.id for inputs in node3.task_inputs.values() for i in inputs}
    assert upstream == {ids["node1"], ids["node2"]}
    # the tasks themselves carry the node names
    assert sorted(t.name for t in wf.tasks.values()) == ["node1", "node2", "node3"]


def _overlap(a, b):
    return a[0] < b[1] and b[0] < a[1]


def test_independent_nodes_run_concurrently():
    a, b = nap(0.6).set_name("a"), nap(0.6).set_name("b")
    wf = PrefectWorkflow(pair(a, b), workflow_name="concurrent")
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=4)})
    ra, rb = wf.run()
    assert _overlap(ra, rb), (ra, rb)


def test_flow_options_reach_the_flow_one_worker_runs_nodes_one_at_a_time():
    a, b = nap(0.3).set_name("a"), nap(0.3).set_name("b")
    wf = PrefectWorkflow(pair(a, b), workflow_name="serial")
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=1), "name": "serial-flow"})
    flow = wf.generate_flow()
    assert flow.name == "serial-flow"
    ra, rb = wf.run()
    assert not _overlap(ra, rb), (ra, rb)


def test_flow_options_are_checked():
    wf = PrefectWorkflow(seed_quick_start(), workflow_name="bad_options")
    with pytest.raises(ConfigurationError, match="'retires' is not an option of prefect.flow"):
        wf.set_prefect_flow_options({"retires": 2})
    with pytest.raises(ConfigurationError, match="is not an option of prefect.task"):
        wf.query("node1").set_task_args({"max_retries": 2})
    with pytest.raises(ConfigurationError, match="dict"):
        wf.query("node1").set_task_args(["retries"])
    wf.set_prefect_flow_options({"name": "a/b"})  # Prefect forbids '/' in flow names
    with pytest.raises(ConfigurationError, match="Prefect refused the flow"):
        wf.generate_flow()


def test_retries_from_task_args_recover_a_transient_failure(tmp_path, storage):
    counter = tmp_path / "calls"
    node = flaky(str(counter), 1).set_name("flaky")
    wf = PrefectWorkflow(identity(node).set_name("after"), workflow_name="retry")
    wf.set_storage(storage)
    wf.query("^flaky$").set_task_args({"retries": 2, "retry_delay_seconds": 0})
    assert wf.run() == 2  # failed once, succeeded on the retry
    assert counter.read_text() == "2"
    assert storage.read_task("retry", "flaky") == 2
    runs = task_runs_of(wf.last_flow_run_id, expected=2)
    retried = next(r for r in runs if r.name == "flaky")
    assert retried.run_count == 2 and retried.state.is_completed()


def test_without_retries_the_transient_failure_fails_the_flow(tmp_path):
    wf = PrefectWorkflow(flaky(str(tmp_path / "calls"), 1).set_name("flaky"), workflow_name="no_retry")
    with pytest.raises(NodeExecutionError, match="'flaky'.*transient failure 1") as info:
        wf.run()
    assert info.value.node_name == "flaky"
    assert isinstance(info.value.__cause__, ConnectionError)


def test_a_failing_node_fails_its_task_and_the_flow_run():
    @workflow
    def boom(x):
        raise ValueError(f"bad input {x}")

    wf = PrefectWorkflow(identity(boom(1).set_name("boom")).set_name("downstream"), workflow_name="failing")
    wf.set_fusion(False)  # a task per node (fused: test_a_failure_inside_a_fused_chain_fails_its_one_task)
    flow = wf.generate_flow()
    state = flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(NodeExecutionError, match="Node 'boom' of workflow 'failing' failed: ValueError: bad input 1"):
        state.result()
    runs = {r.name: r for r in task_runs_of(state.state_details.flow_run_id, expected=1)}
    assert runs["boom"].state.is_failed()
    assert "downstream" not in runs or not runs["downstream"].state.is_completed()


def test_a_prefect_timeout_names_the_node():
    wf = PrefectWorkflow(nap(5).set_name("slow"), workflow_name="timeout")
    wf.query("slow").set_task_args({"timeout_seconds": 0.3})
    t0 = time.monotonic()
    with pytest.raises(NodeExecutionError, match="'slow'") as info:
        wf.run()
    assert time.monotonic() - t0 < 4
    assert info.value.node_name == "slow"


def test_results_are_saved_as_each_task_finishes(tmp_path, storage):
    first = identity(1).set_name("first")
    probe = stored_now(str(tmp_path / "storage"), "incremental", first).set_name("probe")
    wf = PrefectWorkflow(probe, workflow_name="incremental")
    wf.set_storage(storage)
    # while 'probe' runs, 'first' is stored already (and 'probe' itself not yet)
    assert wf.run() == ["first"]
    assert storage.list_tasks("incremental") == ["first", "probe"]


def test_a_later_failure_keeps_every_finished_branch_stored(tmp_path, storage):
    flag = tmp_path / "fail"
    flag.write_text("")
    from contracts.backend import fail_if

    slow_branch = nap(0.5).set_name("slow_branch")
    failing = fail_if(str(flag), identity(1).set_name("early")).set_name("failing")
    wf = PrefectWorkflow(pair(slow_branch, failing), workflow_name="branches")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="'failing'"):
        wf.run()
    # the independent branch finished and was stored although 'failing' failed first
    assert storage.list_tasks("branches") == ["early", "slow_branch"]


def test_class_nodes_keep_their_call_order_under_concurrency():
    rec = Recorder().set_name("recorder")
    last = None
    for k in range(8):
        last = rec.record(identity(k).set_name(f"value_{k}")).set_name(f"record_{k}")
    wf = PrefectWorkflow(last, workflow_name="order")
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=8)})
    assert wf.run() == list(range(8))


@workflow
def slow_snapshot(recorder, *after):
    time.sleep(0.3)  # a later call would change the object meanwhile if nothing ordered them
    return list(recorder.seen)


@workflow
class Fitted:
    def __init__(self, k):
        self.k = k

    def fit(self, x):
        self.coef = x * self.k
        return self  # as scikit-learn's fit

    def set_k(self, k):
        self.k, self.coef = k, -1
        return k


@workflow
def slow_predict(model, x):
    time.sleep(0.3)
    return model.coef * x


@pytest.mark.parametrize("fusion", [True, False], ids=["fused", "unfused"])
def test_users_of_an_object_run_between_the_calls_they_were_written_between(fusion):
    """Prefect passes the live object: a node that takes it (directly, or as a method
    call's result) must run after the calls written before it and before the calls
    written after it, as LocalWorkflow runs them."""
    rec = Recorder().set_name("recorder")
    first = rec.record(1).set_name("first")
    seen = slow_snapshot(rec).set_name("seen")
    second = rec.record(2).set_name("second")
    model = Fitted(2).set_name("model")
    pred = slow_predict(model.fit(3).set_name("fit"), 10).set_name("pred")
    later = model.set_k(5).set_name("set_k")
    wf = PrefectWorkflow(first, seen, second, pred, later, workflow_name="object-users")
    wf.set_fusion(fusion)
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=4)})
    out = wf.run()
    assert out == [[1], [1], [1, 2], 60, 5]


def test_generate_flow_stores_a_prefect_flow_that_run_reuses():
    wf = PrefectWorkflow(seed_quick_start(), workflow_name="generated")
    assert wf.flow is None
    flow = wf.generate_flow()
    assert isinstance(flow, prefect.Flow) and wf.flow is flow
    assert flow.name == "generated"
    assert flow() == 6  # calling the flow directly runs the workflow
    assert wf.run() == 6 and wf.flow is flow
    wf.query("node3").set_task_args({"retries": 1})
    wf.run()
    assert wf.flow is not flow  # options changed: run() generated the flow again
    assert wf.tasks["node3"].retries == 1 and wf.tasks["node1"].retries == 0


def test_corrupted_stored_result_is_recomputed_with_a_warning(storage):
    wf = PrefectWorkflow(seed_quick_start(), workflow_name="corrupt")
    wf.set_storage(storage)
    wf.run()
    path = Path(storage.path) / "corrupt" / "node3.ffr"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.warns(ResultRecomputedWarning, match="node3") as caught:
        assert wf.run() == 6
    assert wf.last_run.recomputed == 1
    assert storage.read_task("corrupt", "node3") == 6
    # one warning, at the line that called run() (not in functionfuse or Prefect's engine)
    assert len(caught) == 1 and os.path.samefile(caught[0].filename, __file__), caught[0].filename


_NEVER_STORED_CALLS: list[int] = []


@workflow
def never_stored(x):
    _NEVER_STORED_CALLS.append(x)
    return x


def test_a_damaged_result_is_found_before_anything_runs(storage):
    """Every stored result the plan needs is read before any task is submitted: a node
    that is never stored runs once in a run that recomputes a damaged result, not once
    before the damage is found and again after."""

    def build():
        a = seed_quick_start()  # node1 -> node2 -> node3
        return a, never_stored(5).set_name("unstored")

    wf = PrefectWorkflow(*build(), workflow_name="damaged-first")
    wf.set_storage(storage)
    wf.query("^unstored$").set_persist(False)
    assert wf.run() == [6, 5]
    folder = Path(storage.path) / "damaged-first"
    (folder / "node3.ffr").unlink()  # runs again, with node2 loaded...
    path = folder / "node2.ffr"  # ...which is damaged past its header
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    _NEVER_STORED_CALLS.clear()
    with pytest.warns(ResultRecomputedWarning, match="node2"):
        assert wf.run() == [6, 5]
    assert _NEVER_STORED_CALLS == [5]
    assert wf.last_run.recomputed == 1 and wf.last_run.ran == 3  # node2, node3, unstored


def test_a_node_that_succeeds_on_a_retry_leaves_the_run_finished_with_no_failed_node(tmp_path):
    from contracts.backend import add, fail_once

    flag = tmp_path / "once.flag"
    flag.touch()
    wf = PrefectWorkflow(add(fail_once(str(flag), 1).set_name("flaky"), 1), workflow_name="retry")
    wf.query("^flaky$").set_task_args({"retries": 1})
    assert wf.run() == 2
    assert not flag.exists()  # it did fail once
    assert wf.last_run.status == "finished" and wf.last_run.failed is None


def test_plugins_seed_nodes_as_in_local_workflow():
    import random

    @workflow
    def draw(tag):
        return random.random()

    a, b = draw("a").set_name("draw_a"), draw("b").set_name("draw_b")
    wf = PrefectWorkflow(a, b, workflow_name="rng")
    wf.query("^draw_").set_plugin(RandomStatePlugin(seed=7, seed_func=random.seed))
    from functionfuse.backends.builtin.localback import LocalWorkflow

    local = LocalWorkflow(a, b, workflow_name="rng")
    local.query("^draw_").set_plugin(RandomStatePlugin(seed=7, seed_func=random.seed))
    assert wf.run() == local.run()


def test_the_example_flow_loads_from_its_entrypoint(tmp_path, monkeypatch):
    """A deployment finds the generated flow as examples/prefect_pipeline.py:flow."""
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.setenv("FUNCTIONFUSE_STORAGE", str(tmp_path / "storage"))
    flow = load_flow_from_entrypoint(f"{EXAMPLE}:flow")
    assert isinstance(flow, prefect.Flow) and flow.name == "prefect_pipeline"


def test_importing_without_prefect_names_the_extra():
    code = (
        "import sys; sys.modules['prefect'] = None\n"
        "try:\n"
        "    import functionfuse.backends.addons.prefectback\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.startswith("MissingDependencyError")
    assert "pip install 'functionfuse[prefect]'" in out.stdout


# -- a real Prefect server -----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME; stopped by PID."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if _api(url, "/health") is True:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server did not answer within 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        # the server runs in its own session: stop its process group (uvicorn and services)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
def test_example_against_a_real_prefect_server(prefect_server, tmp_path):
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "client-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    cmd = [sys.executable, str(EXAMPLE), "--storage", str(tmp_path / "storage")]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "79994 values kept of 80000 loaded" in first.stdout
    assert "see it in the Prefect UI: http://127.0.0.1:" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 tasks run, 1 results loaded from storage" in second.stdout  # resumed from storage

    flow_runs = _api(prefect_server, "/flow_runs/filter", {"flows": {"name": {"any_": ["prefect_pipeline"]}}})
    assert len(flow_runs) == 2 and all(r["state_type"] == "COMPLETED" for r in flow_runs)
    first_run = min(flow_runs, key=lambda r: r["created"])
    expected = {f"{kind}_{k}" for kind in ("shard", "clean", "update", "count") for k in range(4)}
    expected |= {"stats", "summary", "report"}
    deadline = time.monotonic() + 30
    while True:
        task_runs = _api(prefect_server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [first_run["id"]]}}})
        done = {t["name"] for t in task_runs if t["state_type"] == "COMPLETED"}
        if done == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert done == expected
    assert {t["name"]: t["tags"] for t in task_runs}["shard_0"] == ["io"]
    # the UI is served too
    with urllib.request.urlopen(prefect_server.rsplit("/api", 1)[0] + "/", timeout=10) as resp:
        assert b"<html" in resp.read(2000).lower()


# -- Prefect's own caching -----------------------------------------------------------------
@workflow
def counted_add(counter_file, a, b):
    """a + b; appends a line to *counter_file* each time it really runs."""
    with open(counter_file, "a") as f:
        f.write(f"{a}+{b}\n")
    return a + b


def _cache_options():
    from prefect.cache_policies import INPUTS, TASK_SOURCE
    from prefect.tasks import task_input_hash

    return {
        "INPUTS": {"cache_policy": INPUTS},
        "task_input_hash": {"cache_key_fn": task_input_hash},
        # every node's task has the same source: the node's fingerprint tells them apart
        "TASK_SOURCE": {"cache_policy": TASK_SOURCE},
    }


@pytest.mark.parametrize("option", ["INPUTS", "task_input_hash", "TASK_SOURCE"])
def test_prefect_cache_keys_include_the_constant_arguments(tmp_path, option):
    """Constant arguments are not task parameters, yet they reach Prefect's cache key:
    add(1, 1) and add(5, 5) do not share a cached result, and the same call again is a hit."""
    counter = tmp_path / "calls"
    args = _cache_options()[option]
    results = []
    for a in (1, 5, 1):
        wf = PrefectWorkflow(counted_add(str(counter), a, a).set_name("add"), workflow_name=f"cached_{option}")
        wf.query("^add$").set_task_args(args)
        results.append(wf.run())
        states = task_runs_of(wf.last_flow_run_id, expected=1)
        results.append(states[0].state.name)
    assert results == [2, "Completed", 10, "Completed", 2, "Cached"]
    assert counter.read_text().splitlines() == ["1+1", "5+5"]  # the third run was Prefect's cache hit


def test_prefect_cache_keys_tell_nodes_of_one_run_apart(tmp_path):
    """persist_result alone uses Prefect's default policy (inputs, task source, run id):
    two nodes of one flow run with other constants get their own results."""
    counter = tmp_path / "calls"
    a = counted_add(str(counter), 1, 1).set_name("a")
    b = counted_add(str(counter), 5, 5).set_name("b")
    wf = PrefectWorkflow(a, b, workflow_name="cached_one_run")
    wf.query("^[ab]$").set_task_args({"persist_result": True})
    assert wf.run() == [2, 10]


# -- logs ------------------------------------------------------------------------------------
def _tracebacks_of(caplog, text):
    """The log records that carry a traceback whose exceptions mention *text*."""
    import traceback

    found = []
    for r in caplog.records:
        if r.exc_info and r.exc_info[1] is not None:
            if text in "".join(traceback.format_exception(*r.exc_info)):
                found.append(r)
    return found


def test_a_failing_node_is_logged_once(caplog):
    @workflow
    def explode(x):
        raise ValueError(f"exploded on {x}")

    wf = PrefectWorkflow(identity(explode(1).set_name("explode")).set_name("after"), workflow_name="logged_once")
    with caplog.at_level(logging.INFO), pytest.raises(NodeExecutionError, match="exploded on 1"):
        wf.run()
    logged = _tracebacks_of(caplog, "exploded on 1")
    assert len(logged) == 1, [(r.name, r.getMessage()[:120]) for r in logged]
    assert logged[0].name == "prefect.task_runs"  # on the node's task run, where the Prefect UI shows it
    # the flow run still says it failed, and why, in one line
    flow_lines = [r.getMessage() for r in caplog.records if r.name == "prefect.flow_runs"]
    assert any("Failed" in m and "exploded on 1" in m for m in flow_lines), flow_lines


def test_an_error_outside_any_node_keeps_its_flow_run_traceback(tmp_path, caplog):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})

    def unreachable(workflow_name, *args, **kwargs):
        raise OSError("storage is unreachable")

    # the plan lists storage once, through its fingerprint index (read_fingerprints)
    storage.stored_tasks = storage.read_fingerprints = unreachable
    wf = PrefectWorkflow(seed_quick_start(), workflow_name="no_node")
    wf.set_storage(storage)
    with caplog.at_level(logging.INFO), pytest.raises(OSError):
        wf.run()
    assert [r.name for r in _tracebacks_of(caplog, "storage is unreachable")] == ["prefect.flow_runs"]


def test_nodes_are_logged_on_the_functionfuse_logger(caplog):
    wf = PrefectWorkflow(seed_quick_start(), workflow_name="node_records")
    with caplog.at_level(logging.INFO):
        assert wf.run() == 6
    records = [r.getMessage() for r in caplog.records if r.name == "functionfuse.nodes"]
    for name in ("node1", "node2", "node3"):
        assert f"node {name!r} of workflow 'node_records' started" in records
        assert any(m.startswith(f"node {name!r} of workflow 'node_records' finished in ") for m in records)


# -- execution units -------------------------------------------------------------------------
@workflow
def inc(x):
    return x + 1


@workflow
def slow_inc(x, seconds):
    """x + 1 after *seconds*, sleeping in small steps (so a Prefect timeout can interrupt it)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(0.01)
    return x + 1


def inc_chain(start, names):
    node = start
    for name in names:
        node = inc(node).set_name(name)
    return node


def test_a_chain_is_one_prefect_task_whose_name_lists_its_nodes(storage):
    short = inc_chain(0, ["a", "b", "c"])
    long = inc_chain(100, [f"step_{k:02d}" for k in range(40)])
    wf = PrefectWorkflow(short, long, workflow_name="units_named")
    wf.set_storage(storage)
    assert [len(u.indices) for u in wf.units().running] == [3, 40]
    assert wf.run() == [3, 140]
    runs = task_runs_of(wf.last_flow_run_id, expected=2)
    assert all(r.state.is_completed() for r in runs)
    names = sorted(r.name for r in runs)
    assert len(runs) == 2
    assert names[0] == "a, b, c"
    # a long unit's name stays short and readable: first nodes, the last, and how many
    assert names[1].startswith("step_00, step_01, ") and names[1].endswith(", ... step_39 (40 nodes)")
    assert len(names[1]) < 100
    # every node stored as its own result, every node counted
    assert sorted(storage.list_tasks("units_named")) == sorted(wf.graph.names)
    assert storage.read_task("units_named", "step_20") == 121
    assert wf.last_run.ran == 43


def test_with_fusion_off_every_node_is_its_own_task():
    wf = PrefectWorkflow(inc_chain(0, ["a", "b", "c"]), workflow_name="units_off")
    wf.set_fusion(False)
    assert wf.run() == 3
    assert sorted(r.name for r in task_runs_of(wf.last_flow_run_id, expected=3)) == ["a", "b", "c"]
    wf.set_fusion(True)
    wf.query("^b$").set_fusion(False)  # the switch per query: b runs alone, a and c too then
    assert wf.run() == 3
    assert sorted(r.name for r in task_runs_of(wf.last_flow_run_id, expected=3)) == ["a", "b", "c"]


def test_a_failure_inside_a_fused_chain_fails_its_one_task(tmp_path, storage):
    from contracts.backend import fail_if

    flag = tmp_path / "fail"
    flag.touch()
    head = inc_chain(0, ["h1", "h2"])
    tail = inc_chain(fail_if(str(flag), head).set_name("mid"), ["t1", "t2"])
    wf = PrefectWorkflow(tail, workflow_name="units_fail")
    wf.set_storage(storage)
    assert [tuple(wf.graph.names[i] for i in u.indices) for u in wf.units().running] == [
        ("h1", "h2", "mid", "t1", "t2")
    ]
    flow = wf.generate_flow()
    state = flow(return_state=True)
    assert state.is_failed()
    with pytest.raises(NodeExecutionError, match="Node 'mid' of workflow 'units_fail' failed") as info:
        state.result()
    assert info.value.node_name == "mid"
    assert wf.last_run.failed == "mid" and wf.last_run.ran == 2
    assert storage.list_tasks("units_fail") == ["h1", "h2"]  # the nodes before it, each stored
    (run,) = task_runs_of(state.state_details.flow_run_id, expected=1)
    assert run.name == "h1, h2, mid, t1, t2" and run.state.is_failed()
    # resume: the nodes from the failed one on run, as one task
    flag.unlink()
    assert wf.run() == 4
    (run,) = task_runs_of(wf.last_flow_run_id, expected=1)
    assert run.name == "mid, t1, t2"
    assert wf.last_run.ran == 3 and wf.last_run.loaded == 1


def test_nodes_with_different_task_options_never_share_a_task():
    wf = PrefectWorkflow(inc_chain(0, ["a", "b", "c", "d", "e"]), workflow_name="units_options")
    wf.query("^[bc]$").set_task_args({"retries": 2})
    wf.query("^d$").set_task_args({"tags": ["x"]})
    wf.query("^e$").set_task_args({"tags": ["x"]})  # equal by value, set apart: they fuse
    units = [tuple(wf.graph.names[i] for i in u.indices) for u in wf.units().running]
    assert units == [("a",), ("b", "c"), ("d", "e")]
    assert wf.fusion_key(1) == wf.fusion_key(2) != wf.fusion_key(0)
    assert wf.run() == 5
    runs = {r.name: r for r in task_runs_of(wf.last_flow_run_id, expected=3)}
    assert sorted(runs) == ["a", "b, c", "d, e"]
    assert set(runs["d, e"].tags) == {"x"} and not runs["a"].tags
    # a group must share options: b (retries) cannot join a
    wf.query("^[ab]$").set_group("ab")
    with pytest.raises(ConfigurationError, match="Group 'ab'.*'a' and 'b'"):
        wf.units()


def test_a_unit_retries_as_a_whole_and_gets_its_nodes_timeouts(tmp_path, storage):
    counter = tmp_path / "calls"
    first = inc(0).set_name("first")
    node = flaky(str(counter), 1).set_name("flaky")
    wf = PrefectWorkflow(pair(first, identity(node).set_name("after")), workflow_name="units_retry")
    wf.query("^(flaky|after)$").set_task_args({"retries": 1, "retry_delay_seconds": 0})
    assert wf.run() == (1, 2)
    runs = {r.name: r for r in task_runs_of(wf.last_flow_run_id, expected=3)}
    assert runs["flaky, after"].run_count == 2 and runs["flaky, after"].state.is_completed()
    # three nodes of 0.4 s with a timeout of 0.8 s each: the unit has 2.4 s, not 0.8 s
    slow = slow_inc(slow_inc(slow_inc(0, 0.4).set_name("s1"), 0.4).set_name("s2"), 0.4).set_name("s3")
    wf = PrefectWorkflow(slow, workflow_name="units_timeout")
    wf.query("^s").set_task_args({"timeout_seconds": 0.8})
    assert wf.run() == 3
    (run,) = task_runs_of(wf.last_flow_run_id, expected=1)
    assert run.name == "s1, s2, s3"
    # a node past its own timeout still fails the unit, and is named
    slow = slow_inc(slow_inc(0, 0.1).set_name("quick"), 5).set_name("stuck")
    wf = PrefectWorkflow(slow, workflow_name="units_stuck")
    wf.set_storage(storage)
    wf.query(".").set_task_args({"timeout_seconds": 0.5})
    t0 = time.monotonic()
    with pytest.raises(NodeExecutionError, match="'stuck'") as info:
        wf.run()
    assert time.monotonic() - t0 < 4
    assert info.value.node_name == "stuck" and wf.last_run.failed == "stuck"
    assert storage.list_tasks("units_stuck") == ["quick"] and wf.last_run.ran == 1  # done before the timeout


def test_a_unit_cached_by_prefect_keys_on_every_node_of_it(tmp_path):
    """Nodes with the same Prefect cache options fuse; the unit's cache key holds the
    fingerprints of all its nodes: a constant changed in its last node is a miss."""
    from prefect.cache_policies import INPUTS

    counter = tmp_path / "calls"
    states = []
    for a, k in ((1, 1), (1, 2), (1, 1)):
        first = counted_add(str(counter), a, a).set_name("first")
        wf = PrefectWorkflow(counted_add(str(counter), first, k).set_name("second"), workflow_name="cached_unit")
        wf.query(".").set_task_args({"cache_policy": INPUTS})
        assert [len(u.indices) for u in wf.units().running] == [2]
        assert wf.run() == 2 + k
        (run,) = task_runs_of(wf.last_flow_run_id, expected=1)
        states.append((run.name, run.state.name))
    assert states == [("first, second", "Completed"), ("first, second", "Completed"), ("first, second", "Cached")]
    assert counter.read_text().splitlines() == ["1+1", "2+1", "1+1", "2+2"]  # the third run was a cache hit
