"""What every storage kind shares: names, serializers, framing, run reports, the public API.

A storage kind implements a handful of primitives (publish a result atomically, open
one for reading, list, remove; put, list, get and remove run reports); this class
turns them into the public API of the seed (``list_tasks``, ``read_task``,
``remove_task``, ``remove_workflow``, ``register_persistent_serializers``) and the rest
of :class:`~functionfuse.storage.protocol.StorageProtocol` (``save``,
``read_metadata``, run reports, capabilities) for backends and tools.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
from abc import ABC, abstractmethod
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from ..errors import ConfigurationError, CorruptedResultError, StorageError, TaskNotFoundError
from ..serializers import lookup_serializer
from ..workflow import name_problem, validate_name
from . import fpindex, frame, runreports, signing
from .protocol import CredentialFreeCopy, Placement

__all__ = ["Storage", "StoredFrames"]

log = logging.getLogger("functionfuse.storage")


class StoredFrames(NamedTuple):
    """A stored result read and checked, not yet unpickled (see :meth:`Storage.read_frames`)."""

    workflow_name: str
    task_name: str
    header: dict
    segments: list
    #: the path or URL of the result, for messages
    where: str


class Storage(ABC):
    """Base class of storage kinds. Instances are picklable (they hold options only).

    It implements :class:`~functionfuse.storage.protocol.StorageProtocol`; a kind that
    holds credentials overrides :meth:`credential_free_copy`, one bound to a place
    overrides :meth:`placement` or :meth:`local_path`.
    """

    #: the key of this kind's protocol object in the dictionary handed to serializers
    protocol: str = ""

    #: whether this object remembers the index entries of the results it saves, for
    #: :meth:`save_fingerprint_index` (off where no run ends: a Ray storage node)
    _journal_saves = True

    #: how many run reports of a workflow are kept (the newest)
    keep_run_reports: int = runreports.KEEP

    #: id of the signing key this storage requires (set when a storage object is
    #: pickled in a process with a key: see :mod:`functionfuse.storage.signing`)
    _key_id: str | None = None

    def __init__(self) -> None:
        self._serializers: list = []

    # -- signing ---------------------------------------------------------------------
    def _signer(self) -> signing.Signer | None:
        """The signing key of this process, checked against the one the storage needs."""
        return signing.require(self._key_id, self)

    def _signing_state(self) -> dict:
        """For ``__getstate__``: the id (never the key) of the key copies must have."""
        key_id = signing.required_key_id(self._key_id)
        return {"_key_id": key_id} if key_id else {}

    # -- serializers -----------------------------------------------------------------
    def register_persistent_serializers(self, *serializers: Any) -> None:
        """Use *serializers* for results (or parts of results) of their ``serializer_class``.

        A serializer has ``serializer_class`` (a type or tuple of types), a ``name``,
        and ``pickle(obj, protocols) -> pid`` / ``unpickle(pid, protocols) -> obj``.
        Its data is written through ``protocols[<protocol>]`` next to the task and is
        removed with the task.
        """
        for ser in serializers:
            missing = [a for a in ("serializer_class", "pickle", "unpickle") if not hasattr(ser, a)]
            if missing:
                raise ConfigurationError(
                    f"{ser!r} is not a serializer: it lacks {', '.join(missing)}. A serializer needs "
                    "serializer_class, pickle(obj, protocols) and unpickle(pid, protocols)."
                )
            if ser not in self._serializers:
                self._serializers.append(ser)

    @property
    def serializers(self) -> tuple:
        return tuple(self._serializers)

    def _lookup(self, name: str) -> Any:
        for ser in self._serializers:
            if frame.serializer_name(ser) == name:
                return ser
        return lookup_serializer(name)

    # -- primitives of a storage kind ----------------------------------------------------
    @abstractmethod
    def _publish(self, workflow_name: str, task_name: str, encode: Any) -> dict:
        """Serialize (``encode(protocols, data_token)``) and publish atomically; return the header."""

    @abstractmethod
    def _open(self, workflow_name: str, task_name: str) -> tuple[Any, int, str]:
        """Open a stored result: ``(reader, size, location)``; raise TaskNotFoundError."""

    @abstractmethod
    def _data_protocols(self, workflow_name: str, task_name: str, token: str | None) -> dict:
        """The protocols dictionary for reading a result's serializer data."""

    @abstractmethod
    def _task_names(self, workflow_name: str) -> Iterable[str]:
        """Names of every stored task of the workflow (any order)."""

    @abstractmethod
    def _remove(self, workflow_name: str, task_name: str) -> None:
        """Remove one task and its serializer data; raise TaskNotFoundError."""

    @abstractmethod
    def _remove_workflow(self, workflow_name: str) -> None: ...

    @abstractmethod
    def list_workflows(self, *, include_foreign: bool = False) -> list[str]:
        """Names of the workflows that have stored results, sorted (*include_foreign*:
        also names no workflow can have, that another tool made)."""

    # -- public API -------------------------------------------------------------------
    def save(self, workflow_name: str, task_name: str, obj: Any, metadata: dict | None = None) -> dict:
        """Store *obj* as the result of *task_name*, atomically; return its metadata."""
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        meta = {**(metadata or {}), "workflow": workflow_name, "task": task_name}
        signer = self._signer()

        def encode(protocols: dict, token: str | None) -> frame.Encoded:
            return frame.encode(
                obj, meta, serializers=self._serializers, protocols=protocols, data=token, signer=signer, defer=True
            )

        header = self._publish(workflow_name, task_name, encode)
        return header["meta"]

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """Read saved result of node execution from workflow storage.

        :param workflow_name: A name of the workflow to read saved results.
        :param task_name: A task name to load results for.
        :raises TaskNotFoundError: nothing is stored under that name.
        :raises CorruptedResultError: the stored result is damaged, is another task's,
            (with a signing key set) is not signed with it, or, during a run, is not the
            one the run's plan saw (replaced since); its path is named.

        A stored result is a pickle: reading it runs code its writer chose. Read only
        from a store you trust like code, or set a signing key
        (:mod:`functionfuse.storage.signing`).
        """
        return self.decode_frames(self.read_frames(workflow_name, task_name))

    def read_frames(self, workflow_name: str, task_name: str) -> StoredFrames:
        """Read a stored result and check it (size, checksums, names, signature) without
        unpickling it; :meth:`decode_frames` turns it into the value."""
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        signer = self._signer()
        reader, size, where = self._open(workflow_name, task_name)
        with reader:
            header = frame.read_header(reader, where, size, expect=(workflow_name, task_name), signer=signer)
            fpindex.check_planned(self, workflow_name, task_name, header, where)
            segments = frame.read_payload(reader, header, where, signer=signer)
        return StoredFrames(workflow_name, task_name, header, segments, where)

    def decode_frames(self, frames: StoredFrames) -> Any:
        """The value of a result :meth:`read_frames` read from this storage (its
        serializers read their data from here)."""
        workflow_name, task_name, header, segments, where = frames
        if header["meta"].get("serializers"):
            protocols = self._data_protocols(workflow_name, task_name, header.get("data"))
            return frame.decode(segments, where, lookup=self._lookup, protocols=protocols)
        return frame.decode(segments, where)

    def save_frames(self, workflow_name: str, task_name: str, encoded: frame.Encoded) -> dict:
        """Store a result framed elsewhere (:func:`~functionfuse.storage.frame.encode`
        with no serializers) as it is, atomically; return its metadata. Readers check it
        as any other result."""
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        header = self._publish(workflow_name, task_name, lambda protocols, token: encoded)
        return header["meta"]

    def verify_task(self, workflow_name: str, task_name: str) -> dict:
        """Read a result completely and check its checksums without unpickling it.

        :returns: its metadata. :raises CorruptedResultError: it is damaged.
        """
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        signer = self._signer()
        reader, size, where = self._open(workflow_name, task_name)
        with reader:
            header = frame.read_header(reader, where, size, expect=(workflow_name, task_name), signer=signer)
            frame.read_payload(reader, header, where, signer=signer)
        return dict(header["meta"])

    def sign_task(self, workflow_name: str, task_name: str) -> bool:
        """Sign a stored, unsigned result with this process's key, as it is.

        For a store that was written before a key was set: results you trust are kept
        instead of recomputed. The result's checksum and recorded names are checked and
        its payload is framed again, never unpickled. A result with serializer data
        cannot be signed this way (run its node again with the key set).

        :returns: True if it was signed now, False if it already was, with this key.
        :raises ConfigurationError: no key is set. :raises SigningKeyError: it is signed
            with another key. :raises CorruptedResultError: it is damaged.
        """
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        signer = self._signer()
        if signer is None:
            raise ConfigurationError(
                f"No signing key to sign {task_name!r} of workflow {workflow_name!r} with: set "
                f"{signing.ENV_KEY} (or {signing.ENV_KEY_FILE}) first."
            )
        reader, size, where = self._open(workflow_name, task_name)
        with reader:
            header = frame.read_header(reader, where, size, expect=(workflow_name, task_name))
            signed = "mac" in header
            if not signed:
                if header["meta"].get("serializers"):
                    raise StorageError(
                        f"Stored result {where} keeps part of its value in serializer files, which a signature "
                        "made now would not vouch for: run its node again with the key set instead."
                    )
                segments = frame.read_payload(reader, header, where)
        if signed:  # with this key, and intact? (read once, with the key)
            self.verify_task(workflow_name, task_name)
            return False
        encoded = frame.resign(header, segments, signer)
        self._publish(workflow_name, task_name, lambda protocols, token: encoded)
        return True

    def read_metadata(self, workflow_name: str, task_name: str) -> dict:
        """The metadata stored with a result (node, function, inputs, times, size, versions).

        Only the header is read; the payload's checksum is checked by ``read_task``.
        """
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        signer = self._signer()
        reader, size, where = self._open(workflow_name, task_name)
        with reader:
            header = frame.read_header(reader, where, size, expect=(workflow_name, task_name), signer=signer)
        meta = dict(header["meta"])
        meta["checksum"] = header["checksum"]
        meta["format"] = header["format"]
        meta["signed"] = "mac" in header
        return meta

    def read_metadata_many(self, workflow_name: str, task_names: Iterable[str]) -> dict[str, Any]:
        """Metadata of several tasks: ``{name: metadata or CorruptedResultError}``.

        Tasks removed meanwhile are left out. Used to plan a run.
        """
        out: dict[str, Any] = {}
        for name in task_names:
            try:
                out[name] = self.read_metadata(workflow_name, name)
            except CorruptedResultError as exc:
                out[name] = exc
            except TaskNotFoundError:
                pass
        return out

    def read_fingerprints(
        self, workflow_name: str, task_names: Iterable[str], current: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """What a plan needs of the stored results among *task_names*:
        ``{name: metadata or CorruptedResultError}``, each metadata holding at least
        ``"fingerprint"`` (the stored record, None if stored without one) and
        ``"checksum"``; names not stored are left out. One listing of the workflow.

        An entry of the workflow's fingerprint index (:mod:`functionfuse.storage.fpindex`)
        is used where the listing shows the result it was made from (same identity);
        every other result's header is read, and the index is brought up to date.
        *current*: the current fingerprint record of each node by name, if the caller
        has them: an entry with the same digest returns it instead of parsing its own.
        """
        validate_name(workflow_name, "Workflow name")
        return fpindex.read_fingerprints(self, workflow_name, list(task_names), current)

    def save_fingerprint_index(self, workflow_name: str) -> None:
        """Add the results this object saved since to the workflow's fingerprint index
        (at the end of a run). A cache: it raises nothing; a failure is logged, and the
        next plan reads those results' headers instead."""
        validate_name(workflow_name, "Workflow name")
        fpindex.save_index(self, workflow_name)

    def remove_fingerprint_index(self, workflow_name: str) -> None:
        """Remove the workflow's fingerprint index (always safe: the next plan reads every
        result's header and writes it again)."""
        validate_name(workflow_name, "Workflow name")
        self._fp_journal(workflow_name).clear()
        self._delete_index(workflow_name)

    # primitives of the fingerprint index: kinds without them keep none (plans read headers)
    def _identities(self, workflow_name: str) -> dict[str, str] | None:
        """``{task: identity}`` of every stored result, from one listing: a string that
        changes whenever the result is replaced or rewritten ("" if not known); None if
        this kind keeps no fingerprint index."""
        return None

    def _index_body(self, workflow_name: str) -> bytes | None:
        """The stored fingerprint index of the workflow, or None."""
        return None

    def _put_index(self, workflow_name: str, body: bytes) -> None:
        """Store the fingerprint index of the workflow, atomically."""
        raise NotImplementedError(f"{type(self).__name__} keeps no fingerprint index")

    def _delete_index(self, workflow_name: str) -> None:
        """Remove the fingerprint index of the workflow (none is not an error)."""

    def _fp_journal(self, workflow_name: str) -> dict:
        """The index entries of results this object saved and has not written to the
        index yet (never pickled: kinds pickle their options only)."""
        journals: dict[str, dict] = self.__dict__.setdefault("_fp_journals", {})
        return journals.setdefault(workflow_name, {})

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        """List saved results of all saved nodes using glob pattern for workflow.

        :param workflow_name: A name of the workflow to list saved results.
        :param pattern: A glob pattern to filter out names of saved results.
        :returns: the matching task names, sorted. Metadata and temporary files are
            never listed.
        """
        validate_name(workflow_name, "Workflow name")
        names = self._task_names(workflow_name)
        if pattern in (None, "*"):
            return sorted(names)
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def stored_tasks(self, workflow_name: str) -> set[str]:
        """The set of stored task names (one listing; used to plan a resume)."""
        validate_name(workflow_name, "Workflow name")
        return set(self._task_names(workflow_name))

    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]:
        """Remove results of selected nodes from the storage.

        :param workflow_name: A name of the workflow to remove node results.
        :param task_name: A name of the node to remove. Ignored if *pattern* is given.
        :param pattern: A glob pattern of node names to be removed.
        :returns: the names removed. A task that matched the pattern but was removed
            meanwhile (by another process) is done, not an error; a *task_name* that is
            not stored raises TaskNotFoundError.
        """
        validate_name(workflow_name, "Workflow name")
        if pattern is not None:  # files whose names no task can have are foreign: left alone
            names = [n for n in self.list_tasks(workflow_name, pattern) if name_problem(n) is None]
        elif task_name is not None:
            self._remove(workflow_name, validate_name(task_name, "Task name"))
            log.debug("removed task %r of workflow %r", task_name, workflow_name)
            return [task_name]
        else:
            raise ConfigurationError("remove_task needs task_name or pattern (e.g. pattern='*' for every task).")
        removed = []
        for name in names:
            try:
                self._remove(workflow_name, name)
            except TaskNotFoundError:
                log.debug("task %r of workflow %r was removed meanwhile", name, workflow_name)
                continue
            log.debug("removed task %r of workflow %r", name, workflow_name)
            removed.append(name)
        return removed

    # -- run reports: <workflow>/.runs/<time>-<token>.json, the newest keep_run_reports --
    def save_run_report(self, workflow_name: str, report: dict) -> None:
        """Store *report* (a JSON document) with the workflow, as
        ``<workflow>/.runs/<time>-<token>.json``; the newest ``keep_run_reports`` are kept.

        :raises StorageError: it could not be stored (the workflow logs that).
        """
        validate_name(workflow_name, "Workflow name")
        self._put_report(workflow_name, runreports.new_name(), runreports.encode(report))
        try:  # the report is stored: pruning is tidying, and the next report prunes again
            names = sorted(n for n in self._report_names(workflow_name, after_write=True) if runreports.NAME.fullmatch(n))
            old = names[: max(0, len(names) - self.keep_run_reports)]
            if old:
                self._remove_reports(workflow_name, old)
        except (OSError, StorageError) as exc:
            log.warning("old run reports of workflow %r were not removed (the next run removes them): %s",
                        workflow_name, exc)

    def list_run_reports(self, workflow_name: str) -> list[dict]:
        """Stored run reports of the workflow, oldest first."""
        return list(reversed(list(self._run_reports(workflow_name))))

    def last_run_report(self, workflow_name: str) -> dict | None:
        """The newest stored run report of the workflow (one listing, one read), or None."""
        return next(self._run_reports(workflow_name), None)

    def _run_reports(self, workflow_name: str) -> Iterator[dict]:
        """Readable run reports, newest first (unreadable ones are skipped)."""
        validate_name(workflow_name, "Workflow name")
        names = sorted((n for n in self._report_names(workflow_name) if n.endswith(".json")), reverse=True)
        for name in names:
            body = self._read_report(workflow_name, name)
            if body is None:
                continue
            try:
                report = runreports.stored_report(json.loads(body))
            except (ValueError, RecursionError):
                continue
            if report is not None:
                yield report

    # primitives of run reports: kinds without them store none (backends only log that)
    def _put_report(self, workflow_name: str, name: str, body: bytes) -> None:
        """Store run report *name* of the workflow, atomically."""
        raise NotImplementedError(f"{type(self).__name__} does not store run reports")

    def _report_names(self, workflow_name: str, *, after_write: bool = False) -> list[str]:
        """Names of the workflow's stored run reports (and other entries of its report
        folder); *after_write*: listed to prune, right after a report was stored."""
        return []

    def _read_report(self, workflow_name: str, name: str) -> bytes | None:
        """The body of run report *name*, or None if it is gone or unreadable."""
        return None

    def _remove_reports(self, workflow_name: str, names: list[str]) -> None:
        """Remove run reports (one removed meanwhile is not an error)."""

    # -- capabilities (see functionfuse.storage.protocol) ------------------------------
    def placement(self) -> Placement | None:
        """None: this storage works as it is in any process (no Ray placement)."""
        return None

    def local_path(self) -> str | None:
        """None: the results are not in a folder of this machine."""
        return None

    def credential_free_copy(self) -> CredentialFreeCopy:
        """A copy of this storage (it holds no credentials), and no environment."""
        dup = copy.copy(self)
        dup._serializers = list(self._serializers)
        return CredentialFreeCopy(dup, {})

    def remove_workflow(self, workflow_name: str) -> None:
        """Remove the workflow (every stored result and its data) from the storage."""
        validate_name(workflow_name, "Workflow name")
        self._remove_workflow(workflow_name)

    def _not_found(self, workflow_name: str, task_name: str, where: str) -> TaskNotFoundError:
        return TaskNotFoundError(
            f"No stored result for task {task_name!r} of workflow {workflow_name!r} (looked at {where}). "
            f"storage.list_tasks({workflow_name!r}) lists what is stored."
        )
