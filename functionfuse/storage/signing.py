"""Signed results: an opt-in key that makes every stored result carry a MAC.

Results are pickles, and unpickling runs code: whoever can write to a store can make
every reader of it run code of their choosing. A store must therefore be trusted like
code. Where several people or machines share a store (a bucket, a cluster volume),
set a secret key in every process that writes or reads it::

    export FUNCTIONFUSE_STORAGE_KEY="$(python -c 'import secrets; print(secrets.token_hex(32))')"
    # or keep it in a file (a mounted Kubernetes Secret, say):
    export FUNCTIONFUSE_STORAGE_KEY_FILE=/var/run/secrets/functionfuse/key

With a key, every write signs the result (a keyed BLAKE3 MAC over the preamble, the
header and the payload), and every read checks the signature before anything is
unpickled. An unsigned result, or one whose signature does not match, is refused
(:class:`~functionfuse.errors.SignatureError`, a kind of damaged result: a run
recomputes it, ``functionfuse storage ls --verify`` reports it). A result signed with
another key is refused with :class:`~functionfuse.errors.SigningKeyError`, and a run
stops there rather than overwrite it.

The key never leaves the process: it is not pickled with storage objects (they carry
only the key's *id*, a one-way digest, so a Ray worker or a KFP step without the same
key fails at once instead of writing unsigned results), and it appears in no metadata,
report, image or log record.

>>> signer = Signer(b"0123456789abcdef0123456789abcdef")
>>> len(signer.key_id)
16
>>> signer
Signer(key_id='...')
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..errors import ConfigurationError, SigningKeyError, missing_dependency

__all__ = ["Signer", "ENV_KEY", "ENV_KEY_FILE", "current_signer", "require", "required_key_id"]

ENV_KEY = "FUNCTIONFUSE_STORAGE_KEY"
ENV_KEY_FILE = "FUNCTIONFUSE_STORAGE_KEY_FILE"
#: the shortest key accepted (bytes of the key as given, e.g. 32 hex digits)
MIN_KEY_BYTES = 16
#: length of a signature (the tag after the header) and of a payload MAC, in bytes
TAG_BYTES = 32

_CONTEXT = "functionfuse 2026-12 stored result signing key v1"


def _blake3() -> Any:
    try:
        import blake3
    except ImportError as exc:  # pragma: no cover - blake3 is a dependency of functionfuse
        raise missing_dependency("blake3", "signing", exc) from exc
    return blake3


class Signer:
    """Signs and checks results with one secret key.

    :param secret: the key as given by the user (at least 16 bytes). It is turned
        into a 32-byte BLAKE3 key by key derivation; ``key_id`` names it in errors.
    """

    __slots__ = ("_key", "key_id")

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_KEY_BYTES:
            raise ConfigurationError(
                f"The storage signing key is too short ({len(secret)} bytes): give at least {MIN_KEY_BYTES} "
                f"bytes, e.g. {ENV_KEY}=\"$(python -c 'import secrets; print(secrets.token_hex(32))')\"."
            )
        b3 = _blake3()
        self._key = b3.blake3(bytes(secret), derive_key_context=_CONTEXT).digest()
        self.key_id = b3.blake3(b"key id", key=self._key).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"

    def __reduce__(self) -> Any:
        raise TypeError(
            "A storage signing key is never pickled: give it to every process through "
            f"{ENV_KEY} or {ENV_KEY_FILE} (e.g. from a Kubernetes Secret)."
        )

    def payload_hasher(self, parallel: bool = True) -> Any:
        """A keyed hasher for the payload segments: on every core for large results when
        *parallel*, else on one (when it runs beside a writer that needs the other)."""
        b3 = _blake3()
        h = b3.blake3(key=self._key, max_threads=b3.blake3.AUTO if parallel else 1)
        h.update(b"payload\0")
        return h

    def tag(self, preamble: bytes, header: bytes) -> bytes:
        """The signature of a result: a MAC of its preamble fields and header bytes (the
        header holds the payload's MAC, so the tag covers the whole result)."""
        h = _blake3().blake3(key=self._key)
        h.update(b"tag\0")
        h.update(preamble)
        h.update(header)
        return h.digest()


_lock = threading.Lock()
_cache: dict[tuple, Signer | None] = {}


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError as exc:
        raise ConfigurationError(
            f"{ENV_KEY_FILE}={path!r} cannot be read ({exc.strerror or exc}): point it at the file that holds the "
            "storage signing key, or unset it."
        ) from None
    return data.strip()


def current_signer() -> Signer | None:
    """The signer of this process, from ``$FUNCTIONFUSE_STORAGE_KEY`` or
    ``$FUNCTIONFUSE_STORAGE_KEY_FILE`` (None when neither is set)."""
    value = os.environ.get(ENV_KEY)
    path = os.environ.get(ENV_KEY_FILE)
    if not value and not path:
        return None
    if value and path:
        raise ConfigurationError(f"Both {ENV_KEY} and {ENV_KEY_FILE} are set: set one of them.")
    if path:
        try:
            st = os.stat(path)
            ident: tuple = ("file", path, st.st_mtime_ns, st.st_size)
        except OSError:
            ident = ("file", path)
    else:
        ident = ("env", value)
    with _lock:
        if ident in _cache:
            return _cache[ident]
    signer = Signer(_read_key_file(path) if path else os.fsencode(value or ""))
    with _lock:
        _cache.clear()  # one key per process at a time; the old one is not kept around
        _cache[ident] = signer
    return signer


def required_key_id(key_id: str | None) -> str | None:
    """The id of the key that copies of a storage must have: *key_id* if the storage
    already requires one, else that of this process's key (None without a key)."""
    if key_id:
        return key_id
    signer = current_signer()
    return signer.key_id if signer is not None else None


def require(key_id: str | None, owner: object) -> Signer | None:
    """The signer of this process, checked against *key_id*, the id of the key of the
    process that configured the storage *owner* (None: no key was required there)."""
    signer = current_signer()
    if key_id is None or (signer is not None and signer.key_id == key_id):
        return signer
    what = repr(owner)
    if signer is None:
        raise SigningKeyError(
            f"{what} signs its results (key id {key_id}), but no signing key is set in this process "
            f"(pid {os.getpid()}). Give every process that uses the storage (Ray workers, KFP steps, "
            f"Prefect workers) the same key through {ENV_KEY} or {ENV_KEY_FILE}, e.g. from a Kubernetes Secret."
        )
    if signer.key_id != key_id:
        raise SigningKeyError(
            f"{what} signs its results with key id {key_id}, but this process (pid {os.getpid()}) has key id "
            f"{signer.key_id}. Give every process the same {ENV_KEY}."
        )
    return signer
