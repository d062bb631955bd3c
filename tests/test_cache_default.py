"""The default cache policy is ``fingerprint``: unchanged code and arguments resume with
nothing recomputed (the seed examples), a change recomputes what it reaches; ``name``
stays available. Warnings about stored results come as one summary per run, located
at the user's line."""

from __future__ import annotations

import linecache
import os
import warnings

import pytest

from contracts.backend import add, gather, minus, multiply, seed_incremental_sum, seed_quick_start
from contracts.storage import damage_file_result
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import ResultRecomputedWarning, StaleResultWarning
from functionfuse.storage import storage_factory


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})


def stored_workflow(nodes, name, storage, policy=None):
    wf = LocalWorkflow(nodes, workflow_name=name)
    wf.set_storage(storage)
    if policy is not None:
        wf.set_cache(policy)
    return wf


def at_this_file(w) -> bool:
    """The warning points at a line of this file that calls run()."""
    return os.path.samefile(w.filename, __file__) and ".run()" in linecache.getline(w.filename, w.lineno)


# -- the default ---------------------------------------------------------------------------
def test_the_default_policy_is_fingerprint(storage):
    assert LocalWorkflow(seed_quick_start(), workflow_name="x").cache_policy == "fingerprint"


@pytest.mark.parametrize(
    "build, name, value",
    [(seed_quick_start, "operations", 6), (seed_incremental_sum, "stateful", 4)],
    ids=["quick-start", "incremental-sum"],
)
def test_seed_examples_resume_with_nothing_recomputed(storage, build, name, value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = stored_workflow(build(), name, storage)
        assert first.run() == value
        # the script run again: the same DAG built anew
        again = stored_workflow(build(), name, storage)
        assert {p.state for p in again.plan()} == {"current"}
        assert again.run() == value
        assert again.last_run.ran == 0


def test_stateful_seed_resumes_a_removed_tail_by_replaying_the_instance(storage):
    stored_workflow(seed_incremental_sum(), "stateful_tail", storage).run()
    storage.remove_task("stateful_tail", pattern="six_minus_two")
    storage.remove_task("stateful_tail", pattern="five_plus_one")
    again = stored_workflow(seed_incremental_sum(), "stateful_tail", storage)
    assert [p.action for p in again.plan()] == ["load", "replay", "load", "replay", "replay", "run", "run"]
    assert again.run() == 4


def three(offset):
    a = add(1, 1).set_name("a")
    b = add(a, offset).set_name("b")
    return multiply(b, 2).set_name("c")


def test_an_argument_change_recomputes_the_node_and_what_depends_on_it(storage):
    stored_workflow(three(0), "arguments", storage).run()
    changed = stored_workflow(three(1), "arguments", storage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a change is not an incident: no warning
        assert changed.run() == 6
    assert set(changed.last_run.node_seconds) == {"b", "c"}


def test_a_code_change_recomputes_by_default(storage):
    def build(operation):
        a = add(1, 1).set_name("a")
        return multiply(operation(a, 2).set_name("b"), 3).set_name("c")

    stored_workflow(build(add), "code", storage).run()
    changed = stored_workflow(build(multiply), "code", storage)  # 2 + 2 == 2 * 2: only the code differs
    assert [(p.name, p.action) for p in changed.plan()] == [("a", "load"), ("b", "run"), ("c", "run")]
    assert changed.run() == 12
    assert changed.last_run.ran == 2


def test_name_policy_keeps_reusing_stale_results_by_name(storage):
    stored_workflow(three(0), "by_name", storage).run()
    by_name = stored_workflow(three(5), "by_name", storage, "name")
    with pytest.warns(StaleResultWarning, match="'b'.*argument 'b' changed") as caught:
        assert by_name.run() == 4  # the stored result, computed with offset 0
    assert by_name.last_run.ran == 0
    assert len(caught) == 1 and at_this_file(caught[0])


# -- one summary per run, at the user's line -------------------------------------------------
def wide(offset, n=500):
    return gather(*[add(i, offset).set_name(f"n{i:03d}") for i in range(n)]).set_name("total")


def test_500_stale_nodes_give_one_warning_at_the_users_line(storage):
    stored_workflow(wide(0), "wide", storage).run()
    changed = stored_workflow(wide(1), "wide", storage, "name")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        changed.run()
    assert [w.category for w in caught] == [StaleResultWarning], [str(w.message)[:200] for w in caught]
    message = str(caught[0].message)
    assert "500 nodes" in message
    assert "'n000': argument 'b' changed; 'n001': argument 'b' changed; 'n002': argument 'b' changed" in message
    assert "'n004'" in message and "and 495 more" in message and "'n005'" not in message
    assert "set_cache('fingerprint')" in message
    assert at_this_file(caught[0]), (caught[0].filename, caught[0].lineno)
    # the same stale nodes are not warned about again by the same workflow object
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        changed.run()


def test_unreadable_results_give_one_warning_per_run_at_the_users_line(storage):
    @workflow
    def total(*values):
        return sum(values)

    def build():
        return total(*[minus(i, 0).set_name(f"v{i}") for i in range(10)]).set_name("total")

    stored_workflow(build(), "damaged", storage).run()
    storage.remove_task("damaged", task_name="total")
    for i in range(0, 4):
        damage_file_result(storage, "damaged", f"v{i}", "truncate")  # found while planning
    for i in range(4, 8):
        damage_file_result(storage, "damaged", f"v{i}", "flip")  # found while loading
    wf = stored_workflow(build(), "damaged", storage)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert wf.run() == 45
    assert [w.category for w in caught] == [ResultRecomputedWarning], [str(w.message)[:200] for w in caught]
    message = str(caught[0].message)
    assert "8 stored results of workflow 'damaged'" in message and "and 3 more" in message
    assert "storage ls damaged --verify" in message
    assert at_this_file(caught[0]), (caught[0].filename, caught[0].lineno)
    assert wf.last_run.recomputed == 8


def test_a_script_given_with_python_c_gets_the_warning_at_its_line(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from contracts.backend import add\n"
        "from functionfuse.backends.builtin.localback import LocalWorkflow\n"
        "from functionfuse.storage import storage_factory\n"
        "st = storage_factory({'kind': 'file', 'options': {'path': sys.argv[2]}})\n"
        "for b in (1, 2):\n"
        "    wf = LocalWorkflow(add(1, b).set_name('a'), workflow_name='w')\n"
        "    wf.set_storage(st)\n"
        "    wf.set_cache('name')\n"
        "    wf.run()\n"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, tests, str(tmp_path / "s")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "<string>:10: StaleResultWarning: Node 'a'" in out.stderr, out.stderr
