"""LocalWorkflow: run a DAG in this process, one node after another.

State machine of a run: the resume plan (see :mod:`functionfuse.baseworkflow`) marks
each node run, load or skip. Nodes are visited in topological order; a node that runs
gets its arguments from the results list, its result is saved to storage at once (so
an interruption loses only the node in progress), and each parent value is released
as soon as the last node that needs it has run. A stored result that turns out to be
damaged when loaded is reported with a warning, dropped from the plan, and the plan
is recomputed, so the node (and whatever it needs) is run again.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

from ...baseworkflow import LOAD, RUN, SKIP, BaseWorkflow, Query
from ...errors import CorruptedResultError, ResultRecomputedWarning, StorageError
from ...workflow import executing_nodes

__all__ = ["LocalWorkflow", "Query"]

log = logging.getLogger("functionfuse.local")


class RunStats:
    """Counts of the last run: nodes run, loaded, skipped, and wall time."""

    __slots__ = ("ran", "loaded", "skipped", "recomputed", "seconds")

    def __init__(self) -> None:
        self.ran = self.loaded = self.skipped = self.recomputed = 0
        self.seconds = 0.0

    def __repr__(self) -> str:
        return (
            f"RunStats(ran={self.ran}, loaded={self.loaded}, skipped={self.skipped}, "
            f"recomputed={self.recomputed}, seconds={self.seconds:.3f})"
        )


class LocalWorkflow(BaseWorkflow):
    """A backend to run workflows locally, in this process.

    :param nodes: DAG nodes. The backend finds all DAG roots that are ancestors of the
        nodes and runs the graph from those roots through every descendant.
    :param workflow_name: the name of the workflow, used by storage.

    With storage set (:meth:`set_storage`), every result is saved as soon as its node
    has run, and a later run loads stored results instead of running their nodes.
    """

    def __init__(self, *nodes: Any, workflow_name: str) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        self.last_run = RunStats()

    def run(self) -> Any:
        """Start execution of the workflow.

        :returns: the result of the single node given to the constructor, or a list of
            results for several.
        :raises NodeExecutionError: a node raised; results stored before stay stored.
        """
        t0 = time.perf_counter()
        stats = RunStats()
        self.last_run = stats
        if self.storage is None and not self._plugins:
            results = self._run_plain()
            stats.ran = len(self.graph)
        else:
            results = self._run_stored(stats)
        stats.seconds = time.perf_counter() - t0
        log.info(
            "workflow %r: %d nodes run, %d loaded from storage, %d skipped (%.3f s)",
            self.workflow_name, stats.ran, stats.loaded, stats.skipped, stats.seconds,
        )
        return self.outputs(results)

    # The fast path: no storage, no plugins.
    def _run_plain(self) -> list[Any]:
        calls = self.node_calls()
        n = len(calls)
        frees = self.release_schedule()
        R: list[Any] = [None] * n
        i = 0
        with executing_nodes():
            try:
                for i in range(n):
                    R[i] = calls[i](R)
                    for p in frees[i]:
                        R[p] = None
            except Exception as exc:
                raise self.node_error(i, exc) from exc
        return R

    def _run_stored(self, stats: RunStats) -> list[Any]:
        names, wf = self.graph.names, self.workflow_name
        stored = self._stored()
        for attempt in range(len(names) + 1):
            if attempt == 0:
                actions = self.resume_actions(stored)
                stats.recomputed += sum(1 for n in names if isinstance((stored or {}).get(n), Exception))
            else:
                actions = self._actions(stored)[0]
            try:
                return self._execute(actions, stored, stats)
            except _Damaged as damaged:
                name = names[damaged.index]
                warnings.warn(
                    f"Stored result of node {name!r} of workflow {wf!r} is unreadable and will be "
                    f"recomputed: {damaged.error}",
                    ResultRecomputedWarning,
                    stacklevel=3,
                )
                stats.recomputed += 1
                assert stored is not None
                stored.pop(name, None)
        raise StorageError(f"Workflow {wf!r}: too many unreadable stored results in {self.storage!r}.")

    def _execute(self, actions: list[str], stored: dict[str, Any] | None, stats: RunStats) -> list[Any]:
        """Run *actions*; nodes saved here are added to *stored* (a restart loads them)."""
        names = self.graph.names
        frees = self.release_schedule(actions)
        save = self.storage is not None
        n = len(names)
        R: list[Any] = [None] * n
        counts = [0, 0, 0]  # ran, loaded, skipped
        try:
            with executing_nodes():
                for i in range(n):
                    action = actions[i]
                    if action == SKIP:
                        counts[2] += 1
                        continue
                    if action == LOAD:
                        try:
                            R[i] = self.load_result(i)
                        except CorruptedResultError as exc:
                            raise _Damaged(i, exc) from exc
                        counts[1] += 1
                    else:
                        R[i] = self.run_node(i, R, save=save and action == RUN)
                        counts[0] += 1
                        if save and action == RUN:
                            assert stored is not None and self._records is not None
                            stored[names[i]] = {"fingerprint": self._records[i]}
                    for p in frees[i]:
                        R[p] = None
        finally:
            stats.ran += counts[0]
            stats.loaded, stats.skipped = counts[1], counts[2]
        return R


class _Damaged(Exception):
    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(index)
        self.index = index
        self.error = error
