"""One KFPWorkflow step: run (or load, or skip) one node inside its container.

``python -m functionfuse.backends.addons._kfpstep --node NAME ...`` is the command of
every container step of a pipeline compiled by
:class:`~functionfuse.backends.addons.kfpback.KFPWorkflow`. The step

1. loads the DAG snapshot baked into the image (functions and arguments serialised
   with cloudpickle when the image was built: no user script runs again here);
2. rebuilds the workflow around it with :class:`~functionfuse.baseworkflow.BaseWorkflow`
   and, if the pipeline passes one, the storage;
3. decides what to do with its node: the action compiled into the pipeline, or, with
   ``--action auto``, the resume plan of the core computed now from storage (run,
   replay, load or skip, as every other backend decides);
4. reads the values of the parent nodes from the input artifact files, runs the node
   as the same :class:`~functionfuse.engine.NodeTask` every executor runs
   (``BaseWorkflow.run_node``: plugins, error naming, saving to storage with metadata
   and the plan's fingerprint record), and writes its value (and, for class nodes, the instance after the call)
   to the output artifact files.

A node that is loaded writes its stored value; a skipped node writes a marker that no
running step reads (the plan guarantees it). A stored result found damaged when loaded
fails the step (naming the node and how to recompute it), unless the pipeline was built
with ``--damaged mark`` (local runs): the step then writes a :class:`DamagedResult`
marker and succeeds with the action ``damaged``; a step that gets such a marker as an
input passes it on without running (action ``passed-on``), and the runner plans again.
This module imports neither kfp nor docker: the step image needs functionfuse and
cloudpickle only.
"""

from __future__ import annotations

import argparse
import base64
import copyreg
import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import sys
import time
import types
from typing import Any, NamedTuple, Sequence

from ...baseworkflow import LOAD, REPLAY, RUN, RUNS, SKIP, BaseWorkflow
from ...errors import (
    ConfigurationError,
    CorruptedResultError,
    FunctionFuseError,
    SerializationError,
    StalePlanError,
    TaskNotFoundError,
    missing_dependency,
)
from ...workflow import NODE_TYPES, Decorated, MethodNode, workflow

__all__ = ["SNAPSHOT_PATH", "DAMAGED", "PASSED_ON", "DamagedResult", "dump_snapshot",
           "load_snapshot", "dump_value", "load_value", "encode_storage", "main"]

log = logging.getLogger("functionfuse.kfp")

#: where the image holds the DAG snapshot
SNAPSHOT_PATH = "/opt/functionfuse-kfp/dag.pkl"
SNAPSHOT_FORMAT = 1
ACTIONS = (RUN, REPLAY, LOAD, SKIP, "auto")
#: the actions of a step that met a damaged stored result (``--damaged mark``): its own, or an input's
DAMAGED, PASSED_ON = "damaged", "passed-on"


def _cloudpickle() -> Any:
    try:
        import cloudpickle
    except ImportError as exc:  # pragma: no cover - the kfp extra installs it
        raise missing_dependency("cloudpickle", "kfp", exc) from exc
    return cloudpickle


class _NotComputed:
    """What a skipped node (or the instance state of a loaded call) writes to its artifacts."""

    def __init__(self, node: str, why: str) -> None:
        self.node = node
        self.why = why

    def __repr__(self) -> str:
        return f"<not computed: node {self.node!r} ({self.why})>"


class DamagedResult(NamedTuple):
    """What a step writes instead of a value when its node's stored result is damaged
    (``--damaged mark``); a step given it as an input writes it on instead of running.
    Never a result: the runner recomputes *node* in a new plan."""

    node: str
    message: str


class StepFailure:
    """What a failed step leaves in its result artifact: the error, as text."""

    def __init__(self, node: str, kind: str, message: str) -> None:
        self.node = node
        self.kind = kind
        self.message = message


def _rebuild_decorated(target: Any) -> Any:
    return workflow(target)


def _slots(cls: type) -> list[str]:
    return [s for c in cls.__mro__ for s in getattr(c, "__slots__", ()) if s != "__weakref__"]


