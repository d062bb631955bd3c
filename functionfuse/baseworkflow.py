"""The core every backend shares: graph, storage, per-node options, the run's plan.

A backend gets from :class:`BaseWorkflow`:

* ``graph``: the DAG (nodes in topological order, names, parents, outputs);
* ``plan()``: for each node, whether it runs, is loaded from storage, or is skipped
  (made by the pure :func:`functionfuse.planner.plan`, from one listing of storage);
* ``node_task(i, ...)``: node *i* as a picklable :class:`~functionfuse.engine.NodeTask`
  (its compiled call, plugin hook, storage and metadata), which every executor runs;
* per-node options set through queries (plugins, cache policies; backends add their own).

The run itself (report, progress, recomputing damaged results, finishing) is
:mod:`functionfuse.engine`'s; nothing about a run is kept on the workflow but its
report (``last_run``): a plan is computed once per run and passed to what needs it, so
looking at a plan (``plan()``, a drawing) changes nothing a later run does.
Queries are :mod:`functionfuse.query`'s. (Over 500 lines: the workflow's
public surface, the original functionfuse API and execution units included, is one class.)
"""

from __future__ import annotations

import inspect
import logging
import re
from types import MappingProxyType
from typing import IO, Any, Callable, Mapping, Sequence

from . import planner as _planner
from . import _calls
from ._calls import build_call, call_with_result
from .inspection import inspectable
from ._records import Records, fingerprint_records
from .plugins import prepare
from .drawing import svg_or_none
from .engine import NodeFailure, NodeTask, failure_error, run_here
from .errors import (
    ConfigurationError,
    CorruptedResultError,
    GraphError,
    ResultRecomputedWarning,
    StaleResultWarning,
    StorageError,
)
from .graph import Graph, gc_paused
from .planner import (  # noqa: F401  (re-exported: the plan's vocabulary, as before the planner moved)
    CACHE_POLICIES,
    CORRUPTED,
    CURRENT,
    LOAD,
    MISSING,
    NO_FINGERPRINT,
    NO_STORAGE,
    NOT_STORED,
    REPLAY,
    RUN,
    RUNS,
    SKIP,
    STALE,
    UNRECORDED,
    UNVERIFIED,
    NodePlan,
    Plan,
    Policies,
)
from .query import _NAMES_SHOWN, Query, _close_names
from .report import Progress, RunReport, progress_enabled
from .storage import StorageProtocol
from .units import Units, partition
from .userframe import warn_at_user_frame
from .workflow import NODE_TYPES, MethodNode, Node, NodeItem, validate_name
from .workflow import ClassNode, WorkflowClass, WorkflowFunction, set_found_name

__all__ = [
    "BaseWorkflow", "Query", "Plan", "NodePlan", "RUN", "REPLAY", "LOAD", "SKIP", "RUNS", "UNVERIFIED",
    "COMPILED_CALLS_MODULE", "select",
]

#: the module whose closures are the compiled node calls (:meth:`BaseWorkflow.node_calls`):
#: executors that pickle them may send them by the name of their code
COMPILED_CALLS_MODULE = _calls.__name__

log = logging.getLogger("functionfuse")


