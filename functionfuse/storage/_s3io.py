"""The S3 requests of :mod:`functionfuse.storage.s3storage`, and what their errors mean.

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

Credentials never appear in messages: they are neither formatted into them nor part of
botocore's error texts, and URLs lose any user-info.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import io
import json
import logging
import os
import random
import re
import threading
from typing import Any, Iterable, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import StorageError, missing_dependency

try:
    import s3fs
    from botocore import exceptions as bx
    from fsspec.asyn import sync
except ImportError as _exc:  # pragma: no cover - exercised without the s3 extra
    _err = missing_dependency(getattr(_exc, "name", None) or "s3fs", "s3", _exc)
    _err.name = getattr(_exc, "name", None) or "s3fs"  # storage_factory names the module too
    raise _err from _exc

__all__ = ["S3IO", "Missing", "Changed", "NotRetried", "filesystems", "display_endpoint"]

log = logging.getLogger("functionfuse.storage.s3")

#: a result up to this size is one PUT; a larger one is a multipart upload of PART bytes
SINGLE_PUT_MAX = 64 << 20
PART = 32 << 20
MAX_PARTS = 10_000
UPLOAD_CONCURRENCY = 4
#: the first request of a read fetches this much: small results (most) are one GET
FIRST_READ = 1 << 16
BODY_ATTEMPTS = 4
ATTEMPTS = 5
#: "total_max_attempts": botocore's "max_attempts" counts the retries only (5 meant 6 attempts)
DEFAULT_RETRIES: dict[str, Any] = {"mode": "standard", "total_max_attempts": ATTEMPTS}
#: the most that the backoff pauses of one request add up to under DEFAULT_RETRIES (15 s):
#: botocore pauses rand(0, 1) * 2**(n - 1) s after attempt n
RETRY_PAUSES_MAX = float(sum(2**n for n in range(ATTEMPTS - 1)))
#: the ``config_kwargs`` of a short budget (run reports): one attempt, short timeouts
SHORT_BUDGET: dict[str, Any] = {
    "retries": {"mode": "standard", "total_max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5,
}

_DENIED = frozenset({
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AccountProblem", "InvalidSecurity",
    "Forbidden", "403",
})
_THROTTLED = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                        "TooManyRequests", "RequestThrottled", "ServiceUnavailable", "503"})


class Missing(StorageError):
    """The object does not exist (callers turn it into TaskNotFoundError)."""


class Changed(StorageError):
    """The object was replaced while it was being read; read it again."""


class NotRetried(StorageError):
    """The HTTP layer refused a request for a reason that a new attempt meets again
    (its ``__cause__`` is botocore's ``HTTPClientError``); :meth:`S3IO.error` explains it."""


# -- file systems, one pair per process and options ----------------------------------------
_FS_LOCK = threading.Lock()
_FILESYSTEMS: dict[tuple, tuple[Any, Any]] = {}


def _with_defaults(options: dict) -> dict:
    opts = dict(options)
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", dict(DEFAULT_RETRIES))
    opts["config_kwargs"] = config
    opts.setdefault("use_listings_cache", False)  # other processes write: never list from a cache
    return opts


def filesystems(options: dict, *, short_budget: bool = False) -> tuple[Any, Any]:
    """``(sync, async)`` ``s3fs.S3FileSystem`` instances for *options*, made once per process.

    The async one is for zarr (``zarr.storage.FsspecStore`` runs it on zarr's own loop).
    With *short_budget*, their requests get :data:`SHORT_BUDGET` (one attempt, short
    timeouts) whatever the options say.
    """
    key = (os.getpid(), short_budget, json.dumps(options, sort_keys=True, default=repr))
    with _FS_LOCK:
        pair = _FILESYSTEMS.get(key)
        if pair is None:
            opts = _with_defaults(options)
            if short_budget:
                opts["config_kwargs"] = {**opts["config_kwargs"], **copy.deepcopy(SHORT_BUDGET)}
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
            afs = s3fs.S3FileSystem(skip_instance_cache=True, asynchronous=True, **opts)
            pair = _FILESYSTEMS[key] = (fs, afs)
        return pair


_CLOSE_REGISTERED = False


def close_zarr_sessions_at_exit() -> None:
    """Close the async file systems' HTTP sessions at exit, on zarr's loop, before zarr
    stops that loop (call after importing zarr: exit hooks run last-registered first)."""
    global _CLOSE_REGISTERED
    with _FS_LOCK:
        if _CLOSE_REGISTERED:
            return
        _CLOSE_REGISTERED = True
    atexit.register(_close_async_sessions)


def _close_async_sessions() -> None:
    try:
        from zarr.core.sync import sync as zarr_sync
    except ImportError:  # pragma: no cover
        return
    pid = os.getpid()
    for (owner, *_), (_fs, afs) in list(_FILESYSTEMS.items()):
        creator = getattr(afs, "_s3creator", None)
        if owner != pid or creator is None or getattr(afs, "_s3", None) is None:
            continue
        try:
            zarr_sync(creator.__aexit__(None, None, None), timeout=5)
        except Exception:  # noqa: BLE001 - best effort, at exit
            pass
        afs._s3 = None


def _endpoint_url(options: dict) -> str | None:
    url = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    url = url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return str(url) if url else None


def _has_user_info(options: dict) -> bool:
    """Whether the endpoint URL carries ``user:password@`` (the HTTP layer refuses it)."""
    url = _endpoint_url(options)
    try:
        return bool(url) and "@" in urlsplit(str(url)).netloc
    except ValueError:
        return False


def display_endpoint(options: dict) -> str:
    """The endpoint for messages, without any user-info a URL may carry."""
    url = _endpoint_url(options)
    if not url:
        return "the default AWS S3 endpoint"
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparsable endpoint URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# -- error classification ---------------------------------------------------------------------
def _code(exc: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore error, ("", 0) for other errors."""
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) or {}
        status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0
        return str(err.get("Code", "") or ""), int(status)
    return "", 0


def _refused(exc: BaseException) -> bool:
    """Whether *exc* is the HTTP layer refusing a request (botocore wraps whatever aiohttp
    raises in ``HTTPClientError``): a ``ValueError``/``TypeError`` there, such as "Cannot
    combine AUTHORIZATION header with AUTH argument or credentials encoded in URL", comes
    from the request itself and comes again on every attempt."""
    if isinstance(exc, NotRetried):
        return True
    inner = exc.kwargs.get("error") if isinstance(exc, bx.HTTPClientError) else None
    return isinstance(inner, (ValueError, TypeError))


def is_transient(exc: BaseException) -> bool:
    """Whether *exc* is a failure that a later attempt may not meet."""
    code, status = _code(exc)
    if isinstance(exc, bx.ClientError):
        return status >= 500 or code in _THROTTLED or code in ("RequestTimeout", "InternalError")
    if _refused(exc):
        return False
    return isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError,
                            bx.IncompleteReadError, asyncio.TimeoutError, ConnectionError, TimeoutError))


#: the ``needs-retry`` handler of S3IO: registered once per client, before botocore's own
_HOOK_ID = "functionfuse-not-retried"


def _body_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (
        bx.HTTPClientError, bx.ResponseStreamingError, bx.IncompleteReadError,
        asyncio.TimeoutError, ConnectionError, TimeoutError,
    )
    try:
        import aiohttp

        errors += (aiohttp.ClientError,)
    except ImportError:  # pragma: no cover - aiobotocore depends on aiohttp
        pass
    return errors


_BODY_ERRORS = _body_errors()


#: "user:password@" after "//", at the start, or after a space or quote ("Invalid endpoint: u:p@host")
_USER_INFO = re.compile(r"(?:(?<=//)|^|(?<=[\s'\"]))[^\s/@'\"]+@")


def _short(exc: BaseException, hidden: Sequence[str] = ()) -> str:
    """``Type: first line`` of *exc*, without the user-info of URLs in it nor any of *hidden*."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = _USER_INFO.sub("", text)
    for secret in hidden:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _user_info_parts(options: dict) -> tuple[str, ...]:
    """The user-info of the endpoint URL, as written and decoded, to keep out of messages."""
    url = _endpoint_url(options)
    try:
        info = urlsplit(url).netloc.rpartition("@")[0] if url else ""
    except ValueError:
        info = ""
    if not info:
        return ()
    parts = {info, unquote(info), *info.split(":", 1), *unquote(info).split(":", 1)}
    # a user name or password of 1-3 characters would blank out letters of the message;
    # inside a URL the whole user-info goes anyway (_USER_INFO)
    return tuple(sorted((p for p in parts if len(p) >= 4), key=len, reverse=True))


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
        self._endpoint_user_info = _has_user_info(options)
        self._hidden = _user_info_parts(options)
        self._short_budget = short_budget

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
        s3.meta.events.register_first("needs-retry.s3", self._refusal_hook(), unique_id=_HOOK_ID)
        return s3

    def _text(self, exc: BaseException) -> str:
        """``Type: first line`` of *exc* for a message: no user-info, no credentials."""
        return _short(exc, self._hidden)

    def _refusal_hook(self) -> Any:
        """A botocore ``needs-retry`` handler that runs before botocore's own: a request the
        HTTP layer refused raises :class:`NotRetried` instead of being retried (botocore's
        standard mode retries every ``HTTPClientError``, and s3fs's own loop, which serializers'
        requests go through, would retry that again; it does not retry NotRetried)."""

        def refused(caught_exception: BaseException | None = None, **_: Any) -> None:
            if caught_exception is not None and _refused(caught_exception):
                # the client serves every bucket of these options: name the endpoint only
                why = self._refusal(caught_exception)
                raise NotRetried(f"S3 request to {self.endpoint} failed: {why}") from caught_exception

        return refused

    def _refusal(self, exc: BaseException) -> str:
        """Why the HTTP layer refused a request, and the fix (*exc* is its HTTPClientError)."""
        if self._endpoint_user_info:
            return (
                "the HTTP client refuses to send signed requests to an endpoint_url that carries "
                f"user-info ('user:password@' before the host) ({self._text(exc)}), so it was not "
                f"retried. Remove the user-info from endpoint_url ({self.endpoint!r}) and give the "
                "credentials as 'key'/'secret' in the 's3fs' options or as AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY."
            )
        return (
            f"the HTTP client refused the request ({self._text(exc)}); it would be refused again, so "
            "it was not retried. Check the 's3fs' options that shape requests (endpoint_url, "
            "client_kwargs, config_kwargs)."
        )

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def error(self, exc: BaseException, op: str, key: str | None = None) -> StorageError:
        """A StorageError that says what failed, where, and what to do."""
        code, status = _code(exc)
        where = self.url(key) if key else f"bucket {self.bucket!r}"
        at = f"at {self.endpoint}"
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code in ("", "404") and key):
            return Missing(f"{where} does not exist.")
        if code == "NoSuchBucket" or (status == 404 and not key):
            return StorageError(
                f"S3 bucket {self.bucket!r} does not exist {at}. Create it first, or correct the "
                "bucket in the storage option 'path' (\"bucket/prefix\") or the endpoint in "
                "'s3fs': {'endpoint_url': ...}."
            )
        if code in _DENIED or status == 403:
            return StorageError(
                f"Access to S3 bucket {self.bucket!r} {at} was denied ({code or status}) during {op} of "
                f"{where}. Check the credentials (the 'key'/'secret' of the 's3fs' options, or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the bucket's policy."
            )
        if code == "PreconditionFailed" or status == 412:
            return Changed(f"{where} was replaced while it was being read; read it again.")
        if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            return StorageError(
                f"No usable S3 credentials for bucket {self.bucket!r} {at}: {type(exc).__name__}. Pass "
                "'key' and 'secret' in the 's3fs' options, or set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or an AWS profile) where the workflow runs."
            )
        if _refused(exc):
            refused = exc.__cause__ if isinstance(exc, NotRetried) and exc.__cause__ is not None else exc
            why = self._refusal(refused)
            return StorageError(f"S3 {op} of {where} (bucket {self.bucket!r}) {at} failed: {why}")
        if isinstance(exc, bx.ParamValidationError):
            return StorageError(
                f"botocore refused the parameters of the S3 {op} of {where} {at} before sending it, so "
                f"it was not retried: {self._text(exc)}. Check the storage option 'path' and the 's3fs' "
                "options."
            )
        if is_transient(exc):
            tried = "in its one attempt" if self._short_budget else "even after retrying with backoff"
            return StorageError(
                f"S3 endpoint {self.endpoint} failed {op} of {where} (bucket {self.bucket!r}) {tried}: "
                f"{self._text(exc)}. Is the server running and reachable? Results stored so far are "
                "kept: run again once it is back, and the run resumes."
            )
        if isinstance(exc, bx.ClientError):
            return StorageError(
                f"S3 {at} refused the {op} of {where} ({self._text(exc)}, HTTP {status}); the same "
                "request would be refused again, so it was not retried. Check the bucket's "
                "configuration and the 's3fs' options."
            )
        return StorageError(f"S3 {op} of {where} {at} failed: {self._text(exc)}")

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
            except _BODY_ERRORS as exc:  # the body was cut off: ask again
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
            if cause is not None and _code(cause)[0] == "InvalidRange":  # an empty object
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
