"""The storage contract: every storage kind passes these tests.

A kind joins by subclassing :class:`StorageContract` with a ``storage`` fixture that
returns a fresh, empty storage object, and a ``corrupt`` fixture: a function
``corrupt(storage, workflow, task, how)`` that damages a stored result in place
(``how`` is "flip" or "truncate"). Hooks a kind may override: ``local_folder``
(where its files are on this machine, for the link tests), and those of the protocol
(:mod:`contracts.protocol`), signing (:mod:`contracts.signing`) and fingerprint index
(:mod:`contracts.fpindex`) parts.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from contracts.fpindex import FingerprintIndexContract
from contracts.protocol import CLEAN_AWS_ENV, WF, ProtocolContract  # noqa: F401 - kinds import them from here
from contracts.signing import KEY_A, KEY_B, SigningContract  # noqa: F401 - as above
from framing import delete_raw, get_raw, put_raw, reframe
from functionfuse.errors import (
    ConfigurationError,
    CorruptedResultError,
    InvalidNameError,
    SerializationError,
    SignatureError,
    SigningKeyError,
    StorageError,
    TaskNotFoundError,
)
from functionfuse.storage.frame import FORMAT_VERSION

#: header edits that leave a valid preamble check but contents no writer produces
CRAFTED_HEADERS = {
    "no meta": lambda h: h.pop("meta"),
    "meta not an object": lambda h: h.update(meta=[1, 2]),
    "no task in meta": lambda h: h["meta"].pop("task"),
    "task not a str": lambda h: h["meta"].update(task=5),
    "no segments": lambda h: h.pop("segments"),
    "segments not sizes": lambda h: h.update(segments=["12"]),
    "negative segment": lambda h: h.update(segments=[-1] + h["segments"][1:]),
    "unknown checksum": lambda h: h.update(checksum="md5:" + "0" * 32),
    "checksum not a str": lambda h: h.update(checksum=7),
    "format differs from preamble": lambda h: h.update(format=7),
    "serializers not names": lambda h: h["meta"].update(serializers=[1]),
    "serializers without data": lambda h: (h["meta"].update(serializers=["TextBlob"]), h.update(data=None)),
}
#: data tokens an attacker may write; only 16 hex digits are a token
CRAFTED_TOKENS = ["x/../../..", "../../../victim", "0123456789abcdeg", "0123456789ABCDEF", 12]


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


class StorageContract(ProtocolContract, SigningContract, FingerprintIndexContract):
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


    # -- a hostile store: copies, renames, crafted preambles, headers and tokens ------------
    def test_result_copied_under_another_name_is_refused(self, storage):
        storage.save(WF, "n1", "one")
        storage.save(WF, "n4", "four")
        put_raw(storage, WF, "n4", get_raw(storage, WF, "n1"))  # cp n1.ffr n4.ffr
        for read in (storage.read_task, storage.verify_task, storage.read_metadata):
            with pytest.raises(CorruptedResultError, match="task 'n1'.*copied or renamed") as info:
                read(WF, "n4")
            assert "n4" in info.value.path
        assert isinstance(storage.read_metadata_many(WF, ["n1", "n4"])["n4"], CorruptedResultError)
        assert storage.read_task(WF, "n1") == "one"
        storage.save(WF, "n4", "four again")  # a damaged result is overwritten as usual
        assert storage.read_task(WF, "n4") == "four again"

    def test_result_renamed_or_moved_to_another_workflow_is_refused(self, storage):
        storage.save(WF, "n1", "one")
        data = get_raw(storage, WF, "n1")
        delete_raw(storage, WF, "n1")
        put_raw(storage, WF, "n9", data)  # mv n1.ffr n9.ffr
        put_raw(storage, "elsewhere", "n1", data)  # mv into another workflow
        with pytest.raises(CorruptedResultError, match="copied or renamed"):
            storage.read_task(WF, "n9")
        with pytest.raises(CorruptedResultError, match=f"workflow {WF!r}"):
            storage.read_task("elsewhere", "n1")

    @pytest.mark.parametrize("bit", [0, 3, 8, 15], ids=lambda b: f"bit{b}")
    @pytest.mark.parametrize("field", ["format", "flags"])
    def test_flipped_preamble_bit_is_damage_not_a_newer_format(self, storage, field, bit):
        storage.save(WF, "t", "value")
        storage.save(WF, "other", "fine")
        data = bytearray(get_raw(storage, WF, "t"))
        offset = 8 if field == "format" else 10
        data[offset + bit // 8] ^= 1 << (bit % 8)
        put_raw(storage, WF, "t", bytes(data))
        for read in (storage.read_task, storage.read_metadata, storage.verify_task):
            with pytest.raises(CorruptedResultError):
                read(WF, "t")
        assert storage.read_task(WF, "other") == "fine"
        storage.save(WF, "t", "again")
        assert storage.read_task(WF, "t") == "again"

    def test_newer_format_asks_for_an_upgrade(self, storage):
        storage.save(WF, "t", 1)
        put_raw(storage, WF, "t", reframe(get_raw(storage, WF, "t"), lambda h: h.update(format=FORMAT_VERSION + 1),
                                          version=FORMAT_VERSION + 1))
        with pytest.raises(StorageError, match="Upgrade functionfuse") as info:
            storage.read_task(WF, "t")
        assert not isinstance(info.value, CorruptedResultError)  # never recomputed over

    def test_format_zero_is_damage(self, storage):
        storage.save(WF, "t", 1)
        put_raw(storage, WF, "t", reframe(get_raw(storage, WF, "t"), lambda h: h.update(format=0), version=0))
        with pytest.raises(CorruptedResultError, match="format 0"):
            storage.read_task(WF, "t")

    def test_format_1_results_are_still_read(self, storage):
        storage.save(WF, "t", {"x": [1, 2]})
        legacy = reframe(get_raw(storage, WF, "t"), lambda h: h.update(format=1), version=1, legacy=True)
        put_raw(storage, WF, "t", legacy)
        assert storage.read_task(WF, "t") == {"x": [1, 2]}
        assert storage.read_metadata(WF, "t")["format"] == 1
        flipped = bytearray(legacy)
        flipped[9] ^= 0x01  # format 1 -> 257: damage, not "upgrade"
        put_raw(storage, WF, "t", bytes(flipped))
        with pytest.raises(CorruptedResultError):
            storage.read_task(WF, "t")

    @pytest.mark.parametrize("how", sorted(CRAFTED_HEADERS))
    def test_crafted_header_with_a_valid_check_is_damage(self, storage, how):
        storage.save(WF, "t", [1, 2, 3])
        put_raw(storage, WF, "t", reframe(get_raw(storage, WF, "t"), CRAFTED_HEADERS[how]))
        for read in (storage.read_task, storage.verify_task, storage.read_metadata):
            with pytest.raises(CorruptedResultError):
                read(WF, "t")
        assert isinstance(storage.read_metadata_many(WF, ["t"])["t"], CorruptedResultError)
        storage.save(WF, "t", "again")
        assert storage.read_task(WF, "t") == "again"

    def test_header_nested_too_deep_for_json_is_damage(self, storage, use_key):
        storage.save(WF, "t", 1)
        raw = get_raw(storage, WF, "t")
        deep = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        put_raw(storage, WF, "t", reframe(raw, header_bytes=deep))
        with pytest.raises(CorruptedResultError, match="not JSON"):
            storage.read_metadata(WF, "t")
        st = use_key(storage, KEY_A)  # with a key, it is refused before it is even parsed
        with pytest.raises(SignatureError, match="not signed"):
            st.read_task(WF, "t")
        st.save(WF, "t", 2)
        assert st.read_task(WF, "t") == 2

    @pytest.mark.parametrize(
        "key, value",
        [("fingerprint", "x"), ("fingerprint", {"node": "n", "code": [1]}), ("size", "big"), ("versions", []),
         ("finished", 5), ("inputs", "a"), ("duration_s", True), ("node", 3)],
        ids=lambda v: repr(v)[:20],
    )
    def test_metadata_of_another_shape_is_damage_and_refused_when_written(self, storage, key, value):
        storage.save(WF, "t", 1, {"node": "t"})

        def edit(h):
            h["meta"][key] = value

        put_raw(storage, WF, "t", reframe(get_raw(storage, WF, "t"), edit))
        with pytest.raises(CorruptedResultError, match=repr(key)):
            storage.read_metadata(WF, "t")
        if key != "size":  # size is the storage's own
            with pytest.raises(ConfigurationError, match=repr(key)):
                storage.save(WF, "t2", 1, {key: value})

    def test_bogus_key_id_written_without_the_key_stops_with_a_hint(self, storage, use_key):
        """Someone without the key can make a run stop (as deleting files can make it
        recompute), never make it read or unpickle their file."""
        st = use_key(storage, KEY_A)
        st.save(WF, "t", "real")

        def edit(h):
            h["key_id"] = "f" * 16

        put_raw(st, WF, "t", reframe(get_raw(st, WF, "t"), edit))
        with pytest.raises(SigningKeyError, match="someone else wrote the file"):
            st.read_task(WF, "t")

    @pytest.mark.parametrize("header", [b"[1, 2]", b"{not json", b'"text"', b"null"], ids=repr)
    def test_header_that_is_no_json_object_is_damage(self, storage, header):
        storage.save(WF, "t", 1)
        put_raw(storage, WF, "t", reframe(get_raw(storage, WF, "t"), header_bytes=header))
        with pytest.raises(CorruptedResultError):
            storage.read_metadata(WF, "t")

    @pytest.mark.parametrize("token", CRAFTED_TOKENS, ids=repr)
    def test_crafted_data_token_is_damage(self, storage, token):
        storage.register_persistent_serializers(TextBlobSerializer)
        storage.save(WF, "t", {"blob": TextBlob("mine")})

        def edit(h):
            h["data"] = token

        put_raw(storage, WF, "t", reframe(get_raw(storage, WF, "t"), edit))
        with pytest.raises(CorruptedResultError, match="data token"):
            storage.read_task(WF, "t")
        storage.save(WF, "t", {"blob": TextBlob("new")})  # the overwrite follows no crafted token
        assert storage.read_task(WF, "t")["blob"].text == "new"

    def local_folder(self, storage) -> str:
        """The folder of this machine where *storage* keeps its files (skips if none)."""
        path = storage.local_path()
        if path is None:
            pytest.skip(f"{type(storage).__name__} keeps no files in a local folder: it has no links to follow")
        return path

    def test_result_that_is_a_link_is_never_followed(self, storage, tmp_path):
        storage.save(WF, "n1", "one")
        root = self.local_folder(storage)
        outside = tmp_path / "outside.ffr"
        outside.write_bytes(get_raw(storage, WF, "n1"))  # a valid result, but outside the root
        target = os.path.join(root, WF, "n4.ffr")
        os.symlink(outside, target)
        with pytest.raises(CorruptedResultError):
            storage.read_task(WF, "n4")
        storage.remove_task(WF, task_name="n4")  # removes the link only
        assert outside.exists() and not os.path.lexists(target)

    def test_data_folder_that_is_a_link_is_never_followed(self, storage, tmp_path):
        storage.register_persistent_serializers(TextBlobSerializer)
        storage.save(WF, "t", TextBlob("mine"))
        root = self.local_folder(storage)
        (data,) = [e for e in os.listdir(os.path.join(root, WF)) if e.endswith(".data")]
        victim = tmp_path / "victim"
        victim.mkdir()
        (victim / "blob.txt").write_text("theirs")
        import shutil

        shutil.rmtree(os.path.join(root, WF, data))
        os.symlink(victim, os.path.join(root, WF, data))
        with pytest.raises(CorruptedResultError):
            storage.read_task(WF, "t")
        storage.save(WF, "t", TextBlob("new"))  # replacing it unlinks the link, never empties the target
        assert storage.read_task(WF, "t").text == "new"
        assert (victim / "blob.txt").read_text() == "theirs"

    # -- concurrent removal -----------------------------------------------------------------
    def test_task_removed_meanwhile_is_not_an_error_for_a_pattern(self, storage):
        for name in ["a1", "a2", "a3"]:
            storage.save(WF, name, name)
        listed = storage.list_tasks(WF, "a*")
        storage.remove_task(WF, task_name="a2")  # another process got there first
        real = type(storage).list_tasks
        try:
            type(storage).list_tasks = lambda self, wf, pattern="*": listed  # what the first rm listed
            assert storage.remove_task(WF, pattern="a*") == ["a1", "a3"]
        finally:
            type(storage).list_tasks = real
        assert storage.list_tasks(WF, "*") == []

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
        cls.pickled += 1
        with _files(protocols).open("blob.txt", "w") as f:
            f.write(obj.text)
        return "blob.txt"

    @classmethod
    def unpickle(cls, pid, protocols):
        with _files(protocols).open(pid, "r") as f:
            return TextBlob(f.read())


def _files(protocols):
    """The files of a result, under whichever protocol the storage kind offers."""
    from functionfuse.serializers import FILE_PROTOCOL, S3_PROTOCOL

    return protocols[FILE_PROTOCOL] if FILE_PROTOCOL in protocols else protocols[S3_PROTOCOL]


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
