"""The storage contract: every storage kind passes these tests.

A kind joins by subclassing :class:`StorageContract` with a ``storage`` fixture that
returns a fresh, empty storage object, and a ``corrupt`` fixture: a function
``corrupt(storage, workflow, task, how)`` that damages a stored result in place
(``how`` is "flip" or "truncate").
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from functionfuse.errors import (
    ConfigurationError,
    CorruptedResultError,
    InvalidNameError,
    SerializationError,
    TaskNotFoundError,
)

WF = "contract"


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


class StorageContract:
    @pytest.fixture
    def storage(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def corrupt(self):  # pragma: no cover - overridden
        raise NotImplementedError

    # -- round trips -----------------------------------------------------------
    @pytest.mark.parametrize(
        "value",
        [0, -1.5, "text", b"\x00bytes", None, [1, (2, 3), {"k": {4}}], {"nested": [1, 2, {"x": None}]}],
        ids=["int", "float", "str", "bytes", "none", "list", "dict"],
    )
    def test_round_trip(self, storage, value):
        storage.save(WF, "t", value)
        assert storage.read_task(WF, "t") == value

    def test_numpy_round_trip_keeps_dtype_shape_and_order(self, storage):
        arrays = {
            "c": np.arange(1000, dtype=np.float32).reshape(10, 100),
            "f": np.asfortranarray(np.arange(600, dtype=np.int64).reshape(20, 30)),
            "strided": np.arange(100)[::3],
            "empty": np.zeros((0, 4)),
        }
        storage.save(WF, "arrays", arrays)
        back = storage.read_task(WF, "arrays")
        for key, a in arrays.items():
            assert back[key].dtype == a.dtype and back[key].shape == a.shape
            np.testing.assert_array_equal(back[key], a)
        assert back["f"].flags.f_contiguous
        back["c"][0, 0] = 42.0  # loaded arrays are writable

    def test_overwrite_replaces(self, storage):
        storage.save(WF, "t", 1)
        storage.save(WF, "t", 2)
        assert storage.read_task(WF, "t") == 2
        assert storage.list_tasks(WF, "*") == ["t"]

    # -- listing ---------------------------------------------------------------
    def test_list_tasks_with_glob(self, storage):
        for name in ["model", "model_v2", "data", "data.train"]:
            storage.save(WF, name, name)
        assert storage.list_tasks(WF, "*") == ["data", "data.train", "model", "model_v2"]
        assert storage.list_tasks(WF, "model*") == ["model", "model_v2"]
        assert storage.list_tasks(WF, "data.?rain") == ["data.train"]
        assert storage.list_tasks(WF, "nothing*") == []

    def test_list_tasks_of_unknown_workflow_is_empty(self, storage):
        assert storage.list_tasks("never_ran", "*") == []

    def test_workflows_are_separate(self, storage):
        storage.save("one", "t", 1)
        storage.save("two", "t", 2)
        assert storage.read_task("one", "t") == 1
        assert storage.read_task("two", "t") == 2
        assert storage.list_workflows() == ["one", "two"]

    def test_metadata_is_stored_and_not_listed_as_tasks(self, storage):
        storage.save(WF, "t", np.zeros(10), {"node": "t", "inputs": ["a", "b"]})
        meta = storage.read_metadata(WF, "t")
        assert meta["node"] == "t" and meta["inputs"] == ["a", "b"]
        assert meta["size"] >= 80
        assert meta["versions"]["functionfuse"]
        assert meta["checksum"].startswith("xxh3_128:")
        assert storage.list_tasks(WF, "*") == ["t"]

    # -- removal ---------------------------------------------------------------
    def test_remove_task_by_name_and_pattern(self, storage):
        for name in ["a1", "a2", "b1"]:
            storage.save(WF, name, name)
        assert storage.remove_task(WF, task_name="b1") == ["b1"]
        assert storage.list_tasks(WF, "*") == ["a1", "a2"]
        # pattern wins over task_name, as documented
        assert storage.remove_task(WF, task_name="zzz", pattern="a*") == ["a1", "a2"]
        assert storage.list_tasks(WF, "*") == []

    def test_remove_missing_task_raises_not_found(self, storage):
        with pytest.raises(TaskNotFoundError, match="'ghost'"):
            storage.remove_task(WF, task_name="ghost")
        with pytest.raises(FileNotFoundError):  # TaskNotFoundError is a FileNotFoundError too
            storage.remove_task(WF, task_name="ghost")

    def test_remove_task_needs_name_or_pattern(self, storage):
        with pytest.raises(ConfigurationError, match="task_name or pattern"):
            storage.remove_task(WF)

    def test_remove_workflow(self, storage):
        storage.save(WF, "t", 1)
        storage.save("other", "t", 2)
        storage.remove_workflow(WF)
        assert storage.list_tasks(WF, "*") == []
        assert storage.read_task("other", "t") == 2
        storage.remove_workflow(WF)  # removing again is not an error

    # -- errors ----------------------------------------------------------------
    def test_read_missing_task(self, storage):
        with pytest.raises(TaskNotFoundError, match="list_tasks"):
            storage.read_task(WF, "nothing")

    @pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x\x00y", "a" * 300], ids=repr)
    def test_unsafe_names_are_refused(self, storage, name):
        with pytest.raises(InvalidNameError):
            storage.save(WF, name, 1)
        with pytest.raises(InvalidNameError):
            storage.read_task(WF, name)
        with pytest.raises(InvalidNameError):
            storage.save(name, "t", 1)

    def test_unpicklable_result_fails_cleanly_and_keeps_the_old_one(self, storage):
        storage.save(WF, "t", "old")
        with pytest.raises(SerializationError, match="Unpicklable|serialize"):
            storage.save(WF, "t", [Unpicklable()])
        assert storage.read_task(WF, "t") == "old"
        assert storage.list_tasks(WF, "*") == ["t"]

    @pytest.mark.parametrize("how", ["flip", "truncate"])
    def test_corrupted_result_is_never_returned(self, storage, corrupt, how):
        storage.save(WF, "t", np.arange(100_000))
        storage.save(WF, "other", "fine")
        corrupt(storage, WF, "t", how)
        with pytest.raises(CorruptedResultError) as info:
            storage.read_task(WF, "t")
        assert info.value.path and "t" in info.value.path
        assert storage.read_task(WF, "other") == "fine"
        storage.save(WF, "t", 5)  # overwriting a damaged result works
        assert storage.read_task(WF, "t") == 5

    def test_storage_object_is_picklable(self, storage):
        storage.save(WF, "t", 7)
        clone = pickle.loads(pickle.dumps(storage))
        assert clone.read_task(WF, "t") == 7

    # -- serializers -----------------------------------------------------------
    def test_persistent_serializer_writes_beside_the_task_and_is_removed_with_it(self, storage):
        storage.register_persistent_serializers(TextBlobSerializer)
        value = {"blob": TextBlob("hello " * 1000), "plain": 3}
        storage.save(WF, "t", value)
        assert TextBlobSerializer.pickled >= 1
        back = storage.read_task(WF, "t")
        assert back["plain"] == 3 and isinstance(back["blob"], TextBlob) and back["blob"].text == value["blob"].text
        assert storage.read_metadata(WF, "t")["serializers"] == ["TextBlob"]
        # overwriting and removing leave no serializer data behind
        storage.save(WF, "t", {"blob": TextBlob("v2")})
        assert storage.read_task(WF, "t")["blob"].text == "v2"
        storage.remove_task(WF, task_name="t")
        assert storage.list_tasks(WF, "*") == []

    def test_not_a_serializer_is_refused(self, storage):
        with pytest.raises(ConfigurationError, match="serializer_class"):
            storage.register_persistent_serializers(object())


class TextBlob:
    def __init__(self, text: str) -> None:
        self.text = text


class TextBlobSerializer:
    """A tiny persistent serializer: writes the text next to the task, by protocol."""

    name = "TextBlob"
    serializer_class = TextBlob
    pickled = 0

    @classmethod
    def pickle(cls, obj, protocols):
        from functionfuse.serializers import FILE_PROTOCOL

        cls.pickled += 1
        files = protocols[FILE_PROTOCOL]
        with files.open("blob.txt", "w") as f:
            f.write(obj.text)
        return "blob.txt"

    @classmethod
    def unpickle(cls, pid, protocols):
        from functionfuse.serializers import FILE_PROTOCOL

        with protocols[FILE_PROTOCOL].open(pid, "r") as f:
            return TextBlob(f.read())


def damage_file_result(storage, workflow, task, how):
    """Damage a result stored in file format under ``storage.path`` ("flip" or "truncate")."""
    path = os.path.join(storage.path, workflow, task + ".ffr")
    if how == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 10)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))
