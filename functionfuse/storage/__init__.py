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

import importlib
import types

from ..errors import ConfigurationError, missing_dependency
from .base import Storage
from .protocol import CredentialFreeCopy, Placement, StorageProtocol

__all__ = [
    "storage_factory", "register_storage", "available_storages", "Storage", "StorageProtocol", "Placement",
    "CredentialFreeCopy",
]

# kind -> (dotted "module:Class", extra that provides its dependencies)
_REGISTRY: dict[str, tuple[str, str | None]] = {
    "file": ("functionfuse.storage.filestorage:FileStorage", None),
    "ray": ("functionfuse.storage.rayfilestorage:FileStorage", "ray"),
    "S3": ("functionfuse.storage.s3storage:S3Storage", "s3"),
    "s3": ("functionfuse.storage.s3storage:S3Storage", "s3"),
}
available_storages = types.MappingProxyType(_REGISTRY)


def register_storage(kind: str, target: str, *, extra: str | None = None, clobber: bool = False) -> None:
    """Add a storage kind: *target* is ``"package.module:Class"`` with ``from_options(dict)``."""
    if kind in _REGISTRY and not clobber and _REGISTRY[kind][0] != target:
        raise ConfigurationError(f"Storage kind {kind!r} is already registered for {_REGISTRY[kind][0]!r}.")
    _REGISTRY[kind] = (target, extra)


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="functionfuse.storage"):
        _REGISTRY.setdefault(ep.name, (ep.value, None))


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
    if kind not in _REGISTRY:
        _load_entry_points()
    if kind not in _REGISTRY:
        raise ConfigurationError(
            f"Unknown storage kind {kind!r}. Known kinds: {', '.join(sorted(_REGISTRY, key=str.casefold))}."
        )
    target, extra = _REGISTRY[kind]
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if extra is None:
            raise
        raise missing_dependency(getattr(exc, "name", None) or module, extra, exc) from exc
    return getattr(mod, attr).from_options(options)
