"""What the errors of S3 requests mean: which are transient (retried), which are S3's
refusals, and the StorageError each becomes, naming the bucket, the endpoint, the cause
and the fix (see :mod:`functionfuse.storage._s3io` for the retry policy).

Credentials never appear in messages: they are neither formatted into them nor part of
botocore's error texts, and URLs lose any user-info.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Sequence

from ..errors import StorageError, missing_dependency

try:
    from botocore import exceptions as bx
except ImportError as _exc:  # pragma: no cover - exercised without the s3 extra
    _err = missing_dependency(getattr(_exc, "name", None) or "s3fs", "s3", _exc)
    _err.name = getattr(_exc, "name", None) or "s3fs"  # storage_factory names the module too
    raise _err from _exc

from ._s3options import display_endpoint, has_user_info, user_info_parts

__all__ = ["Missing", "Changed", "NotRetried", "Explain", "code_of", "is_transient", "refused", "short", "BODY_ERRORS"]

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


# -- error classification ---------------------------------------------------------------------
def code_of(exc: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore error, ("", 0) for other errors."""
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) or {}
        status = (exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0
        return str(err.get("Code", "") or ""), int(status)
    return "", 0


def refused(exc: BaseException) -> bool:
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
    code, status = code_of(exc)
    if isinstance(exc, bx.ClientError):
        return status >= 500 or code in _THROTTLED or code in ("RequestTimeout", "InternalError")
    if refused(exc):
        return False
    return isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError,
                            bx.IncompleteReadError, asyncio.TimeoutError, ConnectionError, TimeoutError))


def body_errors() -> tuple[type[BaseException], ...]:
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


BODY_ERRORS = body_errors()


#: "user:password@" after "//", at the start, or after a space or quote ("Invalid endpoint: u:p@host")
USER_INFO = re.compile(r"(?:(?<=//)|^|(?<=[\s'\"]))[^\s/@'\"]+@")


def short(exc: BaseException, hidden: Sequence[str] = ()) -> str:
    """``Type: first line`` of *exc*, without the user-info of URLs in it nor any of *hidden*."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = USER_INFO.sub("", text)
    for secret in hidden:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Explain:
    """The messages of one storage's requests (bucket, endpoint, budget)."""

    def __init__(self, bucket: str, options: dict, *, short_budget: bool = False) -> None:
        self.bucket = bucket
        self.endpoint = display_endpoint(options)
        self.user_info = has_user_info(options)
        self.hidden = user_info_parts(options)
        self.short_budget = short_budget

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def text(self, exc: BaseException) -> str:
        """``Type: first line`` of *exc* for a message: no user-info, no credentials."""
        return short(exc, self.hidden)

    def refusal_hook(self) -> Any:
        """A botocore ``needs-retry`` handler that runs before botocore's own: a request the
        HTTP layer refused raises :class:`NotRetried` instead of being retried (botocore's
        standard mode retries every ``HTTPClientError``, and s3fs's own loop, which serializers'
        requests go through, would retry that again; it does not retry NotRetried)."""

        def hook(caught_exception: BaseException | None = None, **_: Any) -> None:
            if caught_exception is not None and refused(caught_exception):
                # the client serves every bucket of these options: name the endpoint only
                why = self.refusal(caught_exception)
                raise NotRetried(f"S3 request to {self.endpoint} failed: {why}") from caught_exception

        return hook

    def refusal(self, exc: BaseException) -> str:
        """Why the HTTP layer refused a request, and the fix (*exc* is its HTTPClientError)."""
        if self.user_info:
            return (
                "the HTTP client refuses to send signed requests to an endpoint_url that carries "
                f"user-info ('user:password@' before the host) ({self.text(exc)}), so it was not "
                f"retried. Remove the user-info from endpoint_url ({self.endpoint!r}) and give the "
                "credentials as 'key'/'secret' in the 's3fs' options or as AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY."
            )
        return (
            f"the HTTP client refused the request ({self.text(exc)}); it would be refused again, so "
            "it was not retried. Check the 's3fs' options that shape requests (endpoint_url, "
            "client_kwargs, config_kwargs)."
        )

    def error(self, exc: BaseException, op: str, key: str | None = None) -> StorageError:
        """A StorageError that says what failed, where, and what to do."""
        code, status = code_of(exc)
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
        if refused(exc):
            cause = exc.__cause__ if isinstance(exc, NotRetried) and exc.__cause__ is not None else exc
            why = self.refusal(cause)
            return StorageError(f"S3 {op} of {where} (bucket {self.bucket!r}) {at} failed: {why}")
        if isinstance(exc, bx.ParamValidationError):
            return StorageError(
                f"botocore refused the parameters of the S3 {op} of {where} {at} before sending it, so "
                f"it was not retried: {self.text(exc)}. Check the storage option 'path' and the 's3fs' "
                "options."
            )
        if is_transient(exc):
            tried = "in its one attempt" if self.short_budget else "even after retrying with backoff"
            return StorageError(
                f"S3 endpoint {self.endpoint} failed {op} of {where} (bucket {self.bucket!r}) {tried}: "
                f"{self.text(exc)}. Is the server running and reachable? Results stored so far are "
                "kept: run again once it is back, and the run resumes."
            )
        if isinstance(exc, bx.ClientError):
            return StorageError(
                f"S3 {at} refused the {op} of {where} ({self.text(exc)}, HTTP {status}); the same "
                "request would be refused again, so it was not retried. Check the bucket's "
                "configuration and the 's3fs' options."
            )
        return StorageError(f"S3 {op} of {where} {at} failed: {self.text(exc)}")
