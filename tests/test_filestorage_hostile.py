"""FileStorage in a damaged or hostile folder, and next to a concurrent removal.

Every test keeps a "victim" folder outside the storage root and checks that nothing
the storage does through a link reaches it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time

import pytest

from contracts.storage import TextBlob, TextBlobSerializer
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import CorruptedResultError, StorageError
from functionfuse.storage import _files
from functionfuse.storage.filestorage import FileStorage

DAY = 24 * 3600


@pytest.fixture
def store(tmp_path):
    return FileStorage(tmp_path / "store")


@pytest.fixture
def victim(tmp_path):
    """A folder outside the storage root with old files in it (old enough for any sweep)."""
    root = tmp_path / "victim"
    root.mkdir()
    old = time.time() - 3 * DAY
    for i in range(150):
        p = root / f"20200101T000000.{i:09d}-0000000{i % 10}.json"
        p.write_text("{}")
        os.utime(p, (old, old))
    (root / "sub").mkdir()
    (root / "sub" / "precious.txt").write_text("keep me")
    os.utime(root / "sub", (old, old))
    return root


def intact(victim) -> bool:
    return len(os.listdir(victim)) == 151 and (victim / "sub" / "precious.txt").read_text() == "keep me"


def age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def foreign_result(tmp_path, value="elsewhere", workflow_name="wf", task_name="t"):
    """A valid result stored by another storage outside the root: its file."""
    other = FileStorage(tmp_path / "other")
    other.save(workflow_name, task_name, value)
    return tmp_path / "other" / workflow_name / f"{task_name}.ffr"


# -- symlinks ---------------------------------------------------------------------------
def test_tmp_folder_that_is_a_link_is_refused_and_nothing_behind_it_is_removed(store, victim):
    wf = os.path.join(store.path, "wf")
    os.makedirs(wf)
    os.symlink(victim, os.path.join(wf, ".tmp"))
    with pytest.raises(StorageError, match=r"\.tmp' is a symbolic link.*Remove the link"):
        store.save("wf", "t", 1)
    assert intact(victim)
    assert store.list_tasks("wf") == []


def test_runs_folder_that_is_a_link_is_refused_and_no_report_behind_it_is_trimmed(store, victim):
    store.save("wf", "t", 1)
    os.symlink(victim, os.path.join(store.path, "wf", ".runs"))
    with pytest.raises(StorageError, match=r"\.runs' is a symbolic link.*Remove the link"):
        store.save_run_report("wf", {"n": 1})
    with pytest.raises(StorageError, match=r"\.runs' is a symbolic link"):
        store.list_run_reports("wf")
    assert intact(victim)


def test_a_run_with_a_linked_runs_folder_keeps_its_results_and_the_files_behind_the_link(store, victim, caplog):
    @workflow
    def one():
        return 1

    store.save("ops", "seed", 0)
    os.symlink(victim, os.path.join(store.path, "ops", ".runs"))
    wf = LocalWorkflow(one().set_name("n"), workflow_name="ops")
    wf.set_storage(store)
    with caplog.at_level(logging.WARNING, logger="functionfuse"):
        assert wf.run() == 1
    assert "symbolic link" in caplog.text
    assert store.read_task("ops", "n") == 1
    assert intact(victim)


def test_workflow_folder_that_is_a_link_is_refused_and_removing_it_removes_the_link_only(store, tmp_path):
    result = foreign_result(tmp_path)
    target = result.parent
    os.makedirs(store.path)
    link = os.path.join(store.path, "wf")
    os.symlink(target, link)
    for call in (
        lambda: store.read_task("wf", "t"),
        lambda: store.read_metadata("wf", "t"),
        lambda: store.list_tasks("wf"),
        lambda: store.save("wf", "t", 2),
        lambda: store.remove_task("wf", task_name="t"),
        lambda: store.save_run_report("wf", {}),
    ):
        with pytest.raises(StorageError, match=r"wf' is a symbolic link.*Remove the link"):
            call()
    assert sorted(os.listdir(target)) == [".tmp", "t.ffr"]  # nothing written or removed behind the link
    assert FileStorage(tmp_path / "other").read_task("wf", "t") == "elsewhere"

    store.remove_workflow("wf")
    assert not os.path.lexists(link)
    assert os.listdir(store.path) == []  # no .removing-* left behind
    assert FileStorage(tmp_path / "other").read_task("wf", "t") == "elsewhere"


def test_result_file_that_is_a_link_reads_as_damaged_and_is_replaced_or_unlinked(store, tmp_path):
    target = foreign_result(tmp_path)
    store.save("wf", "seed", 0)
    link = os.path.join(store.path, "wf", "t.ffr")
    os.symlink(target, link)
    assert store.list_tasks("wf") == ["seed", "t"]
    with pytest.raises(CorruptedResultError, match="symbolic link") as info:
        store.read_task("wf", "t")
    assert info.value.path == link
    with pytest.raises(CorruptedResultError, match="symbolic link"):
        store.read_metadata("wf", "t")
    assert store.read_metadata_many("wf", ["t"])["t"].path == link

    store.remove_task("wf", task_name="t")  # unlinks the link, not its target
    assert not os.path.lexists(link)
    assert FileStorage(tmp_path / "other").read_task("wf", "t") == "elsewhere"

    os.symlink(target, link)
    store.save("wf", "t", "mine")  # a new result replaces the link
    assert not os.path.islink(link) and store.read_task("wf", "t") == "mine"
    assert FileStorage(tmp_path / "other").read_task("wf", "t") == "elsewhere"


def test_a_run_recomputes_a_result_that_is_a_link(store, tmp_path):
    @workflow
    def two():
        return 2

    target = foreign_result(tmp_path, value=99, workflow_name="ops", task_name="n")
    os.makedirs(os.path.join(store.path, "ops"))
    os.symlink(target, os.path.join(store.path, "ops", "n.ffr"))
    wf = LocalWorkflow(two().set_name("n"), workflow_name="ops")
    wf.set_storage(store)
    with pytest.warns(Warning):
        assert wf.run() == 2
    assert store.read_task("ops", "n") == 2
    assert FileStorage(tmp_path / "other").read_task("ops", "n") == 99


def test_result_file_that_is_a_fifo_is_refused_without_blocking(store):
    store.save("wf", "seed", 0)
    os.mkfifo(os.path.join(store.path, "wf", "t.ffr"))
    outcome: list = []

    def read():
        try:
            store.read_task("wf", "t")
        except StorageError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert outcome and "not a regular file" in str(outcome[0])


def test_data_folder_that_is_a_link_is_damaged_and_only_the_link_is_removed(store, victim):
    store.register_persistent_serializers(TextBlobSerializer)
    store.save("wf", "t", TextBlob("mine"))
    wf = os.path.join(store.path, "wf")
    (data,) = [e for e in os.listdir(wf) if e.endswith(".data")]
    os.rename(os.path.join(wf, data), os.path.join(wf, "moved"))
    os.symlink(victim, os.path.join(wf, data))
    with pytest.raises(CorruptedResultError, match="symbolic link"):
        store.read_task("wf", "t")

    store.save("wf", "t", TextBlob("again"))  # the replaced version's data link is unlinked
    assert not os.path.lexists(os.path.join(wf, data))
    assert store.read_task("wf", "t").text == "again"
    assert intact(victim)

    # a foreign data link next to the task goes with remove_task, the folder behind it stays
    stray = os.path.join(wf, "t.0123456789abcdef.data")
    os.symlink(victim, stray)
    store.remove_task("wf", task_name="t")
    assert not os.path.lexists(stray)
    assert sorted(os.listdir(wf)) == [".tmp", "moved"]
    assert intact(victim)


def test_links_left_in_tmp_are_unlinked_not_followed(store, victim):
    tmp = os.path.join(store.path, "wf", ".tmp")
    os.makedirs(tmp)
    os.symlink(victim, os.path.join(tmp, "0123456789abcdef.data"))
    os.symlink(victim / "sub" / "precious.txt", os.path.join(tmp, "fedcba9876543210.ffr"))
    for name in os.listdir(tmp):
        age(os.path.join(tmp, name), 2 * DAY)
    store.save("wf", "t", 1)
    assert os.listdir(tmp) == []
    assert intact(victim)


# -- leftovers --------------------------------------------------------------------------
def leftover(tmp: str, name: str, size: int, idle: float) -> str:
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(b"x" * size)
    age(path, idle)
    return path


def test_leftovers_idle_for_ten_minutes_are_removed_and_fresh_ones_kept(store):
    tmp = os.path.join(store.path, "wf", ".tmp")
    os.makedirs(tmp)
    stale = leftover(tmp, "aaaaaaaaaaaaaaaa.ffr", 10, 11 * 60)
    live = leftover(tmp, "bbbbbbbbbbbbbbbb.ffr", 10, 5)
    folder = os.path.join(tmp, "cccccccccccccccc.data")
    os.makedirs(folder)
    leftover(folder, "chunk", 10, 11 * 60)
    age(folder, 11 * 60)
    store.save("wf", "t", 1)
    assert sorted(os.listdir(tmp)) == [os.path.basename(live)]
    assert not os.path.exists(stale)


def test_a_staging_folder_still_written_to_is_kept(store, monkeypatch):
    monkeypatch.setattr(_files, "MAX_TMP_BYTES", 0)
    tmp = os.path.join(store.path, "wf", ".tmp")
    folder = os.path.join(tmp, "cccccccccccccccc.data")
    os.makedirs(folder)
    leftover(folder, "old", 10, 11 * 60)
    leftover(folder, "being_written", 10, 1)  # a live serializer rewrites a file in place
    age(folder, 11 * 60)
    store.save("wf", "t", 1)
    assert os.listdir(tmp) == ["cccccccccccccccc.data"]


def test_leftovers_over_the_cap_are_removed_oldest_first_but_never_live_ones(store, monkeypatch):
    monkeypatch.setattr(_files, "MAX_TMP_BYTES", 250)
    monkeypatch.setattr(_files, "MAX_TMP_ENTRIES", 1000)
    tmp = os.path.join(store.path, "wf", ".tmp")
    os.makedirs(tmp)
    for i, idle in enumerate([500, 400, 300, 200, 100]):  # all younger than the age limit
        leftover(tmp, f"{i:016x}.ffr", 100, idle)
    leftover(tmp, "ffffffffffffffff.ffr", 10_000, 1)  # a live write: not counted, not removed
    store.save("wf", "t", 1)
    assert sorted(os.listdir(tmp)) == [f"{3:016x}.ffr", f"{4:016x}.ffr", "ffffffffffffffff.ffr"]


def test_leftovers_over_the_count_cap_are_removed_oldest_first(store, monkeypatch):
    monkeypatch.setattr(_files, "MAX_TMP_ENTRIES", 2)
    tmp = os.path.join(store.path, "wf", ".tmp")
    os.makedirs(tmp)
    for i in range(5):
        leftover(tmp, f"{i:016x}.ffr", 1, 500 - i * 10)
    store.save("wf", "t", 1)
    assert sorted(os.listdir(tmp)) == [f"{3:016x}.ffr", f"{4:016x}.ffr"]


def test_removing_folders_at_the_root_are_cleaned_up(tmp_path, victim):
    root = tmp_path / "store"
    trash = root / ".removing-0123abcd"
    (trash / "wf" / ".tmp").mkdir(parents=True)
    (trash / "wf" / "t.ffr").write_text("x")
    os.symlink(victim, root / ".removing-feedbeef")
    (root / ".removing-notes").mkdir()  # not a name file storage makes: left alone
    FileStorage(root).save("wf", "t", 1)
    assert sorted(os.listdir(root)) == [".removing-notes", "wf"]
    assert intact(victim)

    (trash / "x").mkdir(parents=True)
    FileStorage(root).remove_workflow("gone")  # removing cleans them up too
    assert sorted(os.listdir(root)) == [".removing-notes", "wf"]


# -- concurrent removal -----------------------------------------------------------------
class RemovesTheWorkflow:
    """Pickles to 5; removes the workflow (as another process would) while it is pickled."""

    def __init__(self, path: str, times: int = 1) -> None:
        self.path, self.times = path, times

    def __reduce__(self):
        if self.times:
            self.times -= 1
            FileStorage(self.path).remove_workflow("wf")
        return (int, (5,))


def test_a_write_recreates_a_workflow_removed_meanwhile(store):
    store.save("wf", "before", 0)
    store.save("wf", "t", RemovesTheWorkflow(store.path))
    assert store.list_tasks("wf") == ["t"] and store.read_task("wf", "t") == 5


def test_a_write_that_keeps_losing_its_workflow_says_so(store):
    store.save("wf", "before", 0)
    with pytest.raises(StorageError, match=r"[Ww]orkflow 'wf' was removed while running"):
        store.save("wf", "t", RemovesTheWorkflow(store.path, times=2))
    assert store.list_tasks("wf") == []


def test_a_run_survives_its_workflow_being_removed_during_a_write(store):
    path = store.path

    @workflow
    def make():
        return RemovesTheWorkflow(path)

    wf = LocalWorkflow(make().set_name("n"), workflow_name="wf")
    wf.set_storage(store)
    store.save("wf", "seed", 0)
    wf.run()
    assert store.read_task("wf", "n") == 5
    assert len(store.list_run_reports("wf")) == 1


def test_a_second_remove_workflow_that_loses_the_race_is_not_an_error(store, monkeypatch):
    store.save("wf", "t", 1)
    real_rename = os.rename

    def racing(src, dst, *args, **kwargs):
        if os.path.basename(src) == "wf":  # another remover renames it first
            real_rename(src, os.path.join(store.path, ".removing-aaaaaaaa"))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", racing)
    store.remove_workflow("wf")
    monkeypatch.undo()
    assert store.list_tasks("wf") == []
    store.remove_workflow("wf")
    assert os.listdir(store.path) == []


def _at_once(n: int, work) -> list:
    """Run *work* in *n* threads released together; the exceptions they raised."""
    errors: list = []
    barrier = threading.Barrier(n)

    def run():
        barrier.wait()
        try:
            work()
        except Exception as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_remove_workflow_calls_all_succeed(store):
    errors: list = []
    for _ in range(20):
        for i in range(5):
            store.save("wf", f"t{i}", i)
        errors += _at_once(6, lambda: FileStorage(store.path).remove_workflow("wf"))
    assert errors == []
    assert store.list_tasks("wf") == []


def test_a_run_report_whose_folder_vanishes_is_written_again(store, monkeypatch):
    store.save("wf", "t", 1)
    real_replace = os.replace
    removals = [1]

    def racing(src, dst, *args, **kwargs):
        if os.path.basename(os.path.dirname(dst)) == ".runs" and removals:
            removals.pop()
            FileStorage(store.path).remove_workflow("wf")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", racing)
    store.save_run_report("wf", {"n": 1})
    assert store.list_run_reports("wf") == [{"n": 1}]

    removals[:] = [1, 1]
    with pytest.raises(StorageError, match=r"[Ww]orkflow 'wf' was removed while"):
        store.save_run_report("wf", {"n": 2})


def test_concurrent_run_reports_trim_without_errors(store, monkeypatch):
    monkeypatch.setattr(FileStorage, "keep_run_reports", 3)

    def write():
        for i in range(40):
            FileStorage(store.path).save_run_report("wf", {"n": i})

    errors = _at_once(4, write)
    assert errors == []
    assert len(store.list_run_reports("wf")) == 3


def test_only_report_files_are_trimmed(store, monkeypatch):
    monkeypatch.setattr(FileStorage, "keep_run_reports", 2)
    runs = os.path.join(store.path, "wf", ".runs")
    os.makedirs(runs)
    with open(os.path.join(runs, "00-notes.txt"), "w") as f:
        f.write("mine")
    for i in range(4):
        store.save_run_report("wf", {"n": i})
    assert [r["n"] for r in store.list_run_reports("wf")] == [2, 3]
    assert "00-notes.txt" in os.listdir(runs)


class SweepsMidWrite:
    """Pickles to 7; while it is pickled, ages every entry of ``.tmp`` by two days and
    lets a fresh storage object write to the same workflow (which sweeps ``.tmp``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.before: list = []
        self.after: list = []

    def __reduce__(self):
        tmp = os.path.join(self.path, "wf", ".tmp")
        self.before = sorted(os.listdir(tmp))
        for name in self.before:
            age(os.path.join(tmp, name), 2 * DAY)
        FileStorage(self.path).save("wf", "other", 1)
        self.after = sorted(os.listdir(tmp))
        return (int, (7,))


@pytest.mark.skipif(importlib.util.find_spec("fcntl") is None, reason="write locks need fcntl.flock")
def test_a_write_in_progress_is_never_swept_however_old_its_files_look(store):
    store.save("wf", "seed", 0)
    obj = SweepsMidWrite(store.path)
    store.save("wf", "t", obj)
    assert obj.before and obj.after == obj.before  # its staged file survived the sweep
    assert store.read_task("wf", "t") == 7


@pytest.mark.skipif(importlib.util.find_spec("fcntl") is None, reason="write locks need fcntl.flock")
def test_leftovers_of_a_write_still_holding_its_lock_are_kept(store):
    import fcntl

    tmp = os.path.join(store.path, "wf", ".tmp")
    os.makedirs(os.path.join(tmp, "abcdefabcdefabcd.data"))
    held = leftover(tmp, "abcdefabcdefabcd.ffr", 10, 2 * DAY)
    age(os.path.join(tmp, "abcdefabcdefabcd.data"), 2 * DAY)
    with open(held, "rb+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        store.save("wf", "t", 1)
        assert sorted(os.listdir(tmp)) == ["abcdefabcdefabcd.data", "abcdefabcdefabcd.ffr"]
    FileStorage(store.path).save("wf", "t", 2)  # the lock is gone: now they are leftovers
    assert os.listdir(tmp) == []


def test_a_serializer_file_that_is_a_link_is_never_followed(tmp_path):
    """A file inside a result's data folder replaced by a link to a file outside the
    root: the read refuses it (damage), and the file behind the link is untouched."""
    from functionfuse.errors import CorruptedResultError
    from functionfuse.storage.filestorage import FileStorage

    victim = tmp_path / "victim.txt"
    victim.write_text("secret outside the store")
    storage = FileStorage(tmp_path / "store")
    storage.register_persistent_serializers(TextBlobSerializer)
    storage.save("wf", "t", TextBlob("mine"))
    (data,) = (tmp_path / "store" / "wf").glob("t.*.data")
    (data / "blob.txt").unlink()
    os.symlink(victim, data / "blob.txt")
    with pytest.raises(CorruptedResultError, match="is a link"):
        storage.read_task("wf", "t")
    storage.save("wf", "t", TextBlob("new"))
    assert storage.read_task("wf", "t").text == "new"
    assert victim.read_text() == "secret outside the store"


def test_a_serializer_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    from functionfuse.errors import CorruptedResultError
    from functionfuse.storage.filestorage import FileStorage

    storage = FileStorage(tmp_path / "store")
    storage.register_persistent_serializers(TextBlobSerializer)
    storage.save("wf", "t", TextBlob("mine"))
    (data,) = (tmp_path / "store" / "wf").glob("t.*.data")
    (data / "blob.txt").unlink()
    os.mkfifo(data / "blob.txt")
    with pytest.raises(CorruptedResultError, match="not a file"):
        storage.read_task("wf", "t")  # no open() of the FIFO: it would block forever


def test_a_segment_too_large_to_allocate_is_a_storage_error(tmp_path):
    """A crafted header naming a 1 TiB segment, on a sparse file of that size: a clear
    StorageError, not an OSError or MemoryError from the allocation."""
    from framing import get_raw, payload_offset, reframe

    from functionfuse.errors import StorageError
    from functionfuse.storage.filestorage import FileStorage

    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            if f.read().strip() == "1":
                pytest.skip("this kernel grants any allocation (vm.overcommit_memory=1): the read would go on")
    except OSError:
        pass
    storage = FileStorage(tmp_path / "store")
    storage.save("wf", "t", 1)
    n = 1 << 40

    def edit(h):
        h["segments"] = [n]
        h["meta"]["size"] = n

    raw = reframe(get_raw(storage, "wf", "t"), edit)
    head = raw[: payload_offset(raw)]
    path = tmp_path / "store" / "wf" / "t.ffr"
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + n)  # sparse: no disk used
    with pytest.raises(StorageError, match="cannot allocate"):
        storage.read_task("wf", "t")


def test_rm_by_pattern_leaves_foreign_files_alone(tmp_path):
    from functionfuse.storage.filestorage import FileStorage

    storage = FileStorage(tmp_path / "store")
    storage.save("wf", "good", 1)
    foreign = tmp_path / "store" / "wf" / "bad name .ffr"
    foreign.write_bytes(b"another tool's file")
    assert storage.remove_task("wf", pattern="*") == ["good"]
    assert foreign.exists()