def _stable_class_id(cls: type) -> None:
    """Give a class that cloudpickle sends by value (one of the user's script) an ID
    derived from its name instead of a random one, so the same DAG pickles to the same
    bytes in every process (the image's content hash depends on them)."""
    cp = sys.modules.get("cloudpickle.cloudpickle")
    by_class = getattr(cp, "_DYNAMIC_CLASS_TRACKER_BY_CLASS", None)
    by_id = getattr(cp, "_DYNAMIC_CLASS_TRACKER_BY_ID", None)
    lock = getattr(cp, "_DYNAMIC_CLASS_TRACKER_LOCK", None)
    by_reference = getattr(cp, "_should_pickle_by_reference", None)
    if by_class is None or by_id is None or lock is None or by_reference is None:
        return  # another cloudpickle: random IDs, the image is rebuilt more often
    try:
        if by_reference(cls):
            return
    except Exception:
        return
    name = f"{cls.__module__}.{getattr(cls, '__ff_qualname__', cls.__qualname__)}"
    stable = "ff" + hashlib.sha256(name.encode()).hexdigest()[:30]
    with lock:
        if cls in by_class or by_id.get(stable) not in (None, cls):
            return  # already tracked, or another class of the same name (redefined)
        by_class[cls] = stable
        by_id[stable] = cls


def _pickler(buffer: io.BytesIO, ranks: dict[int, int] | None = None) -> Any:
    cloudpickle = _cloudpickle()

    class SnapshotPickler(cloudpickle.Pickler):  # type: ignore[name-defined]
        """cloudpickle, plus decorated objects of ``__main__`` by value.

        A decorated function normally pickles as a reference to its module-level name;
        a script's ``__main__`` does not exist in the step, so those travel by value.
        """

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type):
                _stable_class_id(obj)
            if ranks is not None and type(obj) in NODE_TYPES:
                # nodes are numbered by creation in this process; the snapshot numbers them
                # by position, so the same DAG gives the same bytes however it was made
                state = {k: getattr(obj, k) for k in _slots(type(obj)) if hasattr(obj, k)}
                state["_seq"] = ranks[id(obj)]
                return copyreg.__newobj__, (type(obj),), (None, state)  # type: ignore[attr-defined]
            if isinstance(obj, Decorated) and getattr(obj.__wrapped__, "__module__", None) == "__main__":
                return _rebuild_decorated, (obj.__wrapped__,)
            return super().reducer_override(obj)

    return SnapshotPickler(buffer, protocol=5)


