"""LocalWorkflow: run a DAG in this process, one node after another.

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
one clock reading per node.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ...baseworkflow import BaseWorkflow, Policies, Query, select
from ...engine import Completion, NodeFailure, NodeTask, execute, load_here, run_session
from ...planner import Plan
from ...report import Progress, RunReport
from ...workflow import executing_nodes

__all__ = ["LocalWorkflow", "Query"]

_PROGRESS_EVERY = 1024  # nodes between progress updates on the fast path


class _SerialExecutor:
    """Runs each task as it is submitted, in this process (the engine's executor)."""

    slots = 1
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

    With storage set (:meth:`set_storage`), every result is saved as soon as its node
    has run, and a later run loads stored results instead of running their nodes.
    """

    #: positions of the nodes log_nodes() selected: they run on every run, never stored
    _logged: frozenset[int] = frozenset()

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
        with run_session(self) as session:
            if self.storage is None and not self.plugins:
                results: Any = self._run_plain(session.report, session.progress)
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
