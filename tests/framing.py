"""Raw access to stored results, and crafted variants of them, for the hostile-store tests.

The helpers read and write a result's bytes as a user with write access to the store
would (``cp``, an S3 client), and rebuild frames whose preamble check is valid, as an
attacker who knows the format would.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable

import xxhash

from functionfuse.storage.frame import FLAG_SIGNED, MAGIC, PREAMBLE

FIELDS = struct.Struct("<8sHHI")


def _s3(storage: Any) -> Any:
    return getattr(storage, "filesystem", None)


def result_path(storage: Any, workflow: str, task: str) -> str:
    if _s3(storage) is not None:
        return f"{storage.path}/{workflow}/{task}.ffr"
    return os.path.join(storage.path, workflow, task + ".ffr")


def get_raw(storage: Any, workflow: str, task: str) -> bytes:
    fs = _s3(storage)
    if fs is not None:
        return bytes(fs.cat_file(result_path(storage, workflow, task)))
    with open(result_path(storage, workflow, task), "rb") as f:
        return f.read()


def put_raw(storage: Any, workflow: str, task: str, data: bytes) -> None:
    fs = _s3(storage)
    if fs is not None:
        fs.pipe_file(result_path(storage, workflow, task), data)
        return
    path = result_path(storage, workflow, task)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def delete_raw(storage: Any, workflow: str, task: str) -> None:
    fs = _s3(storage)
    if fs is not None:
        fs.rm(result_path(storage, workflow, task))
    else:
        os.remove(result_path(storage, workflow, task))


def split(data: bytes) -> tuple[int, int, dict, bytes]:
    """``(version, flags, header, rest)`` of a frame (rest: the tag, if any, and payload)."""
    _, version, flags, hlen, _ = PREAMBLE.unpack(data[: PREAMBLE.size])
    header = json.loads(data[PREAMBLE.size : PREAMBLE.size + hlen])
    return version, flags, header, data[PREAMBLE.size + hlen :]


def reframe(
    data: bytes,
    edit: Callable[[dict], Any] | None = None,
    *,
    version: int | None = None,
    flags: int | None = None,
    header_bytes: bytes | None = None,
    legacy: bool = False,
) -> bytes:
    """Rebuild a frame after changing its header, version or flags, with a valid
    preamble check (format 1's check when *legacy*). A signature is kept as it was."""
    v, f, header, rest = split(data)
    if edit is not None:
        edit(header)
    hbytes = header_bytes if header_bytes is not None else json.dumps(header, separators=(",", ":")).encode()
    v = v if version is None else version
    f = f if flags is None else flags
    fields = FIELDS.pack(MAGIC, v, f, len(hbytes))
    check = xxhash.xxh3_64(hbytes if legacy else fields + hbytes).intdigest()
    return fields + struct.pack("<Q", check) + hbytes + rest


def payload_offset(data: bytes) -> int:
    _, _, flags, hlen, _ = PREAMBLE.unpack(data[: PREAMBLE.size])
    return PREAMBLE.size + hlen + (32 if flags & FLAG_SIGNED else 0)
