"""Ray Workflows addon: the DAG as a Ray Workflows DAG (``.bind()`` + ``workflow.run``).

Ray Workflows (``ray.workflow``) was removed from Ray after 2.47: this addon needs
``ray<=2.47`` and says so when created with a newer Ray. For durable execution on
current Ray use :class:`functionfuse.backends.builtin.rayback.RayWorkflow` with a
storage: it saves every node's result as soon as the node finishes, and a re-run (or a
new driver after a crash) resumes from them.

Each node that runs or loads becomes one workflow task, bound to the tasks of its
parents; Ray Workflows checkpoints each task's output in its own storage (``ray.init
(storage=...)``). This addon keeps one task per node: it runs no execution units
(:mod:`functionfuse.units`; ``set_fusion`` and ``set_group`` change nothing here), as
Ray Workflows checkpoints per task and is frozen at Ray 2.47. The functionfuse resume plan and storage work as with every backend.
A class node has no actor here (Ray Workflows has none): the constructor task returns
the object and each method-call task receives the object from the previous call and
returns it with its result, so the calls see the state they would see in one process.

A stored result found damaged when a task reads it does not fail the run: the task
hands on a marker, the tasks that need it pass the marker on instead of running, and
when nothing failed the run is planned again without that result (its node runs, what
finished is loaded), as the engine (:mod:`functionfuse.engine`) does for every backend.
A node that fails is the run's error, as on every backend.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from typing import Any

from ...baseworkflow import LOAD, RUN, SKIP, BaseWorkflow
from ...engine import NodeFailure, RunSession, failure_error, plan_run, recompute_damaged, run_session
from ... import errors
from ...errors import (
    ConfigurationError,
    CorruptedResultError,
    MissingDependencyError,
    NodeExecutionError,
    StorageError,
    missing_dependency,
)
from ...workflow import ClassNode, MethodNode

__all__ = ["RayWorkflow", "RAY_WORKFLOWS_LAST_RAY"]

log = logging.getLogger("functionfuse.rayworkflow")

#: the last Ray release that ships ray.workflow
RAY_WORKFLOWS_LAST_RAY = "2.47"


def _ray_workflow() -> tuple[Any, Any]:
    """``(ray, ray.workflow)``, or a clear error saying what to install or use instead."""
    try:
        import ray
    except ImportError as exc:
        raise missing_dependency("ray", "ray", exc) from exc
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Ray Workflows library is deprecated", category=UserWarning)
            from ray import workflow
    except (ImportError, RuntimeError) as exc:
        raise MissingDependencyError(
            f"The Ray Workflows addon needs ray.workflow, which Ray removed after "
            f"{RAY_WORKFLOWS_LAST_RAY}; this environment has ray {ray.__version__}. Install "
            f"'ray<={RAY_WORKFLOWS_LAST_RAY}' to use it (e.g. pip install 'ray[default]=={RAY_WORKFLOWS_LAST_RAY}.1'), "
            "or, for durable execution on current Ray, use "
            "functionfuse.backends.builtin.rayback.RayWorkflow with a storage "
            '(storage_factory({"kind": "ray", ...}) or {"kind": "file", ...}): it saves every '
            "node's result as soon as the node finishes, and a re-run resumes from them."
        ) from exc
    return ray, workflow


class _State:
    """A class node's object, passed from one workflow task to the next."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple:
        return (_State, (self.obj,))


class _Called:
    """A method call's result, with the object after the call."""

    __slots__ = ("obj", "value")

    def __init__(self, obj: Any, value: Any) -> None:
        self.obj, self.value = obj, value

    def __reduce__(self) -> tuple:
        return (_Called, (self.obj, self.value))


class _Damaged:
    """What a task hands on instead of a value when a stored result it needs is damaged."""

    __slots__ = ("index", "error")

    def __init__(self, index: int, error: BaseException) -> None:
        self.index, self.error = index, error

    def __reduce__(self) -> tuple:
        return (_Damaged, (self.index, self.error))


def _damaged_in(values: Any) -> _Damaged | None:
    for v in values:
        if type(v) is _Damaged:
            return v
    return None


def _plain(v: Any) -> Any:
    t = type(v)
    if t is _State:
        return v.obj
    if t is _Called:
        return v.value
    return v


def _step(spec: Any, kind: str, *values: Any) -> Any:
    """One node as a workflow task (``kind``: function, class, method or load)."""
    from ..builtin.rayback import load_stored, run_packed

    if kind == "load":
        try:
            return load_stored(*spec)
        except NodeFailure as f:
            if isinstance(f.error, CorruptedResultError):
                return _Damaged(f.index, f.error)
            raise
    damaged = _damaged_in(values)
    if damaged is not None:  # an input is a damaged stored result: this node runs after it
        return damaged
    if kind == "method":
        k, previous, values = values[0], values[1], values[2:]
        obj = previous.obj
        return _Called(obj, run_packed(spec, [_plain(v) for v in values], k, obj))
    value = run_packed(spec, [_plain(v) for v in values])
    return _State(value) if kind == "class" else value


