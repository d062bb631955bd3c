"""The graph: membership (seed semantics), order, names, queries."""

from __future__ import annotations

import pytest

from functionfuse import workflow
from functionfuse.errors import DuplicateNameError, GraphError
from functionfuse.graph import Graph


@workflow
def f(*args):
    return sum(args)


@workflow
class Box:
    def __init__(self):
        self.items = []

    def put(self, x):
        self.items.append(x)
        return len(self.items)


def test_roots_and_everything_reachable_from_them():
    root = f(1).set_name("root")
    other_root = f(2).set_name("other_root")
    wanted = f(root).set_name("wanted")
    sibling = f(root, other_root).set_name("sibling")  # needs other_root
    f(other_root).set_name("unrelated")  # reachable only from other_root
    g = Graph([wanted])
    assert g.names == ["root", "other_root", "wanted", "sibling"]
    assert g.outputs == [2]
    assert g.nodes[3] is sibling


def test_order_is_topological_and_follows_program_order():
    a = f(0)
    b = f(a)
    c = f(0)
    d = f(b, c)
    g = Graph([d])
    assert g.nodes == [a, b, c, d]
    for i, ps in enumerate(g.parents):
        assert all(p < i for p in ps)


def test_auto_names_are_deterministic_and_avoid_explicit_ones():
    def build():
        a = f(1)
        b = f(a).set_name("f_0001")
        return f(a, b)

    first = Graph([build()]).names
    second = Graph([build()]).names
    assert first == second == ["f_0000", "f_0001", "f_0002"]


def test_auto_names_of_local_functions_are_safe_keys():
    @workflow
    def inner(x):
        return x

    g = Graph([inner(1)])
    assert g.names == ["test_auto_names_of_local_functions_are_safe_keys.inner_0000"]


def test_class_node_names_and_chains():
    box = Box()
    box.put(1)
    last = box.put(2)
    g = Graph([last])
    assert g.names == ["Box_0000", "Box.put_0000", "Box.put_0001"]
    assert g.chains == {0: [1, 2]}
    assert g.parents[2] == (0, 1)


def test_duplicate_names_are_refused_naming_both():
    a = f(1).set_name("same")
    b = f(a).set_name("same")
    with pytest.raises(DuplicateNameError, match="'same'.*set_name"):
        Graph([b])


def test_query_is_a_regex_search():
    a = f(1).set_name("model")
    b = f(a).set_name("model_eval")
    g = Graph([b])
    assert g.query("^model$") == [0]
    assert g.query("model") == [0, 1]
    assert g.query(None) == [0, 1]
    with pytest.raises(GraphError, match="not a valid regular expression"):
        g.query("(")


def test_non_nodes_are_refused():
    with pytest.raises(GraphError, match="not a workflow node"):
        Graph([42])
    with pytest.raises(GraphError, match="at least one node"):
        Graph([])


def test_a_deep_chain_does_not_recurse():
    x = f(0)
    for _ in range(50_000):
        x = f(x)
    assert len(Graph([x])) == 50_001
