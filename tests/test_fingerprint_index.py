"""The fingerprint index in runs: a resumed run reads one index instead of every
result's header, and an index entry that no longer describes the stored result (it was
replaced by another run, saved by hand, removed with the CLI) never makes a run load a
wrong value: the node is recomputed. The storage-level contract is
``tests/contracts/fpindex.py``; this is the same through LocalWorkflow and the CLI."""

from __future__ import annotations

import os

import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.cli import main as cli
from functionfuse.storage import fpindex, storage_factory

WF = "idx"


@workflow
def source(v):
    return v


@workflow
def double(x):
    return 2 * x


def run(path, v):
    """Run ``double(source(v))`` (nodes "a" and "b") with file storage at *path*: (value, nodes run)."""
    wf = LocalWorkflow(double(source(v).set_name("a")).set_name("b"), workflow_name=WF)
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(path)}}))
    value = wf.run()
    return value, wf.last_run.ran


def index_file(path) -> str:
    return os.path.join(str(path), WF, fpindex.NAME)


def read_bytes(p: str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def write_bytes(p: str, data: bytes) -> None:
    with open(p, "wb") as f:
        f.write(data)


def test_a_resumed_run_reads_the_index_not_the_headers(tmp_path, monkeypatch):
    assert run(tmp_path, 1) == (2, 2)
    assert os.path.isfile(index_file(tmp_path))  # written at the end of the run
    headers: list[str] = []
    real = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}).read_metadata

    def counted(self, w, t):
        headers.append(t)
        return real(w, t)

    monkeypatch.setattr(type(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})), "read_metadata", counted)
    assert run(tmp_path, 1) == (2, 0)
    assert headers == []
    os.unlink(index_file(tmp_path))  # removing it is safe: the headers are read, and it is made again
    assert run(tmp_path, 1) == (2, 0)
    assert sorted(headers) == ["a", "b"]
    assert os.path.isfile(index_file(tmp_path))


def test_result_replaced_by_another_run_whose_index_update_was_lost_is_recomputed(tmp_path):
    assert run(tmp_path, 1) == (2, 2)
    first = read_bytes(index_file(tmp_path))
    assert run(tmp_path, 2) == (4, 2)  # same names and sizes, other values
    write_bytes(index_file(tmp_path), first)  # the index says what the first run stored
    assert run(tmp_path, 1) == (2, 2)  # never 4


def test_result_saved_by_hand_without_a_fingerprint_is_recomputed(tmp_path):
    assert run(tmp_path, 1) == (2, 2)
    by_hand = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    by_hand.save(WF, "b", 9)  # same size as the stored 2, and no fingerprint
    assert run(tmp_path, 1) == (2, 1)  # b is unverified: recomputed under "fingerprint", never 9


def test_result_removed_with_the_cli_is_recomputed(tmp_path):
    assert run(tmp_path, 1) == (2, 2)
    before = read_bytes(index_file(tmp_path))
    assert cli(["storage", "rm", WF, "b", "--yes", "--storage", str(tmp_path)]) == 0
    assert read_bytes(index_file(tmp_path)) == before  # the CLI leaves the index as it was
    assert run(tmp_path, 1) == (2, 1)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "other workflow"])