def _dumps(obj: Any, what: str, ranks: dict[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    try:
        _pickler(buffer, ranks).dump(obj)
    except Exception as exc:
        raise SerializationError(
            f"{what} cannot be serialised with cloudpickle: {type(exc).__name__}: {exc}. Pass values that "
            "pickle (no open files, locks, sockets or live clients): create such objects inside a node instead."
        ) from exc
    return buffer.getvalue()


def dump_snapshot(wf: BaseWorkflow) -> bytes:
    """The DAG of *wf* as bytes: output nodes, names, plugins and cache policies."""
    g = wf.graph
    names = g.names
    for i, node in enumerate(g.nodes):  # name the node whose arguments do not pickle
        try:
            _dumps((node.func, node.args, node.kwargs), f"Node {names[i]!r}")
        except SerializationError as exc:
            raise SerializationError(
                f"Node {names[i]!r} of workflow {wf.workflow_name!r}: {exc}"
            ) from exc.__cause__
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "workflow_name": wf.workflow_name,
        "outputs": g.output_refs,
        "names": list(names),
        "plugins": {names[i]: p for i, p in sorted(wf.plugins.items())},
        "cache_policy": wf.cache_policy,
        "cache": {names[i]: p for i, p in sorted(wf.policies().per_node.items())},
        # the fingerprints as computed here, where the source is: a step stores them
        # with its result, so plans made here and in the steps agree
        "fingerprints": wf.fingerprints(),
    }
    ranks = {id(node): i for i, node in enumerate(g.nodes)}
    return _dumps(snapshot, f"The DAG of workflow {wf.workflow_name!r}", ranks)


class _SnapshotWorkflow(BaseWorkflow):
    """The workflow of a step: its fingerprints are the ones in the snapshot."""

    snapshot_records: list[dict] = []

    def fingerprints(self) -> list[dict]:
        return self.snapshot_records


def load_snapshot(data: bytes) -> BaseWorkflow:
    """A :class:`BaseWorkflow` around the DAG in *data* (see :func:`dump_snapshot`)."""
    snap = pickle.loads(data)
    if not isinstance(snap, dict) or snap.get("format") != SNAPSHOT_FORMAT:
        raise ConfigurationError(
            "The DAG snapshot in this image has an unknown format: rebuild the image with the "
            "functionfuse version that runs in it (KFPWorkflow.build_image())."
        )
    wf = _SnapshotWorkflow(*snap["outputs"], workflow_name=snap["workflow_name"])
    wf.snapshot_records = snap["fingerprints"]
    names = wf.graph.names
    if names != snap["names"]:
        raise ConfigurationError(
            f"The DAG snapshot of workflow {snap['workflow_name']!r} has {len(snap['names'])} nodes but "
            f"rebuilds with {len(names)} ({sorted(set(names) ^ set(snap['names']))[:5]!r} differ): rebuild the image."
        )
    index = wf.graph.name_index
    for n, plugin in snap["plugins"].items():
        wf.query_class([index[n]], wf).set_plugin(plugin)
    wf.set_cache(snap["cache_policy"])
    for n, policy in snap["cache"].items():
        wf.query_class([index[n]], wf).set_cache(policy)
    return wf


def dump_value(value: Any, path: str, what: str) -> None:
    """Write *value* to the artifact file *path* (atomically)."""
    data = _dumps(value, what)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_value(path: str, what: str) -> Any:
    """Read a value written by :func:`dump_value`."""
    try:
        with open(path, "rb") as f:
            value = pickle.load(f)
    except FileNotFoundError:
        raise TaskNotFoundError(f"{what}: the artifact {path!r} does not exist.") from None
    except Exception as exc:
        raise SerializationError(f"{what}: the artifact {path!r} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    return value


def encode_storage(storage: Any) -> str:
    """*storage* as text for the command line of a step (see :func:`decode_storage`)."""
    return base64.b64encode(_dumps(storage, f"Storage {storage!r}")).decode("ascii")


def decode_storage(text: str) -> Any:
    return pickle.loads(base64.b64decode(text.encode("ascii")))


def _install_aliases(wf: BaseWorkflow) -> None:
    """Make the classes and functions that travelled by value findable by name.

    Storage pickles results with the standard pickler, which refers to a class by module
    and name. The user's script is ``__main__`` where the DAG was built and where the
    results are read back, and a module registered with cloudpickle's
    ``register_pickle_by_value`` may not be importable here; so the same names are
    provided here, in a fresh ``__main__`` module (the step's own names stay out of the
    way) or in a stand-in module, as ``<module>.<name>.__wrapped__`` (what ``@workflow``
    makes of them).
    """
    stand_ins: dict[str, types.ModuleType] = {}
    importable: set[str] = set()
    for node in wf.graph.nodes:
        func = node.instance.func if type(node) is MethodNode else node.func
        modname = getattr(func, "__module__", None)
        qualname = getattr(func, "__ff_qualname__", "")
        if not modname or modname in importable or not qualname or "." in qualname or "<" in qualname:
            continue
        module = stand_ins.get(modname)
        if module is None:
            if modname != "__main__":
                try:
                    importlib.import_module(modname)
                except Exception:
                    pass
                else:
                    importable.add(modname)
                    continue
            module = stand_ins[modname] = types.ModuleType(modname, "names of objects sent by value")
            if modname != "__main__":
                # user code, for fingerprints (as it is where the DAG was built)
                module.__file__ = os.path.join(os.getcwd(), *modname.split(".")) + ".py"
            sys.modules[modname] = module
            parent, _, _ = modname.rpartition(".")
            while parent and parent not in sys.modules:
                sys.modules[parent] = types.ModuleType(parent)
                parent = parent.rpartition(".")[0]
        try:
            func.__qualname__ = f"{qualname}.__wrapped__"
        except (AttributeError, TypeError):
            continue
        if not hasattr(module, qualname):
            setattr(module, qualname, types.SimpleNamespace(__wrapped__=func))


def run_step(
    snapshot: str,
    node: str,
    action: str,
    storage: str | None,
    inputs: Sequence[tuple[str, str]],
    result: str,
    state: str | None,
    damaged: str = "fail",
) -> tuple[str, float]:
    """Run one step; returns the action taken and the seconds the node ran.

    *damaged*: what a damaged stored result does: ``fail`` the step, or ``mark`` it
    (write a :class:`DamagedResult`, which the steps needing it pass on)."""
    with open(snapshot, "rb") as f:
        wf = load_snapshot(f.read())
    _install_aliases(wf)
    g = wf.graph
    if node not in g.name_index:
        raise ConfigurationError(f"Node {node!r} is not in the DAG snapshot of workflow {wf.workflow_name!r}.")
    i = g.name_index[node]
    if storage:
        wf.set_storage(decode_storage(storage))
    # the plan, computed once: for the action (``auto``) and the fingerprint record the
    # result is stored with (that of the node computed from its parents' stored results)
    plan = wf.make_plan(wf.stored_metadata()) if wf.storage is not None and action in ("auto", RUN) else None
    if action == "auto":
        if plan is None:
            action = RUN
        else:
            wf.warn_stale(plan)
            if plan.unreadable:
                wf.warn_unreadable(plan.unreadable)
            action = plan.actions[i]
    log.info("node %r of workflow %r: %s", node, wf.workflow_name, action)
    if action == SKIP:
        _write(node, result, state, _NotComputed(node, "skipped: stored, and no node that runs needs it"),
               _NotComputed(node, "skipped"))
        return action, 0.0
    if action == LOAD:
        if wf.storage is None:
            raise ConfigurationError(f"Node {node!r} is to be loaded from storage, but the step was given no storage.")
        try:
            value = wf.load_result(i)
        except CorruptedResultError as exc:
            if damaged != "mark":
                raise CorruptedResultError(
                    f"The stored result of node {node!r} of workflow {wf.workflow_name!r} is damaged ({exc}). "
                    f"Remove it (functionfuse storage rm {wf.workflow_name} {node!r}) and run the pipeline again: "
                    "the node is then recomputed.",
                    path=exc.path,
                ) from exc
            log.warning("node %r: stored result damaged, to be recomputed: %s", node, exc)
            _write(node, result, state, DamagedResult(node, str(exc)), DamagedResult(node, str(exc)))
            return DAMAGED, 0.0
        _write(node, result, state, value, _NotComputed(node, "loaded from storage: the instance is not stored"))
        return action, 0.0
    if action not in RUNS:
        raise ConfigurationError(f"Unknown step action {action!r}; expected one of {', '.join(ACTIONS)}.")
    values: dict[int, Any] = {}
    read = [(parent, load_value(path, f"Input {parent!r} of node {node!r}")) for parent, path in inputs]
    for parent, v in read:
        if type(v) is DamagedResult:  # computed from a damaged result it would be wrong: no run
            log.warning("node %r not run: its input %r is a damaged stored result", node, v.node)
            _write(node, result, state, v, v)
            return PASSED_ON, 0.0
    for parent, v in read:
        j = g.name_index[parent]
        if isinstance(v, _NotComputed):
            raise StalePlanError(
                f"Node {node!r} needs the value of node {parent!r}, which this run did not compute ({v.why}). "
                "Storage changed since the pipeline was compiled: compile and run it again."
            )
        values[j] = v
    save = plan is not None and action == RUN
    t = time.perf_counter()
    value = wf.run_node(i, values, save=save, record=plan.record(i) if plan is not None and save else None)
    seconds = time.perf_counter() - t
    log.info("node %r ran in %.3f s%s", node, seconds, " (stored)" if save else "")
    instance = values[g.index_of(g.nodes[i].instance)] if state else None  # type: ignore[attr-defined]
    _write(node, result, state, value, instance)
    return action, seconds


def _write(node: str, result: str, state: str | None, value: Any, instance: Any) -> None:
    """Write the step's *value* and, for a method call (*state*), the *instance* after it."""
    dump_value(value, result, f"Result of node {node!r}")
    if state:
        dump_value(instance, state, f"Instance state after node {node!r}")


def write_executor_output(executor_input: str, metadata: dict) -> None:
    """Write KFP's executor output file: the output artifacts of the step, with *metadata*
    (what the local runner and the KFP UI read)."""
    spec = json.loads(executor_input)
    outputs = spec.get("outputs", {})
    path = outputs.get("outputFile")
    if not path:
        return
    artifacts = {}
    for name, listing in (outputs.get("artifacts") or {}).items():
        a = listing["artifacts"][0]
        artifacts[name] = {"artifacts": [{"name": a.get("name", name), "uri": a.get("uri", ""), "metadata": metadata}]}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"artifacts": artifacts}, f)


