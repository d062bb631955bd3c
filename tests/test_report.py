"""Run reports and the progress line."""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
import time

import pytest

from contracts.backend import seed_quick_start
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import NodeExecutionError, SerializationError, StorageError
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


def test_time_by_clock_names_nodes_only_when_their_times_are_read():
    asked = []

    def names():
        asked.append(1)
        return ["a", "b", "c"]

    report = RunReport(workflow="w", backend="local")
    stamps = [10.0, 10.5, 12.0]  # a run stopped after two nodes: the last clock reading is missing
    report.time_by_clock(stamps, names)
    assert asked == []
    assert report.node_seconds == {"a": 0.5, "b": 1.5}
    assert report.node_seconds == {"a": 0.5, "b": 1.5} and asked == [1]  # read once


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


# -- how a run ended: finished, failed or interrupted, and at which node -------------------
@workflow
def interrupt(x):
    raise KeyboardInterrupt


@workflow
def leave(x):
    sys.exit(3)


@workflow
def lock(x):
    return threading.Lock()  # cannot be pickled: file storage refuses it


STOPS = {"KeyboardInterrupt": (interrupt, KeyboardInterrupt), "SystemExit": (leave, SystemExit)}


def file_storage(path):
    return storage_factory({"kind": "file", "options": {"path": str(path)}})


@pytest.mark.parametrize("stored", [False, True], ids=["plain", "stored"])
@pytest.mark.parametrize("stop", list(STOPS), ids=list(STOPS))
def test_a_node_that_stops_the_run_is_named_and_the_run_interrupted(tmp_path, stop, stored):
    func, kind = STOPS[stop]
    wf = LocalWorkflow(func(nap(0.0).set_name("ok")).set_name("stop"), workflow_name="stopped")
    storage = file_storage(tmp_path) if stored else None
    wf.set_storage(storage)
    with pytest.raises(kind):  # re-raised as it was: a stop request is not wrapped
        wf.run()
    report = wf.last_run
    assert (report.status, report.failed, report.ran) == ("interrupted", "stop", 1)
    assert report.error.startswith(stop)
    assert "workflow 'stopped' interrupted at 'stop' in " in report.summary()
    if stored:
        (saved,) = storage.list_run_reports("stopped")
        assert (saved["status"], saved["failed"], saved["ran"]) == ("interrupted", "stop", 1)
        assert storage.list_tasks("stopped") == ["ok"]


def test_a_result_that_cannot_be_stored_names_its_node(tmp_path):
    storage = file_storage(tmp_path)
    wf = LocalWorkflow(lock(nap(0.0).set_name("ok")).set_name("lock"), workflow_name="unpicklable")
    wf.set_storage(storage)
    with pytest.raises(SerializationError):
        wf.run()
    assert (wf.last_run.status, wf.last_run.failed) == ("failed", "lock")
    (saved,) = storage.list_run_reports("unpicklable")
    assert (saved["status"], saved["failed"]) == ("failed", "lock")
    assert "SerializationError" in saved["error"]


def test_a_finished_run_says_so():
    wf = LocalWorkflow(seed_quick_start(), workflow_name="fine")
    wf.run()
    assert (wf.last_run.status, wf.last_run.failed, wf.last_run.error) == ("finished", None, None)
    assert wf.last_run.as_dict()["status"] == "finished"
    assert RunReport("w", "test").status == "running"  # until the run ends


LOGGED = [
    pytest.param(broken, NodeExecutionError, "failed at 'end'", id="failed"),
    pytest.param(lock, SerializationError, "failed at 'end'", id="unstorable"),
    pytest.param(interrupt, KeyboardInterrupt, "interrupted at 'end'", id="KeyboardInterrupt"),
    pytest.param(leave, SystemExit, "interrupted at 'end'", id="SystemExit"),
]


@pytest.mark.parametrize("func, kind, outcome", LOGGED)
def test_the_logged_summary_says_how_the_run_ended(tmp_path, caplog, func, kind, outcome):
    wf = LocalWorkflow(func(nap(0.0).set_name("ok")).set_name("end"), workflow_name="logged")
    wf.set_storage(file_storage(tmp_path))
    with caplog.at_level(logging.INFO, logger="functionfuse"), pytest.raises(kind):
        wf.run()
    (record,) = [r for r in caplog.records if r.getMessage().startswith("workflow 'logged'")]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"workflow 'logged' {outcome} in ")
    assert "finished" not in record.getMessage()


