"""PrefectWorkflow: the DAG as a real Prefect flow, one Prefect task per execution unit.

:meth:`PrefectWorkflow.generate_flow` compiles the graph into a ``prefect.Flow``
(kept in :attr:`PrefectWorkflow.flow`, usable for deployments); :meth:`run` calls it.
What one run of the flow does:

The flow's body is the run engine (:mod:`functionfuse.engine`) with the executor
below, as for every backend:

1. **Plan.** The plan (:mod:`functionfuse.planner`): each node runs, is replayed (a
   stored class-node call re-run to rebuild the instance, not saved again), is loaded
   from storage, or is skipped. The plan is made when the flow runs, so a deployed flow
   resumes from whatever is stored at that moment.
2. **Load and submit**, in topological order. A stored result that a running node or
   the output needs is read in the flow. The running nodes are submitted by execution
   unit (:mod:`functionfuse.units`): a linear chain of nodes launched alike (same task
   options, same plugin) is one Prefect task that runs its nodes in order, whose task
   and task-run name list the nodes (``"a, b, c"``, or ``"a, b, ... z (40 nodes)"``);
   any other node is its own task, named after it. Values are passed as Prefect futures
   (a unit's future holds the values its nodes export), so the dependencies are
   Prefect's own and independent units run concurrently on the flow's task runner; a
   method call of a class node also waits for the previous call on the same instance.
   Each node's result is saved to functionfuse storage as soon as the node has run,
   inside a unit too. A unit's task takes its nodes' task options (they are equal, or
   the nodes would not share a task), with ``timeout_seconds`` counted per node (the
   unit gets the sum); a retry runs the whole unit again. ``set_fusion(False)`` gives
   one task per node, as before units.
3. **Collect.** The flow waits for every task. A damaged stored result is reported
   (``ResultRecomputedWarning``) and the plan is made again, so that node runs, as in
   ``LocalWorkflow``. If a node failed, the flow raises the error of the first failed
   node in topological order (a :class:`NodeExecutionError` naming the node and
   workflow), after every independent branch has finished and been stored. Otherwise
   it returns the outputs, like ``LocalWorkflow.run``.

Results travel between tasks in memory, so class nodes (whose instance is shared by
its method calls) need an in-process task runner: the default ``ThreadPoolTaskRunner``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence, cast

from ...baseworkflow import BaseWorkflow, select
from ...baseworkflow import Query as BaseQuery
from ...engine import NodeFailure, execute, failure_error, run_here, run_session
from ...errors import ConfigurationError, FunctionFuseError, NodeExecutionError, missing_dependency
from ...query import targets

try:
    import prefect
    from prefect.cache_policies import NO_CACHE, CachePolicy
    from prefect.context import FlowRunContext
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise missing_dependency("prefect", "prefect", _exc) from _exc

from ._prefectrun import _CURRENT_RUN, _PrefectExecutor, _RunState, _UnitProgress, _values

__all__ = ["PrefectWorkflow", "Query"]

#: options of ``prefect.task`` / ``prefect.flow`` (all but the function itself)
_TASK_OPTIONS = frozenset(p for p in inspect.signature(prefect.Task.__init__).parameters if p not in ("self", "fn"))
_FLOW_OPTIONS = frozenset(p for p in inspect.signature(prefect.Flow.__init__).parameters if p not in ("self", "fn"))
#: task options that mean the user configured Prefect's own caching or result persistence
_CACHE_OPTIONS = frozenset(
    {"cache_policy", "cache_key_fn", "cache_expiration", "refresh_cache", "persist_result", "result_storage",
     "result_storage_key", "result_serializer"}
)


def _check_options(options: Any, allowed: frozenset, what: str, method: str) -> dict:
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"{method} takes a dict of {what} options, not {type(options).__name__} {options!r}."
        )
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise ConfigurationError(
            f"{method}: {', '.join(repr(k) for k in unknown)} "
            f"{'is not an option' if len(unknown) == 1 else 'are not options'} of {what} "
            f"(prefect {prefect.__version__}). Valid options: {', '.join(sorted(allowed))}."
        )
    return dict(options)


class Query(BaseQuery):
    """The nodes of a workflow whose names match a pattern; sets options on them."""

    workflow: "PrefectWorkflow"

    def set_task_args(self, args: Mapping[str, Any]) -> "Query":
        """Set arguments for task definition in Prefect.

        :param args: keyword arguments of ``prefect.task`` for these nodes, e.g.
            ``{"retries": 2, "retry_delay_seconds": 1, "tags": ["gpu"],
            "timeout_seconds": 600}``. Calls add up: a later call (or query) overrides
            earlier ones only for the keys it sets.
        :returns: this query.
        """
        indices = targets(self, "set_task_args")
        opts = _check_options(args, _TASK_OPTIONS, "prefect.task", "set_task_args")
        task_args = self.workflow._task_args
        for i in indices:
            task_args[i] = {**task_args.get(i, {}), **opts}
        self.workflow._options_changed()
        return self


class PrefectWorkflow(BaseWorkflow):
    """A backend to run workflows through Prefect.

    :param nodes: DAG nodes. The backend finds all DAG roots that are ancestors of the
        nodes and runs the graph from those roots through every descendant.
    :param workflow_name: the name of the workflow, used by storage and as the default
        name of the Prefect flow.

    Each execution unit is a Prefect task: a linear chain of nodes with the same task
    options runs as one task whose name lists its nodes, any other node as a task named
    after it (``set_fusion(False)``: one task per node; ``query(...).set_group(name)``:
    nodes run as one task). With storage set (:meth:`set_storage`) every node's result
    is saved as soon as the node has run, and a later run loads stored results instead
    of running their nodes.
    """

    query_class = Query
    fuses_units = True

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        self._task_args: dict[int, dict[str, Any]] = {}
        self._flow_options: dict[str, Any] = {}
        #: the generated ``prefect.Flow`` (see :meth:`generate_flow`)
        self.flow: Any = None
        #: the Prefect task of each node, by node name (set by :meth:`generate_flow`; each
        #: made when first used): what a node runs as when it is not fused with others
        self.tasks: Mapping[str, Any] = {}
        self._flow_current = False
        #: id of the Prefect flow run of the last :meth:`run` (or of the last run of :attr:`flow`)
        self.last_flow_run_id: Any = None

    # -- configuration ---------------------------------------------------------------
    def query(self, pattern: str | None = None) -> Query:
        """Query nodes of the graph by regexp pattern (``re.search``; ``None``: every node).

        :returns: a :class:`Query`; its :meth:`Query.set_task_args` sets Prefect task options
            (and refuses a query that matches no node).
        """
        return cast(Query, super().query(pattern))  # the base builds self.query_class, this Query

    def set_plugin(self, query: str | None, plugin: Any) -> None:
        """Apply *plugin* to the nodes whose whole name matches the regular expression
        *query* (``re.fullmatch``, as :meth:`find_nodes`; ``None``: every node). Its
        hooks run in the node's task, right before the node's function.

        The original functionfuse's form of ``query(pattern).set_plugin(plugin)``, whose
        pattern may match a part of a name (``re.search``). (The original stored the
        plugin but never ran it on Prefect; here it runs, as on every backend.)
        """
        select(self, query, "set_plugin").set_plugin(plugin)

    def set_prefect_flow_options(self, options: Mapping[str, Any]) -> None:
        """Set the options of the generated Prefect flow (any ``prefect.flow`` argument).

        E.g. ``{"task_runner": ThreadPoolTaskRunner(max_workers=4), "log_prints": True,
        "name": "nightly", "retries": 1}``. The name defaults to the workflow name. The
        options replace those set before; the flow is generated again on the next
        :meth:`generate_flow` or :meth:`run`.
        """
        self._flow_options = _check_options(options, _FLOW_OPTIONS, "prefect.flow", "set_prefect_flow_options")
        self._options_changed()

    def _options_changed(self) -> None:
        self._flow_current = False

    def fusion_key(self, i: int) -> Hashable | None:
        """Nodes share a Prefect task only when they are launched alike: the base key (the
        plugin; None for class and method nodes) and the node's ``set_task_args``
        options, compared by value (an option value that cannot be compared by value,
        such as a cache policy object, by identity: set it on the nodes in one call)."""
        base = super().fusion_key(i)
        if base is None:
            return None
        args = self._task_args.get(i)
        return base if not args else (base, _options_key(args))

    # -- compiling ---------------------------------------------------------------------
    def generate_flow(self) -> Any:
        """Create the Prefect flow of this workflow, store it in :attr:`flow`, and return it.

        Calling the flow runs the workflow (with resume from storage) and returns what
        :meth:`run` returns. Separate from :meth:`run` so the flow can be deployed: bind
        it to a module-level name (``flow = wf.generate_flow()``) and use that as the
        deployment's entrypoint (``my_pipeline.py:flow``).
        """
        g = self.graph
        tasks = _Tasks(self)
        options = {
            "name": self.workflow_name,
            "description": f"functionfuse workflow {self.workflow_name!r} ({len(g)} nodes)",
            **self._flow_options,
        }
        run_flow = self._run_flow

        def functionfuse_flow() -> Any:
            return run_flow(tasks)

        try:
            self.flow = prefect.flow(functionfuse_flow, **options)
        except Exception as exc:
            raise ConfigurationError(
                f"Prefect refused the flow of workflow {self.workflow_name!r}: {exc}. "
                "Fix the options given to set_prefect_flow_options() (a flow name may be set "
                "with {'name': ...})."
            ) from exc
        self.tasks = tasks
        self._flow_current = True
        return self.flow

    def _make_task(self, i: int) -> Any:
        """The Prefect task of node *i*: its body runs the node through the core."""
        g = self.graph
        name = g.names[i]
        keys = tuple((j, g.names[j]) for j in g.data_parents[i])
        wf = self

        def run_functionfuse_node(inputs: dict, save: bool, fingerprint: str | None = None) -> Any:
            # *fingerprint* is not used here: it puts what else determines the result (the
            # node's code and constant arguments) into the parameters Prefect caches by
            run = _CURRENT_RUN.get()
            if run is None:  # not in a flow run of this workflow's (a task run elsewhere)
                values = {j: inputs[k] for j, k in keys}
                record = wf.make_plan(wf.stored_metadata()).record(i) if save else None
                return wf.run_node(i, values, save=save, record=record)
            task, where = run.jobs[i]
            values = _values(inputs, where)
            run.started(name)
            try:
                value, seconds = run_here(wf, task, values)
            except BaseException:
                run.failed_at(name)  # KeyboardInterrupt, SystemExit stop the flow here
                raise
            run.seconds[i] = seconds
            return value

        return self._prefect_task(run_functionfuse_node, name, (i,))

    def _make_unit_task(self, indices: tuple[int, ...], label: str) -> Any:
        """The Prefect task of the execution unit of nodes *indices*: its body runs the
        unit's nodes in order through the core."""
        first, wf = indices[0], self

        def run_functionfuse_unit(inputs: dict, save: bool, fingerprint: str | None = None) -> Any:
            run = _CURRENT_RUN.get()
            if run is None:
                raise ConfigurationError(
                    f"The Prefect task {label!r} runs an execution unit of workflow {wf.workflow_name!r} and "
                    "only runs inside that workflow's flow (wf.flow or wf.run()); use wf.tasks[name] for one node."
                )
            unit, where = run.jobs[first]
            names = wf.graph.names
            progress = run.units[first] = _UnitProgress()
            try:
                exports, done = unit.run(_values(inputs, where))
            except NodeFailure as f:
                run.failures[first] = f
                run.failed_at(names[f.index])
                raise failure_error(wf, f) from f.error  # worded as run_here words a node's error
            except BaseException as exc:
                # stopped from outside the node (a Prefect timeout cancels the thread;
                # KeyboardInterrupt, SystemExit stop the flow here): the node in progress failed
                failed = first if progress.current is None else progress.current
                run.failures[first] = NodeFailure(failed, "run", exc, done=progress.done)
                run.failed_at(names[failed])
                raise
            run.seconds.update(done)
            return exports

        return self._prefect_task(run_functionfuse_unit, label, indices)

    def _prefect_task(self, fn: Callable[..., Any], name: str, indices: Sequence[int]) -> Any:
        """A Prefect task running *fn*, named *name*, with the task options of the nodes
        *indices* (equal: nodes with other options are never fused; a timeout is per node)."""
        # a function per task: Prefect derives each task's key from its function's name
        fn.__name__ = fn.__qualname__ = name
        options: dict[str, Any] = {"name": name, "task_run_name": _constant(name)}
        user = self._task_args.get(indices[0], {})
        cached = bool(_CACHE_OPTIONS.intersection(user))
        if not cached:
            # functionfuse storage does the resuming; Prefect's input hashing would only cost
            options["cache_policy"] = NO_CACHE
        options.update(user)
        if len(indices) > 1 and options.get("timeout_seconds") is not None:
            options["timeout_seconds"] = options["timeout_seconds"] * len(indices)
        policy = options.get("cache_policy")
        if isinstance(policy, CachePolicy) and policy is not NO_CACHE:
            # every node's task has the same function: TASK_SOURCE alone, say, would give
            # all nodes one key; the node's fingerprint is its code and constant arguments
            options["cache_policy"] = policy + _NODE_FINGERPRINT
        what = f"node {name!r}" if len(indices) == 1 else f"nodes {name}"
        try:
            task: Any = prefect.task(fn, **options)
        except Exception as exc:
            raise ConfigurationError(
                f"Prefect refused the task options {user!r} of {what}: {exc}. "
                "Fix them with query(...).set_task_args({...})."
            ) from exc
        #: Prefect caches this task's result: its runs get the nodes' fingerprints as a parameter
        task.functionfuse_cached = cached
        return task

    # -- running -------------------------------------------------------------------------
    def run(self) -> Any:
        """Start execution of the workflow as a Prefect flow run.

        Generates the flow first if it is missing or the options changed. Without a
        Prefect server configured (``PREFECT_API_URL``), Prefect starts a temporary
        local one.

        :returns: the result of the single node given to the constructor, or a list of
            results for several.
        :raises NodeExecutionError: a node failed; results stored before stay stored.
        """
        if self.flow is None or not self._flow_current:
            self.generate_flow()
        return self.flow()

    def _run_flow(self, tasks: "_Tasks") -> Any:
        """The body of the flow (runs inside a Prefect flow run)."""
        with run_session(self) as session:
            ctx = FlowRunContext.get()
            if ctx is not None and ctx.flow_run is not None:
                self.last_flow_run_id = ctx.flow_run.id
            self.node_calls()  # compile argument resolution once, before tasks use it in threads
            run = _RunState(session.report, session.progress)
            token = _CURRENT_RUN.set(run)
            try:
                results = execute(self, _PrefectExecutor(self, tasks, run), session)
            finally:
                _CURRENT_RUN.reset(token)
        return self.outputs(results)

    def _cache_fingerprints(self, tasks: "_Tasks") -> list[str | None]:
        """The fingerprint of each node whose task Prefect caches (None for the others).

        Prefect computes a cache key from a task's parameters, and a node's parameters
        are only its parents' values: its code and constant arguments are compiled into
        the task. The fingerprint (see :mod:`functionfuse.fingerprint`) hashes those and
        the parents' fingerprints, so ``add(1, 1)`` and ``add(5, 5)`` get other keys
        under any policy that hashes inputs (``INPUTS``, ``task_input_hash``, the default).
        """
        if not any(tasks.cached):
            return [None] * len(tasks.cached)
        records = self.fingerprints()
        return [r["node"] if cached else None for r, cached in zip(records, tasks.cached)]

    def _failure(self, i: int, fut: Any) -> BaseException:
        """The error to raise for failed node *i*: always names the node."""
        try:
            fut.result()
        except FunctionFuseError as exc:
            return exc
        except BaseException as exc:  # Prefect's own (timeouts, crashes) or a storage failure
            err = self.node_error(i, exc)
            err.__cause__ = exc
            return err
        return NodeExecutionError(  # pragma: no cover - a failed state always raises
            f"Node {self.graph.names[i]!r} of workflow {self.workflow_name!r} failed: {fut.state!r}",
            node_name=self.graph.names[i],
            workflow_name=self.workflow_name,
        )


