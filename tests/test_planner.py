"""The planner as a pure function: small graphs, what storage holds, the fingerprint
records and the cache policies in; each node's action and reason out (table tests)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from functionfuse import workflow
from functionfuse._records import fingerprint_records
from functionfuse.errors import CorruptedResultError
from functionfuse.graph import Graph
from functionfuse.planner import (
    CORRUPTED,
    CURRENT,
    LOAD,
    MISSING,
    NO_STORAGE,
    NOT_STORED,
    REPLAY,
    RUN,
    SKIP,
    STALE,
    UNRECORDED,
    UNVERIFIED,
    Policies,
    plan,
)


@workflow
def source(v):
    return v


@workflow
def inc(x):
    return x + 1


@workflow
class Counter:
    def __init__(self, start):
        self.n = start

    def add(self, k):
        self.n += k
        return self.n


def chain(v=1):
    """a -> b -> c; c is the output."""
    a = source(v).set_name("a")
    b = inc(a).set_name("b")
    return Graph((inc(b).set_name("c"),))


def counter_graph():
    """ctor -> m1 -> m2 (method calls on one instance); m2 is the output."""
    obj: Any = Counter(0)
    obj.set_name("ctor")
    m1 = obj.add(1).set_name("m1")
    m2 = obj.add(2).set_name("m2")
    return Graph((m1, m2))


def stored_as(graph, names, records=None):
    """What storage holds after a run of *graph* stored *names* (with their records)."""
    records = records or fingerprint_records(graph)
    index = graph.name_index
    return {n: {"fingerprint": copy.deepcopy(records[index[n]])} for n in names}


def unverified(names):
    return {n: {"node": n} for n in names}


def corrupted(name):
    return {name: CorruptedResultError(f"checksum mismatch in {name}", path=f"/store/{name}")}


def stale_a():
    """Storage holding a, b, c as computed from source(2); the graph now has source(1)."""
    return stored_as(chain(2), ["a", "b", "c"])


# (id, graph, stored, policies, expected {name: (action, state, reason part)})
CASES = [
    ("no-storage", chain, lambda g: None, Policies(),
     {"a": (RUN, NO_STORAGE, "no storage"), "b": (RUN, NO_STORAGE, "no storage"), "c": (RUN, NO_STORAGE, "no storage")}),
    ("nothing-stored", chain, lambda g: {}, Policies(),
     {"a": (RUN, MISSING, "no stored result"), "b": (RUN, MISSING, "no stored result"), "c": (RUN, MISSING, "no stored result")}),
    ("all-current", chain, lambda g: stored_as(g, "abc"), Policies(),
     {"a": (SKIP, CURRENT, "no node that runs needs it"), "b": (SKIP, CURRENT, "no node that runs needs it"),
      "c": (LOAD, CURRENT, "stored")}),
    ("output-missing", chain, lambda g: stored_as(g, "ab"), Policies(),
     {"a": (SKIP, CURRENT, "no node that runs needs it"), "b": (LOAD, CURRENT, "stored"), "c": (RUN, MISSING, "no stored result")}),
    ("stale-fingerprint", chain, lambda g: stale_a(), Policies(),
     {"a": (RUN, STALE, "stale: argument"), "b": (RUN, STALE, "stale: input 'a' changed"),
      "c": (RUN, STALE, "stale: input 'b' changed")}),
    ("stale-name", chain, lambda g: stale_a(), Policies(default="name"),
     {"a": (SKIP, STALE, "stale: argument"), "b": (SKIP, STALE, "no node that runs needs it"), "c": (LOAD, STALE, "stale: input")}),
    ("stale-per-node-fingerprint", chain, lambda g: stale_a(), Policies(default="name", per_node={0: "fingerprint"}),
     {"a": (RUN, STALE, "stale: argument"), "b": (SKIP, STALE, "stale: input 'a' changed"), "c": (LOAD, STALE, "stale")}),
    ("off", chain, lambda g: stored_as(g, "abc"), Policies(default="off"),
     {"a": (RUN, CURRENT, "cache is off"), "b": (RUN, CURRENT, "cache is off"), "c": (RUN, CURRENT, "cache is off")}),
    ("corrupted-middle", chain, lambda g: {**stored_as(g, "ac"), **corrupted("b")}, Policies(),
     {"a": (LOAD, CURRENT, "stored"), "b": (RUN, CORRUPTED, "stored result is unreadable"),
      "c": (LOAD, CURRENT, "stored")}),
    ("corrupted-output", chain, lambda g: {**stored_as(g, "ab"), **corrupted("c")}, Policies(),
     {"a": (SKIP, CURRENT, ""), "b": (LOAD, CURRENT, "stored"), "c": (RUN, CORRUPTED, "stored result is unreadable")}),
    ("unverified-fingerprint", chain, lambda g: unverified("abc"), Policies(),
     {"a": (RUN, UNVERIFIED, "stored without a fingerprint"), "b": (RUN, UNVERIFIED, "stored without a fingerprint"),
      "c": (RUN, UNVERIFIED, "stored without a fingerprint")}),
    ("unverified-name", chain, lambda g: unverified("abc"), Policies(default="name"),
     {"a": (SKIP, UNVERIFIED, "no node that runs needs it"), "b": (SKIP, UNVERIFIED, ""), "c": (LOAD, UNVERIFIED, "stored")}),
    ("unstored-not-needed", chain, lambda g: stored_as(g, "ac"), Policies(unstored=frozenset({1})),
     {"a": (SKIP, CURRENT, ""), "b": (SKIP, NOT_STORED, "not stored; no node that runs needs it"), "c": (LOAD, CURRENT, "stored")}),
    ("unstored-needed", chain, lambda g: stored_as(g, "a"), Policies(unstored=frozenset({1})),
     {"a": (LOAD, CURRENT, "stored"), "b": (REPLAY, NOT_STORED, "not stored; runs: 'c' needs it"),
      "c": (RUN, MISSING, "no stored result")}),
    ("unstored-output", chain, lambda g: stored_as(g, "ab"), Policies(unstored=frozenset({2})),
     {"a": (SKIP, CURRENT, ""), "b": (LOAD, CURRENT, "stored"), "c": (REPLAY, NOT_STORED, "not stored; runs: an output")}),
    ("logged", chain, lambda g: stored_as(g, "ab"), Policies(logged=frozenset({2})),
     {"a": (SKIP, CURRENT, ""), "b": (LOAD, CURRENT, "stored"), "c": (REPLAY, NOT_STORED, "selected by log_nodes()")}),
    ("logged-without-storage", chain, lambda g: None, Policies(logged=frozenset({2})),
     {"c": (RUN, NO_STORAGE, "no storage")}),
    ("method-chain-resumes", counter_graph, lambda g: stored_as(g, ["ctor", "m1"]), Policies(),
     {"ctor": (REPLAY, CURRENT, "replayed: a later method call needs this instance"),
      "m1": (REPLAY, CURRENT, "replayed"), "m2": (RUN, MISSING, "no stored result")}),
    ("method-chain-stored", counter_graph, lambda g: stored_as(g, ["ctor", "m1", "m2"]), Policies(),
     {"ctor": (SKIP, CURRENT, ""), "m1": (LOAD, CURRENT, "stored"), "m2": (LOAD, CURRENT, "stored")}),
]


@pytest.mark.parametrize("make_graph, make_stored, policies, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_table(make_graph, make_stored, policies, expected):
    g = make_graph()
    stored = make_stored(g)
    records = fingerprint_records(g)
    before = None if stored is None else {k: v if isinstance(v, Exception) else copy.deepcopy(v) for k, v in stored.items()}
    p = plan(g, stored, records if stored is not None else None, policies)
    got = {e.name: e for e in p}
    for name, (action, state, reason) in expected.items():
        e = got[name]
        assert (e.action, e.state) == (action, state), f"{name}: {e}"
        assert reason in e.reason, f"{name}: {e.reason!r} lacks {reason!r}"
    assert stored == before  # pure: nothing it was given changed
    again = plan(g, stored, records if stored is not None else None, policies)
    assert [tuple(vars(e).values()) for e in again] == [tuple(vars(e).values()) for e in p]


def test_a_plan_lists_the_unreadable_and_the_stale_it_reuses():
    g = chain()
    records = fingerprint_records(g)
    p = plan(g, {**stored_as(g, "ab"), **corrupted("c")}, records)
    assert [name for name, _ in p.unreadable] == ["c"]
    assert p.stale == []
    p = plan(g, stale_a(), records, Policies(default="name"))
    assert [name for name, _, _ in p.stale] == ["a"]  # b and c changed only through their input
    p = plan(g, stale_a(), records, Policies(default="name", per_node={0: "fingerprint"}))
    assert [(name, why) for name, why, _ in p.stale] == [("b", "its input 'a' is recomputed in this run")]


def test_records_of_nodes_computed_from_reused_stale_results_name_the_stored_input():
    """Under the name policy, c runs from b's stored (stale) result: c is saved with a
    record naming that input, so a later plan sees c stale too."""
    g = chain()
    records = fingerprint_records(g)
    stored = stale_a()
    del stored["c"]
    p = plan(g, stored, records, Policies(default="name"))
    assert p.actions == [SKIP, LOAD, RUN]
    old_b = stored["b"]["fingerprint"]["node"]
    assert p.records is not None
    assert p.records[2]["inputs"]["b"] == old_b != records[1]["node"]
    assert p.records[2]["node"] != records[2]["node"]
    # without a fingerprint stored for b, the input is named as unrecorded
    stored["b"] = {"node": "b"}
    p = plan(g, stored, records, Policies(default="name"))
    assert p.records is not None and p.records[2]["inputs"]["b"] == UNRECORDED
    # all current: the current records
    assert plan(g, stored_as(g, "ab"), records).records == records


def test_without_storage_a_plan_saves_nothing():
    p = plan(chain(), None, None)
    assert p.records is None and p.record(0) is None
    assert p.actions == [RUN, RUN, RUN] and p.count(RUN) == 3 and p.action("b") == RUN


@workflow
class Acc:
    def __init__(self, v):
        self.v = v

    def add(self, x):
        self.v = self.v * 3 + x
        return self.v


@workflow
def peek(acc, x):
    return acc.v * 7 + x


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_user_of_an_object_rerun_on_resume_sees_the_calls_written_before_it(tmp_path, parallel):
    """``peek`` takes the object after ``add(5)`` was called on it; rerun alone on a
    resume (its result removed), it must get the object as ``add`` left it: the class
    node and the call are replayed, not loaded (a loaded class node is the object as
    constructed)."""
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.storage import storage_factory

    def build():
        acc = Acc(1).set_name("acc")
        first = acc.add(5).set_name("add")
        return peek(acc, first).set_name("peek")

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(build(), workflow_name="peek", parallel=parallel)
    wf.set_storage(storage)
    assert wf.run() == (1 * 3 + 5) * 7 + 8
    storage.remove_task("peek", "peek")
    wf = LocalWorkflow(build(), workflow_name="peek", parallel=parallel)
    wf.set_storage(storage)
    assert [(step.name, step.action) for step in wf.plan()] == [("acc", REPLAY), ("add", REPLAY), ("peek", RUN)]
    assert wf.run() == 64
    assert storage.read_task("peek", "peek") == 64


def test_an_object_that_is_an_output_is_returned_as_its_calls_left_it_on_a_resume(tmp_path):
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.storage import storage_factory

    def build():
        acc = Acc(1).set_name("acc")
        return acc, acc.add(5).set_name("add")

    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    for _ in range(2):  # a first run, then a resume with everything stored
        wf = LocalWorkflow(*build(), workflow_name="objout")
        wf.set_storage(storage)
        acc, added = wf.run()
        assert (acc.v, added) == (8, 8)
