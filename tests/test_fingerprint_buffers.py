"""Large NumPy arrays are fingerprinted in fixed chunks on several threads
(:func:`functionfuse._arrayfp.buffer_digest`): the digest depends on the bytes only,
never on how many threads hashed them, and small arrays keep the one-pass digest."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from functionfuse import _arrayfp
from functionfuse.fingerprint import value_fingerprint


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunked hashing from 64 KiB on, in 4 KiB chunks: the large-array path on small data."""
    monkeypatch.setattr(_arrayfp, "PARALLEL_FROM", 64 << 10)
    monkeypatch.setattr(_arrayfp, "CHUNK", 4 << 10)


def data(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8)


def test_small_buffers_keep_the_one_pass_digest():
    a = data(1000)
    assert _arrayfp.buffer_digest(memoryview(a)) == xxhash.xxh3_128_digest(a.tobytes())


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_digest_does_not_depend_on_the_number_of_threads(small_chunks, monkeypatch, threads):
    a = data((1 << 20) + 123)  # not a whole number of chunks
    monkeypatch.setattr(_arrayfp, "_usable_cores", lambda: 1)
    one = _arrayfp.buffer_digest(memoryview(a))
    monkeypatch.setattr(_arrayfp, "_usable_cores", lambda: threads)
    assert _arrayfp.buffer_digest(memoryview(a)) == one
    assert one.startswith(b"chunks:") and one != b"chunks:" + xxhash.xxh3_128_digest(a.tobytes())


@pytest.mark.parametrize("where", ["first byte", "middle", "last byte"])
def test_any_changed_byte_changes_the_digest(small_chunks, where):
    a = data(1 << 20)
    before = _arrayfp.buffer_digest(memoryview(a))
    i = {"first byte": 0, "middle": a.size // 2, "last byte": a.size - 1}[where]
    a[i] ^= 1
    assert _arrayfp.buffer_digest(memoryview(a)) != before


def test_chunks_are_not_interchangeable(small_chunks):
    a = data(1 << 20)
    chunk = _arrayfp.CHUNK
    b = a.copy()
    b[:chunk], b[chunk : 2 * chunk] = a[chunk : 2 * chunk], a[:chunk]
    assert _arrayfp.buffer_digest(memoryview(b)) != _arrayfp.buffer_digest(memoryview(a))


def test_large_array_fingerprints_follow_content_dtype_and_shape(small_chunks):
    a = np.arange(1 << 16, dtype=np.float64)  # 512 KiB: the chunked path
    assert value_fingerprint(a) == value_fingerprint(a.copy())
    assert value_fingerprint(a) != value_fingerprint(a.reshape(256, 256))
    assert value_fingerprint(a) != value_fingerprint(a.view(np.int64))
    b = a.copy()
    b[-1] += 1
    assert value_fingerprint(b) != value_fingerprint(a)
    # a non-contiguous view hashes its elements, as the contiguous copy does
    assert value_fingerprint(a[::2]) == value_fingerprint(np.ascontiguousarray(a[::2]))


def test_an_error_in_a_hashing_thread_is_raised(small_chunks, monkeypatch):
    class Broken:
        def update(self, _data) -> None:
            raise MemoryError("no room")

        def digest(self) -> bytes:  # pragma: no cover - never reached
            return b""

    monkeypatch.setattr(_arrayfp.xxhash, "xxh3_128", Broken)
    monkeypatch.setattr(_arrayfp, "_usable_cores", lambda: 2)
    with pytest.raises(MemoryError):
        _arrayfp.buffer_digest(memoryview(data(1 << 20)))
