"""functionfuse: write a DAG once with ``@workflow``, run it on any backend.

>>> from functionfuse import workflow
>>> from functionfuse.backends.builtin.localback import LocalWorkflow
>>> @workflow
... def add(a, b):
...     return a + b
>>> total = add(add(1, 2).set_name("three"), 4).set_name("seven")
>>> LocalWorkflow(total, workflow_name="doc").run()
7

Importing this package imports none of the optional engines (Ray, Prefect, KFP,
Dask, ...); backends and serializers that need them import them on use.
"""

from ._version import __version__
from .errors import FunctionFuseError
from .workflow import Node, task, workflow

__all__ = ["workflow", "task", "Node", "FunctionFuseError", "__version__"]
