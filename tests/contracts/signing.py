"""Signed results (:mod:`functionfuse.storage.signing`), the signing part of the storage
contract (mixed into ``StorageContract``).

Hooks a kind may override: ``use_key`` (a fixture: how a key reaches every process the
storage runs in) and ``signing_copy`` (a pickled copy, as a worker or step gets it).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from contracts.protocol import WF
from framing import get_raw, payload_offset, put_raw, reframe, split
from functionfuse.errors import ConfigurationError, CorruptedResultError, SignatureError, SigningKeyError
from functionfuse.storage.frame import FLAG_SIGNED
from functionfuse.storage.signing import ENV_KEY

KEY_A = "a-test-signing-key-0123456789abcdef"
KEY_B = "b-test-signing-key-0123456789abcdef"


class SigningContract:
    # -- signed results (functionfuse.storage.signing) ------------------------------------------
    @pytest.fixture
    def use_key(self, monkeypatch):
        """``use_key(storage, key)``: the storage, used from now on with *key* (None: no key)
        in every process it runs in."""

        def use(storage, key):
            if key is None:
                monkeypatch.delenv(ENV_KEY, raising=False)
            else:
                monkeypatch.setenv(ENV_KEY, key)
            return storage

        return use

    def test_signed_results_round_trip(self, storage, use_key):
        st = use_key(storage, KEY_A)
        st.save(WF, "t", {"a": np.arange(1000), "s": "text"})
        back = st.read_task(WF, "t")
        np.testing.assert_array_equal(back["a"], np.arange(1000))
        assert st.read_metadata(WF, "t")["signed"] is True
        st.verify_task(WF, "t")
        raw = get_raw(st, WF, "t")
        assert split(raw)[1] & FLAG_SIGNED
        assert KEY_A.encode() not in raw and KEY_A not in str(st.read_metadata(WF, "t"))

    def test_unsigned_result_is_refused_once_a_key_is_set(self, storage, use_key):
        use_key(storage, None).save(WF, "t", "unsigned")
        st = use_key(storage, KEY_A)
        for read in (st.read_task, st.verify_task, st.read_metadata):
            with pytest.raises(SignatureError, match="not signed"):
                read(WF, "t")
        st.save(WF, "t", "signed")  # runs recompute it: the overwrite is signed
        assert st.read_task(WF, "t") == "signed"

    def test_signature_stripped_is_refused(self, storage, use_key):
        st = use_key(storage, KEY_A)
        st.save(WF, "t", "signed")
        raw = get_raw(st, WF, "t")

        def strip(h):
            h.pop("mac")
            h.pop("key_id")

        stripped = reframe(raw, strip, flags=0)
        off = payload_offset(raw)
        stripped = stripped[: len(stripped) - (len(raw) - off) - 32] + raw[off:]  # drop the tag
        put_raw(st, WF, "t", stripped)
        with pytest.raises(SignatureError, match="not signed"):
            st.read_task(WF, "t")
        assert use_key(storage, None).read_task(WF, "t") == "signed"  # intact: only unsigned

    def test_result_changed_without_the_key_is_refused(self, storage, use_key):
        """An attacker who knows the format rewrites the payload and every checksum."""
        import pickle as pk

        import xxhash

        st = use_key(storage, KEY_A)
        st.save(WF, "t", "honest")
        raw = get_raw(st, WF, "t")
        evil = pk.dumps("forged", protocol=5)

        def edit(h):
            h["segments"] = [len(evil)]
            h["checksum"] = "xxh3_128:" + xxhash.xxh3_128(evil).hexdigest()

        framed = reframe(raw, edit)
        tag_end = payload_offset(framed)
        put_raw(st, WF, "t", framed[:tag_end] + evil)
        with pytest.raises(SignatureError, match="signature"):
            st.read_task(WF, "t")
        # the header untouched, the payload replaced by one of the same size
        same_size = pk.dumps("HONEST", protocol=5)

        def edit2(h):
            h["checksum"] = "xxh3_128:" + xxhash.xxh3_128(same_size).hexdigest()

        framed = reframe(raw, edit2)
        put_raw(st, WF, "t", framed[: payload_offset(framed)] + same_size)
        with pytest.raises(SignatureError):
            st.read_task(WF, "t")
        # only the payload changed, the checksums left as they were: damage all the same
        put_raw(st, WF, "t", raw[: payload_offset(raw)] + same_size)
        with pytest.raises(CorruptedResultError):
            st.read_task(WF, "t")

    def test_signed_copy_under_another_name_is_refused(self, storage, use_key):
        st = use_key(storage, KEY_A)
        st.save(WF, "n1", "one")
        st.save(WF, "n4", "four")
        put_raw(st, WF, "n4", get_raw(st, WF, "n1"))
        with pytest.raises(CorruptedResultError, match="copied or renamed"):
            st.read_task(WF, "n4")

    def test_result_signed_with_another_key_is_refused_and_kept(self, storage, use_key):
        use_key(storage, KEY_A).save(WF, "t", "by A")
        st = use_key(storage, KEY_B)
        with pytest.raises(SigningKeyError, match="key id") as info:
            st.read_task(WF, "t")
        assert not isinstance(info.value, CorruptedResultError)  # runs stop; nothing is overwritten
        with pytest.raises(SigningKeyError):
            st.read_metadata(WF, "t")
        assert use_key(storage, KEY_A).read_task(WF, "t") == "by A"

    def test_reader_without_a_key_reads_signed_results(self, storage, use_key):
        use_key(storage, KEY_A).save(WF, "t", "signed")
        assert use_key(storage, None).read_task(WF, "t") == "signed"

    def signing_copy(self, storage) -> bytes:
        """A pickled copy of *storage*, as a worker or step gets it."""
        return pickle.dumps(storage)

    def test_copies_of_a_signing_storage_need_the_key(self, storage, use_key):
        st = use_key(storage, KEY_A)
        st.save(WF, "t", 1)
        blob = self.signing_copy(st)
        assert KEY_A.encode() not in blob
        use_key(storage, None)
        clone = pickle.loads(blob)
        with pytest.raises(SigningKeyError, match="no signing key"):
            clone.save(WF, "t2", 2)
        use_key(storage, KEY_B)
        with pytest.raises(SigningKeyError, match="key id"):
            clone.save(WF, "t2", 2)

    def test_sign_task_keeps_a_trusted_unsigned_result(self, storage, use_key):
        use_key(storage, None).save(WF, "t", {"a": np.arange(5)}, {"node": "t"})
        use_key(storage, None).save(WF, "other", 1)
        with pytest.raises(ConfigurationError, match="No signing key"):
            storage.sign_task(WF, "t")
        st = use_key(storage, KEY_A)
        assert st.sign_task(WF, "t") is True
        assert st.sign_task(WF, "t") is False  # already signed with this key
        meta = st.read_metadata(WF, "t")
        assert meta["signed"] is True and meta["node"] == "t"
        np.testing.assert_array_equal(st.read_task(WF, "t")["a"], np.arange(5))
        put_raw(st, WF, "other", get_raw(st, WF, "t"))  # a copy is not signed as the task it was copied to
        with pytest.raises(CorruptedResultError, match="copied or renamed"):
            st.sign_task(WF, "other")
        with pytest.raises(SigningKeyError):
            use_key(storage, KEY_B).sign_task(WF, "t")
