"""Run reports and the progress line.

Every run of a backend produces a :class:`RunReport` (``workflow.last_run``): how the
run ended (:attr:`~RunReport.status`: ``"finished"``, ``"failed"`` or ``"interrupted"``)
and at which node (:attr:`~RunReport.failed`), how many nodes ran, were loaded or
skipped, the time each node took and the slowest ones. With storage set, the report is
stored with the workflow (``storage.list_run_reports(workflow_name)``).

A run ends *failed* when it raises an exception (a node raised, its result could not be
stored or loaded, storage failed), and *interrupted* when it is stopped by
``KeyboardInterrupt`` (Ctrl-C) or ``SystemExit`` (``sys.exit()``), also when a node
raised it. :attr:`~RunReport.failed` names the node the run stopped at whenever the
backend knows it, whatever the error.

While a run is going, a one-line progress display (nodes done / loaded / running /
failed, the node running now, elapsed time) is written to standard error when it is a
terminal; a daemon thread redraws it every second, so the elapsed time moves during a
long node, and the run's summary is printed under it at the end. It is off when
standard error is not a terminal, with ``FUNCTIONFUSE_PROGRESS=0``, or with
``workflow.set_progress(False)``; the summary is then only logged (``functionfuse``
logger).

Runs also talk in logs, for where there is no terminal (nohup, Slurm, CI), once
logging is configured (e.g. ``logging.basicConfig(level=logging.INFO)``):

* ``functionfuse.nodes`` (INFO): ``node 'x' of workflow 'w' started`` and ``node 'x'
  of workflow 'w' finished in 1.23 s``. Throttled for fast nodes: a node that took ``SLOW_NODE_SECONDS`` (1 s) or
  more always has its finish logged; other records, at most
  ``NODE_RECORDS_PER_SECOND`` (10) a second, the rest counted in the next progress
  record. Nodes of the fast local path (no storage, no plugins) are logged only when
  a check twice a second sees them running for half a second or more (so every node
  that takes a second or more is).
* ``functionfuse.progress`` (INFO): when the progress line is not drawn, a record when
  the run starts, then the progress line as a record every
  ``FUNCTIONFUSE_PROGRESS_EVERY`` seconds (default 30).

Silence either with ``logging.getLogger("functionfuse.nodes").setLevel(logging.WARNING)``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import IO, Any, Callable, Mapping, Sequence

from .errors import NodeExecutionError
from .storage.runreports import stored_report  # noqa: F401 - where tools found it before

__all__ = ["RunReport", "Progress", "progress_enabled", "RUNNING", "FINISHED", "FAILED", "INTERRUPTED", "outcome"]

log = logging.getLogger("functionfuse")
node_log = logging.getLogger("functionfuse.nodes")
progress_log = logging.getLogger("functionfuse.progress")

#: a node that takes this long always has its finish logged
SLOW_NODE_SECONDS = 1.0
#: node records logged at most per second (the others are counted)
NODE_RECORDS_PER_SECOND = 10.0
#: seconds between progress records when the line is not drawn (``FUNCTIONFUSE_PROGRESS_EVERY``)
PROGRESS_EVERY = 30.0

#: values of :attr:`RunReport.status`
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"


def outcome(report: Mapping[str, Any]) -> str:
    """How a run ended, in words, from a report's :meth:`~RunReport.as_dict` (a stored
    report too; one stored before reports had a ``status`` is judged by its error).

    >>> outcome({"status": "interrupted", "failed": "train"})
    "interrupted at 'train'"
    >>> outcome({"failed": None, "error": None})
    'finished'
    """
    status = report.get("status") or (FAILED if report.get("error") or report.get("failed") else FINISHED)
    return _outcome(status, report.get("failed"))


def _outcome(status: str, node: str | None) -> str:
    return f"{status} at {node!r}" if node and status in (FAILED, INTERRUPTED) else status


@dataclass
class RunReport:
    """What one run did."""

    workflow: str
    backend: str
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seconds: float = 0.0
    nodes: int = 0
    ran: int = 0
    loaded: int = 0
    skipped: int = 0
    recomputed: int = 0
    #: the node the run stopped at (it raised, or its result could not be stored or
    #: loaded), when known; None for a finished run
    failed: str | None = None
    #: the exception the run raised, ``"Type: message"``
    error: str | None = None
    #: how the run ended: FINISHED, FAILED or INTERRUPTED (RUNNING until then)
    status: str = RUNNING
    #: the nodes run again after a failure (query(...).set_retries): node -> retries used
    retries: dict[str, int] = field(default_factory=dict)
    #: clock readings after each node of a fast local run (node i: [i + 1] - [i])
    _stamps: list[float] | None = field(default=None, repr=False)
    _names: Any = field(default=None, repr=False)
    _node_seconds: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def node_seconds(self) -> dict[str, float]:
        """Seconds each node took, for the nodes that ran (named on first use)."""
        stamps = self._stamps
        if stamps is not None:
            names = self._names()
            self._node_seconds.update((names[i], stamps[i + 1] - stamps[i]) for i in range(len(stamps) - 1))
            self._stamps = None
        return self._node_seconds

    def record(self, name: str, seconds: float) -> None:
        self._node_seconds[name] = seconds

    def time_by_clock(self, stamps: list[float], names: Callable[[], Sequence[str]]) -> None:
        """Take the time of each node from *stamps*, clock readings a fast run writes as
        its nodes finish (node i took ``stamps[i + 1] - stamps[i]``; ``stamps[0]`` is
        the start); *names* gives the node names when first needed (:attr:`node_seconds`,
        the progress line and logs), so a run that needs none assigns none."""
        self._stamps, self._names = stamps, names

    def end(self, seconds: float, error: BaseException | None = None) -> None:
        """Close the report of a run that took *seconds* and raised *error* (None: it
        finished). ``KeyboardInterrupt`` and ``SystemExit`` interrupt a run, any other
        exception fails it; the failed node is the one the backend named, else the one
        a :class:`~functionfuse.errors.NodeExecutionError` names."""
        self.seconds = seconds
        if error is None:
            self.status = FINISHED
            return
        self.status = FAILED if isinstance(error, Exception) else INTERRUPTED
        message = str(error)
        self.error = f"{type(error).__name__}: {message}" if message else type(error).__name__
        if self.failed is None and isinstance(error, NodeExecutionError):
            self.failed = error.node_name

    def slowest(self, k: int = 5) -> list[tuple[str, float]]:
        """The *k* nodes that took longest, slowest first."""
        return sorted(self.node_seconds.items(), key=lambda kv: -kv[1])[:k]

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["node_seconds"] = {k: round(v, 6) for k, v in self.node_seconds.items()}
        d["slowest"] = [[name, round(s, 6)] for name, s in self.slowest(10)]
        return d

    def summary(self) -> str:
        text = (
            f"workflow {self.workflow!r} {_outcome(self.status, self.failed)} in {self.seconds:.2f} s: {self.ran} run, "
            f"{self.loaded} loaded from storage, {self.skipped} skipped"
        )
        if self.recomputed:
            text += f", {self.recomputed} recomputed (unreadable stored results)"
        if self.retries:
            text += ", retried: " + ", ".join(f"{name} {k}x" for name, k in sorted(self.retries.items()))
        slow = [f"{name} {s:.2f} s" for name, s in self.slowest(3) if s >= 0.01]
        if slow:
            text += "; slowest: " + ", ".join(slow)
        return text

    def __repr__(self) -> str:
        return (
            f"RunReport(workflow={self.workflow!r}, ran={self.ran}, loaded={self.loaded}, skipped={self.skipped}, "
            f"recomputed={self.recomputed}, status={self.status!r}, failed={self.failed!r}, seconds={self.seconds:.3f})"
        )


def progress_enabled(setting: bool | None, stream: IO[str]) -> bool:
    if setting is not None:
        return setting
    if os.environ.get("FUNCTIONFUSE_PROGRESS", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A throttled one-line progress display on a terminal, and the run's log records.

    :meth:`start` draws it and starts a daemon thread that redraws it every *tick*
    seconds; :meth:`close` stops that thread and ends the line (with the run's summary
    under it, if given). Backends call :meth:`node_started` and :meth:`node_finished`
    as nodes run (or set :attr:`running`, rename what it counts with
    :attr:`running_label`, name the oldest unfinished node in :attr:`oldest`, and call
    :meth:`update`). The same thread logs a progress record every *record_every*
    seconds when the line is not drawn, and the nodes of the fast local path that run
    longer than a second (see the module documentation).
    """

    def __init__(
        self,
        report: RunReport,
        *,
        enabled: bool,
        stream: IO[str] | None = None,
        interval: float = 0.1,
        tick: float = 1.0,
        record_every: float | None = None,
    ) -> None:
        self.report = report
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.tick = tick
        self.record_every = _record_every() if record_every is None else record_every
        self.running = 0
        #: what :attr:`running` counts (Ray: tasks handed to Ray and not finished, "in flight")
        self.running_label = "running"
        #: the oldest node still in flight, for backends that do not see nodes start (Ray)
        self.oldest: str | None = None
        #: node records left out by the throttle since the last progress record
        self.suppressed = 0
        self._active: dict[str, float] = {}  # node -> when it started (backends that see starts)
        self._nodes_lock = threading.Lock()
        self._tokens = NODE_RECORDS_PER_SECOND
        self._refilled = time.perf_counter()
        self._log_nodes = False
        self._log_progress = False
        self._watched: int | None = None  # fast local path: the long node logged as running
        self._stamps_seen: list[float] | None = None
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._last_record = self._t0
        self._width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False

    def start(self) -> None:
        """Draw the line and keep its elapsed time moving until :meth:`close`; start the
        periodic records if the ``functionfuse`` loggers log INFO."""
        self._log_nodes = node_log.isEnabledFor(logging.INFO)
        self._log_progress = not self.enabled and progress_log.isEnabledFor(logging.INFO)
        if self.enabled:
            self.update(force=True)
        elif self._log_progress:
            r = self.report
            progress_log.info("run of workflow %r started: %s, %d nodes", r.workflow, r.backend, r.nodes)
        if self.tick > 0 and (self.enabled or self._log_progress or self._log_nodes):
            # checking twice a second sees every fast-path node of a second or more running
            every = min(self.tick, SLOW_NODE_SECONDS / 2) if self._log_nodes else self.tick
            ticker = threading.Thread(
                target=_tick, args=(weakref.ref(self), self._stop, every), name="functionfuse-progress", daemon=True
            )
            ticker.start()

    # -- nodes -----------------------------------------------------------------------
    def node_started(self, name: str) -> None:
        """Node *name* starts running (in this process, a worker, or a task)."""
        now = time.perf_counter()
        with self._nodes_lock:
            self._active[name] = now
            self.running = len(self._active)
            logged = self._log_nodes and self._allow(now)
        if logged:
            node_log.info("node %r of workflow %r started", name, self.report.workflow)
        self.update()

    def node_finished(self, name: str, seconds: float | None) -> None:
        """Node *name* is done: it took *seconds* (None: it failed or was stopped; the
        error says so, so nothing is logged here)."""
        now = time.perf_counter()
        with self._nodes_lock:
            if self._active.pop(name, None) is not None:
                self.running = len(self._active)
            logged = (
                self._log_nodes
                and seconds is not None
                and (seconds >= SLOW_NODE_SECONDS or self._allow(now))
            )
        if logged:
            node_log.info("node %r of workflow %r finished in %.2f s", name, self.report.workflow, seconds)
        self.update()

    def _allow(self, now: float) -> bool:
        """A token bucket: NODE_RECORDS_PER_SECOND records a second, in bursts of as many."""
        rate = NODE_RECORDS_PER_SECOND
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def now_running(self) -> tuple[str | None, int]:
        """The node running longest (or the oldest in flight) and how many others run."""
        with self._nodes_lock:
            if self._active:
                return next(iter(self._active)), len(self._active) - 1
        if self.oldest is not None:
            return self.oldest, max(0, self.running - 1)
        stamps = self.report._stamps
        k = None if stamps is None else _first_unfinished(stamps)
        if k is not None:
            return self.report._names()[k], 0
        return None, 0

    def _watch_long_node(self, now: float) -> None:
        """Fast local path: log a node seen running for half a second or more (every
        node that takes a second or more is), and its finish."""
        stamps = self.report._stamps
        if stamps is None:  # the report's summary may have taken them: the list is the same
            stamps = self._stamps_seen
        if stamps is None:
            return
        self._stamps_seen = stamps
        with self._nodes_lock:  # the thread and close() may both look
            self._watch(stamps, now)

    def _watch(self, stamps: list[float], now: float) -> None:
        k = _first_unfinished(stamps)
        w = self._watched
        if w is not None and k != w:
            self._watched = None
            if w + 1 < len(stamps) and stamps[w + 1]:
                node_log.info(
                    "node %r of workflow %r finished in %.2f s",
                    self.report._names()[w], self.report.workflow, stamps[w + 1] - stamps[w],
                )
        if k is not None and self._watched is None and now - stamps[k] >= SLOW_NODE_SECONDS / 2:
            self._watched = k
            node_log.info(
                "node %r of workflow %r started (running for %.1f s)",
                self.report._names()[k], self.report.workflow, now - stamps[k],
            )

    # -- the line and the records ---------------------------------------------------------
    def on_tick(self) -> None:
        """What the thread does every *tick* seconds."""
        now = time.perf_counter()
        if self.enabled:
            self.update(force=True)
        if self._log_nodes:
            self._watch_long_node(now)
        if self._log_progress and now - self._last_record >= self.record_every:
            self._last_record = now
            self._record(now)

    def _record(self, now: float) -> None:
        line = self.line(now)
        with self._nodes_lock:
            suppressed, self.suppressed = self.suppressed, 0
        if suppressed:
            line += f" ({suppressed} node records not logged: more than {NODE_RECORDS_PER_SECOND:g} a second)"
        progress_log.info("%s", line)

    def line(self, now: float | None = None) -> str:
        """The progress line (without terminal control characters)."""
        if now is None:
            now = time.perf_counter()
        r = self.report
        done = r.ran + r.loaded + r.skipped
        line = (
            f"[{r.workflow}] {done}/{r.nodes} nodes  {r.ran} run · {r.loaded} loaded · {r.skipped} skipped"
            f" · {self.running} {self.running_label} · {1 if r.failed else 0} failed"
        )
        name, others = self.now_running()
        if name is not None:
            line += f"  now: {name}" + (f" +{others}" if others else "")
        return line + f"  {now - self._t0:6.1f} s"

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.interval:
            return
        with self._lock:
            if self._closed:
                return
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        line = self.line(now)
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self._write("\r" + line + " " * pad)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away (closed, or a broken pipe)
            self.enabled = False
            if not (self._log_nodes or self._log_progress):
                self._stop.set()

    def close(self, summary: str | None = None) -> None:
        """End the line; print *summary* (the run's report) under it."""
        self._stop.set()
        if self._log_nodes:
            self._watch_long_node(time.perf_counter())  # the finish of a long node being watched
            if self.suppressed:
                node_log.info(
                    "%d node records of workflow %r not logged (more than %g a second)",
                    self.suppressed, self.report.workflow, NODE_RECORDS_PER_SECOND,
                )
        with self._nodes_lock:
            self._active.clear()
            self.oldest = None
        if not self.enabled:
            return
        with self._lock:
            if self._closed:
                return
            self._draw(time.perf_counter())
            self._closed = True
            self._write("\n" if summary is None else "\n" + summary + "\n")


def _first_unfinished(stamps: list[float]) -> int | None:
    """The node the fast local path runs now: the first without its finish stamp
    (``stamps[i + 1]``); None before the loop starts and after it ends."""
    lo, hi = 0, len(stamps) - 1  # stamps[0] is set when the loop starts
    if hi < 1 or not stamps[0] or stamps[hi]:
        return None
    while lo + 1 < hi:  # invariant: stamps[lo] set, stamps[hi] not
        mid = (lo + hi) // 2
        if stamps[mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _record_every() -> float:
    raw = os.environ.get("FUNCTIONFUSE_PROGRESS_EVERY", "").strip()
    try:
        value = float(raw) if raw else PROGRESS_EVERY
    except ValueError:
        log.warning("FUNCTIONFUSE_PROGRESS_EVERY=%r is not a number of seconds; using %g", raw, PROGRESS_EVERY)
        return PROGRESS_EVERY
    return value if value > 0 else PROGRESS_EVERY


def _tick(ref: "weakref.ref[Progress]", stop: threading.Event, every: float) -> None:
    """Redraw the line every *every* seconds until *stop* is set (or the display is gone)."""
    while not stop.wait(every):
        progress = ref()
        if progress is None:
            return
        progress.on_tick()
        del progress
