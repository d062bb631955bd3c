"""Property-based tests: random DAGs run by LocalWorkflow against plain Python.

Every random DAG is a list of node descriptions. The same description is

* built into functionfuse nodes and run by :class:`LocalWorkflow`, and
* evaluated by a plain recursive Python function (no functionfuse involved),

and the two must agree. With file storage, the resume behaviour (which nodes run
again after stored results are removed or damaged) is compared with a reference
model written from the documented rules:

* the graph of a workflow given some nodes is every root that is an ancestor of
  them, everything reachable from those roots, and every ancestor of those;
* a node runs if no result is stored under its name, or if it is a constructor or
  method call of an instance whose later method call runs (the chain is replayed);
* a stored node is loaded if it is an output or a running node needs its value;
  every other stored node is skipped.

Node functions count their executions in :data:`CALLS`, keyed by the node's
position in the description.

``os.fsync`` is a no-op in this module (see :func:`_no_fsync`): these tests check what
is computed, stored and reused, not durability across power loss, and fsync was a third
of their run time. Crash consistency is tested, with fsync, in ``test_kill9.py``.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptedResultError, ResultRecomputedWarning
from functionfuse.storage import storage_factory
from functionfuse.storage.frame import PREAMBLE

WF = "w"
MOD = (1 << 61) - 1

#: node key -> number of executions since the last reset
CALLS: collections.Counter = collections.Counter()

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(scope="module", autouse=True)
def _no_fsync():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


# ---------------------------------------------------------------------------------------
# Deterministic value combination shared by the node functions and the plain model
# ---------------------------------------------------------------------------------------
def fold(tag: int, xs) -> int:
    h = tag % MOD
    for x in xs:
        h = (h * 1000003 + x) % MOD
    return h


def digest(v: Any) -> int:
    """An order- and shape-sensitive fingerprint of ints, tuples, lists and dicts."""
    t = type(v)
    if t is int:
        return v % MOD
    if t is tuple:
        return fold(11, [digest(x) for x in v])
    if t is list:
        return fold(13, [digest(x) for x in v])
    if t is dict:
        return fold(17, [fold(19, [zlib.crc32(k.encode()), digest(v[k])]) for k in sorted(v)])
    raise TypeError(f"unexpected value {v!r} of type {t.__name__} reached a node function")


def combine(k: int, const: int, args: tuple, kwargs: dict) -> int:
    return fold(k + 101, [const % MOD, digest(tuple(args)), digest(dict(kwargs))])


def pair_of(k: int, const: int, args: tuple, kwargs: dict) -> tuple:
    # a nested tuple, so that node[0], node[1], node[1][0] and node[1][1] are all valid
    return (combine(k, const, args, kwargs), (k, const))


@workflow
def int_node(_k, _c, *args, **kwargs):
    CALLS[_k] += 1
    return combine(_k, _c, args, kwargs)


@workflow
def pair_node(_k, _c, *args, **kwargs):
    CALLS[_k] += 1
    return pair_of(_k, _c, args, kwargs)


@workflow
def pair_node_b(_k, _c, *args, **kwargs):
    CALLS[_k] += 1
    return pair_of(_k, _c, args, kwargs)


FUNCS = {"int": int_node, "pair": pair_node, "pair_b": pair_node_b}
LABELS = {"int": "int_node", "pair": "pair_node", "pair_b": "pair_node_b"}
PAIR_PATHS = [(0,), (1,), (1, 0), (1, 1)]


def acc_start(start: Any) -> tuple:
    return (fold(29, [digest(start)]), ())


def acc_add(state: tuple, k: int, x: Any) -> tuple:
    total, seen = state
    return (fold(23, [total, digest(x)]), seen + (k,))


@workflow
class Acc:
    """A stateful accumulator; every call records which node made it."""

    def __init__(self, _k, start):
        CALLS[_k] += 1
        self.state = acc_start(start)

    def add(self, _k, x):
        CALLS[_k] += 1
        self.state = acc_add(self.state, _k, x)
        return self.state[0]

    def snapshot(self, _k):
        CALLS[_k] += 1
        return self.state  # immutable: a tuple of an int and a tuple


# ---------------------------------------------------------------------------------------
# Argument trees: ("ref", parent, path) | ("const", v) | ("list"|"tuple", [trees])
#                 | ("dict", [(key, tree)])
# ---------------------------------------------------------------------------------------
def build_arg(tree, nodes):
    kind = tree[0]
    if kind == "ref":
        ref = nodes[tree[1]]
        for key in tree[2]:
            ref = ref[key]
        return ref
    if kind == "const":
        return tree[1]
    if kind == "list":
        return [build_arg(t, nodes) for t in tree[1]]
    if kind == "tuple":
        return tuple(build_arg(t, nodes) for t in tree[1])
    return {key: build_arg(t, nodes) for key, t in tree[1]}


def eval_arg(tree, value):
    """*tree* with each reference replaced by the plain value (``value(k)``)."""
    kind = tree[0]
    if kind == "ref":
        v = value(tree[1])
        for key in tree[2]:
            v = v[key]
        return v
    if kind == "const":
        return tree[1]
    if kind == "list":
        return [eval_arg(t, value) for t in tree[1]]
    if kind == "tuple":
        return tuple(eval_arg(t, value) for t in tree[1])
    return {key: eval_arg(t, value) for key, t in tree[1]}


def refs_of(tree, out: list) -> list:
    kind = tree[0]
    if kind == "ref":
        out.append(tree[1])
    elif kind in ("list", "tuple"):
        for t in tree[1]:
            refs_of(t, out)
    elif kind == "dict":
        for _, t in tree[1]:
            refs_of(t, out)
    return out


@st.composite
def wrapped(draw, leaf, depth=0):
    """*leaf* as it is, or inside a list, tuple or dict (nested up to two levels)."""
    how = draw(st.sampled_from(["leaf", "leaf", "list", "tuple", "dict"])) if depth < 2 else "leaf"
    if how == "leaf":
        return leaf
    inner = draw(wrapped(leaf, depth + 1))
    extras = [("const", c) for c in draw(st.lists(st.integers(-9, 9), max_size=2))]
    at = draw(st.integers(0, len(extras)))
    items = extras[:at] + [inner] + extras[at:]
    if how == "dict":
        return ("dict", [(f"k{i}", t) for i, t in enumerate(items)])
    return (how, items)


# ---------------------------------------------------------------------------------------
# Random function DAGs
# ---------------------------------------------------------------------------------------
@dataclass
class FNode:
    k: int
    kind: str  # "int", "pair" or "pair_b"
    const: int
    args: list
    kwargs: list
    name: str | None

    @property
    def parents(self) -> list[int]:
        out: list = []
        for t in self.args:
            refs_of(t, out)
        for _, t in self.kwargs:
            refs_of(t, out)
        return out


@dataclass
class Dag:
    nodes: list[FNode]
    outputs: list[tuple[int, tuple]]  # (node, index path)

    def __repr__(self) -> str:  # readable falsifying examples
        lines = []
        for n in self.nodes:
            lines.append(f"  {n.k}: {n.kind} const={n.const} args={n.args} kwargs={n.kwargs} name={n.name!r}")
        return "Dag(\n" + "\n".join(lines) + f"\n  outputs={self.outputs})"


@st.composite
def dags(draw, max_nodes: int = 40) -> Dag:
    n = draw(st.integers(1, max_nodes))
    nodes: list[FNode] = []
    names: set[str] = set()
    for k in range(n):
        kind = draw(st.sampled_from(["int", "pair", "pair_b"]))
        parents = draw(st.lists(st.integers(0, k - 1), max_size=min(k, 4))) if k else []
        args: list = []
        kwargs: list = []
        for j, p in enumerate(parents):
            path: tuple = ()
            if nodes[p].kind != "int" and draw(st.booleans()):
                path = draw(st.sampled_from(PAIR_PATHS))
            tree = draw(wrapped(("ref", p, path)))
            if draw(st.booleans()):
                kwargs.append((f"a{j}", tree))
            else:
                args.append(tree)
        for c in draw(st.lists(st.integers(-50, 50), max_size=2)):  # plain constants too
            args.insert(draw(st.integers(0, len(args))), ("const", c))
        const = draw(st.integers(-(10**6), 10**6))
        name = None
        if draw(st.booleans()):
            # some explicit names look exactly like automatic ones
            name = draw(
                st.sampled_from(
                    [f"n{k}", f"int_node_{k % 3:04d}", f"pair_node_{k % 2:04d}", f"step.{k}-x", f"pair_node_b_{k:04d}"]
                )
            )
            if name in names:
                name = f"n{k}"
            names.add(name)
        nodes.append(FNode(k, kind, const, args, kwargs, name))
    outs = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=min(n, 5)))
    outputs = []
    for o in outs:
        path = ()
        if nodes[o].kind != "int" and draw(st.booleans()):
            path = draw(st.sampled_from(PAIR_PATHS))
        outputs.append((o, path))
    return Dag(nodes, outputs)


def build_dag(dag: Dag) -> tuple[list, list]:
    """The functionfuse nodes of *dag*, and the output references."""
    built: list = []
    for n in dag.nodes:
        args = [build_arg(t, built) for t in n.args]
        kwargs = {key: build_arg(t, built) for key, t in n.kwargs}
        node = FUNCS[n.kind](n.k, n.const, *args, **kwargs)
        if n.name is not None:
            node.set_name(n.name)
        built.append(node)
    outs = []
    for o, path in dag.outputs:
        ref = built[o]
        for key in path:
            ref = ref[key]
        outs.append(ref)
    return built, outs


def plain_values(dag: Dag) -> dict[int, Any]:
    """Every node's value by plain recursive evaluation."""
    memo: dict[int, Any] = {}

    def value(k: int) -> Any:
        if k not in memo:
            n = dag.nodes[k]
            args = tuple(eval_arg(t, value) for t in n.args)
            kwargs = {key: eval_arg(t, value) for key, t in n.kwargs}
            memo[k] = (combine if n.kind == "int" else pair_of)(n.k, n.const, args, kwargs)
        return memo[k]

    for k in range(len(dag.nodes)):
        value(k)
    return memo