class BaseWorkflow:
    """Common base of the backends: see the module documentation."""

    query_class: type[Query] = Query
    #: whether nodes can be left unstored (Query.set_persist(False)): their values must
    #: then pass from node to node in memory
    supports_unstored_nodes = True
    #: what the progress line calls the nodes being worked on
    progress_running_label = "running"
    #: whether the backend runs execution units (several nodes as one engine task);
    #: drawings then show them (LocalWorkflow runs every node in this process anyway)
    fuses_units = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:  # `functionfuse plan` imports scripts that call run(): see functionfuse.inspection
            cls.run = inspectable(cls.__dict__["run"])  # type: ignore[attr-defined]

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        self.workflow_name = validate_name(workflow_name, "Workflow name")
        self.graph = Graph(nodes)
        self.storage: StorageProtocol | None = None
        self._plugins: dict[int, Any] = {}
        self._calls: list[Callable[[Sequence[Any]], Any]] | None = None
        self._all_run_frees: list[tuple[int, ...]] | None = None
        self.cache_policy = "fingerprint"
        self._cache: dict[int, str] = {}
        #: positions of the nodes whose results are never stored (Query.set_persist)
        self._unstored: set[int] = set()
        self._warned_stale: set[tuple[str, str]] = set()  # (node, fingerprint) warned about
        self._progress: bool | None = None
        #: execution units (functionfuse.units): automatic fusion, its limit, groups, nodes kept alone
        self._fusion = True
        self._max_units: int | None = None
        self._groups: dict[int, str] = {}
        self._solo: set[int] = set()
        #: the report of the last run (see :class:`functionfuse.report.RunReport`)
        self.last_run: RunReport = RunReport(self.workflow_name, type(self).__name__)

    # -- configuration ---------------------------------------------------------------
    def set_storage(self, object_storage: Any) -> None:
        """Set storage for the workflow (``None`` to run without storage).

        :raises ConfigurationError: *object_storage* does not implement
            :class:`~functionfuse.storage.StorageProtocol`; the message names what it lacks.
        """
        if object_storage is not None and not isinstance(object_storage, StorageProtocol):
            members = set(StorageProtocol.__annotations__) | {n for n in vars(StorageProtocol) if n[0] != "_"}
            missing = sorted(n for n in members if not hasattr(object_storage, n))
            raise ConfigurationError(
                f"{object_storage!r} is not a storage object: it lacks {', '.join(missing)} of "
                "functionfuse.storage.StorageProtocol (what runs, backends and the command line call). "
                "Create one with functionfuse.storage.storage_factory(...); a storage of your own subclasses "
                "functionfuse.storage.Storage, which implements the protocol over a few primitives "
                "(docs/storage.md, 'The storage protocol')."
            )
        self.storage = object_storage

    @property
    def plugins(self) -> Mapping[int, Any]:
        """The plugin of each node that has one, by node position (read-only; set
        with ``query(...).set_plugin``)."""
        return MappingProxyType(self._plugins)

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

    # -- run bookkeeping (used by the engine's run session) ----------------------------
    def progress_setting(self, stream: IO[str]) -> bool:
        """Whether a run shows a progress line on *stream* (see :meth:`set_progress`)."""
        return progress_enabled(self._progress, stream)

    def close_progress(self, progress: Progress, report: RunReport, error: BaseException | None) -> None:
        """Close the progress display with the run's summary under it (logged instead
        when there is no display: a warning if the run raised *error*)."""
        level = logging.WARNING if error is not None else logging.INFO
        if progress.enabled:
            progress.close(report.summary())
        else:
            progress.close()
            if log.isEnabledFor(level):  # the summary names and sorts every node: only on demand
                log.log(level, report.summary())

    def store_report(self, report: RunReport) -> None:
        """Store the run report with the results (a failure to store it is logged), and
        the fingerprint index entries of the results this run saved in this process."""
        if self.storage is not None:
            try:
                self.storage.save_run_report(self.workflow_name, report.as_dict())
            except (OSError, StorageError, NotImplementedError) as exc:
                log.warning("the run report of workflow %r could not be stored: %s", self.workflow_name, exc)
            self.storage.save_fingerprint_index(self.workflow_name)  # a cache: it logs its failures

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
        self.cache_policy = _planner.check_policy(policy)

    # -- execution units ------------------------------------------------------------------
    def set_fusion(self, enabled: bool = True, *, max_units: int | None = None) -> None:
        """Run cheap nodes together: linear chains of nodes become one engine task
        (one Ray task, one Prefect task, one KFP step) when *enabled* (the default).
        *max_units*: merge units until at most this many remain (None: no limit;
        KFPWorkflow's default is 10 steps; with *enabled* False nothing is merged). Groups made with ``query(...).set_group``
        apply either way. Results, plans, reports and errors stay per node (see
        :mod:`functionfuse.units`; LocalWorkflow runs every node in this process anyway).
        """
        if not isinstance(enabled, bool):
            raise ConfigurationError(f"set_fusion() takes True or False, not {enabled!r}.")
        if max_units is not None and (isinstance(max_units, bool) or not isinstance(max_units, int) or max_units < 1):
            raise ConfigurationError(f"set_fusion(max_units=...) takes an int >= 1 or None (no limit), not {max_units!r}.")
        self._fusion = enabled
        self._max_units = max_units

    def fusion_key(self, i: int) -> Any:
        """What node *i*'s task is launched with: nodes fuse into one task only when
        their keys are equal; ``None``: never (class and method nodes). Backends add
        their per-node options (resources, retries, image) to this key."""
        node = self.graph.nodes[i]
        if type(node) is ClassNode or type(node) is MethodNode:
            return None
        plugin = self._plugins.get(i)
        return () if plugin is None else ("plugin", id(plugin))

    def units(self, plan: Plan | None = None) -> Units:
        """The execution units a run of *plan* (default: :meth:`plan`) uses; ``str()``
        of it lists each unit, its nodes and why they were put together."""
        if plan is None:
            plan = self.plan()
        keys = [self.fusion_key(i) for i in range(len(self.graph))]
        return partition(
            self.graph,
            plan.actions,
            keys,
            groups=self._groups,
            solo=self._solo,
            enabled=self._fusion,
            max_units=self._max_units,
        )

    # -- planning -----------------------------------------------------------------------
    def fingerprints(self) -> Sequence[dict]:
        """The current fingerprint record of each node (see :mod:`functionfuse.fingerprint`):
        a :class:`~functionfuse._records.Records` sequence, whose node digests are at hand
        and whose records are built when first read."""
        return fingerprint_records(self.graph)

    def policies(self) -> Policies:
        """The cache settings plans of this workflow follow."""
        return Policies(self.cache_policy, dict(self._cache), frozenset(self._unstored))

    def stored_metadata(self, records: Sequence[dict] | None = None) -> dict[str, Any] | None:
        """What storage holds of this graph's nodes, by name: the fingerprint record and
        checksum of each stored result (an exception for an unreadable one); None
        without storage. One listing of the storage and its fingerprint index (see
        ``Storage.read_fingerprints``, which needs the current fingerprint records:
        *records* if the caller has them, else they are computed)."""
        if self.storage is None:
            return None
        names = self.graph.names
        if records is None:
            records = self.fingerprints()
        # by name; Records answers with each record's digest, building none
        current = records.by_name(names) if isinstance(records, Records) else dict(zip(names, records))
        return self.storage.read_fingerprints(self.workflow_name, names, current)

    def make_plan(self, stored: dict[str, Any] | None, records: Sequence[dict] | None = None) -> Plan:
        """The plan of a run given what storage holds (*stored*, as :meth:`stored_metadata`
        returns it) and the fingerprint *records* (computed if not given)."""
        if stored is not None and records is None:
            records = self.fingerprints()
        return _planner.plan(self.graph, stored, records, self.policies())

    def plan(self) -> Plan:
        """What :meth:`run` would do with each node now, what storage holds, and why."""
        records = None if self.storage is None else self.fingerprints()
        return self.make_plan(self.stored_metadata(records), records)

    def resume_actions(self, stored: dict[str, Any] | None = None) -> list[str]:
        """The action (RUN, REPLAY, LOAD or SKIP) of each node for a run starting now.

        Warns about what such a run would do with stored results: reuse stale ones
        under the ``"name"`` policy (StaleResultWarning), recompute unreadable ones
        (ResultRecomputedWarning). *stored*: what :meth:`stored_metadata` returned, if
        the caller has it.
        """
        plan = self.make_plan(self.stored_metadata() if stored is None else stored)
        self.warn_stale(plan)
        if plan.unreadable:
            self.warn_unreadable(plan.unreadable)
        return plan.actions

    def warn_stale(self, plan: Plan) -> None:
        """One StaleResultWarning for the stale results *plan* reuses; a node is named
        once per change (a later run of this object with the same code and arguments
        does not repeat it)."""
        fresh = []
        for name, why, digest in plan.stale:
            if (name, digest) not in self._warned_stale:
                self._warned_stale.add((name, digest))
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

    def warn_unreadable(self, unreadable: list[tuple[str, str]]) -> None:
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
        return svg_or_none(self)

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

    def node_metadata(self, i: int, record: dict | None = None) -> dict:
        """What is stored with node *i*'s result: its name, kind, function, inputs and,
        given the plan's *record* (``plan.record(i)``), its fingerprint."""
        g = self.graph
        node = g.nodes[i]
        owner = node.instance.func if type(node) is MethodNode else node.func
        meta: dict[str, Any] = {
            "node": g.names[i],
            "kind": node.kind,
            "function": f"{getattr(owner, '__module__', '?')}.{node.label}",
            "inputs": [g.names[p] for p in g.parents[i]],
        }
        if record is not None:
            meta["fingerprint"] = record
        return meta

    def node_task(self, i: int, *, save: bool, record: dict | None = None) -> NodeTask:
        """Node *i* as a task any executor runs: its plugin's driver-side hook runs now;
        with *save*, the task stores its value with the metadata and *record*, the
        plan's fingerprint record of the node (``plan.record(i)``).

        :raises ConfigurationError: *save* without *record*: a result stored without its
            fingerprint could never be verified (a later run recomputes it, or reuses it
            by name), so it is not stored that way.
        """
        g = self.graph
        name = g.names[i]
        if save and record is None:
            raise ConfigurationError(
                f"Node {name!r} of workflow {self.workflow_name!r}: a task that saves its result needs the "
                "plan's fingerprint record of the node (record=plan.record(i), from workflow.plan() or "
                "engine.plan_run); without it the stored result could never be verified."
            )
        node = g.nodes[i]
        plugin = self._plugins.get(i)
        parents = g.data_parents[i]
        if type(node) is MethodNode:  # the instance's object is passed on its own
            k = g.index_of(node.instance)
            parents = tuple(p for p in parents if p != k)
        return NodeTask(
            i,
            name,
            self.workflow_name,
            self.node_calls()[i],
            None if plugin is None else prepare(plugin, name),
            self.storage if save else None,
            self.node_metadata(i, record) if save else None,
            parents,
        )

    def run_node(self, i: int, results: Any, *, save: bool, record: dict | None = None) -> Any:
        """Run node *i* here: its plugin, its function (arguments from *results*, any
        mapping or sequence indexed by node position), and, if *save*, store the result
        with its metadata and fingerprint *record* (required then, see
        :meth:`node_task`). Errors name the node and the workflow.
        """
        return run_here(self, self.node_task(i, save=save, record=record), results)[0]

    def load_result(self, i: int) -> Any:
        """Read node *i*'s stored result.

        :raises CorruptedResultError: the stored result is damaged (recompute it).
        :raises StorageError: any other error, worded as every run words it (naming the
            node and the workflow: :func:`~functionfuse.engine.failure_error`); a storage
            error keeps its type, e.g. :class:`SerializationError` (intact but not
            loadable here; never overwrite it).
        """
        assert self.storage is not None, "load_result() needs storage"
        try:
            return self.storage.read_task(self.workflow_name, self.graph.names[i])
        except CorruptedResultError:
            raise
        except Exception as exc:
            raise failure_error(self, NodeFailure(i, "load", exc)) from exc

    def node_error(self, i: int, exc: BaseException) -> BaseException:
        """The error a run raises when node *i* raised *exc* (names the node and workflow)."""
        return failure_error(self, NodeFailure(i, "run", exc))

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
        # compiled calls hold the old function: rebuilt when next needed
        self._calls = None


