"""Storage of node results, and the factory that creates storage objects.

>>> import tempfile
>>> storage = storage_factory({"kind": "file", "options": {"path": tempfile.mkdtemp()}})
>>> type(storage).__name__
'FileStorage'

Every kind implements :class:`~functionfuse.storage.protocol.StorageProtocol`, what
the core, the backends and the tools call (with its capabilities: Ray placement, a
local folder, a credential-free copy for steps).

Storage kinds live in a registry of dotted paths, imported on first use;
:func:`register_storage` and the ``functionfuse.storage`` entry-point group add
kinds. :data:`available_storages` is a read-only view of it.
"""

from __future__ import annotations

from ..errors import ConfigurationError
from ..registries import Registry
from .base import Storage
from .protocol import CredentialFreeCopy, Placement, StorageProtocol

__all__ = [
    "storage_factory", "register_storage", "available_storages", "Storage", "StorageProtocol", "Placement",
    "CredentialFreeCopy",
]

# kind -> (dotted "module:Class", extra that provides its dependencies)
_storages = Registry("Storage kind", "functionfuse.storage")
_storages.register("file", "functionfuse.storage.filestorage:FileStorage")
_storages.register("ray", "functionfuse.storage.rayfilestorage:FileStorage", extra="ray")
_storages.register("S3", "functionfuse.storage.s3storage:S3Storage", extra="s3")
_storages.register("s3", "functionfuse.storage.s3storage:S3Storage", extra="s3")
available_storages = _storages.view


def register_storage(kind: str, target: str, *, extra: str | None = None, clobber: bool = False) -> None:
    """Add a storage kind: *target* is ``"package.module:Class"`` with ``from_options(dict)``."""
    _storages.register(kind, target, extra=extra, clobber=clobber)


def storage_factory(opt: dict) -> StorageProtocol:
    """Factory that creates a storage object.

    :param opt: ``{"kind": <kind>, "options": {...}}``. For local file storage::

            {"kind": "file", "options": {"path": "path to folder for storage"}}

        Results of a workflow are stored in ``path/workflow_name``.
    """
    if not isinstance(opt, dict) or "kind" not in opt:
        raise ConfigurationError(
            f"storage_factory takes a dict with 'kind' and 'options', got {opt!r}. "
            'Example: {"kind": "file", "options": {"path": "storage"}}.'
        )
    unknown = set(opt) - {"kind", "options"}
    if unknown:
        raise ConfigurationError(f"storage_factory got unknown keys {sorted(unknown)!r}; it takes 'kind' and 'options'.")
    kind = opt["kind"]
    options = opt.get("options", {})
    if not isinstance(options, dict):
        raise ConfigurationError(f"Storage 'options' must be a dict, got {type(options).__name__}.")
    if kind not in _storages:
        raise ConfigurationError(
            f"Unknown storage kind {kind!r}. Known kinds: {', '.join(sorted(available_storages, key=str.casefold))}."
        )
    return _storages.load(kind).from_options(options)
