"""The on-storage format of one result: a framed, checksummed pickle.

Layout (little-endian)::

    preamble  24 bytes  magic b"FFRESULT" | format u16 | flags u16 | header length u32
                        | xxh3-64 of the preamble's first 16 bytes and the header u64
    header    JSON      {"format", "segments": [sizes], "checksum": "xxh3_128:<hex>",
                         "data": token or null, "meta": {...}[, "mac", "key_id"]}
    tag       32 bytes  only in signed results (flag 1): a keyed MAC of the preamble's
                        first 16 bytes and the header (which holds the payload's MAC)
    segments            the pickle stream (protocol 5), then each out-of-band buffer

Large buffers (NumPy arrays and other PEP 574 objects) are written and read as they
are, without a copy into the pickle stream. A result whose size, preamble check,
header, payload checksum, recorded workflow and task, or signature does not match is
reported as damaged, never loaded. Every format from 2 on keeps the preamble and its
check as they are, so a newer format is told apart from damage; format 1 (whose check
covered the header only) is still read.

This module is longer than the project's ~500 lines on purpose: it is the format, and
both sides of it (the writer's framing and sealing, the reader's checks) stay in one
place, so that a change to the layout cannot be made to one side only.
"""

from __future__ import annotations

import hmac
import io
import json
import mmap
import pickle
import re
import struct
import sys
import threading
from typing import Any, Callable, Iterable, Protocol, Sequence

import xxhash

from .._version import __version__
from ..errors import (
    ConfigurationError,
    CorruptedResultError,
    SerializationError,
    SignatureError,
    SigningKeyError,
    StorageError,
)
from .signing import TAG_BYTES, Signer

__all__ = ["MAGIC", "FORMAT_VERSION", "PREAMBLE", "FLAG_SIGNED", "Encoded", "encode", "read_header", "read_payload", "decode"]

MAGIC = b"FFRESULT"
FORMAT_VERSION = 2
PREAMBLE = struct.Struct("<8sHHIQ")
#: the preamble without its check: what the check (and a signature) covers
PREAMBLE_FIELDS = struct.Struct("<8sHHI")
#: flag bits: the result carries a signature after its header
FLAG_SIGNED = 1
_KNOWN_FLAGS = FLAG_SIGNED
_MAX_SEGMENTS = 1 << 20
_CHECKSUM = re.compile(r"xxh3_128:[0-9a-f]{32}")
_MAC = re.compile(r"blake3:[0-9a-f]{64}")
#: the data token of a result: names its serializer data next to it
_TOKEN = re.compile(r"[0-9a-f]{16}")
_KEY_ID = _TOKEN  # a key id is 16 hex digits too
PID_TAG = "functionfuse.serializer"
_CHUNK = 8 << 20
_MAX_HEADER = 64 << 20
_MMAP_FROM = 1 << 20


class Reader(Protocol):
    def readinto(self, buffer: Any) -> int | None: ...


class Encoded:
    """A serialized result, ready to be written piece by piece.

    ``pieces[0]`` is the preamble and header (and a signed result's tag); the others are
    the payload segments. An encoding made with ``defer=True`` hashes its payload only
    when sealed (:meth:`seal`, or reading :attr:`header` or :attr:`pieces`), so a writer
    can write :attr:`segments` at offset :attr:`first_size` while another thread seals,
    then write :attr:`first` at offset 0: the checksum (and MAC) pass overlaps the
    write instead of preceding it.
    """

    __slots__ = ("_header", "_first", "segments", "size", "first_size", "_signer", "_lock")

    def __init__(self, header: dict, pieces: list, *, signer: Signer | None = None, first_size: int = 0) -> None:
        self._header = header
        self._first: bytes | None = pieces[0] if pieces and first_size == 0 else None
        self.segments = list(pieces[1:]) if self._first is not None else list(pieces)
        self._signer = signer
        self.first_size = len(self._first) if self._first is not None else first_size
        self.size = self.first_size + sum(memoryview(p).nbytes for p in self.segments)
        self._lock = threading.Lock()

    def seal(self, parallel: bool = True) -> None:
        """Hash the payload and build the header (once; safe from any thread). Not
        *parallel*: hash on one core, beside a writer that uses the other."""
        with self._lock:
            if self._first is None:
                self._first = _seal(self._header, self.segments, self._signer, parallel)
                if len(self._first) != self.first_size:  # pragma: no cover - the digests have fixed lengths
                    raise AssertionError("the sealed header changed length")

    @property
    def sealed(self) -> bool:
        return self._first is not None

    @property
    def first(self) -> bytes:
        self.seal()
        assert self._first is not None
        return self._first

    @property
    def header(self) -> dict:
        self.seal()
        return self._header

    @property
    def pieces(self) -> list:
        return [self.first, *self.segments]


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

    def persistent_id(self, obj: Any) -> Any:
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


