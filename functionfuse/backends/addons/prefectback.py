"""PrefectWorkflow: the DAG as a real Prefect flow, one Prefect task per node.

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
   the output needs is read in the flow. Every running node is submitted as its own
   Prefect task (task and task-run name: the node name). Parent results are passed as
   Prefect futures, so the dependencies are Prefect's own and independent nodes run
   concurrently on the flow's task runner; a method call of a class node also waits for
   the previous call on the same instance. Each task saves its result to functionfuse
   storage as soon as its node has run.
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

import contextvars
import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, cast

from ...baseworkflow import LOAD, SKIP, BaseWorkflow, select
from ...baseworkflow import Query as BaseQuery
from ...engine import Completion, NodeFailure, NodeTask, execute, load_here, run_here, run_session
from ...errors import ConfigurationError, FunctionFuseError, NodeExecutionError, missing_dependency
from ...planner import Plan
from ...query import targets

try:
    import prefect
    from prefect.cache_policies import NO_CACHE, CachePolicy
    from prefect.context import FlowRunContext
    from prefect.futures import wait as _wait_for_futures
    from prefect.utilities.annotations import quote
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise missing_dependency("prefect", "prefect", _exc) from _exc
try:  # Prefect >= 3.8: resolve a future without walking through its (maybe large) result
    from prefect.utilities.annotations import opaque
except ImportError:  # pragma: no cover - older Prefect 3: plain futures, resolved the slow way
    def opaque(value: Any) -> Any:  # type: ignore[no-redef]
        return value

__all__ = ["PrefectWorkflow", "Query"]

log = logging.getLogger("functionfuse.prefect")

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

    Each node is a Prefect task named after the node; with storage set
    (:meth:`set_storage`) every result is saved as soon as its task has run, and a later
    run loads stored results instead of running their nodes.
    """

    query_class = Query

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        self._task_args: dict[int, dict[str, Any]] = {}
        self._flow_options: dict[str, Any] = {}
        #: the generated ``prefect.Flow`` (see :meth:`generate_flow`)
        self.flow: Any = None
        #: the Prefect task of each node, by node name (set by :meth:`generate_flow`)
        self.tasks: dict[str, Any] = {}
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

    # -- compiling ---------------------------------------------------------------------
    def generate_flow(self) -> Any:
        """Create the Prefect flow of this workflow, store it in :attr:`flow`, and return it.

        Calling the flow runs the workflow (with resume from storage) and returns what
        :meth:`run` returns. Separate from :meth:`run` so the flow can be deployed: bind
        it to a module-level name (``flow = wf.generate_flow()``) and use that as the
        deployment's entrypoint (``my_pipeline.py:flow``).
        """
        g = self.graph
        tasks = [self._make_task(i) for i in range(len(g))]
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
        self.tasks = dict(zip(g.names, tasks))
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
            values = {j: inputs[k] for j, k in keys}
            if run is None:  # not in a flow run of this workflow's (a task run elsewhere)
                record = wf.make_plan(wf.stored_metadata()).record(i) if save else None
                return wf.run_node(i, values, save=save, record=record)
            run.started(name)
            try:
                value, seconds = run_here(wf, run.tasks[i], values)
            except BaseException:
                run.failed_at(name)  # KeyboardInterrupt, SystemExit stop the flow here
                raise
            run.seconds[i] = seconds
            return value

        # a function per node: Prefect derives each task's key from its function's name
        run_functionfuse_node.__name__ = run_functionfuse_node.__qualname__ = name
        options: dict[str, Any] = {"name": name, "task_run_name": _constant(name)}
        user = self._task_args.get(i, {})
        cached = bool(_CACHE_OPTIONS.intersection(user))
        if not cached:
            # functionfuse storage does the resuming; Prefect's input hashing would only cost
            options["cache_policy"] = NO_CACHE
        options.update(user)
        policy = options.get("cache_policy")
        if isinstance(policy, CachePolicy) and policy is not NO_CACHE:
            # every node's task has the same function: TASK_SOURCE alone, say, would give
            # all nodes one key; the node's fingerprint is its code and constant arguments
            options["cache_policy"] = policy + _NODE_FINGERPRINT
        try:
            task: Any = prefect.task(run_functionfuse_node, **options)
        except Exception as exc:
            raise ConfigurationError(
                f"Prefect refused the task options {user!r} of node {name!r}: {exc}. "
                "Fix them with query(...).set_task_args({...})."
            ) from exc
        #: Prefect caches this node's result: its runs get the node's fingerprint as a parameter
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

    def _run_flow(self, tasks: list[Any]) -> Any:
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

    def _cache_fingerprints(self, tasks: list[Any]) -> list[str | None]:
        """The fingerprint of each node whose task Prefect caches (None for the others).

        Prefect computes a cache key from a task's parameters, and a node's parameters
        are only its parents' values: its code and constant arguments are compiled into
        the task. The fingerprint (see :mod:`functionfuse.fingerprint`) hashes those and
        the parents' fingerprints, so ``add(1, 1)`` and ``add(5, 5)`` get other keys
        under any policy that hashes inputs (``INPUTS``, ``task_input_hash``, the default).
        """
        if not any(getattr(t, "functionfuse_cached", False) for t in tasks):
            return [None] * len(tasks)
        records = self.fingerprints()
        return [r["node"] if getattr(t, "functionfuse_cached", False) else None for r, t in zip(records, tasks)]

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


