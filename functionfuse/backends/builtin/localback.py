"""LocalWorkflow: run a DAG in this process, one node after another.

State machine of a run: the resume plan (see :mod:`functionfuse.baseworkflow`) marks
each node run, replay, load or skip. Nodes are visited in topological order; a node
that runs gets its arguments from the results list, its result is saved to storage at
once (so an interruption loses only the node in progress), and each value is released
as soon as the last node that needs it has run. A stored result that turns out to be
damaged when loaded is reported with a warning, dropped from the plan, and the plan is
recomputed, so the node (and whatever it needs) runs again. A run that stops at a node
(it raised, also ``KeyboardInterrupt`` or ``SystemExit``, which are re-raised as they
are, or its result could not be stored or loaded) names it in its report
(``last_run.failed``).
"""

from __future__ import annotations

import time
from typing import Any

from ...baseworkflow import LOAD, MISSING, NOT_STORED, REPLAY, RUN, SKIP, BaseWorkflow, DamagedResult, Query
from ...errors import CorruptedResultError
from ...report import Progress, RunReport
from ...workflow import executing_nodes

__all__ = ["LocalWorkflow", "Query"]

_PROGRESS_EVERY = 1024  # nodes between progress updates on the fast path


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
        selected = self._select(query, "log_nodes")
        selected.set_cache("off")
        self._logged = self._logged | frozenset(selected.indices)

    def _actions(self, stored: dict[str, Any] | None) -> tuple[list[str], list[str], list[str], list[str]]:
        actions, reasons, states, details = super()._actions(stored)
        if stored is not None:  # without storage nothing is stored anyway
            for i in self._logged:
                if actions[i] == RUN:
                    actions[i] = REPLAY  # run, not saved
                    reasons[i] = "selected by log_nodes(): runs on every run, never stored"
                    if states[i] == MISSING:
                        states[i], details[i] = NOT_STORED, "never stored (log_nodes())"
        return actions, reasons, states, details

    def run(self) -> Any:
        """Start execution of the workflow.

        :returns: the result of the single node given to the constructor, or a list of
            results for several.
        :raises NodeExecutionError: a node raised; results stored before stay stored.
        """
        started = time.perf_counter()
        report, progress = self.start_run()
        try:
            if self.storage is None and not self._plugins:
                results = self._run_plain(report, progress)
            else:
                results = self._run_stored(report, progress)
        except BaseException as exc:
            self.finish_run(report, progress, started, exc)
            raise
        self.finish_run(report, progress, started)
        return self.outputs(results)

    # The fast path: no storage, no plugins.
    def _run_plain(self, report: RunReport, progress: Progress) -> list[Any]:
        calls = self.node_calls()
        n = len(calls)
        frees = self.release_schedule()
        R: list[Any] = [None] * n
        # one clock reading per node: node i took stamps[i] - stamps[i - 1]
        stamps = [0.0] * (n + 1)
        report._stamps, report._names = stamps, lambda: self.graph.names
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

    def _run_stored(self, report: RunReport, progress: Progress) -> list[Any]:
        stored = self._stored()
        for attempt in range(len(self.graph) + 1):
            if attempt == 0:
                actions = self.resume_actions(stored)
                report.recomputed += self.unreadable_count(stored)
            else:
                actions = self._actions(stored)[0]
            try:
                return self._execute(actions, stored, report, progress)
            except DamagedResult as damaged:
                self.drop_damaged(stored, damaged.index, damaged.error, report)
        raise self.too_many_damaged()

    def _execute(
        self, actions: list[str], stored: dict[str, Any] | None, report: RunReport, progress: Progress
    ) -> list[Any]:
        """Run *actions*; nodes saved here are added to *stored* (a restart loads them)."""
        names = self.graph.names
        frees = self.release_schedule(actions)
        save = self.storage is not None
        n = len(names)
        R: list[Any] = [None] * n
        report.loaded = report.skipped = 0
        i = 0
        with executing_nodes():
            try:
                for i in range(n):
                    action = actions[i]
                    if action == SKIP:
                        report.skipped += 1
                        continue
                    if action == LOAD:
                        try:
                            R[i] = self.load_result(i)
                        except CorruptedResultError as exc:
                            raise DamagedResult(i, exc) from exc
                        report.loaded += 1
                    else:
                        progress.node_started(names[i])
                        t = time.perf_counter()
                        R[i] = self.run_node(i, R, save=save and action == RUN)
                        seconds = time.perf_counter() - t
                        report.record(names[i], seconds)
                        report.ran += 1
                        progress.node_finished(names[i], seconds)
                        if save and action == RUN:
                            assert stored is not None
                            stored[names[i]] = {"fingerprint": self.run_record(i)}
                    for p in frees[i]:
                        R[p] = None
                    progress.update()
            except DamagedResult:
                raise  # not a failure: the node runs again
            except BaseException:
                # the node raised (KeyboardInterrupt and SystemExit too), or its result
                # could not be stored or loaded: the run stopped there
                progress.running = 0
                report.failed = names[i]
                raise
        return R
