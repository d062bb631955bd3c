"""Nodes whose results are never stored (``query(...).set_persist(False)``): an
unpicklable intermediate such as a lock or a connection does not block storing the
rest of the workflow; it is computed again when a node that needs it runs."""

from __future__ import annotations

import threading

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import ConfigurationError, SerializationError
from functionfuse.storage import storage_factory

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()
    yield


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})


@workflow
def settings(n):
    CALLS.append("settings")
    return {"rows": n}


@workflow
def connect(settings):
    CALLS.append("connect")
    return {"lock": threading.Lock(), "rows": settings["rows"]}  # a handle: cannot be pickled


@workflow
def query_rows(conn, start):
    CALLS.append(f"query_rows{start}")
    with conn["lock"]:
        return list(range(start, start + conn["rows"]))


@workflow
def report(rows):
    CALLS.append("report")
    return len(rows)


def pipeline():
    conn = connect(settings(3).set_name("settings")).set_name("conn")
    first = query_rows(conn, 0).set_name("first")
    second = query_rows(conn, 10).set_name("second")
    return first, second


def test_an_unpicklable_node_blocks_storage_unless_it_is_never_stored(storage):
    wf = LocalWorkflow(*pipeline(), workflow_name="db")
    wf.set_storage(storage)
    with pytest.raises(SerializationError, match="'conn'"):
        wf.run()
    wf.query("^conn$").set_persist(False)
    assert wf.run() == [[0, 1, 2], [10, 11, 12]]
    assert storage.list_tasks("db", "*") == ["first", "second", "settings"]


def test_a_never_stored_node_runs_only_when_a_node_that_needs_it_runs(storage):
    wf = LocalWorkflow(*pipeline(), workflow_name="resume")
    wf.set_storage(storage)
    wf.query("^conn$").set_persist(False)
    wf.run()
    CALLS.clear()
    assert wf.run() == [[0, 1, 2], [10, 11, 12]]
    assert CALLS == []  # both outputs are loaded: no connection is opened
    [conn] = [p for p in wf.plan() if p.name == "conn"]
    assert (conn.action, conn.state) == ("skip", "not stored")
    storage.remove_task("resume", task_name="second")
    [conn] = [p for p in wf.plan() if p.name == "conn"]
    assert (conn.action, conn.state) == ("replay", "not stored") and "'second'" in conn.reason
    [second] = [p for p in wf.plan() if p.name == "second"]  # missing reads differently from never stored
    assert (second.action, second.state, second.reason) == ("run", "missing", "no stored result")
    assert wf.run() == [[0, 1, 2], [10, 11, 12]]
    assert CALLS == ["connect", "query_rows10"]  # settings is loaded for it
    assert wf.last_run.ran == 2


def test_a_never_stored_output_or_sink_runs_on_every_run(storage):
    rows = query_rows(connect(settings(2).set_name("settings")).set_name("conn"), 0).set_name("rows")
    done = report(rows).set_name("report")
    wf = LocalWorkflow(done, workflow_name="outputs")
    wf.set_storage(storage)
    wf.query("^(conn|report)$").set_persist(False)
    assert wf.run() == 2
    CALLS.clear()
    assert wf.run() == 2
    assert CALLS == ["report"]  # its input is loaded; the connection is not needed
    assert storage.list_tasks("outputs", "*") == ["rows", "settings"]


def test_set_persist_true_stores_again_and_other_values_are_refused(storage):
    wf = LocalWorkflow(settings(1).set_name("settings"), workflow_name="toggle")
    wf.set_storage(storage)
    wf.query("^settings$").set_persist(False)
    wf.run()
    assert storage.list_tasks("toggle", "*") == []
    wf.query("^settings$").set_persist(True)
    wf.run()
    assert storage.list_tasks("toggle", "*") == ["settings"]
    with pytest.raises(ConfigurationError, match="True or False"):
        wf.query("^settings$").set_persist("no")


def test_kfp_refuses_nodes_that_are_never_stored():
    pytest.importorskip("kfp")
    from functionfuse.backends.addons.kfpback import KFPWorkflow

    wf = KFPWorkflow(settings(1).set_name("settings"), workflow_name="kfp")
    with pytest.raises(ConfigurationError, match="KFPWorkflow cannot leave node 'settings' unstored"):
        wf.query("^settings$").set_persist(False)
    wf.query("^settings$").set_persist(True)  # storing is what it does anyway


def test_drawings_show_never_stored_nodes(storage):
    from functionfuse.backends.builtin.graphback import STATE_COLOURS, dot_source

    wf = LocalWorkflow(*pipeline(), workflow_name="drawn")
    wf.set_storage(storage)
    wf.query("^conn$").set_persist(False)
    wf.run()
    dot = dot_source(wf)
    [line] = [x for x in dot.splitlines() if x.strip().startswith('"conn" [')]
    assert STATE_COLOURS["not stored"] in line and "(not stored)" in line
    assert ">not stored<" in dot  # in the legend