class _RunState:
    """What the tasks of one flow run share: their node tasks, the seconds each node
    ran, and the progress display and report (updated from the tasks' threads)."""

    def __init__(self, report: Any, progress: Any) -> None:
        self.report = report
        self.progress = progress
        self.lock = threading.Lock()
        #: the node task of each node submitted in this attempt, by position
        self.tasks: dict[int, NodeTask] = {}
        self.seconds: dict[int, float] = {}

    def started(self, name: str) -> None:
        with self.lock:
            self.progress.node_started(name)

    def failed_at(self, name: str) -> None:
        """Node *name* raised: the report names the first one (the engine names the
        first in topological order if the flow gets there)."""
        with self.lock:
            if self.report.failed is None:
                self.report.failed = name
            self.progress.node_finished(name, None)


class _PrefectExecutor:
    """Submits node tasks as Prefect tasks of the flow run; loads in the flow."""

    slots = 0
    in_process = False
    where: str | None = None  # a failed task's error is the one its node raised here (run_here)
    loads_first = True  # in the flow, before any task: a damaged result is found before anything runs

    def __init__(self, wf: PrefectWorkflow, tasks: list[Any], run: _RunState) -> None:
        self.wf, self.prefect_tasks, self.run = wf, tasks, run
        self.fingerprints = wf._cache_fingerprints(tasks)

    def start(self, plan: Plan) -> None:
        self.plan = plan
        self.futures: dict[int, Any] = {}
        self.waiting: dict[Any, int] = {}  # futures not reported yet -> node
        self.loaded: dict[int, Any] = {}
        self.done: list[Completion] = []
        self.announced = False
        self.submits = any(a not in (LOAD, SKIP) for a in plan.actions)  # announced once submitted
        self.run.tasks.clear()

    def load(self, i: int) -> None:
        self.done.append(load_here(self.wf, i, self.loaded))

    def submit(self, task: NodeTask) -> None:
        g = self.wf.graph
        i = task.index
        names, futures, loaded = g.names, self.futures, self.loaded
        inputs = {}
        for j in g.data_parents[i]:
            fut = futures.get(j)
            if fut is None and j not in loaded:
                return  # its input could not be loaded: the next plan runs it
            inputs[names[j]] = quote(loaded[j]) if fut is None else opaque(fut)
        order = [futures[j] for j in g.parents[i] if j not in g.data_parents[i] and j in futures]
        self.run.tasks[i] = task
        fut = self.prefect_tasks[i].submit(
            inputs=inputs, save=task.storage is not None, fingerprint=self.fingerprints[i], wait_for=order or None
        )
        futures[i] = fut
        self.waiting[fut] = i

    def release(self, indices: Any) -> None:
        pass  # Prefect holds the results of its futures

    @property
    def pending(self) -> int:
        return len(self.waiting) + len(self.done)

    def oldest(self) -> int | None:
        return min(self.waiting.values(), default=None)

    def wait(self, count: int, timeout: float | None) -> list[Completion]:
        if not self.announced and (self.futures or not self.submits):
            self.announced = True
            _run_logger().info(
                "functionfuse workflow %r: %d nodes submitted as tasks, %d loaded from storage, %d skipped",
                self.wf.workflow_name, len(self.futures), len(self.loaded), self.plan.count(SKIP),
            )
        done, self.done = self.done, []
        if self.waiting:
            # Prefect's wait registers a callback on every future per call: one call for
            # all of them (progress counts them at the end), as waiting in slices of
            # *timeout* doubled the cost per node of a flow of cheap tasks
            finished = _wait_for_futures(list(self.waiting)).done
            for fut in finished:
                fut.wait()  # done may be seen just before the final state is set
                i = self.waiting.pop(fut)
                if fut.state.is_completed():
                    done.append((i, self.run.seconds.get(i, 0.0)))
                elif fut.state.is_failed() or fut.state.is_crashed():
                    error = self.wf._failure(i, fut)
                    _LOGGED_BY_TASK_RUN.mark(error)
                    done.append(NodeFailure(i, "raised", error))
                else:
                    # never ran (NotReady: an input's task failed; cancelled): neither
                    # done nor stored; the failure of its input is the run's error
                    state = f"{fut.state.type.value} ({fut.state.name})"
                    done.append(NodeFailure(i, "not run", RuntimeError(f"task ended {state} without running")))
        return done

    def results(self, outputs: Any) -> dict[int, Any]:
        return {i: (self.futures[i].result() if i in self.futures else self.loaded[i]) for i in outputs}


