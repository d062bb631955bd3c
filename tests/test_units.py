"""Execution units: the partition (functionfuse.units) and the engine running units.

The engine part uses a small in-process executor that fuses (``_InlineUnits``): it runs
each task as it is submitted, a UnitTask through ``UnitTask.run``, so the engine's side
of the contract (what it submits, how completions are counted, what is stored) is tested
without Ray or Prefect; the backends run the same code in tests/test_rayback.py,
tests/test_prefectback.py and tests/test_kfpback.py.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.graphback import GraphWorkflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.engine import NodeFailure, NodeTask, UnitTask, execute, run_session
from functionfuse.errors import ConfigurationError, NodeExecutionError
from functionfuse.planner import LOAD, RUN, SKIP
from functionfuse.storage import storage_factory
from functionfuse.units import partition


@workflow
def inc(x):
    return x + 1


@workflow
def add(*xs):
    return sum(xs)


@workflow
def boom(x):
    raise ValueError(f"boom at {x}")


class Counter:
    def __init__(self, start):
        self.n = start

    def bump(self, k):
        self.n += k
        return self.n


CounterNode = workflow(Counter)


def chain(n: int, prefix: str = "c", start: Any = 0) -> Any:
    x = start
    for k in range(n):
        x = inc(x).set_name(f"{prefix}{k}")
    return x


def shape(units) -> list[tuple[tuple[str, ...], str]]:
    names = units.names
    return [(tuple(names[i] for i in u.indices), u.why) for u in units.running]


# -- the partition ----------------------------------------------------------------------------
def test_a_chain_is_one_unit_a_fan_out_keeps_its_parallelism():
    src = chain(3, "a")
    leaves = [inc(src).set_name(f"leaf{k}") for k in range(3)]
    wf = GraphWorkflow(add(*leaves).set_name("total"), workflow_name="u")
    assert shape(wf.units()) == [
        (("a0", "a1", "a2"), "chain"),
        (("leaf0",), "single"),
        (("leaf1",), "single"),
        (("leaf2",), "single"),
        (("total",), "single"),
    ]


def test_chains_after_a_fan_out_fuse_per_branch():
    src = inc(0).set_name("src")
    ends = [chain(4, f"b{k}_", src) for k in range(3)]
    wf = GraphWorkflow(add(*ends).set_name("total"), workflow_name="u")
    got = shape(wf.units())
    assert got[0] == (("src",), "single")
    assert sorted(got[1:4]) == [(tuple(f"b{k}_{j}" for j in range(4)), "chain") for k in range(3)]
    assert got[4] == (("total",), "single")


def test_fusion_off_and_nodes_kept_alone():
    end = chain(4)
    wf = GraphWorkflow(end, workflow_name="u")
    wf.set_fusion(False)
    assert [u.why for u in wf.units().running] == ["single"] * 4
    wf.set_fusion(True)
    wf.query("^c2$").set_fusion(False)
    assert shape(wf.units()) == [(("c0", "c1"), "chain"), (("c2",), "alone"), (("c3",), "single")]
    wf.query("^c2$").set_fusion(True)
    assert shape(wf.units()) == [(("c0", "c1", "c2", "c3"), "chain")]


def test_different_keys_never_fuse():
    end = chain(4)

    class Keyed(GraphWorkflow):
        def fusion_key(self, i):
            return ("big",) if self.graph.names[i] in ("c2", "c3") else super().fusion_key(i)

    wf = Keyed(end, workflow_name="u")
    assert shape(wf.units()) == [(("c0", "c1"), "chain"), (("c2", "c3"), "chain")]


def test_class_and_method_nodes_never_fuse():
    obj = CounterNode(0).set_name("obj")
    a = obj.bump(1).set_name("b1")
    b = obj.bump(2).set_name("b2")
    wf = GraphWorkflow(inc(inc(b).set_name("i1")).set_name("i2"), a, workflow_name="u")
    units = shape(wf.units())
    assert (("i1", "i2"), "chain") in units
    for name in ("obj", "b1", "b2"):
        assert ((name,), "single") in units


def test_groups_are_units_and_are_checked():
    src = inc(0).set_name("src")
    preps = [inc(src).set_name(f"prep_{k}") for k in range(4)]
    wf = GraphWorkflow(add(*preps).set_name("total"), workflow_name="u")
    wf.query("^prep_").set_group("prep")
    got = shape(wf.units())
    assert ((tuple(f"prep_{k}" for k in range(4))), "group") in got
    assert str(wf.units()).count("group 'prep'") == 1

    # a group that needs itself through a node outside it cannot be one task
    a = inc(0).set_name("g_a")
    mid = inc(a).set_name("outside")
    b = inc(mid).set_name("g_b")
    wf2 = GraphWorkflow(b, workflow_name="u")
    wf2.query("^g_").set_group("g")
    with pytest.raises(ConfigurationError, match="'outside'"):
        wf2.units()

    # nodes launched differently cannot share a task
    class Keyed(GraphWorkflow):
        def fusion_key(self, i):
            return ("gpu",) if self.graph.names[i] == "prep_1" else super().fusion_key(i)

    wf3 = Keyed(add(*preps).set_name("total3"), workflow_name="u")
    wf3.query("^prep_").set_group("prep")
    with pytest.raises(ConfigurationError, match="'prep_0' and 'prep_1'"):
        wf3.units()
    obj = CounterNode(0).set_name("obj_x")
    wf4 = GraphWorkflow(obj.bump(1).set_name("obj_call"), workflow_name="u")
    wf4.query("^obj").set_group("objs")
    with pytest.raises(ConfigurationError, match="class or method"):
        wf4.units()


def test_bad_settings_are_refused():
    wf = GraphWorkflow(chain(2), workflow_name="u")
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigurationError, match="set_fusion"):
            wf.set_fusion(bad)
    for limit in (0, -1, 2.5, True):
        with pytest.raises(ConfigurationError, match="max_units"):
            wf.set_fusion(True, max_units=limit)
    with pytest.raises(ConfigurationError, match="set_group"):
        wf.query("^c0$").set_group("")
    with pytest.raises(ConfigurationError, match="matches no node"):
        wf.query("^nope$").set_group("g")


def test_the_limit_merges_down_to_it_and_the_report_says_how():
    src = inc(0).set_name("src")
    mids = [inc(src).set_name(f"m{k}") for k in range(30)]
    pairs = [add(mids[k], mids[k + 1]).set_name(f"p{k}") for k in range(29)]
    wf = GraphWorkflow(add(*pairs).set_name("total"), workflow_name="u")
    assert len(wf.units().running) == 61
    wf.set_fusion(True, max_units=10)
    units = wf.units()
    assert len(units.running) <= 10
    assert "merged" in str(units) and "limit 10" in str(units)
    _check_valid(wf.graph, wf.plan().actions, units)
    # merging never crosses different keys: the limit is then not reached, and the report says why
    class Keyed(GraphWorkflow):
        def fusion_key(self, i):
            return (i % 2,) if self.graph.names[i].startswith("m") else super().fusion_key(i)

    wf2 = Keyed(add(*pairs).set_name("total2"), workflow_name="u")
    wf2.set_fusion(True, max_units=3)
    units2 = wf2.units()
    for u in units2.running:
        assert len({wf2.fusion_key(i) for i in u.indices}) == 1
    _check_valid(wf2.graph, wf2.plan().actions, units2)


def _check_valid(graph, actions, units) -> None:
    """Every running node in exactly one unit; loads once; each step's outside parents in
    earlier steps; nothing released that a later step needs; outputs never released."""
    seen: dict[int, int] = {}
    for k, step in enumerate(units.steps):
        for i in step.indices:
            assert i not in seen, f"node {i} in two steps"
            seen[i] = k
            assert (actions[i] == LOAD) == step.loads
        inside = set(step.indices)
        for i in step.indices:
            if not step.loads:
                for p in graph.parents[i]:
                    if p in inside:
                        assert p < i  # runs in topological order
                    elif actions[p] in (RUN, "replay") or actions[p] == LOAD:
                        assert seen.get(p, k) < k, f"step {k} needs node {p} of a later step"
        expected = sorted({p for i in inside for p in graph.data_parents[i]} - inside) if not step.loads else []
        assert list(step.parents) == expected
    running = {i for i, a in enumerate(actions) if a not in (SKIP,)}
    assert set(seen) == running
    released_at = {v: k for k, r in enumerate(units.release) for v in r}
    outputs = set(graph.outputs)
    assert not outputs & set(released_at)
    for k, step in enumerate(units.steps):
        for p in step.parents:
            assert released_at.get(p, len(units.steps)) >= k, f"node {p} released before step {k} needs it"
    # exports: every value a later step needs, and the outputs
    for step in units.steps:
        if step.loads:
            continue
        needed = {p for s in units.steps for p in s.parents} | outputs
        assert set(step.exports) == needed & set(step.indices)


@pytest.mark.parametrize("seed", range(30))
def test_random_dags_partition_validly(seed):
    rnd = random.Random(seed)
    nodes: list[Any] = []
    for k in range(rnd.randint(5, 60)):
        if not nodes or rnd.random() < 0.1:
            nodes.append(inc(k).set_name(f"n{k}"))
            continue
        ps = rnd.sample(nodes[-8:], k=min(len(nodes[-8:]), rnd.choice([1, 1, 1, 2, 3])))
        nodes.append((inc(ps[0]) if len(ps) == 1 else add(*ps)).set_name(f"n{k}"))
    sinks = nodes[-3:]
    wf = GraphWorkflow(*sinks, workflow_name="r")
    actions = [rnd.choice([RUN, RUN, RUN, LOAD, SKIP]) for _ in range(len(wf.graph))]
    for i in range(len(actions)):  # a node that runs needs its parents run or loaded
        if actions[i] == RUN:
            for p in wf.graph.parents[i]:
                if actions[p] == SKIP:
                    actions[p] = LOAD
    for o in wf.graph.outputs:
        if actions[o] == SKIP:
            actions[o] = LOAD
    keys = [rnd.choice([(), (), ("x",)]) for _ in actions]
    limit = rnd.choice([None, 3, 10])
    units = partition(wf.graph, actions, keys, max_units=limit, enabled=rnd.random() < 0.8)
    _check_valid(wf.graph, actions, units)
    for u in units.running:
        assert len({keys[i] for i in u.indices}) == 1


# -- the engine running units -------------------------------------------------------------------
class _InlineUnits:
    """Runs each task in this process as it is submitted, units included (see the module
    documentation): what Ray and Prefect do in their workers."""

    slots = 1  # the engine collects each task's completions before the next (a serial executor)
    in_process = False
    where = None
    loads_first = False
    fuses = True

    def __init__(self, wf) -> None:
        self.wf = wf
        self.submitted: list[tuple[int, ...]] = []

    def start(self, plan) -> None:
        self.R: dict[int, Any] = {}
        self.done: list[Any] = []

    def submit(self, task) -> None:
        if isinstance(task, UnitTask):
            self.submitted.append(task.indices)
            try:
                values, done = task.run({p: self.R[p] for p in task.parents})
            except NodeFailure as f:
                self.done.extend([*f.done, f])
                return
            self.R.update(values)
            self.done.extend(done)
            return
        assert isinstance(task, NodeTask)
        self.submitted.append((task.index,))
        try:
            self.R[task.index], seconds = task.run(self.R)
        except NodeFailure as f:
            self.done.append(f)
        else:
            self.done.append((task.index, seconds))

    def load(self, i: int) -> None:
        try:
            self.R[i] = self.wf.storage.read_task(self.wf.workflow_name, self.wf.graph.names[i])
        except Exception as exc:
            self.done.append(NodeFailure(i, "load", exc))
        else:
            self.done.append((i, None))

    def release(self, indices: Sequence[int]) -> None:
        for p in indices:
            self.R.pop(p, None)

    @property
    def pending(self) -> int:
        return len(self.done)

    def oldest(self):
        return None

    def wait(self, count, timeout):
        done, self.done = self.done, []
        return done

    def results(self, outputs) -> Mapping[int, Any]:
        return {o: self.R[o] for o in outputs}


class _UnitsWorkflow(LocalWorkflow):
    fuses_units = True

    def run(self):
        self.executor = _InlineUnits(self)
        with run_session(self) as session:
            results = execute(self, self.executor, session)
        return self.outputs([results.get(i) for i in range(len(self.graph))])


def test_a_unit_stores_each_node_and_a_failure_names_its_node(tmp_path):
    a = chain(3, "a")
    bad = boom(a).set_name("bad")
    end = inc(bad).set_name("after")
    wf = _UnitsWorkflow(end, workflow_name="units")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    with pytest.raises(NodeExecutionError, match="'bad'") as err:
        wf.run()
    assert err.value.node_name == "bad"
    assert wf.executor.submitted == [(0, 1, 2, 3, 4)]  # one task for the whole chain
    assert wf.last_run.failed == "bad"
    assert wf.last_run.ran == 3
    assert sorted(wf.storage.list_tasks("units", None)) == ["a0", "a1", "a2"]

    # fixed: the stored chain is loaded, the rest runs as one unit
    wf.replace_func(bad, lambda x: x * 10)
    assert wf.run() == 31
    assert [p.action for p in wf.plan()] == ["skip"] * 4 + ["load"]
    assert wf.executor.submitted[-1] == (3, 4)


def test_units_give_the_same_results_as_single_tasks(tmp_path):
    src = inc(1).set_name("src")
    ends = [chain(5, f"b{k}_", src) for k in range(4)]
    total = add(*ends).set_name("total")
    fused = _UnitsWorkflow(total, workflow_name="same")
    assert fused.run() == LocalWorkflow(total, workflow_name="same").run()
    assert len(fused.executor.submitted) == 6
    fused.set_fusion(False)
    assert fused.run() == 4 * (2 + 5)
    assert len(fused.executor.submitted) == len(fused.graph)


class _Box:
    pass


_BOXES: list[Any] = []


@workflow
def boxed(prev):
    """A new object; returns how many objects of nodes before its parent are still alive."""
    import weakref

    _BOXES.append(weakref.ref(_Box()))
    box = _Box()
    _BOXES[-1] = weakref.ref(box)
    older = sum(1 for r in _BOXES[:-2] if r() is not None)
    return box if older == 0 else older


def test_unit_task_drops_values_it_no_longer_needs():
    _BOXES.clear()
    x: Any = None
    for k in range(6):
        x = boxed(x).set_name(f"x{k}")
    wf = LocalWorkflow(x, workflow_name="drop")
    unit = UnitTask([wf.node_task(i, save=False) for i in range(6)], (), (5,))
    values, done = unit.run({})
    assert [i for i, _ in done] == list(range(6))
    assert isinstance(values[5], _Box), f"{values[5]} values of earlier nodes were still held"


# -- found in review ---------------------------------------------------------------------------
@workflow
class Recorder:
    def __init__(self):
        self.seen = []

    def add(self, k):
        self.seen.append(k)
        return list(self.seen)


@workflow
def snapshot(recorder, *after):
    return list(recorder.seen)


@workflow
def pair(x, y):
    return (x, y)


def _object_users_dag():
    """A node reading an object between two method calls, on a deeper path than the
    second call (level-by-level merging would put it after that call)."""
    rec = Recorder().set_name("rec")
    first = rec.add(1).set_name("first")
    x = inc(0).set_name("d0")
    for k in range(1, 5):  # nodes with two users each: no chains
        inc(x).set_name(f"side{k}")
        x = inc(x).set_name(f"d{k}")
    seen = snapshot(rec, x).set_name("seen")  # written before add(2): sees [1]
    second = rec.add(2).set_name("second")
    return first, seen, second


def test_merging_keeps_users_of_an_object_between_the_method_calls_they_were_written_between():
    expected = LocalWorkflow(*_object_users_dag(), workflow_name="obj").run()
    assert expected[1] == [1]
    wf = _UnitsWorkflow(*_object_users_dag(), workflow_name="obj")
    wf.set_fusion(True, max_units=3)
    assert any(u.why == "merged" for u in wf.units().running)
    assert wf.run() == expected


def test_a_skipped_user_of_an_object_does_not_free_the_next_one_from_the_call_order(tmp_path):
    """Two users of an object written after its second method call; the first of them is
    stored and not needed (skipped). The order edge between the call and the second
    user ran through the skipped one: the second user must still come after the call."""

    def dag():
        rec = Recorder().set_name("rec")
        rec.add(1).set_name("first")
        second = rec.add(2).set_name("second")
        mid = snapshot(rec).set_name("mid")
        late = snapshot(rec).set_name("late")
        return second, late, mid

    for cls in (LocalWorkflow, _UnitsWorkflow):
        storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / cls.__name__)}})
        wf = cls(*dag(), workflow_name="order")
        wf.set_storage(storage)
        assert wf.run() == [[1, 2], [1, 2], [1, 2]]
        wf = cls(*dag()[:2], workflow_name="order")  # "mid" only stored now: skipped
        wf.set_storage(storage)
        wf.set_fusion(True, max_units=1)
        wf.query("^(rec|first|second|late)$").set_cache("off")
        assert [(step.name, step.action) for step in wf.plan()][-2:] == [("mid", "skip"), ("late", "run")]
        assert wf.run() == [[1, 2], [1, 2]], cls.__name__
        assert storage.read_task("order", "late") == [1, 2]


@workflow
class SelfReturning:
    def __init__(self):
        self.seen = []

    def add(self, k):
        self.seen.append(k)
        return self  # as scikit-learn's fit


def test_merging_keeps_a_user_of_a_call_result_that_is_the_object_before_the_next_call():
    def dag():
        obj = SelfReturning().set_name("obj")
        first = obj.add(1).set_name("first")
        x = inc(0).set_name("d0")
        for k in range(1, 5):  # a deeper path than the second call's
            inc(x).set_name(f"side{k}")
            x = inc(x).set_name(f"d{k}")
        seen = snapshot(first, x).set_name("seen")  # the object through first's result: sees [1]
        second = obj.add(2).set_name("second")
        return seen, second

    expected = LocalWorkflow(dag()[0], workflow_name="obj").run()
    assert expected == [1]
    wf = _UnitsWorkflow(*dag(), workflow_name="obj")
    wf.set_fusion(True, max_units=3)
    assert any(u.why == "merged" for u in wf.units().running)
    assert wf.run()[0] == expected


def test_a_group_that_would_move_a_user_of_an_object_past_a_method_call_is_refused():
    rec = Recorder().set_name("rec")
    first = rec.add(1).set_name("first")
    seen = snapshot(rec).set_name("seen")
    second = rec.add(2).set_name("second")
    after = pair(seen, second).set_name("after")
    wf = _UnitsWorkflow(first, after, workflow_name="obj")
    wf.query("^(seen|after)$").set_group("g")
    with pytest.raises(ConfigurationError, match="'second'.*method calls"):
        wf.units()


def test_groups_are_checked_as_if_every_node_ran(tmp_path):
    """A group valid only while the node between its members is stored would fail a
    later run halfway (that result damaged or removed): it is refused up front."""
    a = inc(0).set_name("a")
    b = inc(inc(a).set_name("mid")).set_name("b")
    wf = _UnitsWorkflow(b, workflow_name="g")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    wf.run()
    wf.query("^(a|b)$").set_cache("off").set_group("G")
    assert wf.plan().action("mid") == "load"
    with pytest.raises(ConfigurationError, match="'mid'"):
        wf.units()
    # and a drawing says so instead of failing
    source = GraphWorkflow(b, workflow_name="g")
    source.query("^(a|b)$").set_group("G")
    assert "no execution units: " in source.dot_source()


def test_stored_results_are_read_in_the_order_written(tmp_path):
    """A damaged stored result is found before the nodes written after it run, as
    LocalWorkflow finds it: a node under cache policy "off" before it runs once."""
    first = inc(0).set_name("stored")
    off2 = inc(inc(1).set_name("off")).set_name("off2")
    total = add(first, off2).set_name("total")
    wf = _UnitsWorkflow(total, inc(off2).set_name("off_other"), workflow_name="order")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    wf.run()
    wf.query("^off").set_cache("off")
    wf.storage.remove_task("order", task_name="total")
    steps = [(s.why, [wf.graph.names[i] for i in s.indices]) for s in wf.units().steps]
    assert steps == [("load", ["stored"]), ("chain", ["off", "off2"]), ("single", ["total"]), ("single", ["off_other"])]


def test_an_interrupt_inside_a_unit_names_the_node_and_counts_the_nodes_done(tmp_path):
    @workflow
    def interrupt(x):
        raise KeyboardInterrupt

    end = inc(interrupt(chain(2)).set_name("stop")).set_name("end")
    wf = _UnitsWorkflow(end, workflow_name="ctrlc")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    assert wf.last_run.failed == "stop"
    assert wf.last_run.ran == 2
    assert sorted(wf.storage.list_tasks("ctrlc", None)) == ["c0", "c1"]


def test_a_blank_group_name_is_refused():
    wf = GraphWorkflow(chain(2), workflow_name="u")
    with pytest.raises(ConfigurationError, match="set_group"):
        wf.query("^c0$").set_group("   ")


# -- the conformance suites, run through the engine with units ------------------------------------
from contracts.backend import BackendConformance, LoadErrorConformance  # noqa: E402
from contracts.units import UnitConformance  # noqa: E402


class TestInlineUnitsConformance(BackendConformance, LoadErrorConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self):
        return _UnitsWorkflow


class TestInlineUnitsConformanceUnfused(BackendConformance, UnitConformance):
    @pytest.fixture
    def make_workflow(self):
        def make(*nodes, workflow_name):
            wf = _UnitsWorkflow(*nodes, workflow_name=workflow_name)
            wf.set_fusion(False)
            return wf

        return make
