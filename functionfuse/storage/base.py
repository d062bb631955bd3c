"""What every storage kind shares: names, serializers, framing, the public API.

A storage kind implements a handful of primitives (publish a result atomically, open
one for reading, list, remove); this class turns them into the public API of the seed
(``list_tasks``, ``read_task``, ``remove_task``, ``remove_workflow``,
``register_persistent_serializers``) plus ``save`` and ``read_metadata`` for backends
and tools.
"""

from __future__ import annotations

import fnmatch
import logging
from abc import ABC, abstractmethod
from typing import Any, Iterable

from ..errors import ConfigurationError, CorruptedResultError, StorageError, TaskNotFoundError
from ..serializers import lookup_serializer
from ..workflow import name_problem, validate_name
from . import frame, signing

__all__ = ["Storage"]

log = logging.getLogger("functionfuse.storage")


class Storage(ABC):
    """Base class of storage kinds. Instances are picklable (they hold options only)."""

    #: the key of this kind's protocol object in the dictionary handed to serializers
    protocol: str = ""

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
    def list_workflows(self) -> list[str]:
        """Names of the workflows that have stored results."""

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
        :raises CorruptedResultError: the stored result is damaged, is another task's, or
            (with a signing key set) is not signed with it; its path is named.

        A stored result is a pickle: reading it runs code its writer chose. Read only
        from a store you trust like code, or set a signing key
        (:mod:`functionfuse.storage.signing`).
        """
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        signer = self._signer()
        reader, size, where = self._open(workflow_name, task_name)
        with reader:
            header = frame.read_header(reader, where, size, expect=(workflow_name, task_name), signer=signer)
            segments = frame.read_payload(reader, header, where, signer=signer)
        if header["meta"].get("serializers"):
            protocols = self._data_protocols(workflow_name, task_name, header.get("data"))
            return frame.decode(segments, where, lookup=self._lookup, protocols=protocols)
        return frame.decode(segments, where)

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

    def save_run_report(self, workflow_name: str, report: dict) -> None:
        """Store a run report with the workflow (kinds without report support raise
        NotImplementedError; backends then only log it)."""
        raise NotImplementedError(f"{type(self).__name__} does not store run reports")

    def list_run_reports(self, workflow_name: str) -> list[dict]:
        """Stored run reports of the workflow, oldest first."""
        return []

    def last_run_report(self, workflow_name: str) -> dict | None:
        """The newest stored run report of the workflow, or None."""
        reports = self.list_run_reports(workflow_name)
        return reports[-1] if reports else None

    def remove_workflow(self, workflow_name: str) -> None:
        """Remove the workflow (every stored result and its data) from the storage."""
        validate_name(workflow_name, "Workflow name")
        self._remove_workflow(workflow_name)

    def _not_found(self, workflow_name: str, task_name: str, where: str) -> TaskNotFoundError:
        return TaskNotFoundError(
            f"No stored result for task {task_name!r} of workflow {workflow_name!r} (looked at {where}). "
            f"storage.list_tasks({workflow_name!r}) lists what is stored."
        )
