"""Exceptions and warnings raised by functionfuse.

Every exception derives from :class:`FunctionFuseError`, so one ``except`` clause
catches them all::

    FunctionFuseError
     ├── GraphError                     (also ValueError)
     │    ├── InvalidNameError          a node, task or workflow name is not a safe key
     │    ├── DuplicateNameError        two nodes of one workflow share a name
     │    └── NodeCallError             (also TypeError) a call does not fit its function's signature
     ├── NodeExecutionError             a node's function raised; the cause is chained
     │    └── NodeTimeoutError          a node ran longer than its timeout (LocalWorkflow)
     ├── StalePlanError                 a compiled plan no longer matches what storage holds
     ├── StorageError
     │    ├── TaskNotFoundError         (also FileNotFoundError)
     │    ├── WorkflowNotFoundError     no result of the workflow is stored
     │    ├── CorruptedResultError      a stored result failed its integrity checks
     │    │    └── SignatureError        unsigned, or its signature does not match the key
     │    ├── SigningKeyError           a result or storage needs another signing key
     │    ├── ResultTooLargeError       a stored result is larger than the limit set for loading it
     │    └── SerializationError        a result could not be written or read back
     ├── ConfigurationError             (also ValueError) bad options, unknown kinds
     │    ├── VersionMismatchError      the laptop's Ray or Python is not the cluster's (ray://)
     │    ├── TargetError               a command-line TARGET cannot be imported or names no DAG
     │    └── KFPSettingsError          the KFP chart's settings ConfigMap cannot be read
     ├── MissingDependencyError         (also ImportError) an optional extra is missing
     ├── EngineError                    an execution engine or its API (KFP) failed or refused a request
     │    └── RemoteRunError            a run submitted to an engine (a KFP run) did not succeed
     ├── RenderError                    Graphviz could not draw a graph
     └── KitError                       the container kit (each also in the functionfuse.kit module raising it)
          ├── ImageBuildError           an image build failed
          ├── ImagePushError            pushing an image failed
          ├── DockerUnavailableError    no Docker daemon answers
          ├── RegistryError             the local registry could not be started or queried
          ├── ReleaseError              a release step failed
          └── StackError                a step of ``functionfuse stack`` failed

Warnings: :class:`ResultRecomputedWarning` (a stored result was unreadable and the
node is run again), :class:`StaleResultWarning` (a stored result is reused by name
although its code, arguments or inputs changed), :class:`FingerprintWarning` (a value
could only be fingerprinted by its type).
"""

from __future__ import annotations

