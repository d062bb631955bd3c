"""Fingerprint records: what each node's result is computed from, without loading any.

A record is ``{"v", "node", "code", "args", "inputs"}``: the node digest, the code
digests of the function (and the user code it refers to), a digest per argument, and
the node digest of each parent. :func:`fingerprint_records` computes them for a whole
graph, parents first; :mod:`functionfuse.baseworkflow` compares them with the stored
ones to plan a run (``docs/fingerprints.md``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import xxhash

from .fingerprint import FINGERPRINT_VERSION, Fingerprinter
from .graph import Graph, gc_paused
from .workflow import NODE_TYPES, MethodNode, Node, NodeItem, scan_nodes

__all__ = ["fingerprint_records", "fp_join", "digests_of", "Records", "RecordRef", "CONTAINERS", "PLAIN"]

#: the node classes, containers that may hold nodes, and constants hashed once per value
CONTAINERS = frozenset({list, tuple, dict, NodeItem})
PLAIN = frozenset({type(None), bool, int, str, bytes})  # not float: -0.0 == 0.0


class Records(Sequence[dict]):
    """The fingerprint records of a graph's nodes, by position: the node digests at once
    (:meth:`digest`, :attr:`digests`), each record's dict when it is first asked for.

    A resumed run needs the digest of every node (to compare with what is stored) but
    the whole record only of the nodes that run (saved with their result) or whose
    stored record differs (to explain why): the record of a chain's link is kept as
    what it is built from until then. A record, once built, is the same object on
    every access. Equal to a list of the same records.
    """

    __slots__ = ("digests", "_items", "_graph", "_functions")

    def __init__(self, digests: list[str], items: list, graph: Graph, functions: Mapping[int, tuple]) -> None:
        #: the "node" digest of each record
        self.digests = digests
        # a record, or (a str) the argument digest of a one-argument call with at most one
        # parent, whose record is built from the graph and *functions* when first read
        # (a string, not a tuple per node: nothing for the cyclic GC to visit)
        self._items = items
        self._graph = graph
        self._functions = functions  # id(function) -> (code, ..., positional parameter names, ...)

    def __len__(self) -> int:
        return len(self.digests)

    def digest(self, i: int) -> str:
        """The node digest of record *i* (``self[i]["node"]``), without building it."""
        return self.digests[i]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        item = self._items[i]
        if type(item) is dict:
            return item
        g, digests = self._graph, self.digests
        code, _, pnames, _ = self._functions[id(g.nodes[i].func)]
        ps = g.parents[i]
        inputs = {g.names[ps[0]]: digests[ps[0]]} if ps else {}
        args = {pnames[0]: item}
        record = {"v": FINGERPRINT_VERSION, "node": digests[i], "code": code, "args": args, "inputs": inputs}
        self._items[i] = record
        return record

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self.digests)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Records, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return list, (list(self),)  # pickled as the list of records, without the graph

    def __repr__(self) -> str:
        return f"Records({list(self)!r})"

    def by_name(self, names: Sequence[str]) -> "_ByName":
        """The records by node name (*names*: the graph's), each a :class:`RecordRef`
        (its digest without building the record)."""
        return _ByName(self, {name: i for i, name in enumerate(names)})


class RecordRef(Mapping[str, Any]):
    """Record *i* of *records* (a read-only mapping): its ``"node"`` digest at once, the
    rest when asked for (the record is built then)."""

    __slots__ = ("records", "i")

    def __init__(self, records: Records, i: int) -> None:
        self.records, self.i = records, i

    def get(self, key: str, default: Any = None) -> Any:
        if key == "node":
            return self.records.digests[self.i]
        return self.records[self.i].get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.records[self.i][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.records[self.i])

    def __len__(self) -> int:
        return len(self.records[self.i])

    def __bool__(self) -> bool:
        return True  # a record is never empty: no need to build it to know

    def __eq__(self, other: object) -> bool:
        return self.records[self.i] == (other.records[other.i] if isinstance(other, RecordRef) else other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return dict, (self.records[self.i],)  # copied or pickled as the record itself

    def __repr__(self) -> str:
        return repr(self.records[self.i])


class _ByName(Mapping[str, RecordRef]):
    """The records of a :class:`Records` by node name (see :meth:`Records.by_name`)."""

    __slots__ = ("_records", "_index")

    def __init__(self, records: Records, index: dict[str, int]) -> None:
        self._records, self._index = records, index

    def get(self, name: str, default: Any = None) -> Any:
        i = self._index.get(name)
        return default if i is None else RecordRef(self._records, i)

    def __getitem__(self, name: str) -> RecordRef:
        return RecordRef(self._records, self._index[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def digests_of(records: Sequence[dict]) -> Sequence[str]:
    """The node digest of each of *records* (a :class:`Records` or a list of dicts)."""
    if isinstance(records, Records):
        return records.digests
    return [r["node"] for r in records]


def fingerprint_records(graph: Graph) -> Records:
    """Fingerprint record of every node, parents first, without loading any result.

    This runs before every stored run, so the common cases take short paths: a node
    argument contributes its fingerprint directly, plain constants are hashed once per
    distinct value, and the code part of each function is joined once. The record of
    a one-argument node with at most one parent (a chain's link) is built when first
    asked for (:class:`Records`).
    """
    names, parents = graph.names, graph.parents
    index = graph.node_index
    records: list = []  # a record, or the argument digest Records builds it with
    digests: list[str] = []  # the "node" digest of each record, by index
    code_parts: dict[int, str] = {}  # id(code dict) -> its part of the digest input
    constants: dict[tuple[type, Any], str] = {}  # (type, value) -> digest of a plain constant

    def node_digest(v: Any) -> str:
        if type(v) is NodeItem:
            return fp_join("item", digests[index[v.node]], fp.value(list(v.path)))
        return "N" + digests[index[v]]

    def arg_digest(value: Any) -> str:
        t = type(value)
        if t in NODE_TYPES:
            return "@N" + digests[index[value]]
        if t in PLAIN:
            key = (t, value)
            digest = constants.get(key)
            if digest is None:
                digest = constants[key] = fp.value(value)
            return digest
        return _arg_digest(fp, value)

    fp = Fingerprinter(node_digest)
    head = f"v{FINGERPRINT_VERSION}"
    #: id(func) -> (code, the digest input up to the arguments, positional parameter names
    #: or None, the same with the first name), for the short path of plain function nodes
    #: (most nodes of a large graph share few functions); it hashes exactly what the
    #: general path below hashes
    functions: dict[int, tuple[dict[str, str], str, tuple[str, ...] | None, str]] = {}
    node_types, plain, join, hexdigest = NODE_TYPES, PLAIN, "\x1f".join, xxhash.xxh3_128_hexdigest
    add_digest, add_record = digests.append, records.append
    last_func: Any = None  # the function of the previous plain node, and its entry above
    known: tuple[dict[str, str], str, tuple[str, ...] | None, str] = ({}, "", None, "")
    with gc_paused():
        for i, node in enumerate(graph.nodes):
            if type(node) is Node and not node.kwargs:
                func = node.func
                if func is not last_func:
                    found = functions.get(id(func))
                    if found is None:
                        code = fp.code(func)
                        prefix = join([head, Node.kind, join(f"{k}={v}" for k, v in code.items()), "|"])
                        pnames = fp.positional_names(func)
                        first = f"{prefix}\x1f{pnames[0]}=" if pnames else ""
                        found = functions[id(func)] = (code, prefix, pnames, first)
                    known, last_func = found, func
                code, prefix, pnames, first = known
                nargs, ps = node.args, parents[i]
                if pnames and len(nargs) == 1 and len(ps) < 2:
                    # one argument, at most one parent (a chain's links): the same bytes
                    # as the loop below, formatted at once; the record is built when asked for
                    a = nargs[0]
                    t = type(a)
                    if t in node_types:
                        d = "@N" + digests[index[a]]
                    elif t in plain:
                        key = (t, a)
                        known_d = constants.get(key)
                        d = constants[key] = fp.value(a) if known_d is None else known_d
                    else:
                        d = _arg_digest(fp, a)
                    if ps:
                        p = ps[0]
                        add_digest(hexdigest(f"{first}{d}\x1f|\x1f{names[p]}={digests[p]}".encode()))
                    else:
                        add_digest(hexdigest(f"{first}{d}\x1f|".encode()))
                    add_record(d)
                    continue
                if pnames is not None and len(nargs) <= len(pnames):
                    args = {}
                    parts = [prefix]
                    for pname, a in zip(pnames, node.args):
                        t = type(a)
                        if t in node_types:
                            d = "@N" + digests[index[a]]
                        elif t in plain:
                            key = (t, a)
                            known_d = constants.get(key)
                            d = constants[key] = fp.value(a) if known_d is None else known_d
                        else:
                            d = _arg_digest(fp, a)
                        args[pname] = d
                        parts.append(f"{pname}={d}")
                    parts.append("|")
                    inputs = {}
                    for p in parents[i]:
                        pname, d = names[p], digests[p]
                        inputs[pname] = d
                        parts.append(f"{pname}={d}")
                    digest = hexdigest(join(parts).encode())
                    digests.append(digest)
                    records.append({"v": FINGERPRINT_VERSION, "node": digest, "code": code, "args": args, "inputs": inputs})
                    continue
            if type(node) is MethodNode:
                cls = node.instance.func
                code = fp.code(cls)
                target = getattr(cls, node.method, None)
                args = _bind(fp, target, node.args, node.kwargs, skip_first=True, digest=arg_digest)
                args = {"method": fp.value(node.method), **args}
            else:
                code = fp.code(node.func)
                args = _bind(fp, node.func, node.args, node.kwargs, skip_first=False, digest=arg_digest)
            code_part = code_parts.get(id(code))
            if code_part is None:
                code_part = code_parts[id(code)] = "\x1f".join(f"{k}={v}" for k, v in code.items())
            inputs = {names[p]: digests[p] for p in parents[i]}
            parts = [head, node.kind, code_part, "|"]
            parts += [f"{k}={v}" for k, v in args.items()]
            parts.append("|")
            parts += [f"{k}={v}" for k, v in inputs.items()]
            digest = fp_join(*parts)
            digests.append(digest)
            records.append({"v": FINGERPRINT_VERSION, "node": digest, "code": code, "args": args, "inputs": inputs})
    return Records(digests, records, graph, functions)


def fp_join(*parts: str) -> str:
    return xxhash.xxh3_128_hexdigest("\x1f".join(parts).encode())


def _bind(
    fp: Fingerprinter, func: Any, args: tuple, kwargs: dict, *, skip_first: bool, digest: Callable[[Any], str]
) -> dict[str, str]:
    """Digest (by *digest*) of each argument, keyed by parameter name where the signature allows."""
    simple = fp.positional_names(func)
    if simple is not None:
        names = simple[1:] if skip_first else simple
        if len(args) <= len(names) and not (kwargs and set(kwargs) & set(names[: len(args)])):
            out = {name: digest(a) for name, a in zip(names, args)}
            for k, v in kwargs.items():
                out[k] = digest(v)
            return out
    sig = fp.signature(func) if func is not None else None
    if sig is not None:
        try:
            bound = sig.bind(None, *args, **kwargs) if skip_first else sig.bind(*args, **kwargs)
        except TypeError:
            bound = None
        if bound is not None:
            pairs = list(bound.arguments.items())[1 if skip_first else 0 :]
            return {k: digest(v) for k, v in pairs}
    out = {f"#{j}": digest(a) for j, a in enumerate(args)}
    out.update({k: digest(v) for k, v in kwargs.items()})
    return out


def _arg_digest(fp: Fingerprinter, value: Any) -> str:
    """An argument's digest; "@"-prefixed when it holds nodes (it changes with its inputs)."""
    t = type(value)
    if t in NODE_TYPES:
        return "@" + fp.value(value)
    if t in CONTAINERS:
        digest = fp.value(value)
        return "@" + digest if scan_nodes(value, []) else digest
    return fp.value(value)

