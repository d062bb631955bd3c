"""LocalWorkflow: the conformance suite, plus what only a local run can show."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest

from contracts.backend import BackendConformance, LoadErrorConformance, seed_quick_start
from contracts.units import UnitConformance
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.plugins import InitializerPlugin, PluginCollection, RandomStatePlugin
from functionfuse.errors import ConfigurationError, NodeExecutionError, ResultRecomputedWarning, SerializationError
from functionfuse.storage import storage_factory


class TestLocalConformance(BackendConformance, LoadErrorConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self):
        return LocalWorkflow


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})


class Payload:
    """A result whose lifetime a weak reference can observe."""

    def __init__(self, n):
        self.n = n


alive: dict[int, weakref.ref] = {}


@workflow
def make_payload(prev, n):
    # every earlier payload except the direct parent must have been released
    gc.collect()
    live = sorted(k for k, ref in alive.items() if ref() is not None)
    p = Payload(n)
    alive[n] = weakref.ref(p)
    p.live_before = live
    return p


def test_intermediate_results_are_released_after_their_last_consumer():
    alive.clear()
    node = make_payload(None, 0)
    for n in range(1, 6):
        node = make_payload(node, n)
    result = LocalWorkflow(node, workflow_name="release").run()
    assert result.n == 5
    assert result.live_before == [4]  # only the parent of the last node was alive


def test_results_nothing_needs_are_released_right_away():
    alive.clear()
    root = make_payload(None, 0)
    for n in range(1, 4):
        make_payload(root, n)  # leaves nobody consumes
    last = make_payload(root, 10)
    result = LocalWorkflow(last, workflow_name="leaves").run()
    assert result.live_before == [0]  # the root only: leaves 1-3 were dropped after running


def test_outputs_are_kept_even_when_consumed():
    alive.clear()
    first = make_payload(None, 0)
    second = make_payload(first, 1)
    a, b = LocalWorkflow(first, second, workflow_name="keep").run()
    assert (a.n, b.n) == (0, 1)


def test_big_intermediate_arrays_are_freed():
    @workflow
    def big(n):
        return np.ones(n)

    @workflow
    def step(a):
        return a + 1

    x = big(1_000_000)
    for _ in range(10):
        x = step(x)
    assert LocalWorkflow(x, workflow_name="arrays").run()[0] == 11


def test_corrupted_stored_result_is_recomputed_with_a_warning(storage):
    out = seed_quick_start()
    wf = LocalWorkflow(out, workflow_name="corrupt")
    wf.set_storage(storage)
    wf.run()
    path = os.path.join(storage.path, "corrupt", "node3.ffr")
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.warns(ResultRecomputedWarning, match="node3"):
        assert wf.run() == 6
    assert wf.last_run.recomputed == 1
    assert storage.read_task("corrupt", "node3") == 6  # repaired


def test_corrupted_parent_needed_by_a_running_node_is_recomputed(storage):
    out = seed_quick_start()
    wf = LocalWorkflow(out, workflow_name="corrupt_parent")
    wf.set_storage(storage)
    wf.run()
    storage.remove_task("corrupt_parent", task_name="node3")
    path = os.path.join(storage.path, "corrupt_parent", "node2.ffr")
    os.truncate(path, os.path.getsize(path) - 3)
    with pytest.warns(ResultRecomputedWarning, match="node2"):
        assert wf.run() == 6
    assert storage.read_task("corrupt_parent", "node2") == 3


def test_unpicklable_result_is_reported_with_the_node_and_earlier_results_stay(storage):
    @workflow
    def ok():
        return 1

    @workflow
    def bad(x):
        return lambda: x  # lambdas do not pickle

    wf = LocalWorkflow(bad(ok().set_name("ok")).set_name("bad"), workflow_name="unpicklable")
    wf.set_storage(storage)
    with pytest.raises(SerializationError, match="'bad'"):
        wf.run()
    assert storage.list_tasks("unpicklable", "*") == ["ok"]


def test_decorated_functions_can_call_each_other_inside_a_node():
    @workflow
    def double(x):
        return 2 * x

    @workflow
    def quadruple(x):
        return double(double(x))  # runs directly while the workflow executes

    assert LocalWorkflow(quadruple(3), workflow_name="nested").run() == 12


def test_exception_chain_keeps_the_original():
    @workflow
    def boom():
        raise KeyError("missing")

    with pytest.raises(NodeExecutionError) as info:
        LocalWorkflow(boom().set_name("boom"), workflow_name="chain").run()
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.workflow_name == "chain"


def test_run_stats():
    wf = LocalWorkflow(seed_quick_start(), workflow_name="stats")
    wf.run()
    assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.skipped) == (3, 0, 0)


def test_set_storage_refuses_non_storage():
    wf = LocalWorkflow(seed_quick_start(), workflow_name="x")
    with pytest.raises(ConfigurationError, match="storage_factory"):
        wf.set_storage({"kind": "file"})


# -- plugins ----------------------------------------------------------------------
@workflow
def draw(tag):
    return float(np.random.random())


def test_random_state_plugin_seeds_each_node_by_name(storage):
    a = draw("a").set_name("draw_a")
    b = draw("b").set_name("draw_b")
    wf = LocalWorkflow(a, b, workflow_name="rng")
    wf.query("^draw_").set_plugin(RandomStatePlugin(seed=7))
    first = wf.run()
    again = wf.run()
    assert first == again and first[0] != first[1]
    # resume: only draw_b runs, and gets the same number as before
    wf.set_storage(storage)
    wf.run()
    storage.remove_task("rng", task_name="draw_b")
    assert wf.run() == first


def test_initializer_and_collection_plugins_run_before_each_node():
    log = []

    @workflow
    def work(x):
        log.append(("work", x))
        return x

    out = work(work(1).set_name("w1")).set_name("w2")
    wf = LocalWorkflow(out, workflow_name="plugins")
    wf.query("w2").set_plugin(PluginCollection([InitializerPlugin(lambda: log.append("init"))]))
    wf.run()
    assert log == [("work", 1), "init", ("work", 1)]


def test_query_refuses_non_plugins():
    wf = LocalWorkflow(seed_quick_start(), workflow_name="q")
    assert wf.query("^node[12]$").names == ["node1", "node2"]
    with pytest.raises(ConfigurationError, match="not a plugin"):
        wf.query().set_plugin(object())


# -- signed results -----------------------------------------------------------------------------
def test_with_a_signing_key_unsigned_results_are_recomputed_and_other_keys_stop_the_run(tmp_path, monkeypatch):
    from functionfuse.errors import SigningKeyError
    from functionfuse.storage.signing import ENV_KEY

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    wf = LocalWorkflow(seed_quick_start(), workflow_name="signing")
    wf.set_storage(storage)
    assert wf.run() == 6  # no key: unsigned results
    monkeypatch.setenv(ENV_KEY, "local-signing-key-0123456789abcdef")
    with pytest.warns(ResultRecomputedWarning):
        assert wf.run() == 6  # every unsigned result is refused unread, and recomputed signed
    assert all(storage.read_metadata("signing", n)["signed"] for n in ("node1", "node2", "node3"))
    assert wf.last_run.ran == 3
    assert wf.run() == 6 and wf.last_run.ran == 0  # signed results are reused
    before = {n: (tmp_path / "s" / "signing" / f"{n}.ffr").read_bytes() for n in ("node1", "node2", "node3")}
    monkeypatch.setenv(ENV_KEY, "another-signing-key-0123456789abcdef")
    with pytest.raises(SigningKeyError, match="key id"):
        wf.run()
    after = {n: (tmp_path / "s" / "signing" / f"{n}.ffr").read_bytes() for n in ("node1", "node2", "node3")}
    assert after == before  # nothing was overwritten


def test_a_crafted_fingerprint_in_a_stored_header_is_recomputed_not_a_crash(tmp_path):
    """A header with a valid check whose fingerprint is of another shape: the planner
    never sees it (the result is damaged), so the run recomputes the node."""
    from framing import get_raw, put_raw, reframe

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})
    wf = LocalWorkflow(seed_quick_start(), workflow_name="crafted")
    wf.set_storage(storage)
    wf.set_cache("fingerprint")
    assert wf.run() == 6

    def edit(h):
        h["meta"]["fingerprint"] = "x"

    put_raw(storage, "crafted", "node1", reframe(get_raw(storage, "crafted", "node1"), edit))
    with pytest.warns(ResultRecomputedWarning):
        assert wf.run() == 6
    assert storage.read_metadata("crafted", "node1")["fingerprint"]["node"]


def test_a_storage_missing_part_of_the_protocol_is_refused_naming_what_it_lacks():
    """An object with only some storage methods (what a run once called) is refused
    before anything runs, and the error says which members are missing and what to do."""

    class DictStorage:
        def __init__(self):
            self.d = {}

        def save(self, wf, name, obj, metadata=None):
            self.d[(wf, name)] = (obj, dict(metadata or {}))
            return metadata

        def read_task(self, wf, name):
            return self.d[(wf, name)][0]

        def stored_tasks(self, wf):
            return {n for (w, n) in self.d if w == wf}

        def read_metadata_many(self, wf, names):
            return {n: self.d[(wf, n)][1] for n in names if (wf, n) in self.d}

    wf = LocalWorkflow(seed_quick_start(), workflow_name="duck")
    with pytest.raises(ConfigurationError) as info:
        wf.set_storage(DictStorage())
    message = str(info.value)
    assert "list_tasks" in message and "placement" in message and "save_run_report" in message
    assert "read_task" not in message and "stored_tasks" not in message  # it has those
    assert "functionfuse.storage.Storage" in message
    assert wf.storage is None


def test_backend_helpers_are_not_methods_of_what_users_hold():
    """Selecting nodes for a backend's setter is a function of the core, not a method
    that shows on every workflow and query users work with (dir(), help())."""
    from functionfuse.baseworkflow import BaseWorkflow, Query

    wf = LocalWorkflow(seed_quick_start(), workflow_name="surface")
    for obj in (wf, wf.query("node1"), LocalWorkflow, BaseWorkflow, Query):
        assert not hasattr(obj, "select") and not hasattr(obj, "targets"), obj
