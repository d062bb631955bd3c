"""The S3 requests of :mod:`functionfuse.storage.s3storage`: reads bound to an ETag,
single and multipart PUTs, listings and deletes, and their retry policy. The options
they are made from are in :mod:`~functionfuse.storage._s3options`; what their errors
mean, and the messages, in :mod:`~functionfuse.storage._s3errors`.

Requests go through the aiobotocore client of an ``s3fs.S3FileSystem`` built from the
storage's ``s3fs`` options (so credentials, endpoint, ``client_kwargs`` and
``config_kwargs`` mean what they mean to s3fs), on fsspec's event-loop thread.

Retries. Transient failures (connection refused or reset, timeouts, HTTP 500/502/503/
504, throttling such as ``SlowDown``) are retried by botocore's ``standard`` retry mode
with exponential backoff and jitter: 5 attempts in all (``total_max_attempts``; note
that botocore's ``max_attempts`` counts the retries only), so the pauses of one request
add up to at most 1 + 2 + 4 + 8 = 15 s (7.5 s on average) before a down server is
reported. This is the only retry layer for these requests (s3fs's own ``retries`` loop
does not wrap them); a response body cut off while it is read is requested again here.

Permanent failures are not retried: they raise at once a
:class:`~functionfuse.errors.StorageError` that names the bucket, the endpoint, the
cause and the fix. They are S3's refusals (no such bucket, access denied, other 4xx
but throttling and timeouts), missing credentials, unusable options (an invalid
endpoint URL, parameters botocore rejects) and requests the HTTP layer refuses
(``ValueError``/``TypeError`` from aiohttp, e.g. credentials embedded in the endpoint
URL). botocore would retry the last kind like a network error; a ``needs-retry``
handler that runs before botocore's raises :class:`NotRetried` instead, which neither
botocore nor s3fs retries.

:class:`S3IO` with ``short_budget=True`` (run reports) makes one attempt with short
timeouts (:data:`SHORT_BUDGET`): a run that failed because the server is down is not
held up a second time by its report.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
from typing import Any, Iterable, Sequence

from ..errors import StorageError, missing_dependency

try:
    import s3fs  # noqa: F401 - the extra's guard: its hint names s3fs
    from fsspec.asyn import sync
except ImportError as _exc:  # pragma: no cover - exercised without the s3 extra
    _err = missing_dependency(getattr(_exc, "name", None) or "s3fs", "s3", _exc)
    _err.name = getattr(_exc, "name", None) or "s3fs"  # storage_factory names the module too
    raise _err from _exc

from ._s3options import (  # noqa: F401 - re-exported: the retry settings are documented here
    DEFAULT_RETRIES,
    RETRY_PAUSES_MAX,
    SHORT_BUDGET,
    close_zarr_sessions_at_exit,
    display_endpoint,
    filesystems,
)
from ._s3errors import (  # noqa: F401 - re-exported: callers catch these here
    BODY_ERRORS,
    Changed,
    Explain,
    Missing,
    NotRetried,
    code_of,
    is_transient,
)

__all__ = ["S3IO", "Missing", "Changed", "NotRetried", "is_transient", "filesystems", "display_endpoint"]

log = logging.getLogger("functionfuse.storage.s3")

#: a result up to this size is one PUT; a larger one is a multipart upload of PART bytes
SINGLE_PUT_MAX = 64 << 20
PART = 32 << 20
MAX_PARTS = 10_000
UPLOAD_CONCURRENCY = 4
#: the first request of a read fetches this much: small results (most) are one GET
FIRST_READ = 1 << 16
BODY_ATTEMPTS = 4
#: the ``needs-retry`` handler of S3IO: registered once per client, before botocore's own
_HOOK_ID = "functionfuse-not-retried"


# -- reading and writing ----------------------------------------------------------------------
class _PiecesFile(io.RawIOBase):
    """A seekable, read-only file over a window of a list of byte views, without copying
    them first: the body of a PUT or of one part of a multipart upload."""

    def __init__(self, views: Sequence[memoryview], starts: Sequence[int], start: int, length: int) -> None:
        super().__init__()
        self._views = views
        self._starts = starts
        self._start = start
        self._len = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._len}[whence]
        self._pos = max(0, min(self._len, base + offset))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        want = min(len(out), self._len - self._pos)
        done = 0
        while done < want:
            absolute = self._start + self._pos + done
            i = _find(self._starts, absolute)
            view = self._views[i]
            off = absolute - self._starts[i]
            k = min(want - done, len(view) - off)
            out[done : done + k] = view[off : off + k]
            done += k
        self._pos += done
        return done


def _find(starts: Sequence[int], offset: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:  # the last start <= offset
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo


class ObjectReader:
    """Reads one stored object: the first bytes came with the request that found it;
    the rest is fetched by range, each request bound to the object's ETag, so a result
    replaced while it is read raises :class:`Changed` instead of mixing two versions."""

    def __init__(self, s3io: "S3IO", key: str, first: bytes, size: int, etag: str | None) -> None:
        self._io = s3io
        self._key = key
        self._first = first
        self.size = size
        self._etag = etag
        self._pos = 0

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        want = min(len(out), self.size - self._pos)
        if want <= 0:
            return 0
        if self._pos < len(self._first):
            k = min(want, len(self._first) - self._pos)
            out[:k] = self._first[self._pos : self._pos + k]
        else:
            data, _size, _etag = self._io.get_range(self._key, self._pos, self._pos + want, etag=self._etag)
            k = len(data)
            out[:k] = data
        self._pos += k
        return k

    def close(self) -> None:
        self._first = b""

    def __enter__(self) -> "ObjectReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class S3IO:
    """The S3 requests of one storage (bucket) in this process; with *short_budget*, each
    request gets one attempt with short timeouts (:data:`SHORT_BUDGET`)."""

    def __init__(self, bucket: str, options: dict, *, short_budget: bool = False) -> None:
        self.bucket = bucket
        self.fs, self.afs = filesystems(options, short_budget=short_budget)
        self.endpoint = display_endpoint(options)
        self.explain = Explain(bucket, options, short_budget=short_budget)

    # -- plumbing ----------------------------------------------------------------------------
    def _run(self, op: str, key: str | None, coro_fn: Any, *args: Any) -> Any:
        try:
            return sync(self.fs.loop, coro_fn, *args)
        except (Missing, Changed):
            raise
        except NotRetried as exc:
            raise self.error(exc, op, key) from exc.__cause__
        except StorageError:
            raise
        except Exception as exc:
            raise self.error(exc, op, key) from exc

    async def _client(self) -> Any:
        try:
            s3 = await self.fs.set_session()
        except (ValueError, TypeError) as exc:  # before any request: the options make no client
            raise StorageError(
                f"S3 storage cannot make a client for endpoint {self.endpoint!r} of bucket "
                f"{self.bucket!r} from its 's3fs' options: {self._text(exc)}. Give endpoint_url as "
                "a full URL such as 'http://127.0.0.1:9000' or 'https://s3.example.com', and check "
                "'client_kwargs' and 'config_kwargs'."
            ) from exc
        # (once per client: botocore ignores a handler registered again under the same id)
        s3.meta.events.register_first("needs-retry.s3", self.explain.refusal_hook(), unique_id=_HOOK_ID)
        return s3

    def _text(self, exc: BaseException) -> str:
        return self.explain.text(exc)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def error(self, exc: BaseException, op: str, key: str | None = None) -> StorageError:
        """A StorageError that says what failed, where, and what to do."""
        return self.explain.error(exc, op, key)

    # -- reads -------------------------------------------------------------------------------
    async def _get(self, key: str, start: int, end: int, etag: str | None) -> tuple[bytes, int, str | None]:
        s3 = await self._client()
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if etag:
            kw["IfMatch"] = etag
        last: BaseException | None = None
        for attempt in range(BODY_ATTEMPTS):
            resp = await s3.get_object(**kw)
            body = resp["Body"]
            try:
                data = await body.read()
            except BODY_ERRORS as exc:  # the body was cut off: ask again
                last = exc
                log.debug("S3 body of %s cut off (%s); reading it again", self.url(key), type(exc).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2))
                continue
            finally:
                body.close()
            total = _total_size(resp.get("ContentRange"), start + len(data))
            return data, total, resp.get("ETag")
        assert last is not None
        raise last

    def get_range(self, key: str, start: int, end: int, *, etag: str | None = None) -> tuple[bytes, int, str | None]:
        """Bytes ``[start, end)`` of an object, its total size and its ETag."""
        return self._run("GET", key, self._get, key, start, end, etag)

    def get(self, key: str) -> bytes:
        """A whole (small) object; raise :class:`Missing`."""

        async def whole() -> bytes:
            s3 = await self._client()
            resp = await s3.get_object(Bucket=self.bucket, Key=key)
            try:
                return await resp["Body"].read()
            finally:
                resp["Body"].close()

        return self._run("GET", key, whole)

    def open_reader(self, key: str) -> ObjectReader:
        """Open an object for reading (one request); raise :class:`Missing`."""
        try:
            first, size, etag = self.get_range(key, 0, FIRST_READ)
        except StorageError as exc:
            cause = exc.__cause__
            if cause is not None and code_of(cause)[0] == "InvalidRange":  # an empty object
                return ObjectReader(self, key, b"", 0, None)
            raise
        return ObjectReader(self, key, first, size, etag)

    # -- writes ------------------------------------------------------------------------------
    async def _put(self, key: str, views: list[memoryview], size: int) -> None:
        s3 = await self._client()
        starts = _starts(views)
        if size <= SINGLE_PUT_MAX:
            await s3.put_object(Bucket=self.bucket, Key=key, Body=_PiecesFile(views, starts, 0, size), ContentLength=size)
            return
        part = max(PART, -(-size // MAX_PARTS))
        upload = await s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

        async def send(number: int, offset: int) -> dict:
            length = min(part, size - offset)
            async with gate:
                r = await s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                    Body=_PiecesFile(views, starts, offset, length), ContentLength=length,
                )
            entry = {"PartNumber": number, "ETag": r["ETag"]}
            for algo in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256", "ChecksumCRC64NVME"):
                if r.get(algo):
                    entry[algo] = r[algo]
            return entry

        try:
            tasks = [asyncio.ensure_future(send(n + 1, off)) for n, off in enumerate(range(0, size, part))]
            try:
                parts = await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            # the commit point: the object appears whole, or not at all
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": list(parts)}
            )
        except BaseException:
            try:
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception as exc:  # the server may be gone: S3 lifecycle rules clean up
                log.warning("could not abort the multipart upload of %s: %s", self.url(key), self._text(exc))
            raise

    def put(self, key: str, pieces: Iterable[Any], size: int) -> None:
        """Write *pieces* as one object, atomically (one PUT, or a multipart upload that
        becomes visible only when it is completed)."""
        from .frame import iter_pieces

        views = list(iter_pieces(pieces))
        self._run("PUT", key, self._put, key, views, size)

    # -- listing and removal -----------------------------------------------------------------
    async def _list(self, prefix: str, delimiter: str | None) -> tuple[list[str], list[str]]:
        s3 = await self._client()
        keys: list[str] = []
        prefixes: list[str] = []
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kw["Delimiter"] = delimiter
        while True:
            resp = await s3.list_objects_v2(**kw)
            keys.extend(c["Key"] for c in resp.get("Contents", ()) or ())
            prefixes.extend(p["Prefix"] for p in resp.get("CommonPrefixes", ()) or ())
            if not resp.get("IsTruncated"):
                return keys, prefixes
            kw["ContinuationToken"] = resp["NextContinuationToken"]

    def list_keys(self, prefix: str, delimiter: str | None = "/") -> tuple[list[str], list[str]]:
        """Keys and common prefixes under *prefix* (every key if *delimiter* is None)."""
        return self._run("LIST", prefix or None, self._list, prefix, delimiter)

    async def _list_identities(self, prefix: str) -> dict[str, str]:
        s3 = await self._client()
        found: dict[str, str] = {}
        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/"}
        while True:
            resp = await s3.list_objects_v2(**kw)
            for c in resp.get("Contents", ()) or ():
                etag = str(c.get("ETag") or "").strip('"')
                found[c["Key"]] = f"{etag}:{c.get('Size')}" if etag else ""
            if not resp.get("IsTruncated"):
                return found
            kw["ContinuationToken"] = resp["NextContinuationToken"]

    def list_identities(self, prefix: str) -> dict[str, str]:
        """``{key: "<ETag>:<size>"}`` of the objects directly under *prefix* ("" when the
        server lists no ETag), from one listing."""
        return self._run("LIST", prefix or None, self._list_identities, prefix)

    async def _delete(self, keys: list[str]) -> None:
        s3 = await self._client()
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            resp = await s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 could not delete {len(errors)} object(s) of bucket {self.bucket!r} at {self.endpoint}, "
                    f"e.g. {self.url(first.get('Key', '?'))}: {first.get('Code')}: {first.get('Message')}"
                )

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            self._run("DELETE", keys[0], self._delete, list(keys))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under *prefix* (which ends with '/')."""
        keys, _ = self.list_keys(prefix, None)
        self.delete(keys)

    def head_bucket(self) -> None:
        async def head() -> None:
            s3 = await self._client()
            await s3.head_bucket(Bucket=self.bucket)

        self._run("HEAD", None, head)


def _starts(views: Sequence[memoryview]) -> list[int]:
    out, pos = [], 0
    for v in views:
        out.append(pos)
        pos += v.nbytes
    return out


def _total_size(content_range: str | None, fallback: int) -> int:
    # "bytes 0-65535/123456"
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return fallback
