"""The thread pool executor of ``LocalWorkflow(..., parallel=N)``.

The engine (:func:`functionfuse.engine.execute`) submits every task and load in
topological order, without waiting (``slots = 0``): a task may arrive before its parents
have finished. This executor keeps the state of each one:

``held``     submitted, waiting for parents still unfinished (counted in ``waiting``);
``ready``    every parent has its value: in a heap by node position, so the pool
             runs nodes in the serial order as far as the graph allows (a low position
             first keeps the values held close to the serial run's);
``running``  in a worker thread, since a clock reading (its timeout counts from it);
``done``     its completion is queued for the engine's ``wait``.

A node that uses the live object of a class node (its method calls, a node taking
the object as an argument) also waits for the node before it that used the object.
A worker never blocks on a parent: only ready tasks reach the pool. When a task ends,
its children whose last parent it was become ready, and the values of its parents that
``release`` named and no other unfinished task needs are dropped (so the values held
follow the serial run's schedule, plus what the running nodes hold).

After a failure nothing new starts: held and ready tasks are reported as ``not run``
(the engine names the first failed node); running ones finish and are stored. A node
with a plugin runs alone (plugins set process-wide state, e.g. the NumPy seed of
``RandomStatePlugin``, which a node running beside it would change). Retries rerun a
node in its worker (its errors and failed saves, not its timeout); a timeout is checked
by the driver while it waits: the node is reported as failed, its thread cannot be
stopped and runs on, but it stores nothing after the timeout and reports nothing.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import threading
import time
from typing import Any, Mapping, Sequence

from ...engine import Completion, NodeFailure, NodeTask, load_here
from ...errors import NodeTimeoutError
from ...planner import SKIP, Plan
from ...report import RunReport

__all__ = ["PoolExecutor"]

log = logging.getLogger("functionfuse.nodes")

_LOAD = None  # the task of a load job


class _Abandoned(BaseException):
    """Raised in a timed-out node's thread instead of storing its late result."""


class _GuardedStorage:
    """The storage of a node with a timeout: refuses to save once the node timed out."""

    def __init__(self, storage: Any, job: "_Job") -> None:
        self.storage, self.job = storage, job

    def save(self, workflow_name: str, task_name: str, value: Any, meta: Any) -> Any:
        if self.job.abandoned:
            raise _Abandoned
        return self.storage.save(workflow_name, task_name, value, meta)


class _Job:
    """A task (or a load, ``task is None``) of node *index* in the executor."""

    __slots__ = ("index", "task", "exclusive", "timeout", "retries", "started", "abandoned")

    def __init__(self, index: int, task: NodeTask | None, exclusive: bool, timeout: float | None, retries: int) -> None:
        self.index, self.task, self.exclusive = index, task, exclusive
        self.timeout, self.retries = timeout, retries
        self.started = 0.0
        self.abandoned = False

    def __lt__(self, other: "_Job") -> bool:  # heap ties (never equal indices in one attempt)
        return self.index < other.index


