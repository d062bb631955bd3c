"""The ``s3fs`` options of S3 storage: file systems made from them, the endpoint they
name (for messages, without user-info), and the credentials they may hold.

:mod:`functionfuse.storage._s3io` sends the requests; this module is what it and
:mod:`functionfuse.storage.s3storage` know about options. Retries default to botocore's
``standard`` mode with :data:`ATTEMPTS` attempts (see ``_s3io`` for why).
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import threading
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import missing_dependency

try:
    import s3fs
except ImportError as _exc:  # pragma: no cover - exercised without the s3 extra
    _err = missing_dependency(getattr(_exc, "name", None) or "s3fs", "s3", _exc)
    _err.name = getattr(_exc, "name", None) or "s3fs"  # storage_factory names the module too
    raise _err from _exc

__all__ = [
    "ATTEMPTS", "DEFAULT_RETRIES", "RETRY_PAUSES_MAX", "SHORT_BUDGET", "SECRET_OPTIONS", "filesystems",
    "close_zarr_sessions_at_exit", "endpoint_url", "has_user_info", "display_endpoint", "user_info_parts",
    "split_credentials",
]

#: attempts of a request (botocore's ``total_max_attempts``)
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


def endpoint_url(options: dict) -> str | None:
    url = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    url = url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return str(url) if url else None


def has_user_info(options: dict) -> bool:
    """Whether the endpoint URL carries ``user:password@`` (the HTTP layer refuses it)."""
    url = endpoint_url(options)
    try:
        return bool(url) and "@" in urlsplit(str(url)).netloc
    except ValueError:
        return False


def display_endpoint(options: dict) -> str:
    """The endpoint for messages, without any user-info a URL may carry."""
    url = endpoint_url(options)
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


def user_info_parts(options: dict) -> tuple[str, ...]:
    """The user-info of the endpoint URL, as written and decoded, to keep out of messages."""
    url = endpoint_url(options)
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


# -- credentials --------------------------------------------------------------------------------
#: ``s3fs`` options (and ``client_kwargs``) that hold a secret, and the environment
#: variable botocore reads the same credential from
SECRET_OPTIONS: dict[str, str] = {
    "key": "AWS_ACCESS_KEY_ID", "username": "AWS_ACCESS_KEY_ID", "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY", "password": "AWS_SECRET_ACCESS_KEY",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN", "aws_session_token": "AWS_SESSION_TOKEN",
}


def split_credentials(options: dict) -> tuple[dict, dict[str, str]]:
    """*options* without the credentials they hold, and those credentials as the
    environment variables botocore reads them from (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``).

    >>> split_credentials({"key": "k", "secret": "s", "endpoint_url": "http://h:9000"})
    ({'endpoint_url': 'http://h:9000'}, {'AWS_ACCESS_KEY_ID': 'k', 'AWS_SECRET_ACCESS_KEY': 's'})
    """
    clean = copy.deepcopy(options)
    env: dict[str, str] = {}
    for where in (clean, clean.get("client_kwargs")):
        if not isinstance(where, dict):
            continue
        for option, variable in SECRET_OPTIONS.items():
            value = where.pop(option, None)
            if value is not None:
                env[variable] = str(value)
    return clean, env
