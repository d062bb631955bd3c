"""LocalWorkflow(parallel=N): the conformance suite on a pool of threads, plus what only
a pool shows (nodes overlapping, retries, timeouts, the release of values, stopping)."""

from __future__ import annotations

import functools
import gc
import threading
import time
import weakref

import pytest

from contracts.backend import BackendConformance, LoadErrorConformance
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import ConfigurationError, NodeExecutionError, NodeTimeoutError
from functionfuse.storage import storage_factory


class TestPoolConformance(BackendConformance, LoadErrorConformance):
    @pytest.fixture
    def make_workflow(self):
        return functools.partial(LocalWorkflow, parallel=2)


class TestOneWorkerConformance(BackendConformance, LoadErrorConformance):
    """parallel=1 with a retry set: the pool with one worker (not the serial executor)."""

    @pytest.fixture
    def make_workflow(self):
        def make(*nodes, workflow_name):
            wf = LocalWorkflow(*nodes, workflow_name=workflow_name)
            wf.query().set_retries(0)
            return wf

        return make


def wait_for_workers_to_exit(workflow_name, limit=20.0):
    """Wait until no worker thread of *workflow_name* is left (a node still running ends first)."""
    deadline = time.monotonic() + limit
    while [t for t in threading.enumerate() if t.name == f"functionfuse-{workflow_name}"]:
        assert time.monotonic() < deadline, "worker threads still alive"
        time.sleep(0.05)


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})


@workflow
def meet(barrier, tag):
    barrier.wait()  # raises BrokenBarrierError after its timeout when the other never comes
    return tag


@workflow
def pair(a, b):
    return a + b


def test_independent_nodes_run_at_the_same_time():
    barrier = threading.Barrier(2, timeout=5)
    out = pair(meet(barrier, "a"), meet(barrier, "b"))
    assert LocalWorkflow(out, workflow_name="overlap", parallel=2).run() == "ab"


def test_the_serial_run_does_not_overlap_them():
    # the check above can fail: one after another, the first node waits alone
    barrier = threading.Barrier(2, timeout=0.5)
    out = pair(meet(barrier, "a"), meet(barrier, "b"))
    with pytest.raises(NodeExecutionError, match="BrokenBarrierError"):
        LocalWorkflow(out, workflow_name="serial").run()


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", [0, -1, 1.5, "2", True, None], ids=repr)
def test_parallel_must_be_a_positive_int(parallel):
    with pytest.raises(ConfigurationError, match=rf"parallel={parallel!r}.*int >= 1.*parallel=4"):
        LocalWorkflow(pair(1, 2), workflow_name="bad", parallel=parallel)


@pytest.mark.parametrize("retries", [-1, 1.0, "1", True], ids=repr)
def test_retries_must_be_an_int(retries):
    wf = LocalWorkflow(pair(1, 2), workflow_name="bad")
    with pytest.raises(ConfigurationError, match=r"set_retries\(\) takes .* int >= 0"):
        wf.query().set_retries(retries)


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan"), "5", True], ids=repr)
def test_timeout_must_be_positive_seconds(seconds):
    wf = LocalWorkflow(pair(1, 2), workflow_name="bad")
    with pytest.raises(ConfigurationError, match=r"set_timeout\(\) takes a number of seconds > 0"):
        wf.query().set_timeout(seconds)


def test_retries_refuse_class_nodes_and_method_calls():
    """A retry of a method call would apply it twice to the object it already changed
    (and a failed save is retried by running the node again)."""

    @workflow
    class Acc:
        def __init__(self, v):
            self.v = v

        def add(self, x):
            self.v += x
            return self.v

    acc = Acc(1).set_name("acc")
    wf = LocalWorkflow(pair(acc.add(5).set_name("add5"), 1).set_name("out"), workflow_name="q")
    with pytest.raises(ConfigurationError, match=r"'acc', 'add5' are class nodes or method calls.*pattern"):
        wf.query().set_retries(1)
    with pytest.raises(ConfigurationError, match=r"'add5' is a class node or method call"):
        wf.query("^add5$").set_retries(2)
    wf.query().set_retries(0)
    wf.query("^out$").set_retries(2)
    assert wf.run() == 7


def test_a_query_matching_nothing_refuses_retries_and_timeouts():
    wf = LocalWorkflow(pair(1, 2), workflow_name="q")
    for setter, arg in (("set_retries", 1), ("set_timeout", 1.0)):
        with pytest.raises(ConfigurationError, match=rf"matches no node, so {setter}\(\)"):
            getattr(wf.query("^nothing$"), setter)(arg)


def test_repr_names_the_parallelism():
    assert "parallel 3" in repr(LocalWorkflow(pair(1, 2), workflow_name="r", parallel=3))
    assert "parallel" not in repr(LocalWorkflow(pair(1, 2), workflow_name="r"))


