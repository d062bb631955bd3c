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

**Execution units** (:mod:`functionfuse.units`): a linear chain of function nodes
launched alike (same ``set_remote_args`` options, same plugin), or a group made with
``query(...).set_group(name)``, runs as **one** Ray task, named after its nodes. Its
arguments are the refs of the unit's outside parents, its returns the values needed
outside it (object refs only between units) plus a done token listing every node's
time; inside, values pass in the worker's memory. Each node's result is still stored
as soon as it is computed, and a failure still names its node (the nodes stored before
it are reported done). :meth:`RayWorkflow.fusion_key` keeps apart nodes whose Ray
options differ; class and method nodes (actors) never fuse. ``wf.set_fusion(False)``
goes back to one task per node; ``query(...).set_fusion(False)`` keeps some nodes
alone. When Ray retries a unit whose worker died (``max_retries``), the retry reads
back the nodes the attempt that died stored (this run's fingerprint, started after the
unit was submitted) and runs the rest.

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
from datetime import datetime, timezone
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

from ...baseworkflow import BaseWorkflow, select
from ...baseworkflow import Query as _BaseQuery
from ...engine import Completion, NodeFailure, NodeTask, UnitTask, execute, run_session
from ...planner import Plan
from ...query import targets
from ...workflow import ClassNode, MethodNode
from ._raytasks import (
    _Instance, _load_node, _run_node, _run_unit, actor_users, instance_values_needed, load_stored, pack_task, run_packed,
    stored_since,
)

#: what other Ray backends (the Ray Workflows addon) run in their tasks: a node task
#: pickled without the graph (pack_task), run where it lands (run_packed), and a
#: stored result read where the storage lives (load_stored)
__all__ = ["RayWorkflow", "Query", "pack_task", "run_packed", "load_stored"]

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
        indices = targets(self, "set_remote_args")
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


