"""What runs in the Ray workers for :mod:`functionfuse.backends.builtin.rayback`
(and the Ray Workflows addon): the node runner, the actor of a class node, and how a
node's call is pickled for a task.

A task gets a node's *spec* (index, name, workflow, compiled call, plugin hook,
storage, metadata, parent indices) pickled by :func:`_pack`, and its parents' values
as top-level arguments, which Ray resolves.
"""

from __future__ import annotations

import importlib
import io
import time
import traceback
import types
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import ray
from ray import cloudpickle

from ...errors import StorageError
from ...workflow import ClassNode, MethodNode, Node, NodeItem, executing_nodes


# -- pickling a node's call for a task ------------------------------------------------------
class _SpecPickler(cloudpickle.Pickler):
    """Pickles what a task needs to run a node, without the graph.

    A compiled node call keeps the Node objects of its arguments in its constants (it
    replaces them by their values when it runs); pickled, each would drag the whole
    graph along through its links to its children. They are never used where the node
    runs, so they are pickled as None.
    """

    def __init__(self, file: Any, functions: dict, skip: Any = None) -> None:
        super().__init__(file, protocol=5)
        self._functions = functions
        self._skip = skip

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is Node or t is ClassNode or t is MethodNode or t is NodeItem:
            return _none, ()
        if t is not types.FunctionType or obj is self._skip or obj.__module__ == __name__:
            return super().reducer_override(obj)
        if obj.__module__ in _CLOSURE_MODULES and obj.__closure__:
            # a compiled call (a closure of the core): its code is in the worker's
            # functionfuse already; send the name of its code and its cell contents
            try:
                cells = tuple(c.cell_contents for c in obj.__closure__)
            except ValueError:  # an empty cell
                return super().reducer_override(obj)
            code = obj.__code__
            return _rebuild_closure, (obj.__module__, code.co_name, code.co_firstlineno, cells, obj.__defaults__)
        # any other function (a node's own function, a plugin's): pickled once per run,
        # unpickled once per worker (a function defined in __main__ is pickled by value)
        entry = self._functions.get(id(obj))
        if entry is None:
            buf = io.BytesIO()
            _SpecPickler(buf, self._functions, skip=obj).dump(obj)
            entry = self._functions[id(obj)] = (obj, buf.getvalue())
        return _load_function, (entry[1],)


def _none() -> None:
    return None


#: modules whose closures are sent by the name of their code
_CLOSURE_MODULES = frozenset({"functionfuse.baseworkflow"})
_CODES: dict[tuple[str, str, int], types.CodeType] = {}


def _rebuild_closure(module: str, name: str, line: int, cells: tuple, defaults: tuple | None) -> Callable:
    code = _CODES.get((module, name, line))
    if code is None:
        mod = importlib.import_module(module)
        stack = [v.__code__ for v in vars(mod).values() if type(v) is types.FunctionType]
        while stack:
            c = stack.pop()
            _CODES.setdefault((module, c.co_name, c.co_firstlineno), c)
            stack.extend(k for k in c.co_consts if type(k) is types.CodeType)
        code = _CODES[(module, name, line)]
    mod_globals = importlib.import_module(module).__dict__
    return types.FunctionType(code, mod_globals, code.co_name, defaults, tuple(types.CellType(v) for v in cells))


def _pack(spec: tuple, functions: dict | None = None) -> bytes:
    """*spec* pickled for a task; *functions* caches pickled functions within a run."""
    buf = io.BytesIO()
    _SpecPickler(buf, {} if functions is None else functions).dump(spec)
    return buf.getvalue()


_LOADED_FUNCTIONS: dict[bytes, Callable] = {}


def _load_function(data: bytes) -> Callable:
    fn = _LOADED_FUNCTIONS.get(data)
    if fn is None:
        if len(_LOADED_FUNCTIONS) > 4096:
            _LOADED_FUNCTIONS.clear()
        fn = _LOADED_FUNCTIONS[data] = cloudpickle.loads(data)
    return fn


