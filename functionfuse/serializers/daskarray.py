"""DaskArraySerializer: Dask arrays stored chunk by chunk, read back lazily.

>>> from functionfuse.serializers.daskarray import DaskArraySerializer
>>> storage.register_persistent_serializers(DaskArraySerializer)   # doctest: +SKIP

Any Dask array inside a result (at any depth) is written next to the result, in the
storage's own format:

* file storage (``FILE_PROTOCOL``): an HDF5 file ``<array>.h5`` (dataset ``data``,
  HDF5 chunks of the Dask chunk shape) in the result's data folder;
* S3 storage (``S3_PROTOCOL``): a Zarr (v3) array ``<array>.zarr/`` under the result's
  data prefix, one object per chunk.

Chunks are computed and written one at a time by Dask's scheduler (the array is never
materialised whole). Reading returns a *lazy* Dask array with the chunks it had: only
the metadata is read until it is computed. The data belongs to the stored result: it is
replaced and removed with it, so compute (or ``persist``) what you keep before
overwriting or removing the task. Removing the task removes its array data.

Settings, for a subclass (readers need none: the files describe themselves):
``zarr_kwargs`` (e.g. ``{"compressors": None}``) are passed to ``zarr.create_array``,
``hdf5_kwargs`` (e.g. ``{"compression": "gzip"}``) to ``h5py.Group.create_dataset``.
A subclass keeps ``name = "DaskArraySerializer"``, so results read back anywhere.
"""

from __future__ import annotations

import hashlib
import math
import re
import weakref
from typing import Any

from ..errors import ConfigurationError, SerializationError, missing_dependency
from . import FILE_PROTOCOL, S3_PROTOCOL

try:
    import dask.array as da
    import numpy as np
    from dask.array.core import Array
    from dask.base import tokenize
except ImportError as _exc:  # pragma: no cover - exercised without the dask extra
    _err = missing_dependency(getattr(_exc, "name", None) or "dask", "dask", _exc)
    _err.name = getattr(_exc, "name", None) or "dask"  # storage_factory names the module too
    raise _err from _exc

__all__ = ["DaskArraySerializer"]

_FORMAT = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_HDF5_MAX_CHUNK = (1 << 32) - 1
# names already written in one result's data (an array met twice is written once)
_written: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()


class DaskArraySerializer:
    """Store Dask arrays as HDF5 (file storage) or Zarr (S3 storage), chunk by chunk."""

    name = "DaskArraySerializer"
    serializer_class = Array
    #: keyword arguments for ``zarr.create_array`` (S3 storage)
    zarr_kwargs: dict = {}
    #: keyword arguments for ``h5py.Group.create_dataset`` (file storage)
    hdf5_kwargs: dict = {}

    @classmethod
    def pickle(cls, obj: Array, protocols: dict) -> dict:
        """Write *obj* next to the result being stored; return its persistent id."""
        _check_storable(obj)
        if S3_PROTOCOL in protocols:
            return cls._to_zarr(obj, protocols[S3_PROTOCOL])
        if FILE_PROTOCOL in protocols:
            return cls._to_hdf5(obj, protocols[FILE_PROTOCOL])
        raise ConfigurationError(
            "DaskArraySerializer needs a storage that offers FILE_PROTOCOL (file storage: HDF5) or "
            f"S3_PROTOCOL (S3 storage: Zarr); it was given {sorted(protocols)!r}."
        )

    @classmethod
    def unpickle(cls, pid: dict, protocols: dict) -> Array:
        """A lazy Dask array over the stored data, with the chunks it was written with."""
        if not isinstance(pid, dict) or pid.get("format", 0) > _FORMAT:
            raise SerializationError(
                f"This Dask array was stored by a newer DaskArraySerializer ({pid!r}); upgrade functionfuse."
            )
        kind = pid.get("kind")
        if kind == "zarr" and S3_PROTOCOL in protocols:
            return _from_zarr(pid, protocols[S3_PROTOCOL])
        if kind == "hdf5" and FILE_PROTOCOL in protocols:
            return _from_hdf5(pid, protocols[FILE_PROTOCOL])
        raise SerializationError(
            f"This Dask array was stored as {kind!r} by another kind of storage "
            f"(this one offers {sorted(protocols)!r}); read it from the storage that wrote it."
        )

    # -- writing --------------------------------------------------------------------------
    @classmethod
    def _to_zarr(cls, arr: Array, files: Any) -> dict:
        import zarr

        name = _object_name(arr, ".zarr")
        pid = _pid("zarr", name, arr)
        if _seen(files, name):
            return pid
        if not _regular(arr.chunks):
            # Zarr chunks are a regular grid: write through one, read back with the original chunks
            arr = arr.rechunk(tuple(max(c) if c else 1 for c in arr.chunks))
        chunks = tuple(max(c[0], 1) if c else 1 for c in arr.chunks)
        z = zarr.create_array(
            store=files.zarr_store(name), shape=arr.shape, chunks=chunks, dtype=arr.dtype, **cls.zarr_kwargs
        )
        if arr.size:
            # chunk grids align: no two tasks write one Zarr chunk (dask's stubs reject zarr arrays)
            da.store(arr, z, lock=False)  # type: ignore[arg-type]
        return pid

    @classmethod
    def _to_hdf5(cls, arr: Array, files: Any) -> dict:
        import h5py

        name = _object_name(arr, ".h5")
        pid = _pid("hdf5", name, arr)
        if _seen(files, name):
            return pid
        with files.open(name, "wb"):  # creates the result's data folder and claims it
            pass
        kwargs = dict(cls.hdf5_kwargs)
        if arr.ndim and arr.size:
            shape = tuple(max(max(c), 1) for c in arr.chunks)
            if math.prod(shape) * arr.dtype.itemsize <= _HDF5_MAX_CHUNK:
                kwargs.setdefault("chunks", shape)
            else:
                kwargs.setdefault("chunks", True)
        dtype = arr.dtype
        if dtype.kind in "mM":  # datetime64/timedelta64: no HDF5 type; h5py tags them as opaque
            dtype = h5py.opaque_dtype(dtype)
            arr = da.map_blocks(_cast, arr, dtype=dtype, target=dtype)
        with h5py.File(files.path(name), "w") as f:
            dset = f.create_dataset("data", shape=arr.shape, dtype=dtype, **kwargs)
            if arr.size:
                da.store(arr, dset, lock=True)  # HDF5 writes one at a time
        return pid