# -- retries ----------------------------------------------------------------------------------
@workflow
def flaky(path, fails):
    """Fails *fails* times (counted in a file), then returns how many attempts it took."""
    import os

    count = 0
    if os.path.exists(path):
        with open(path) as fh:
            count = int(fh.read())
    with open(path, "w") as fh:
        fh.write(str(count + 1))
    if count < fails:
        raise RuntimeError(f"attempt {count + 1} fails")
    return count + 1


@pytest.mark.parametrize("parallel", [1, 2])
def test_retries_rerun_a_failing_node_and_the_report_counts_them(tmp_path, storage, parallel):
    out = pair(flaky(str(tmp_path / "n"), 2).set_name("fit"), 10).set_name("total")
    wf = LocalWorkflow(out, workflow_name="retry", parallel=parallel)
    wf.set_storage(storage)
    wf.query("^fit$").set_retries(2)
    assert wf.run() == 13  # third attempt
    assert wf.last_run.retries == {"fit": 2}
    assert "retried: fit 2x" in wf.last_run.summary()
    assert storage.last_run_report("retry")["retries"] == {"fit": 2}
    assert storage.read_task("retry", "fit") == 3


def test_retries_run_out_and_the_node_is_the_error(tmp_path, storage):
    out = pair(flaky(str(tmp_path / "n"), 5).set_name("fit"), 10)
    wf = LocalWorkflow(out, workflow_name="retry", parallel=2)
    wf.set_storage(storage)
    wf.query("^fit$").set_retries(1)
    with pytest.raises(NodeExecutionError, match="'fit'.*attempt 2 fails") as info:
        wf.run()
    assert info.value.node_name == "fit" and wf.last_run.failed == "fit"
    assert wf.last_run.retries == {"fit": 1}
    assert int((tmp_path / "n").read_text()) == 2  # one run and one retry, no more


# -- timeouts ---------------------------------------------------------------------------------
@workflow
def sleepy(seconds, tag):
    time.sleep(seconds)
    return tag


def test_a_node_past_its_timeout_fails_the_run_and_its_late_result_is_never_stored(storage):
    slow = sleepy(2.0, "slow").set_name("slow")
    fast = sleepy(0.0, "fast").set_name("fast")
    wf = LocalWorkflow(pair(slow, fast), workflow_name="timeout", parallel=2)
    wf.set_storage(storage)
    wf.query("^slow$").set_timeout(0.2)
    started = time.perf_counter()
    with pytest.raises(NodeTimeoutError, match=r"Node 'slow' of workflow 'timeout' timed out.*timeout of 0.2 s") as info:
        wf.run()
    assert time.perf_counter() - started < 1.5  # the run did not wait for the node
    assert info.value.node_name == "slow" and wf.last_run.failed == "slow"
    wait_for_workers_to_exit("timeout")  # the abandoned thread finished the node: it stored nothing
    assert storage.list_tasks("timeout", "*") == ["fast"]
    wf.query("^slow$").set_timeout(None)
    assert wf.run() == "slowfast"  # resumes: fast is loaded, slow runs without a timeout


def test_a_timeout_is_a_node_execution_error_that_pickles():
    import pickle

    err = NodeTimeoutError("late", node_name="n", workflow_name="w")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is NodeTimeoutError and (back.node_name, back.workflow_name, str(back)) == ("n", "w", "late")
    assert isinstance(back, NodeExecutionError)


def test_a_node_within_its_timeout_runs_as_usual():
    wf = LocalWorkflow(pair(sleepy(0.05, "a"), "b"), workflow_name="in_time")
    wf.query("sleepy").set_timeout(5)
    assert wf.run() == "ab"


# -- values held ------------------------------------------------------------------------------
class Payload:
    def __init__(self, n):
        self.n = n


alive: dict[int, weakref.ref] = {}


@workflow
def make_payload(prev, n, delay=0.0):
    time.sleep(delay)  # the nodes running beside it are done by then
    gc.collect()
    p = Payload(n)
    p.live_before = sorted(k for k, ref in alive.items() if ref() is not None)
    alive[n] = weakref.ref(p)
    return p


def test_a_chain_holds_only_the_parent_of_the_running_node():
    alive.clear()
    node = make_payload(None, 0)
    for n in range(1, 8):
        node = make_payload(node, n)
    result = LocalWorkflow(node, workflow_name="release", parallel=2).run()
    assert result.n == 7 and result.live_before == [6]


