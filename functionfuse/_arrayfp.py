"""Fingerprints of arrays that live in stores: Zarr arrays and the Dask arrays read from them.

A Zarr array is summarised by what is stored, not by where: its metadata (shape, data
type, chunk grid, codecs, fill value, attributes) and, for every stored chunk, its key
within the array and an identity of its bytes. The identity is the checksum the store
keeps anyway where it offers one (an S3 object's ETag, with its size), else the hash of
the stored chunk as it is, compressed: nothing is decoded, and reading the compressed
chunks costs less than the data they hold. A copy of the array at another path or in
another store has the same fingerprint; rewriting a chunk under the same path changes it.

A Dask array read from Zarr (``da.from_zarr``) has a graph name that depends on the
array's path, not on its data, so its fingerprint adds the summary of every Zarr array
found in its graph; a plain ``from_zarr`` array is summarised by its chunks, its data
type and the Zarr array alone (so it is path-independent too). Any other Dask array is
known by its graph name (``.name``): as sound as Dask's tokenisation of its inputs
(arrays made from NumPy data hash that data; random arrays get a new name each time, so
they never match a stored result).

A NumPy array in memory is hashed by :func:`buffer_digest`: its bytes in one xxh3-128
pass, or, from :data:`PARALLEL_FROM` bytes on, in :data:`CHUNK`-byte chunks on several
threads (xxhash releases the GIL while it hashes), the digest then being that of the
chunks' digests. The chunk size is fixed, so the digest does not depend on how many
threads there were.

This module imports Zarr and Dask only when such a value is met.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import xxhash

from ._sourcefp import digest, loaded_type

if TYPE_CHECKING:  # pragma: no cover
    from .fingerprint import Fingerprinter

__all__ = ["zarr_summary", "dask_summary", "buffer_digest", "PARALLEL_FROM", "CHUNK"]

#: keys of an array's metadata documents (hashed in their parsed form instead)
_METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
#: stored chunks read at once where the store keeps no checksums
_READ_AHEAD = 8
#: buffers of at least this many bytes are hashed in chunks, on several threads
PARALLEL_FROM = 64 << 20
#: the chunk size of that digest (part of what it hashes: never change it)
CHUNK = 16 << 20
#: threads that hash one buffer, at most
MAX_THREADS = 8


def buffer_digest(data: memoryview) -> bytes:
    """The xxh3-128 digest of a contiguous byte buffer (``memoryview(...).cast("B")``).

    Below :data:`PARALLEL_FROM` bytes, the digest of the bytes (one pass, on this
    thread). From there on, the digest of the digests of its :data:`CHUNK`-byte chunks
    (the last one shorter), computed on up to one thread per usable core: hashing
    releases the GIL, so a 1 GiB array takes about half the time on two cores.
    """
    n = data.nbytes
    if n < PARALLEL_FROM:
        return xxhash.xxh3_128_digest(data)
    chunks = -(-n // CHUNK)
    digests: list[bytes] = [b""] * chunks
    failures: list[BaseException] = []

    def work(first: int, step: int) -> None:
        try:
            for c in range(first, chunks, step):
                h = xxhash.xxh3_128()
                h.update(data[c * CHUNK : (c + 1) * CHUNK])
                digests[c] = h.digest()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            failures.append(exc)

    workers = min(_usable_cores(), chunks, MAX_THREADS)
    threads = [threading.Thread(target=work, args=(k, workers), name="functionfuse-hash", daemon=True)
               for k in range(1, workers)]
    for t in threads:
        t.start()
    work(0, workers)  # this thread takes its share too
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return b"chunks:" + xxhash.xxh3_128_digest(b"".join(digests))


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def zarr_summary(fp: "Fingerprinter", array: Any) -> str:
    """Digest of a Zarr (v3 library) array: metadata and stored chunk identities."""
    metadata = getattr(array, "metadata", None)
    store = getattr(array, "store", None)
    if metadata is None or not hasattr(store, "list_prefix"):  # zarr 2: no async store API
        return fp.opaque(type(array))
    from zarr.core.sync import sync

    prefix = f"{array.path.strip('/')}/" if array.path else ""
    chunks = sync(_chunk_identities(store, prefix))
    return digest(
        b"zarr.Array",
        fp.value(metadata.to_dict()).encode(),
        *(f"{key}={identity}".encode() for key, identity in chunks),
    )


async def _chunk_identities(store: Any, prefix: str) -> list[tuple[str, str]]:
    """``(key within the array, identity)`` of every stored chunk, sorted by key."""
    checksums: dict[str, str] = {}
    keys: list[str] = []
    fs, root = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is not None and isinstance(root, str) and hasattr(fs, "_find"):
        # one listing of an fsspec store gives every key, and S3 gives the ETags with it
        base = root.rstrip("/")
        listing = await fs._find(f"{base}/{prefix}".rstrip("/"), detail=True, withdirs=False)
        for path, info in listing.items():
            key = path[len(base) + 1 :] if path.startswith(base + "/") else path
            keys.append(key)
            etag = info.get("ETag") or info.get("etag")
            if etag:
                checksums[key] = f"etag:{str(etag).strip(chr(34))}:{info.get('size')}"
    else:
        keys = [key async for key in store.list_prefix(prefix)]
    wanted = sorted(k for k in keys if k.startswith(prefix) and k[len(prefix) :] not in _METADATA_KEYS)
    to_read = [k for k in wanted if k not in checksums]
    for start in range(0, len(to_read), _READ_AHEAD):
        batch = to_read[start : start + _READ_AHEAD]
        for key, checksum in zip(batch, await asyncio.gather(*(_stored_digest(store, k) for k in batch))):
            checksums[key] = checksum
    return [(k[len(prefix) :], checksums[k]) for k in wanted if checksums.get(k)]


async def _stored_digest(store: Any, key: str) -> str:
    from zarr.core.buffer import default_buffer_prototype

    buffer = await store.get(key, prototype=default_buffer_prototype())
    if buffer is None:  # removed while listing
        return ""
    return "xxh3:" + xxhash.xxh3_128_hexdigest(memoryview(buffer.as_numpy_array()).cast("B"))


def dask_summary(fp: "Fingerprinter", array: Any) -> str:
    """Digest of a Dask array: its graph name, with the summary of any Zarr array it reads."""
    layers = getattr(getattr(array, "dask", None), "layers", None)
    if not isinstance(layers, Mapping):
        return digest(b"dask.array", array.name.encode())
    sources = _zarr_sources(layers)
    if not sources:
        return digest(b"dask.array", array.name.encode())
    summaries = sorted(fp.value(z) for z in sources)
    if len(sources) == 1 and len(layers) <= 2 and array.name.startswith("from-zarr-"):
        # da.from_zarr(...) as it is: the stored data decide, not the path in the name
        return digest(b"dask.from_zarr", repr(array.chunks).encode(), array.dtype.str.encode(), summaries[0].encode())
    return digest(b"dask.array", array.name.encode(), *(s.encode() for s in summaries))


def _zarr_sources(layers: Mapping) -> list[Any]:
    """The Zarr arrays a Dask graph reads: values of its materialized layers (the default
    ``from_zarr``) and arguments of its blockwise layers (``inline_array=True``)."""
    found: dict[int, Any] = {}
    array = loaded_type("zarr", "Array")

    def consider(value: Any) -> None:
        if array is not None and type(value) is array:
            found.setdefault(id(value), value)

    for layer in layers.values():
        mapping = getattr(layer, "mapping", None)
        if isinstance(mapping, dict):
            for value in mapping.values():
                consider(value)
        for value, _ in getattr(layer, "indices", None) or ():
            consider(value)
    return list(found.values())