# -- helpers ----------------------------------------------------------------------------------
def _check_storable(arr: Array) -> None:
    if any(isinstance(s, float) and math.isnan(s) for s in arr.shape):
        raise SerializationError(
            f"A Dask array with unknown chunk sizes (shape {arr.shape}) cannot be stored as HDF5 or Zarr. "
            "Call arr.compute_chunk_sizes() in the node before returning it."
        )
    if arr.dtype.hasobject:
        raise SerializationError(
            f"A Dask array of dtype {arr.dtype} (Python objects) cannot be stored as HDF5 or Zarr. "
            "Return a numeric array, or arr.compute() to store it with pickle."
        )


def _object_name(arr: Array, suffix: str) -> str:
    safe = _UNSAFE.sub("_", str(arr.name)).strip("._")[:80] or "array"
    digest = hashlib.sha1(str(arr.name).encode()).hexdigest()[:10]
    return f"{safe}-{digest}{suffix}"


def _pid(kind: str, name: str, arr: Array) -> dict:
    return {
        "format": _FORMAT,
        "kind": kind,
        "name": name,
        "shape": list(arr.shape),
        "dtype": arr.dtype.str,
        "chunks": [list(c) for c in arr.chunks],
    }


def _seen(files: Any, name: str) -> bool:
    names = _written.setdefault(files, set())
    if name in names:
        return True
    names.add(name)
    return False


def _regular(chunks: tuple) -> bool:
    """Every chunk of an axis equal, except a smaller last one (what Zarr stores)."""
    for c in chunks:
        if len(c) > 1 and (len(set(c[:-1])) > 1 or c[-1] > c[0]):
            return False
    return True


def _cast(block: Any, target: Any) -> Any:
    return block.astype(target)


def _chunks(pid: dict) -> tuple:
    return tuple(tuple(int(x) for x in c) for c in pid["chunks"])


def _from_zarr(pid: dict, files: Any) -> Array:
    import zarr

    z = zarr.open_array(store=files.zarr_store(pid["name"], read_only=True), mode="r")
    chunks = _chunks(pid)
    return da.from_zarr(z, chunks=chunks, name="functionfuse-zarr-" + tokenize(files.url(pid["name"]), chunks))


class _HDF5Dataset:
    """A lazy, picklable view of a stored HDF5 dataset: each read opens the file, so no
    file handle is held between computations (and the array can travel to workers)."""

    def __init__(self, path: str, dataset: str, shape: tuple, dtype: Any) -> None:
        self.path = path
        self.dataset = dataset
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)

    def __getitem__(self, key: Any) -> Any:
        import h5py

        with h5py.File(self.path, "r") as f:
            return f[self.dataset][key]

    def __repr__(self) -> str:
        return f"<stored HDF5 dataset {self.dataset!r} of {self.path}>"


def _from_hdf5(pid: dict, files: Any) -> Array:
    path = files.path(pid["name"])
    shape = tuple(int(s) for s in pid["shape"])
    chunks = _chunks(pid)
    source = _HDF5Dataset(path, "data", shape, pid["dtype"])
    meta = np.empty((0,) * len(shape), dtype=source.dtype)
    return da.from_array(
        source, chunks=chunks, name="functionfuse-hdf5-" + tokenize(path, chunks), lock=False, fancy=False, meta=meta
    )