class _Tasks(Mapping[str, Any]):
    """The Prefect tasks of one generated flow: each node's by name (a mapping), made
    when first used (a chain run as one unit never needs its nodes' own), and each
    execution unit's by its nodes. Task options are checked by Prefect when the flow is
    generated: one task per distinct set of options is made then."""

    def __init__(self, wf: PrefectWorkflow) -> None:
        self.wf = wf
        g = wf.graph
        self.position = {name: i for i, name in enumerate(g.names)}
        self.nodes: list[Any] = [None] * len(g)
        self.units: dict[tuple[int, ...], Any] = {}
        #: whether Prefect caches each node's task (its runs then get the node's fingerprint)
        self.cached = [bool(_CACHE_OPTIONS.intersection(wf._task_args.get(i, {}))) for i in range(len(g))]
        checked: set[Hashable] = set()
        for i, args in sorted(wf._task_args.items()):
            key = _options_key(args)
            if key not in checked:
                checked.add(key)
                self.at(i)

    def at(self, i: int) -> Any:
        task = self.nodes[i]
        if task is None:
            task = self.nodes[i] = self.wf._make_task(i)
        return task

    def unit(self, indices: tuple[int, ...], label: str) -> Any:
        task = self.units.get(indices)
        if task is None:
            task = self.units[indices] = self.wf._make_unit_task(indices, label)
        return task

    def __getitem__(self, name: str) -> Any:
        return self.at(self.position[name])

    def __iter__(self) -> Any:
        return iter(self.position)

    def __len__(self) -> int:
        return len(self.position)


def _constant(name: str) -> Callable[[], str]:
    """A task-run name callable (a plain string would be ``str.format``-ed by Prefect)."""

    def task_run_name() -> str:
        return name

    return task_run_name


def _options_key(options: Mapping[str, Any]) -> Hashable:
    """Task options as a hashable value: equal options give equal keys (lists, dicts and
    sets by their items; a value that cannot be hashed, by identity)."""
    return tuple(sorted((k, _frozen(v)) for k, v in options.items()))


def _frozen(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted(((repr(k), _frozen(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_frozen(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_frozen(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


@dataclass
class _NodeFingerprint(CachePolicy):
    """The part of a cache key that is the node's fingerprint (its task's ``fingerprint``
    parameter): added to every cache policy given in ``set_task_args``."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> Any:
        return (inputs or {}).get("fingerprint")


_NODE_FINGERPRINT = _NodeFingerprint()
