"""S3 storage: one framed object per result under ``bucket/prefix/workflow_name``.

Create it with :func:`functionfuse.storage.storage_factory`::

    storage = storage_factory({
        "kind": "S3",                      # or "s3"
        "options": {
            "path": "bucket/prefix",       # or "s3://bucket/prefix"
            "s3fs": {"endpoint_url": "http://127.0.0.1:9000", "key": "...", "secret": "..."},
        },
    })

``s3fs`` is passed to ``s3fs.S3FileSystem`` as it is (``key``, ``secret``, ``token``,
``endpoint_url``, ``client_kwargs``, ``config_kwargs``, ``anon``, ...); without
credentials the usual AWS sources apply (``AWS_ACCESS_KEY_ID``..., profiles).

Layout of a workflow, as with file storage::

    bucket/prefix/workflow_name/<task>.ffr                 a result (functionfuse.storage.frame)
    bucket/prefix/workflow_name/<task>.<token>.data/...    objects its serializers wrote

A write first writes the serializers' objects under a new ``<token>`` (nothing refers
to them yet), then puts the result as **one object**: a single PUT, or a multipart
upload that S3 makes visible only when it is completed. That PUT is the commit point:
a reader sees the old result or the new one, never a part. The data of the replaced
version is removed afterwards. A result is read with requests bound to its ETag, so
a result replaced during a read is read again rather than mixed.

The object is picklable, so Ray workers (and other processes) write straight to S3:
its pickled state holds the bucket, prefix and ``s3fs`` options **including any
credentials given there** (a worker needs them). To keep credentials out of pickles,
give none in the options and provide them to every process through the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, e.g. Ray's
``runtime_env={"env_vars": ...}``) or an instance role. ``repr``, log records, error
messages and stored metadata never contain credentials.
"""

from __future__ import annotations

import copy
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

from ..errors import ConfigurationError, CorruptedResultError, StorageError, TaskNotFoundError
from ..serializers import S3_PROTOCOL, claim_name
from ..workflow import name_problem
from . import _s3io, _s3options, fpindex, frame, runreports
from .base import Storage
from .protocol import CredentialFreeCopy

__all__ = ["S3Storage", "S3TaskFiles"]

log = logging.getLogger("functionfuse.storage.s3")

SUFFIX = ".ffr"
_DATA = re.compile(r"(.+)\.([0-9a-f]{16})\.data")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]")
_MANAGED = frozenset({"asynchronous", "loop", "skip_instance_cache"})
#: reads of a result replaced meanwhile: attempts, and the first pause between them
#: (doubled each time: 0.05 + 0.1 + 0.2 + 0.4 s at most, so a reader is not starved by a
#: writer that replaces the result again and again)
_READ_ATTEMPTS = 5
_READ_PAUSE = 0.05
_METADATA_THREADS = 8


def _parse_path(path: Any) -> tuple[str, str]:
    if not isinstance(path, str) or not path.strip():
        raise ConfigurationError(f"S3 storage 'path' must be \"bucket\" or \"bucket/prefix\", not {path!r}.")
    p = path.strip()
    for scheme in ("s3://", "s3a://"):
        if p.startswith(scheme):
            p = p[len(scheme) :]
    bucket, _, prefix = p.strip("/").partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigurationError(
            f"S3 storage 'path' {path!r} does not start with a valid bucket name ({bucket!r}): bucket names "
            "have 3-63 lowercase letters, digits, '.' or '-'. Use \"bucket/prefix\"."
        )
    parts = [s for s in prefix.split("/") if s] if prefix else []
    if any(s in (".", "..") for s in parts) or "\\" in prefix or "\0" in prefix:
        raise ConfigurationError(f"S3 storage 'path' {path!r} has an unsafe prefix; use plain names separated by '/'.")
    return bucket, "/".join(parts)


