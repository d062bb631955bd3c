"""Inspecting a script without running its workflows.

``functionfuse plan`` and ``functionfuse graph`` import the user's script to find its
DAG. Most scripts end in ``workflow.run()``; while :func:`inspecting_runs` is active,
``run()`` of every backend records the workflow and where it was called, and returns
``None`` without running anything::

    with inspecting_runs() as calls:
        import_the_script()
    for call in calls:
        print(call.workflow.workflow_name, call.filename, call.lineno)

:class:`~functionfuse.baseworkflow.BaseWorkflow` wraps the ``run`` method of each of
its subclasses with :func:`inspectable` when the subclass is defined.
"""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

__all__ = ["RunCall", "inspecting_runs", "inspectable"]


@dataclass(frozen=True)
class RunCall:
    """A ``run()`` that was not run: the workflow it was called on, and where."""

    workflow: Any
    filename: str
    lineno: int


_calls: ContextVar[list[RunCall] | None] = ContextVar("functionfuse_inspected_runs", default=None)

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def inspecting_runs() -> Iterator[list[RunCall]]:
    """While active, ``run()`` of any workflow is recorded in the list yielded, not run."""
    calls: list[RunCall] = []
    token = _calls.set(calls)
    try:
        yield calls
    finally:
        _calls.reset(token)


def inspectable(run: F) -> F:
    """*run*, except that under :func:`inspecting_runs` it records its call and returns None."""
    if getattr(run, "__inspectable__", False):
        return run

    @functools.wraps(run)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls = _calls.get()
        if calls is None:
            return run(self, *args, **kwargs)
        caller = sys._getframe(1)
        calls.append(RunCall(self, caller.f_code.co_filename, caller.f_lineno))
        return None

    wrapper.__inspectable__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
