"""Plugins: code that prepares the environment right before a node runs.

A plugin is set on the nodes of a query (``workflow.query("^train").set_plugin(p)``).
For every node it applies to, a backend calls ``local_initialize()`` in the driver,
then calls the function returned by ``remote_initialize()`` in the process that runs
the node, just before the node's function. Both hooks may take a keyword argument
``node_name``.

The seed import path :mod:`functionfuse.backends.plugins` re-exports this module;
it lives in the core so that the core (which calls :func:`prepare`) does not import
the backends.
"""

from __future__ import annotations

import inspect
import random
from typing import Any, Callable, Sequence

import xxhash

__all__ = ["Plugin", "InitializerPlugin", "RandomStatePlugin", "PluginCollection", "prepare"]


class Plugin:
    """Base class: both hooks do nothing."""

    def local_initialize(self, *, node_name: str | None = None) -> Any:
        """Called in the driver before the node is submitted."""
        return None

    def remote_initialize(self, *, node_name: str | None = None) -> Callable[[], Any] | None:
        """Return a function to call where the node runs, just before it."""
        return None


class InitializerPlugin(Plugin):
    """Run *func* (no arguments) before each node it applies to, where the node runs.

    >>> calls = []
    >>> prepare(InitializerPlugin(lambda: calls.append(1)), "n")()
    >>> calls
    [1]
    """

    def __init__(self, func: Callable[[], Any]) -> None:
        if not callable(func):
            raise TypeError(f"InitializerPlugin needs a callable, got {func!r}")
        self._func = func

    def remote_initialize(self, *, node_name: str | None = None) -> Callable[[], Any]:
        return self._func


def _seed_std_and_numpy(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed % (2**32))


class RandomStatePlugin(Plugin):
    """Seed random number generators before each node.

    The seed of a node is ``min + (seed + h(node name)) mod (max - min + 1)``, with
    ``h`` a stable hash: it depends only on the base seed and the node's name, so a
    resumed run, or a parallel backend running nodes in another order, seeds each node
    the same way. ``seed_func(seed)`` applies it (default: Python's ``random`` and
    NumPy's global generator).

    >>> p = RandomStatePlugin(min=0, max=9, seed=1, seed_func=lambda s: None)
    >>> p.seed_for("train") == p.seed_for("train")
    True
    """

    def __init__(
        self,
        min: int = 0,
        max: int = 2**32 - 1,
        seed: int = 0,
        seed_func: Callable[[int], Any] | None = None,
    ) -> None:
        if max < min:
            raise ValueError(f"RandomStatePlugin needs min <= max, got min={min}, max={max}")
        self.min, self.max, self.seed = min, max, seed
        self.seed_func = seed_func or _seed_std_and_numpy

    def seed_for(self, node_name: str) -> int:
        span = self.max - self.min + 1
        return self.min + (self.seed + xxhash.xxh3_64_intdigest(node_name.encode())) % span

    def remote_initialize(self, *, node_name: str | None = None) -> Callable[[], Any]:
        seed = self.seed_for(node_name or "")
        set_seed = self.seed_func

        def apply() -> None:
            set_seed(seed)

        return apply


class PluginCollection(Plugin):
    """Several plugins applied in order."""

    def __init__(self, plugins: Sequence[Any]) -> None:
        self.plugins = list(plugins)

    def local_initialize(self, *, node_name: str | None = None) -> list:
        return [_call(p.local_initialize, node_name) for p in self.plugins]

    def remote_initialize(self, *, node_name: str | None = None) -> Callable[[], None]:
        funcs = [f for f in (_call(p.remote_initialize, node_name) for p in self.plugins) if f is not None]

        def apply() -> None:
            for f in funcs:
                f()

        return apply


def _call(hook: Callable, node_name: str | None) -> Any:
    """Call a hook, passing ``node_name`` only to hooks that accept it."""
    try:
        params = inspect.signature(hook).parameters
    except (TypeError, ValueError):
        return hook()
    if "node_name" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return hook(node_name=node_name)
    return hook()


def prepare(plugin: Any, node_name: str) -> Callable[[], Any]:
    """Run a plugin's driver-side hook and return its node-side hook (never None)."""
    _call(plugin.local_initialize, node_name)
    fn = _call(plugin.remote_initialize, node_name)
    return fn if fn is not None else _noop


def _noop() -> None:
    return None