class S3TaskFiles:
    """``protocols[S3_PROTOCOL]``: an S3 prefix that belongs to one stored result.

    A serializer writes its objects here (``<task>.<token>.data/`` next to the result):
    they are written before the result is committed, and removed when the result is
    replaced or removed. Names are plain names (no ``/``); a name can be a single
    object (:meth:`open`) or a prefix holding many (:meth:`zarr_store`).

    * ``fs``: the ``s3fs.S3FileSystem`` (synchronous) of the storage;
    * ``prefix``: ``"bucket/prefix/workflow/<task>.<token>.data"`` (an fsspec path);
    * :meth:`path` / :meth:`url`: where a name lives (``bucket/...`` / ``s3://bucket/...``);
    * :meth:`open`: a file object for one name (``"rb"``, ``"wb"``);
    * :meth:`zarr_store`: a Zarr store (a ``zarr.storage.FsspecStore`` that writes chunks
      without copying them) rooted at a name;
    * :meth:`exists`, :meth:`remove`.

    The dictionary of the original library is still understood: ``files["client"]`` is
    ``fs`` and ``files["folder"]`` is ``prefix``.
    """

    def __init__(self, fs: Any, afs: Any, prefix: str, *, read_only: bool = False) -> None:
        self.fs = fs
        self._afs = afs
        self.prefix = prefix
        self.read_only = read_only
        self.used = False
        self._written: set[str] = set()

    # the original library's dictionary form
    def __getitem__(self, key: str) -> Any:
        if key == "client":
            return self.fs
        if key == "folder":
            return self.prefix
        raise KeyError(key)

    @property
    def client(self) -> Any:
        return self.fs

    @property
    def folder(self) -> str:
        return self.prefix

    def path(self, name: str) -> str:
        """The fsspec path of *name* (``bucket/.../name``)."""
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise ConfigurationError(f"Serializer object name {name!r} must be a plain name (no '/').")
        return f"{self.prefix}/{name}"

    def url(self, name: str) -> str:
        return "s3://" + self.path(name)

    def _writing(self) -> None:
        if self.read_only:
            raise StorageError(f"{self!r} belongs to a stored result and is read-only.")
        self.used = True

    def open(self, name: str, mode: str = "rb") -> Any:
        """Open object *name* (``"rb"``/``"wb"``/``"r"``/``"w"``) through s3fs.

        :raises SerializationError: *name* was already written in this result (each
            object of a serializer's type needs a name of its own).
        """
        path = self.path(name)
        if any(c in mode for c in "wax+"):
            self._writing()
            if "w" in mode or "x" in mode:
                claim_name(self._written, name, self, mode)
        return self.fs.open(path, mode)

    def zarr_store(self, name: str, read_only: bool | None = None) -> Any:
        """A Zarr store rooted at *name* (read-only when reading a result): a
        ``zarr.storage.FsspecStore`` that streams each chunk from its buffer when writing."""
        from ._s3zarr import S3ZarrStore

        _s3io.close_zarr_sessions_at_exit()
        ro = self.read_only if read_only is None else read_only
        path = self.path(name)
        if not ro:
            self._writing()
            claim_name(self._written, name, self, "zarr store")
        return S3ZarrStore(self._afs, path=path, read_only=ro)

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def remove(self, name: str) -> None:
        self._writing()
        path = self.path(name)
        self._written.discard(name)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def __repr__(self) -> str:
        return f"S3TaskFiles('s3://{self.prefix}')"


