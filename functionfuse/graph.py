"""The graph layer: the DAG a workflow runs, built from the nodes it is given.

Seed semantics: a workflow given some nodes runs every root that is an ancestor of
them, and everything reachable from those roots (plus whatever those descendants
need). Nodes are numbered in creation order, which is always a topological order
(a node's arguments exist before it is created) and the order the user wrote.

>>> from functionfuse import workflow
>>> @workflow
... def inc(x):
...     return x + 1
>>> a = inc(1).set_name("a")
>>> b = inc(a)
>>> g = Graph([b])
>>> g.names
['a', 'inc_0000']
>>> g.query("^a$")
[0]
"""

from __future__ import annotations

import contextlib
import gc
import operator
import re
import unicodedata
from typing import Any, Iterable, Iterator, Sequence

from .errors import DuplicateNameError, GraphError
from .workflow import MAX_NAME_BYTES, ClassNode, MethodNode, Node, NodeItem, validate_name

__all__ = ["Graph", "gc_paused"]


def _as_node(obj: Any) -> Node:
    if isinstance(obj, Node):
        return obj
    if isinstance(obj, NodeItem):
        return obj.node
    raise GraphError(
        f"{obj!r} is not a workflow node. Pass nodes returned by calling @workflow-decorated "
        "functions or classes."
    )