__all__ = [
    "FunctionFuseError",
    "GraphError",
    "InvalidNameError",
    "DuplicateNameError",
    "NodeCallError",
    "NodeExecutionError",
    "NodeTimeoutError",
    "StalePlanError",
    "StorageError",
    "TaskNotFoundError",
    "WorkflowNotFoundError",
    "CorruptedResultError",
    "SerializationError",
    "SignatureError",
    "SigningKeyError",
    "ResultTooLargeError",
    "ConfigurationError",
    "VersionMismatchError",
    "TargetError",
    "KFPSettingsError",
    "MissingDependencyError",
    "EngineError",
    "RemoteRunError",
    "RenderError",
    "KitError",
    "ImageBuildError",
    "ImagePushError",
    "DockerUnavailableError",
    "RegistryError",
    "ReleaseError",
    "StackError",
    "ResultRecomputedWarning",
    "StaleResultWarning",
    "FingerprintWarning",
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


class NodeTimeoutError(NodeExecutionError):
    """A node ran longer than the timeout set on it (``query(...).set_timeout``)."""

    def __reduce__(self):
        return (_rebuild_timeout_error, (str(self), self.node_name, self.workflow_name))


def _rebuild_timeout_error(message: str, node_name: str, workflow_name: str) -> NodeTimeoutError:
    return NodeTimeoutError(message, node_name=node_name, workflow_name=workflow_name)


class StalePlanError(FunctionFuseError):
    """A plan made earlier (a compiled KFP pipeline) no longer matches what storage
    holds, e.g. a result it counted on was removed: plan or compile again."""


class StorageError(FunctionFuseError):
    """A storage operation failed."""


class TaskNotFoundError(StorageError, FileNotFoundError):
    """No stored result exists for the task."""


class WorkflowNotFoundError(StorageError):
    """No result of the workflow is stored (``functionfuse storage ls`` lists those
    that are)."""


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


class ResultTooLargeError(StorageError):
    """A stored result is larger than the limit set for loading it (``functionfuse
    storage show --max-bytes``); it was not loaded."""


class ConfigurationError(FunctionFuseError, ValueError):
    """Options given to functionfuse are invalid."""


class VersionMismatchError(ConfigurationError):
    """This process cannot be a Ray Client of that cluster: ``local`` and ``cluster`` map
    ``"ray"`` and ``"python"`` to the versions each side runs."""

    def __init__(self, message: str, *, local: dict, cluster: dict) -> None:
        super().__init__(message)
        self.local = dict(local)
        self.cluster = dict(cluster)

    def __reduce__(self):
        return (_rebuild_version_mismatch, (str(self), self.local, self.cluster))


def _rebuild_version_mismatch(message: str, local: dict, cluster: dict) -> VersionMismatchError:
    return VersionMismatchError(message, local=local, cluster=cluster)


class TargetError(ConfigurationError):
    """A command-line TARGET (``path/to/file.py:NAME`` or ``package.module:NAME``)
    cannot be imported, or does not name a DAG or a workflow."""


class KFPSettingsError(ConfigurationError):
    """The settings ConfigMap of the functionfuse-kfp chart cannot be read (no such file
    or ConfigMap, kubectl failed) (:mod:`functionfuse.kit.kfpsettings`)."""


class MissingDependencyError(FunctionFuseError, ImportError):
    """An optional dependency is not installed."""


class EngineError(FunctionFuseError):
    """An execution engine or its API (the KFP API) cannot be reached or refused a
    request."""


class RemoteRunError(EngineError):
    """A run submitted to an engine (a KFP run) ended failed, or in an unknown state."""


class RenderError(FunctionFuseError):
    """Graphviz could not draw a graph."""


class KitError(FunctionFuseError):
    """The container kit (images, the local registry, releases, the local stack) failed.
    Each subclass is also importable from the kit module that raises it."""


class ImageBuildError(KitError):
    """An image build failed; the message ends with the last lines of the build log
    (:mod:`functionfuse.kit.images`)."""


class ImagePushError(KitError):
    """Pushing an image to a registry failed (:mod:`functionfuse.kit.images`)."""


class DockerUnavailableError(KitError):
    """No Docker daemon answers (:mod:`functionfuse.kit.images`)."""


class RegistryError(KitError):
    """The local registry could not be started or queried (:mod:`functionfuse.kit.registry`)."""


class ReleaseError(KitError):
    """A release step failed, or the sources disagree on the version
    (:mod:`functionfuse.kit.release`)."""


class StackError(KitError):
    """A step of ``functionfuse stack`` failed (:mod:`functionfuse.kit.stack`)."""


class ResultRecomputedWarning(UserWarning):
    """A stored result could not be read back, so its node is run again."""


class StaleResultWarning(UserWarning):
    """A stored result is reused by name although what it was computed from changed."""


class FingerprintWarning(UserWarning):
    """A value could only be fingerprinted by its type (:mod:`functionfuse.fingerprint`)."""


def missing_dependency(module: str, extra: str, exc: BaseException | None = None) -> MissingDependencyError:
    """Build the error raised when an optional engine is not installed."""
    err = MissingDependencyError(
        f"{module!r} is required for this feature but is not installed. "
        f"Install it with: pip install 'functionfuse[{extra}]'"
    )
    if exc is not None:
        err.__cause__ = exc
    return err
