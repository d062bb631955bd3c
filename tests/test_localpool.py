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
    slow = sleepy(1.0, "slow").set_name("slow")
    fast = sleepy(0.0, "fast").set_name("fast")
    wf = LocalWorkflow(pair(slow, fast), workflow_name="timeout", parallel=2)
    wf.set_storage(storage)
    wf.query("^slow$").set_timeout(0.2)
    started = time.perf_counter()
    with pytest.raises(NodeTimeoutError, match=r"Node 'slow' of workflow 'timeout' timed out.*timeout of 0.2 s") as info:
        wf.run()
    assert time.perf_counter() - started < 0.9  # the run did not wait for the node
    assert info.value.node_name == "slow" and wf.last_run.failed == "slow"
    time.sleep(1.2)  # the abandoned thread has finished by now: it stored nothing
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
