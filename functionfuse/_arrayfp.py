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

This module imports Zarr and Dask only when such a value is met.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import xxhash

from ._sourcefp import digest, loaded_type

if TYPE_CHECKING:  # pragma: no cover
    from .fingerprint import Fingerprinter

__all__ = ["zarr_summary", "dask_summary"]

#: keys of an array's metadata documents (hashed in their parsed form instead)
_METADATA_KEYS = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
#: stored chunks read at once where the store keeps no checksums
_READ_AHEAD = 8


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
