"""Queries: the nodes of a workflow whose names match a pattern, and the options set on
them (plugins, cache policies, persistence; backends add their own setters)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .planner import check_policy
from .workflow import Node

if TYPE_CHECKING:
    from .baseworkflow import BaseWorkflow

__all__ = ["Query", "targets"]


class Query:
    """The nodes of a workflow whose names match a pattern; sets options on them.

    A query that matches no node can be looked at (``len(query) == 0``, its repr), but
    every method that sets an option on its nodes (``set_plugin``, ``set_cache``, and
    each backend's own, e.g. ``set_remote_args``, ``set_task_args``) raises
    :class:`~functionfuse.errors.ConfigurationError` naming the pattern: a typo in a
    pattern would otherwise leave the nodes without the resources, retries or policy
    meant for them. Where matching nothing is expected, test ``len(query)`` first.
    """

    def __init__(self, nodes: list[int], workflow: "BaseWorkflow", pattern: str | None = None) -> None:
        self.indices = nodes
        self.workflow = workflow
        #: the regular expression the nodes were selected by (None: every node, or not known)
        self.pattern = pattern

    @property
    def nodes(self) -> list[Node]:
        return [self.workflow.graph.nodes[i] for i in self.indices]

    @property
    def names(self) -> list[str]:
        return [self.workflow.graph.names[i] for i in self.indices]

    def set_plugin(self, plugin: Any) -> "Query":
        """Apply *plugin* (see :mod:`functionfuse.backends.plugins`) to these nodes."""
        indices = targets(self, "set_plugin")
        if not (hasattr(plugin, "local_initialize") and hasattr(plugin, "remote_initialize")):
            raise ConfigurationError(
                f"{plugin!r} is not a plugin: it needs local_initialize() and remote_initialize() "
                "(subclass functionfuse.backends.plugins.Plugin)."
            )
        for i in indices:
            self.workflow._plugins[i] = plugin
        return self

    def set_cache(self, policy: str) -> "Query":
        """Cache policy of these nodes: ``"name"``, ``"fingerprint"`` or ``"off"``
        (see :meth:`BaseWorkflow.set_cache`)."""
        indices = targets(self, "set_cache")
        check_policy(policy)
        for i in indices:
            self.workflow._cache[i] = policy
        return self

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        """``<Query '^model' of workflow 'ops': 2 nodes ['model', 'model_v2']>``: the
        pattern, how many nodes match and (the first ten of) their names."""
        if self.pattern is not None:
            what = repr(self.pattern)
        else:
            what = "(every node)" if len(self.indices) == len(self.workflow.graph) else "(given nodes)"
        head = f"<{type(self).__name__} {what} of workflow {self.workflow.workflow_name!r}"
        n = len(self.indices)
        if not n:
            return f"{head}: no node matches>"
        names = [self.workflow.graph.names[i] for i in self.indices[:_NAMES_SHOWN]]
        more = f", ... {n - _NAMES_SHOWN} more" if n > _NAMES_SHOWN else ""
        return f"{head}: {n} node{'' if n == 1 else 's'} [{', '.join(map(repr, names))}{more}]>"

    def set_persist(self, persist: bool) -> "Query":
        """Store the results of these nodes (``True``, the default) or never (``False``).

        For values storage cannot or should not hold: a lock, a database connection, a
        large intermediate that is cheap to compute. A node that is never stored runs
        when a node that runs needs its value (its own inputs are loaded or computed
        as usual), and on every run if it is an output or nothing depends on it; the
        rest of the workflow is stored and resumed as usual. ``plan()`` shows it as
        ``not stored``. Like Prefect's ``persist_result=False`` and Kedro's
        ``MemoryDataset``.
        """
        indices = targets(self, "set_persist")
        if not isinstance(persist, bool):
            raise ConfigurationError(f"set_persist() takes True or False, not {persist!r}.")
        wf = self.workflow
        if not persist:
            if not wf.supports_unstored_nodes:
                raise ConfigurationError(
                    f"{type(wf).__name__} cannot leave node {self.names[0]!r} unstored: set_persist(False) needs "
                    "its value passed in memory, and its steps pass every value through storage. Return a "
                    "value storage can hold (or register a serializer for it), or use another backend."
                )
            wf._unstored.update(indices)
        else:
            wf._unstored.difference_update(indices)
        return self


    def set_group(self, name: str | None) -> "Query":
        """Run these nodes as one execution unit named *name*: one Ray task, one Prefect
        task, one KFP step, in topological order (see :mod:`functionfuse.units`); each
        result is still stored as soon as its node is computed. ``None``: leave the group.
        Nodes of a group need the same options (resources, image, retries, plugin), and
        a group must not need itself through a node outside it (ConfigurationError).
        """
        indices = targets(self, "set_group")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError(f"set_group() takes a non-empty group name (or None to leave groups), not {name!r}.")
        groups = self.workflow._groups
        for i in indices:
            if name is None:
                groups.pop(i, None)
            else:
                groups[i] = name
        return self

    def set_fusion(self, enabled: bool) -> "Query":
        """``False``: these nodes never share a task with other nodes (each runs as its
        own task, e.g. a heavy node that should get a pod or a worker of its own);
        ``True``: they may again (the default). A group set with :meth:`set_group` is
        what its nodes asked for explicitly: it still applies to them."""
        indices = targets(self, "set_fusion")
        if not isinstance(enabled, bool):
            raise ConfigurationError(f"set_fusion() takes True or False, not {enabled!r}.")
        if enabled:
            self.workflow._solo.difference_update(indices)
        else:
            self.workflow._solo.update(indices)
        return self


#: how many node names a query's repr and its errors show
_NAMES_SHOWN = 10


def _close_names(pattern: str | None, names: list[str]) -> list[str]:
    """Node names close to what *pattern* spells (its regular-expression syntax
    dropped), for a query that matches nothing: ``'^modle$'`` -> ``['model']``."""
    if not pattern or len(names) > 20_000:  # difflib is quadratic-ish: skip on huge graphs
        return []
    import difflib

    spelled = re.sub(r"\\[AZbBdDsSwW]|[\\^$.*+?()\[\]{}|]", "", pattern)
    return difflib.get_close_matches(spelled, names, n=3, cutoff=0.6) if spelled else []


def targets(query: Query, method: str) -> list[int]:
    """The positions of *query*'s nodes, which *method* (a setter of a query: the core's
    or a backend's, e.g. ``set_remote_args``) sets an option on. A function of the
    module, not a method: queries are what users hold, and this is for their setters.

    :raises ConfigurationError: the query matches no node (names the pattern, a few
        node names and the closest ones).
    """
    if query.indices:
        return query.indices
    names = query.workflow.graph.names
    what = "This query" if query.pattern is None else f"Query {query.pattern!r}"
    shown = ", ".join(map(repr, names[:_NAMES_SHOWN])) + (", ..." if len(names) > _NAMES_SHOWN else "")
    count = f"{len(names)} node{'' if len(names) == 1 else 's'}"
    close = _close_names(query.pattern, names)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
    raise ConfigurationError(
        f"{what} of workflow {query.workflow.workflow_name!r} matches no node, so {method}() would set "
        f"nothing. Its {count} are named {shown}{hint} A pattern is a regular expression searched "
        "in each node name (re.search; anchor it with ^...$); where matching nothing is expected, "
        "test len(query) first."
    )
