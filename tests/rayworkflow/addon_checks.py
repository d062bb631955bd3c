"""The Ray Workflows addon on a real Ray 2.47 (run in .venv-rayworkflow).

Not named test_*.py: the main test run (a newer Ray, without ray.workflow) does not
collect it; tests/test_rayworkflowback.py runs it with
``.venv-rayworkflow/bin/python -m pytest tests/rayworkflow/addon_checks.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on 127.0.0.1 only
os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
os.environ["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT, os.path.dirname(os.path.abspath(__file__))])
CALLS_DIR = tempfile.mkdtemp(prefix="ff-rayworkflow-calls-")
os.environ["FUNCTIONFUSE_TEST_CALLS"] = CALLS_DIR
sys.path[:0] = [TESTS]

import pytest  # noqa: E402

from contracts.backend import BackendConformance, LoadErrorConformance, add, fail_if, seed_incremental_sum  # noqa: E402

import ray  # noqa: E402

from functionfuse.backends.addons.rayworkflowback import RayWorkflow  # noqa: E402
from functionfuse.errors import NodeExecutionError  # noqa: E402
from functionfuse.storage import storage_factory  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*Ray Workflows library is deprecated:UserWarning",
    "ignore::DeprecationWarning",
)


@pytest.fixture(scope="session", autouse=True)
def ray_with_workflow_storage():
    import warnings

    with warnings.catch_warnings():  # Ray Workflows' checkpoints need the deprecated storage option
        warnings.filterwarnings("ignore", "Cluster-wide storage configuration is deprecated", UserWarning)
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            storage=tempfile.mkdtemp(prefix="ff-rayworkflow-storage-"),
            object_store_memory=256 * 1024 * 1024,
        )
    yield
    ray.shutdown()


class TestRayWorkflowsConformance(BackendConformance, LoadErrorConformance):
    @pytest.fixture
    def make_workflow(self):
        return RayWorkflow

    @pytest.fixture
    def calls(self):
        log = os.path.join(CALLS_DIR, "calls.log")
        if os.path.exists(log):
            os.unlink(log)

        def read():
            if not os.path.exists(log):
                return []
            with open(log) as f:
                return f.read().split()

        read.reset = lambda: os.unlink(log) if os.path.exists(log) else None
        return read


def test_runs_are_ray_workflows_with_their_own_ids():
    wf = RayWorkflow(seed_incremental_sum(), workflow_name="ids")
    assert wf.run() == 4
    first = wf.last_workflow_id
    assert wf.run(workflow_id="ids.fixed") == 4
    from ray import workflow

    assert workflow.get_status(first) == workflow.SUCCESSFUL
    assert workflow.get_output("ids.fixed") is not None


def test_failure_names_node_with_remote_traceback(tmp_path):
    wf = RayWorkflow(add(fail_if(__file__, 1).set_name("boom"), 1), workflow_name="fails")
    with pytest.raises(NodeExecutionError) as info:
        wf.run()
    assert info.value.node_name == "boom"
    assert wf.last_run.failed == "boom"
    assert "Remote traceback" in str(info.value) and "in fail_if" in str(info.value)


def test_functionfuse_storage_is_shared_with_rayback_format(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = RayWorkflow(seed_incremental_sum(), workflow_name="stored")
    wf.set_storage(storage)
    assert wf.run() == 4
    assert len(storage.list_tasks("stored")) == 7
    assert wf.run() == 4 and wf.last_run.ran == 0


def test_a_result_damaged_when_read_is_recomputed_with_a_warning(tmp_path):
    """The header reads (the plan loads it), the content is damaged: the load task hands
    on a marker, nothing downstream runs on it, and the run is planned again."""
    from functionfuse.errors import ResultRecomputedWarning

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})

    def dag():
        first = add(1, 2).set_name("first")
        second = add(first, 10).set_name("second")
        return add(second, 100).set_name("third"), add(5, 5).set_name("extra")

    wf = RayWorkflow(*dag(), workflow_name="damaged")
    wf.set_storage(storage)
    assert wf.run() == [113, 10]
    storage.remove_task("damaged", task_name="third")
    storage.remove_task("damaged", task_name="extra")  # runs in the first attempt, loaded in the next
    path = os.path.join(str(tmp_path), "damaged", "second.ffr")
    with open(path, "r+b") as fh:  # the last byte: the header and size still read, the checksum fails
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    wf = RayWorkflow(*dag(), workflow_name="damaged")
    wf.set_storage(storage)
    assert wf.plan().action("second") == "load"  # found damaged only when the task reads it
    with pytest.warns(ResultRecomputedWarning, match="'second'"):
        assert wf.run() == [113, 10]
    assert wf.last_run.recomputed == 1
    assert wf.last_run.ran == 3 and wf.last_run.failed is None  # the whole run: extra, second, third
    assert storage.read_task("damaged", "second") == 13  # repaired
