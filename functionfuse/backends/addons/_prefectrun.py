"""PrefectWorkflow's flow run: the executor that submits node and unit tasks as Prefect
tasks of the flow run, and what those tasks share while it runs (split from
:mod:`functionfuse.backends.addons.prefectback`, which compiles the flow and its tasks).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping, cast

from ...baseworkflow import LOAD, SKIP
from ...engine import Completion, NodeFailure, NodeTask, UnitTask, load_here
from ...planner import Plan

import prefect
from prefect.futures import wait as _wait_for_futures
from prefect.utilities.annotations import quote

try:  # Prefect >= 3.8: resolve a future without walking through its (maybe large) result
    from prefect.utilities.annotations import opaque
except ImportError:  # pragma: no cover - older Prefect 3: plain futures, resolved the slow way
    def opaque(value: Any) -> Any:  # type: ignore[no-redef]
        return value

if TYPE_CHECKING:
    from .prefectback import PrefectWorkflow, _Tasks

log = logging.getLogger("functionfuse.prefect")


#: where a task finds each value it needs: (position, key in its ``inputs``, whether that
#: input is a unit's exports, a dict by position)
_Where = tuple[tuple[int, str, bool], ...]


class _UnitProgress:
    """How far a unit's task got: the node in progress and the nodes done (and stored)
    before it, with their seconds; what a unit stopped from outside its nodes (a Prefect
    timeout) reports."""

    __slots__ = ("current", "seconds", "done")

    def __init__(self) -> None:
        self.current: int | None = None
        self.seconds = 0.0
        self.done: list[tuple[int, float]] = []


def _announced(task: NodeTask, run: "_RunState", first: int) -> NodeTask:
    """*task*, a node of the unit whose first node is *first*, which tells the progress
    display when it starts and its unit's progress how far it got: a node starts only
    once the one before it in the unit has been computed and stored."""
    init, call, index, name = task.init, task.call, task.index, task.name

    def start() -> None:
        progress = run.units[first]
        if progress.current is not None:
            progress.done.append((progress.current, progress.seconds))
        progress.current = index
        run.started(name)
        if init is not None:
            init()

    def timed(results: Any) -> Any:
        t = time.perf_counter()
        value = call(results)
        run.units[first].seconds = time.perf_counter() - t
        return value

    return NodeTask(index, name, task.workflow, timed, start, task.storage, task.meta, task.parents)


def _values(inputs: Mapping[str, Any], where: _Where) -> dict[int, Any]:
    """The values a task needs, by position, from the inputs Prefect resolved."""
    return {j: (inputs[k][j] if exported else inputs[k]) for j, k, exported in where}


class _RunState:
    """What the tasks of one flow run share: what each task runs (a node task or a unit
    task, by its first node's position, and where its values are), the seconds each
    node ran, the failure a unit met, and the progress display and report (updated from
    the tasks' threads)."""

    def __init__(self, report: Any, progress: Any) -> None:
        self.report = report
        self.progress = progress
        self.lock = threading.Lock()
        #: the node or unit task submitted in this attempt, by its first node's position
        self.jobs: dict[int, tuple[Any, _Where]] = {}
        self.seconds: dict[int, float] = {}
        #: the failure of a unit's node (with the nodes done before it), by the unit's first node
        self.failures: dict[int, NodeFailure] = {}
        #: how far each unit's task got, by its first node
        self.units: dict[int, _UnitProgress] = {}

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
    """Submits node and unit tasks as Prefect tasks of the flow run; loads in the flow."""

    slots = 0
    in_process = False
    where: str | None = None  # a failed task's error is the one its node raised here (run_here)
    loads_first = True  # in the flow, before any task: a damaged result is found before anything runs
    fuses = True  # a unit of several nodes is one Prefect task

    def __init__(self, wf: PrefectWorkflow, tasks: "_Tasks", run: _RunState) -> None:
        self.wf, self.prefect_tasks, self.run = wf, tasks, run
        self.fingerprints = wf._cache_fingerprints(tasks)

    def start(self, plan: Plan) -> None:
        self.plan = plan
        #: each value a task made: (its task's future, its first node, whether a unit's)
        self.source: dict[int, tuple[Any, int, bool]] = {}
        self.futures: dict[int, Any] = {}  # every submitted node's future (for the order of class calls)
        #: class node -> the future of the last task that used its live object (see submit)
        self.touched: dict[int, Any] = {}
        self.waiting: dict[Any, tuple[int, tuple[int, ...] | None]] = {}  # not reported yet -> (first, unit's nodes)
        self.loaded: dict[int, Any] = {}
        self.done: list[Completion] = []
        self.announced = False
        self.tasks_submitted = 0
        self.submits = any(a not in (LOAD, SKIP) for a in plan.actions)  # announced once submitted
        self.run.jobs.clear()
        self.run.failures.clear()
        self.run.units.clear()

    def load(self, i: int) -> None:
        self.done.append(load_here(self.wf, i, self.loaded))

    def submit(self, task: NodeTask | UnitTask) -> None:
        g = self.wf.graph
        names, source, loaded = g.names, self.source, self.loaded
        unit = isinstance(task, UnitTask)
        first = task.index
        indices = task.indices if isinstance(task, UnitTask) else (first,)
        needs = task.parents if isinstance(task, UnitTask) else g.data_parents[first]
        inputs: dict[str, Any] = {}
        where = []
        for j in needs:
            src = source.get(j)
            if src is None:
                if j not in loaded:
                    return  # its input could not be loaded: the next plan runs it
                inputs[names[j]] = quote(loaded[j])
                where.append((j, names[j], False))
            else:
                fut, producer, exported = src
                key = names[producer]
                inputs[key] = opaque(fut)
                where.append((j, key, exported))
        inside = set(indices)
        waits = {
            id(f): f
            for i in indices
            for j in g.parents[i]
            if j not in inside and j not in g.data_parents[i] and (f := self.futures.get(j)) is not None
        }
        # Prefect hands tasks the live object of a class node: its calls and the nodes
        # that take it (directly, or as a call's result: ``fit`` may return it) run one
        # task at a time, in the order submitted (the order written)
        objects = g.objects_used(indices)
        for k in objects:
            f = self.touched.get(k)
            if f is not None:
                waits[id(f)] = f
        order = list(waits.values())
        if isinstance(task, UnitTask):
            task = UnitTask([_announced(t, self.run, first) for t in task.tasks], task.parents, task.exports)
        self.run.jobs[first] = (task, tuple(where))
        if isinstance(task, UnitTask):
            prefect_task = self.prefect_tasks.unit(indices, task.label())
            fps = [self.fingerprints[i] for i in indices]
            fingerprint = None if fps[0] is None else "+".join(cast(list, fps))
            save = any(t.storage is not None for t in task.tasks)
        else:
            prefect_task, fingerprint, save = self.prefect_tasks.at(first), self.fingerprints[first], task.storage is not None
        fut = prefect_task.submit(inputs=inputs, save=save, fingerprint=fingerprint, wait_for=order or None)
        self.tasks_submitted += 1
        for k in objects:
            self.touched[k] = fut
        for i in indices:
            self.futures[i] = fut
        for i in (task.exports if isinstance(task, UnitTask) else indices):
            source[i] = (fut, first, unit)
        self.waiting[fut] = (first, indices if unit else None)

    def release(self, indices: Any) -> None:
        pass  # Prefect holds the results of its futures

    @property
    def pending(self) -> int:
        return len(self.waiting) + len(self.done)

    def oldest(self) -> int | None:
        return min((first for first, _ in self.waiting.values()), default=None)

    def wait(self, count: int, timeout: float | None) -> list[Completion]:
        if not self.announced and (self.futures or not self.submits):
            self.announced = True
            _run_logger().info(
                "functionfuse workflow %r: %d nodes submitted as %d tasks, %d loaded from storage, %d skipped",
                self.wf.workflow_name, len(self.futures), self.tasks_submitted, len(self.loaded),
                self.plan.count(SKIP),
            )
        done, self.done = self.done, []
        if self.waiting:
            # Prefect's wait registers a callback on every future per call: one call for
            # all of them (progress counts them at the end), as waiting in slices of
            # *timeout* doubled the cost per node of a flow of cheap tasks
            finished = _wait_for_futures(list(self.waiting)).done
            seconds = self.run.seconds
            for fut in finished:
                fut.wait()  # done may be seen just before the final state is set
                i, unit = self.waiting.pop(fut)
                failure = self.run.failures.pop(i, None)  # a unit's node failed (maybe before a retry)
                if fut.state.is_completed():
                    done.extend((j, seconds.get(j, 0.0)) for j in (unit or (i,)))
                elif fut.state.is_failed() or fut.state.is_crashed():
                    failed = i if failure is None else failure.index
                    error = self.wf._failure(failed, fut)
                    _LOGGED_BY_TASK_RUN.mark(error)
                    if failure is not None:
                        done.extend(failure.done)  # stored before the unit's node failed
                    done.append(NodeFailure(failed, "raised", error))
                else:
                    # never ran (NotReady: an input's task failed; cancelled): neither
                    # done nor stored; the failure of its input is the run's error
                    state = f"{fut.state.type.value} ({fut.state.name})"
                    done.append(NodeFailure(i, "not run", RuntimeError(f"task ended {state} without running")))
        return done

    def results(self, outputs: Any) -> dict[int, Any]:
        values = {}
        for i in outputs:
            src = self.source.get(i)
            if src is None:
                values[i] = self.loaded[i]
            else:
                fut, _, exported = src
                values[i] = fut.result()[i] if exported else fut.result()
        return values


#: the run a task belongs to (Prefect copies the flow's context into task threads)
_CURRENT_RUN: contextvars.ContextVar[_RunState | None] = contextvars.ContextVar("functionfuse_prefect_run", default=None)


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

