"""Plugins: code that prepares the environment right before a node runs.

The seed import path of :mod:`functionfuse.plugins` (where they are defined, in the
core): ``from functionfuse.backends.plugins import RandomStatePlugin``.
"""

from ...plugins import InitializerPlugin, Plugin, PluginCollection, RandomStatePlugin, prepare

__all__ = ["Plugin", "InitializerPlugin", "RandomStatePlugin", "PluginCollection", "prepare"]