def resolve(v: Any, path: tuple) -> Any:
    for key in path:
        v = v[key]
    return v


def expected_output(values: dict, outputs: list) -> Any:
    vals = [resolve(values[o], path) for o, path in outputs]
    return vals[0] if len(vals) == 1 else vals


# ---------------------------------------------------------------------------------------
# Reference model of graph membership, naming and the resume plan
# ---------------------------------------------------------------------------------------
@dataclass
class Model:
    """Structure of a DAG as the reference model sees it (keys in creation order)."""

    data_parents: dict[int, list[int]]
    order_parent: dict[int, int] = field(default_factory=dict)  # method -> previous call
    instance: dict[int, int] = field(default_factory=dict)  # method -> constructor
    explicit: dict[int, str] = field(default_factory=dict)
    labels: dict[int, str] = field(default_factory=dict)

    def all_parents(self, k: int) -> set[int]:
        ps = set(self.data_parents[k])
        if k in self.order_parent:
            ps.add(self.order_parent[k])
        return ps

    def members(self, targets: list[int]) -> list[int]:
        keys = list(self.data_parents)
        children: dict[int, set[int]] = {k: set() for k in keys}
        for k in keys:
            for p in self.all_parents(k):
                children[p].add(k)

        def closure(start, step):
            seen, stack = set(), list(start)
            while stack:
                x = stack.pop()
                if x not in seen:
                    seen.add(x)
                    stack.extend(step(x))
            return seen

        ancestors = closure(targets, self.all_parents)
        roots = [a for a in ancestors if not self.all_parents(a)]
        reach = closure(roots, lambda x: children[x])
        return sorted(closure(reach, self.all_parents))

    def names(self, members: list[int]) -> dict[int, str]:
        explicit = {self.explicit[k] for k in members if k in self.explicit}
        counters: dict[str, int] = collections.Counter()
        out = {}
        for k in members:
            if k in self.explicit:
                out[k] = self.explicit[k]
                continue
            label = self.labels[k]
            while True:
                candidate = f"{label}_{counters[label]:04d}"
                counters[label] += 1
                if candidate not in explicit:
                    break
            out[k] = candidate
        return out

    def plan(self, members: list[int], stored: set[int], outputs: list[int]) -> tuple[set[int], set[int]]:
        """(nodes that run, nodes that are loaded) given the stored members."""
        run = {k for k in members if k not in stored}
        changed = True
        while changed:  # a running method call replays its instance's earlier calls
            changed = False
            for k in list(run):
                for p in (self.order_parent.get(k), self.instance.get(k)):
                    if p is not None and p not in run:
                        run.add(p)
                        changed = True
        needed = set(outputs)
        for k in run:
            needed.update(self.data_parents[k])
        return run, needed - run


