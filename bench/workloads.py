"""Workload builders shared by the benchmark cases.

Every builder only *builds* (lazily, for functionfuse and dask); the cases in
:mod:`cases` decide what is timed. NumPy and dask are imported inside the
functions that need them, so a case pays only for the imports it uses.
"""

from __future__ import annotations

from typing import Any, Callable

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow


# -- trivial nodes -----------------------------------------------------------------------
@workflow
def inc(x: int) -> int:
    return x + 1


#: The undecorated function: what LocalWorkflow ends up calling for every node. The
#: plain-loop and dask baselines call this very function object.
plain_inc: Callable[[int], int] = inc.__wrapped__


def ff_chain(n: int) -> Any:
    """A lazy chain ``inc(inc(...inc(0)))`` of *n* functionfuse nodes; returns the last node."""
    x = inc(0)
    for _ in range(n - 1):
        x = inc(x)
    return x


def ff_workflow(n: int, name: str = "bench") -> LocalWorkflow:
    """Create an *n*-node chain and its LocalWorkflow (builds the Graph)."""
    return LocalWorkflow(ff_chain(n), workflow_name=name)


def plain_chain(n: int) -> int:
    """The same computation as :func:`ff_chain`, as a plain Python loop."""
    f = plain_inc
    x = f(0)
    for _ in range(n - 1):
        x = f(x)
    return x


def dask_chain(n: int) -> Any:
    """The same chain with ``dask.delayed``: returns the last Delayed object."""
    import dask

    d = dask.delayed(plain_inc)
    x = d(0)
    for _ in range(n - 1):
        x = d(x)
    return x


# -- large arrays --------------------------------------------------------------------------
@workflow
def make_array(n: int) -> Any:
    """A new array of *n* float64, every page written (``np.zeros`` would leave it unmapped)."""
    import numpy as np

    return np.full(n, 0.0)


@workflow
def step(a: Any) -> Any:
    """A NEW array: ``a + 1.0``."""
    return a + 1.0


def ff_array_chain(n_elems: int, n_nodes: int) -> Any:
    """``make_array`` followed by ``n_nodes - 1`` ``step`` nodes; returns the last node."""
    x = make_array(n_elems)
    for _ in range(n_nodes - 1):
        x = step(x)
    return x


def loop_array_chain(n_elems: int, n_nodes: int) -> Any:
    """The same computation as a plain loop that drops each array when the next exists."""
    x = make_array.__wrapped__(n_elems)
    for _ in range(n_nodes - 1):
        x = step.__wrapped__(x)
    return x


def keepall_array_chain(n_elems: int, n_nodes: int) -> list[Any]:
    """The same computation, keeping every intermediate alive in a list (the contrast)."""
    arrays = [make_array.__wrapped__(n_elems)]
    for _ in range(n_nodes - 1):
        arrays.append(step.__wrapped__(arrays[-1]))
    return arrays


# -- independent nodes that release the GIL (LocalWorkflow(parallel=N)) ----------------------
@workflow
def make_data(n: int, seed: int) -> Any:
    """*n* random float64 (one array every node below sorts)."""
    import numpy as np

    return np.random.default_rng(seed).random(n)


@workflow
def sort_work(data: Any, k: int, sorts: int) -> float:
    """``np.sort(data)`` *sorts* times (NumPy sorts with the GIL released); a float."""
    import numpy as np

    total = 0.0
    for _ in range(sorts):
        total += float(np.sort(data)[k])
    return total


@workflow
def add_all(*xs: float) -> float:
    return sum(xs)


def ff_fan(n_elems: int, n_nodes: int, sorts: int) -> Any:
    """``make_data``, *n_nodes* independent ``sort_work`` nodes on it, and their sum."""
    data = make_data(n_elems, 0)
    return add_all(*[sort_work(data, k, sorts) for k in range(n_nodes)])


def dask_fan(n_elems: int, n_nodes: int, sorts: int) -> Any:
    """The same graph with ``dask.delayed`` (the same functions)."""
    import dask

    data = dask.delayed(make_data.__wrapped__)(n_elems, 0)
    work = dask.delayed(sort_work.__wrapped__)
    return dask.delayed(add_all.__wrapped__)(*[work(data, k, sorts) for k in range(n_nodes)])


@workflow
def py_work(k: int, n: int) -> int:
    """A pure Python loop: holds the GIL all along."""
    s = 0
    for i in range(n):
        s += i * k % 7
    return s


def ff_py_fan(n_nodes: int, n: int) -> Any:
    """*n_nodes* independent ``py_work`` nodes and their sum."""
    return add_all(*[py_work(k, n) for k in range(n_nodes)])