def _options_key(value: Any) -> Any:
    """A hashable form of Ray options, equal for equal options (dicts in any order)."""
    if isinstance(value, dict):
        return tuple(sorted((repr(k), _options_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_options_key(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


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
    fuses_units = True
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
        select(self, pattern, "set_plugin").set_plugin(plugin)

    def set_storage(self, object_storage: Any) -> None:
        """Set storage for the workflow.

        :param object_storage: Storage object (``kind: ray`` on a cluster; ``kind: file``
            works when every Ray node sees the same folder, e.g. on one machine).
        """
        super().set_storage(object_storage)

    def fusion_key(self, i: int) -> Any:
        """Nodes share a Ray task only when they are launched alike: the base key (the
        plugin; None for class and method nodes, which run in actors) and the node's
        ``set_remote_args`` options, compared by value."""
        base = super().fusion_key(i)
        if base is None:
            return None
        args = self._remote_args.get(i)
        return base if not args else (base, _options_key(args))

    # -- running --------------------------------------------------------------------------
    def run(self, return_results: bool = False, max_pending_tasks: int = 0) -> Any:
        """Start execution of the workflow.

        :param return_results: A flag if results for input nodes are returned
        :param max_pending_tasks: at most this many Ray tasks in flight at once (a node's,
            or an execution unit's; 0: no limit). Bounds the driver's memory on very
            large graphs.
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
        with run_session(self) as session:
            results = execute(self, _RayExecutor(self, max_pending_tasks, return_results), session)
        return self.outputs(results) if return_results else None

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


class _RayExecutor:
    """Submits node and unit tasks to Ray and learns of completions from their done tokens."""

    fuses = True  # a unit of several nodes is one Ray task
    in_process = False
    where: str | None = "Ray worker"
    loads_first = False  # loads are Ray tasks too, placed where the storage is

    def __init__(self, wf: RayWorkflow, max_pending: int, fetch: bool) -> None:
        self.wf = wf
        self.slots = max_pending
        self.fetch = fetch
        self.load_storage, self.load_options = _placement(wf.storage)
        self.run_id = uuid.uuid4().hex[:8]  # actor names are unique in Ray: these carry the run

    def start(self, plan: Plan) -> None:
        wf = self.wf
        n = len(plan)
        self.refs: list[Any] = [None] * n
        self.instances: dict[int, Any] = {}  # class node -> actor handle, while calls remain
        self.chain_tokens: dict[int, Any] = {}  # class node -> token of its latest call
        self.tokens: list[Any] = []  # in flight, oldest first
        self.owner: dict[Any, int] = {}
        #: tokens of unit tasks in flight (their value lists the unit's nodes): the unit, when submitted
        self.unit_tokens: dict[Any, tuple[UnitTask, datetime]] = {}
        self.functions: dict[int, Any] = {}  # id(function) -> (function, its pickle), for this run
        self.instance_value_needed = instance_values_needed(wf.graph, plan.actions)
        self.actor_users = actor_users(wf.graph, plan.actions)
        self.outputs = set(wf.graph.outputs)

    def _track(self, i: int, value: Any, token: Any) -> None:
        self.refs[i] = value
        self.tokens.append(token)
        self.owner[token] = i

    def load(self, i: int) -> None:
        name, wf = self.wf.graph.names[i], self.wf.workflow_name
        # every task carries its node's name (Ray's dashboard, ray list tasks, logs)
        value, token = _load_node.options(**self.load_options, name=f"{name} (load)").remote(
            i, name, wf, self.load_storage
        )
        self._track(i, value, token)

    def submit(self, task: NodeTask | UnitTask) -> None:
        if isinstance(task, UnitTask):
            self._submit_unit(task)
            return
        wf = self.wf
        g = wf.graph
        i, name, refs = task.index, task.name, self.refs
        spec = pack_task(task, self.functions)
        node = g.nodes[i]
        kind = type(node)
        if kind is MethodNode:
            k = g.index_of(node.instance)  # type: ignore[attr-defined]  # the object is in the actor
            args = [refs[p] if p == k else self._argument(p, name) for p in task.parents]
            value, token = self.instances[k].call.options(name=name).remote(spec, k, self.chain_tokens[k], *args)
            self.chain_tokens[k] = token
        elif kind is ClassNode:
            args = [self._argument(p, name) for p in task.parents]
            options = {"name": f"{name} (workflow {wf.workflow_name}, run {self.run_id})", **wf._remote_args.get(i, {})}
            actor = _Instance.options(**options).remote()
            value, token = actor.construct.options(name=name).remote(spec, i in self.instance_value_needed, *args)
            if i in self.actor_users:
                self.instances[i] = actor
                self.chain_tokens[i] = token
        else:
            args = [self._argument(p, name) for p in task.parents]
            fn = _run_node.options(**{"name": name, **wf._remote_args.get(i, {})})
            value, token = fn.remote(spec, *args)
        self._track(i, value, token)
        self._used((i,))

    def _argument(self, p: int, name: str) -> Any:
        """The ref to pass for parent *p* to a task submitted now: for a class node whose
        actor still has calls, the object as the calls submitted so far leave it."""
        actor = self.instances.get(p)
        if actor is None:
            return self.refs[p]
        return actor.snapshot.options(name=f"{name} (object {self.wf.graph.names[p]})").remote(self.chain_tokens[p])

    def _used(self, indices: Sequence[int]) -> None:
        """The nodes *indices* were submitted: let go of the actors no later node needs."""
        g, users = self.wf.graph, self.actor_users
        for i in indices:
            for k in set(g.data_parents[i]):
                left = users.get(k)
                if left is None or k not in self.instances:
                    continue
                users[k] = left - 1
                if left == 1:
                    if k in self.outputs:  # returned as the calls left it, as in one process
                        self.refs[k] = self._argument(k, "output")
                    del self.instances[k], self.chain_tokens[k]

    def _submit_unit(self, unit: UnitTask) -> None:
        """One Ray task for the unit's nodes: its arguments are the refs of the unit's
        outside parents, its returns the values of its exports and the done token."""
        refs = self.refs
        exports = unit.exports
        # every node of a unit has the same fusion key, so the same Ray options
        options = self.wf._remote_args.get(unit.index, {})
        fn = _run_unit.options(**{"name": unit.label(), **options, "num_returns": len(exports) + 1})
        submitted = datetime.now(timezone.utc)
        # a unit that saves learns when it was submitted: a retry goes on after what it stored
        since = submitted.isoformat() if unit.tasks[0].storage is not None else None
        label = unit.label()
        out = fn.remote(pack_task(unit, self.functions), since, *[self._argument(p, label) for p in unit.parents])
        if not exports:
            out = [out]
        for i, value in zip(exports, out):
            refs[i] = value
        token = out[-1]
        self.tokens.append(token)
        self.owner[token] = unit.index
        self.unit_tokens[token] = (unit, submitted)
        self._used(unit.indices)

    def release(self, indices: Sequence[int]) -> None:
        refs = self.refs
        for p in indices:
            refs[p] = None

    @property
    def pending(self) -> int:
        return len(self.tokens)

    def oldest(self) -> int | None:
        return self.owner[self.tokens[0]] if self.tokens else None

    def wait(self, count: int, timeout: float | None) -> list[Completion]:
        """Completions of the finished tokens (a node's token is its run time, None for
        a load; a unit's lists ``(index, seconds)`` of its nodes); a failed task reports
        the node and stage its worker saw, after the nodes of its unit done before it."""
        ready, self.tokens = ray.wait(self.tokens, num_returns=count, timeout=timeout, fetch_local=False)
        if not ready:
            return []
        owner, units = self.owner, self.unit_tokens
        try:
            values = ray.get(ready)
        except Exception:
            values = None
        done: list[Completion] = []
        if values is not None:
            for token, value in zip(ready, values):
                i = owner.pop(token)
                if units.pop(token, None) is not None:
                    done.extend(value)
                else:
                    done.append((i, value))
            return done
        for token in ready:
            i = owner.pop(token)
            unit = units.pop(token, None)
            try:
                value = ray.get(token)
            except RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, NodeFailure):
                    if cause.index in (unit[0].indices if unit is not None else (i,)):
                        done.extend(cause.done)  # a unit's nodes stored before the failing one
                    # else: an input's task failed and Ray passed its error on (counted there)
                    done.append(cause)
                else:
                    done.append(NodeFailure(i, "run", cause if isinstance(cause, BaseException) else err, str(err)))
            except Exception as err:  # the worker or actor died, the task was cancelled...
                if unit is None:
                    done.append(NodeFailure(i, "system", err, str(err)))
                else:
                    done.extend(self._crashed(*unit, err))
            else:
                if unit is not None:
                    done.extend(value)
                else:
                    done.append((i, value))
        return done

    def _crashed(self, unit: UnitTask, submitted: datetime, err: Exception) -> list[Completion]:
        """The process running *unit* died (killed, out of memory...): no NodeFailure
        came back to say how far it got, but each node stored its result as it went.
        The nodes stored by this task (this run's fingerprint, started after the unit was
        submitted) are done; the failure is the first node that is not."""
        tasks = unit.tasks
        storage = self.wf.storage
        stored: dict[str, Any] = {}
        if storage is not None and tasks[0].storage is not None:
            try:
                stored = storage.read_metadata_many(self.wf.workflow_name, [t.name for t in tasks])
            except Exception:  # storage unreachable too: the unit's first node is named
                log.debug("cannot read what unit %r stored", unit.label(), exc_info=True)
        done: list[Completion] = []
        for t in tasks:
            meta = stored.get(t.name)
            if not stored_since(meta, t.meta, submitted):
                break
            done.append((t.index, cast(dict, meta).get("duration_s")))
        failed = tasks[len(done)].index if len(done) < len(tasks) else unit.index
        return [*done, NodeFailure(failed, "system", err, str(err))]

    def results(self, outputs: Sequence[int]) -> dict[int, Any]:
        if not self.fetch:
            return {}
        wanted = sorted(set(outputs))
        return dict(zip(wanted, ray.get([self.refs[o] for o in wanted])))


def _placement(storage: Any) -> tuple[Any, dict]:
    """The storage object to use inside a task that reads a stored result, and the Ray
    options that place that task where the storage lives."""
    if storage is None:
        return None, {}
    placed = storage.placement()
    return (storage, {}) if placed is None else (placed.storage, placed.options)