# -- the node runner -----------------------------------------------------------------------
class _NodeFailure(Exception):
    """Raised in a worker: which node failed, at which stage (run, save, load), the
    error (if it can travel) and the remote traceback."""

    def __init__(self, index: int, stage: str, error: BaseException, tb: str) -> None:
        super().__init__(index, stage, error, tb)
        self.index, self.stage, self.error, self.tb = index, stage, error, tb

    def __reduce__(self) -> tuple:
        return (_NodeFailure, (self.index, self.stage, self.error, self.tb))

    def __str__(self) -> str:
        return f"node #{self.index} failed ({self.stage}): {type(self.error).__name__}: {self.error}\n{self.tb}"

    @classmethod
    def capture(cls, index: int, stage: str, exc: BaseException) -> "_NodeFailure":
        tb = traceback.format_exc()
        try:
            cloudpickle.loads(cloudpickle.dumps(exc))
            error = exc
        except Exception:
            error = RuntimeError(f"{type(exc).__qualname__}: {exc}")
        return cls(index, stage, error, tb)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class _Elapsed:
    seconds = 0.0


_ELAPSED = _Elapsed()  # the run time of the last node this worker ran (tasks run one at a time)


def _execute_node(packed: bytes, values: Sequence[Any], k: int | None = None, obj: Any = None) -> Any:
    """Run one node where it was scheduled: plugin, function, then save if asked.

    *values* are the results of the node's parents (in the order of the spec's parent
    indices); a method call also gets its instance's index *k* and object *obj*.
    """
    i, name, wf, call, init, storage, meta, parents = cloudpickle.loads(packed)
    R = dict(zip(parents, values))
    if k is not None:
        R[k] = obj
    with executing_nodes():
        try:
            if init is not None:
                init()
            started = _now() if storage is not None else ""
            t = time.perf_counter()
            value = call(R)
            elapsed = time.perf_counter() - t
        except Exception as exc:
            raise _NodeFailure.capture(i, "run", exc) from None
    _ELAPSED.seconds = elapsed
    if storage is not None:
        meta = dict(meta)
        meta.update(started=started, finished=_now(), duration_s=round(elapsed, 6))
        try:
            storage.save(wf, name, value, meta)
        except (StorageError, OSError) as exc:
            raise _NodeFailure.capture(i, "save", exc) from None
    return value


def _run_node_task(spec: bytes, *values: Any) -> tuple[Any, float]:
    """A function node: ``values`` are its data parents' results, resolved by Ray.
    Returns the value and the done token (the seconds the node's function took)."""
    return _execute_node(spec, values), _ELAPSED.seconds


def _load_node_task(index: int, name: str, workflow_name: str, storage: Any) -> tuple[Any, None]:
    """Read a stored result where the storage lives; its children get it from here."""
    try:
        return storage.read_task(workflow_name, name), None
    except Exception as exc:
        raise _NodeFailure.capture(index, "load", exc) from None


_run_node: Any = ray.remote(num_returns=2)(_run_node_task)
_load_node: Any = ray.remote(num_returns=2)(_load_node_task)
_NO_INSTANCE = object()


class _InstanceHost:
    """The actor of a class node: holds the object; its method calls run here, in order."""

    def __init__(self) -> None:
        self.obj: Any = _NO_INSTANCE

    @ray.method(num_returns=2)
    def construct(self, spec: bytes, send_back: bool, *values: Any) -> tuple[Any, float]:
        self.obj = _execute_node(spec, values)
        return (self.obj if send_back else None), _ELAPSED.seconds

    @ray.method(num_returns=2)
    def call(self, spec: bytes, k: int, previous: Any, *values: Any) -> tuple[Any, float]:
        # ``previous`` (the token of the previous call) is resolved by Ray before this
        # runs: if an earlier call on this instance failed, this call fails with it.
        return _execute_node(spec, values, k, self.obj), _ELAPSED.seconds


_Instance: Any = ray.remote(_InstanceHost)
