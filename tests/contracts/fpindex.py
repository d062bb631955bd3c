"""The fingerprint index part of the storage contract (mixed into ``StorageContract``).

``read_fingerprints`` is what a plan reads: the stored fingerprint record of each
result. Served from the workflow's fingerprint index (:mod:`functionfuse.storage.fpindex`)
where the kind keeps one, it must always describe the result that is stored *now*: an
index entry left behind by a result replaced by another writer, saved by hand without a
fingerprint, or removed, is never taken for it. A kind without an index reads every
header and passes the same tests.

Hook a kind may override: ``index_owner`` (the object whose ``_index_body`` and
``_put_index`` reach the stored index from this process).
"""

from __future__ import annotations

import pickle

import pytest

from contracts.protocol import WF
from contracts.signing import KEY_A
from functionfuse.errors import CorruptedResultError


def record(digest: str, **inputs: str) -> dict:
    """A fingerprint record as plans store them (*digest*: the node digest)."""
    return {"v": 1, "node": digest, "code": {"f": "c" + digest}, "args": {}, "inputs": dict(inputs)}


def indexed(storage, names) -> dict:
    """``read_fingerprints`` twice: the second answer comes from the index the first
    one wrote (for a kind that keeps one); both must agree."""
    first = storage.read_fingerprints(WF, names)
    second = storage.read_fingerprints(WF, names)
    assert _plan_view(second) == _plan_view(first)
    return second


def _plan_view(found: dict) -> dict:
    """What a plan uses of each answer (a header read gives more metadata)."""
    return {n: type(m) if isinstance(m, Exception) else (m["fingerprint"], m["checksum"]) for n, m in found.items()}