def test_a_run_that_fails_before_any_node_is_not_finished(tmp_path, monkeypatch, caplog):
    storage = file_storage(tmp_path)

    def unreachable(*args, **kwargs):
        raise StorageError("the storage is unreachable")

    # what a plan reads first: the listing, and the fingerprint index with it
    monkeypatch.setattr(storage, "stored_tasks", unreachable)
    monkeypatch.setattr(storage, "read_fingerprints", unreachable)
    wf = LocalWorkflow(seed_quick_start(), workflow_name="early")
    wf.set_storage(storage)
    with caplog.at_level(logging.INFO, logger="functionfuse"), pytest.raises(StorageError):
        wf.run()
    assert (wf.last_run.status, wf.last_run.failed) == ("failed", None)
    assert "workflow 'early' failed in " in caplog.text and "finished" not in caplog.text


def test_the_progress_line_ends_with_interrupted_at_the_node(monkeypatch):
    stream = FakeTTY()
    monkeypatch.setattr("sys.stderr", stream)
    wf = LocalWorkflow(interrupt(nap(0.0).set_name("ok")).set_name("stop"), workflow_name="shown")
    wf.set_progress(True)
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    last = stream.getvalue().rstrip("\n").split("\n")[-1]
    assert last.startswith("workflow 'shown' interrupted at 'stop' in ")


@pytest.mark.parametrize(
    "fields, text",
    [
        ({"status": "finished"}, "workflow 'w' finished in "),
        ({"status": "failed", "failed": "n"}, "workflow 'w' failed at 'n' in "),
        ({"status": "failed"}, "workflow 'w' failed in "),
        ({"status": "interrupted", "failed": "n"}, "workflow 'w' interrupted at 'n' in "),
        ({"status": "interrupted"}, "workflow 'w' interrupted in "),
    ],
    ids=["finished", "failed-at", "failed", "interrupted-at", "interrupted"],
)
def test_summary_wording(fields, text):
    assert RunReport("w", "test", **fields).summary().startswith(text)


# -- RayWorkflow: the same report fields ---------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    raysupport = pytest.importorskip("raysupport")
    pytest.importorskip("ray")
    import ray

    started = not ray.is_initialized()
    raysupport.start_local_ray()
    yield
    if started:
        raysupport.stop_ray()


RAY_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")


@RAY_WARNINGS
def test_ray_a_result_that_cannot_be_stored_names_its_node(local_ray, tmp_path):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    storage = file_storage(tmp_path)
    wf = RayWorkflow(lock(nap(0.0).set_name("ok")).set_name("lock"), workflow_name="ray_unpicklable")
    wf.set_storage(storage)
    with pytest.raises(SerializationError):
        wf.run()
    (saved,) = storage.list_run_reports("ray_unpicklable")
    assert (saved["status"], saved["failed"], saved["backend"]) == ("failed", "lock", "RayWorkflow")


