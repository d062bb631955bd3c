"""The frontend: ``@workflow`` (alias ``@task``), nodes and ``set_name``.

Calling a decorated function does not run it: it returns a :class:`Node`, an
immutable description of the call (function, arguments, name). Nodes passed as
arguments (directly, by keyword, or inside lists, tuples and dicts) become the
edges of the DAG. A backend runs the DAG later.

>>> @workflow
... def add(a, b):
...     return a + b
>>> one = add(0, 1).set_name("one")
>>> two = add(one, one).set_name("two")
>>> two.parents == (one,)
True

Decorated classes make stateful nodes: the constructor call is a node, and each
method call on it is a node chained after the previous call on the same instance.

A call is checked against the function's signature when the node is made, so a
missing argument fails at the line that makes the node, not after upstream work:

>>> add(1)
Traceback (most recent call last):
...
functionfuse.errors.NodeCallError: Cannot make a node of ...add(a, b) ...: missing a required argument: 'b'. ...

A node holds no execution state (results, counters): each run of a backend keeps its
own, so the same DAG can be run by several workflows, twice, or concurrently.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
import weakref
from typing import Any, Callable, Iterator, TypeVar, overload

from ._callcheck import FRONTEND_FILES, CallCheck, method_check, qualname_of
from .errors import GraphError, InvalidNameError

FRONTEND_FILES.add(__file__)  # nodes are made here: errors name the caller of this module

__all__ = [
    "workflow",
    "task",
    "Node",
    "NodeItem",
    "ClassNode",
    "MethodNode",
    "NODE_TYPES",
    "Decorated",
    "WorkflowFunction",
    "WorkflowClass",
    "validate_name",
    "name_problem",
    "MAX_NAME_BYTES",
    "scan_nodes",
    "set_found_name",
]

#: Longest node, task or workflow name in UTF-8 bytes (file systems allow 255;
#: storage adds suffixes).
MAX_NAME_BYTES = 200

_seq = itertools.count()
_NO_KWARGS: dict = {}
_state = threading.local()
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")
#: the automatic name of each unnamed node as the workflow whose find_nodes() last
#: returned it names it (see Node.get_name); a node holds no other naming state
_found_names: "weakref.WeakKeyDictionary[Node, str]" = weakref.WeakKeyDictionary()


def set_found_name(node: "Node", name: str) -> None:
    """Record *name*, the automatic name a workflow's ``find_nodes()`` gives the unnamed
    *node*, as what :meth:`Node.get_name` returns (until another workflow finds it)."""
    _found_names[node] = name


def validate_name(name: object, what: str = "Node name") -> str:
    """Return *name* if it is safe as a file or object name, else raise.

    >>> validate_name("model_v2")
    'model_v2'
    >>> validate_name("a/b")
    Traceback (most recent call last):
    ...
    functionfuse.errors.InvalidNameError: Node name 'a/b' is not a valid storage key: names may not contain '/'. Use set_name() with letters, digits, '.', '_' or '-'.

    A name is kept exactly as written: it is not normalised, so ``"caf\\u00e9"`` (NFC)
    and ``"cafe\\u0301"`` (NFD) are both valid. Two nodes of one workflow whose names
    differ only in case or normalisation are refused when the DAG is checked
    (:class:`~functionfuse.graph.Graph`), since macOS and Windows file systems would
    store them in one file.
    """
    hint = "Use set_name() with letters, digits, '.', '_' or '-'." if what == "Node name" else (
        "Use letters, digits, '.', '_' or '-'."
    )
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} {name!r} must be a str, not {type(name).__name__}. {hint}")
    problem = name_problem(name)
    if problem:
        raise InvalidNameError(f"{what} {name!r} is not a valid storage key: {problem}. {hint}")
    return name


def name_problem(name: str) -> str | None:
    """Why *name* is not a valid node, task or workflow name, or None if it is.

    >>> name_problem("bad name ")
    'names may not start or end with whitespace'
    >>> name_problem("model") is None
    True
    """
    if not name or not name.strip():
        return "names may not be empty or blank"
    if m := _UNSAFE_CHARS.search(name):
        return f"names may not contain {m.group()!r}"
    if ".." in name:
        return "names may not contain '..'"
    if name.startswith("."):
        return "names may not start with '.'"
    if name != name.strip():
        return "names may not start or end with whitespace"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate (e.g. a file name that was not UTF-8)
        return f"names may not contain the lone surrogate {name[exc.start]!r} (not encodable as UTF-8)"
    if size > MAX_NAME_BYTES:
        return f"names may be at most {MAX_NAME_BYTES} bytes long"
    return None


def _executing() -> bool:
    return getattr(_state, "depth", 0) > 0


class executing_nodes:
    """Context manager set by backends while node functions run.

    Inside it, calling a decorated function runs it directly instead of building a
    node, so decorated functions can call each other.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        _state.depth = getattr(_state, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _state.depth -= 1


def scan_nodes(value: Any, deps: list) -> bool:
    """Append the nodes found in *value* (a node, a node item, or lists, tuples and
    dicts holding them) to *deps*; return True if it holds any."""
    t = type(value)
    if t in NODE_TYPES:
        deps.append(value)
        return True
    if t is NodeItem:
        deps.append(value.node)
        return True
    found = False
    if t is list or t is tuple:
        for v in value:
            if scan_nodes(v, deps):
                found = True
    elif t is dict:
        for v in value.values():
            if scan_nodes(v, deps):
                found = True
    return found


def _dedupe(nodes: list) -> tuple:
    if len(nodes) < 2:
        return tuple(nodes)
    seen: dict[int, Node] = {}
    for n in nodes:
        seen.setdefault(id(n), n)
    return tuple(seen.values())


@functools.lru_cache(maxsize=4096)
def _safe_label(qualname: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", qualname.replace("<locals>.", "")).strip("._") or "node"


class Node:
    """One call of a decorated function: the function, its arguments and a name.

    Backends read ``func``, ``args``, ``kwargs``, ``parents`` and ``name``; nothing
    on a node changes when it runs.
    """

    __slots__ = ("_seq", "_name", "func", "args", "kwargs", "parents", "data_parents", "_children", "__weakref__")

    kind = "function"

    def __init__(
        self, func: Callable[..., Any], args: tuple, kwargs: dict, *, extra_data: tuple = (), order_parents: tuple = ()
    ) -> None:
        self._seq = next(_seq)
        self._name: str | None = None
        self.func = func
        self.args = args
        self.kwargs = kwargs if kwargs else _NO_KWARGS
        deps: list = list(extra_data)
        for a in args:
            t = type(a)
            if t in NODE_TYPES:
                deps.append(a)
            elif t is NodeItem:
                deps.append(a.node)
            elif t is list or t is tuple or t is dict:
                scan_nodes(a, deps)
        if kwargs:
            for v in kwargs.values():
                scan_nodes(v, deps)
        #: nodes whose results are arguments of this call
        self.data_parents: tuple = _dedupe(deps)
        #: every node this one must run after (data parents and method-chain order)
        self.parents: tuple = _dedupe(list(self.data_parents) + list(order_parents)) if order_parents else self.data_parents
        self._children: list = []
        for p in self.parents:
            p._children.append(self)

    # -- naming -----------------------------------------------------------------
    def set_name(self, name: str) -> "Node":
        """Name this node (the key of its stored result) and return it."""
        self._name = validate_name(name)
        return self

    @property
    def name(self) -> str | None:
        """The name given with :meth:`set_name`, or None (the graph then assigns one)."""
        return self._name

    def get_name(self) -> str | None:
        """The node's name (the original functionfuse's accessor): the one given with
        :meth:`set_name`; for an unnamed node returned by a workflow's ``find_nodes()``,
        the automatic name that workflow gives it; otherwise None (automatic names
        belong to a workflow's graph: ``workflow.graph.names``)."""
        if self._name is not None:
            return self._name
        return _found_names.get(self)

    @property
    def label(self) -> str:
        """The base of this node's automatic name: the function's qualified name."""
        return _safe_label(getattr(self.func, "__ff_qualname__", None) or qualname_of(self.func))

    @property
    def children(self) -> tuple:
        """Nodes created so far that depend on this one."""
        return tuple(self._children)

    # -- indexing -----------------------------------------------------------------
    def __getitem__(self, key: Any) -> "NodeItem":
        return NodeItem(self, (key,))

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(
            f"{self!r} is a lazy node and cannot be iterated or unpacked. "
            "Index it instead: x, y = node[0], node[1]."
        )

    def __repr__(self) -> str:
        name = self._name if self._name is not None else f"<unnamed {self.label}>"
        return f"<{type(self).__name__} {name}>"


class ClassNode(Node):
    """The constructor call of a decorated class: a stateful node.

    Calling a method on it returns a :class:`MethodNode` that runs after every earlier
    method call on the same instance.
    """

    __slots__ = ("_last",)

    kind = "class"

    def __init__(self, cls: type, args: tuple, kwargs: dict) -> None:
        super().__init__(cls, args, kwargs)
        self._last: Node = self

    def __getattr__(self, attr: str) -> Callable[..., "MethodNode"]:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        cls = self.func
        if not callable(getattr(cls, attr, None)):
            raise AttributeError(
                f"{cls.__name__!r} has no method {attr!r}: a class node {self!r} only records calls "
                "of methods defined on its class."
            )

        check = method_check(cls, attr)

        def call(*args: Any, **kwargs: Any) -> MethodNode:
            if not (check.min_pos <= len(args) <= check.max_pos and not kwargs or check.fits(args, kwargs)):
                check.bind(args, kwargs, self)
            node = MethodNode(self, attr, args, kwargs)
            self._last = node
            return node

        call.__name__ = attr
        return call


class MethodNode(Node):
    """A method call on a :class:`ClassNode`, chained after the previous call."""

    __slots__ = ("instance", "method", "previous")

    kind = "method"

    def __init__(self, instance: ClassNode, method: str, args: tuple, kwargs: dict) -> None:
        self.instance = instance
        self.method = method
        previous = instance._last
        #: the call this one is chained after (the constructor for the first call)
        self.previous: Node = previous
        order = () if previous is instance else (previous,)
        # the instance is a data dependency (the method needs the live object); the
        # previous call is an ordering dependency only
        super().__init__(
            _MethodCall(instance.func, method), args, kwargs, extra_data=(instance,), order_parents=order  # type: ignore[arg-type]
        )


class _MethodCall:
    """Describes ``instance.method`` for labels; backends call ``getattr`` on the live object."""

    __slots__ = ("cls", "method", "__ff_qualname__")

    def __init__(self, cls: Any, method: str) -> None:
        self.cls = cls
        self.method = method
        self.__ff_qualname__ = f"{getattr(cls, '__ff_qualname__', qualname_of(cls))}.{method}"

    def __repr__(self) -> str:
        return f"<method {self.__ff_qualname__}>"


class NodeItem:
    """``node[key]``: a reference to an item of a node's result.

    It is not a node of its own: the consumer receives ``result[key]``.
    """

    __slots__ = ("node", "path")

    def __init__(self, node: Node, path: tuple) -> None:
        self.node = node
        self.path = path

    def __getitem__(self, key: Any) -> "NodeItem":
        return NodeItem(self.node, self.path + (key,))

    def __iter__(self) -> Iterator[Any]:
        raise TypeError(f"{self!r} is lazy and cannot be iterated or unpacked; index it instead.")

    def set_name(self, name: str) -> "NodeItem":
        raise GraphError(
            f"{self!r} is an item of a node's result and has no name of its own: "
            f"name the node before indexing it, e.g. node.set_name({name!r})[...]"
        )

    def resolve(self, value: Any) -> Any:
        for key in self.path:
            value = value[key]
        return value

    def __repr__(self) -> str:
        return f"{self.node!r}{''.join(f'[{k!r}]' for k in self.path)}"


#: The types of graph nodes: ``type(x) in NODE_TYPES`` is how to tell a node from an
#: argument value. A :class:`NodeItem` (an item of a node's result) is not one.
NODE_TYPES: frozenset[type] = frozenset({Node, ClassNode, MethodNode})


class Decorated:
    """Common part of decorated functions and classes (``isinstance(f, Decorated)``
    tells a decorated object from a plain one)."""

    __wrapped__: Any
    __ff_qualname__: str
    #: how calls are checked against the signature (made on the first call)
    _ff_check: CallCheck | None = None

    def __init__(self, target: Any) -> None:
        qualname = target.__qualname__
        functools.update_wrapper(self, target)  # type: ignore[arg-type]
        self.__ff_qualname__ = qualname
        # Let pickle find the original object through the decorated one:
        # ``module.<qualname>.__wrapped__`` is ``target`` itself.
        try:
            target.__qualname__ = f"{qualname}.__wrapped__"
            target.__ff_qualname__ = qualname
        except (AttributeError, TypeError):  # builtins, C types
            pass

    def __repr__(self) -> str:
        return f"<functionfuse {self.__ff_qualname__}>"

    def __reduce__(self) -> tuple:
        # a decorated object pickles as a reference to its module-level name
        return _load_decorated, (self.__wrapped__.__module__, self.__ff_qualname__)


def _load_decorated(module: str, qualname: str) -> Any:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class WorkflowFunction(Decorated):
    """A function decorated with ``@workflow``: calling it returns a :class:`Node`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(_state, "depth", 0):
            return self.__wrapped__(*args, **kwargs)
        check = self._ff_check
        if check is None:
            check = self._ff_check = CallCheck.of(self.__wrapped__, self.__ff_qualname__)
        if not (check.min_pos <= len(args) <= check.max_pos and not kwargs or check.fits(args, kwargs)):
            check.bind(args, kwargs)
        return Node(self.__wrapped__, args, kwargs)


class WorkflowClass(Decorated):
    """A class decorated with ``@workflow``: calling it returns a :class:`ClassNode`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(_state, "depth", 0):
            return self.__wrapped__(*args, **kwargs)
        check = self._ff_check
        if check is None:
            check = self._ff_check = CallCheck.of(self.__wrapped__, self.__ff_qualname__)
        if not (check.min_pos <= len(args) <= check.max_pos and not kwargs or check.fits(args, kwargs)):
            check.bind(args, kwargs)
        return ClassNode(self.__wrapped__, args, kwargs)

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self.__wrapped__)


F = TypeVar("F")


@overload
def workflow(target: type) -> Any: ...
@overload
def workflow(target: Callable[..., Any]) -> Any: ...
def workflow(target: Any) -> Any:
    """Make a function or class build DAG nodes when called.

    The decorated function's calls return :class:`Node` objects; a decorated class's
    constructor call returns a :class:`ClassNode` whose method calls are chained nodes.
    The undecorated object stays available as ``__wrapped__``.
    """
    if isinstance(target, Decorated):
        return target
    if isinstance(target, type):
        return WorkflowClass(target)
    if callable(target):
        return WorkflowFunction(target)
    raise TypeError(f"@workflow decorates functions and classes, not {type(target).__name__} {target!r}")


#: Alias of :func:`workflow`.
task = workflow
