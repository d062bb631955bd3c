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
failed, elapsed time) is written to standard error when it is a terminal; a daemon
thread redraws it every second, so the elapsed time moves during a long node, and the
run's summary is printed under it at the end. It is off when standard error is not a
terminal, with ``FUNCTIONFUSE_PROGRESS=0``, or with ``workflow.set_progress(False)``;
the summary is then only logged (``functionfuse`` logger).
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
from typing import IO, Any, Mapping

from .errors import NodeExecutionError

__all__ = ["RunReport", "Progress", "progress_enabled", "RUNNING", "FINISHED", "FAILED", "INTERRUPTED", "outcome"]

log = logging.getLogger("functionfuse")

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
    """A throttled one-line progress display on a terminal.

    :meth:`start` draws it and starts a daemon thread that redraws it every *tick*
    seconds; :meth:`close` stops that thread and ends the line (with the run's summary
    under it, if given). Backends set :attr:`running` (and may rename what it counts
    with :attr:`running_label`) and call :meth:`update` as nodes finish.
    """

    def __init__(
        self, report: RunReport, *, enabled: bool, stream: IO[str] | None = None, interval: float = 0.1, tick: float = 1.0
    ) -> None:
        self.report = report
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.tick = tick
        self.running = 0
        #: what :attr:`running` counts (Ray: tasks handed to Ray and not finished, "in flight")
        self.running_label = "running"
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._width = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False

    def start(self) -> None:
        """Draw the line and keep its elapsed time moving until :meth:`close`."""
        if not self.enabled:
            return
        self.update(force=True)
        if self.tick > 0:
            ticker = threading.Thread(
                target=_tick, args=(weakref.ref(self), self._stop, self.tick), name="functionfuse-progress", daemon=True
            )
            ticker.start()

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
        r = self.report
        done = r.ran + r.loaded + r.skipped
        line = (
            f"[{r.workflow}] {done}/{r.nodes} nodes  {r.ran} run · {r.loaded} loaded · {r.skipped} skipped"
            f" · {self.running} {self.running_label} · {1 if r.failed else 0} failed  {now - self._t0:6.1f} s"
        )
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self._write("\r" + line + " " * pad)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away (closed, or a broken pipe)
            self.enabled = False
            self._stop.set()

    def close(self, summary: str | None = None) -> None:
        """End the line; print *summary* (the run's report) under it."""
        self._stop.set()
        if not self.enabled:
            return
        with self._lock:
            if self._closed:
                return
            self._draw(time.perf_counter())
            self._closed = True
            self._write("\n" if summary is None else "\n" + summary + "\n")


def _tick(ref: "weakref.ref[Progress]", stop: threading.Event, every: float) -> None:
    """Redraw the line every *every* seconds until *stop* is set (or the display is gone)."""
    while not stop.wait(every):
        progress = ref()
        if progress is None:
            return
        progress.update(force=True)
        del progress
