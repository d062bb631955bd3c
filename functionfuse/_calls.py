"""Node calls: each node compiled into ``call(results) -> value``.

The results of a run are a list indexed like the graph's nodes; a node's arguments
name other nodes (or items of their results, or containers holding them), and
:func:`build_call` resolves them from that list, with fast paths for the common shapes.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

from ._records import CONTAINERS
from .workflow import NODE_TYPES, MethodNode, Node, NodeItem

__all__ = ["build_call", "call_with_result"]


def _getter(value: Any, index_of: Callable[[Any], int]) -> Callable[[Sequence[Any]], Any] | None:
    """A function of the results list giving *value* resolved, or None for a constant."""
    t = type(value)
    if t in NODE_TYPES:
        return operator.itemgetter(index_of(value))
    if t is NodeItem:
        j = index_of(value.node)
        path = value.path

        def item(R: Sequence[Any]) -> Any:
            v = R[j]
            for k in path:
                v = v[k]
            return v

        return item
    if t is list or t is tuple:
        parts = [(_getter(v, index_of), v) for v in value]
        if all(g is None for g, _ in parts):
            return None

        def seq(R: Sequence[Any]) -> Any:
            out = [v if g is None else g(R) for g, v in parts]
            return out if t is list else tuple(out)

        return seq
    if t is dict:
        items = [(k, _getter(v, index_of), v) for k, v in value.items()]
        if all(g is None for _, g, _ in items):
            return None

        def mapping(R: Sequence[Any]) -> Any:
            return {k: v if g is None else g(R) for k, g, v in items}

        return mapping
    return None




def call_with_result(f: Callable[[Any], Any], j: int) -> Callable[[Sequence[Any]], Any]:
    return lambda R: f(R[j])


def build_call(node: Node, index_of: Callable[[Any], int]) -> Callable[[Sequence[Any]], Any]:
    """Compile *node* into ``call(results) -> value``; fast paths for the common shapes."""
    args, kwargs = node.args, node.kwargs
    if type(node) is MethodNode:
        k = index_of(node.instance)
        method = node.method
    else:
        f = node.func
        if not kwargs:  # fast path: constants and direct node arguments only
            if len(args) == 1:
                a0 = args[0]
                t0 = type(a0)
                if t0 in NODE_TYPES:
                    j = index_of(a0)
                    return lambda R: f(R[j])
                if t0 not in CONTAINERS:
                    return lambda R: f(a0)
            elif not args:
                return lambda R: f()
    arg_getters = [_getter(a, index_of) for a in args]
    kw_getters = {key: _getter(v, index_of) for key, v in kwargs.items()}
    simple = all(g is None or isinstance(g, operator.itemgetter) for g in arg_getters)
    if type(node) is not MethodNode and simple and not kwargs:
        slots = [(pos, g) for pos, g in enumerate(arg_getters) if g is not None]
        if not slots:
            return lambda R: f(*args)
        if len(args) == 1:
            g0 = slots[0][1]
            return lambda R: f(g0(R))
        template = list(args)

        def call_simple(R: Sequence[Any]) -> Any:
            a = template.copy()
            for pos, g in slots:
                a[pos] = g(R)
            return f(*a)

        return call_simple

    def resolve(R: Sequence[Any]) -> tuple[list, dict]:
        a = [v if g is None else g(R) for g, v in zip(arg_getters, args)]
        kw = {key: v if kw_getters[key] is None else kw_getters[key](R) for key, v in kwargs.items()}  # type: ignore[misc]
        return a, kw

    if type(node) is MethodNode:

        def call_method(R: Sequence[Any]) -> Any:
            a, kw = resolve(R)
            return getattr(R[k], method)(*a, **kw)

        return call_method

    def call(R: Sequence[Any]) -> Any:
        a, kw = resolve(R)
        return f(*a, **kw)

    return call