def test_values_nothing_needs_are_dropped_once_their_node_is_done():
    alive.clear()
    root = make_payload(None, 0)
    leaves = [make_payload(root, n) for n in range(1, 5)]  # nobody consumes these
    last = make_payload(leaves[0], 10, delay=0.5)
    result = LocalWorkflow(last, workflow_name="leaves", parallel=2).run()
    # root is dropped after the last leaf; leaves 2-4 right after they ran; leaf 1 feeds last
    assert result.n == 10 and result.live_before == [1]


# -- failures and interruptions ---------------------------------------------------------------
@workflow
def logged(path, tag, seconds=0.0, fail=False):
    time.sleep(seconds)
    if fail:
        raise ValueError(f"{tag} fails")
    with open(path, "a") as fh:
        fh.write(tag + "\n")
    return tag


def test_after_a_failure_nothing_new_starts_and_what_runs_is_stored(tmp_path, storage):
    log = str(tmp_path / "ran.log")
    slow = logged(log, "slow", 0.4).set_name("slow")
    bad = logged(log, "bad", 0.1, fail=True).set_name("bad")
    later = [logged(log, f"later{k}").set_name(f"later{k}") for k in range(3)]
    wf = LocalWorkflow(slow, bad, *later, workflow_name="stop", parallel=2)
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="'bad'.*bad fails") as info:
        wf.run()
    assert info.value.node_name == "bad" and wf.last_run.failed == "bad"
    with open(log) as fh:
        assert fh.read().split() == ["slow"]  # it was running: it finished; the later ones never started
    assert storage.list_tasks("stop", "*") == ["slow"]
    assert wf.last_run.ran == 1


def test_a_failed_run_resumes_running_only_what_is_missing(tmp_path, storage):
    log = str(tmp_path / "ran.log")
    flag = tmp_path / "fail.flag"
    flag.touch()

    def build():
        parts = [logged(log, f"part{k}").set_name(f"part{k}") for k in range(6)]

        @workflow
        def gate(path, x):
            import os

            if os.path.exists(path):
                raise RuntimeError("gate closed")
            return x

        parts[3] = gate(str(flag), parts[3]).set_name("gate")
        return pair(pair(pair(parts[0], parts[1]), pair(parts[2], parts[3])), pair(parts[4], parts[5]))

    wf = LocalWorkflow(build(), workflow_name="resume", parallel=2)
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="'gate'"):
        wf.run()
    stored = set(storage.list_tasks("resume", "*"))
    assert "gate" not in stored and "part3" in stored
    flag.unlink()
    open(log, "w").close()
    wf = LocalWorkflow(build(), workflow_name="resume", parallel=2)
    wf.set_storage(storage)
    assert wf.run() == "part0part1part2part3part4part5"
    with open(log) as fh:
        again = sorted(fh.read().split())
    assert again == sorted(f"part{k}" for k in range(6) if f"part{k}" not in stored)
    assert wf.last_run.loaded >= 1


def test_an_interrupt_in_the_driver_cancels_the_nodes_not_started(tmp_path):
    import _thread

    log = str(tmp_path / "ran.log")

    @workflow
    def interrupt(x):
        _thread.interrupt_main()  # KeyboardInterrupt in the driver, as Ctrl-C does
        time.sleep(0.3)
        return x

    first = interrupt(logged(log, "first")).set_name("interrupt")
    rest = [logged(log, f"queued{k}", 0.2).set_name(f"queued{k}") for k in range(6)]
    wf = LocalWorkflow(first, *rest, workflow_name="ctrl_c", parallel=2)
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    assert wf.last_run.status == "interrupted"
    wait_for_workers_to_exit("ctrl_c")  # what was running finishes, then the workers exit
    time.sleep(0.3)  # a node wrongly started would have logged by now
    with open(log) as fh:
        ran = fh.read().split()
    assert len(ran) <= 3, ran  # first, and at most the queued nodes running at the interrupt


# -- what runs alone --------------------------------------------------------------------------
def test_a_node_with_a_plugin_runs_alone():
    from functionfuse.backends.plugins import RandomStatePlugin

    spans: dict[str, tuple[float, float]] = {}

    @workflow
    def span(tag, seconds):
        t = time.perf_counter()
        time.sleep(seconds)
        spans[tag] = (t, time.perf_counter())
        return tag

    nodes = [span(f"n{k}", 0.1).set_name(f"n{k}") for k in range(4)]
    seeded = span("seeded", 0.1).set_name("seeded")
    wf = LocalWorkflow(*nodes[:2], seeded, *nodes[2:], workflow_name="alone", parallel=3)
    wf.query("^seeded$").set_plugin(RandomStatePlugin(seed=1))
    wf.run()
    s0, s1 = spans.pop("seeded")
    assert all(end <= s0 or start >= s1 for start, end in spans.values())
    starts = sorted(start for start, _ in spans.values())
    assert any(b - a < 0.05 for a, b in zip(starts, starts[1:]))  # the others did overlap