@RAY_WARNINGS
def test_ray_a_stopped_driver_is_interrupted(local_ray, tmp_path, monkeypatch):
    from functionfuse.backends.builtin import rayback

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    storage = file_storage(tmp_path)
    wf = rayback.RayWorkflow(nap(0.0).set_name("ok"), workflow_name="ray_stopped")
    wf.set_storage(storage)
    monkeypatch.setattr(rayback.ray, "wait", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    (saved,) = storage.list_run_reports("ray_stopped")
    assert saved["status"] == "interrupted"


@RAY_WARNINGS
def test_ray_a_node_raising_keyboard_interrupt_fails_the_run_at_that_node(local_ray, tmp_path):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    storage = file_storage(tmp_path)
    wf = RayWorkflow(interrupt(nap(0.0).set_name("ok")).set_name("stop"), workflow_name="ray_node_stop")
    wf.set_storage(storage)
    with pytest.raises(NodeExecutionError):  # in a worker, not in this process: the node failed
        wf.run()
    (saved,) = storage.list_run_reports("ray_node_stop")
    assert (saved["status"], saved["failed"]) == ("failed", "stop")


# -- logs where there is no terminal ---------------------------------------------------------
def node_records(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "functionfuse.nodes"]


def test_nodes_are_logged_as_they_start_and_finish(tmp_path, caplog):
    wf = LocalWorkflow(seed_quick_start(), workflow_name="logged")
    wf.set_storage(file_storage(tmp_path))
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    records = node_records(caplog)
    assert records[0] == "node 'node1' of workflow 'logged' started"
    assert records[1].startswith("node 'node1' of workflow 'logged' finished in ")
    assert sum("started" in r for r in records) == 3 and sum("finished in" in r for r in records) == 3


def test_node_records_of_fast_nodes_are_throttled(tmp_path, caplog):
    last = nap(0.0).set_name("n0")
    for k in range(1, 60):
        last = nap(0.0, last).set_name(f"n{k}")
    wf = LocalWorkflow(last, workflow_name="many")
    wf.set_storage(file_storage(tmp_path))
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    seconds = time.monotonic() - t0
    records = node_records(caplog)
    kept = [r for r in records if "started" in r or "finished in" in r]
    assert len(kept) <= 10 + 10 * seconds + 1, (seconds, kept)
    assert re.fullmatch(r"\d+ node records of workflow 'many' not logged \(more than 10 a second\)", records[-1])


def test_a_slow_node_finish_is_always_logged(tmp_path, caplog):
    last = nap(0.0).set_name("n0")
    for k in range(1, 30):
        last = nap(0.0, last).set_name(f"n{k}")
    slow = nap(1.05, last).set_name("slow")
    wf = LocalWorkflow(slow, workflow_name="slow_last")
    wf.set_storage(file_storage(tmp_path))
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    assert any(r.startswith("node 'slow' of workflow 'slow_last' finished in 1.") for r in node_records(caplog))


def test_a_long_node_of_the_fast_path_is_logged(caplog):
    wf = LocalWorkflow(nap(1.3, nap(0.0).set_name("quick")).set_name("long"), workflow_name="plain_long")
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    records = node_records(caplog)
    assert len(records) == 2, records  # the quick node is not logged
    assert re.fullmatch(r"node 'long' of workflow 'plain_long' started \(running for \d\.\d s\)", records[0])
    assert re.fullmatch(r"node 'long' of workflow 'plain_long' finished in 1\.\d\d s", records[1])


@pytest.mark.parametrize("storage", [False, True], ids=["plain", "stored"])
def test_a_progress_record_names_the_running_node_without_a_terminal(monkeypatch, tmp_path, caplog, capsys, storage):
    monkeypatch.setenv("FUNCTIONFUSE_PROGRESS_EVERY", "0.5")
    wf = LocalWorkflow(nap(1.6).set_name("long"), workflow_name="periodic")
    if storage:
        wf.set_storage(file_storage(tmp_path))
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    assert capsys.readouterr().err == ""  # not a terminal: no line drawn
    records = [r.getMessage() for r in caplog.records if r.name == "functionfuse.progress"]
    assert records[0] == "run of workflow 'periodic' started: LocalWorkflow, 1 nodes"
    assert records[1:] and all(r.startswith("[periodic] 0/1 nodes") for r in records[1:]), records
    assert "now: long" in records[1]


def test_without_info_logging_a_run_without_a_terminal_starts_no_thread(tmp_path):
    before = {t.ident for t in threading.enumerate()}
    seen = []

    @workflow
    def look():
        seen.extend(t.name for t in threading.enumerate() if t.ident not in before)
        return 1

    LocalWorkflow(look().set_name("look"), workflow_name="no_thread").run()
    assert "functionfuse-progress" not in seen


def test_the_progress_line_names_the_running_node(monkeypatch):
    stream = FakeTTY()
    monkeypatch.setattr("sys.stderr", stream)
    wf = LocalWorkflow(nap(1.2).set_name("long"), workflow_name="named")
    wf.set_progress(True)
    wf.run()
    during = [x for x in stream.getvalue().split("\r") if x.startswith("[named] 0/1 nodes")]
    assert any("now: long" in x for x in during), during


def test_a_long_last_node_under_the_progress_line_has_its_finish_logged(monkeypatch, caplog):
    stream = FakeTTY()
    monkeypatch.setattr("sys.stderr", stream)
    wf = LocalWorkflow(nap(1.2).set_name("last"), workflow_name="drawn_and_logged")
    wf.set_progress(True)
    with caplog.at_level(logging.INFO, logger="functionfuse"):
        wf.run()
    records = node_records(caplog)
    assert any(r.startswith("node 'last' of workflow 'drawn_and_logged' finished in 1.2") for r in records), records
