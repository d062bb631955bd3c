"""LocalWorkflow: run a DAG in this process, one node after another (or several at a
time in threads: ``parallel=N``, :mod:`._localpool`).

State machine of a run (the engine's, :mod:`functionfuse.engine`, with the serial
executor below): the plan (:mod:`functionfuse.planner`) marks each node run, replay,
load or skip. Nodes are visited in topological order; a node that runs gets its
arguments from the results list, its result is saved to storage at once (so an
interruption loses only the node in progress), and each value is released as soon as
the last node that needs it has run. A stored result that turns out to be damaged when
loaded is reported with a warning, dropped, and the plan is made again, so the node
(and whatever it needs) runs again. A run that stops at a node (it raised, also
``KeyboardInterrupt`` or ``SystemExit``, which are re-raised as they are, or its result
could not be stored or loaded) names it in its report (``last_run.failed``).

Without storage and plugins, a run takes a fast path: the compiled calls in a loop,
one clock reading per node. With ``parallel=N`` (N > 1), or retries or timeouts set on
nodes, the engine drives a pool of N threads instead (:class:`._localpool.PoolExecutor`).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ...baseworkflow import BaseWorkflow, Policies, select
from ...engine import Completion, NodeFailure, NodeTask, execute, load_here, run_session
from ...errors import ConfigurationError
from ...planner import Plan
from ...query import Query as BaseQuery
from ...query import targets
from ...report import Progress, RunReport
from ...workflow import ClassNode, MethodNode, executing_nodes
from ._localpool import PoolExecutor

__all__ = ["LocalWorkflow", "Query"]

_PROGRESS_EVERY = 1024  # nodes between progress updates on the fast path


class Query(BaseQuery):
    """The nodes of a LocalWorkflow whose names match a pattern: the options of every
    backend, and retries and timeouts (see :meth:`set_retries`, :meth:`set_timeout`)."""

    workflow: "LocalWorkflow"

    def set_retries(self, retries: int) -> "Query":
        """Run these nodes up to *retries* more times when they raise (or their result
        cannot be stored); 0: never again (the default). A retry runs in the same worker
        right away; ``last_run.retries`` names the nodes retried and how often. A node
        that timed out is not retried (its thread still runs). Like Prefect's ``retries``.

        Class nodes and method calls are refused: a call changes its object, so running
        it again would apply it twice (and store what follows from that).
        """
        indices = targets(self, "set_retries")
        if type(retries) is not int or retries < 0:
            raise ConfigurationError(f"set_retries() takes a number of retries, an int >= 0, not {retries!r}.")
        g = self.workflow.graph
        stateful = [g.names[i] for i in indices if isinstance(g.nodes[i], (ClassNode, MethodNode))]
        if retries and stateful:
            what = "is a class node or method call" if len(stateful) == 1 else "are class nodes or method calls"
            raise ConfigurationError(
                f"set_retries(): {', '.join(map(repr, stateful[:5]))} {what}: a retry would run the call again on "
                "the object it already changed. Leave them out of the query's pattern (retries are for function nodes)."
            )
        for i in indices:
            self.workflow._retries[i] = retries
        return self

    def set_timeout(self, seconds: float | None) -> "Query":
        """Fail the run when one of these nodes runs longer than *seconds* (None: no
        timeout, the default). The run raises
        :class:`~functionfuse.errors.NodeTimeoutError` naming the node and the timeout;
        nothing new starts, the nodes running finish and are stored. A thread cannot be
        stopped: the node's thread runs on in the background (a daemon thread: it does
        not keep Python from exiting), and its result is never stored once the timeout
        has passed, so storage never holds a result the run did not accept.
        """
        indices = targets(self, "set_timeout")
        if seconds is not None and (type(seconds) not in (int, float) or not seconds > 0 or seconds == float("inf")):
            raise ConfigurationError(
                f"set_timeout() takes a number of seconds > 0 (or None: no timeout), not {seconds!r}."
            )
        for i in indices:
            if seconds is None:
                self.workflow._timeouts.pop(i, None)
            else:
                self.workflow._timeouts[i] = float(seconds)
        return self


class _SerialExecutor:
    """Runs each task as it is submitted, in this process (the engine's executor)."""

    slots = 1
    fuses = False
    in_process = True
    where: str | None = None
    loads_first = False  # each stored result is read when its turn comes

    def __init__(self, wf: BaseWorkflow) -> None:
        self.wf = wf
        self.R: list[Any] = []
        self.done: list[Completion] = []

    def start(self, plan: Plan) -> None:
        self.R = [None] * len(plan)
        self.done = []

    def submit(self, task: NodeTask) -> None:
        try:
            self.R[task.index], seconds = task.run(self.R)
        except NodeFailure as f:
            self.done.append(f)
        else:
            self.done.append((task.index, seconds))

    def load(self, i: int) -> None:
        self.done.append(load_here(self.wf, i, self.R))

    def release(self, indices: Sequence[int]) -> None:
        R = self.R
        for p in indices:
            R[p] = None

    @property
    def pending(self) -> int:
        return len(self.done)

    def oldest(self) -> int | None:
        return None

    def wait(self, count: int, timeout: float | None) -> list[Completion]:
        done, self.done = self.done, []
        return done

    def results(self, outputs: Sequence[int]) -> Mapping[int, Any]:
        return self.R  # type: ignore[return-value]


class LocalWorkflow(BaseWorkflow):
    """A backend to run workflows locally, in this process.

    :param nodes: DAG nodes. The backend finds all DAG roots that are ancestors of the
        nodes and runs the graph from those roots through every descendant.
    :param workflow_name: the name of the workflow, used by storage.
    :param parallel: how many nodes run at a time, in threads of this process (1, the
        default: one after another, in this thread). Nodes whose inputs are ready run
        side by side, lowest position first; NumPy, SciPy, I/O and other code that
        releases the GIL runs faster, pure Python code does not (use RayWorkflow for
        that). Storage, resume, the release of values and the errors are the serial
        run's; a node with a plugin runs alone (plugins set process-wide state).

    With storage set (:meth:`set_storage`), every result is saved as soon as its node
    has run, and a later run loads stored results instead of running their nodes.
    Retries and timeouts are set per node: ``wf.query("^fit$").set_retries(2)``,
    ``.set_timeout(600)``.

    :raises ConfigurationError: *parallel* is not an int >= 1.
    """

    query_class = Query
    progress_running_label = "running"
    #: positions of the nodes log_nodes() selected: they run on every run, never stored
    _logged: frozenset[int] = frozenset()

    def __init__(self, *nodes: Any, workflow_name: str, parallel: int = 1) -> None:
        if type(parallel) is not int or parallel < 1:
            raise ConfigurationError(
                f"LocalWorkflow(parallel={parallel!r}): parallel is how many nodes run at a time, an int >= 1 "
                "(1: one after another). Pass e.g. parallel=4, or leave it out."
            )
        super().__init__(*nodes, workflow_name=workflow_name)
        self.parallel = parallel
        if parallel > 1:
            self.progress_running_label = "in flight"  # queued nodes count until they run
        self._retries: dict[int, int] = {}
        self._timeouts: dict[int, float] = {}

    def query(self, pattern: str | None = None) -> Query:
        """Query nodes by regexp pattern (``re.search`` in each node name; ``None``: every
        node): a :class:`Query`, which also sets retries and timeouts."""
        return super().query(pattern)  # type: ignore[return-value]  # the base builds self.query_class

    def _repr_details(self) -> list[str]:
        return [f"parallel {self.parallel}"] if self.parallel > 1 else []

    def log_nodes(self, query: str | None) -> None:
        """Run the nodes whose whole name matches the regular expression *query* on
        every run, and never store their results (the original functionfuse's
        ``log_nodes``: for nodes run for what they print or log). ``re.fullmatch`` as
        :meth:`find_nodes`; ``None``: every node. Their inputs are loaded from storage
        or run as usual; ``plan()`` shows them as replayed (run, not saved) and not stored.
        """
        selected = select(self, query, "log_nodes")
        selected.set_cache("off")
        self._logged = self._logged | frozenset(selected.indices)

    def policies(self) -> Policies:
        base = super().policies()
        return Policies(base.default, base.per_node, base.unstored, self._logged)

    def run(self) -> Any:
        """Start execution of the workflow.

        :returns: the result of the single node given to the constructor, or a list of
            results for several.
        :raises NodeExecutionError: a node raised; results stored before stay stored.
        """
        pooled = self.parallel > 1 or bool(self._retries) or bool(self._timeouts)
        with run_session(self) as session:
            if pooled:
                pool = PoolExecutor(
                    self, self.parallel, retries=self._retries, timeouts=self._timeouts, report=session.report
                )
                try:
                    results: Any = execute(self, pool, session)
                finally:  # also KeyboardInterrupt: nodes not started never start
                    pool.close()
            elif self.storage is None and not self.plugins:
                results = self._run_plain(session.report, session.progress)
            else:
                results = execute(self, _SerialExecutor(self), session)
        return self.outputs(results)

    # The fast path: no storage, no plugins.
    def _run_plain(self, report: RunReport, progress: Progress) -> list[Any]:
        calls = self.node_calls()
        n = len(calls)
        frees = self.release_schedule()
        R: list[Any] = [None] * n
        # one clock reading per node: node i took stamps[i] - stamps[i - 1]
        stamps = [0.0] * (n + 1)
        report.time_by_clock(stamps, lambda: self.graph.names)
        perf = time.perf_counter
        show = progress.enabled
        i = 0
        with executing_nodes():
            stamps[0] = perf()
            try:
                for i in range(n):
                    R[i] = calls[i](R)
                    stamps[i + 1] = perf()
                    for p in frees[i]:
                        R[p] = None
                    if show and not i % _PROGRESS_EVERY:
                        report.ran = i + 1
                        progress.update()
            except BaseException as exc:  # also KeyboardInterrupt, SystemExit: the report names the node
                report.ran = i
                report.failed = self.graph.names[i]
                del stamps[i + 1 :]
                if isinstance(exc, Exception):
                    raise self.node_error(i, exc) from exc
                raise
        report.ran = n
        return R
