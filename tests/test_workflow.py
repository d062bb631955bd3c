"""The frontend: decorators, nodes, names, indexing, class nodes."""

from __future__ import annotations

import pickle

import pytest

from functionfuse import task, workflow
from functionfuse.errors import DuplicateNameError, GraphError, InvalidNameError, NodeCallError
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
        add(1, 2).set_name(3)


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


# -- calls are checked against the function's signature when the node is made ------------------
def _line_of(func) -> int:
    return func.__code__.co_firstlineno


@pytest.mark.parametrize(
    "call, problem",
    [
        (lambda: add(1), "missing a required argument: 'b'"),
        (lambda: add(1, 2, 3), "too many positional arguments"),
        (lambda: add(1, 2, c=3), "unexpected keyword argument 'c'"),
        (lambda: add(1, a=2), "multiple values for argument 'a'"),
        (lambda: add(add(1, 2)), "missing a required argument: 'b'"),  # a node is a value like any other
    ],
    ids=["missing", "too-many", "unknown-keyword", "twice", "node-argument"],
)
def test_a_call_that_does_not_fit_the_signature_fails_when_the_node_is_made(call, problem):
    with pytest.raises(NodeCallError) as info:
        call()
    message = str(info.value)
    assert problem in message
    assert f"{__name__}.add" in message and "add(a, b)" in message  # the user's function, by module.qualname
    assert f"{__file__}:{_line_of(add.__wrapped__)}" in message  # and where it is defined
    assert "__wrapped__" not in message
    assert f"called at {__file__}:" in message  # the line that made the node, also where only the message is logged
    assert isinstance(info.value, GraphError) and isinstance(info.value, TypeError)


def test_fitting_calls_make_nodes():
    @workflow
    def f(a, b=1, *rest, c, d=2, **more):
        return a

    @workflow
    def g(a, /, b):
        return a

    f(1, c=2), f(1, 2, 3, 4, c=5, e=6), f(a=add(1, 2), c=add(3, 4)[0])
    g(1, 2), g(1, b=2)
    with pytest.raises(NodeCallError, match="missing a required argument: 'c'"):
        f(1, 2)
    with pytest.raises(NodeCallError, match="positional"):
        g(a=1, b=2)


def test_functions_without_a_signature_are_not_checked():
    node = workflow(max)(1)  # a builtin without a signature (inspect finds none): the run will tell
    assert isinstance(node, Node)


def test_constructor_and_method_calls_are_checked_naming_the_class_node():
    with pytest.raises(NodeCallError) as info:
        Counter(1, 2)
    assert f"{__name__}.Counter" in str(info.value) and "too many positional arguments" in str(info.value)
    assert f"{__file__}:" in str(info.value)
    counter = Counter().set_name("counter")
    with pytest.raises(NodeCallError) as info:
        counter.bump(1, 2)
    message = str(info.value)
    assert "'counter'" in message and f"{__name__}.Counter.bump" in message
    assert "bump(by=1)" in message and "too many positional arguments" in message
    assert f"{__file__}:{_line_of(Counter.__wrapped__.bump)}" in message
    with pytest.raises(NodeCallError, match="unexpected keyword argument 'step'"):
        Counter().bump(step=2)
    assert isinstance(counter.bump(by=counter.bump()), MethodNode)  # fitting calls still chain


def test_static_and_class_methods_are_checked_without_self():
    @workflow
    class Box:
        def __init__(self, x):
            self.x = x

        @staticmethod
        def twice(v):
            return 2 * v

        @classmethod
        def make(cls, v):
            return v

    box = Box(1)
    box.twice(1), box.make(1)
    with pytest.raises(NodeCallError, match="too many positional arguments"):
        box.twice(1, 2)
    with pytest.raises(NodeCallError, match="missing a required argument: 'v'"):
        box.make()


def test_calls_inside_a_running_node_are_plain_calls():
    from functionfuse.workflow import executing_nodes

    with executing_nodes():
        with pytest.raises(TypeError) as info:
            add(1)
    assert not isinstance(info.value, NodeCallError)


_SIGNATURES = [
    "a, b", "a, b=1", "a, /, b", "a, /, b=1, *, c", "*args", "a, *args, c=1", "a, **kw", "a, /, **kw",
    "*, c", "a=1, *, c=2, **kw", "", "a, b, /", "a, *args, c, **kw",
]
_CALLS = [
    ((), {}), ((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((), {"a": 1}), ((1,), {"a": 1}), ((1,), {"b": 2}),
    ((), {"a": 1, "b": 2}), ((1,), {"c": 3}), ((1, 2), {"c": 3}), ((), {"c": 3}), ((1,), {"kw": 1}),
    ((1, 2), {"b": 2}), ((), {"b": 2, "c": 3}),
]


@pytest.mark.parametrize("params", _SIGNATURES, ids=lambda p: f"({p})")
def test_the_check_accepts_exactly_the_calls_python_accepts(params):
    namespace: dict = {}
    exec(f"def f({params}):\n    return None", namespace)
    plain = namespace["f"]
    decorated = workflow(plain)
    for args, kwargs in _CALLS:
        try:
            plain(*args, **kwargs)
        except TypeError:
            with pytest.raises(NodeCallError):
                decorated(*args, **kwargs)
        else:
            assert isinstance(decorated(*args, **kwargs), Node), (args, kwargs)