class FingerprintIndexContract:
    def index_owner(self, storage):
        """The object that reads and writes the stored index from this process."""
        return storage

    def another_writer(self, storage):
        """A storage object of another process (another run): a pickled copy, which
        shares nothing with *storage* but the store."""
        return pickle.loads(pickle.dumps(storage))

    # -- what a plan reads -----------------------------------------------------------------
    def test_plan_reads_the_stored_fingerprints(self, storage):
        storage.save(WF, "a", 1, {"fingerprint": record("A")})
        storage.save(WF, "b", 2, {"note": "saved by hand"})
        storage.save_fingerprint_index(WF)
        got = indexed(storage, ["a", "b", "not-stored"])
        assert set(got) == {"a", "b"}
        assert got["a"]["fingerprint"] == record("A")
        assert got["b"]["fingerprint"] is None
        assert got["a"]["checksum"] == storage.read_metadata(WF, "a")["checksum"]

    def test_a_current_record_with_the_stored_digest_stands_for_the_stored_one(self, storage):
        storage.save(WF, "a", 1, {"fingerprint": record("A")})
        indexed(storage, ["a"])
        same = record("A")
        got = storage.read_fingerprints(WF, ["a"], {"a": same})
        assert got["a"]["fingerprint"]["node"] == "A"
        other = storage.read_fingerprints(WF, ["a"], {"a": record("Z")})
        assert other["a"]["fingerprint"] == record("A")  # the stored one, not the current one

    def test_a_damaged_result_is_reported_damaged_every_time(self, storage, corrupt):
        storage.save(WF, "a", 1, {"fingerprint": record("A")})
        storage.save(WF, "b", 2, {"fingerprint": record("B")})
        indexed(storage, ["a", "b"])
        corrupt(storage, WF, "b", "truncate")
        for _ in range(2):
            got = storage.read_fingerprints(WF, ["a", "b"])
            assert got["a"]["fingerprint"] == record("A")
            assert isinstance(got["b"], CorruptedResultError)

    # -- an index entry that no longer describes what is stored ----------------------------
    def test_result_replaced_by_another_run_is_never_taken_from_a_stale_entry(self, storage):
        storage.save(WF, "t", 1, {"fingerprint": record("A")})
        storage.save_fingerprint_index(WF)
        assert indexed(storage, ["t"])["t"]["fingerprint"]["node"] == "A"
        # another run replaces the result (same size) and never updates the index (killed)
        self.another_writer(storage).save(WF, "t", 2, {"fingerprint": record("B")})
        got = storage.read_fingerprints(WF, ["t"], {"t": record("A")})
        assert got["t"]["fingerprint"]["node"] == "B"
        assert storage.read_fingerprints(WF, ["t"])["t"]["fingerprint"]["node"] == "B"
        assert storage.read_task(WF, "t") == 2

    def test_result_saved_by_hand_without_a_fingerprint_is_never_taken_from_a_stale_entry(self, storage):
        storage.save(WF, "t", 1, {"fingerprint": record("A")})
        indexed(storage, ["t"])
        self.another_writer(storage).save(WF, "t", 1)
        got = storage.read_fingerprints(WF, ["t"], {"t": record("A")})
        assert got["t"]["fingerprint"] is None

    def test_removed_result_is_not_reported_stored(self, storage):
        storage.save(WF, "t", 1, {"fingerprint": record("A")})
        storage.save(WF, "u", 1, {"fingerprint": record("U")})
        indexed(storage, ["t", "u"])
        assert self.another_writer(storage).remove_task(WF, task_name="t") == ["t"]
        assert set(storage.read_fingerprints(WF, ["t", "u"], {"t": record("A")})) == {"u"}

    def test_an_index_update_lost_to_a_concurrent_writer_never_lies(self, storage):
        owner = self.index_owner(storage)
        storage.save(WF, "t", 1, {"fingerprint": record("A")})
        indexed(storage, ["t"])
        old = owner._index_body(WF)
        other = self.another_writer(storage)
        other.save(WF, "t", 2, {"fingerprint": record("B")})
        other.save_fingerprint_index(WF)
        owner._put_index(WF, old)  # the other writer's index is overwritten with the older one
        assert storage.read_fingerprints(WF, ["t"], {"t": record("A")})["t"]["fingerprint"]["node"] == "B"

    # -- an index that cannot be used ------------------------------------------------------
    @pytest.mark.parametrize(
        "body",
        [b"", b"not an index\n", b"\x00\xff" * 100, b'{"format": "functionfuse-fingerprint-index", "version": 99}\nxxh3 0\n'],
        ids=["empty", "text", "binary", "newer-version"],
    )
    def test_damaged_or_unknown_index_is_ignored(self, storage, body):
        storage.save(WF, "a", 1, {"fingerprint": record("A")})
        indexed(storage, ["a"])
        self.index_owner(storage)._put_index(WF, body)
        assert storage.read_fingerprints(WF, ["a"])["a"]["fingerprint"] == record("A")

    def test_index_with_a_flipped_byte_is_ignored(self, storage):
        storage.save(WF, "a", 1, {"fingerprint": record("A")})
        indexed(storage, ["a"])
        owner = self.index_owner(storage)
        body = owner._index_body(WF)
        if body is None:
            pytest.skip("this kind keeps no fingerprint index")
        forged = body.replace(b"\tA\n", b"\tZ\n")  # the entry's digest: Z, as the current record
        assert forged != body
        owner._put_index(WF, forged)
        assert storage.read_fingerprints(WF, ["a"], {"a": record("Z")})["a"]["fingerprint"]["node"] == "A"

    def test_index_made_without_a_key_is_not_trusted_with_one(self, storage, use_key):
        st = use_key(storage, None)
        st.save(WF, "t", 1, {"fingerprint": record("A")})
        indexed(st, ["t"])
        st = use_key(storage, KEY_A)
        got = st.read_fingerprints(WF, ["t"], {"t": record("A")})
        assert isinstance(got["t"], CorruptedResultError)  # unsigned, as its header says

    def test_removing_the_index_is_safe(self, storage):
        storage.save(WF, "a", 1, {"fingerprint": record("A")})
        indexed(storage, ["a"])
        storage.remove_fingerprint_index(WF)
        assert indexed(storage, ["a"])["a"]["fingerprint"] == record("A")
        assert storage.list_tasks(WF) == ["a"]