def expected_plan(names, members, stored, run_set, load_set) -> dict[str, str]:
    """The plan's action per name: a stored node that must run is "replay"ed."""

    def action(k: int) -> str:
        if k in run_set:
            return "replay" if k in stored else "run"
        return "load" if k in load_set else "skip"

    return {names[k]: action(k) for k in members}


def dag_model(dag: Dag) -> Model:
    return Model(
        data_parents={n.k: sorted(set(n.parents)) for n in dag.nodes},
        explicit={n.k: n.name for n in dag.nodes if n.name is not None},
        labels={n.k: LABELS[n.kind] for n in dag.nodes},
    )


# ---------------------------------------------------------------------------------------
# Storage helpers
# ---------------------------------------------------------------------------------------
def new_storage(folder: str):
    return storage_factory({"kind": "file", "options": {"path": folder}})


def task_file(storage, name: str) -> str:
    return os.path.join(storage.path, WF, name + ".ffr")


def damage(path: str, how: str, data) -> None:
    """Damage a stored result: flip a header or payload byte, truncate or extend it.

    Positions are drawn as fractions: file sizes vary from run to run (the header
    holds timestamps), and hypothesis needs the same draws to replay an example.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        hlen = PREAMBLE.unpack(f.read(PREAMBLE.size))[3]
    payload = PREAMBLE.size + hlen

    def position(lo: int, hi: int, label: str) -> int:  # uniform in [lo, hi]
        return lo + data.draw(st.integers(0, 2**32 - 1), label=label) % (hi - lo + 1)

    if how == "truncate":
        os.truncate(path, position(0, size - 1, "truncate to"))
        return
    if how == "extend":
        with open(path, "ab") as f:
            f.write(data.draw(st.binary(min_size=1, max_size=64), label="appended"))
        return
    lo, hi = (payload, size - 1) if how == "flip payload" else (PREAMBLE.size, payload - 1)
    offset = position(lo, hi, "offset")
    mask = data.draw(st.integers(1, 255), label="xor")
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


DAMAGE = ["flip payload", "flip header", "truncate", "extend"]


def run_counting(wf):
    CALLS.clear()
    result = wf.run()
    return result, {k for k, c in CALLS.items() if c}, dict(CALLS)


# ---------------------------------------------------------------------------------------
# Properties of function DAGs
# ---------------------------------------------------------------------------------------
@settings(max_examples=100, **SETTINGS)
@given(dag=dags())
def test_random_dag_matches_plain_python(dag):
    _, outs = build_dag(dag)
    values = plain_values(dag)
    model = dag_model(dag)
    members = model.members([o for o, _ in dag.outputs])
    names = model.names(members)

    wf = LocalWorkflow(*outs, workflow_name=WF)
    # the graph holds exactly the model's members, in creation order, with its names
    assert wf.graph.names == [names[k] for k in members]
    result, ran, counts = run_counting(wf)
    assert result == expected_output(values, dag.outputs)
    assert ran == set(members)  # the whole graph runs, and nothing else
    assert all(c == 1 for c in counts.values())
    assert wf.last_run.ran == len(members)

    # a second run without storage computes everything again, the same way
    result2, ran2, _ = run_counting(wf)
    assert result2 == result and ran2 == ran


@settings(max_examples=60, **SETTINGS)
@given(dag=dags(), data=st.data())
def test_resume_after_removing_stored_results(dag, data):
    _, outs = build_dag(dag)
    values = plain_values(dag)
    expected = expected_output(values, dag.outputs)
    model = dag_model(dag)
    targets = [o for o, _ in dag.outputs]
    members = model.members(targets)
    names = model.names(members)
    key_of = {v: k for k, v in names.items()}

    with tempfile.TemporaryDirectory() as folder:
        storage = new_storage(folder)
        wf = LocalWorkflow(*outs, workflow_name=WF)
        wf.set_storage(storage)

        # 1. first run: everything runs once and is stored
        result, ran, _ = run_counting(wf)
        assert result == expected
        assert ran == set(members)
        assert set(storage.list_tasks(WF, "*")) == set(names.values())
        for k in members:
            assert storage.read_task(WF, names[k]) == values[k]

        # 2. remove a random subset, by name or by glob pattern, and run again
        removed = data.draw(st.sets(st.sampled_from(members)), label="removed")
        for k in sorted(removed):
            if data.draw(st.booleans(), label="by pattern"):
                assert storage.remove_task(WF, pattern=re.sub(r"([*?\[])", r"[\1]", names[k])) == [names[k]]
            else:
                storage.remove_task(WF, task_name=names[k])
        assert set(storage.list_tasks(WF)) == {names[k] for k in members if k not in removed}

        stored = set(members) - removed
        run_set, load_set = model.plan(members, stored, targets)
        assert run_set == removed  # function nodes: only what is missing runs
        plan = {e.name: e.action for e in wf.plan()}
        assert plan == expected_plan(names, members, stored, run_set, load_set), wf.plan()

        result, ran, counts = run_counting(wf)
        assert result == expected
        # nodes whose results are stored are never run again; removed ones run once
        assert ran == run_set, (sorted(ran), sorted(run_set))
        assert all(c == 1 for c in counts.values())
        assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.skipped) == (
            len(run_set),
            len(load_set),
            len(members) - len(run_set) - len(load_set),
        )
        assert set(storage.list_tasks(WF)) == set(names.values())
        for name in storage.list_tasks(WF):
            assert storage.read_task(WF, name) == values[key_of[name]]

        # 3. with everything stored, no node runs; only the outputs are loaded
        result, ran, _ = run_counting(wf)
        assert result == expected
        assert ran == set()
        assert wf.last_run.ran == 0 and wf.last_run.loaded == len(set(targets))

        # 4. a fresh workflow object over the same storage agrees
        _, outs2 = build_dag(dag)
        wf2 = LocalWorkflow(*outs2, workflow_name=WF)
        wf2.set_storage(new_storage(folder))
        result, ran, _ = run_counting(wf2)
        assert result == expected and ran == set()


@settings(max_examples=60, **SETTINGS)
@given(dag=dags(), data=st.data())
def test_damaged_results_are_recomputed(dag, data):
    _, outs = build_dag(dag)
    values = plain_values(dag)
    expected = expected_output(values, dag.outputs)
    model = dag_model(dag)
    targets = [o for o, _ in dag.outputs]
    members = model.members(targets)
    names = model.names(members)
    key_of = {v: k for k, v in names.items()}

    with tempfile.TemporaryDirectory() as folder:
        storage = new_storage(folder)
        wf = LocalWorkflow(*outs, workflow_name=WF)
        wf.set_storage(storage)
        assert wf.run() == expected

        removed = data.draw(st.sets(st.sampled_from(members)), label="removed")
        run_set, load_set = model.plan(members, set(members) - removed, targets)
        if not load_set:
            removed = set()
            run_set, load_set = model.plan(members, set(members), targets)
        for k in removed:
            storage.remove_task(WF, task_name=names[k])

        # damage some of the results this run will load, and maybe one that no node
        # needs, even once the damaged ones have run again
        damaged = data.draw(st.sets(st.sampled_from(sorted(load_set)), min_size=1, max_size=3), label="damaged")
        run_after, load_after = model.plan(members, set(members) - removed - damaged, targets)
        untouched = sorted(set(members) - run_after - load_after)
        unread = data.draw(st.sampled_from([None] + untouched), label="damaged, never read")
        for k in sorted(damaged) + ([unread] if unread is not None else []):
            damage(task_file(storage, names[k]), data.draw(st.sampled_from(DAMAGE), label=f"damage {k}"), data)

        CALLS.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = wf.run()
        assert result == expected
        messages = [str(w.message) for w in caught]
        assert all(w.category is ResultRecomputedWarning for w in caught), messages
        warned = {k for k in members if any(repr(names[k]) in m for m in messages)}
        # A damaged result no node needs may be left alone (it is never read) or be
        # recomputed up front (if the damage shows without reading the payload).
        recomputed = damaged | (warned & {unread})
        assert warned == recomputed and len(caught) == (1 if recomputed else 0), messages  # one per run
        # the damaged results run again once, as do the removed ones; nothing else runs
        assert {k for k, c in CALLS.items() if c} == removed | recomputed
        assert all(c == 1 for c in CALLS.values()), dict(CALLS)
        assert wf.last_run.recomputed == len(recomputed)
        assert wf.last_run.ran == len(removed | recomputed)

        # every stored task reads back, except a damaged one that was left alone
        assert set(storage.list_tasks(WF, "*")) == set(names.values())
        for name in storage.list_tasks(WF, "*"):
            if unread is not None and unread not in recomputed and name == names[unread]:
                with pytest.raises(CorruptedResultError):
                    storage.read_task(WF, name)
            else:
                assert storage.read_task(WF, name) == values[key_of[name]]

        # once the unread damaged result is removed, everything is consistent again
        if unread is not None and unread not in recomputed:
            storage.remove_task(WF, task_name=names[unread])
        result, ran, _ = run_counting(wf)
        assert result == expected
        assert ran == ({unread} - recomputed if unread is not None else set())
        for name in storage.list_tasks(WF, "*"):
            assert storage.read_task(WF, name) == values[key_of[name]]


# ---------------------------------------------------------------------------------------
# Stateful class nodes
# ---------------------------------------------------------------------------------------
@dataclass
class Op:
    k: int
    what: str  # "func", "new", "add", "snapshot"
    inst: int | None = None  # key of the constructor, for method calls
    arg: Any = None  # an argument tree
    const: int = 0
    name: str | None = None


@st.composite
def programs(draw) -> tuple[list[Op], list[tuple[int, tuple]], list[set[int]]]:
    """(operations, outputs, keys whose stored results are removed before each re-run)."""
    n = draw(st.integers(1, 25))
    ops: list[Op] = []
    values: list[tuple[int, bool]] = []  # (key, returns a tuple) of value nodes
    instances: list[int] = []
    for k in range(n):
        what = draw(st.sampled_from(["func", "new", "add", "add", "add", "snapshot"]))
        if what in ("add", "snapshot") and not instances:
            what = "new"

        def value_arg():
            if values and draw(st.booleans()):
                key, is_tuple = draw(st.sampled_from(values))
                path = draw(st.sampled_from([(), (0,), (1,)])) if is_tuple else ()
                return draw(wrapped(("ref", key, path)))
            return ("const", draw(st.integers(-100, 100)))

        name = f"op{k}" if draw(st.booleans()) else None
        if what == "func":
            ops.append(Op(k, what, arg=value_arg(), const=draw(st.integers(-100, 100)), name=name))
            values.append((k, False))
        elif what == "new":
            ops.append(Op(k, what, arg=value_arg(), name=name))
            instances.append(k)
        elif what == "add":
            ops.append(Op(k, what, inst=draw(st.sampled_from(instances)), arg=value_arg(), name=name))
            values.append((k, False))
        else:
            ops.append(Op(k, what, inst=draw(st.sampled_from(instances)), name=name))
            values.append((k, True))
    if not values:  # only constructors: call a method on the last one
        ops.append(Op(n, "snapshot", inst=instances[-1]))
        values.append((n, True))
    chosen = draw(st.lists(st.sampled_from(values), min_size=1, max_size=4))
    outputs = []
    for key, is_tuple in chosen:
        path = draw(st.sampled_from([(), (0,), (1,)])) if is_tuple else ()
        outputs.append((key, path))
    keys = st.sampled_from([op.k for op in ops])
    removals = [draw(st.sets(keys)), draw(st.sets(keys))]
    return ops, outputs, removals


def build_program(ops: list[Op]) -> dict[int, Any]:
    built: dict[int, Any] = {}
    for op in ops:
        if op.what == "func":
            node = int_node(op.k, op.const, build_arg(op.arg, built))
        elif op.what == "new":
            node = Acc(op.k, build_arg(op.arg, built))
        elif op.what == "add":
            node = built[op.inst].add(op.k, build_arg(op.arg, built))
        else:
            node = built[op.inst].snapshot(op.k)
        if op.name is not None:
            node.set_name(op.name)
        built[op.k] = node
    return built


def plain_program(ops: list[Op]) -> dict[int, Any]:
    """Run the program in plain Python: values of the function and method calls."""
    out: dict[int, Any] = {}
    state: dict[int, tuple] = {}
    for op in ops:
        if op.what == "func":
            out[op.k] = combine(op.k, op.const, (eval_arg(op.arg, out.__getitem__),), {})
        elif op.what == "new":
            state[op.k] = acc_start(eval_arg(op.arg, out.__getitem__))
        elif op.what == "add":
            state[op.inst] = acc_add(state[op.inst], op.k, eval_arg(op.arg, out.__getitem__))
            out[op.k] = state[op.inst][0]
        else:
            out[op.k] = state[op.inst]
    return out


def program_model(ops: list[Op]) -> Model:
    m = Model(data_parents={})
    last: dict[int, int] = {}
    for op in ops:
        refs = refs_of(op.arg, []) if op.arg is not None else []
        if op.what in ("add", "snapshot"):
            refs.append(op.inst)
            if op.inst in last:
                m.order_parent[op.k] = last[op.inst]
            m.instance[op.k] = op.inst
            last[op.inst] = op.k
            m.labels[op.k] = f"Acc.{op.what}"
        else:
            m.labels[op.k] = "int_node" if op.what == "func" else "Acc"
        m.data_parents[op.k] = sorted(set(refs))
        if op.name is not None:
            m.explicit[op.k] = op.name
    return m


# A method call whose argument is the result of an earlier (not the previous) call on
# the same instance: removing its result must replay every earlier call.
_ARGUMENT_FROM_AN_EARLIER_CALL = (
    [
        Op(0, "new", arg=("const", 0)),
        Op(1, "add", inst=0, arg=("const", 1)),
        Op(2, "add", inst=0, arg=("const", 10)),
        Op(3, "add", inst=0, arg=("ref", 1, ())),
    ],
    [(3, ())],
    [{3}, set()],
)


@settings(max_examples=50, **SETTINGS)
@example(program=_ARGUMENT_FROM_AN_EARLIER_CALL)
@given(program=programs())
def test_stateful_class_chains_resume_like_plain_python(program):
    ops, outputs, removals = program
    built = build_program(ops)
    values = plain_program(ops)
    expected = expected_output(values, outputs)
    model = program_model(ops)
    targets = [o for o, _ in outputs]
    members = model.members(targets)
    names = model.names(members)
    outs = [resolve_ref(built[o], path) for o, path in outputs]

    # without storage
    wf = LocalWorkflow(*outs, workflow_name=WF)
    assert wf.graph.names == [names[k] for k in members]
    result, ran, counts = run_counting(wf)
    assert result == expected
    assert ran == set(members) and all(c == 1 for c in counts.values())

    with tempfile.TemporaryDirectory() as folder:
        storage = new_storage(folder)
        wf = LocalWorkflow(*outs, workflow_name=WF)
        wf.set_storage(storage)
        result, ran, _ = run_counting(wf)
        assert result == expected
        assert set(storage.list_tasks(WF)) == set(names.values())
        for k in members:
            if k in values:  # constructors store the instance; method and function values compare
                assert storage.read_task(WF, names[k]) == values[k]

        for removal in removals:
            removed = removal & set(members)
            for k in removed:
                storage.remove_task(WF, task_name=names[k])
            stored = set(members) - removed
            run_set, load_set = model.plan(members, stored, targets)
            plan = wf.plan()

            result, ran, counts = run_counting(wf)
            assert result == expected
            # every stored value (including those just recomputed) is what plain Python computes
            assert set(storage.list_tasks(WF)) == set(names.values())
            for k in members:
                if k in values:
                    assert storage.read_task(WF, names[k]) == values[k], (names[k], plan)
            assert {e.name: e.action for e in plan} == expected_plan(names, members, stored, run_set, load_set), plan
            # only removed nodes, and the calls replayed to rebuild their instance, run
            assert ran == run_set, (sorted(ran), sorted(run_set))
            assert all(c == 1 for c in counts.values()), counts
            # a stored node that no running node needs never runs
            assert not (ran & (stored - run_set))

        result, ran, _ = run_counting(wf)
        assert result == expected and ran == set()


def resolve_ref(node, path):
    for key in path:
        node = node[key]
    return node


# ---------------------------------------------------------------------------------------
# A damaged length field in the preamble
# ---------------------------------------------------------------------------------------
_LENGTH_FIELD_SCRIPT = textwrap.dedent(
    """
    import os, resource, sys, time, warnings
    from functionfuse import workflow
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.errors import ResultRecomputedWarning
    from functionfuse.storage import storage_factory

    offset = int(sys.argv[2])
    calls = []

    @workflow
    def value(x):
        calls.append(x)
        return (x, "payload")

    storage = storage_factory({"kind": "file", "options": {"path": sys.argv[1]}})
    node = value(7).set_name("v")
    wf = LocalWorkflow(node, workflow_name="w")
    wf.set_storage(storage)
    assert wf.run() == (7, "payload")
    path = os.path.join(storage.path, "w", "v.ffr")
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))

    # a damaged 100-byte file must not need gigabytes of memory to be recognised
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert wf.run() == (7, "payload")
    assert [w.category for w in caught] == [ResultRecomputedWarning], caught
    assert calls == [7, 7], calls
    assert time.perf_counter() - t < 5
    print("ok")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="uses resource.setrlimit")
@pytest.mark.parametrize("offset", range(12, 16), ids=lambda o: f"header-length-byte-{o - 12}")
def test_damaged_header_length_field_is_recomputed_cheaply(tmp_path, offset):
    """Every bit of the preamble's header-length field may be damaged: the result is
    recomputed with a warning, without allocating memory for the bogus length.

    The check runs in a child process under a 1 GiB address-space limit.
    """
    script = tmp_path / "length_field.py"
    script.write_text(_LENGTH_FIELD_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "storage"), str(offset)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