def encode(
    obj: Any,
    meta: dict,
    *,
    serializers: Sequence[Any] = (),
    protocols: dict | None = None,
    data: str | None = None,
    signer: Signer | None = None,
    defer: bool = False,
) -> Encoded:
    """Pickle *obj* (protocol 5, buffers out of band) and frame it with *meta*; sign it
    with *signer* if given. With *defer*, the payload is hashed when the result is
    sealed (see :class:`Encoded`)."""
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
    except SerializationError as exc:  # a serializer's own error says what to do
        raise SerializationError(f"Could not serialize a result of type {type(obj).__name__}: {exc}") from exc
    except Exception as exc:
        raise SerializationError(
            f"Could not serialize a result of type {type(obj).__name__}: {type(exc).__name__}: {exc}. "
            "Return picklable values, or register a serializer for this type with "
            "storage.register_persistent_serializers(...)."
        ) from exc
    meta = dict(meta)
    meta.setdefault("versions", library_versions())
    meta["size"] = sum(memoryview(s).nbytes for s in segments)
    if used:
        meta["serializers"] = sorted(set(used))
    for key, ok in _META_TYPES.items():  # what readers check: refused now, not unreadable later
        if key in meta and not ok(meta[key]):
            raise ConfigurationError(
                f"Metadata {key!r} of a result cannot be {type(meta[key]).__name__} {str(meta[key])[:60]!r}: "
                f"functionfuse reads {key!r} back with a fixed meaning (see docs/storage.md); store your own "
                "information under another key."
            )
    header: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "segments": [memoryview(s).nbytes for s in segments],
        "checksum": None,
        "data": data,
        "meta": meta,
    }
    if not defer:
        return Encoded(header, [_seal(header, segments, signer), *segments])
    return Encoded(header, segments, signer=signer, first_size=len(_header_bytes(header, signer, None)) + (
        PREAMBLE.size + (TAG_BYTES if signer is not None else 0)))


def resign(header: dict, segments: list, signer: Signer) -> Encoded:
    """Frame a result read back (its checksum verified) again, signed with *signer*:
    the same metadata and payload, never unpickled."""
    fresh = {k: header[k] for k in ("segments", "data", "meta")}
    fresh = {"format": FORMAT_VERSION, **fresh, "checksum": None}
    return Encoded(fresh, [_seal(fresh, segments, signer), *segments])


_PLACEHOLDER = {"checksum": "xxh3_128:" + "0" * 32, "mac": "blake3:" + "0" * 64}


def _header_bytes(header: dict, signer: Signer | None, digests: tuple[str, str | None] | None) -> bytes:
    """The header's bytes: with *digests* (checksum, MAC) filled in, else placeholders
    of the same length."""
    checksum, mac = digests if digests is not None else (_PLACEHOLDER["checksum"], _PLACEHOLDER["mac"])
    header["checksum"] = checksum
    if signer is not None:
        header["mac"] = mac
        header["key_id"] = signer.key_id
    return json.dumps(header, separators=(",", ":"), default=str).encode()


def _seal(header: dict, segments: list, signer: Signer | None, parallel: bool = True) -> bytes:
    """Hash *segments* and return the preamble, header and tag that frame them."""
    hasher = xxhash.xxh3_128()
    mac = signer.payload_hasher(parallel) if signer is not None else None
    for s in segments:
        hasher.update(s)
        if mac is not None:
            mac.update(s)
    digests = ("xxh3_128:" + hasher.hexdigest(), "blake3:" + mac.hexdigest() if mac is not None else None)
    hbytes = _header_bytes(header, signer, digests)
    flags = FLAG_SIGNED if signer is not None else 0
    fields = PREAMBLE_FIELDS.pack(MAGIC, FORMAT_VERSION, flags, len(hbytes))
    check = xxhash.xxh3_64()
    check.update(fields)
    check.update(hbytes)
    first = fields + struct.pack("<Q", check.intdigest()) + hbytes
    if signer is not None:
        first += signer.tag(fields, hbytes)
    return first


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


def _parse(hbytes: bytes, where: str) -> Any:
    """The header's JSON; anything json cannot parse (or nests too deep) is damage."""
    try:
        return json.loads(hbytes)
    except (ValueError, RecursionError) as exc:
        raise _damaged(where, f"its header is not JSON ({type(exc).__name__}: {str(exc)[:100]})") from None


def _claimed_key_id(hbytes: bytes) -> str | None:
    """The key id an (unverified) header names, if it is readable."""
    try:
        header = json.loads(hbytes)
    except (ValueError, RecursionError):
        return None
    key_id = header.get("key_id") if isinstance(header, dict) else None
    return key_id if isinstance(key_id, str) and _KEY_ID.fullmatch(key_id) else None


