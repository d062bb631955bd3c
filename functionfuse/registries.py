"""Registries of named dotted paths, imported on first use (like fsspec's registry).

Storage kinds (:func:`functionfuse.storage.register_storage`) and serializers
(:func:`functionfuse.serializers.register_serializer`) are both one of these: a name
maps to ``"package.module:Attribute"`` and the optional extra that installs what the
module needs; packages add names with an entry-point group; :attr:`Registry.view` is
a read-only view.

>>> r = Registry("Thing", "functionfuse.things")
>>> r.register("path", "os.path:join")
>>> r.load("path")("a", "b") == __import__("os").path.join("a", "b")
True
>>> r.register("path", "posixpath:join")
Traceback (most recent call last):
...
functionfuse.errors.ConfigurationError: Thing 'path' is already registered for 'os.path:join'. Pass clobber=True to replace it.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

from .errors import ConfigurationError, missing_dependency

__all__ = ["Registry"]


class Registry:
    """Names mapped to ``(target, extra)``: *target* is ``"package.module:Attribute"``,
    *extra* the ``functionfuse[extra]`` that installs its dependencies (None: nothing
    to install, an ImportError is raised as it is).

    :param what: what a name stands for, in messages ("Storage kind").
    :param group: the entry-point group that adds names (an entry point's value is a
        target), read when a name is not found.
    :param entry_point_extra: the extra recorded for names added by entry points.
    """

    def __init__(self, what: str, group: str, *, entry_point_extra: str | None = None) -> None:
        self.what = what
        self.group = group
        self.entry_point_extra = entry_point_extra
        self._entries: dict[str, tuple[str, str | None]] = {}
        #: a read-only view of the names and their ``(target, extra)``
        self.view = types.MappingProxyType(self._entries)

    def register(self, name: str, target: str, *, extra: str | None = None, clobber: bool = False) -> None:
        """Map *name* to *target*; refuse to replace another target unless *clobber*."""
        known = self._entries.get(name)
        if known is not None and not clobber and known[0] != target:
            raise ConfigurationError(
                f"{self.what} {name!r} is already registered for {known[0]!r}. Pass clobber=True to replace it."
            )
        self._entries[name] = (target, extra)

    def unregister(self, name: str) -> None:
        """Remove *name* (a name that is not registered is ignored)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        """Whether *name* is registered, reading the entry points when it is not (yet)."""
        if name not in self._entries:
            self._load_entry_points()
        return name in self._entries

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            self._entries.setdefault(ep.name, (ep.value, self.entry_point_extra))

    def load(self, name: str) -> Any:
        """The object *name* stands for, its module imported now.

        :raises KeyError: *name* is not registered (check with ``in`` first, to raise
            an error that fits the caller).
        :raises MissingDependencyError: the module cannot be imported and the entry
            names an extra to install.
        """
        target, extra = self._entries[name]
        module, _, attr = target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            if extra is None:
                raise
            raise missing_dependency(getattr(exc, "name", None) or module, extra, exc) from exc
        return getattr(mod, attr)
