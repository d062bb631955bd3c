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

import logging
import operator
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

from .backends.plugins import prepare
import xxhash

from .errors import (
    ConfigurationError,
    NodeExecutionError,
    ResultRecomputedWarning,
    SerializationError,
    StaleResultWarning,
    StorageError,
)
from .fingerprint import FINGERPRINT_VERSION, Fingerprinter, explain
from .graph import Graph, _gc_paused
from .report import Progress, RunReport, progress_enabled
from .workflow import ClassNode, MethodNode, Node, NodeItem, _scan, executing_nodes, validate_name

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
    """The nodes of a workflow whose names match a pattern; sets options on them."""

    def __init__(self, nodes: list[int], workflow: "BaseWorkflow") -> None:
        self.indices = nodes
        self.workflow = workflow

    @property
    def nodes(self) -> list[Node]:
        return [self.workflow.graph.nodes[i] for i in self.indices]

    @property
    def names(self) -> list[str]:
        return [self.workflow.graph.names[i] for i in self.indices]

    def set_plugin(self, plugin: Any) -> "Query":
        """Apply *plugin* (see :mod:`functionfuse.backends.plugins`) to these nodes."""
        if not (hasattr(plugin, "local_initialize") and hasattr(plugin, "remote_initialize")):
            raise ConfigurationError(
                f"{plugin!r} is not a plugin: it needs local_initialize() and remote_initialize() "
                "(subclass functionfuse.backends.plugins.Plugin)."
            )
        for i in self.indices:
            self.workflow._plugins[i] = plugin
        return self

    def set_cache(self, policy: str) -> "Query":
        """Cache policy of these nodes: ``"name"``, ``"fingerprint"`` or ``"off"``
        (see :meth:`BaseWorkflow.set_cache`)."""
        _check_policy(policy)
        for i in self.indices:
            self.workflow._cache[i] = policy
        return self

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.names!r}>"


