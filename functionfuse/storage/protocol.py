"""What the core, the backends and the tools call on a storage object.

:class:`StorageProtocol` is the contract every storage kind implements: the seed API
(``save``, ``read_task``, ``list_tasks``, ``remove_task``, ...), what backends use to
plan and report a run, and three **capabilities** a caller asks for instead of
guessing from the object's type:

* :meth:`~StorageProtocol.placement`: where storage operations must run on Ray
  (the ``ray`` kind: on its storage node), or None;
* :meth:`~StorageProtocol.local_path`: the folder on this machine that holds the
  results (``file``), or None;
* :meth:`~StorageProtocol.credential_free_copy`: a copy without secrets and the
  environment variables that carry them, for processes (KFP steps) that get their
  credentials from their environment.

>>> import tempfile
>>> from functionfuse.storage import storage_factory
>>> storage = storage_factory({"kind": "file", "options": {"path": tempfile.mkdtemp()}})
>>> isinstance(storage, StorageProtocol), storage.placement(), storage.local_path() == storage.path
(True, None, True)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Protocol, runtime_checkable

from ..errors import CorruptedResultError

__all__ = ["StorageProtocol", "Placement", "CredentialFreeCopy"]


class Placement(NamedTuple):
    """Where storage operations run on Ray: use *storage* inside a task submitted with
    ``.options(**options)`` (which place it on the node that holds the files)."""

    storage: "StorageProtocol"
    options: dict[str, Any]


class CredentialFreeCopy(NamedTuple):
    """A storage object whose pickled state holds no secret, and the environment
    variables (name -> value) that carry the credentials taken out of it: a process
    with *env* set reaches the same store with *storage*."""

    storage: "StorageProtocol"
    env: dict[str, str]


@runtime_checkable
class StorageProtocol(Protocol):
    """A storage object: what every storage kind implements (see the module doc)."""

    #: key of this kind's entry in the ``protocols`` dictionary handed to serializers
    protocol: str

    @property
    def serializers(self) -> tuple: ...

    def register_persistent_serializers(self, *serializers: Any) -> None: ...

    # -- results ------------------------------------------------------------------------
    def save(self, workflow_name: str, task_name: str, obj: Any, metadata: dict | None = None) -> dict:
        """Store *obj* atomically; return the metadata stored with it."""
        ...

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """The stored result (TaskNotFoundError, CorruptedResultError)."""
        ...

    def verify_task(self, workflow_name: str, task_name: str) -> dict:
        """Read a result completely and check it without unpickling; its metadata."""
        ...

    def sign_task(self, workflow_name: str, task_name: str) -> bool:
        """Sign an unsigned stored result with this process's key; False if it was."""
        ...

    def read_metadata(self, workflow_name: str, task_name: str) -> dict: ...

    def read_metadata_many(
        self, workflow_name: str, task_names: Iterable[str]
    ) -> dict[str, dict | CorruptedResultError]:
        """``{name: metadata or CorruptedResultError}``; names not stored are left out."""
        ...

    def read_fingerprints(
        self, workflow_name: str, task_names: Iterable[str], current: Mapping[str, Any] | None = None
    ) -> dict[str, dict | CorruptedResultError]:
        """What a plan needs of the stored results (``"fingerprint"``, ``"checksum"``),
        from the fingerprint index where it matches the listing, else from headers."""
        ...

    def save_fingerprint_index(self, workflow_name: str) -> None:
        """Add the results this object saved to the fingerprint index (end of a run)."""
        ...

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]: ...

    def stored_tasks(self, workflow_name: str) -> set[str]: ...

    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]: ...

    def remove_workflow(self, workflow_name: str) -> None: ...

    def list_workflows(self, *, include_foreign: bool = False) -> list[str]: ...

    # -- run reports ----------------------------------------------------------------------
    def save_run_report(self, workflow_name: str, report: dict) -> None:
        """Store a run report (StorageError/OSError when it cannot be: callers log it)."""
        ...

    def list_run_reports(self, workflow_name: str) -> list[dict]: ...

    def last_run_report(self, workflow_name: str) -> dict | None: ...

    # -- capabilities ---------------------------------------------------------------------
    def placement(self) -> Placement | None:
        """Where storage operations must run on Ray, or None: this object works as it is
        in any process."""
        ...

    def local_path(self) -> str | None:
        """The absolute folder on this machine that holds the results, or None."""
        ...

    def credential_free_copy(self) -> CredentialFreeCopy:
        """A copy without secrets, and the environment variables that carry them."""
        ...
