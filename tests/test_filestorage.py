"""FileStorage: the storage contract, plus its on-disk layout and atomicity."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from contracts.storage import StorageContract, TextBlob, TextBlobSerializer, damage_file_result
from functionfuse.errors import ConfigurationError, CorruptedResultError, StorageError
from functionfuse.storage import available_storages, register_storage, storage_factory
from functionfuse.storage.filestorage import FileStorage


class TestFileStorageContract(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})

    @pytest.fixture
    def corrupt(self):
        return damage_file_result


@pytest.fixture
def storage(tmp_path):
    return FileStorage(tmp_path / "store")


def test_layout_is_path_slash_workflow(storage):
    storage.save("operations", "node1", 1)
    assert os.path.isfile(os.path.join(storage.path, "operations", "node1.ffr"))
    assert storage.list_workflows() == ["operations"]


def test_no_temporary_files_are_left(storage):
    for i in range(5):
        storage.save("wf", f"t{i}", np.arange(i * 1000))
    assert os.listdir(os.path.join(storage.path, "wf", ".tmp")) == []


def test_failed_write_leaves_nothing_behind(storage):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(StorageError):
        storage.save("wf", "t", Boom())
    assert storage.list_tasks("wf") == []
    assert os.listdir(os.path.join(storage.path, "wf", ".tmp")) == []


def test_header_damage_is_detected(storage):
    storage.save("wf", "t", "value")
    path = os.path.join(storage.path, "wf", "t.ffr")
    with open(path, "r+b") as f:
        f.seek(30)
        f.write(b"#")
    with pytest.raises(CorruptedResultError, match="header"):
        storage.read_task("wf", "t")


def test_foreign_file_is_not_loaded(storage):
    os.makedirs(os.path.join(storage.path, "wf"))
    with open(os.path.join(storage.path, "wf", "t.ffr"), "wb") as f:
        pickle.dump("an old plain pickle", f)
    with pytest.raises(CorruptedResultError, match="not a functionfuse result"):
        storage.read_task("wf", "t")


def test_serializer_data_lives_in_one_folder_per_version(storage):
    storage.register_persistent_serializers(TextBlobSerializer)
    storage.save("wf", "t", TextBlob("one"))
    storage.save("wf", "t", TextBlob("two"))
    data = [e for e in os.listdir(os.path.join(storage.path, "wf")) if e.endswith(".data")]
    assert len(data) == 1 and data[0].startswith("t.")
    storage.remove_task("wf", task_name="t")
    assert [e for e in os.listdir(os.path.join(storage.path, "wf")) if not e.startswith(".")] == []


def test_result_written_with_a_serializer_reads_back_on_a_fresh_storage_once_registered(storage):
    storage.register_persistent_serializers(TextBlobSerializer)
    storage.save("wf", "t", TextBlob("x"))
    fresh = FileStorage(storage.path)
    with pytest.raises(StorageError, match="register_persistent_serializers"):
        fresh.read_task("wf", "t")
    fresh.register_persistent_serializers(TextBlobSerializer)
    assert fresh.read_task("wf", "t").text == "x"


def test_large_array_round_trip_without_copies_in_the_pickle_stream(storage):
    a = np.random.default_rng(0).random(2_000_000)
    meta = storage.save("wf", "big", a)
    path = os.path.join(storage.path, "wf", "big.ffr")
    # the file is the array's bytes plus a small frame: no second copy
    assert os.path.getsize(path) < a.nbytes + 4096
    assert meta["size"] >= a.nbytes
    back = storage.read_task("wf", "big")
    np.testing.assert_array_equal(back, a)
    back[0] = -1.0  # large buffers are read into writable memory too
    assert back[0] == -1.0


def test_factory_errors_are_clear(tmp_path):
    with pytest.raises(ConfigurationError, match="Known kinds: file"):
        storage_factory({"kind": "floppy", "options": {}})
    with pytest.raises(ConfigurationError, match="'path'"):
        storage_factory({"kind": "file", "options": {"folder": "x"}})
    with pytest.raises(ConfigurationError, match="kind"):
        storage_factory({"options": {}})
    (tmp_path / "afile").write_text("")
    with pytest.raises(ConfigurationError, match="not a folder"):
        storage_factory({"kind": "file", "options": {"path": str(tmp_path / "afile")}})


def test_registry_is_read_only_and_extensible(tmp_path):
    with pytest.raises(TypeError):
        available_storages["x"] = ("a:b", None)
    register_storage("localfile", "functionfuse.storage.filestorage:FileStorage")
    try:
        s = storage_factory({"kind": "localfile", "options": {"path": str(tmp_path)}})
        assert isinstance(s, FileStorage)
        with pytest.raises(ConfigurationError, match="already registered"):
            register_storage("localfile", "elsewhere:Other")
    finally:
        from functionfuse.storage import _storages

        _storages.unregister("localfile")


def test_missing_optional_dependency_names_the_extra(tmp_path):
    register_storage("needs_extra", "functionfuse_no_such_module:Storage", extra="s3")
    try:
        with pytest.raises(ImportError, match=r"pip install 'functionfuse\[s3\]'"):
            storage_factory({"kind": "needs_extra", "options": {}})
    finally:
        from functionfuse.storage import _storages

        _storages.unregister("needs_extra")
