"""What runs in the Ray workers for :mod:`functionfuse.backends.builtin.rayback`
(and the Ray Workflows addon): the node runner, the unit runner, the actor of a class
node, and how a task is pickled.

A Ray task gets a node's :class:`~functionfuse.engine.NodeTask` (index, name, workflow,
compiled call, plugin hook, storage, metadata, parent indices), or an execution unit's
:class:`~functionfuse.engine.UnitTask` (the NodeTasks of its nodes, in order), pickled
by :func:`pack_task`, and its parents' values as top-level arguments, which Ray resolves.
The compiled call is a closure of :mod:`functionfuse._calls`, whose code every worker
has: it travels as the name of its code and its cell contents (``_rebuild_closure``),
not by value.
"""

from __future__ import annotations

import importlib
import io
import types
from datetime import datetime
from typing import Any, Callable, Sequence

import ray
from ray import cloudpickle

from ...baseworkflow import COMPILED_CALLS_MODULE
from ...engine import NodeFailure, NodeTask, UnitTask
from ...planner import RUNS
from ...workflow import NODE_TYPES, ClassNode, MethodNode, NodeItem


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
        if t in NODE_TYPES or t is NodeItem:
            return _none, ()
        if t is not types.FunctionType or obj is self._skip or obj.__module__ == __name__:
            return super().reducer_override(obj)
        if obj.__module__ in CLOSURE_MODULES and obj.__closure__:
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


#: modules whose closures are sent by the name of their code (the compiled node calls)
CLOSURE_MODULES = frozenset({COMPILED_CALLS_MODULE})
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


def pack_task(task: NodeTask | UnitTask, functions: dict | None = None) -> bytes:
    """*task* (a node's or a unit's) pickled for a Ray task; *functions* caches pickled
    functions within a run (a unit's nodes that share a function carry it once)."""
    buf = io.BytesIO()
    _SpecPickler(buf, {} if functions is None else functions).dump(task)
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
def _portable(f: NodeFailure) -> NodeFailure:
    """*f* with an error that can travel back to the driver (else its text)."""
    try:
        cloudpickle.loads(cloudpickle.dumps(f.error))
        return f
    except Exception:
        return NodeFailure(f.index, f.stage, RuntimeError(f"{type(f.error).__qualname__}: {f.error}"), f.tb, f.done)


class _Elapsed:
    seconds = 0.0


_ELAPSED = _Elapsed()  # the run time of the last node this worker ran (tasks run one at a time)


def run_packed(packed: bytes, values: Sequence[Any], k: int | None = None, obj: Any = None) -> Any:
    """Run one node where it was scheduled (see :meth:`NodeTask.run`).

    *values* are the results of the node's parents (in the order of the task's parent
    indices); a method call also gets its instance's index *k* and object *obj*.
    """
    task: NodeTask = cloudpickle.loads(packed)
    R = dict(zip(task.parents, values))
    if k is not None:
        R[k] = obj
    try:
        value, _ELAPSED.seconds = task.run(R)
    except NodeFailure as f:
        raise _portable(f) from None
    return value


def _run_node_task(spec: bytes, *values: Any) -> tuple[Any, float]:
    """A function node: ``values`` are its data parents' results, resolved by Ray.
    Returns the value and the done token (the seconds the node's function took)."""
    return run_packed(spec, values), _ELAPSED.seconds


def stored_since(meta: Any, wanted: dict | None, since: datetime) -> bool:
    """Whether *meta* (stored metadata) is the result of the task whose metadata is
    *wanted* (same fingerprint record), started at *since* or later: stored by the
    task of a unit submitted at *since*, not before it."""
    if not isinstance(meta, dict) or wanted is None:
        return False
    try:
        started = datetime.fromisoformat(meta["started"])
    except (KeyError, TypeError, ValueError):
        return False
    return meta.get("fingerprint") == wanted.get("fingerprint") and started >= since


def _resumed(unit: UnitTask, values: dict, since: datetime) -> tuple[UnitTask | None, dict, list]:
    """A unit run again (Ray retries a task whose worker died) goes on after the nodes
    its first attempt stored: (what is left to run or None, the exported values read
    back, the nodes done). A first attempt, or anything unreadable: the whole unit."""
    tasks = unit.tasks
    first = tasks[0]
    storage = first.storage
    try:
        if not stored_since(storage.read_metadata(first.workflow, first.name), first.meta, since):
            return unit, {}, []  # a first attempt: one read of a result not there yet
        metas = storage.read_metadata_many(first.workflow, [t.name for t in tasks])
        k = 0
        while k < len(tasks) and stored_since(metas.get(tasks[k].name), tasks[k].meta, since):
            k += 1
        rest = tasks[k:]
        inside = {t.index for t in rest}
        wanted = sorted({p for t in rest for p in t.parents if p not in inside} | set(unit.exports))
        before = {t.index: t for t in tasks[:k]}
        for i in wanted:
            if i in before:
                values[i] = storage.read_task(first.workflow, before[i].name)
    except Exception:  # cannot tell, or cannot read back: run the whole unit again
        return unit, {}, []
    done = [(t.index, metas[t.name].get("duration_s") or 0.0) for t in tasks[:k]]
    exported = {i: values[i] for i in unit.exports if i in before}
    if not rest:
        return None, exported, done
    parents = tuple(sorted({p for t in rest for p in t.parents if p not in inside}))
    return UnitTask(rest, parents, [i for i in unit.exports if i in inside]), exported, done


