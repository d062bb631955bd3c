"""RayWorkflow: run a DAG on Ray, a local Ray or a cluster.

The driver walks the resume plan (see :mod:`functionfuse.baseworkflow`) in
topological order and submits one Ray task per node that runs or loads; it never
fetches a node's value. Each submission returns two object refs:

* the node's **value**, which is passed as a top-level argument to the tasks of its
  children (Ray resolves it where they run: values go from worker to worker);
* a tiny **done token**, which the driver waits on to bound the number of tasks in
  flight (``max_pending_tasks``) and to learn about failures without fetching values.

A function node is a task of :func:`_run_node`: it rebuilds ``{parent index: value}``
from its arguments and calls the node's compiled function (so nodes inside lists and
dicts, keywords and ``node[i]`` items resolve as in every backend). A class node is an
actor (``_Instance`` in :mod:`._raytasks`): the constructor call creates the object in it and each
method call is an actor task, submitted in chain order and given the previous call's
token, so calls run in order and a failed call fails the calls after it. A stored node
that is needed is read by a task placed where the storage lives.

With storage, a node's result is saved by the task that computed it, as soon as it is
computed (a ``ray`` storage writes on its storage node): nothing goes through the
driver, and a crash of the driver or of a worker loses only unfinished nodes. When a
node fails, no new task is submitted; the tasks in flight finish (and are stored), then
:meth:`RayWorkflow.run` raises :class:`~functionfuse.errors.NodeExecutionError` naming
the node and carrying the remote traceback (a ``SerializationError`` or ``StorageError``
if its result could not be stored); the run's report names it too (``last_run.failed``).
A node that raises ``KeyboardInterrupt`` or ``SystemExit`` in a worker fails the run
like any error; Ctrl-C in the driver interrupts it.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Callable, Sequence, cast

from . import _rayclient
from ...errors import (
    ConfigurationError,
    CorruptedResultError,
    NodeExecutionError,
    SerializationError,
    StorageError,
    missing_dependency,
)

try:
    import ray
    from ray.exceptions import RayTaskError
except ImportError as _exc:  # pragma: no cover - exercised in an environment without ray
    raise missing_dependency("ray", "ray", _exc) from _exc

from ...baseworkflow import LOAD, RUN, RUNS, SKIP, BaseWorkflow, DamagedResult
from ...baseworkflow import Query as _BaseQuery
from ...workflow import ClassNode, MethodNode
from ..plugins import prepare
from ._raytasks import _Instance, _load_node, _NodeFailure, _pack, _run_node

__all__ = ["RayWorkflow", "Query"]

log = logging.getLogger("functionfuse.ray")

#: options that would break the one-call-at-a-time order of an instance's methods
_ACTOR_ORDER_OPTIONS = frozenset({"max_concurrency", "concurrency_groups", "allow_out_of_order_execution"})


class Query(_BaseQuery):
    """The nodes of a workflow whose names match a pattern; sets options on them."""

    workflow: "RayWorkflow"

    def set_remote_args(self, args: dict) -> "Query":
        """Set arguments for 'remote' function in Ray calls. Used to assign resources to remote functions calls.

        :param args: Dictionary with arguments of a remote call (``num_cpus``,
            ``num_gpus``, ``resources``, ``memory``, ``max_retries``,
            ``retry_exceptions``, ``scheduling_strategy``...): the options of
            ``ray.remote`` for a function node, of the actor for a class node. A
            method call runs in its instance's actor: set resources on the constructor
            node. A later call replaces the arguments of the nodes it matches.
        :type args: dict
        """
        indices = self._targets("set_remote_args")
        if not isinstance(args, dict):
            raise ConfigurationError(f"set_remote_args takes a dict of ray.remote options, got {args!r}.")
        if "num_returns" in args:
            raise ConfigurationError(
                "set_remote_args: 'num_returns' is managed by RayWorkflow (a node returns one value); "
                "return a tuple and index the node instead (node[0], node[1])."
            )
        g = self.workflow.graph
        for i in indices:
            kind = type(g.nodes[i])
            if kind is ClassNode:
                bad = sorted(_ACTOR_ORDER_OPTIONS & set(args))
                if bad:
                    raise ConfigurationError(
                        f"set_remote_args: {bad!r} cannot be set on class node {g.names[i]!r}: the "
                        "method calls of an instance run one at a time, in the order they were written."
                    )
                _check_options(_Instance.options, args, g.names[i], "actor")
            elif kind is not MethodNode:
                _check_options(_run_node.options, args, g.names[i], "task")
        shared = dict(args)  # one object for the query: one set of Ray options per query
        for i in indices:
            self.workflow._remote_args[i] = shared
        return self


def _check_options(options: Callable[..., Any], args: dict, name: str, what: str) -> None:
    try:
        options(**args)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"set_remote_args: invalid Ray {what} options for node {name!r}: {exc}") from None


class RayWorkflow(BaseWorkflow):
    """A Backend to run workflows on Ray engine. The storage for this class could be created by functionfuse.storage.storage_factory.

    :param nodes: A list of DAG nodes. The backend finds all DAG roots that are
        ancestors of the nodes and executes graph starting from that roots traversing
        all descendend nodes.
    :param workflow_name: A name of the workflow that is used by storage classes.
    :param ray_init_args: A dictionary with parameters for Ray init. ``ray.init`` is
        called with them unless Ray is already initialised in this process (then they
        are ignored). ``{"address": "auto"}`` or ``{"address": "host:port"}`` connects
        to a running cluster.
    :type ray_init_args: dict

    Example (``dataset`` is a node)::

        ray_workflow = RayWorkflow(dataset, workflow_name="classifier",
                                   ray_init_args={"resources": {"_disk": 1.0}})
        ray_workflow.set_storage(storage_factory(
            {"kind": "ray", "options": {"remoteArgs": {"resources": {"_disk": 0.001}}, "path": "storage"}}))
        ray_workflow.query(pattern="^model$").set_remote_args({"num_cpus": 1})
        ray_workflow.run()
    """

    query_class = Query
    #: the progress line counts tasks handed to Ray and not finished (queued, running or loading)
    progress_running_label = "in flight"

    def __init__(self, *nodes: Any, workflow_name: str, ray_init_args: dict | None = None) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        if ray_init_args is not None and not isinstance(ray_init_args, dict):
            raise ConfigurationError(f"ray_init_args must be a dict of ray.init arguments, got {ray_init_args!r}.")
        self._remote_args: dict[int, dict] = {}
        if ray.is_initialized():
            if ray_init_args:
                log.info("Ray is already initialised: ray_init_args %r are not used", ray_init_args)
        else:
            _rayclient.init_ray(ray_init_args or {})  # ray:// with other versions: VersionMismatchError

    def query(self, pattern: str | None = None) -> Query:
        """Query nodes of the graph by regexp pattern.

        :param pattern: regexp pattern to match node names. If None returns all nodes.
        :type pattern: Optional[str]
        :return: Query object (its setters refuse a query that matches no node)
        """
        return cast(Query, super().query(pattern))  # the base builds self.query_class, this Query

    def set_plugin(self, pattern: str | None, plugin: Any) -> None:
        """Apply *plugin* to the nodes whose whole name matches the regular expression
        *pattern* (``re.fullmatch``, as :meth:`find_nodes`; ``None``: every node).

        The original functionfuse's form of ``query(pattern).set_plugin(plugin)``, whose
        pattern may match a part of a name (``re.search``).
        """
        self._select(pattern, "set_plugin").set_plugin(plugin)

    def set_storage(self, object_storage: Any) -> None:
        """Set storage for the workflow.

        :param object_storage: Storage object (``kind: ray`` on a cluster; ``kind: file``
            works when every Ray node sees the same folder, e.g. on one machine).
        """
        super().set_storage(object_storage)

    # -- running --------------------------------------------------------------------------
    def run(self, return_results: bool = False, max_pending_tasks: int = 0) -> Any:
        """Start execution of the workflow.

        :param return_results: A flag if results for input nodes are returned
        :param max_pending_tasks: at most this many node tasks in flight at once (0: no
            limit). Bounds the driver's memory on very large graphs.
        :return: A list of results for input nodes or a single result if a single node
            is used in initialization of the class object (with ``return_results``;
            otherwise None, once every node has finished and is stored).
        :raises NodeExecutionError: a node failed; results stored before stay stored.
        """
        if isinstance(max_pending_tasks, bool) or not isinstance(max_pending_tasks, int) or max_pending_tasks < 0:
            raise ConfigurationError(f"max_pending_tasks must be an int >= 0 (0: no limit), got {max_pending_tasks!r}.")
        if not ray.is_initialized():
            raise ConfigurationError(
                "Ray is not initialised (was ray.shutdown() called?). Create the RayWorkflow again, "
                "or call ray.init(...) before run()."
            )
        self._check_method_args()
        started = time.perf_counter()
        report, progress = self.start_run()
        try:
            results = self._run(report, progress, max_pending_tasks, return_results)
        except BaseException as exc:
            self.finish_run(report, progress, started, exc)
            raise
        self.finish_run(report, progress, started)
        return self.outputs(results) if return_results else None

    def _run(self, report: Any, progress: Any, max_pending: int, fetch: bool) -> dict[int, Any]:
        names = self.graph.names
        stored = self._stored()
        damaged: set[str] = set()
        for attempt in range(len(names) + 1):
            if attempt == 0:
                actions = self.resume_actions(stored)
                report.recomputed += self.unreadable_count(stored)
            else:
                # what this run stored before the damage was found is loaded, not run again
                stored = self._stored()
                assert stored is not None
                for name in damaged:
                    stored.pop(name, None)
                actions = self._actions(stored)[0]
            try:
                return self._execute(actions, report, progress, max_pending, fetch)
            except DamagedResult as d:
                self.drop_damaged(stored, d.index, d.error, report)
                damaged.add(names[d.index])
        raise self.too_many_damaged()

    def _execute(self, actions: list[str], report: Any, progress: Any, max_pending: int, fetch: bool) -> dict[int, Any]:
        g = self.graph
        n = len(g)
        nodes, names, data_parents, wf = g.nodes, g.names, g.data_parents, self.workflow_name
        calls = self.node_calls()
        frees = self.release_schedule(actions)
        storage = self.storage
        load_storage, load_options = _placement(storage)
        remote_args = self._remote_args
        instance_value_needed = self._instance_values_needed(actions)
        last_in_chain = self._last_running_calls(actions)
        run_id = uuid.uuid4().hex[:8]  # actor names are unique in Ray: these carry the run
        functions: dict[int, Any] = {}  # id(function) -> (function, its pickle), for this run

        refs: list[Any] = [None] * n
        instances: dict[int, Any] = {}  # class node -> actor handle, while calls remain
        chain_tokens: dict[int, Any] = {}  # class node -> token of its latest call
        pending: list[Any] = []
        owner: dict[Any, int] = {}
        failures: list[_Failure] = []
        index_of = g.index_of
        batch = max(1, max_pending // 10)
        report.loaded = report.skipped = 0

        for i in range(n):
            action = actions[i]
            if action == SKIP:
                report.skipped += 1
                continue
            if max_pending and len(pending) >= max_pending:
                ready, pending = ray.wait(pending, num_returns=min(batch, len(pending)), fetch_local=False)
                self._check(ready, owner, actions, failures, report, progress)
                progress.running = len(pending)
                progress.oldest = names[owner[pending[0]]] if pending else None
                progress.update()
                if failures:
                    break
            name = names[i]
            if action == LOAD:
                # every task carries its node's name (Ray's dashboard, ray list tasks, logs)
                value, token = _load_node.options(**load_options, name=f"{name} (load)").remote(
                    i, name, wf, load_storage
                )
            else:
                save = storage is not None and action == RUN  # a replayed node is stored already
                node = nodes[i]
                kind = type(node)
                if kind is MethodNode:
                    k = index_of(node.instance)  # type: ignore[attr-defined]  # the object is in the actor
                    parents = tuple(p for p in data_parents[i] if p != k)
                else:
                    parents = data_parents[i]
                spec = _pack(
                    (
                        i,
                        name,
                        wf,
                        calls[i],
                        _prepare_plugin(self._plugins.get(i), name),
                        storage if save else None,
                        self.node_metadata(i) if save else None,
                        parents,
                    ),
                    functions,
                )
                if kind is MethodNode:
                    value, token = instances[k].call.options(name=name).remote(
                        spec, k, chain_tokens[k], *[refs[p] for p in parents]
                    )
                    chain_tokens[k] = token
                    if last_in_chain.get(k) == i:
                        del instances[k], chain_tokens[k]
                elif kind is ClassNode:
                    args = remote_args.get(i)
                    actor = _Instance.options(**{"name": f"{name} (workflow {wf}, run {run_id})", **(args or {})}).remote()
                    value, token = actor.construct.options(name=name).remote(
                        spec, i in instance_value_needed, *[refs[p] for p in parents]
                    )
                    if last_in_chain.get(i) is not None:
                        instances[i] = actor
                        chain_tokens[i] = token
                else:
                    fn = _run_node.options(**{"name": name, **remote_args.get(i, {})})
                    value, token = fn.remote(spec, *[refs[p] for p in parents])
            refs[i] = value
            pending.append(token)
            owner[token] = i
            for p in frees[i]:
                refs[p] = None

        instances.clear()
        chain_tokens.clear()
        # wait for everything in flight, also after a failure: what finishes is stored
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.25, fetch_local=False)
            self._check(ready, owner, actions, failures, report, progress)
            progress.running = len(pending)
            progress.oldest = names[owner[pending[0]]] if pending else None
            progress.update()
        if failures:
            self._raise(failures, report)
        if not fetch:
            return {}
        wanted = sorted(set(g.outputs))
        return dict(zip(wanted, ray.get([refs[o] for o in wanted])))

    # -- helpers of _execute ----------------------------------------------------------------
    def _instance_values_needed(self, actions: Sequence[str]) -> set[int]:
        """Class nodes whose object itself is needed (an output, or an argument of a node
        other than its own method calls): only those send the object back from the actor."""
        g = self.graph
        outputs = set(g.outputs)
        needed: set[int] = set()
        for k, node in enumerate(g.nodes):
            if type(node) is not ClassNode:
                continue
            if k in outputs:
                needed.add(k)
                continue
            for c in g.children[k]:
                if actions[c] in RUNS and k in g.data_parents[c]:
                    child = g.nodes[c]
                    if type(child) is not MethodNode or child.instance is not node:
                        needed.add(k)
                        break
        return needed

    def _last_running_calls(self, actions: Sequence[str]) -> dict[int, int]:
        last: dict[int, int] = {}
        for k, chain in self.graph.chains.items():
            if actions[k] in RUNS:
                running = [j for j in chain if actions[j] in RUNS]
                if running:
                    last[k] = running[-1]
        return last

    def _check_method_args(self) -> None:
        """Before anything runs: a method call runs in its instance's actor, so it can
        carry no Ray options of its own (only the same ones as its constructor)."""
        g = self.graph
        for i, args in self._remote_args.items():
            node = g.nodes[i]
            if type(node) is not MethodNode:
                continue
            k = g.index_of(node.instance)
            own = self._remote_args.get(k, {})
            extra = sorted(key for key, v in args.items() if own.get(key) != v)
            if extra:
                raise ConfigurationError(
                    f"Node {g.names[i]!r} is a method call on class node {g.names[k]!r} and runs in that "
                    f"instance's actor, so Ray options {extra!r} cannot be set on it. Set them on the "
                    f"constructor node: query('^{g.names[k]}$').set_remote_args(...)."
                )

    def _check(
        self, ready: list, owner: dict, actions: Sequence[str], failures: list, report: Any, progress: Any
    ) -> None:
        """Count the finished tokens (a token is the node's run time) and record failures."""
        if not ready:
            return
        names = self.graph.names
        try:
            times = ray.get(ready)
        except Exception:
            times = None
        if times is not None:
            for token, seconds in zip(ready, times):
                self._count(owner.pop(token), seconds, actions, report, progress, names)
            return
        for token in ready:
            i = owner.pop(token)
            try:
                seconds = ray.get(token)
            except RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, _NodeFailure):
                    failures.append(_Failure(cause.index, cause.stage, cause.error, cause.tb, err))
                else:
                    failures.append(_Failure(i, "run", cause if isinstance(cause, BaseException) else err, str(err), err))
            except Exception as err:  # the worker or actor died, the task was cancelled...
                failures.append(_Failure(i, "system", err, str(err), err))
            else:
                self._count(i, seconds, actions, report, progress, names)

    @staticmethod
    def _count(i: int, seconds: Any, actions: Sequence[str], report: Any, progress: Any, names: Sequence[str]) -> None:
        if actions[i] == LOAD:
            report.loaded += 1
        else:
            report.ran += 1
            report.record(names[i], seconds)
            progress.node_finished(names[i], seconds)  # the driver does not see nodes start

    def _raise(self, failures: list["_Failure"], report: Any) -> None:
        """Raise the error of the first failed node in topological order (a damaged
        stored result first: it is recomputed, the run goes on), naming it in *report*."""
        names, wf = self.graph.names, self.workflow_name
        for f in sorted(failures, key=lambda f: f.index):
            if f.stage == "load" and isinstance(f.error, CorruptedResultError):
                raise DamagedResult(f.index, f.error)
        f = min(failures, key=lambda f: f.index)
        name = names[f.index]
        report.failed = name  # whatever the stage: run, save, load or a crashed worker
        if f.stage == "load":
            if isinstance(f.error, SerializationError):
                raise SerializationError(f"Stored result of node {name!r} cannot be loaded: {f.error}") from f.error
            raise f.error
        if f.stage == "save":
            kind = SerializationError if isinstance(f.error, SerializationError) else StorageError
            raise kind(
                f"Result of node {name!r} of workflow {wf!r} could not be stored "
                f"(results stored before it are kept): {f.error}"
            ) from f.error
        if f.stage == "system":
            err = NodeExecutionError(
                f"Node {name!r} of workflow {wf!r} failed on Ray: {type(f.error).__name__}: {f.error}",
                node_name=name,
                workflow_name=wf,
            )
            raise err from f.error
        base = self.node_error(f.index, f.error)
        err = NodeExecutionError(
            f"{base}\n\nRemote traceback (Ray worker):\n{f.tb.rstrip()}", node_name=name, workflow_name=wf
        )
        raise err from f.error


# -- the driver's view of failures ---------------------------------------------------------
class _Failure:
    __slots__ = ("index", "stage", "error", "tb", "ray_error")

    def __init__(self, index: int, stage: str, error: BaseException, tb: str, ray_error: BaseException) -> None:
        self.index, self.stage, self.error, self.tb, self.ray_error = index, stage, error, tb, ray_error


def _placement(storage: Any) -> tuple[Any, dict]:
    """The storage object to use inside a task that reads a stored result, and the Ray
    options that place that task where the storage lives."""
    if storage is None:
        return None, {}
    placed = getattr(storage, "ray_placement", None)
    return placed() if placed is not None else (storage, {})


def _prepare_plugin(plugin: Any, name: str) -> Callable[[], Any] | None:
    return None if plugin is None else prepare(plugin, name)