def write_status(path: str | None, node: str, state: str, **fields: Any) -> None:
    """Write the step's status file *path* (JSON, atomically): *node*, *state*
    (``started``, ``succeeded``, ``failed``) and *fields*; what local runs read back."""
    if not path:
        return
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"node": node, "state": state, **fields}, f)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functionfuse.backends.addons._kfpstep", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the DAG snapshot loads")
    parser.add_argument("--node", help="the node this step runs")
    parser.add_argument("--action", default="auto", choices=ACTIONS)
    parser.add_argument("--snapshot", default=SNAPSHOT_PATH)
    parser.add_argument("--storage", default=None, help="the storage, encoded (see encode_storage)")
    parser.add_argument("--input", nargs=2, action="append", default=[], metavar=("PARENT", "PATH"))
    parser.add_argument("--result", help="output artifact: the node's value")
    parser.add_argument("--damaged", default="fail", choices=("fail", "mark"), help="a damaged stored result "
                        "fails the step, or is marked for the steps after it and the runner (local runs)")
    parser.add_argument("--state", default=None, help="output artifact: the instance after a method call")
    parser.add_argument("--status", default=None, help="output artifact: the step's status (JSON), written when it "
                        "starts and when it ends")
    parser.add_argument("--executor-input", default=None, help="KFP's executor input (JSON): the step then writes "
                        "KFP's executor output file, listing its output artifacts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.check:
        with open(args.snapshot, "rb") as f:
            wf = load_snapshot(f.read())
        print(f"DAG snapshot of workflow {wf.workflow_name!r}: {len(wf.graph)} nodes load")
        return 0
    if not args.node or not args.result:
        parser.error("--node and --result are required")
    write_status(args.status, args.node, "started")
    try:
        action, seconds = run_step(
            args.snapshot, args.node, args.action, args.storage, [tuple(p) for p in args.input], args.result, args.state,
            args.damaged,
        )
        if args.executor_input:
            write_executor_output(args.executor_input, {"node": args.node, "action": action, "seconds": seconds})
    except FunctionFuseError as exc:
        log.error("%s: %s", type(exc).__name__, exc, exc_info=exc.__cause__ is not None)
        write_status(args.status, args.node, "failed", kind=type(exc).__name__, message=str(exc))
        try:  # for whoever reads the step's files (run_local): what failed
            dump_value(StepFailure(args.node, type(exc).__name__, str(exc)), args.result, "the failure")
        except Exception:
            pass
        return 1
    except Exception as exc:  # a defect: its traceback goes to the log, the status names it
        write_status(args.status, args.node, "failed", kind=type(exc).__name__, message=str(exc))
        raise
    marker = load_value(args.result, f"Node {args.node!r}") if action in (DAMAGED, PASSED_ON) else None
    damage = {"damaged": marker.node, "message": marker.message} if marker else {}  # the runner plans again
    write_status(args.status, args.node, "succeeded", action=action, seconds=seconds, **damage)
    return 0


if __name__ == "__main__":
    # run the module's own copy, so the objects a step writes (StepFailure...) are
    # functionfuse's classes, not classes of __main__
    from functionfuse.backends.addons._kfpstep import main as _main

    sys.exit(_main())