#: how many nodes a summary warning names (with why) before "and N more"
_NAMED_IN_WARNINGS = 5


def _first_few(entries: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{name!r}: {why}" for name, why in entries[:_NAMED_IN_WARNINGS])
    rest = len(entries) - _NAMED_IN_WARNINGS
    return shown + (f"; and {rest} more" if rest > 0 else "")


def _signature_of(func: Any) -> str:
    try:
        return str(inspect.signature(func))
    except (TypeError, ValueError):
        return "(...)"


def select(wf: BaseWorkflow, pattern: str | None, method: str) -> Query:
    """A query of the nodes of *wf* whose whole name matches *pattern*, for *method* of
    the original API (``set_plugin``, ``log_nodes``) that backends implement. A function
    of the module, not a method: workflows are what users hold, and this is for backends.

    :raises ConfigurationError: *pattern* matches no node, as for :class:`Query`.
    """
    found = wf._find(pattern)
    if not found:
        names = wf.graph.names
        shown = ", ".join(map(repr, names[:_NAMES_SHOWN])) + (", ..." if len(names) > _NAMES_SHOWN else "")
        close = _close_names(pattern, names)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
        raise ConfigurationError(
            f"Pattern {pattern!r} matches no node of workflow {wf.workflow_name!r}, so {method}() would "
            f"set nothing. Its {len(names)} node{'' if len(names) == 1 else 's'} are named {shown}{hint} "
            f"{method}() matches whole names, as in the original functionfuse (re.fullmatch): "
            "'.*sum.*' selects the names that contain 'sum'."
        )
    return wf.query_class(found, wf, pattern)
