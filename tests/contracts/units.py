"""Execution units on every backend: same results, per-node storage, plans and errors.

A backend joins by adding :class:`UnitConformance` to its conformance class (which
defines ``make_workflow``, ``storage`` and ``calls``, see :mod:`contracts.backend`).
Run it once as the backend runs by default (fusion on) and once with fusion off
(``make_workflow`` calling ``set_fusion(False)``): the checks hold for both.
"""

from __future__ import annotations

import pytest

from functionfuse import workflow
from functionfuse.errors import NodeExecutionError

from .backend import _record, add, fail_if, multiply


@workflow
def twice(x):
    _record("twice")
    return 2 * x


def _chain(start, n: int, prefix: str):
    x = start
    for k in range(n):
        x = twice(x).set_name(f"{prefix}{k}")
    return x


def _branches():
    """A source, three chains of 4 after it, their sum: 14 nodes, 5 units when fused."""
    src = add(1, 1).set_name("src")
    ends = [_chain(src, 4, f"b{j}_") for j in range(3)]
    return add(add(ends[0], ends[1]).set_name("sum01"), ends[2]).set_name("total")


class UnitConformance:
    def test_chains_give_the_same_results_and_every_node_is_stored(self, make_workflow, storage, calls):
        wf = make_workflow(_branches(), workflow_name="units_branches")
        wf.set_storage(storage)
        assert wf.run() == 3 * 2 * 16
        stored = storage.list_tasks("units_branches", "*")
        assert len(stored) == len(wf.graph) == 15
        assert storage.read_task("units_branches", "b1_2") == 2 * 8
        assert wf.last_run.ran == 15
        assert set(storage.last_run_report("units_branches")["node_seconds"]) == set(wf.graph.names)
        assert sorted(calls()) == sorted(["add"] * 3 + ["twice"] * 12)
        calls.reset()
        assert wf.run() == 96
        assert calls() == []
        assert {p.action for p in wf.plan()} == {"skip", "load"}

    def test_a_failure_inside_a_chain_names_the_node_and_resume_starts_there(
        self, make_workflow, storage, tmp_path, calls
    ):
        flag = tmp_path / "mid.flag"
        flag.touch()
        head = _chain(add(1, 0).set_name("start"), 3, "head")
        mid = fail_if(str(flag), head).set_name("mid")
        tail = _chain(mid, 3, "tail")
        wf = make_workflow(tail, workflow_name="units_failure")
        wf.set_storage(storage)
        with pytest.raises(NodeExecutionError) as info:
            wf.run()
        assert info.value.node_name == "mid" and "'mid'" in str(info.value)
        assert wf.last_run.failed == "mid"
        assert wf.last_run.ran == 4
        assert storage.list_tasks("units_failure", "*") == ["head0", "head1", "head2", "start"]
        flag.unlink()
        calls.reset()
        assert wf.run() == 8 * 8
        assert calls() == ["fail_if", "twice", "twice", "twice"]

    def test_a_group_runs_its_nodes_as_one_unit(self, make_workflow, storage, calls):
        src = add(2, 3).set_name("src")
        preps = [multiply(src, k).set_name(f"prep_{k}") for k in range(1, 5)]
        total = add(add(preps[0], preps[1]).set_name("left"), add(preps[2], preps[3]).set_name("right"))
        wf = make_workflow(total.set_name("total"), workflow_name="units_group")
        wf.query("^prep_").set_group("prep")
        units = wf.units()
        groups = [u for u in units.running if u.why == "group"]
        assert [tuple(wf.graph.names[i] for i in u.indices) for u in groups] == [
            ("prep_1", "prep_2", "prep_3", "prep_4")
        ]
        wf.set_storage(storage)
        assert wf.run() == 5 * 10
        for k in range(1, 5):
            assert storage.read_task("units_group", f"prep_{k}") == 5 * k

    def test_unfused_and_fused_plans_list_the_same_nodes(self, make_workflow, storage):
        out = _branches()
        fused = make_workflow(out, workflow_name="units_plan")
        fused.set_storage(storage)
        fused.run()
        storage.remove_task("units_plan", pattern="b2_*")
        plan = [(p.name, p.action) for p in fused.plan()]
        fused.set_fusion(not fused._fusion)
        assert [(p.name, p.action) for p in fused.plan()] == plan
        assert fused.run() == 96
        assert sorted(storage.list_tasks("units_plan", "*")) == sorted(fused.graph.names)