def _collect(outputs: tuple, *values: Any) -> tuple[dict, list]:
    """The workflow's output: the values of the output nodes (every sink is an argument,
    so that everything that has to run runs), and the damaged stored results met."""
    damaged = [v for v in values if type(v) is _Damaged]
    return {i: _plain(v) for i, v in zip(outputs, values[: len(outputs)])}, damaged


class RayWorkflow(BaseWorkflow):
    """A backend that runs the DAG with Ray Workflows (ray<=2.47).

    :param nodes: DAG nodes; all roots that are ancestors of them and everything
        reachable from those roots run.
    :param workflow_name: the name of the workflow, used by storage; also the prefix of
        the Ray Workflows ids of its runs.
    :param ray_init_args: arguments of ``ray.init`` if Ray is not initialised yet
        (``storage`` sets Ray Workflows' checkpoint folder or URI).

    :raises MissingDependencyError: the installed Ray has no ``ray.workflow`` (Ray after
        2.47): the message says what to install, or to use
        :class:`functionfuse.backends.builtin.rayback.RayWorkflow` with storage.
    """

    def __init__(self, *nodes: Any, workflow_name: str, ray_init_args: dict | None = None) -> None:
        self._ray, self._workflow = _ray_workflow()
        super().__init__(*nodes, workflow_name=workflow_name)
        if ray_init_args is not None and not isinstance(ray_init_args, dict):
            raise ConfigurationError(f"ray_init_args must be a dict of ray.init arguments, got {ray_init_args!r}.")
        self.last_workflow_id: str | None = None
        self._ran: list[str] = []  # names of the nodes the current run computes and stores
        if not self._ray.is_initialized():
            self._ray.init(**(ray_init_args or {}))
        self._workflow.init()

    def run(self, workflow_id: str | None = None) -> Any:
        """Run the workflow with Ray Workflows.

        :param workflow_id: the Ray Workflows id of this run (default:
            ``<workflow_name>.<unique suffix>``); with the id of an interrupted run,
            Ray Workflows resumes that run from its own checkpoints.
        :returns: the result of the single node given, or a list for several.
        :raises NodeExecutionError: a node failed; results stored before stay stored.
        """
        with run_session(self) as session:
            try:
                results = self._run(session, workflow_id)
            except Exception:
                with contextlib.suppress(Exception):  # the run's error stays the error
                    self._record_times(session.report)
                raise
            self._record_times(session.report)
        return self.outputs(results)

    def _record_times(self, report: Any) -> None:
        """Time per node for the run report. Ray Workflows hands back only the outputs, so
        the times come from the metadata the steps stored (none without storage)."""
        if self.storage is None or not self._ran:
            return
        for name, meta in self.storage.read_metadata_many(self.workflow_name, self._ran).items():
            if isinstance(meta, dict) and meta.get("duration_s") is not None:
                report.record(name, float(meta["duration_s"]))

    def _run(self, session: RunSession, workflow_id: str | None) -> dict:
        """Run the plan; a damaged stored result met on the way makes a new plan (see the
        module documentation)."""
        stored, records, plan = plan_run(self, session)
        self._ran = []
        damaged_names: set[str] = set()
        for attempt in range(len(self.graph) + 1):
            wid = workflow_id if attempt == 0 or workflow_id is None else f"{workflow_id}.retry{attempt}"
            results, damaged = self._attempt(session, plan, wid)
            if not damaged:
                return results
            for d in {d.index: d for d in damaged}.values():
                recompute_damaged(self, session, stored, d.index, d.error)
                damaged_names.add(self.graph.names[d.index])
            # what this attempt stored is loaded next, not run again
            stored = self.stored_metadata()
            for name in damaged_names:
                stored.pop(name, None)  # type: ignore[union-attr]
            plan = self.make_plan(stored, records)
        raise StorageError(f"Workflow {self.workflow_name!r}: too many unreadable stored results in {self.storage!r}.")

    def _attempt(self, session: RunSession, plan: Any, workflow_id: str | None) -> tuple[dict, list]:
        from ..builtin.rayback import pack_task  # a node's task, pickled without the graph

        ray = self._ray
        g = self.graph
        stats = session.report
        ran_before = stats.ran  # what earlier attempts ran (the run's count covers them all)
        stats.loaded = stats.skipped = 0
        names, nodes, data_parents, wf = g.names, g.nodes, g.data_parents, self.workflow_name
        actions = plan.actions
        storage = self.storage
        deps: dict[int, tuple[int, ...]] = {}  # node that runs -> the tasks it waits for
        step = ray.remote(_step)
        bound: list[Any] = [None] * len(g)
        consumed = [False] * len(g)
        latest: dict[int, Any] = {}  # class node -> bound task of its latest call
        latest_index: dict[int, int] = {}
        for i, action in enumerate(actions):
            if action == SKIP:
                stats.skipped += 1
                continue
            name = names[i]
            if action == LOAD:
                bound[i] = step.options(name=name).bind((i, name, wf, storage), "load")
                stats.loaded += 1
                continue
            save = storage is not None and action == RUN
            node = nodes[i]
            k = g.index_of(node.instance) if type(node) is MethodNode else -1
            task = self.node_task(i, save=save, record=plan.record(i) if save else None)
            # a method call gets its object from the previous call, not as an argument
            parents = task.parents
            spec = pack_task(task)
            deps[i] = (*parents, latest_index[k]) if type(node) is MethodNode else parents
            if type(node) is MethodNode:
                bound[i] = step.options(name=name).bind(spec, "method", k, latest[k], *[bound[p] for p in parents])
                consumed[latest_index[k]] = True
                latest[k] = bound[i]
                latest_index[k] = i
            else:
                kind = "class" if type(node) is ClassNode else "function"
                bound[i] = step.options(name=name).bind(spec, kind, *[bound[p] for p in parents])
                if kind == "class":
                    latest[i] = bound[i]
                    latest_index[i] = i
            for p in parents:
                consumed[p] = True
        outputs = tuple(sorted(set(g.outputs)))
        sinks = [bound[i] for i in range(len(g)) if bound[i] is not None and not consumed[i] and i not in outputs]
        dag = ray.remote(_collect).bind(outputs, *[bound[o] for o in outputs], *sinks)
        workflow_id = workflow_id or f"{wf}.{time.strftime('%Y%m%d-%H%M%S')}.{uuid.uuid4().hex[:8]}"
        self.last_workflow_id = workflow_id
        log.info("workflow %r: Ray Workflows run %r", wf, workflow_id)
        try:
            results, damaged = self._workflow.run(dag, workflow_id=workflow_id)
        except Exception as exc:
            # what ran is what stored its result with this plan's fingerprint (a node
            # never stored is not known to have run)
            stats.ran = ran_before
            with contextlib.suppress(Exception):  # the run's error stays the error
                stored_now = self._stored_by(plan, [i for i in deps if actions[i] == RUN])
                stats.ran += len(stored_now)
                self._ran += [names[i] for i in stored_now]
            raise self._failure(exc, stats) from exc
        # the tasks after a damaged stored result handed its marker on instead of running
        passed_on = {d.index for d in damaged}
        for i in sorted(deps):  # positions are in topological order
            if any(p in passed_on for p in deps[i]):
                passed_on.add(i)
        ran = [i for i in deps if i not in passed_on]
        stats.ran = ran_before + len(ran)
        if storage is not None:
            self._ran += [names[i] for i in ran if actions[i] == RUN]
        return results, damaged

    def _stored_by(self, plan: Any, indices: list[int]) -> list[int]:
        """The nodes among *indices* whose stored result has *plan*'s fingerprint."""
        if self.storage is None or not indices:
            return []
        names = self.graph.names
        metas = self.storage.read_metadata_many(self.workflow_name, [names[i] for i in indices])
        found = []
        for i in indices:
            meta = metas.get(names[i])
            if isinstance(meta, dict) and meta.get("fingerprint") == plan.record(i):
                found.append(i)
        return found

    def _failure(self, exc: BaseException, report: Any) -> BaseException:
        """The error to raise for a failed Ray Workflows run: names the failing node.

        Ray Workflows reports a task's failure as a WorkflowExecutionError of its
        management actor, with the task's traceback as text: the node is found there.
        """
        failure = _find_failure(exc, NodeFailure)
        if failure is None:
            m = _FAILURE_LINE.search(str(exc))
            if m is None:
                return NodeExecutionError(
                    f"Workflow {self.workflow_name!r} failed in Ray Workflows: {type(exc).__name__}: {exc}",
                    node_name="",
                    workflow_name=self.workflow_name,
                )
            failure = NodeFailure(int(m.group(1)), m.group(2), _stand_in(m.group(3)), str(exc))
        report.failed = self.graph.names[failure.index]
        return failure_error(self, failure, "Ray Workflows task")


def _stand_in(detail: str) -> Exception:
    """An exception known only from its text (``Type: message``): functionfuse's own
    error of that name (so ``except TaskNotFoundError`` still catches it), else one of a
    stand-in class with the remote type's name, so messages show it as it was."""
    kind, _, message = detail.partition(": ")
    known = getattr(errors, kind, None)
    if isinstance(known, type) and issubclass(known, errors.FunctionFuseError):
        try:
            return known(message)
        except TypeError:  # an error with more fields than a message
            pass
    return type(kind if kind.isidentifier() else "RemoteError", (Exception,), {"__module__": "remote"})(message)


_FAILURE_LINE = re.compile(r"NodeFailure: node #(\d+) failed \((\w+)\): ([^\n]*)")


def _find_failure(exc: BaseException, kind: type) -> Any:
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None
