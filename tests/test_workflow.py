"""The frontend: decorators, nodes, names, indexing, class nodes."""

from __future__ import annotations

import pickle

import pytest

from functionfuse import task, workflow
from functionfuse.errors import DuplicateNameError, GraphError, InvalidNameError
from functionfuse.graph import Graph
from functionfuse.workflow import ClassNode, MethodNode, Node, NodeItem, validate_name


@workflow
def add(a, b):
    return a + b


@task
class Counter:
    def __init__(self, start=0):
        self.value = start

    def bump(self, by=1):
        self.value += by
        return self.value


def test_calls_build_nodes_lazily():
    ran = []

    @workflow
    def f(x):
        ran.append(x)
        return x

    node = f(1)
    assert isinstance(node, Node) and ran == []
    assert node.func(5) == 5  # the node holds the undecorated function


def test_set_name_returns_the_node():
    node = add(1, 2)
    assert node.set_name("three") is node
    assert node.name == "three"


def test_dependencies_in_positions_keywords_and_containers():
    a, b, c, d = add(0, 1), add(0, 2), add(0, 3), add(0, 4)
    node = add([a, (b, {"k": c})], b=d[0])
    assert node.parents == (a, b, c, d)
    assert node.data_parents == node.parents


def test_indexing_makes_items_not_nodes():
    a = add(1, 2)
    item = a[0]["key"]
    assert isinstance(item, NodeItem) and item.node is a and item.path == (0, "key")
    assert item.resolve([{"key": 5}]) == 5


def test_nodes_cannot_be_unpacked():
    with pytest.raises(TypeError, match=r"node\[0\], node\[1\]"):
        x, y = add(1, 2)


def test_items_have_no_names():
    with pytest.raises(GraphError, match="name the node before indexing"):
        add(1, 2)[0].set_name("x")


@pytest.mark.parametrize(
    "name, problem",
    [("a/b", "'/'"), ("..", "'..'"), ("", "empty"), ("x\x00", "'\\\\x00'"), ("a" * 201, "at most 200"), (" a", "whitespace"), (".a", "start with '.'")],
    ids=["slash", "dotdot", "empty", "nul", "long", "space", "dot"],
)
def test_unsafe_names_are_refused_at_set_name(name, problem):
    with pytest.raises(InvalidNameError, match=problem) as info:
        add(1, 2).set_name(name)
    assert "set_name()" in str(info.value)


def test_non_string_names_are_refused():
    with pytest.raises(InvalidNameError, match="must be a str"):
        add(1, 2).set_name(3)  # type: ignore[arg-type]


def test_class_nodes_chain_method_calls():
    counter = Counter(start=1).set_name("counter")
    assert isinstance(counter, ClassNode)
    first = counter.bump(2)
    second = counter.bump()
    assert isinstance(first, MethodNode) and first.previous is counter
    assert second.previous is first
    assert counter in second.data_parents and first in second.parents and first not in second.data_parents


def test_previous_call_is_the_chain_order_not_an_argument():
    counter = Counter()
    first = counter.bump(1)
    second = counter.bump(10)
    third = counter.bump(first)  # an earlier call's result as argument
    assert third.previous is second
    assert first in third.data_parents


def test_unknown_method_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no method 'jump'"):
        Counter().jump()


def test_decorated_objects_stay_usable_and_picklable():
    assert add.__wrapped__(1, 2) == 3
    assert add.__name__ == "add"
    obj = Counter.__wrapped__(5)
    assert isinstance(obj, Counter)
    clone = pickle.loads(pickle.dumps(obj))
    assert clone.value == 5 and type(clone) is Counter.__wrapped__
    assert pickle.loads(pickle.dumps(add)) is add
    assert pickle.loads(pickle.dumps(add.__wrapped__)) is add.__wrapped__


def test_decorating_twice_is_harmless():
    assert workflow(add) is add


def test_decorating_something_else_is_an_error():
    with pytest.raises(TypeError, match="decorates functions and classes"):
        workflow(3)


def test_a_lone_surrogate_is_refused_naming_the_name():
    with pytest.raises(InvalidNameError, match=r"'a\\udc80b'.*surrogate") as info:
        add(1, 2).set_name("a\udc80b")
    assert "set_name()" in str(info.value)
    with pytest.raises(InvalidNameError, match="surrogate"):
        validate_name("\ud800", "Workflow name")


@pytest.mark.parametrize(
    "first, second",
    [("model", "Model"), ("caf\u00e9", "cafe\u0301"), ("strasse", "Stra\u00dfe")],
    ids=["case", "nfc-nfd", "casefold"],
)
def test_names_equal_under_case_folding_or_normalisation_are_refused(first, second):
    a = add(1, 2).set_name(first)
    b = add(a, 1).set_name(second)
    with pytest.raises(DuplicateNameError) as info:
        Graph([b])
    message = str(info.value)
    assert repr(first) in message and repr(second) in message
    assert "case" in message and "normalisation" in message and "set_name()" in message
    assert all(ascii(n) in message for n in (first, second) if not n.isascii())  # é and e + accent look alike


def test_automatic_names_avoid_explicit_names_that_differ_only_in_case():
    a = add(1, 2).set_name("ADD_0000")
    b = add(a, 1)
    assert Graph([b]).names == ["ADD_0000", "add_0001"]


def test_names_are_kept_as_written_nfc_or_not():
    # accepted and stored under exactly these code points: only clashes are refused
    nfd = add(1, 2).set_name("cafe\u0301")
    assert nfd.name == "cafe\u0301"
    assert Graph([add(nfd, 1).set_name("caf\u00e9s")]).names == ["cafe\u0301", "caf\u00e9s"]
