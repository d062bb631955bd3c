"""The run engine: one run session for every backend, over a small executor contract.

A backend hands :func:`execute` an :class:`Executor` (in this process, Ray tasks and
actors, ...); the engine owns everything at the level of a run, once:

1. **Plan.** One listing of storage, the fingerprints, :func:`functionfuse.planner.plan`.
   The run warns once about stale results it reuses (``StaleResultWarning``) and counts
   the unreadable ones (recomputed, in the one ``ResultRecomputedWarning`` of the run).
2. **Drive.** Nodes are visited in topological order: a skipped node is counted; a
   node to load is handed to ``executor.load(i)`` (all of them first, before anything
   is submitted, for an executor that ``loads_first``); a node that runs or is replayed
   becomes a :class:`NodeTask` handed to ``executor.submit(task)``. When the executor's
   ``slots`` are full (1: a serial executor; 0: no limit), the engine waits for
   completions. Values no later node needs are released (``executor.release``).
3. **Collect.** A completion is ``(index, seconds)`` or a :class:`NodeFailure`. A node
   done is counted in the report and the progress display, and, if it was saved,
   recorded as stored (a re-plan loads it instead of running it again). After a
   failure nothing new is submitted; what is in flight finishes (and is stored).
4. **Recompute.** A stored result found damaged when loaded is reported, dropped from
   what storage holds, and the plan is made again, so its node runs (at most once per
   node). Any other failure raises the error of the first failed node in topological
   order (:func:`failure_error`: one wording for every backend), named in the report.

One run loop stays outside the engine: LocalWorkflow without storage and plugins runs
its compiled calls in a plain loop (nothing to plan, load, save or recompute; the
per-node overhead of tasks would dominate small nodes). It words errors with
:func:`failure_error` and fills the report as the engine does; tests/test_localback.py
covers it through the conformance suite's runs without storage.

**Units.** An executor that ``fuses`` gets the plan as execution units
(:mod:`functionfuse.units`): one :class:`UnitTask` per unit of several nodes, which
runs its nodes in order, each stored as soon as computed, and reports each node.

The module is a little over 500 lines: the run loop, the two tasks it hands out and the
executor contract they are run through are read together, so they stay one module.

:func:`run_session` (start the report and progress display; finish them, store the
report and warn, also when the run raised) and :func:`plan_run` (step 1) are what
compilers use around their own submission: the Ray Workflows addon binds a DAG that
Ray Workflows runs, and KFP's local runs compile a pipeline whose steps run
:class:`NodeTask` in containers.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, MutableMapping, MutableSequence, Protocol, Sequence, Union

from .errors import CorruptedResultError, NodeExecutionError, SerializationError, StorageError
from .planner import LOAD, RUN, SKIP, Plan
from .report import Progress, RunReport
from .workflow import executing_nodes

if TYPE_CHECKING:
    from .baseworkflow import BaseWorkflow

__all__ = [
    "NodeTask", "UnitTask", "NodeFailure", "Executor", "Completion", "RunSession", "run_session", "plan_run", "recompute_damaged",
    "execute",
    "failure_error", "run_here", "load_here",
]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class NodeFailure(Exception):
    """A node failed: its position, at which stage (``run``, ``save``, ``load``,
    ``system`` for a crashed worker, ``raised`` for an error already worded, ``not run``
    for a task its engine never started because an input failed), the error
    and its traceback (text, as it may come from another process)."""

    def __init__(
        self, index: int, stage: str, error: BaseException, tb: str = "", done: Sequence[tuple[int, float]] = ()
    ) -> None:
        super().__init__(index, stage, error, tb)
        self.index, self.stage, self.error, self.tb = index, stage, error, tb
        #: in a unit (:class:`UnitTask`): ``(index, seconds)`` of its nodes that completed
        #: (and were stored) before this one failed
        self.done: tuple[tuple[int, float], ...] = tuple(done)

    def __reduce__(self) -> tuple:
        return (type(self), (self.index, self.stage, self.error, self.tb, self.done))

    def __str__(self) -> str:
        return f"node #{self.index} failed ({self.stage}): {type(self.error).__name__}: {self.error}\n{self.tb}"

    @classmethod
    def capture(cls, index: int, stage: str, exc: BaseException) -> "NodeFailure":
        """The failure of node *index* at *stage*, with the traceback being handled."""
        return cls(index, stage, exc, traceback.format_exc())


class NodeTask:
    """Everything needed to run one node, without the graph; picklable (Ray sends it).

    *call* computes the node from a mapping or sequence of results indexed by node
    position (the parents' values, at *parents*); *init* is the plugin's node-side hook;
    with *storage* the value is saved with *meta* (timings added) as soon as computed.
    """

    __slots__ = ("index", "name", "workflow", "call", "init", "storage", "meta", "parents")

    def __init__(
        self,
        index: int,
        name: str,
        workflow: str,
        call: Callable[[Any], Any],
        init: Callable[[], Any] | None,
        storage: Any,
        meta: dict | None,
        parents: tuple[int, ...],
    ) -> None:
        self.index, self.name, self.workflow, self.call, self.init = index, name, workflow, call, init
        self.storage, self.meta, self.parents = storage, meta, parents

    def __reduce__(self) -> tuple:
        return (NodeTask, (self.index, self.name, self.workflow, self.call, self.init, self.storage, self.meta, self.parents))

    def run(self, results: Any) -> tuple[Any, float]:
        """(value, seconds the node's function took); saved first if the task saves.

        :raises NodeFailure: the node raised (stage ``run``) or its value could not be
            stored (``save``). ``KeyboardInterrupt`` and ``SystemExit`` pass as they are.
        """
        with executing_nodes():
            try:
                if self.init is not None:
                    self.init()
                started = _now() if self.storage is not None else ""
                t = time.perf_counter()
                value = self.call(results)
                elapsed = time.perf_counter() - t
            except Exception as exc:
                raise NodeFailure.capture(self.index, "run", exc) from exc
        if self.storage is not None:
            meta = dict(self.meta or {})
            meta.update(started=started, finished=_now(), duration_s=round(elapsed, 6))
            try:
                self.storage.save(self.workflow, self.name, value, meta)
            except (StorageError, OSError) as exc:
                raise NodeFailure.capture(self.index, "save", exc) from exc
        return value, elapsed


class UnitTask:
    """Several nodes run as one engine task, in order (an execution unit, see
    :mod:`functionfuse.units`); picklable.

    Each node is its :class:`NodeTask`, so each result is stored as soon as its node is
    computed: a unit interrupted by a crash loses only the node in progress.

    :param tasks: the nodes' tasks, in the order they run (topological).
    :param parents: positions of the nodes outside the unit whose values its nodes need.
    :param exports: positions of the unit's nodes whose values are needed after it.
    """

    __slots__ = ("tasks", "parents", "exports", "at", "done")

    def __init__(self, tasks: Sequence[NodeTask], parents: Sequence[int], exports: Sequence[int]) -> None:
        self.tasks, self.parents, self.exports = tuple(tasks), tuple(parents), tuple(exports)
        #: while it runs here: the position of the node running, and the nodes done
        #: (what an interrupted in-process run reports)
        self.at: int | None = None
        self.done: list[tuple[int, float]] = []

    def __reduce__(self) -> tuple:
        return (UnitTask, (self.tasks, self.parents, self.exports))

    @property
    def index(self) -> int:
        """The position of the unit's first node (what progress and errors show first)."""
        return self.tasks[0].index

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(t.index for t in self.tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def label(self, width: int = 80) -> str:
        """The unit's nodes for a task name: ``"a, b, c"``, or ``"a, b, ... z (40 nodes)"``
        when they do not fit in about *width* characters."""
        names = self.names
        text = ", ".join(names)
        if len(text) <= width:
            return text
        head = ""
        for k in range(1, len(names) - 1):
            candidate = ", ".join(names[:k])
            if len(candidate) + len(names[-1]) > width - 20:
                break
            head = candidate
        head = head or names[0]
        return f"{head}, ... {names[-1]} ({len(names)} nodes)"

    def run(self, values: Mapping[int, Any]) -> tuple[dict[int, Any], list[tuple[int, float]]]:
        """Run the nodes in order (*values*: the values of :attr:`parents` by position).

        :returns: the values of :attr:`exports` by position, and ``(position, seconds)``
            of every node. Values no later node of the unit needs are dropped as it goes.
        :raises NodeFailure: of the node that failed, whose ``done`` lists the nodes that
            completed before it.
        """
        tasks = self.tasks
        keep = set(self.exports)
        last: dict[int, int] = {}
        for k, t in enumerate(tasks):
            for p in t.parents:
                last[p] = k
        drops: list[list[int]] = [[] for _ in tasks]
        for p, k in last.items():
            if p not in keep:
                drops[k].append(p)
        for k, t in enumerate(tasks):  # a value no later node of the unit needs, and not exported
            if t.index not in last and t.index not in keep:
                drops[k].append(t.index)
        R: dict[int, Any] = dict(values)
        done: list[tuple[int, float]] = []
        self.done = done
        for k, t in enumerate(tasks):
            self.at = t.index
            try:
                R[t.index], seconds = t.run(R)
            except NodeFailure as f:
                f.done = tuple(done)
                raise
            done.append((t.index, seconds))
            for p in drops[k]:
                del R[p]
        self.at = None
        return {i: R[i] for i in self.exports}, done


def failure_error(wf: "BaseWorkflow", f: NodeFailure, where: str | None = None) -> BaseException:
    """The error a run raises for failure *f*: names the node and the workflow, and what
    to expect of storage. *where* names a remote place the traceback comes from
    (``"Ray worker"``): it is then part of the message."""
    name, wfname, error = wf.graph.names[f.index], wf.workflow_name, f.error
    if f.stage == "raised":
        return error
    if f.stage == "load":
        return _reworded(
            error, f"Stored result of node {name!r} of workflow {wfname!r} cannot be loaded: {type(error).__name__}: {error}"
        )
    if f.stage == "save":
        kind = SerializationError if isinstance(error, SerializationError) else StorageError
        return kind(
            f"Result of node {name!r} of workflow {wfname!r} could not be stored "
            f"(results stored before it are kept): {error}"
        )
    if f.stage == "system":
        return NodeExecutionError(
            f"Node {name!r} of workflow {wfname!r} failed on {where or 'its executor'}: {type(error).__name__}: {error}",
            node_name=name,
            workflow_name=wfname,
        )
    message = f"Node {name!r} of workflow {wfname!r} failed: {type(error).__name__}: {error}"
    if where is not None and f.tb:
        message += f"\n\nRemote traceback ({where}):\n{f.tb.rstrip()}"
    return NodeExecutionError(message, node_name=name, workflow_name=wfname)


def _reworded(error: BaseException, message: str) -> BaseException:
    """*error* with *message*: a storage error keeps its type (``except TaskNotFoundError``,
    ``except SerializationError`` still catch it) and its fields; any other error (an
    ``OSError``, a cloud client's error) becomes a :class:`StorageError` caused by it."""
    if isinstance(error, StorageError):
        try:
            copied = copy.copy(error)
            copied.args = (message,)
        except Exception:  # an error that cannot be copied: worded as any other
            pass
        else:
            if str(copied) == message:  # an OSError with an errno words itself from that
                return copied
    return StorageError(message)


def run_here(wf: "BaseWorkflow", task: NodeTask, results: Any) -> tuple[Any, float]:
    """Run *task* in this process: its error is the run's (see :func:`failure_error`),
    caused by what the node raised."""
    try:
        return task.run(results)
    except NodeFailure as f:
        raise failure_error(wf, f) from f.error


#: what an executor reports: a node done ``(index, seconds it ran or None)``, or a failure
Completion = Union[tuple[int, Union[float, None]], NodeFailure]


def load_here(wf: "BaseWorkflow", i: int, into: Union[MutableMapping[int, Any], MutableSequence[Any]]) -> Completion:
    """Read the stored result of node *i* into ``into[i]`` in this process: the
    completion an executor reports for it (loaded, or a ``load`` failure)."""
    assert wf.storage is not None  # a plan loads nothing without storage
    try:
        into[i] = wf.storage.read_task(wf.workflow_name, wf.graph.names[i])
    except Exception as exc:
        return NodeFailure(i, "load", exc)
    return (i, None)


class Executor(Protocol):
    """Runs node tasks somewhere; the engine drives it (see the module documentation)."""

    #: tasks in flight before the engine waits for completions (1: serial; 0: no limit)
    slots: int
    #: tasks run in this process as they are submitted (the progress display sees them start)
    in_process: bool
    #: where tasks run, named in errors with their remote traceback (None: this process)
    where: str | None
    #: every stored result of an attempt is read before any task is submitted, so a
    #: damaged one is found before anything runs (no node runs twice in one run: a node
    #: never stored, under cache policy "off", a replay); for an executor that reads in
    #: the driver and runs everything at once (Prefect). A serial executor reads each
    #: result when its turn comes (it holds fewer values at a time).
    loads_first: bool
    # An executor that runs execution units has a class attribute ``fuses = True``: its
    # submit() then also gets UnitTask (two nodes or more), and it reports one completion
    # per node of it: ``(i, seconds)`` for each, or on a failure the ``done`` entries of
    # the NodeFailure, then the failure. Without it (False) it gets NodeTask only.

    def start(self, plan: Plan) -> None:
        """A new attempt at running *plan* (after a damaged result, the plan is new)."""

    def submit(self, task: Any) -> None:
        """Run *task*, a :class:`NodeTask` (or a :class:`UnitTask` if the executor
        ``fuses``); its parents were submitted or loaded before."""

    def load(self, i: int) -> None:
        """Read node *i*'s stored result where its children will need it."""

    def release(self, indices: Sequence[int]) -> None:
        """No node submitted later needs these values."""

    @property
    def pending(self) -> int:
        """Tasks submitted and not reported by :meth:`wait` yet."""

    def oldest(self) -> int | None:
        """The position of the oldest task in flight (None: none, or not known)."""

    def wait(self, count: int, timeout: float | None) -> list[Completion]:
        """The completions of at least *count* tasks (fewer after *timeout* seconds)."""

    def results(self, outputs: Sequence[int]) -> Mapping[int, Any]:
        """The values of the output nodes, once every task has completed."""


class RunSession:
    """The report and progress display of one run (see :func:`run_session`)."""

    def __init__(self, wf: "BaseWorkflow") -> None:
        self.workflow = wf
        self.started = time.perf_counter()
        self.report = RunReport(wf.workflow_name, type(wf).__name__, nodes=len(wf.graph))
        #: (node, why) of the stored results found unreadable, warned about when the run ends
        self.unreadable: list[tuple[str, str]] = []
        self.progress = Progress(self.report, enabled=wf.progress_setting(sys.stderr))
        self.progress.running_label = wf.progress_running_label

    def finish(self, error: BaseException | None) -> None:
        """Close the report (*error*: what the run raised), the progress display with
        the run's summary, store the report, and warn about unreadable results."""
        wf = self.workflow
        report, progress = self.report, self.progress
        if error is None:  # a node that failed and then succeeded (a retry) did not fail the run
            report.failed = None
        report.end(time.perf_counter() - self.started, error)
        wf.close_progress(progress, report, error)
        wf.store_report(report)
        if self.unreadable:  # last: under warnings-as-errors the report is stored all the same
            wf.warn_unreadable(self.unreadable)


@contextlib.contextmanager
def run_session(wf: "BaseWorkflow") -> Iterator[RunSession]:
    """A run of *wf*: a fresh report (``wf.last_run``) and progress display, closed and
    stored when the block ends, also when it raises (the report says how it ended)."""
    session = RunSession(wf)
    wf.last_run = session.report
    session.progress.start()
    try:
        yield session
    except BaseException as exc:
        session.finish(exc)
        raise
    session.finish(None)


def plan_run(wf: "BaseWorkflow", session: RunSession) -> tuple[dict[str, Any] | None, Sequence[dict] | None, Plan]:
    """What storage holds, the fingerprint records and the plan of the run of *session*
    (one listing of storage); warns about the stale results it reuses and counts the
    unreadable ones (warned about when the run ends)."""
    records = None if wf.storage is None else wf.fingerprints()
    stored = wf.stored_metadata(records)
    plan = wf.make_plan(stored, records)
    wf.warn_stale(plan)
    session.unreadable.extend(plan.unreadable)
    session.report.recomputed += len(plan.unreadable)
    return stored, records, plan


def recompute_damaged(
    wf: "BaseWorkflow", session: RunSession, stored: dict[str, Any] | None, i: int, error: BaseException
) -> None:
    """Node *i*'s stored result was found damaged when loaded: count it, warn about it
    when the run ends, and leave it out of *stored*, so the next plan runs the node."""
    name = wf.graph.names[i]
    session.unreadable.append((name, str(error)))
    session.report.recomputed += 1
    if stored is not None:
        stored.pop(name, None)


def execute(wf: "BaseWorkflow", executor: Executor, session: RunSession) -> Mapping[int, Any]:
    """Run *wf* with *executor* in *session*; returns the values of the output nodes."""
    with _reads_checked(wf) as planned:
        return _execute(wf, executor, session, planned)


@contextlib.contextmanager
def _reads_checked(wf: "BaseWorkflow") -> Iterator[Any]:
    """The run's reads of its stored results (in this process and the threads its
    executor starts) are checked against what its plan saw (``fpindex.check_planned``)."""
    if wf.storage is None:
        yield None
        return
    from .storage import fpindex

    with fpindex.planned_reads(wf.storage, wf.workflow_name) as planned:
        yield planned


def _execute(wf: "BaseWorkflow", executor: Executor, session: RunSession, planned: Any) -> Mapping[int, Any]:
    report = session.report
    stored, records, plan = plan_run(wf, session)
    for _attempt in range(len(wf.graph) + 1):
        if planned is not None:
            planned.expect(stored)
        failures = _drive(wf, executor, plan, stored, session)
        if not failures:
            return executor.results(wf.graph.outputs)
        damages = [f for f in failures if f.stage == "load" and isinstance(f.error, CorruptedResultError)]
        damaged = damages[0] if damages else None
        # a node that failed is the run's error even when a damaged result was met in the
        # same attempt: the next plan must not retry it; a node that never ran ("not run":
        # its input failed) is only the error when nothing else is
        errors = [f for f in failures if f not in damages and f.stage != "not run"]
        if errors or damaged is None:
            first = min(errors or failures, key=lambda f: f.index)
            report.failed = wf.graph.names[first.index]  # whatever the stage: run, save, load, system
            session.progress.running = 0
            error = failure_error(wf, first, executor.where)
            if error is first.error:
                raise error
            raise error from first.error
        # damaged past its header: not a failure, the node runs again in a new plan
        recompute_damaged(wf, session, stored, damaged.index, damaged.error)
        plan = wf.make_plan(stored, records)
    raise StorageError(f"Workflow {wf.workflow_name!r}: too many unreadable stored results in {wf.storage!r}.")


def _drive(
    wf: "BaseWorkflow", executor: Executor, plan: Plan, stored: dict[str, Any] | None, session: RunSession
) -> list[NodeFailure]:
    """One attempt at *plan*: the failures (none: every node completed)."""
    report, progress = session.report, session.progress
    names, actions = wf.graph.names, plan.actions
    frees = wf.release_schedule(actions)
    saving = stored is not None
    failures: list[NodeFailure] = []
    slots, in_process = executor.slots, executor.in_process
    batch = max(1, slots // 10)

    def collect(completions: list[Completion]) -> None:
        for c in completions:
            if isinstance(c, NodeFailure):
                failures.append(c)
                if in_process:
                    progress.node_finished(names[c.index], None)
                continue
            i, seconds = c
            if actions[i] == LOAD:
                report.loaded += 1
            else:
                name = names[i]
                report.ran += 1
                report.record(name, seconds or 0.0)
                progress.node_finished(name, seconds)
                if saving and actions[i] == RUN:
                    assert stored is not None and plan.records is not None
                    stored[name] = {"fingerprint": plan.records[i]}
        if not in_process:
            progress.running = executor.pending
            oldest = executor.oldest()
            progress.oldest = None if oldest is None else names[oldest]
        progress.update()

    report.loaded = report.skipped = 0
    executor.start(plan)
    loads_first = executor.loads_first
    if loads_first:
        for i, action in enumerate(actions):
            if action == LOAD:
                executor.load(i)
        while executor.pending:
            collect(executor.wait(executor.pending, None))
        if failures:  # a damaged result: the next plan runs its node, nothing ran twice
            return failures
    if getattr(executor, "fuses", False):
        _submit_units(wf, executor, plan, session, collect, failures)
        while executor.pending:
            collect(executor.wait(executor.pending, 0.25))
        return failures
    i = 0
    try:
        for i, action in enumerate(actions):
            if action == SKIP:
                report.skipped += 1
                continue
            if action == LOAD and loads_first:
                if frees[i]:
                    executor.release(frees[i])
                continue
            if slots and executor.pending >= slots:
                collect(executor.wait(min(batch, executor.pending), None))
                if failures:
                    break
            if action == LOAD:
                executor.load(i)
            else:
                save = saving and action == RUN
                task = wf.node_task(i, save=save, record=plan.records[i] if save else None)  # type: ignore[index]
                if in_process:
                    progress.node_started(names[i])
                executor.submit(task)
            if frees[i]:
                executor.release(frees[i])
    except BaseException:
        # the executor stopped the run at node i (KeyboardInterrupt, SystemExit)
        progress.running = 0
        report.failed = names[i]
        raise
    # wait for everything in flight, also after a failure: what finishes is stored
    while executor.pending:
        collect(executor.wait(executor.pending, 0.25))
    return failures


def _submit_units(
    wf: "BaseWorkflow",
    executor: Executor,
    plan: Plan,
    session: RunSession,
    collect: Callable[[list[Completion]], None],
    failures: list[NodeFailure],
) -> None:
    """Submit *plan* as execution units (:mod:`functionfuse.units`): one task per unit,
    loads as before; values released after the last step that needs them."""
    report, progress = session.report, session.progress
    actions = plan.actions
    units = wf.units(plan)
    saving = wf.storage is not None and plan.records is not None
    slots, in_process, loads_first = executor.slots, executor.in_process, executor.loads_first
    batch = max(1, slots // 10)
    report.skipped = sum(1 for a in actions if a == SKIP)

    def task_of(i: int) -> NodeTask:
        save = saving and actions[i] == RUN
        return wf.node_task(i, save=save, record=plan.records[i] if save else None)  # type: ignore[index]

    step = None
    task: NodeTask | UnitTask | None = None
    try:
        for step, frees in zip(units.steps, units.release):
            if not (step.loads and loads_first):
                if slots and executor.pending >= slots:
                    collect(executor.wait(min(batch, executor.pending), None))
                    if failures:
                        break
                if step.loads:
                    executor.load(step.indices[0])
                else:
                    if len(step.indices) == 1:
                        task = task_of(step.indices[0])
                    else:
                        task = UnitTask([task_of(i) for i in step.indices], step.parents, step.exports)
                    if in_process:
                        progress.node_started(wf.graph.names[task.index])
                    executor.submit(task)
            if frees:
                executor.release(frees)
    except BaseException:
        # the executor stopped the run at this step (KeyboardInterrupt, SystemExit)
        progress.running = 0
        if isinstance(task, UnitTask) and task.at is not None:  # interrupted inside a unit run here
            for i, seconds in task.done:
                report.ran += 1
                report.record(wf.graph.names[i], seconds)
            report.failed = wf.graph.names[task.at]
        elif step is not None:
            report.failed = wf.graph.names[step.indices[0]]
        raise
