"""The on-storage format of one result: a framed, checksummed pickle.

Layout (little-endian)::

    preamble  24 bytes  magic b"FFRESULT" | format u16 | flags u16 | header length u32
                        | xxh3-64 of the header u64
    header    JSON      {"format", "segments": [sizes], "checksum": "xxh3_128:<hex>",
                         "data": token or null, "meta": {...}}
    segments            the pickle stream (protocol 5), then each out-of-band buffer

Large buffers (NumPy arrays and other PEP 574 objects) are written and read as they
are, without a copy into the pickle stream. A file whose size, header hash or payload
checksum does not match is reported as corrupted, never loaded.
"""

from __future__ import annotations

import io
import json
import mmap
import pickle
import struct
import sys
from typing import Any, Callable, Iterable, Protocol, Sequence

import xxhash

from .._version import __version__
from ..errors import CorruptedResultError, SerializationError, StorageError

__all__ = ["MAGIC", "FORMAT_VERSION", "PREAMBLE", "Encoded", "encode", "read_header", "read_payload", "decode"]

MAGIC = b"FFRESULT"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sHHIQ")
PID_TAG = "functionfuse.serializer"
_CHUNK = 8 << 20
_MAX_HEADER = 64 << 20
_MMAP_FROM = 1 << 20


class Reader(Protocol):
    def readinto(self, buffer: Any) -> int | None: ...


class Encoded:
    """A serialized result, ready to be written piece by piece."""

    __slots__ = ("header", "pieces", "size")

    def __init__(self, header: dict, pieces: list) -> None:
        self.header = header
        self.pieces = pieces
        self.size = sum(memoryview(p).nbytes for p in pieces)


def library_versions() -> dict[str, str]:
    versions = {"python": ".".join(map(str, sys.version_info[:3])), "functionfuse": __version__}
    for mod in ("numpy", "dask", "pandas"):
        m = sys.modules.get(mod)
        if m is not None and isinstance(getattr(m, "__version__", None), str):
            versions[mod] = m.__version__
    return versions


class _Pickler(pickle.Pickler):
    def __init__(self, file: Any, serializers: list, protocols: dict, buffer_callback: Callable) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self._serializers = serializers
        self._protocols = protocols
        self.used: list[str] = []

    def persistent_id(self, obj: Any) -> Any:  # type: ignore[override]
        for ser in self._serializers:
            if isinstance(obj, ser.serializer_class):
                name = serializer_name(ser)
                self.used.append(name)
                return (PID_TAG, name, ser.pickle(obj, self._protocols))
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: list, lookup: Callable[[str], Any], protocols: dict) -> None:
        super().__init__(file, buffers=buffers)
        self._lookup = lookup
        self._protocols = protocols

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 3 and pid[0] == PID_TAG):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._lookup(pid[1]).unpickle(pid[2], self._protocols)


def serializer_name(ser: Any) -> str:
    return getattr(ser, "name", None) or f"{ser.__module__}.{getattr(ser, '__qualname__', type(ser).__qualname__)}"


def encode(obj: Any, meta: dict, *, serializers: Sequence[Any] = (), protocols: dict | None = None, data: str | None = None) -> Encoded:
    """Pickle *obj* (protocol 5, buffers out of band) and frame it with *meta*."""
    buffers: list = []
    used: list[str] = []
    try:
        if serializers:
            bio = io.BytesIO()
            p = _Pickler(bio, list(serializers), protocols or {}, buffers.append)
            p.dump(obj)
            stream: Any = bio.getbuffer()
            used = p.used
        else:
            stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        segments = [stream] + [b.raw() for b in buffers]
    except Exception as exc:
        raise SerializationError(
            f"Could not serialize a result of type {type(obj).__name__}: {type(exc).__name__}: {exc}. "
            "Return picklable values, or register a serializer for this type with "
            "storage.register_persistent_serializers(...)."
        ) from exc
    hasher = xxhash.xxh3_128()
    for s in segments:
        hasher.update(s)
    meta = dict(meta)
    meta.setdefault("versions", library_versions())
    meta["size"] = sum(memoryview(s).nbytes for s in segments)
    if used:
        meta["serializers"] = sorted(set(used))
    header = {
        "format": FORMAT_VERSION,
        "segments": [memoryview(s).nbytes for s in segments],
        "checksum": "xxh3_128:" + hasher.hexdigest(),
        "data": data,
        "meta": meta,
    }
    hbytes = json.dumps(header, separators=(",", ":"), default=str).encode()
    pre = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(hbytes), xxhash.xxh3_64_intdigest(hbytes))
    return Encoded(header, [pre + hbytes, *segments])