class Graph:
    """An immutable, indexed view of one DAG.

    Attributes (all indexed by position in :attr:`nodes`, a topological order):
    ``names``, ``parents`` (every dependency), ``data_parents`` (dependencies whose
    values are arguments), ``children``, ``outputs`` (positions of the given nodes),
    ``chains`` (for each class node, its method calls in order); ``node_index`` maps
    each node to its position (:meth:`index_of` also takes node items, and explains a
    node that is not in the graph).
    """

    def __init__(self, outputs: Sequence[Any]) -> None:
        with gc_paused():
            self._build(outputs)

    def _build(self, outputs: Sequence[Any]) -> None:
        if not outputs:
            raise GraphError("A workflow needs at least one node: pass the node(s) whose results you want.")
        self.output_refs: tuple = tuple(outputs)
        targets = [_as_node(o) for o in outputs]

        # 1. ancestors of the targets, and their roots; 2. everything reachable from
        # those roots, plus whatever it needs.
        roots = _roots_of(targets)
        nodes = sorted(_reach(roots), key=_seq_of)
        self.nodes: list[Node] = nodes
        index = {n: i for i, n in enumerate(nodes)}
        self.node_index: dict[Node, int] = index
        parents: list[tuple[int, ...]] = []
        data_parents: list[tuple[int, ...]] = []
        children: list[list[int]] = [[] for _ in nodes]
        for i, n in enumerate(nodes):
            np = n.parents
            if len(np) == 1:
                p = index[np[0]]
                ps: tuple[int, ...] = (p,)
                children[p].append(i)
            else:
                ps = tuple([index[p] for p in np])
                for p in ps:
                    children[p].append(i)
            parents.append(ps)
            data_parents.append(ps if n.data_parents is np else tuple([index[p] for p in n.data_parents]))
        self.parents = parents
        self.data_parents = data_parents
        self.children: list[list[int]] = children
        self.outputs: list[int] = [index[t] for t in targets]
        self._check_explicit_names()
        self._names: list[str] | None = None
        self._name_index: dict[str, int] | None = None
        self.chains: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            if type(n) is MethodNode:
                self.chains.setdefault(index[n.instance], []).append(i)

    # -- naming --------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The name of each node: the one set with set_name(), or ``<qualname>_<NNNN>``.

        Automatic names are assigned on first use (a run without storage needs none).
        """
        if self._names is None:
            self._names = self._assign_names()
        return self._names

    @property
    def name_index(self) -> dict[str, int]:
        if self._name_index is None:
            self._name_index = {name: i for i, name in enumerate(self.names)}
        return self._name_index

    def _check_explicit_names(self) -> set[str]:
        """Refuse two nodes with one name, or with names one file system would take for
        one file; return the folded keys (:func:`_fold`) of the explicit names."""
        explicit: dict[str, int] = {}
        folded: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            name = n._name
            if name is None:
                continue
            j = explicit.setdefault(name, i)
            if j != i:
                raise DuplicateNameError(
                    f"Two nodes of this workflow are named {name!r}: {self._describe(j)} and "
                    f"{self._describe(i)}. Give each node a unique name with set_name()."
                )
            j = folded.setdefault(_fold(name), i)
            if j != i:
                other = self.nodes[j]._name
                raise DuplicateNameError(
                    f"Two nodes of this workflow have names that differ only in case or Unicode normalisation: "
                    f"{_shown(other)} ({self._describe(j)}) and {_shown(name)} ({self._describe(i)}). File systems of macOS and "
                    "Windows ignore case (macOS also normalisation), so both results would be one file there. "
                    "Give one of them another name with set_name()."
                )
        return set(folded)

    def _assign_names(self) -> list[str]:
        names: list[str | None] = [n._name for n in self.nodes]
        taken = self._check_explicit_names()
        counters: dict[str, int] = {}
        labels: dict[int, str] = {}
        nodes = self.nodes
        for i, name in enumerate(names):
            if name is not None:
                continue
            node = nodes[i]
            label = labels.get(id(node.func))
            if label is None:
                label = labels[id(node.func)] = node.label
            k = counters.get(label, 0)
            while True:
                candidate = f"{label}_{k:04d}"
                k += 1
                key = _fold(candidate)
                if key not in taken:  # nor a name in another case (labels `Sum` and `sum`)
                    break
            taken.add(key)
            counters[label] = k
            if len(candidate.encode()) > MAX_NAME_BYTES:
                candidate = validate_name(candidate)  # raises with a clear message
            names[i] = candidate
        return names  # type: ignore[return-value]

    def _describe(self, i: int) -> str:
        n = self.nodes[i]
        return f"{type(n).__name__} of {n.label}"

    # -- lookups -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def index_of(self, node: Any) -> int:
        """Position of *node* (a Node or NodeItem) in this graph."""
        try:
            return self.node_index[_as_node(node)]
        except KeyError:
            raise GraphError(f"{node!r} is not part of this workflow's graph.") from None

    def objects_used(self, indices: Iterable[int]) -> set[int]:
        """The class nodes whose live object the nodes *indices* use: as a data parent,
        or through a method call's result (which may be the object itself, as
        scikit-learn's ``fit`` returns it)."""
        nodes = self.nodes
        objects: set[int] = set()
        for i in indices:
            for j in self.data_parents[i]:
                kind = type(nodes[j])
                if kind is ClassNode:
                    objects.add(j)
                elif kind is MethodNode:
                    objects.add(self.index_of(nodes[j].instance))  # type: ignore[attr-defined]
        return objects

    def query(self, pattern: str | None = None) -> list[int]:
        """Positions of the nodes whose names match the regular expression *pattern*.

        ``re.search`` semantics: anchor with ``^...$`` for an exact name. ``None``
        selects every node.
        """
        if pattern is None:
            return list(range(len(self.nodes)))
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise GraphError(f"Query pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return [i for i, name in enumerate(self.names) if rx.search(name)]

    def edges(self) -> Iterable[tuple[str, str]]:
        """``(parent name, child name)`` pairs in topological order."""
        names = self.names
        for i, ps in enumerate(self.parents):
            for p in ps:
                yield names[p], names[i]

    def is_stateful(self, i: int) -> bool:
        """True for class constructor and method nodes."""
        return type(self.nodes[i]) in _STATEFUL


def _fold(name: str) -> str:
    """The key under which two names are one file on macOS and Windows: equal after
    Unicode normalisation (NFC) and case folding.

    >>> _fold("Caf\u00e9") == _fold("cafe\u0301")
    True
    """
    return name.casefold() if name.isascii() else unicodedata.normalize("NFC", name).casefold()


def _shown(name: str | None) -> str:
    """*name* quoted, with its code points spelled out when it is not ASCII (a
    precomposed ``é`` and ``e`` + combining accent look the same)."""
    return repr(name) if name is None or name.isascii() else f"{name!r} = {ascii(name)}"


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small objects that hold no cycles.

    Collections triggered by the allocations would traverse the whole node graph
    again and again (a 100,000-node build takes about a third longer with them).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_seq_of = operator.attrgetter("_seq")
_STATEFUL = (ClassNode, MethodNode)


def _roots_of(targets: Iterable[Node]) -> list[Node]:
    """The roots among *targets* and their ancestors."""
    seen: set[Node] = set()
    roots = []
    stack = list(targets)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.parents:
            stack.extend(n.parents)
        else:
            roots.append(n)
    return roots


def _reach(roots: Iterable[Node]) -> set[Node]:
    """Descendants of *roots*, and every ancestor those descendants need."""
    seen: set[Node] = set()
    stack = list(roots)
    up: list[Node] = []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n._children)
        if len(n.parents) > 1:  # a single parent of a descendant is a descendant too
            up.extend(n.parents)
    while up:
        n = up.pop()
        if n not in seen:
            seen.add(n)
            up.extend(n.parents)
    return seen