class PoolExecutor:
    """Runs node tasks in *workers* threads of this process (see the module documentation).

    *retries* and *timeouts* map node positions to their retries and seconds;
    *report* gets the retries of each node (``RunReport.retries``).
    """

    slots = 0  # the engine submits everything; this executor holds tasks until ready
    in_process = False  # the engine counts tasks in flight (queued ones too) on the progress line
    where: str | None = None
    loads_first = False
    fuses = False

    def __init__(
        self,
        wf: Any,
        workers: int,
        *,
        retries: Mapping[int, int],
        timeouts: Mapping[int, float],
        report: RunReport,
    ) -> None:
        self.wf = wf
        self.workers = workers
        self.retries, self.timeouts, self.report = retries, timeouts, report
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._reset(0)

    def _reset(self, n: int) -> None:
        self.R: list[Any] = [None] * n
        self._held: dict[int, _Job] = {}
        self._waiting: dict[int, int] = {}  # held node -> parents still unfinished
        self._children: dict[int, list[int]] = {}  # unfinished node -> held nodes waiting for it
        self._unfinished: set[int] = set()
        self._touch: dict[int, int] = {}  # class node -> the last node submitted that uses its object
        self._users: dict[int, int] = {}  # value -> unfinished tasks that need it
        self._released: set[int] = set()
        self._ready: list[_Job] = []
        self._running: dict[int, _Job] = {}
        self._exclusive_running = False
        self._done: list[Completion] = []
        self._pending = 0
        self._stopped = False

    # -- the engine's side ---------------------------------------------------------------
    def start(self, plan: Plan) -> None:
        with self._cond:
            self._reset(len(plan))
        busy = sum(1 for step in plan if step.action != SKIP)  # no more threads than nodes to run or load
        while len(self._threads) < min(self.workers, max(1, busy)):
            self._spawn()

    def submit(self, task: NodeTask) -> None:
        i = task.index
        g = self.wf.graph
        timeout = self.timeouts.get(i)
        job = _Job(i, task, i in self.wf.plugins, timeout, self.retries.get(i, 0))
        if timeout is not None and task.storage is not None:
            job.task = NodeTask(
                i, task.name, task.workflow, task.call, task.init, _GuardedStorage(task.storage, job), task.meta, task.parents
            )
        with self._cond:
            self._pending += 1
            if self._stopped:
                self._done.append(_not_run(i))
                self._cond.notify_all()
                return
            self._unfinished.add(i)
            users = self._users
            for p in g.data_parents[i]:
                users[p] = users.get(p, 0) + 1
            after = set(g.parents[i])
            touch = self._touch
            for k in g.objects_used((i,)):  # the live object: one node at a time uses it, in the order written
                last = touch.get(k)
                if last is not None:
                    after.add(last)
                touch[k] = i
            waiting = 0
            for p in after:
                if p in self._unfinished:
                    self._children.setdefault(p, []).append(i)
                    waiting += 1
            if waiting:
                self._held[i] = job
                self._waiting[i] = waiting
            else:
                heapq.heappush(self._ready, job)
                self._cond.notify_all()

    def load(self, i: int) -> None:
        with self._cond:
            self._pending += 1
            if self._stopped:
                self._done.append(_not_run(i))
                self._cond.notify_all()
                return
            self._unfinished.add(i)
            heapq.heappush(self._ready, _Job(i, _LOAD, False, None, 0))
            self._cond.notify_all()

    def release(self, indices: Sequence[int]) -> None:
        with self._cond:
            released, users, unfinished, R = self._released, self._users, self._unfinished, self.R
            for p in indices:
                released.add(p)
                if not users.get(p) and p not in unfinished:
                    R[p] = None

    @property
    def pending(self) -> int:
        return self._pending

    def oldest(self) -> int | None:
        with self._cond:
            running = list(self._running.values())
        return min(running, key=lambda job: job.started).index if running else None

    def wait(self, count: int, timeout: float | None) -> list[Completion]:
        until = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._done) < count:
                now = time.monotonic()
                wake = self._check_timeouts(now)
                if len(self._done) >= count:
                    break
                if until is not None:
                    if now >= until:
                        break
                    wake = until if wake is None else min(wake, until)
                self._cond.wait(None if wake is None else max(0.0, wake - now))
            done, self._done = self._done, []
            self._pending -= len(done)
            return done

    def results(self, outputs: Sequence[int]) -> Mapping[int, Any]:
        return self.R  # type: ignore[return-value]

    def close(self) -> None:
        """End the run: tasks not started never start, idle workers exit; a running
        node finishes (and is stored) and its worker exits then. Never waits."""
        with self._cond:
            self._closing = True
            self._stop_starting()
            self._cond.notify_all()
        self._threads = []

    # -- inside (with the lock held) --------------------------------------------------------
    def _check_timeouts(self, now: float) -> float | None:
        """Report the running nodes past their timeout; the next deadline (None: none)."""
        wake = None
        for job in list(self._running.values()):
            if job.timeout is None:
                continue
            deadline = job.started + job.timeout
            if now < deadline:
                wake = deadline if wake is None else min(wake, deadline)
                continue
            job.abandoned = True
            del self._running[job.index]
            self._exclusive_running = self._exclusive_running and not job.exclusive
            name, wfname = self.wf.graph.names[job.index], self.wf.workflow_name
            error = NodeTimeoutError(
                f"Node {name!r} of workflow {wfname!r} timed out: it ran longer than its timeout of "
                f"{job.timeout:g} s (set with query(...).set_timeout). Its thread cannot be stopped: it runs "
                "on in the background, and its result is not stored; results stored before are kept. "
                "Raise the timeout, or make the node faster.",
                node_name=name,
                workflow_name=wfname,
            )
            self._fail(NodeFailure(job.index, "raised", error))
            self._spawn()  # the abandoned thread is lost to the pool
        return wake

    def _fail(self, failure: NodeFailure) -> None:
        self._done.append(failure)
        self._unfinished.discard(failure.index)
        self._stop_starting()
        self._cond.notify_all()

    def _stop_starting(self) -> None:
        """After a failure (or at the end): nothing new starts; what waits is not run."""
        self._stopped = True
        for job in self._ready:
            self._done.append(_not_run(job.index))
        for i in self._held:
            self._done.append(_not_run(i))
        self._ready.clear()
        self._held.clear()
        self._waiting.clear()

    def _finished(self, job: _Job, value: Any, seconds: float | None) -> None:
        i = job.index
        del self._running[i]
        if job.exclusive:
            self._exclusive_running = False
        self._unfinished.discard(i)
        self._done.append((i, seconds))
        R, users, released = self.R, self._users, self._released
        R[i] = value
        if job.task is not None:
            for p in self.wf.graph.data_parents[i]:
                left = users[p] - 1
                users[p] = left
                if not left and p in released and p not in self._unfinished:
                    R[p] = None
        if not users.get(i) and i in released:
            R[i] = None
        for c in self._children.pop(i, ()):
            left = self._waiting.get(c, 0) - 1
            if left == 0:
                del self._waiting[c]
                heapq.heappush(self._ready, self._held.pop(c))
            elif c in self._waiting:
                self._waiting[c] = left
        self._cond.notify_all()

    def _next(self) -> _Job | None:
        """The job a worker starts now, or None (wait)."""
        ready = self._ready
        if not ready or self._exclusive_running:
            return None
        if ready[0].exclusive and self._running:
            return None  # runs alone: once the running ones are done
        job = heapq.heappop(ready)
        job.started = time.monotonic()
        self._running[job.index] = job
        self._exclusive_running = job.exclusive
        return job

    # -- workers ----------------------------------------------------------------------------
    def _spawn(self) -> None:
        # the run's context (its plan, which checks what its reads find: fpindex.check_planned)
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(self._work,), name=f"functionfuse-{self.wf.workflow_name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                job = self._next()
                while job is None:
                    if self._closing:
                        return
                    cond.wait()
                    job = self._next()
                R = self.R
            outcome = self._run(job, R)
            with cond:
                if job.abandoned:
                    return  # timed out: reported; a fresh worker took this one's place
                if isinstance(outcome, NodeFailure):
                    del self._running[job.index]
                    if job.exclusive:
                        self._exclusive_running = False
                    self._fail(outcome)
                else:
                    self._finished(job, *outcome)
            del outcome, job, R  # an idle worker holds no value

    def _run(self, job: _Job, R: list[Any]) -> tuple[Any, float | None] | NodeFailure:
        """Run (or load) *job*: ``(value, seconds)`` or its failure."""
        i, task = job.index, job.task
        if task is None:
            box: dict[int, Any] = {}
            done = load_here(self.wf, i, box)
            return done if isinstance(done, NodeFailure) else (box[i], None)
        attempt = 0
        while True:
            try:
                return task.run(R)
            except NodeFailure as failure:
                if attempt >= job.retries or self._stopped or job.abandoned:
                    return failure
                attempt += 1
                name = task.name
                self.report.retries[name] = attempt
                log.warning(
                    "node %r of workflow %r failed (%s: %s); retry %d of %d",
                    name, task.workflow, type(failure.error).__name__, failure.error, attempt, job.retries,
                )
            except _Abandoned:
                return NodeFailure(i, "not run", RuntimeError("timed out"))  # dropped: abandoned
            except BaseException as exc:  # KeyboardInterrupt, SystemExit in a node: the run's error as is
                return NodeFailure(i, "raised", exc)


def _not_run(i: int) -> NodeFailure:
    return NodeFailure(i, "not run", RuntimeError("not started: an earlier node failed"))
