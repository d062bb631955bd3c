"""The ``functionfuse`` command's shared parts: the storage a SPEC names (see
:mod:`functionfuse.cli`), the usage error (exit status 2), sizes and tables."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .storage.protocol import StorageProtocol

#: URL schemes of --storage and the storage kind each one means
_URL_KINDS = {"s3": "s3", "s3a": "s3", "file": "file"}


class _UsageError(ConfigurationError):
    """A command line naming something that cannot be used: the command exits 2, as
    argparse does for arguments it cannot parse."""


def _storage(spec: str | None, *, must_exist: bool = True) -> StorageProtocol:
    """The storage *spec* names (see the module documentation).

    A storage folder that does not exist is an error when *must_exist* (the storage
    commands read what is stored: a mistyped path is not "nothing stored"); otherwise
    (a plan before the first run) it is said on standard error.
    """
    from .storage import available_storages, storage_factory

    source = "--storage" if spec else "$FUNCTIONFUSE_STORAGE" if os.environ.get("FUNCTIONFUSE_STORAGE") else None
    spec = spec or os.environ.get("FUNCTIONFUSE_STORAGE") or "storage"
    options: Any
    if spec.lstrip()[:1] in ("{", "["):  # inline JSON options (a list is refused below)
        try:
            options = json.loads(spec)
        except ValueError as exc:
            raise _UsageError(f"Storage options {spec!r} are not valid JSON: {exc}.") from None
    elif spec.endswith(".json") and not os.path.isdir(spec):
        try:
            with open(spec) as f:
                options = json.load(f)
        except FileNotFoundError:
            raise _UsageError(
                f"Storage {spec!r}: no such file. A SPEC ending in .json is a file of storage_factory options "
                '({"kind": ..., "options": {...}}); check the path, or name a folder.'
            ) from None
        except ValueError as exc:
            raise _UsageError(f"Storage options file {spec!r} is not valid JSON: {exc}.") from None
    else:
        scheme, sep, rest = spec.partition("://")
        if sep:
            kind = _URL_KINDS.get(scheme.lower()) or (scheme if scheme in available_storages else None)
            if kind is None:
                raise _UsageError(
                    f"Storage {spec!r}: unknown URL scheme {scheme!r}. Use s3://bucket/prefix (or s3a://), file:PATH, "
                    "a folder, or storage_factory options as JSON (inline or a .json file) for other kinds."
                )
            options = {"kind": kind, "options": {"path": rest}}
        else:
            path = spec[len("file:") :] if spec.startswith("file:") else spec
            options = {"kind": "file", "options": {"path": path}}
    _check_storage_options(spec, options, source=source, must_exist=must_exist)
    return storage_factory(options)


def _check_storage_options(spec: str, options: Any, *, source: str | None, must_exist: bool) -> None:
    """Refuse what storage_factory would get wrong for a command line: options that are
    not ``{"kind": ..., "options": ...}``, a folder that does not exist, S3 without an
    endpoint and without AWS credentials."""
    if not isinstance(options, dict) or "kind" not in options or not isinstance(options.get("options", {}), dict):
        raise _UsageError(
            f"Storage options {spec!r} must be a JSON object with 'kind' and 'options', e.g. "
            '{"kind": "file", "options": {"path": "storage"}}.'
        )
    kind, opts = options["kind"], options.get("options", {})
    if kind == "file" and isinstance(opts.get("path"), str) and opts["path"] and not os.path.exists(opts["path"]):
        path = os.path.abspath(opts["path"])
        where = f"{'Storage' if source else 'The default storage'} folder {path!r} does not exist"
        if must_exist:
            fix = (f"Check the path given to {source}." if source else "Run the command where the workflow's "
                   "storage folder is, or give --storage PATH (or set $FUNCTIONFUSE_STORAGE).")
            raise _UsageError(f"{where}: nothing is stored there. {fix}")
        print(f"functionfuse: note: {where}: nothing is stored there yet", file=sys.stderr)
    if kind in ("s3", "S3"):
        s3fs = opts.get("s3fs") or {}
        if not isinstance(s3fs, dict):
            return  # storage_factory says what is wrong
        endpoint = (s3fs.get("endpoint_url") or (s3fs.get("client_kwargs") or {}).get("endpoint_url")
                    or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        if not endpoint and not _aws_credentials(s3fs):
            raise _UsageError(
                f"Storage {spec!r} names no S3 endpoint, so it would go to Amazon S3, for which no AWS credentials are "
                "configured either. For MinIO, moto or another S3 server set AWS_ENDPOINT_URL=http://HOST:PORT (in a "
                "JSON options file: \"s3fs\": {\"endpoint_url\": ...}); for Amazon S3 configure credentials "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials) or set "
                "AWS_ENDPOINT_URL=https://s3.amazonaws.com."
            )


#: environment variables that give botocore credentials (or a way to get them) without network
_AWS_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _aws_credentials(s3fs: dict) -> bool:
    """Whether credentials for Amazon S3 are configured, found without any request (an
    EC2 instance role cannot be: set AWS_ENDPOINT_URL there to say S3 is meant)."""
    if s3fs.get("key") or s3fs.get("anon") or s3fs.get("profile") or s3fs.get("session"):
        return True
    if any(os.environ.get(v) for v in _AWS_CREDENTIAL_VARIABLES):
        return True
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
             os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    return any(os.path.isfile(os.path.expanduser(f)) for f in files)


def _shown_path(path: str) -> str:
    """*path* relative to the current folder if it is below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if rel.startswith(os.pardir) else rel


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
