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
from datetime import datetime, timezone
from typing import Any

from ...baseworkflow import LOAD, RUN, SKIP, BaseWorkflow, Query
from ...errors import CorruptedResultError, ResultRecomputedWarning, SerializationError, StorageError
from ...workflow import executing_nodes
from ..plugins import prepare

__all__ = ["LocalWorkflow", "Query"]

log = logging.getLogger("functionfuse.local")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


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
        storage, wf, names = self.storage, self.workflow_name, self.graph.names
        stored = self._stored()
        saved: set[str] = set()
        for _attempt in range(len(names) + 1):
            actions, _ = self._actions(None if stored is None else stored | saved)
            try:
                return self._execute(actions, stored, saved, stats)
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
                stored.discard(name)
                saved.discard(name)
        raise StorageError(f"Workflow {wf!r}: too many unreadable stored results in {storage!r}.")

    def _execute(self, actions: list[str], stored: set[str] | None, saved: set[str], stats: RunStats) -> list[Any]:
        g = self.graph
        storage, wf, names = self.storage, self.workflow_name, g.names
        calls = self.node_calls()
        frees = self.release_schedule(actions)
        plugins = self._plugins
        n = len(calls)
        R: list[Any] = [None] * n
        counts = [0, 0, 0]  # ran, loaded, skipped
        try:
            with executing_nodes():
                for i in range(n):
                    action = actions[i]
                    if action == SKIP:
                        counts[2] += 1
                        continue
                    name = names[i]
                    if action == LOAD:
                        try:
                            R[i] = storage.read_task(wf, name)
                        except CorruptedResultError as exc:
                            raise _Damaged(i, exc) from exc
                        except SerializationError as exc:  # intact but unreadable here: never overwrite it
                            raise SerializationError(f"Stored result of node {name!r} cannot be loaded: {exc}") from exc
                        counts[1] += 1
                    else:
                        plugin = plugins.get(i)
                        if plugin is not None:
                            prepare(plugin, name)()
                        started = _now()
                        t = time.perf_counter()
                        try:
                            R[i] = calls[i](R)
                        except Exception as exc:
                            raise self.node_error(i, exc) from exc
                        elapsed = time.perf_counter() - t
                        counts[0] += 1
                        if storage is not None and name not in saved and (stored is None or name not in stored):
                            meta = self.node_metadata(i)
                            meta.update(started=started, finished=_now(), duration_s=round(elapsed, 6))
                            try:
                                storage.save(wf, name, R[i], meta)
                            except (StorageError, OSError) as exc:
                                kind = SerializationError if isinstance(exc, SerializationError) else StorageError
                                raise kind(
                                    f"Result of node {name!r} of workflow {wf!r} could not be stored "
                                    f"(results stored before it are kept): {exc}"
                                ) from exc
                            saved.add(name)
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