def _damaged(where: str, why: str) -> CorruptedResultError:
    return CorruptedResultError(f"Stored result {where} is damaged: {why}.", path=where)


def _check_header(header: Any, version: int, where: str) -> dict:
    """Check that a header (whose bytes passed their check) has the shape this format
    gives it; anything else is damage, never a KeyError or AttributeError later."""
    if not isinstance(header, dict):
        raise _damaged(where, "its header is not a JSON object")
    if type(header.get("format")) is not int or header["format"] != version:
        raise _damaged(where, f"its header says format {str(header.get('format'))[:20]!r}, its preamble {version}")
    if "data" not in header:
        raise _damaged(where, "its header has no data token entry")
    segments = header.get("segments")
    if (
        not isinstance(segments, list)
        or not segments
        or len(segments) > _MAX_SEGMENTS
        or not all(type(n) is int and n >= 0 for n in segments)
    ):
        raise _damaged(where, "its header lists no valid segment sizes")
    checksum = header.get("checksum")
    if not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum):
        raise _damaged(where, f"its header names an unknown checksum {str(checksum)[:40]!r}")
    data = header.get("data")
    if data is not None and not (isinstance(data, str) and _TOKEN.fullmatch(data)):
        raise _damaged(where, f"its header's data token {str(data)[:40]!r} is not 16 hex digits")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise _damaged(where, "its header has no metadata")
    for key in ("workflow", "task"):
        if not isinstance(meta.get(key), str):
            raise _damaged(where, f"its metadata records no {key} name")
    used = meta.get("serializers")
    if used is not None and not (isinstance(used, list) and all(isinstance(n, str) for n in used)):
        raise _damaged(where, "its metadata lists serializers that are not names")
    if used and data is None:
        raise _damaged(where, "it uses serializers but names no data token")
    for key, ok in _META_TYPES.items():
        if key in meta and not ok(meta[key]):
            raise _damaged(where, f"its metadata's {key!r} is not what functionfuse writes there")
    if "size" in meta and meta["size"] != sum(segments):
        raise _damaged(where, "its metadata's size differs from its segments'")
    return header


def _is_str_map(value: Any, values: tuple[type, ...] = (str,)) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, values) for k, v in value.items())


def _is_fingerprint(fp: Any) -> bool:
    if fp is None:
        return True
    return (
        isinstance(fp, dict)
        and isinstance(fp.get("node"), str)
        and all(_is_str_map(fp.get(k, {}), (str, type(None))) for k in ("code", "args", "inputs"))
    )


#: the metadata functionfuse itself writes, and the shape it writes it in: a crafted
#: header with other shapes is damage, so planners and tools never meet them
_META_TYPES: dict[str, Callable[[Any], bool]] = {
    "node": lambda v: isinstance(v, str),
    "kind": lambda v: isinstance(v, str),
    "function": lambda v: isinstance(v, str),
    "inputs": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
    "started": lambda v: isinstance(v, str),
    "finished": lambda v: isinstance(v, str),
    "duration_s": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "size": lambda v: type(v) is int and v >= 0,
    "versions": lambda v: _is_str_map(v),
    "fingerprint": _is_fingerprint,
}


