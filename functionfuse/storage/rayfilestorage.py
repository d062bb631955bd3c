"""Ray file storage: file storage on one designated node of a Ray cluster.

Every read and write runs as a Ray task with ``remoteArgs`` (e.g.
``{"resources": {"_disk": 0.001}}``), so it runs on the node that has that custom
resource, whichever process asks: the driver, or a worker that has just computed a
node. There it is done by a plain :class:`~functionfuse.storage.filestorage.FileStorage`,
so the files (``path/workflow_name/<task>.ffr``, the same framing, checksums and atomic
writes) are byte for byte what ``kind: file`` writes, and ``kind: file`` reads them back
on that machine.

Reads return the verified bytes and decode them in the caller, so loaded arrays are
ordinary writable arrays (results that use a persistent serializer are decoded on the
storage node, where the serializer's files are).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import time
from typing import Any, Iterable, Mapping

from ..errors import ConfigurationError, SerializationError, StorageError, missing_dependency
from ..serializers import FILE_PROTOCOL
from ..workflow import validate_name
from . import frame, signing
from .filestorage import FileStorage as _LocalFileStorage
from .protocol import CredentialFreeCopy, Placement

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayTaskError
except ImportError as _exc:  # pragma: no cover - exercised in an environment without ray
    raise missing_dependency("ray", "ray", _exc) from _exc

__all__ = ["FileStorage"]

log = logging.getLogger("functionfuse.storage")

_OPTIONS = frozenset({"remoteArgs", "path", "rayInitArgs", "resourceTimeout"})
#: seconds to wait, at first use, for a node that offers the resources of ``remoteArgs``
DEFAULT_RESOURCE_TIMEOUT = 30.0


class FileStorage:
    """Remote file storage on a single designated Ray cluster node.

    Create a single node with unique Ray resource (e.g., ``_disk: 1``) and route all
    function calls to this node with ``remoteArgs`` setting the same resource (e.g.,
    ``_disk: 0.001``). Pickle is used to save results of the graph nodes.

    To create file storage object use :func:`functionfuse.storage.storage_factory` with::

        opt = {
            "kind": "ray",
            "options": {
                "rayInitArgs": {...},
                "remoteArgs": {...},
                "path": path,
            }
        }

    :param rayInitArgs: (optional) Use this field only in the read mode. File storage
        calls Ray init with rayInitArgs parameters (unless Ray is initialised already).
        Otherwise, Ray init is called in the workflow class.
    :param remoteArgs: Dictionary with parameters for the remote function (see
        ``ray.remote``); ``{}`` runs storage tasks on any node.
    :param path: relative or absolute path to save folder. All results are saved in
        ``path/workflow_name`` folder. A relative path is resolved against the current
        folder of the process that creates the storage.
    :param resourceTimeout: (optional) seconds to wait, when a process first uses the
        storage, for an alive Ray node that offers the resources of ``remoteArgs``
        (default 30; an autoscaler may be starting one). Without one, the storage
        raises :class:`~functionfuse.errors.ConfigurationError` naming the missing
        resource instead of waiting forever.
    """

    protocol = FILE_PROTOCOL

    def __init__(self, opt: dict) -> None:
        if not isinstance(opt, dict):
            raise ConfigurationError(f"Ray file storage takes a dict of options, got {opt!r}.")
        unknown = set(opt) - _OPTIONS
        if unknown or "path" not in opt:
            raise ConfigurationError(
                f"Ray file storage options are 'path', 'remoteArgs' and optional 'rayInitArgs' and "
                f"'resourceTimeout'; got "
                f"{sorted(opt)!r}. Example: {{\"kind\": \"ray\", \"options\": {{\"path\": \"storage\", "
                '"remoteArgs": {"resources": {"_disk": 0.001}}}}.'
            )
        path = opt["path"]
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigurationError(f"Ray file storage path must be a non-empty folder path, not {path!r}.")
        remote_args = opt.get("remoteArgs") or {}
        init_args = opt.get("rayInitArgs")
        if not isinstance(remote_args, dict):
            raise ConfigurationError(f"Ray file storage 'remoteArgs' must be a dict of ray.remote options, got {remote_args!r}.")
        if init_args is not None and not isinstance(init_args, dict):
            raise ConfigurationError(f"Ray file storage 'rayInitArgs' must be a dict of ray.init arguments, got {init_args!r}.")
        timeout = opt.get("resourceTimeout", DEFAULT_RESOURCE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ConfigurationError(
                f"Ray file storage 'resourceTimeout' must be a number of seconds >= 0, got {timeout!r}."
            )
        try:
            _op.options(**remote_args)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"Ray file storage 'remoteArgs' are not valid ray.remote options: {exc}") from None
        self.path = os.path.abspath(os.fspath(path))
        self.remote_args = dict(remote_args)
        self.resource_timeout = float(timeout)
        self._serializers: list = []
        self._key_id: str | None = None
        if init_args is not None and not ray.is_initialized():
            ray.init(**init_args)

    @classmethod
    def from_options(cls, options: dict) -> "FileStorage":
        return cls(options)

    def __repr__(self) -> str:
        return f"rayfilestorage.FileStorage({self.path!r}, remoteArgs={self.remote_args!r})"

    def __getstate__(self) -> dict:
        return {
            "path": self.path,
            "remote_args": self.remote_args,
            "resource_timeout": self.resource_timeout,
            "_serializers": self._serializers,
            "_key_id": signing.required_key_id(self._key_id),
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_key_id", None)
        self.__dict__.setdefault("resource_timeout", DEFAULT_RESOURCE_TIMEOUT)

    # -- signing (see functionfuse.storage.signing) ---------------------------------------------
    def _signer(self) -> signing.Signer | None:
        return signing.require(self._key_id, self)

    # -- where the work is done -----------------------------------------------------------
    def local(self) -> _LocalFileStorage:
        """The file storage that does the work on the storage node (same path, same serializers)."""
        inner = _LocalFileStorage(self.path)
        inner._key_id = signing.required_key_id(self._key_id)
        if self._serializers:
            inner.register_persistent_serializers(*self._serializers)
        return inner

    # -- capabilities (see functionfuse.storage.protocol) ------------------------------------
    def placement(self) -> Placement:
        """Storage operations run on the storage node: inside a Ray task submitted with
        ``.options(**remoteArgs)``, with the plain file storage of that node."""
        return Placement(self.local(), dict(self.remote_args))

    def local_path(self) -> None:
        """None: the files are on the storage node, which need not be this machine."""
        return None

    def credential_free_copy(self) -> CredentialFreeCopy:
        """A copy (the storage holds no credentials: Ray's own connection is used)."""
        dup = copy.copy(self)
        dup._serializers = list(self._serializers)
        return CredentialFreeCopy(dup, {})

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not ray.is_initialized():
            raise ConfigurationError(
                "Ray is not initialised. Create the RayWorkflow before using its storage, or pass "
                "'rayInitArgs' (e.g. {\"address\": \"auto\"}) in the storage options to read results."
            )
        _require_resources(self.remote_args, self.resource_timeout)
        return self._get(self._submit(method, args, kwargs))

    def _submit(self, method: str, args: tuple, kwargs: dict) -> Any:
        fn = _op.options(**self.remote_args) if self.remote_args else _op
        try:
            ref = fn.remote(self.path, self._serializers, signing.required_key_id(self._key_id), method, args, kwargs)
        except TypeError as exc:  # an argument that cannot be serialized
            obj = args[2] if method == "save" else args
            raise SerializationError(
                f"Could not serialize a result of type {type(obj).__name__} to send it to the storage "
                f"node: {str(exc).splitlines()[0]}. Return picklable values, or register a serializer."
            ) from exc
        return ref

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        try:
            return ray.get(ref, timeout=timeout)
        except RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    # -- the storage API ------------------------------------------------------------------
    def register_persistent_serializers(self, *serializers: Any) -> None:
        """Use *serializers* for results (or parts of results) of their ``serializer_class``.

        They run on the storage node (they must be importable there).
        """
        self.local().register_persistent_serializers(*serializers)  # validates them
        for ser in serializers:
            if ser not in self._serializers:
                self._serializers.append(ser)

    @property
    def serializers(self) -> tuple:
        return tuple(self._serializers)

    def save(self, workflow_name: str, task_name: str, obj: Any, metadata: dict | None = None) -> dict:
        """Store *obj* as the result of *task_name*, atomically, on the storage node.

        The result is framed here, where it is a live object, and its bytes are written
        there (a result that uses a persistent serializer is framed there, where the
        serializer writes its files).
        """
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        if self._serializers:
            return self._call("save", workflow_name, task_name, obj, metadata)
        meta = {**(metadata or {}), "workflow": workflow_name, "task": task_name}
        enc = frame.encode(obj, meta, signer=self._signer())
        # memoryviews (out-of-band buffers) travel through Ray as pickle buffers, uncopied
        pieces = [pickle.PickleBuffer(p) if isinstance(p, memoryview) else p for p in enc.pieces]
        return self._call("_write", workflow_name, task_name, enc.header, pieces)

    def read_task(self, workflow_name: str, task_name: str) -> Any:
        """Read saved result of node execution from workflow storage.

        :param workflow_name: A name of the workflow to read saved results.
        :param task_name: A task name to load results for.
        """
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        kind, where, payload = self._call("_read", workflow_name, task_name)
        if kind == "object":
            return payload
        # Ray hands over read-only views of its object store: copy them into buffers of
        # our own, so loaded arrays are writable as with kind "file"
        return frame.decode([bytearray(memoryview(s)) for s in payload], where)

    def read_metadata(self, workflow_name: str, task_name: str) -> dict:
        """The metadata stored with a result (node, function, inputs, times, size, versions)."""
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        return self._call("read_metadata", workflow_name, task_name)

    def read_metadata_many(self, workflow_name: str, task_names: Iterable[str]) -> dict[str, Any]:
        """Metadata of several tasks in one round trip: ``{name: metadata or CorruptedResultError}``."""
        validate_name(workflow_name, "Workflow name")
        return self._call("read_metadata_many", workflow_name, list(task_names))

    def read_fingerprints(
        self, workflow_name: str, task_names: Iterable[str], current: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """What a plan needs of the stored results, read on the storage node with its
        fingerprint index (see :meth:`functionfuse.storage.base.Storage.read_fingerprints`).
        Only the digests of *current* travel there; an entry answered with one (a dict
        with the digest alone, which no stored record is) stands for the current record."""
        validate_name(workflow_name, "Workflow name")
        digests = None if current is None else {n: {"node": r.get("node")} for n, r in current.items()}
        found = self._call("read_fingerprints", workflow_name, list(task_names), digests)
        if current is not None:
            for name, meta in found.items():
                fp = meta.get("fingerprint") if isinstance(meta, dict) else None
                if isinstance(fp, dict) and len(fp) == 1 and fp.get("node") == current[name].get("node"):
                    meta["fingerprint"] = current[name]
        return found

    def save_fingerprint_index(self, workflow_name: str) -> None:
        """Nothing: results are saved by tasks on the storage node, where no run ends;
        the next plan reads the headers of the results a run saved, once, and adds
        them to the index there."""
        validate_name(workflow_name, "Workflow name")

    def remove_fingerprint_index(self, workflow_name: str) -> None:
        """Remove the workflow's fingerprint index on the storage node (always safe)."""
        validate_name(workflow_name, "Workflow name")
        self._call("remove_fingerprint_index", workflow_name)

    def verify_task(self, workflow_name: str, task_name: str) -> dict:
        """Read a result completely on the storage node and check it without unpickling it."""
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        return self._call("verify_task", workflow_name, task_name)

    def sign_task(self, workflow_name: str, task_name: str) -> bool:
        """Sign a stored, unsigned result with this process's key, on the storage node
        (see :meth:`functionfuse.storage.base.Storage.sign_task`)."""
        validate_name(workflow_name, "Workflow name")
        validate_name(task_name, "Task name")
        return self._call("sign_task", workflow_name, task_name)

    def list_tasks(self, workflow_name: str, pattern: str = "*") -> list[str]:
        """List saved results of all saved nodes using glob pattern for workflow.

        :param workflow_name: A name of the workflow to list saved results.
        :param pattern: A glob pattern to filter out names of saved results.
        """
        validate_name(workflow_name, "Workflow name")
        return self._call("list_tasks", workflow_name, pattern)

    def stored_tasks(self, workflow_name: str) -> set[str]:
        """The set of stored task names (one listing; used to plan a resume)."""
        validate_name(workflow_name, "Workflow name")
        return self._call("stored_tasks", workflow_name)

    def remove_task(self, workflow_name: str, task_name: str | None = None, pattern: str | None = None) -> list[str]:
        """Remove results of selected nodes from the storage.

        :param workflow_name: A name of the workflow to remove node results.
        :param task_name: A name of the node to remove. The parameter is ignored if pattern is defined
        :param pattern: A glob pattern of node names to be removed.
        """
        validate_name(workflow_name, "Workflow name")
        return self._call("remove_task", workflow_name, task_name, pattern)

    def remove_workflow(self, workflow_name: str) -> None:
        """Remove the workflow from the storage.

        :param workflow_name: A name of the workflow to remove from the storage.
        """
        validate_name(workflow_name, "Workflow name")
        self._call("remove_workflow", workflow_name)

    def list_workflows(self, *, include_foreign: bool = False) -> list[str]:
        """Names of the workflows that have stored results (see
        :meth:`functionfuse.storage.filestorage.FileStorage.list_workflows`)."""
        return self._call("list_workflows", include_foreign=include_foreign)

    def list_run_reports(self, workflow_name: str) -> list[dict]:
        """Stored run reports of the workflow, oldest first."""
        validate_name(workflow_name, "Workflow name")
        return self._call("list_run_reports", workflow_name)

    def last_run_report(self, workflow_name: str) -> dict | None:
        """The newest stored run report of the workflow, or None."""
        validate_name(workflow_name, "Workflow name")
        return self._call("last_run_report", workflow_name)

    def save_run_report(self, workflow_name: str, report: dict) -> None:
        """Store a run's report on the storage node; never waits long.

        Runs at the end of every run, also one stopped by Ctrl-C: without a node that
        offers the storage's resources, or if the write takes longer than
        ``resourceTimeout``, it raises :class:`~functionfuse.errors.StorageError` (the
        backend logs it) instead of holding up the end of the run.
        """
        validate_name(workflow_name, "Workflow name")
        if not ray.is_initialized():
            raise StorageError(f"The run report of workflow {workflow_name!r} was not stored: Ray is not initialised.")
        try:
            _require_resources(self.remote_args, 0.0)
        except ConfigurationError as exc:
            raise StorageError(f"The run report of workflow {workflow_name!r} was not stored: {exc}") from None
        ref = self._submit("save_run_report", (workflow_name, report), {})
        try:
            self._get(ref, timeout=max(self.resource_timeout, 1.0))
        except GetTimeoutError:
            ray.cancel(ref, force=False)
            raise StorageError(
                f"The run report of workflow {workflow_name!r} was not stored: the storage node did not "
                f"answer within {max(self.resource_timeout, 1.0):g} s ({self!r})."
            ) from None


# -- is there a node for the storage tasks? ---------------------------------------------------
#: requirements (``_requirements()``) an alive node was seen to offer, and those that
#: no node offered within the timeout (both for the life of this process)
_OFFERED: set[frozenset] = set()
_MISSING: dict[frozenset, str] = {}


def _requirements(remote_args: dict) -> dict[str, float]:
    """The node resources the storage tasks ask for."""
    need = {str(k): float(v) for k, v in (remote_args.get("resources") or {}).items() if v}
    for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        value = remote_args.get(option)
        if value:
            need[resource] = float(value)
    return need


def _unmet(need: dict[str, float]) -> list[str] | None:
    """None if an alive node offers all of *need*; else the resources no node offers enough of."""
    best: list[str] | None = None
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources") or {}
        short = [k for k, v in need.items() if have.get(k, 0.0) < v]
        if not short:
            return None
        if best is None or len(short) < len(best):
            best = short
    return best if best is not None else sorted(need)


def _require_resources(remote_args: dict, timeout: float) -> None:
    """Wait up to *timeout* seconds for an alive Ray node that offers what the storage
    tasks ask for (custom resources, CPUs, GPUs, memory); checked once per process.

    :raises ConfigurationError: no node offers it (at once if that was found before).
    """
    need = _requirements(remote_args)
    if not need:
        return
    key = frozenset(need.items())
    if key in _OFFERED:
        return
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        short = _unmet(need)
        if short is None:
            _OFFERED.add(key)
            _MISSING.pop(key, None)
            if waited:
                log.info("a Ray node offers the storage resources %r now", need)
            return
        if key in _MISSING or time.monotonic() >= deadline:
            break
        if not waited:
            log.warning(
                "no alive Ray node offers the storage resources %r yet; waiting up to %g s", need, timeout
            )
            waited = True
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    missing = ", ".join(f"{k!r}: {need[k]:g}" for k in short)
    _MISSING[key] = missing
    raise ConfigurationError(
        f"Ray file storage: no alive Ray node offers {{{missing}}}, which its remoteArgs {remote_args!r} "
        f"ask for (waited {timeout:g} s; cluster resources: {_cluster_resources()}). Start the storage "
        f"node with that resource, e.g. ray start --resources '{{\"{short[0]}\": 1}}' (or "
        f"ray.init(resources={{'{short[0]}': 1}}) for a local Ray), or change remoteArgs in the storage "
        "options; set 'resourceTimeout' to wait longer for an autoscaler."
    )


def _cluster_resources() -> str:
    try:
        have = ray.cluster_resources()
    except Exception:  # pragma: no cover - the answer is only for the message
        return "unknown"
    return "{" + ", ".join(f"{k!r}: {v:g}" for k, v in sorted(have.items()) if not k.startswith("node:")) + "}"


# -- on the storage node ----------------------------------------------------------------------
_LOCAL: dict[str, _LocalFileStorage] = {}


def _local(path: str, serializers: list, key_id: str | None) -> _LocalFileStorage:
    st = _LOCAL.get(path)
    if st is None:
        st = _LOCAL[path] = _LocalFileStorage(path)
        st._journal_saves = False  # no run ends here to write them (see save_fingerprint_index)
    st._serializers = list(serializers)
    st._key_id = key_id
    return st


def _read(st: _LocalFileStorage, workflow_name: str, task_name: str) -> tuple[str, str, Any]:
    """Read and verify a result; send the verified segments (decoded in the caller)
    unless the result needs its serializers' files, which are here."""
    frames = st.read_frames(workflow_name, task_name)
    if frames.header["meta"].get("serializers"):
        return "object", frames.where, st.decode_frames(frames)
    # pickle buffers travel out of band, whatever buffer type the file storage read into
    return "segments", frames.where, [pickle.PickleBuffer(s) for s in frames.segments]


def _write(st: _LocalFileStorage, workflow_name: str, task_name: str, header: dict, pieces: list) -> dict:
    """Publish a result framed by the caller, with the file storage's atomic write."""
    return st.save_frames(workflow_name, task_name, frame.Encoded(header, pieces))


_PRIVATE_OPS: dict[str, Any] = {"_read": _read, "_write": _write}


@ray.remote
def _op(path: str, serializers: list, key_id: str | None, method: str, args: tuple, kwargs: dict) -> Any:
    st = _local(path, serializers, key_id)
    private = _PRIVATE_OPS.get(method)
    if private is not None:
        return private(st, *args)
    return getattr(st, method)(*args, **kwargs)