def test_damaged_index_is_ignored(tmp_path, damage):
    assert run(tmp_path, 1) == (2, 2)
    body = read_bytes(index_file(tmp_path))
    if damage == "truncated":
        body = body[: len(body) // 2]
    elif damage == "flipped byte":
        body = body[:40] + bytes([body[40] ^ 1]) + body[41:]
    else:
        body = body.replace(b'"workflow":"idx"', b'"workflow":"xdi"')
    write_bytes(index_file(tmp_path), body)
    assert run(tmp_path, 2) == (4, 2)
    assert run(tmp_path, 2) == (4, 0)


def forge(storage, value):
    """Store *value* as node "b" through *storage* with the fingerprint "b" has now (what
    another process could do between a run's plan and its read): only the checksum
    tells the two results apart."""
    meta = {k: v for k, v in storage.read_metadata(WF, "b").items() if k not in ("checksum", "format", "signed")}
    storage.save(WF, "b", value, meta)


@pytest.mark.parametrize("parallel", [1, 2], ids=["serial", "pool threads"])
def test_result_replaced_between_the_plan_and_its_load_is_recomputed(tmp_path, parallel):
    """The identity check happens when the plan is made; a result replaced after it (by
    another process, with the very fingerprint the plan expects) is refused when the run
    reads it, and recomputed through the damaged-result path: never loaded. With
    ``parallel=2`` the read happens in a thread of the pool, which must see the plan."""
    from functionfuse.errors import ResultRecomputedWarning

    assert run(tmp_path, 1) == (2, 2)
    wf = LocalWorkflow(double(source(1).set_name("a")).set_name("b"), workflow_name=WF, parallel=parallel)
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf.set_storage(storage)
    other = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    read = storage.read_task

    def replaced_first(workflow, task):
        if task == "b":
            forge(other, 9)  # same fingerprint as what the plan saw, other value
        return read(workflow, task)

    storage.read_task = replaced_first
    with pytest.warns(ResultRecomputedWarning, match="replaced after the plan was made"):
        assert wf.run() == 2
    assert (wf.last_run.ran, wf.last_run.recomputed) == (1, 1)
    del storage.read_task
    forge(other, 9)
    assert storage.read_task(WF, "b") == 9  # after the run, a read by hand is not checked against its plan


def test_the_check_belongs_to_the_run_not_to_the_storage_object(tmp_path):
    """Two runs of one workflow share a storage object, one inside the other (as two
    threads or a notebook can interleave them). The inner run plans after "b" was
    replaced and loads the new result, which its own plan judged; then the outer run
    reads "b": it must still be checked against the outer plan (refused, recomputed),
    not against the inner run's plan, and not unchecked because the inner run ended."""
    from functionfuse.errors import ResultRecomputedWarning

    assert run(tmp_path, 1) == (2, 2)
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    other = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    outer = LocalWorkflow(double(source(1).set_name("a")).set_name("b"), workflow_name=WF)
    inner = LocalWorkflow(double(source(1).set_name("a")).set_name("b"), workflow_name=WF)
    outer.set_storage(storage)
    inner.set_storage(storage)
    read = storage.read_task
    inner_values = []

    def replaced_then_inner_run(workflow, task):
        if task == "b" and not inner_values:
            forge(other, 9)
            inner_values.append(None)
            storage.read_task = read  # the inner run reads as usual
            inner_values[0] = inner.run()
            storage.read_task = replaced_then_inner_run
        return read(workflow, task)

    storage.read_task = replaced_then_inner_run
    with pytest.warns(ResultRecomputedWarning, match="replaced after the plan was made"):
        assert outer.run() == 2
    assert inner_values == [9]  # the inner plan saw the forged result: its own judgement
    assert (inner.last_run.loaded, outer.last_run.ran, outer.last_run.recomputed) == (1, 1, 1)


def test_a_plan_alone_checks_no_later_read(tmp_path):
    """``wf.plan()`` is not a run: it leaves nothing behind that refuses a result
    legitimately replaced afterwards and read by hand."""
    assert run(tmp_path, 1) == (2, 2)
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(double(source(1).set_name("a")).set_name("b"), workflow_name=WF)
    wf.set_storage(storage)
    assert [step.action for step in wf.plan()] == ["skip", "load"]
    other = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    other.save(WF, "b", 7)  # replaced by another process (or storage object)
    assert storage.read_task(WF, "b") == 7


@workflow
def both(x, y):
    return (x, y)


def test_a_result_the_run_saved_is_checked_when_a_later_attempt_loads_it(tmp_path):
    """Attempt 1 runs and saves "a", then finds "d" damaged: attempt 2 loads "a". If
    another process replaced "a" in between, that read is refused too (the run's own
    save is what its plan expects), not trusted because the plan that made "a" ran it."""
    from functionfuse.errors import ResultRecomputedWarning

    def make():
        return LocalWorkflow(both(source(1).set_name("a"), double(50).set_name("d")).set_name("out"), workflow_name=WF)

    def path(name):
        return os.path.join(str(tmp_path), WF, f"{name}.ffr")

    wf = make()
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    assert wf.run() == (1, 100)
    os.remove(path("a"))
    os.remove(path("out"))
    damaged = bytearray(read_bytes(path("d")))
    damaged[-3] ^= 0xFF
    write_bytes(path("d"), bytes(damaged))
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    other = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    read = storage.read_task
    forged = []

    def replaced_once(workflow, task):
        if task == "a" and not forged:
            meta = {k: v for k, v in other.read_metadata(WF, "a").items() if k not in ("checksum", "format", "signed")}
            other.save(WF, "a", 9, meta)
            forged.append(True)
        return read(workflow, task)

    storage.read_task = replaced_once
    wf = make()
    wf.set_storage(storage)
    with pytest.warns(ResultRecomputedWarning, match="replaced after the plan was made"):
        assert wf.run() == (1, 100)
    assert forged and wf.last_run.recomputed == 2
