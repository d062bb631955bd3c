"""Fingerprint records: what each node's result is computed from, without loading any.

A record is ``{"v", "node", "code", "args", "inputs"}``: the node digest, the code
digests of the function (and the user code it refers to), a digest per argument, and
the node digest of each parent. :func:`fingerprint_records` computes them for a whole
graph, parents first; :mod:`functionfuse.baseworkflow` compares them with the stored
ones to plan a run (``docs/fingerprints.md``).
"""

from __future__ import annotations

from typing import Any, Callable

import xxhash

from .fingerprint import FINGERPRINT_VERSION, Fingerprinter
from .graph import Graph, gc_paused
from .workflow import NODE_TYPES, MethodNode, Node, NodeItem, scan_nodes

__all__ = ["fingerprint_records", "fp_join", "CONTAINERS", "PLAIN"]

#: the node classes, containers that may hold nodes, and constants hashed once per value
CONTAINERS = frozenset({list, tuple, dict, NodeItem})
PLAIN = frozenset({type(None), bool, int, str, bytes})  # not float: -0.0 == 0.0


def fingerprint_records(graph: Graph) -> list[dict]:
    """Fingerprint record of every node, parents first, without loading any result.

    This runs before every stored run, so the common cases take short paths: a node
    argument contributes its fingerprint directly, plain constants are hashed once per
    distinct value, and the code part of each function is joined once.
    """
    names, parents = graph.names, graph.parents
    index = graph.node_index
    records: list[dict] = []
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
    #: or None), for the short path of plain function nodes (most nodes of a large graph
    #: share few functions); it hashes exactly what the general path below hashes
    functions: dict[int, tuple[dict[str, str], str, tuple[str, ...] | None]] = {}
    node_types, plain, join, hexdigest = NODE_TYPES, PLAIN, "\x1f".join, xxhash.xxh3_128_hexdigest
    version, add_digest, add_record = FINGERPRINT_VERSION, digests.append, records.append
    last_func: Any = None  # the function of the previous plain node, and its entry above
    known: tuple[dict[str, str], str, tuple[str, ...] | None] = ({}, "", None)
    with gc_paused():
        for i, node in enumerate(graph.nodes):
            if type(node) is Node and not node.kwargs:
                func = node.func
                if func is not last_func:
                    found = functions.get(id(func))
                    if found is None:
                        code = fp.code(func)
                        prefix = join([head, Node.kind, join(f"{k}={v}" for k, v in code.items()), "|"])
                        found = functions[id(func)] = (code, prefix, fp.positional_names(func))
                    known, last_func = found, func
                code, prefix, pnames = known
                nargs, ps = node.args, parents[i]
                if pnames and len(nargs) == 1 and len(ps) < 2:
                    # one argument, at most one parent (a chain's links): the same bytes
                    # as the loop below, formatted at once, and the dicts as literals
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
                    pname = pnames[0]
                    if ps:
                        p = ps[0]
                        pn, pd = names[p], digests[p]
                        digest = hexdigest(f"{prefix}\x1f{pname}={d}\x1f|\x1f{pn}={pd}".encode())
                        add_digest(digest)
                        add_record({"v": version, "node": digest, "code": code, "args": {pname: d}, "inputs": {pn: pd}})
                    else:
                        digest = hexdigest(f"{prefix}\x1f{pname}={d}\x1f|".encode())
                        add_digest(digest)
                        add_record({"v": version, "node": digest, "code": code, "args": {pname: d}, "inputs": {}})
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
    return records


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