class S3Storage(Storage):
    """Results on S3 (or any S3-compatible store): same API and guarantees as file storage.

    :param path: ``"bucket"`` or ``"bucket/prefix"`` (``s3://`` is accepted); results of
        a workflow are stored under ``bucket/prefix/workflow_name/``.
    :param s3fs: options of ``s3fs.S3FileSystem`` (``endpoint_url``, ``key``, ``secret``,
        ``client_kwargs``, ``config_kwargs``...). Retries default to botocore's
        ``standard`` mode with 5 attempts; set ``config_kwargs={"retries": {...}}`` to
        change them.

    The bucket must exist. Errors name the bucket and the endpoint, never credentials.
    """

    protocol = S3_PROTOCOL

    def __init__(self, path: str, s3fs: dict | None = None) -> None:
        super().__init__()
        self.bucket, self.prefix = _parse_path(path)
        if s3fs is None:
            s3fs = {}
        if not isinstance(s3fs, dict):
            raise ConfigurationError(
                f"S3 storage option 's3fs' must be a dict of s3fs.S3FileSystem options, got {type(s3fs).__name__}."
            )
        managed = sorted(_MANAGED & set(s3fs))
        if managed:
            raise ConfigurationError(f"S3 storage manages the s3fs options {managed!r} itself; remove them.")
        self._options = copy.deepcopy(s3fs)
        self._io: _s3io.S3IO | None = None

    @classmethod
    def from_options(cls, options: dict) -> "S3Storage":
        unknown = set(options) - {"path", "s3fs"}
        if unknown or "path" not in options:
            raise ConfigurationError(
                f"S3 storage options are 'path' and 's3fs'; got {sorted(options)!r}. Use "
                '{"kind": "S3", "options": {"path": "bucket/prefix", "s3fs": {"endpoint_url": ...}}}.'
            )
        return cls(options["path"], options.get("s3fs"))

    # -- identity, pickling -------------------------------------------------------------
    @property
    def path(self) -> str:
        """``bucket/prefix``."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def endpoint(self) -> str:
        """The endpoint, for messages (never with user-info)."""
        return _s3io.display_endpoint(self._options)

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.path}', endpoint={self.endpoint!r})"

    def __getstate__(self) -> dict:
        # The s3fs options travel with the object (workers need them): see the module doc.
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "_options": self._options,
            "_serializers": self._serializers,
            **self._signing_state(),
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._io = None

    @property
    def io(self) -> _s3io.S3IO:
        if self._io is None:
            self._io = _s3io.S3IO(self.bucket, self._options)
        return self._io

    @property
    def filesystem(self) -> Any:
        """The ``s3fs.S3FileSystem`` this storage uses (made once per process)."""
        return self.io.fs

    def check(self) -> None:
        """Check now that the bucket exists and is accessible (raises StorageError)."""
        self.io.head_bucket()

    # -- keys -----------------------------------------------------------------------------
    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _wf(self, workflow_name: str) -> str:
        return f"{self._root()}{workflow_name}/"

    def _key(self, workflow_name: str, task_name: str) -> str:
        return f"{self._wf(workflow_name)}{task_name}{SUFFIX}"

    def _data_key(self, workflow_name: str, task_name: str, token: str) -> str:
        return f"{self._wf(workflow_name)}{task_name}.{token}.data/"

    def _files(self, workflow_name: str, task_name: str, token: str | None, read_only: bool) -> S3TaskFiles:
        io = self.io
        key = self._data_key(workflow_name, task_name, token or "0" * 16)
        return S3TaskFiles(io.fs, io.afs, f"{self.bucket}/{key.rstrip('/')}", read_only=read_only)

    # -- primitives -----------------------------------------------------------------------
    def _publish(self, workflow_name: str, task_name: str, encode: Callable) -> dict:
        io = self.io
        token = uuid.uuid4().hex[:16]
        files = self._files(workflow_name, task_name, token, read_only=False)
        key = self._key(workflow_name, task_name)
        previous = self._previous_data(workflow_name, task_name)
        try:
            enc = encode({S3_PROTOCOL: files}, token)
            io.put(key, enc.pieces, enc.size)
        except BaseException:
            if files.used or self._serializers:
                try:  # with the short budget: after a failed write the server is likely gone
                    self._report_io().delete_prefix(self._data_key(workflow_name, task_name, token))
                except Exception as exc:  # the server may be gone; remove_task removes leftovers
                    log.warning("could not remove the objects of a failed write of %s: %s", io.url(key), exc)
            raise
        if previous and previous != token:  # the replaced version's objects are now unreachable
            try:
                io.delete_prefix(self._data_key(workflow_name, task_name, previous))
            except StorageError as exc:
                log.warning("could not remove the old serializer objects of %s: %s", io.url(key), exc)
        return enc.header

    def _previous_data(self, workflow_name: str, task_name: str) -> str | None:
        """Data token of the result about to be replaced, if it has serializer data."""
        try:
            reader, size, where = self._open(workflow_name, task_name)
            with reader:
                header = frame.read_header(reader, where, size)
        except (TaskNotFoundError, CorruptedResultError, _s3io.Changed):
            return None  # a damaged result's objects are found by remove_task's listing
        return header.get("data") if header["meta"].get("serializers") else None

    def _open(self, workflow_name: str, task_name: str) -> tuple[Any, int, str]:
        key = self._key(workflow_name, task_name)
        try:
            reader = self.io.open_reader(key)
        except _s3io.Missing:
            raise self._not_found(workflow_name, task_name, self.io.url(key)) from None
        return reader, reader.size, self.io.url(key)

    def _data_protocols(self, workflow_name: str, task_name: str, token: str | None) -> dict:
        return {S3_PROTOCOL: self._files(workflow_name, task_name, token, read_only=True)}

    def _task_names(self, workflow_name: str) -> list[str]:
        keys, _ = self.io.list_keys(self._wf(workflow_name))
        start = len(self._wf(workflow_name))
        names = []
        for k in keys:
            n = k[start:]
            if n.endswith(SUFFIX) and not n.startswith(".") and "/" not in n:
                names.append(n[: -len(SUFFIX)])
        return names

    def _remove(self, workflow_name: str, task_name: str) -> None:
        io = self.io
        wf = self._wf(workflow_name)
        key = self._key(workflow_name, task_name)
        keys, prefixes = io.list_keys(f"{wf}{task_name}.")
        if key not in keys:
            raise self._not_found(workflow_name, task_name, io.url(key))
        io.delete([key])  # the result first: nothing refers to the data from now on
        for p in prefixes:
            m = _DATA.fullmatch(p[len(wf) :].rstrip("/"))
            if m and m.group(1) == task_name:
                io.delete_prefix(p)

    def _remove_workflow(self, workflow_name: str) -> None:
        io = self.io
        wf = self._wf(workflow_name)
        keys, _ = io.list_keys(wf, None)
        results = [k for k in keys if k.endswith(SUFFIX) and "/" not in k[len(wf) :]]
        io.delete(results)  # results first, so no result outlives its data
        chosen = set(results)
        io.delete([k for k in keys if k not in chosen])

    # -- the fingerprint index (see functionfuse.storage.fpindex) ----------------------------
    def _identities(self, workflow_name: str) -> dict[str, str]:
        """Every listed result (as :meth:`_task_names`) with its ETag and size."""
        wf = self._wf(workflow_name)
        out: dict[str, str] = {}
        for key, identity in self.io.list_identities(wf).items():
            n = key[len(wf) :]
            if n.endswith(SUFFIX) and not n.startswith(".") and "/" not in n:
                out[n[: -len(SUFFIX)]] = identity
        return out

    def _index_body(self, workflow_name: str) -> bytes | None:
        try:
            return self.io.get(f"{self._wf(workflow_name)}{fpindex.NAME}")
        except _s3io.Missing:
            return None

    def _put_index(self, workflow_name: str, body: bytes) -> None:
        """One PUT with the short budget of run reports (a cache: not worth a long wait)."""
        self._report_io().put(f"{self._wf(workflow_name)}{fpindex.NAME}", [body], len(body))

    def _delete_index(self, workflow_name: str) -> None:
        self.io.delete([f"{self._wf(workflow_name)}{fpindex.NAME}"])

    # -- run reports (see Storage.save_run_report) ---------------------------------------------
    def _runs(self, workflow_name: str) -> str:
        return f"{self._wf(workflow_name)}{runreports.FOLDER}/"

    def _put_report(self, workflow_name: str, name: str, body: bytes) -> None:
        """One PUT, with a short budget (one attempt, 2 s to connect, 5 s to read): a
        report is saved at the end of every run, also of a run that failed because the
        server is down, which must not wait out the retries a second time."""
        self._report_io().put(f"{self._runs(workflow_name)}{name}", [body], len(body))

    def _report_names(self, workflow_name: str, *, after_write: bool = False) -> list[str]:
        io = self._report_io() if after_write else self.io
        runs = self._runs(workflow_name)
        keys, _ = io.list_keys(runs)
        return [k[len(runs) :] for k in keys]

    def _read_report(self, workflow_name: str, name: str) -> bytes | None:
        try:
            return self.io.get(f"{self._runs(workflow_name)}{name}")
        except _s3io.Missing:
            return None

    def _remove_reports(self, workflow_name: str, names: list[str]) -> None:
        runs = self._runs(workflow_name)
        self._report_io().delete([f"{runs}{n}" for n in names])

    def _report_io(self) -> _s3io.S3IO:
        """The requests of run reports and of cleaning up after a failed write
        (``short_budget``; made once, not pickled)."""
        io: _s3io.S3IO | None = self.__dict__.get("_report_requests")
        if io is None:
            io = self.__dict__["_report_requests"] = _s3io.S3IO(self.bucket, self._options, short_budget=True)
        return io

    # -- capabilities (see functionfuse.storage.protocol) -----------------------------------
    def credential_free_copy(self) -> CredentialFreeCopy:
        """A copy whose ``s3fs`` options hold no secret, and the environment variables
        that carry the secrets taken out (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
        ``AWS_SESSION_TOKEN``; a secret in ``client_kwargs`` as its name upper-cased),
        where botocore finds them in a process that has them set."""
        clean, env = _s3options.split_credentials(self._options)
        dup = copy.copy(self)
        dup.__dict__.pop("_report_requests", None)
        dup._options = clean
        dup._io = None
        dup._serializers = list(self._serializers)
        return CredentialFreeCopy(dup, env)

    def list_workflows(self, *, include_foreign: bool = False) -> list[str]:
        """Names of the workflows that have stored results, sorted.

        A prefix whose name is not a valid workflow name (written by another tool) is
        left out, so it cannot break a listing of the others; with *include_foreign* it
        is listed too (check each name with :func:`~functionfuse.workflow.name_problem`).
        """
        root = self._root()
        _, prefixes = self.io.list_keys(root)
        names = [n for n in (p[len(root) :].rstrip("/") for p in prefixes) if n and not n.startswith(".")]
        if not include_foreign:
            names = [n for n in names if name_problem(n) is None]
        return sorted(names)

    # -- reads that retry when the result was replaced meanwhile -----------------------------
    def _again(self, read: Callable[[str, str], Any], workflow_name: str, task_name: str) -> Any:
        for attempt in range(_READ_ATTEMPTS):
            try:
                return read(workflow_name, task_name)
            except _s3io.Changed:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                log.debug("task %r of workflow %r was replaced while read; reading it again", task_name, workflow_name)
                time.sleep(_READ_PAUSE * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """Read saved result of node execution from workflow storage.

        :param workflow_name: A name of the workflow to read saved results.
        :param task_name: A task name to load results for.
        :raises TaskNotFoundError: nothing is stored under that name.
        :raises CorruptedResultError: the stored result is damaged (its URL is named).
        """
        return self._again(super().read_task, workflow_name, task_name)

    def verify_task(self, workflow_name: str, task_name: str) -> dict:
        """Read a result completely and check its checksums without unpickling it."""
        return self._again(super().verify_task, workflow_name, task_name)

    def read_metadata(self, workflow_name: str, task_name: str) -> dict:
        """The metadata stored with a result (node, function, inputs, times, size, versions)."""
        return self._again(super().read_metadata, workflow_name, task_name)

    def read_metadata_many(self, workflow_name: str, task_names: Iterable[str]) -> dict[str, Any]:
        """Metadata of several tasks (requests in parallel): ``{name: metadata or
        CorruptedResultError}``; tasks removed meanwhile are left out."""
        names = list(task_names)
        if len(names) < 4:
            return super().read_metadata_many(workflow_name, names)

        def one(name: str) -> Any:
            try:
                return self.read_metadata(workflow_name, name)
            except CorruptedResultError as exc:
                return exc
            except TaskNotFoundError:
                return None

        with ThreadPoolExecutor(max_workers=min(_METADATA_THREADS, len(names))) as pool:
            found = list(pool.map(one, names))
        return {n: m for n, m in zip(names, found) if m is not None}