def read_header(
    f: Reader,
    where: str,
    size: int | None = None,
    *,
    expect: tuple[str, str] | None = None,
    signer: Signer | None = None,
) -> dict:
    """Read and check the preamble and header (and the signature of a signed result).

    :param size: the whole object's size, checked against the header's segment sizes.
    :param expect: ``(workflow, task)`` the result is read as: a result that records
        another workflow or task (a file copied or renamed) is damage.
    :param signer: the key of this process: the result must be signed with it.
    :raises CorruptedResultError: damage of any kind (:class:`SignatureError` when not
        signed, or not signed right). :raises SigningKeyError: signed with another key.
    """
    pre = bytes(read_exact(f, PREAMBLE.size, where))
    magic, version, flags, hlen, hcheck = PREAMBLE.unpack(pre)
    if magic != MAGIC:
        raise CorruptedResultError(f"{where} is not a functionfuse result (bad magic bytes).", path=where)
    if version == 0:
        raise _damaged(where, "its preamble says format 0, which was never written")
    if hlen > _MAX_HEADER or (size is not None and PREAMBLE.size + hlen > size):
        raise _damaged(where, f"its header has an impossible length ({hlen})")
    hbytes = bytes(read_exact(f, hlen, where))
    check = xxhash.xxh3_64()
    if version == 1:  # format 1 checked the header bytes only, and had no flags
        if flags != 0:
            raise _damaged(where, f"a format 1 result has flags {flags:#x}")
    else:
        check.update(pre[:16])
    check.update(hbytes)
    if check.intdigest() != hcheck:
        raise CorruptedResultError(
            f"Stored result {where} has a damaged header (its preamble check does not match).", path=where
        )
    if version > FORMAT_VERSION:
        raise StorageError(
            f"{where} was written in result format {version}, newer than this functionfuse "
            f"({__version__}) reads (format {FORMAT_VERSION}). Upgrade functionfuse to read it."
        )
    if flags & ~_KNOWN_FLAGS:
        raise _damaged(where, f"its preamble has unknown flags {flags:#x}")
    signed = bool(flags & FLAG_SIGNED)
    tag = bytes(read_exact(f, TAG_BYTES, where)) if signed else b""
    if signer is not None:  # before the header is even parsed: only a signed one is
        if not signed:
            raise SignatureError(
                f"Stored result {where} is not signed, and this process has a storage signing key "
                f"(key id {signer.key_id}): it is not read. Runs recompute it; or remove it.",
                path=where,
            )
        if not hmac.compare_digest(signer.tag(pre[:16], hbytes), tag):
            claimed = _claimed_key_id(hbytes)
            if claimed is not None and claimed != signer.key_id:
                raise SigningKeyError(
                    f"Stored result {where} says it is signed with key id {claimed[:16]!r}, and this process has "
                    f"key id {signer.key_id}: it is neither read nor overwritten. Set the key the store was written "
                    "with (FUNCTIONFUSE_STORAGE_KEY). If no process of yours uses that key id, someone else wrote "
                    "the file: remove it (functionfuse storage rm)."
                )
            raise SignatureError(
                f"Stored result {where} has a signature that does not match its content: it was changed "
                "by someone without the key. It is not read; runs recompute it.",
                path=where,
            )
    header = _parse(hbytes, where)
    _check_header(header, version, where)
    if signed and not (
        isinstance(header.get("mac"), str) and _MAC.fullmatch(header["mac"]) and isinstance(header.get("key_id"), str)
    ):
        raise _damaged(where, "it is flagged as signed but its header carries no valid MAC")
    expected = PREAMBLE.size + hlen + len(tag) + sum(header["segments"])
    if size is not None and size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise CorruptedResultError(
            f"Stored result {where} is {kind} ({size} bytes, expected {expected}).", path=where
        )
    if expect is not None:
        meta = header["meta"]
        if (meta["workflow"], meta["task"]) != tuple(expect):
            raise _damaged(
                where,
                f"it holds the result of task {meta['task'][:200]!r} of workflow {meta['workflow'][:200]!r}, not of "
                f"task {expect[1]!r} of workflow {expect[0]!r} (a copied or renamed file)",
            )
    return header


def _buffer(n: int) -> Any:
    """A writable buffer of *n* bytes. Large ones are private anonymous memory maps,
    which the kernel provides without first filling them with zeros (``bytearray(n)``
    writes every byte once more before the read does; a shared map is slower still)."""
    if n < _MMAP_FROM or not hasattr(mmap, "MAP_PRIVATE"):
        return bytearray(n)
    return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def read_payload(f: Reader, header: dict, where: str, *, signer: Signer | None = None) -> list[Any]:
    """Read every segment after the header, verifying the checksum (and, with *signer*,
    the payload's MAC: pass the signer the header was read with) as it goes."""
    digest = header["checksum"].partition(":")[2]
    hasher = xxhash.xxh3_128()
    if signer is not None and not isinstance(header.get("mac"), str):
        raise SignatureError(f"Stored result {where} is not signed.", path=where)
    mac = signer.payload_hasher() if signer is not None else None
    segments: list[Any] = []
    for n in header["segments"]:
        try:
            buf = _buffer(n)
        except (MemoryError, OSError, OverflowError) as exc:
            raise StorageError(
                f"Stored result {where} needs a buffer of {n} bytes, which this process cannot allocate "
                f"({type(exc).__name__}: {exc}). Read it where there is more memory; if it should not be that "
                "large, it is damaged: remove it."
            ) from None
        view = memoryview(buf)
        got = 0
        while got < n:
            k = f.readinto(view[got : min(n, got + _CHUNK)])
            if not k:
                raise CorruptedResultError(f"Stored result {where} is truncated.", path=where)
            hasher.update(view[got : got + k])
            got += k
        if mac is not None:
            mac.update(view)
        segments.append(buf)
    if hasher.hexdigest() != digest:
        raise CorruptedResultError(
            f"Stored result {where} is corrupted: its checksum does not match its content.", path=where
        )
    if mac is not None and not hmac.compare_digest("blake3:" + mac.hexdigest(), header["mac"]):
        raise SignatureError(
            f"Stored result {where} has a payload that does not match its signature: it was changed by "
            "someone without the key. It is not read; runs recompute it.",
            path=where,
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