#: the run a task belongs to (Prefect copies the flow's context into task threads)
_CURRENT_RUN: contextvars.ContextVar[_RunState | None] = contextvars.ContextVar("functionfuse_prefect_run", default=None)


def _constant(name: str) -> Callable[[], str]:
    """A task-run name callable (a plain string would be ``str.format``-ed by Prefect)."""

    def task_run_name() -> str:
        return name

    return task_run_name


@dataclass
class _NodeFingerprint(CachePolicy):
    """The part of a cache key that is the node's fingerprint (its task's ``fingerprint``
    parameter): added to every cache policy given in ``set_task_args``."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> Any:
        return (inputs or {}).get("fingerprint")


_NODE_FINGERPRINT = _NodeFingerprint()


class _LoggedByTaskRun(logging.Filter):
    """Drops the flow run's record of an error that a node's task run logged already.

    A failing node is logged by Prefect's task-run logger (with its traceback, on the
    task run where the Prefect UI shows it); the flow then raises the same error, and
    Prefect's flow-run logger would log it again with a longer traceback. The flow
    run's ``Finished in state Failed(...)`` line still names the error, and
    :meth:`PrefectWorkflow.run` raises it. Errors outside any node (storage, planning)
    are not marked, so their flow-run record stays.
    """

    _ATTRIBUTE = "_functionfuse_logged_by_task_run"

    def mark(self, error: BaseException) -> None:
        setattr(error, self._ATTRIBUTE, True)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not getattr(error, self._ATTRIBUTE, False)


_LOGGED_BY_TASK_RUN = _LoggedByTaskRun()
logging.getLogger("prefect.flow_runs").addFilter(_LOGGED_BY_TASK_RUN)


def _run_logger() -> Any:
    try:
        return prefect.get_run_logger()
    except Exception:  # outside a run context (a unit test calling the body directly)
        return log
