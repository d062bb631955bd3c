"""The core every backend shares: graph, storage, per-node options, resume plan.

A backend gets from :class:`BaseWorkflow`:

* ``graph``: the DAG (nodes in topological order, names, parents, outputs);
* ``plan()``: for each node, whether it runs, is loaded from storage, or is skipped;
* ``node_call(i)``: a function that runs node *i* given a sequence of results;
* per-node options set through queries (plugins here; backends add their own).

The resume plan, computed from one listing of the storage, in reverse topological
order:

* a node **runs** if no result is stored under its name;
* a stored class constructor or method call is **replayed** (run, not saved again)
  if a later running method call on the same instance needs it: the instance's state
  between calls is not stored, so it is rebuilt from the constructor;
* a stored node is **loaded** if it is an output or a running node needs its value;
* every other stored node is **skipped**.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any, Callable, Iterator, Sequence

from ._calls import build_call, call_with_result
from ._inspection import inspectable
from ._records import fingerprint_records, fp_join
from .plugins import prepare
from .errors import (
    ConfigurationError,
    GraphError,
    NodeExecutionError,
    ResultRecomputedWarning,
    SerializationError,
    StaleResultWarning,
    StorageError,
)
from .fingerprint import explain
from .graph import Graph, gc_paused
from .report import Progress, RunReport, progress_enabled
from .workflow import MethodNode, Node, NodeItem, executing_nodes, validate_name
from .workflow import NODE_TYPES, ClassNode, WorkflowClass, WorkflowFunction, set_found_name

__all__ = ["BaseWorkflow", "Query", "Plan", "NodePlan", "RUN", "REPLAY", "LOAD", "SKIP", "RUNS", "UNVERIFIED"]

log = logging.getLogger("functionfuse")

RUN, REPLAY, LOAD, SKIP = "run", "replay", "load", "skip"
#: actions that execute the node (a replayed node is stored already: it is not saved again)
RUNS = frozenset({RUN, REPLAY})
_REUSED = frozenset({LOAD, SKIP})


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


#: what storage holds for a node, as a plan reports it; UNVERIFIED: stored without a
#: fingerprint (by an older version, or by ``storage.save``), so nothing is known to
#: have changed, and nothing is known to be current
CURRENT, STALE, MISSING, CORRUPTED, NO_STORAGE = "current", "stale", "missing", "corrupted", "no storage"
#: a node whose results are never stored (Query.set_persist(False))
NOT_STORED = "not stored"
UNVERIFIED = "unverified"
NO_FINGERPRINT = "stored without a fingerprint"
#: the input digest recorded for a parent whose stored result had no fingerprint
UNRECORDED = "unrecorded"
CACHE_POLICIES = ("name", "fingerprint", "off")


@dataclass(frozen=True)
class NodePlan:
    name: str
    action: str
    reason: str
    state: str = NO_STORAGE
    #: why storage holds what *state* says, without what the run does ("" when current)
    detail: str = ""


class Plan(Sequence[NodePlan]):
    """What a run will do with each node, in topological order."""

    def __init__(self, entries: list[NodePlan]) -> None:
        self._entries = entries

    def __getitem__(self, i: Any) -> Any:
        return self._entries[i]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[NodePlan]:
        return iter(self._entries)

    def action(self, name: str) -> str:
        for e in self._entries:
            if e.name == name:
                return e.action
        raise KeyError(name)

    def count(self, action: str) -> int:  # type: ignore[override]
        return sum(1 for e in self._entries if e.action == action)

    def __repr__(self) -> str:
        width = max((len(e.name) for e in self._entries), default=4)
        lines = [f"{'node':<{width}}  {'action':<6}  {'stored':<9}  reason"]
        lines += [f"{e.name:<{width}}  {e.action:<6}  {e.state:<9}  {e.reason}" for e in self._entries]
        return "\n".join(lines)


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

    def _targets(self, method: str) -> list[int]:
        """The positions of this query's nodes, which *method* sets an option on.

        :raises ConfigurationError: the query matches no node (names the pattern, a few
            node names and the closest ones).
        """
        if self.indices:
            return self.indices
        names = self.workflow.graph.names
        what = "This query" if self.pattern is None else f"Query {self.pattern!r}"
        shown = ", ".join(map(repr, names[:_NAMES_SHOWN])) + (", ..." if len(names) > _NAMES_SHOWN else "")
        count = f"{len(names)} node{'' if len(names) == 1 else 's'}"
        close = _close_names(self.pattern, names)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
        raise ConfigurationError(
            f"{what} of workflow {self.workflow.workflow_name!r} matches no node, so {method}() would set "
            f"nothing. Its {count} are named {shown}{hint} A pattern is a regular expression searched "
            "in each node name (re.search; anchor it with ^...$); where matching nothing is expected, "
            "test len(query) first."
        )

    def set_plugin(self, plugin: Any) -> "Query":
        """Apply *plugin* (see :mod:`functionfuse.backends.plugins`) to these nodes."""
        indices = self._targets("set_plugin")
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
        indices = self._targets("set_cache")
        _check_policy(policy)
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
        indices = self._targets("set_persist")
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


class BaseWorkflow:
    """Common base of the backends: see the module documentation."""

    query_class: type[Query] = Query
    #: whether nodes can be left unstored (Query.set_persist(False)): their values must
    #: then pass from node to node in memory
    supports_unstored_nodes = True
    #: what the progress line calls the nodes being worked on
    progress_running_label = "running"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:  # `functionfuse plan` imports scripts that call run(): see _inspection
            cls.run = inspectable(cls.__dict__["run"])  # type: ignore[attr-defined]

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        self.workflow_name = validate_name(workflow_name, "Workflow name")
        self.graph = Graph(nodes)
        self.storage: Any = None
        self._plugins: dict[int, Any] = {}
        self._calls: list[Callable[[Sequence[Any]], Any]] | None = None
        self._all_run_frees: list[tuple[int, ...]] | None = None
        self.cache_policy = "fingerprint"
        self._cache: dict[int, str] = {}
        #: positions of the nodes whose results are never stored (Query.set_persist)
        self._unstored: set[int] = set()
        self._records: list[dict] | None = None
        #: the records results of this run are saved with (see _run_records)
        self._effective: list[dict] | None = None
        self._warned_stale: set[tuple[str, str]] = set()  # (node, fingerprint) warned about
        #: (node, why) of the stored results found unreadable in the run under way (None:
        #: no run; warned about at once), reported in one warning when the run ends
        self._unreadable: list[tuple[str, str]] | None = None
        self._progress: bool | None = None
        #: the report of the last run (see :class:`functionfuse.report.RunReport`)
        self.last_run: RunReport = RunReport(self.workflow_name, type(self).__name__)

    # -- configuration ---------------------------------------------------------------
    def set_storage(self, object_storage: Any) -> None:
        """Set storage for the workflow (``None`` to run without storage)."""
        if object_storage is not None:
            missing = [m for m in ("save", "read_task", "stored_tasks") if not hasattr(object_storage, m)]
            if missing:
                raise ConfigurationError(
                    f"{object_storage!r} is not a storage object (it lacks {', '.join(missing)}). "
                    "Create one with functionfuse.storage.storage_factory(...)."
                )
        self.storage = object_storage

    def query(self, pattern: str | None = None) -> Query:
        """Query nodes of the graph by regexp pattern (``re.search`` in each node name;
        ``None``: every node). A query matching no node can be inspected, but its
        setters raise :class:`~functionfuse.errors.ConfigurationError` (see :class:`Query`)."""
        return self.query_class(self.graph.query(pattern), self, pattern)

    def __repr__(self) -> str:
        """``<LocalWorkflow 'ops': 3 nodes, storage FileStorage('storage'), cache 'fingerprint'>``:
        what the workflow holds (per-node cache policies set by queries are counted)."""
        n = len(self.graph)
        storage = "no storage" if self.storage is None else f"storage {self.storage!r}"
        overrides: dict[str, int] = {}
        for policy in self._cache.values():
            overrides[policy] = overrides.get(policy, 0) + 1
        per_node = ", ".join(f"{p!r} for {k} node{'' if k == 1 else 's'}" for p, k in sorted(overrides.items()))
        cache = f"cache {self.cache_policy!r}" + (f" ({per_node})" if per_node else "")
        details = "".join(f", {d}" for d in self._repr_details())
        return f"<{type(self).__name__} {self.workflow_name!r}: {n} node{'' if n == 1 else 's'}, {storage}, {cache}{details}>"

    def _repr_details(self) -> list[str]:
        """What a backend adds to the workflow's repr (never credentials)."""
        return []

    def set_progress(self, enabled: bool | None) -> None:
        """Show a progress line while running: True, False, or None (default: only when
        standard error is a terminal and ``FUNCTIONFUSE_PROGRESS`` is not 0)."""
        self._progress = enabled

    # -- run bookkeeping (every backend) ------------------------------------------------
    def start_run(self) -> tuple[RunReport, Progress]:
        """A fresh report (``last_run``) and progress display for a run starting now."""
        report = RunReport(self.workflow_name, type(self).__name__, nodes=len(self.graph))
        self.last_run = report
        self._unreadable = []
        progress = Progress(report, enabled=progress_enabled(self._progress, sys.stderr))
        progress.running_label = self.progress_running_label
        progress.start()
        return report, progress

    def finish_run(self, report: RunReport, progress: Progress, started: float, error: BaseException | None = None) -> None:
        """Close the report (how the run ended: *error* is what it raised, None if it
        finished; a backend sets ``report.failed`` to the node it stopped at), close the
        progress display with the run's summary under it (logged instead when there is
        no display), store the report, and warn once (ResultRecomputedWarning) about
        the stored results this run found unreadable."""
        report.end(time.perf_counter() - started, error)
        level = logging.WARNING if error is not None else logging.INFO
        if progress.enabled:
            progress.close(report.summary())
        else:
            progress.close()
            if log.isEnabledFor(level):  # the summary names and sorts every node: only on demand
                log.log(level, report.summary())
        saver = getattr(self.storage, "save_run_report", None)
        if saver is not None:
            try:
                saver(self.workflow_name, report.as_dict())
            except (OSError, StorageError, NotImplementedError) as exc:
                log.warning("the run report of workflow %r could not be stored: %s", self.workflow_name, exc)
        unreadable, self._unreadable = self._unreadable, None
        if unreadable:  # last: under warnings-as-errors the report is stored all the same
            self._warn_unreadable(unreadable)

    def set_cache(self, policy: str) -> None:
        """When a stored result is reused (queries can override it per node):

        * ``"fingerprint"`` (default): only if the stored fingerprint matches (the
          node's code, arguments and inputs are unchanged); a changed node and
          everything downstream of it run again, and so does a result stored without
          a fingerprint;
        * ``"name"``: whenever a result is stored under the node's name, as the
          original functionfuse did, even if it is stale; one ``StaleResultWarning``
          per run lists the nodes whose code or arguments changed since their results
          were stored, or that are reused while an input of theirs is recomputed (a
          result stored without a fingerprint is reused silently);
        * ``"off"``: never; the node always runs (its result is still stored).
        """
        self.cache_policy = _check_policy(policy)

    # -- planning -----------------------------------------------------------------------
    def fingerprints(self) -> list[dict]:
        """The current fingerprint record of each node (see :mod:`functionfuse.fingerprint`)."""
        self._records = fingerprint_records(self.graph)
        return self._records

    def resume_actions(self, stored: dict[str, Any] | None = None) -> list[str]:
        """The action (RUN, REPLAY, LOAD or SKIP) of each node for a run starting now.

        Warns about what the run is about to do with stored results: reuse stale ones
        under the ``"name"`` policy (one StaleResultWarning listing them, now), and
        recompute unreadable ones (one ResultRecomputedWarning when the run ends, with
        those found damaged while loading; at once outside a run). *stored* is what
        ``_stored()`` returned, if the caller already has it.
        """
        if stored is None:
            stored = self._stored()
        actions, reasons, states, details = self._actions(stored)
        names = self.graph.names
        unreadable: list[tuple[str, str]] = []
        stale: list[tuple[str, str]] = []
        for i, state in enumerate(states):
            if state == CORRUPTED:
                unreadable.append((names[i], reasons[i]))
            elif state == STALE and actions[i] in (LOAD, SKIP):
                if _own_change(details[i]):
                    stale.append((names[i], details[i]))
                else:
                    rerun = self._rerun_inputs(i, stored, actions)
                    if rerun:
                        inputs = ", ".join(map(repr, rerun))
                        verb = "is" if len(rerun) == 1 else "are"
                        stale.append((names[i], f"its input {inputs} {verb} recomputed in this run"))
        if stale:
            self._warn_stale(stale)
        if unreadable:
            if self._unreadable is not None:
                self._unreadable.extend(unreadable)
            else:
                self._warn_unreadable(unreadable)
        return actions

    def _rerun_inputs(self, i: int, stored: dict[str, Any] | None, actions: list[str]) -> list[str]:
        """Parents of node *i* that run in this run and differ from what its stored
        result was computed from (a node reused by name while an input of it is
        recomputed, e.g. under a per-node ``fingerprint`` policy)."""
        assert self._records is not None
        g = self.graph
        meta = (stored or {}).get(g.names[i])
        old = (meta.get("fingerprint") or {}).get("inputs", {}) if isinstance(meta, dict) else {}
        return [
            g.names[p]
            for p in g.parents[i]
            if actions[p] == RUN and old.get(g.names[p]) != self._records[p]["node"]
        ]

    def _stored(self) -> dict[str, Any] | None:
        """Metadata of the stored results of this graph's nodes (None without storage).

        Computes the current fingerprints too (kept for the metadata of this run).
        """
        if self.storage is None:
            return None
        self.fingerprints()
        wanted = self.storage.stored_tasks(self.workflow_name) & set(self.graph.names)
        return self.storage.read_metadata_many(self.workflow_name, sorted(wanted))

    def _actions(self, stored: dict[str, Any] | None) -> tuple[list[str], list[str], list[str], list[str]]:
        """(action, reason, state, state detail) of each node."""
        g = self.graph
        n = len(g)
        if stored is None:
            return [RUN] * n, ["no storage"] * n, [NO_STORAGE] * n, [""] * n
        records = self._records or self.fingerprints()
        names, nodes, data_parents = g.names, g.nodes, g.data_parents
        need = [False] * n
        for o in g.outputs:
            need[o] = True
        replay = [False] * n
        actions = [SKIP] * n
        reasons = [""] * n
        states = [MISSING] * n
        details = [""] * n
        default = self.cache_policy
        unstored = self._unstored
        needed_by: dict[int, int] = {}  # a never-stored node -> a running node that needs it
        for i in range(n - 1, -1, -1):
            name = names[i]
            if unstored and i in unstored:
                # never stored: runs (not saved: REPLAY) when needed, as an output, or as a sink
                states[i], details[i] = NOT_STORED, "never stored (set_persist(False))"
                if replay[i]:
                    why = "a later method call needs this instance"
                elif i in needed_by:
                    why = f"{names[needed_by[i]]!r} needs it"
                elif need[i]:
                    why = "an output"
                elif not g.children[i]:
                    why = "nothing depends on it"
                else:
                    reasons[i] = "not stored; no node that runs needs it"
                    continue
                actions[i] = REPLAY
                reasons[i] = "not stored; runs: " + why
            else:
                policy = self._cache.get(i, default)
                reuse, states[i], why, details[i] = _judge(stored.get(name, None), records[i], policy)
                if reuse and not replay[i]:
                    if need[i]:
                        actions[i] = LOAD
                        reasons[i] = why or "stored"
                    else:
                        reasons[i] = (why + "; " if why else "") + "no node that runs needs it"
                    continue
                if reuse:
                    actions[i] = REPLAY
                    reasons[i] = "replayed: a later method call needs this instance"
                else:
                    actions[i] = RUN
                    reasons[i] = why
            for p in data_parents[i]:
                need[p] = True
                if unstored and p in unstored:
                    needed_by.setdefault(p, i)
            node = nodes[i]
            if type(node) is MethodNode:
                replay[g.index_of(node.previous)] = True
                replay[g.index_of(node.instance)] = True
        self._effective = self._run_records(actions, states, stored, records)
        return actions, reasons, states, details

    def _run_records(
        self, actions: Sequence[str], states: Sequence[str], stored: dict[str, Any], records: list[dict]
    ) -> list[dict]:
        """The fingerprint record each node that runs is saved with.

        A node computed from a parent that is loaded (or skipped) rather than run was
        computed from the parent's *stored* result: its record names the stored
        fingerprint of that parent as the input (``UNRECORDED`` if none was stored), so
        a later plan sees it stale if the parent's stored result was. Nodes computed
        from such nodes inherit the difference. Without any, these are the current
        records (the common case costs one look at the state of each node).
        """
        # a reused result whose stored fingerprint is not the current one: stale or unverified
        differ = [
            i for i, state in enumerate(states) if state != CURRENT and state != NOT_STORED and actions[i] in _REUSED
        ]
        if not differ:
            return records
        g = self.graph
        names, parents = g.names, g.parents
        effective = [r["node"] for r in records]
        for i in differ:
            meta = stored.get(names[i])
            fp = meta.get("fingerprint") if isinstance(meta, dict) else None
            digest = fp.get("node") if isinstance(fp, dict) else None
            effective[i] = digest or UNRECORDED
        out = list(records)
        for i, action in enumerate(actions):
            if action in _REUSED:
                continue
            changed = {names[p]: effective[p] for p in parents[i] if effective[p] != records[p]["node"]}
            if changed:
                inputs = {**records[i]["inputs"], **changed}
                effective[i] = fp_join(records[i]["node"], "computed from", *(f"{k}={v}" for k, v in changed.items()))
                out[i] = {**records[i], "node": effective[i], "inputs": inputs}
        return out

    def run_record(self, i: int) -> dict:
        """The fingerprint record node *i*'s result is saved with in this run."""
        if self._effective is None and self.storage is not None:
            self._actions(self._stored())  # run_node() without a plan (a step given its action)
        records = self._effective if self._effective is not None else self._records
        assert records is not None
        return records[i]

    def unreadable_count(self, stored: dict[str, Any] | None) -> int:
        """How many stored results the plan found unreadable (they will be recomputed)."""
        return sum(1 for v in (stored or {}).values() if isinstance(v, Exception))

    def drop_damaged(self, stored: dict[str, Any] | None, i: int, error: BaseException, report: RunReport) -> None:
        """A stored result of node *i* turned out damaged when loaded: count it, warn (in
        the one warning of the run about unreadable results), and leave it out of
        *stored* so the next plan runs the node again."""
        name = self.graph.names[i]
        if self._unreadable is not None:
            self._unreadable.append((name, str(error)))
        else:
            self._warn_unreadable([(name, str(error))])
        report.recomputed += 1
        if stored is not None:
            stored.pop(name, None)

    def too_many_damaged(self) -> StorageError:
        return StorageError(f"Workflow {self.workflow_name!r}: too many unreadable stored results in {self.storage!r}.")

    def _warn_stale(self, stale: list[tuple[str, str]]) -> None:
        """One StaleResultWarning for the (node, why) reused stale in this run; a node is
        named once per change (a later run of this object with the same code and
        arguments does not repeat it)."""
        assert self._records is not None
        index = self.graph.name_index
        fresh = []
        for name, why in stale:
            key = (name, self._records[index[name]]["node"])
            if key not in self._warned_stale:
                self._warned_stale.add(key)
                fresh.append((name, why))
        if not fresh:
            return
        fix = (
            "Use set_cache('fingerprint') (the default) to recompute changed nodes and what depends on them, "
            "or remove the stale results (functionfuse storage rm)"
        )
        if len(fresh) == 1:
            name, why = fresh[0]
            message = (
                f"Node {name!r} of workflow {self.workflow_name!r} reuses a stored result although {why} "
                f"(cache policy 'name'). {fix}."
            )
        else:
            message = (
                f"Workflow {self.workflow_name!r} reuses the stored results of {len(fresh)} nodes although they "
                f"changed (cache policy 'name'): {_first_few(fresh)}. {fix}; workflow.plan() lists each with why."
            )
        warn_at_user_frame(message, StaleResultWarning)

    def _warn_unreadable(self, unreadable: list[tuple[str, str]]) -> None:
        """One ResultRecomputedWarning for the (node, why) whose stored results were unreadable."""
        if len(unreadable) == 1:
            name, why = unreadable[0]
            message = f"Stored result of node {name!r} of workflow {self.workflow_name!r} was unreadable and is recomputed: {why}"
        else:
            message = (
                f"{len(unreadable)} stored results of workflow {self.workflow_name!r} were unreadable and are "
                f"recomputed: {_first_few(unreadable)}"
            )
        warn_at_user_frame(
            message + ". Their nodes run again and replace them; if this recurs, check the store "
            f"(functionfuse storage ls {self.workflow_name} --verify).",
            ResultRecomputedWarning,
        )

    def _repr_svg_(self) -> str | None:
        """Jupyter shows a workflow as its DAG, coloured by storage state (when Graphviz is
        installed and the graph is small enough to read; else as text)."""
        from .backends.builtin.graphback import svg_or_none

        return svg_or_none(self)

    def plan(self) -> Plan:
        """What :meth:`run` would do with each node now, what storage holds, and why."""
        actions, reasons, states, details = self._actions(self._stored())
        return Plan([NodePlan(*entry) for entry in zip(self.graph.names, actions, reasons, states, details)])

    # -- execution helpers ----------------------------------------------------------------
    def node_calls(self) -> list[Callable[[Sequence[Any]], Any]]:
        """For each node, a function computing it from the list of node results."""
        if self._calls is None:
            index = self.graph.node_index
            index_of = index.__getitem__
            calls: list[Callable[[Sequence[Any]], Any]] = []
            with gc_paused():
                for node in self.graph.nodes:
                    # inline fast path: f(node) and f(constant)
                    args = node.args
                    if type(node) is Node and len(args) == 1 and not node.kwargs:
                        a0 = args[0]
                        if type(a0) in NODE_TYPES:
                            calls.append(call_with_result(node.func, index[a0]))
                            continue
                    calls.append(build_call(node, index_of))
            self._calls = calls
        return self._calls

    def release_schedule(self, actions: Sequence[str] | None = None) -> list[tuple[int, ...]]:
        """For each node, the values to drop once it has run: parents that no later
        running node needs, and its own value if nothing needs it at all (it is then
        only stored). Outputs are kept. *actions* is the plan (``None``: all run; that
        schedule is computed once per workflow).
        """
        if actions is None and self._all_run_frees is not None:
            return self._all_run_frees
        g = self.graph
        dp = g.data_parents
        n = len(dp)
        with gc_paused():
            last = list(range(n))  # a value nobody consumes is dropped right after its node
            for i in range(n):
                if actions is None or actions[i] in RUNS:
                    for p in dp[i]:
                        last[p] = i
            for o in g.outputs:
                last[o] = -1
            lists: dict[int, list[int]] = {}
            for p in range(n):
                i = last[p]
                if i >= 0:
                    lists.setdefault(i, []).append(p)
            frees: list[tuple[int, ...]] = [()] * n
            for i, ps in lists.items():
                frees[i] = tuple(ps)
        if actions is None:
            self._all_run_frees = frees
        return frees

    def node_metadata(self, i: int) -> dict:
        g = self.graph
        node = g.nodes[i]
        owner = node.instance.func if type(node) is MethodNode else node.func
        meta: dict[str, Any] = {
            "node": g.names[i],
            "kind": node.kind,
            "function": f"{getattr(owner, '__module__', '?')}.{node.label}",
            "inputs": [g.names[p] for p in g.parents[i]],
        }
        if self._records is not None:
            meta["fingerprint"] = self.run_record(i)
        return meta

    def run_node(self, i: int, results: Any, *, save: bool) -> Any:
        """Run node *i*: its plugin, its function (arguments from *results*, any
        mapping or sequence indexed by node position), and, if *save*, store the result
        with its metadata. Errors name the node and the workflow.
        """
        name = self.graph.names[i]
        plugin = self._plugins.get(i)
        with executing_nodes():
            if plugin is not None:
                prepare(plugin, name)()
            started = _utcnow()
            t = time.perf_counter()
            try:
                value = self.node_calls()[i](results)
            except Exception as exc:
                raise self.node_error(i, exc) from exc
            elapsed = time.perf_counter() - t
        if save:
            meta = self.node_metadata(i)
            meta.update(started=started, finished=_utcnow(), duration_s=round(elapsed, 6))
            self.save_result(i, value, meta)
        return value

    def save_result(self, i: int, value: Any, meta: dict) -> None:
        """Store *value* as node *i*'s result; errors name the node."""
        name = self.graph.names[i]
        try:
            self.storage.save(self.workflow_name, name, value, meta)
        except (StorageError, OSError) as exc:
            kind = SerializationError if isinstance(exc, SerializationError) else StorageError
            raise kind(
                f"Result of node {name!r} of workflow {self.workflow_name!r} could not be stored "
                f"(results stored before it are kept): {exc}"
            ) from exc

    def load_result(self, i: int) -> Any:
        """Read node *i*'s stored result.

        :raises CorruptedResultError: the stored result is damaged (recompute it).
        :raises SerializationError: intact but not loadable here; never overwrite it.
        """
        name = self.graph.names[i]
        try:
            return self.storage.read_task(self.workflow_name, name)
        except SerializationError as exc:
            raise SerializationError(f"Stored result of node {name!r} cannot be loaded: {exc}") from exc

    def node_error(self, i: int, exc: BaseException) -> NodeExecutionError:
        name = self.graph.names[i]
        return NodeExecutionError(
            f"Node {name!r} of workflow {self.workflow_name!r} failed: {type(exc).__name__}: {exc}",
            node_name=name,
            workflow_name=self.workflow_name,
        )

    def outputs(self, results: Any) -> Any:
        g = self.graph
        values = []
        for ref, i in zip(g.output_refs, g.outputs):
            v = results[i]
            values.append(ref.resolve(v) if type(ref) is NodeItem else v)
        return values[0] if len(values) == 1 else values

    # -- the original functionfuse API ---------------------------------------------------
    def find_nodes(self, pattern: str | None = None) -> list[Node]:
        """The nodes whose whole name matches the regular expression *pattern*, in
        topological order (``None``: every node).

        As in the original functionfuse, *pattern* must match the whole name
        (``re.fullmatch``), where :meth:`query` finds it anywhere in a name
        (``re.search``). An unnamed node returned here answers ``get_name()`` with the
        automatic name this workflow gives it.

        >>> from functionfuse import workflow
        >>> @workflow
        ... def add(a, b):
        ...     return a + b
        >>> s1 = add(1, 1).set_name("First sum")
        >>> wf = BaseWorkflow(add(s1, 1), workflow_name="sums")
        >>> [n.get_name() for n in wf.find_nodes(r".*sum.*")]
        ['First sum']
        >>> [n.get_name() for n in wf.find_nodes()]
        ['First sum', 'add_0000']
        """
        g = self.graph
        nodes, names = g.nodes, g.names
        found = []
        for i in self._find(pattern):
            node = nodes[i]
            if node.name is None:
                set_found_name(node, names[i])
            found.append(node)
        return found

    def _find(self, pattern: str | None) -> list[int]:
        """Positions of the nodes whose whole name matches *pattern* (``None``: all)."""
        if pattern is None:
            return list(range(len(self.graph)))
        try:
            match = re.compile(pattern).fullmatch
        except (re.error, TypeError) as exc:
            raise GraphError(f"Pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return [i for i, name in enumerate(self.graph.names) if match(name)]

    def _select(self, pattern: str | None, method: str) -> Query:
        """A query of the nodes whose whole name matches *pattern*, for *method* of the
        original API (``set_plugin``, ``log_nodes``).

        :raises ConfigurationError: *pattern* matches no node, as for :class:`Query`.
        """
        found = self._find(pattern)
        if not found:
            names = self.graph.names
            shown = ", ".join(map(repr, names[:_NAMES_SHOWN])) + (", ..." if len(names) > _NAMES_SHOWN else "")
            close = _close_names(pattern, names)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
            raise ConfigurationError(
                f"Pattern {pattern!r} matches no node of workflow {self.workflow_name!r}, so {method}() would "
                f"set nothing. Its {len(names)} node{'' if len(names) == 1 else 's'} are named {shown}{hint} "
                f"{method}() matches whole names, as in the original functionfuse (re.fullmatch): "
                "'.*sum.*' selects the names that contain 'sum'."
            )
        return self.query_class(found, self, pattern)

    def replace_func(self, node: Node, new_func: Callable[..., Any]) -> None:
        """Make function node *node* of this workflow call *new_func* instead of its
        function, with the same arguments and under the same name (the original
        functionfuse's ``replace_func``; *node* is typically one of :meth:`find_nodes`).

        The node itself changes, as in the original: every workflow that holds it calls
        the new function. This workflow keeps the names it gave its nodes (an unnamed
        node is still named after its old function). Whether a stored result of the
        node is reused follows the cache policy: ``"fingerprint"`` recomputes it, and
        what depends on it, since the code changed.

        :raises GraphError: *node* is not a function node of this workflow, or
            *new_func* is not callable or cannot take the node's arguments.
        """
        g = self.graph
        i = g.index_of(node)
        node = g.nodes[i]
        name = g.names[i]  # assigned before the function changes: the node keeps its name
        kind = type(node)
        if kind is ClassNode:
            raise GraphError(
                f"Node {name!r} is a class node (a constructor call of {node.label}): replace_func replaces "
                "the function of a function node. Make the node from another class instead."
            )
        if kind is MethodNode:
            raise GraphError(
                f"Node {name!r} is a method call on a class node: the method is looked up on the live "
                "instance, so replace_func cannot replace it. Make the node from another class instead."
            )
        if isinstance(new_func, (WorkflowFunction, WorkflowClass)):
            new_func = new_func.__wrapped__
        if not callable(new_func):
            raise GraphError(f"replace_func: {new_func!r} is not callable. Pass the function node {name!r} should call.")
        try:
            signature: inspect.Signature | None = inspect.signature(new_func)
        except (TypeError, ValueError):  # some builtins have none: a misfit fails when the node runs
            signature = None
        if signature is not None:
            try:
                signature.bind(*node.args, **node.kwargs)
            except TypeError as exc:
                new = getattr(new_func, "__qualname__", None) or repr(new_func)
                raise GraphError(
                    f"replace_func: {new}{signature} cannot take the arguments of node {name!r}: {exc}. "
                    f"Pass a function with the parameters of {node.label}{_signature_of(node.func)}."
                ) from None
        node.func = new_func
        # compiled calls and fingerprints hold the old function: rebuilt when next needed
        self._calls = None
        self._records = None
        self._effective = None


#: how many nodes a summary warning names (with why) before "and N more"
_NAMED_IN_WARNINGS = 5


def _first_few(entries: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{name!r}: {why}" for name, why in entries[:_NAMED_IN_WARNINGS])
    rest = len(entries) - _NAMED_IN_WARNINGS
    return shown + (f"; and {rest} more" if rest > 0 else "")


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY_DIRS = tuple(
    {os.path.abspath(p) + os.sep for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_path(key))}
)


def _ours(frame: FrameType) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def _library(frame: FrameType) -> bool:
    filename = frame.f_code.co_filename
    return filename.startswith("<") or os.path.abspath(filename).startswith(_LIBRARY_DIRS)


def user_frame() -> FrameType | None:
    """The innermost frame of the code that called into functionfuse: the first frame
    outside this package, past library code (Prefect's flow engine, ...) that only
    leads back into it."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if _ours(frame):
            frame = frame.f_back
            continue
        outer: FrameType | None = frame
        while outer is not None and not _ours(outer) and _library(outer):
            outer = outer.f_back
        if outer is None or not _ours(outer):
            return frame
        frame = outer
    return None


def warn_at_user_frame(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` with the location of the user's code that called into
    functionfuse (see :func:`user_frame`), from whatever thread or depth it is called."""
    frame = user_frame()
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    module_globals = frame.f_globals
    warnings.warn_explicit(
        message,
        category,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=module_globals.get("__name__", "<unknown>"),
        registry=module_globals.setdefault("__warningregistry__", {}),
        # no module_globals: their loader may refuse get_source (``python -c``: BuiltinImporter);
        # the source line shown is read from the file, as for any traceback
    )


def _own_change(detail: str) -> bool:
    """True if why a result is stale (a plan's state detail) names more than changed
    inputs: the node itself changed."""
    return any(p and not p.startswith("input ") for p in detail.split("; "))


def _check_policy(policy: str) -> str:
    if policy not in CACHE_POLICIES:
        raise ConfigurationError(f"Cache policy {policy!r} is not one of {', '.join(map(repr, CACHE_POLICIES))}.")
    return policy


def _judge(meta: Any, record: dict, policy: str) -> tuple[bool, str, str, str]:
    """(reuse the stored result?, state, reason, state detail) for one node."""
    if meta is None:
        return False, MISSING, "no stored result", "no stored result"
    if isinstance(meta, Exception):
        why = f"stored result is unreadable: {meta}"
        return False, CORRUPTED, why, why
    stored = meta.get("fingerprint")
    if not stored:
        # nothing is known to have changed: reused by name, recomputed under "fingerprint"
        return policy == "name", UNVERIFIED, "cache is off" if policy == "off" else NO_FINGERPRINT, NO_FINGERPRINT
    if stored.get("node") == record["node"]:  # the common case of a resumed run: current
        return (False, CURRENT, "cache is off", "") if policy == "off" else (True, CURRENT, "", "")
    reasons = explain(stored, record)
    state = STALE if reasons else CURRENT
    detail = "; ".join(reasons)
    why = "stale: " + detail if reasons else ""
    if policy == "off":
        return False, state, "cache is off", detail
    if policy == "fingerprint" and reasons:
        return False, state, why, detail
    return True, state, why, detail


class DamagedResult(Exception):
    """Raised inside a backend's executor when a stored result it loads is damaged."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


def _signature_of(func: Any) -> str:
    try:
        return str(inspect.signature(func))
    except (TypeError, ValueError):
        return "(...)"