def read_exact(f: Reader, n: int, where: str) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise CorruptedResultError(f"Stored result {where} is truncated: expected {n} more bytes.", path=where)
        got += k
    return buf


def read_header(f: Reader, where: str, size: int | None = None) -> dict:
    """Read and check the preamble and header; *size* (the whole object's) is checked too."""
    pre = bytes(read_exact(f, PREAMBLE.size, where))
    magic, version, _flags, hlen, hhash = PREAMBLE.unpack(pre)
    if magic != MAGIC:
        raise CorruptedResultError(f"{where} is not a functionfuse result (bad magic bytes).", path=where)
    if version > FORMAT_VERSION:
        raise StorageError(
            f"{where} was written in result format {version}, newer than this functionfuse "
            f"({__version__}) reads (format {FORMAT_VERSION}). Upgrade functionfuse to read it."
        )
    if hlen > _MAX_HEADER or (size is not None and PREAMBLE.size + hlen > size):
        raise CorruptedResultError(f"Stored result {where} has a damaged header (impossible length {hlen}).", path=where)
    hbytes = bytes(read_exact(f, hlen, where))
    if xxhash.xxh3_64_intdigest(hbytes) != hhash:
        raise CorruptedResultError(f"Stored result {where} has a damaged header (checksum mismatch).", path=where)
    try:
        header = json.loads(hbytes)
        expected = PREAMBLE.size + hlen + sum(header["segments"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptedResultError(f"Stored result {where} has an unreadable header: {exc}", path=where) from None
    if size is not None and size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise CorruptedResultError(
            f"Stored result {where} is {kind} ({size} bytes, expected {expected}).", path=where
        )
    return header


def _buffer(n: int) -> Any:
    """A writable buffer of *n* bytes. Large ones are private anonymous memory maps,
    which the kernel provides without first filling them with zeros (``bytearray(n)``
    writes every byte once more before the read does; a shared map is slower still)."""
    if n < _MMAP_FROM or not hasattr(mmap, "MAP_PRIVATE"):
        return bytearray(n)
    return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def read_payload(f: Reader, header: dict, where: str) -> list[Any]:
    """Read every segment after the header, verifying the checksum as it goes."""
    algo, _, digest = header["checksum"].partition(":")
    if algo != "xxh3_128":
        raise StorageError(f"{where} uses checksum {algo!r}, which this functionfuse does not know.")
    hasher = xxhash.xxh3_128()
    segments: list[Any] = []
    for n in header["segments"]:
        buf = _buffer(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = f.readinto(view[got : min(n, got + _CHUNK)])
            if not k:
                raise CorruptedResultError(f"Stored result {where} is truncated.", path=where)
            hasher.update(view[got : got + k])
            got += k
        segments.append(buf)
    if hasher.hexdigest() != digest:
        raise CorruptedResultError(
            f"Stored result {where} is corrupted: its checksum does not match its content.", path=where
        )
    return segments


def decode(segments: list, where: str, *, lookup: Callable[[str], Any] | None = None, protocols: dict | None = None) -> Any:
    """Unpickle verified *segments*; buffers are handed to pickle without copies."""
    stream, buffers = segments[0], segments[1:]
    try:
        if lookup is None:
            return pickle.loads(stream, buffers=buffers)
        return _Unpickler(io.BytesIO(stream), buffers, lookup, protocols or {}).load()
    except StorageError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"Stored result {where} is intact but could not be unpickled: {type(exc).__name__}: {exc}. "
            "Is the code that defines its classes importable here, in a compatible version?"
        ) from exc


def iter_pieces(pieces: Iterable[Any]) -> Iterable[memoryview]:
    """Yield each piece as a flat byte view."""
    for p in pieces:
        mv = memoryview(p)
        yield mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")