def _run_unit_task(spec: bytes, since: str | None, *values: Any) -> Any:
    """An execution unit: ``values`` are the results of the unit's outside parents
    (``UnitTask.parents``), resolved by Ray. Returns the values of its exports, in
    order, then the done token: ``[(node index, seconds)...]`` of every node (the task
    has ``len(exports) + 1`` returns). A node that fails raises its NodeFailure, whose
    ``done`` lists the nodes stored before it. *since* (ISO time the unit was submitted,
    when its nodes save): a retry skips the nodes stored by an earlier attempt."""
    unit: UnitTask = cloudpickle.loads(spec)
    exports = unit.exports
    R = dict(zip(unit.parents, values))
    todo: UnitTask | None = unit
    out: dict[int, Any] = {}
    done: list = []
    if since is not None:
        todo, out, done = _resumed(unit, R, datetime.fromisoformat(since))
    if todo is not None:
        try:
            ran, times = todo.run(R)
        except NodeFailure as f:
            f.done = (*done, *f.done)
            raise _portable(f) from None
        except BaseException as exc:  # KeyboardInterrupt, SystemExit raised by a node in this worker
            if todo.at is None:
                raise
            failure = NodeFailure.capture(todo.at, "run", exc)
            failure.done = (*done, *todo.done)
            raise _portable(failure) from None
        out.update(ran)
        done.extend(times)
    if not exports:
        return done  # one return: the token alone
    return (*[out[i] for i in exports], done)


def load_stored(index: int, name: str, workflow_name: str, storage: Any) -> Any:
    """Read node *index*'s stored result (in a task placed where the storage lives)."""
    try:
        return storage.read_task(workflow_name, name)
    except Exception as exc:
        raise _portable(NodeFailure.capture(index, "load", exc)) from None


def _load_node_task(index: int, name: str, workflow_name: str, storage: Any) -> tuple[Any, None]:
    """A stored result, read where the storage lives; its children get it from here."""
    return load_stored(index, name, workflow_name, storage), None


_run_node: Any = ray.remote(num_returns=2)(_run_node_task)
_load_node: Any = ray.remote(num_returns=2)(_load_node_task)
#: num_returns is set per unit (its exports and the done token)
_run_unit: Any = ray.remote(_run_unit_task)
_NO_INSTANCE = object()


class _InstanceHost:
    """The actor of a class node: holds the object; its method calls run here, in order."""

    def __init__(self) -> None:
        self.obj: Any = _NO_INSTANCE

    @ray.method(num_returns=2)
    def construct(self, spec: bytes, send_back: bool, *values: Any) -> tuple[Any, float]:
        self.obj = run_packed(spec, values)
        return (self.obj if send_back else None), _ELAPSED.seconds

    @ray.method(num_returns=2)
    def call(self, spec: bytes, k: int, previous: Any, *values: Any) -> tuple[Any, float]:
        # ``previous`` (the token of the previous call) is resolved by Ray before this
        # runs: if an earlier call on this instance failed, this call fails with it.
        return run_packed(spec, values, k, self.obj), _ELAPSED.seconds

    def snapshot(self, previous: Any) -> Any:
        """The object as the calls submitted before this left it (actor tasks run in
        the order submitted), for a node that takes it; fails as *previous* did."""
        return self.obj


_Instance: Any = ray.remote(_InstanceHost)


# -- what the driver needs to know of class nodes (actors) in a plan -----------------------------
def instance_values_needed(g: Any, actions: Sequence[str]) -> set[int]:
    """Class nodes whose object itself is needed (an output, or an argument of a node
    other than its own method calls): only those send the object back from the actor."""
    outputs = set(g.outputs)
    needed: set[int] = set()
    for k, node in enumerate(g.nodes):
        if type(node) is not ClassNode:
            continue
        if k in outputs:
            needed.add(k)
            continue
        for c in g.children[k]:
            if actions[c] in RUNS and k in g.data_parents[c]:
                child = g.nodes[c]
                if type(child) is not MethodNode or child.instance is not node:
                    needed.add(k)
                    break
    return needed


def actor_users(g: Any, actions: Sequence[str]) -> dict[int, int]:
    """Class nodes whose actor runs calls: how many running nodes need the actor
    (their calls, and the nodes taking the object, which get it from the actor as
    the calls written before them left it); the actor is let go after the last."""
    users: dict[int, int] = {}
    for k, chain in g.chains.items():
        if actions[k] in RUNS and any(actions[j] in RUNS for j in chain):
            users[k] = sum(1 for c in set(g.children[k]) if actions[c] in RUNS and k in g.data_parents[c])
    return users
