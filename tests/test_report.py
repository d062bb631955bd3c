"""Run reports and the progress line."""

from __future__ import annotations

import io
import logging
import re
import threading
import time

import pytest

from contracts.backend import seed_quick_start
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import NodeExecutionError
from functionfuse.report import Progress, RunReport, progress_enabled
from functionfuse.storage import storage_factory


@workflow
def nap(seconds, *_):
    time.sleep(seconds)
    return seconds


@workflow
def broken(x):
    raise ValueError("no")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_report_counts_times_and_slowest():
    slow = nap(0.05).set_name("slow")
    fast = nap(0.0, slow).set_name("fast")
    wf = LocalWorkflow(fast, workflow_name="report")
    wf.run()
    report = wf.last_run
    assert (report.nodes, report.ran, report.loaded, report.skipped, report.failed) == (2, 2, 0, 0, None)
    assert report.node_seconds["slow"] >= 0.05 > report.node_seconds["fast"]
    assert report.slowest(1)[0][0] == "slow"
    assert "finished" in report.summary() and "slowest: slow" in report.summary()


def test_report_of_a_failed_run_names_the_node(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(broken(nap(0.0).set_name("ok")).set_name("bad"), workflow_name="fails")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError):
        wf.run()
    assert wf.last_run.failed == "bad" and "ValueError: no" in wf.last_run.error
    stored = storage.list_run_reports("fails")
    assert len(stored) == 1 and stored[0]["failed"] == "bad" and stored[0]["ran"] == 1
    assert storage.list_tasks("fails") == ["ok"]  # reports are not tasks


def test_reports_are_stored_with_the_workflow(tmp_path):
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(seed_quick_start(), workflow_name="ops")
    wf.set_storage(storage)
    wf.run()
    wf.run()
    first, second = storage.list_run_reports("ops")
    assert (first["ran"], second["ran"], second["loaded"], second["skipped"]) == (3, 0, 1, 2)
    assert set(first["node_seconds"]) == {"node1", "node2", "node3"}
    assert first["slowest"][0][0] in {"node1", "node2", "node3"}
    assert storage.last_run_report("ops") == second and storage.last_run_report("never") is None


def test_progress_line_on_a_terminal(monkeypatch):
    stream = FakeTTY()
    monkeypatch.setattr("sys.stderr", stream)
    wf = LocalWorkflow(seed_quick_start(), workflow_name="progress")
    wf.set_progress(True)
    wf.run()
    out = stream.getvalue()
    assert out.startswith("\r[progress] 0/3 nodes") and "3/3 nodes  3 run" in out and out.endswith("\n")


def test_the_summary_is_printed_under_the_progress_line(monkeypatch, tmp_path, caplog):
    stream = FakeTTY()
    monkeypatch.setattr("sys.stderr", stream)
    slow = nap(0.05).set_name("slow")
    wf = LocalWorkflow(nap(0.0, slow).set_name("fast"), workflow_name="shown")
    wf.set_progress(True)
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    last = stream.getvalue().rstrip("\n").split("\n")[-1]
    assert last.startswith("workflow 'shown' finished in ") and "2 run" in last and "slowest: slow 0.05 s" in last
    assert "finished in" not in caplog.text  # shown once, on the terminal

    stream.truncate(0)
    stream.seek(0)
    wf = LocalWorkflow(broken(nap(0.0).set_name("ok")).set_name("bad"), workflow_name="shown")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    wf.set_progress(True)
    with pytest.raises(NodeExecutionError):
        wf.run()
    assert "workflow 'shown' failed at 'bad'" in stream.getvalue().splitlines()[-1]


def test_without_a_terminal_the_summary_is_only_logged(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        LocalWorkflow(seed_quick_start(), workflow_name="quiet").run()
    assert capsys.readouterr().err == ""
    assert "workflow 'quiet' finished in" in caplog.text


def elapsed(line):
    return float(re.search(r"([0-9.]+) s\s*$", line).group(1))


@pytest.mark.parametrize("storage", [False, True], ids=["plain", "stored"])
def test_elapsed_time_moves_during_a_long_node(monkeypatch, tmp_path, storage):
    stream = FakeTTY()
    monkeypatch.setattr("sys.stderr", stream)
    wf = LocalWorkflow(nap(1.6).set_name("long"), workflow_name="ticks")
    if storage:
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    wf.set_progress(True)
    wf.run()
    during = [x for x in stream.getvalue().split("\r") if x.startswith("[ticks] 0/1 nodes")]
    assert max(elapsed(x) for x in during) >= 0.9, during  # redrawn while the node sleeps
    deadline = time.monotonic() + 5
    while any(t.name == "functionfuse-progress" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "functionfuse-progress" for t in threading.enumerate()), "the ticker outlived the run"
    size = len(stream.getvalue())
    time.sleep(1.2)
    assert len(stream.getvalue()) == size  # nothing is drawn after the run


def test_a_progress_display_that_is_off_starts_no_thread():
    before = threading.active_count()
    progress = Progress(RunReport("off", "test"), enabled=False)
    progress.start()
    assert threading.active_count() == before
    progress.close("summary")


def test_progress_is_off_when_not_a_terminal_or_disabled(monkeypatch, capsys):
    LocalWorkflow(seed_quick_start(), workflow_name="quiet").run()
    assert capsys.readouterr().err == ""
    assert progress_enabled(None, FakeTTY()) is True
    monkeypatch.setenv("FUNCTIONFUSE_PROGRESS", "0")
    assert progress_enabled(None, FakeTTY()) is False
    assert progress_enabled(False, FakeTTY()) is False
    assert progress_enabled(True, io.StringIO()) is True
