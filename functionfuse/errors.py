"""Exceptions and warnings raised by functionfuse.

Every exception derives from :class:`FunctionFuseError`, so one ``except`` clause
catches them all::

    FunctionFuseError
     ├── GraphError                     (also ValueError)
     │    ├── InvalidNameError          a node, task or workflow name is not a safe key
     │    ├── DuplicateNameError        two nodes of one workflow share a name
     │    └── NodeCallError             (also TypeError) a call does not fit its function's signature
     ├── NodeExecutionError             a node's function raised; the cause is chained
     ├── StorageError
     │    ├── TaskNotFoundError         (also FileNotFoundError)
     │    ├── CorruptedResultError      a stored result failed its integrity checks
     │    │    └── SignatureError        unsigned, or its signature does not match the key
     │    ├── SigningKeyError           a result or storage needs another signing key
     │    └── SerializationError        a result could not be written or read back
     ├── ConfigurationError             (also ValueError) bad options, unknown kinds
     └── MissingDependencyError         (also ImportError) an optional extra is missing

Warnings: :class:`ResultRecomputedWarning` (a stored result was unreadable and the
node is run again), :class:`StaleResultWarning` (a stored result is reused by name
although its code, arguments or inputs changed).
"""

from __future__ import annotations

__all__ = [
    "FunctionFuseError",
    "GraphError",
    "InvalidNameError",
    "DuplicateNameError",
    "NodeCallError",
    "NodeExecutionError",
    "StorageError",
    "TaskNotFoundError",
    "CorruptedResultError",
    "SerializationError",
    "SignatureError",
    "SigningKeyError",
    "ConfigurationError",
    "MissingDependencyError",
    "ResultRecomputedWarning",
    "StaleResultWarning",
    "missing_dependency",
]


class FunctionFuseError(Exception):
    """Root of every exception raised by functionfuse."""


class GraphError(FunctionFuseError, ValueError):
    """The DAG cannot be run as given."""


class InvalidNameError(GraphError):
    """A node, task or workflow name cannot be used as a storage key."""


class DuplicateNameError(GraphError):
    """Two different nodes of one workflow have the same name."""


class NodeCallError(GraphError, TypeError):
    """The arguments of a call of a decorated function or class do not fit its
    signature (a missing argument, one too many, an unknown keyword). Raised where the
    node is made, before anything runs; also a ``TypeError``, like the error Python
    raises for the same call of a plain function."""


class NodeExecutionError(FunctionFuseError):
    """A node's function raised an exception.

    The original exception is the ``__cause__``; ``node_name`` and
    ``workflow_name`` say where it happened.
    """

    def __init__(self, message: str, *, node_name: str, workflow_name: str) -> None:
        super().__init__(message)
        self.node_name = node_name
        self.workflow_name = workflow_name

    def __reduce__(self):  # keep the keyword-only fields when pickled (Ray, subprocesses)
        return (_rebuild_node_error, (str(self), self.node_name, self.workflow_name))


def _rebuild_node_error(message: str, node_name: str, workflow_name: str) -> NodeExecutionError:
    return NodeExecutionError(message, node_name=node_name, workflow_name=workflow_name)


class StorageError(FunctionFuseError):
    """A storage operation failed."""


class TaskNotFoundError(StorageError, FileNotFoundError):
    """No stored result exists for the task."""


class CorruptedResultError(StorageError):
    """A stored result is truncated or its checksum does not match.

    ``path`` names the damaged object. Workflows recompute such nodes; ``read_task``
    raises this error instead of returning a wrong value.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path

    def __reduce__(self):
        return (_rebuild_corrupted, (str(self), self.path))


def _rebuild_corrupted(message: str, path: str) -> CorruptedResultError:
    return CorruptedResultError(message, path=path)


class SignatureError(CorruptedResultError):
    """A stored result is not signed, or its signature does not match, while a signing
    key is set (see :mod:`functionfuse.storage.signing`). It is never unpickled; runs
    recompute it."""

    def __reduce__(self):
        return (_rebuild_signature, (str(self), self.path))


def _rebuild_signature(message: str, path: str) -> SignatureError:
    return SignatureError(message, path=path)


class SigningKeyError(StorageError):
    """A result was signed with another key than this process has, or a storage that
    signs its results is used in a process without its key. Nothing is read or
    overwritten: give every process the same key."""


class SerializationError(StorageError):
    """A result could not be serialized or deserialized."""


class ConfigurationError(FunctionFuseError, ValueError):
    """Options given to functionfuse are invalid."""


class MissingDependencyError(FunctionFuseError, ImportError):
    """An optional dependency is not installed."""


class ResultRecomputedWarning(UserWarning):
    """A stored result could not be read back, so its node is run again."""


class StaleResultWarning(UserWarning):
    """A stored result is reused by name although what it was computed from changed."""


def missing_dependency(module: str, extra: str, exc: BaseException | None = None) -> MissingDependencyError:
    """Build the error raised when an optional engine is not installed."""
    err = MissingDependencyError(
        f"{module!r} is required for this feature but is not installed. "
        f"Install it with: pip install 'functionfuse[{extra}]'"
    )
    if exc is not None:
        err.__cause__ = exc
    return err
