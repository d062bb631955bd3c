"""Serializers and the protocols through which storage kinds expose their files.

``FILE_PROTOCOL`` and ``S3_PROTOCOL`` are the keys of the *protocols* dictionary a
storage hands to a serializer's ``pickle(obj, protocols)`` and ``unpickle(pid,
protocols)``. Under file storage, ``protocols[FILE_PROTOCOL]`` is a
:class:`TaskFiles`: a folder that belongs to one stored result, removed with it.

Serializers are registered on a storage with ``register_persistent_serializers``.
A result written with a serializer records the serializer's ``name``; to read it back
from a storage where the serializer was not registered, the name is looked up in a
registry that packages extend with :func:`register_serializer` or the
``functionfuse.serializers`` entry-point group.
"""

from __future__ import annotations

import os
import stat
from typing import IO, Any

from ..errors import ConfigurationError, CorruptedResultError, SerializationError, StorageError
from ..registries import Registry

__all__ = [
    "FILE_PROTOCOL",
    "S3_PROTOCOL",
    "TaskFiles",
    "register_serializer",
    "lookup_serializer",
    "available_serializers",
]

FILE_PROTOCOL = "file_protocol"
S3_PROTOCOL = "s3 protocol"

# name -> (dotted "module:attr", extra that provides it)
_serializers = Registry("Serializer name", "functionfuse.serializers", entry_point_extra="all")
available_serializers = _serializers.view


def register_serializer(name: str, target: str, *, extra: str = "all", clobber: bool = False) -> None:
    """Make results written by serializer *name* readable anywhere.

    *target* is ``"package.module:Attribute"``, imported on first use.
    """
    _serializers.register(name, target, extra=extra, clobber=clobber)


register_serializer("DaskArraySerializer", "functionfuse.serializers.daskarray:DaskArraySerializer", extra="dask")


def lookup_serializer(name: str) -> Any:
    """The serializer registered as *name* (a result records the name it was written with)."""
    if name not in _serializers:
        raise StorageError(
            f"This result was written with serializer {name!r}, which is not registered here. "
            "Register it on the storage with storage.register_persistent_serializers(...) before reading."
        )
    return _serializers.load(name)


def claim_name(written: set[str], name: str, files: Any, mode: str = "w") -> None:
    """Record that *name* is (re)created in the result *files* belongs to; refuse a name
    already created there: a second object of a serializer's type in one result would
    overwrite the first and both would read back as the second."""
    if name in written:
        raise SerializationError(
            f"Serializer file {name!r} is already written in this result ({files!r}); opening it with "
            f"mode {mode!r} again would overwrite the object stored there. A result may hold several "
            "objects of a serializer's type: give each a distinct name (e.g. a counter or a uuid: "
            "f\"text-{uuid.uuid4().hex}.txt\") and return that name from pickle()."
        )
    written.add(name)


def _creates(mode: str) -> bool:
    return "w" in mode or "x" in mode


class TaskFiles:
    """A folder for one stored result's extra files (``protocols[FILE_PROTOCOL]``).

    Serializers open files in it by plain names; the folder is created on first
    write and removed together with the task. One result may hold several objects of
    a serializer's type, so each needs a name of its own: opening a name for writing
    (``"w"``, ``"x"``) a second time in one result is refused (appending is not).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.used = False
        self._written: set[str] = set()

    def path(self, name: str) -> str:
        """Absolute path of *name* inside the folder (for libraries that want a path).

        A link there is never followed: it reads as a damaged result (files of a result
        live beside it, below the storage root; a link would take them elsewhere).
        """
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise ConfigurationError(f"Serializer file name {name!r} must be a plain file name.")
        path = os.path.join(self.root, name)
        if os.path.islink(path) or os.path.islink(self.root):
            raise CorruptedResultError(
                f"Serializer file {path} (or its folder) is a link, which a stored result never holds: it is not "
                "followed. Runs recompute the result.",
                path=path,
            )
        try:
            mode = os.lstat(path).st_mode
        except OSError:  # not there (yet): a write makes it, a read says so itself
            return path
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO or a device would block or worse
            raise CorruptedResultError(
                f"Serializer file {path} is not a file (a FIFO, socket or device), which a stored result never "
                "holds: it is not opened. Runs recompute the result.",
                path=path,
            )
        return path

    def open(self, name: str, mode: str = "rb") -> IO[Any]:
        """Open *name* in the folder (creating the folder for writes).

        :raises SerializationError: *name* was already written in this result.
        """
        path = self.path(name)
        if any(c in mode for c in "wax+"):
            if _creates(mode):
                claim_name(self._written, name, self, mode)
            os.makedirs(self.root, exist_ok=True)
            self.used = True
        return open(path, mode)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def remove(self, name: str) -> None:
        p = self.path(name)
        self._written.discard(name)
        if os.path.isdir(p):
            import shutil

            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)

    def __repr__(self) -> str:
        return f"TaskFiles({self.root!r})"