def test_method_calls_and_users_of_an_object_run_in_order():
    @workflow
    class Counter:
        def __init__(self):
            self.seen = []

        def add(self, k):
            time.sleep(0.02)
            self.seen.append(k)
            return list(self.seen)

    @workflow
    def snapshot(counter):
        return list(counter.seen)

    c = Counter()
    first = c.add(1)
    seen = snapshot(c)  # uses the object after add(1), before add(2)
    second = c.add(2)
    out = LocalWorkflow(first, seen, second, workflow_name="object", parallel=4).run()
    assert out == [[1], [1], [1, 2]]


def test_a_node_given_the_object_by_a_method_call_runs_before_the_calls_written_after_it():
    """``fit`` returns its object (as scikit-learn's does): ``predict`` uses the live
    object through fit's result, so ``set_k``, written after it, must wait for it."""

    @workflow
    class Model:
        def __init__(self, k):
            self.k = k

        def fit(self, x):
            self.coef = x * self.k
            return self

        def set_k(self, k):
            self.k, self.coef = k, -1
            return k

    @workflow
    def predict(model, x):
        time.sleep(0.2)  # set_k would run meanwhile if nothing ordered them
        return model.coef * x

    m = Model(2).set_name("model")
    pred = predict(m.fit(3).set_name("fit"), 10).set_name("predict")
    later = m.set_k(5).set_name("set_k")
    assert LocalWorkflow(pred, later, workflow_name="object", parallel=2).run() == [60, 5]


# -- random DAGs against plain Python (tests/test_property.py, run by the pool) ---------------
@pytest.fixture
def pooled_property_tests(monkeypatch):
    import test_property

    monkeypatch.setattr(test_property, "LocalWorkflow", functools.partial(LocalWorkflow, parallel=2))
    return test_property


@pytest.mark.parametrize(
    "name",
    [
        "test_random_dag_matches_plain_python",
        "test_resume_after_removing_stored_results",
        "test_damaged_results_are_recomputed",
        "test_stateful_class_chains_resume_like_plain_python",
    ],
)
def test_random_dags_run_by_the_pool_match_plain_python(pooled_property_tests, name):
    getattr(pooled_property_tests, name)()  # hypothesis draws the DAGs


# -- kill -9 in the middle of a parallel run (tests/test_kill9.py's DAG, 2 workers) -----------
def test_kill_minus_9_of_a_parallel_run_loses_at_most_the_nodes_in_progress(tmp_path):
    import importlib.util
    import json
    import os
    import random
    import signal
    import subprocess
    import sys

    import test_kill9 as k9

    script = tmp_path / "kill9_dag.py"
    code = k9.SCRIPT.replace("LocalWorkflow(*build(), workflow_name=WORKFLOW)",
                             "LocalWorkflow(*build(), workflow_name=WORKFLOW, parallel=2)")
    assert "parallel=2" in code
    script.write_text(code)
    spec = importlib.util.spec_from_file_location("kill9_dag_parallel", script)
    dag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag)
    expected = dag.expected_values()
    names = set(expected)
    store_path, log_path, result_path = tmp_path / "storage", tmp_path / "executions.log", tmp_path / "result.pkl"
    storage = storage_factory({"kind": "file", "options": {"path": str(store_path)}})
    rng = random.Random(k9.SEED)

    def start(run_id):
        env = dict(os.environ, KILL9_LOG=str(log_path), KILL9_RUN_ID=run_id, PYTHONHASHSEED="1")
        return subprocess.Popen([sys.executable, str(script), str(store_path), str(result_path)], env=env,
                                cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    stored: set[str] = set()
    kills = 0
    for round_no in range(4):
        run_id = f"r{round_no}"
        proc = start(run_id)
        deadline = k9.wait_for_execution(proc, log_path, run_id, names) + rng.uniform(0.05, 0.3)
        try:
            proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            break  # finished before the kill
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
        listed = set(storage.list_tasks(k9.WORKFLOW, "*"))
        assert stored <= listed <= names
        for name in sorted(listed):  # every listed result reads back whole and right
            k9.assert_same(storage.read_task(k9.WORKFLOW, name), expected[name], name)
        ran = k9.executions(log_path, run_id)
        assert len(ran) == len(set(ran)) and not set(ran) & stored  # nothing stored ran again
        assert len(set(ran) - listed) <= 2, (ran, sorted(listed))  # at most the 2 nodes in progress lost
        stored = listed
    assert kills >= 2

    proc = start("final")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and not err, err.decode(errors="replace")
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert sorted(k9.executions(log_path, "final")) == sorted(names - stored)  # exactly what was missing
    assert stats["ran"] == len(names - stored) and stats["recomputed"] == 0, stats
    assert set(storage.list_tasks(k9.WORKFLOW, "*")) == names
