"""The run engine with an executor that runs tasks late and reports them out of order
(like a pool): results, report, stored records and the recompute of damaged results
must be those of LocalWorkflow. And a plan made for looking changes nothing a run saves."""

from __future__ import annotations

import os
from typing import Any, Sequence

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.baseworkflow import BaseWorkflow
from functionfuse.engine import Completion, NodeFailure, NodeTask, execute, run_session
from functionfuse.errors import ConfigurationError, NodeExecutionError, ResultRecomputedWarning
from functionfuse.planner import Plan
from functionfuse.storage import storage_factory


@workflow
def num(v):
    return v


@workflow
def add(a, b):
    return a + b


@workflow
def boom(x):
    raise ValueError(f"boom {x}")


class LateExecutor:
    """Queues tasks; on wait runs them all (in submission order: parents first) and
    reports them newest first."""

    slots = 0
    in_process = False
    where: str | None = None
    loads_first = False

    def __init__(self, wf: BaseWorkflow) -> None:
        self.wf = wf

    def start(self, plan: Plan) -> None:
        self.values: dict[int, Any] = {}
        self.queue: list[tuple[str, Any]] = []
        self.released: set[int] = set()

    def submit(self, task: NodeTask) -> None:
        self.queue.append(("run", task))

    def load(self, i: int) -> None:
        self.queue.append(("load", i))

    def release(self, indices: Sequence[int]) -> None:
        self.released.update(indices)

    @property
    def pending(self) -> int:
        return len(self.queue)

    def oldest(self) -> int | None:
        return None

    def wait(self, count: int, timeout: float | None) -> list[Completion]:
        done: list[Completion] = []
        wf = self.wf
        for kind, item in self.queue:
            if kind == "load":
                try:
                    self.values[item] = wf.storage.read_task(wf.workflow_name, wf.graph.names[item])
                    done.append((item, None))
                except Exception as exc:
                    done.append(NodeFailure(item, "load", exc))
                continue
            if any(p not in self.values for p in item.parents):
                continue  # a parent failed
            try:
                self.values[item.index], seconds = item.run(self.values)
                done.append((item.index, seconds))
            except NodeFailure as f:
                done.append(f)
        self.queue = []
        return done[::-1]

    def results(self, outputs: Sequence[int]) -> dict[int, Any]:
        return {i: self.values[i] for i in outputs}


def dag():
    a = num(1).set_name("a")
    b = num(2).set_name("b")
    c = add(a, b).set_name("c")
    d = add(c, 10).set_name("d")
    return add(d, c).set_name("e")


def late_run(wf: BaseWorkflow) -> Any:
    with run_session(wf) as session:
        results = execute(wf, LateExecutor(wf), session)
    return wf.outputs(results)


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})


def test_out_of_order_completions_give_local_results_report_and_records(storage, tmp_path):
    local = LocalWorkflow(dag(), workflow_name="engine")
    local_store = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "local")}})
    local.set_storage(local_store)
    expected = local.run()
    wf = BaseWorkflow(dag(), workflow_name="engine")
    wf.set_storage(storage)
    assert late_run(wf) == expected == 2 * 3 + 10
    assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.status) == (5, 0, "finished")
    for name in "abcde":
        assert storage.read_metadata("engine", name)["fingerprint"] == local_store.read_metadata("engine", name)["fingerprint"]
    assert late_run(wf) == expected
    assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.skipped) == (0, 1, 4)


def test_a_result_damaged_on_load_is_recomputed_once(storage):
    wf = BaseWorkflow(dag(), workflow_name="damaged")
    wf.set_storage(storage)
    late_run(wf)
    storage.remove_task("damaged", task_name="e")
    path = os.path.join(storage.path, "damaged", "d.ffr")
    os.truncate(path, os.path.getsize(path) - 3)  # the header still reads: found on load
    with pytest.warns(ResultRecomputedWarning, match="'d'"):
        assert late_run(wf) == 16
    assert wf.last_run.recomputed == 1
    assert storage.read_task("damaged", "d") == 13


def test_the_first_failed_node_in_topological_order_is_raised_and_reported(storage):
    a = num(1).set_name("a")
    first = boom(a).set_name("first")
    second = boom(num(2).set_name("b")).set_name("second")
    wf = BaseWorkflow(add(first, second), workflow_name="fail")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError, match="'first'.*boom 1") as info:
        late_run(wf)
    assert info.value.node_name == "first" == wf.last_run.failed
    assert isinstance(info.value.__cause__, ValueError)
    assert sorted(storage.list_tasks("fail")) == ["a", "b"]  # what finished is stored


def test_a_node_that_saves_needs_its_fingerprint_record(storage):
    """A result stored without its fingerprint could never be verified: a task or a run
    of a node that saves takes the plan's record, or is refused before anything runs."""
    wf = LocalWorkflow(dag(), workflow_name="record")
    wf.set_storage(storage)
    a = wf.graph.names.index("a")
    for call in (lambda: wf.node_task(a, save=True), lambda: wf.run_node(a, {}, save=True)):
        with pytest.raises(ConfigurationError, match="'a' of workflow 'record'.*record=plan.record"):
            call()
    assert storage.list_tasks("record", "*") == []
    record = wf.plan().record(a)
    wf.run_node(a, {}, save=True, record=record)
    assert storage.read_metadata("record", "a")["fingerprint"] == record


def test_looking_at_a_plan_changes_nothing_a_run_saves(storage):
    """A plan, a drawing or fingerprints made before a run leave what it saves as a
    run without them saves it."""
    wf = LocalWorkflow(dag(), workflow_name="look")
    wf.set_storage(storage)
    wf.set_cache("name")
    wf.run()
    meta = storage.read_metadata("look", "a")
    storage.save("look", "a", 100, {**meta, "fingerprint": {**meta["fingerprint"], "node": "old"}})
    storage.remove_task("look", task_name="e")

    def saved_e(look: bool) -> dict:
        other = LocalWorkflow(dag(), workflow_name="look")
        other.set_storage(storage)
        other.set_cache("name")
        if look:
            other.plan()
            other.fingerprints()
            other.node_metadata(4)
        with pytest.warns(Warning):
            other.run()
        record = storage.read_metadata("look", "e")["fingerprint"]
        storage.remove_task("look", task_name="e")
        return record

    assert saved_e(True) == saved_e(False)
    assert LocalWorkflow(dag(), workflow_name="look").node_metadata(4).get("fingerprint") is None