class BaseWorkflow:
    """Common base of the backends: see the module documentation."""

    query_class: type[Query] = Query
    #: what the progress line calls the nodes being worked on
    progress_running_label = "running"

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        self.workflow_name = validate_name(workflow_name, "Workflow name")
        self.graph = Graph(nodes)
        self.storage: Any = None
        self._plugins: dict[int, Any] = {}
        self._calls: list[Callable[[Sequence[Any]], Any]] | None = None
        self._all_run_frees: list[tuple[int, ...]] | None = None
        self.cache_policy = "name"
        self._cache: dict[int, str] = {}
        self._records: list[dict] | None = None
        #: the records results of this run are saved with (see _run_records)
        self._effective: list[dict] | None = None
        self._warned_stale: set[tuple[str, str]] = set()  # (node, fingerprint) warned about
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
        """Query nodes of the graph by regexp pattern (``None``: every node)."""
        return self.query_class(self.graph.query(pattern), self)

    def set_progress(self, enabled: bool | None) -> None:
        """Show a progress line while running: True, False, or None (default: only when
        standard error is a terminal and ``FUNCTIONFUSE_PROGRESS`` is not 0)."""
        self._progress = enabled

    # -- run bookkeeping (every backend) ------------------------------------------------
    def start_run(self) -> tuple[RunReport, Progress]:
        """A fresh report (``last_run``) and progress display for a run starting now."""
        report = RunReport(self.workflow_name, type(self).__name__, nodes=len(self.graph))
        self.last_run = report
        progress = Progress(report, enabled=progress_enabled(self._progress, sys.stderr))
        progress.running_label = self.progress_running_label
        progress.start()
        return report, progress

    def finish_run(self, report: RunReport, progress: Progress, started: float, error: BaseException | None = None) -> None:
        """Close the progress display with the run's summary under it (logged instead when
        there is no display) and store the report."""
        report.seconds = time.perf_counter() - started
        if error is not None:
            report.error = f"{type(error).__name__}: {error}"
            if isinstance(error, NodeExecutionError):
                report.failed = error.node_name
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

    def set_cache(self, policy: str) -> None:
        """When a stored result is reused (queries can override it per node):

        * ``"name"`` (default): whenever a result is stored under the node's name, as
          the original functionfuse did; warns once per node whose code or arguments
          changed since its result was stored, or that is reused while an input of it
          is recomputed (a result stored without a fingerprint is reused silently);
        * ``"fingerprint"``: only if the stored fingerprint matches; a changed node and
          everything downstream of it run again;
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

        Warns about what the run is about to do with stored results: recompute an
        unreadable one (ResultRecomputedWarning) or reuse a stale one under the
        ``"name"`` policy (StaleResultWarning, once per node). *stored* is what
        ``_stored()`` returned, if the caller already has it.
        """
        if stored is None:
            stored = self._stored()
        actions, reasons, states, _ = self._actions(stored)
        names = self.graph.names
        for i, state in enumerate(states):
            if state == CORRUPTED:
                warnings.warn(
                    f"Stored result of node {names[i]!r} of workflow {self.workflow_name!r} will be "
                    f"recomputed: {reasons[i]}",
                    ResultRecomputedWarning,
                    stacklevel=2,
                )
            elif state == STALE and actions[i] in (LOAD, SKIP):
                if _own_change(reasons[i]):
                    self._warn_stale(names[i], reasons[i].partition("stale: ")[2].partition("; no node")[0])
                else:
                    rerun = self._rerun_inputs(i, stored, actions)
                    if rerun:
                        inputs = ", ".join(map(repr, rerun))
                        self._warn_stale(
                            names[i], f"its input {inputs} {'is' if len(rerun) == 1 else 'are'} recomputed in this run"
                        )
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
        for i in range(n - 1, -1, -1):
            name = names[i]
            policy = self._cache.get(i, default)
            reuse, states[i], why, details[i] = _judge(stored.get(name, None), records[i], policy)
            if not reuse or replay[i]:
                if reuse:
                    actions[i] = REPLAY
                    reasons[i] = "replayed: a later method call needs this instance"
                else:
                    actions[i] = RUN
                    reasons[i] = why
                for p in data_parents[i]:
                    need[p] = True
                node = nodes[i]
                if type(node) is MethodNode:
                    replay[g.index_of(node.previous)] = True
                    replay[g.index_of(node.instance)] = True
            elif need[i]:
                actions[i] = LOAD
                reasons[i] = why or "stored"
            else:
                reasons[i] = (why + "; " if why else "") + "no node that runs needs it"
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
        differ = [i for i, state in enumerate(states) if state != CURRENT and actions[i] in _REUSED]
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
                effective[i] = _fp_join(records[i]["node"], "computed from", *(f"{k}={v}" for k, v in changed.items()))
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
        """A stored result of node *i* turned out damaged when loaded: warn, count it, and
        leave it out of *stored* so the next plan runs the node again."""
        name = self.graph.names[i]
        warnings.warn(
            f"Stored result of node {name!r} of workflow {self.workflow_name!r} is unreadable and will be "
            f"recomputed: {error}",
            ResultRecomputedWarning,
            stacklevel=3,
        )
        report.recomputed += 1
        if stored is not None:
            stored.pop(name, None)

    def too_many_damaged(self) -> StorageError:
        return StorageError(f"Workflow {self.workflow_name!r}: too many unreadable stored results in {self.storage!r}.")

    def _warn_stale(self, name: str, why: str) -> None:
        assert self._records is not None
        key = (name, self._records[self.graph.name_index[name]]["node"])
        if key in self._warned_stale:
            return
        self._warned_stale.add(key)
        warnings.warn(
            f"Node {name!r} of workflow {self.workflow_name!r} reuses a stored result although "
            f"{why}. Remove the result, or use set_cache('fingerprint') to recompute changed nodes "
            "automatically.",
            StaleResultWarning,
            stacklevel=3,
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
            index = self.graph._index
            index_of = index.__getitem__
            calls: list[Callable[[Sequence[Any]], Any]] = []
            with _gc_paused():
                for node in self.graph.nodes:
                    # inline fast path: f(node) and f(constant)
                    args = node.args
                    if type(node) is Node and len(args) == 1 and not node.kwargs:
                        a0 = args[0]
                        if type(a0) in _NODE_TYPES:
                            calls.append(_call_with_result(node.func, index[a0]))
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
        with _gc_paused():
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


def _own_change(reason: str) -> bool:
    """True if a stale reason names more than changed inputs (the node itself changed)."""
    parts = reason.partition("stale: ")[2].partition("; no node")[0].split("; ")
    return any(p and not p.startswith("input ") for p in parts)


def _check_policy(policy: str) -> str:
    if policy not in CACHE_POLICIES:
        raise ConfigurationError(f"Cache policy {policy!r} is not one of {', '.join(map(repr, CACHE_POLICIES))}.")
    return policy


def _judge(meta: Any, record: dict, policy: str) -> tuple[bool, str, str, str]:
    """(reuse the stored result?, state, reason, state detail) for one node."""
    if meta is None:
        return False, MISSING, "not stored", "not stored"
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


def fingerprint_records(graph: Graph) -> list[dict]:
    """Fingerprint record of every node, parents first, without loading any result.

    This runs before every stored run, so the common cases take short paths: a node
    argument contributes its fingerprint directly, plain constants are hashed once per
    distinct value, and the code part of each function is joined once.
    """
    names, parents = graph.names, graph.parents
    index = graph._index
    records: list[dict] = []
    digests: list[str] = []  # the "node" digest of each record, by index
    code_parts: dict[int, str] = {}  # id(code dict) -> its part of the digest input
    constants: dict[tuple[type, Any], str] = {}  # (type, value) -> digest of a plain constant

    def node_digest(v: Any) -> str:
        if type(v) is NodeItem:
            return _fp_join("item", digests[index[v.node]], fp.value(list(v.path)))
        return "N" + digests[index[v]]

    def arg_digest(value: Any) -> str:
        t = type(value)
        if t in _NODE_TYPES:
            return "@N" + digests[index[value]]
        if t in _PLAIN:
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
    node_types, plain, join, hexdigest = _NODE_TYPES, _PLAIN, "\x1f".join, xxhash.xxh3_128_hexdigest
    with _gc_paused():
        for i, node in enumerate(graph.nodes):
            if type(node) is Node and not node.kwargs:
                func = node.func
                known = functions.get(id(func))
                if known is None:
                    code = fp.code(func)
                    prefix = join([head, Node.kind, join(f"{k}={v}" for k, v in code.items()), "|"])
                    known = functions[id(func)] = (code, prefix, fp.positional_names(func))
                code, prefix, pnames = known
                if pnames is not None and len(node.args) <= len(pnames):
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
            digest = _fp_join(*parts)
            digests.append(digest)
            records.append({"v": FINGERPRINT_VERSION, "node": digest, "code": code, "args": args, "inputs": inputs})
    return records


def _fp_join(*parts: str) -> str:
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
    if t in _NODE_TYPES:
        return "@" + fp.value(value)
    if t in _CONTAINERS:
        digest = fp.value(value)
        return "@" + digest if _scan(value, []) else digest
    return fp.value(value)


class DamagedResult(Exception):
    """Raised inside a backend's executor when a stored result it loads is damaged."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index)
        self.index = index
        self.error = error


# -- argument resolution ----------------------------------------------------------------------
def _getter(value: Any, index_of: Callable[[Any], int]) -> Callable[[Sequence[Any]], Any] | None:
    """A function of the results list giving *value* resolved, or None for a constant."""
    t = type(value)
    if t is Node or t is ClassNode or t is MethodNode:
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


_CONTAINERS = frozenset({list, tuple, dict, NodeItem})
_NODE_TYPES = frozenset({Node, ClassNode, MethodNode})
_PLAIN = frozenset({type(None), bool, int, str, bytes})  # not float: -0.0 == 0.0


def _call_with_result(f: Callable[[Any], Any], j: int) -> Callable[[Sequence[Any]], Any]:
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
                if t0 is Node or t0 is ClassNode or t0 is MethodNode:
                    j = index_of(a0)
                    return lambda R: f(R[j])
                if t0 not in _CONTAINERS:
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
