"""One KFPWorkflow step: run (or load, or skip) its nodes inside its container.

``python -m functionfuse.backends.addons._kfpstep --node NAME [--node NAME ...] ...`` is the command of
every container step of a pipeline compiled by
:class:`~functionfuse.backends.addons.kfpback.KFPWorkflow`. The step

1. loads the DAG snapshot baked into the image (functions and arguments serialised
   with cloudpickle when the image was built: no user script runs again here);
2. rebuilds the workflow around it with :class:`~functionfuse.baseworkflow.BaseWorkflow`
   and, if the pipeline passes one, the storage;
3. decides what to do with each of its nodes: the action compiled into the pipeline,
   or, with ``--action auto``, the resume plan of the core computed now from storage
   (run, replay, load or skip, as every other backend decides);
4. reads the values of the parents outside the step from the input artifact files and
   runs its nodes in order (one node, or an execution unit of
   :mod:`functionfuse.units`), each as the same :class:`~functionfuse.engine.NodeTask`
   every executor runs (``BaseWorkflow.run_node``: plugins, error naming, saving to
   storage with metadata and the plan's fingerprint record, as soon as it is
   computed), and writes the values later steps read (and, for a method call, the
   instance after the call) to the output artifact files. Its status file is written
   before each node, so a step stopped midway names the node it was running and the
   nodes it completed.

A node that is loaded writes its stored value; a skipped node writes a marker that no
running step reads (the plan guarantees it). A stored result found damaged when loaded
fails the step (naming the node and how to recompute it), unless the pipeline was built
with ``--damaged mark`` (local runs): the step then writes a :class:`DamagedResult`
marker and succeeds with the action ``damaged``; a step that gets such a marker as an
input passes it on without running (action ``passed-on``), and the runner plans again.
This module imports neither kfp nor docker: the step image needs functionfuse and
cloudpickle only. It is longer than 500 lines because the snapshot (what the image
holds) and the step that reads it belong together: a change to one format is a change
to the other.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
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
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

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
from ...storage import fpindex
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


def _label(nodes: Sequence[str]) -> str:
    """The nodes of a step, for messages: ``node 'a'`` or ``the step of nodes 'a' ... 'z'``."""
    if len(nodes) == 1:
        return f"node {nodes[0]!r}"
    return f"the step of nodes {nodes[0]!r} ... {nodes[-1]!r} ({len(nodes)} nodes)"


def run_step(
    snapshot: str,
    nodes: Sequence[str],
    actions: Sequence[str],
    storage: str | None,
    inputs: Sequence[tuple[str, str]],
    outputs: Mapping[str, str],
    state: str | None,
    damaged: str = "fail",
    *,
    done: list[dict[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run one step: its *nodes* in order (one node, or the nodes of an execution unit);
    returns what it did with each node (``{"node", "action", "seconds"}``, and for a
    damaged stored result ``"damaged"`` and ``"message"``), also appended to *done*
    as each node ends, so a caller sees the nodes done before a failure.

    *actions*: one for every node, or one for all. *outputs*: ``{node: artifact path}``
    of the nodes whose values later steps read (written as soon as each is computed);
    *state*: the instance after the call, for a step of one method call. Each node that
    runs stores its result as soon as it is computed, as in every backend. *progress*
    is called with each node's name before it starts. *damaged*: what a damaged stored
    result does: ``fail`` the step, or ``mark`` it (write a :class:`DamagedResult`,
    which this step's later nodes and the steps needing it pass on).
    """
    with open(snapshot, "rb") as f:
        wf = load_snapshot(f.read())
    _install_aliases(wf)
    g = wf.graph
    unknown = [n for n in nodes if n not in g.name_index]
    if unknown or not nodes:
        raise ConfigurationError(
            f"Node {(unknown or [''])[0]!r} is not in the DAG snapshot of workflow {wf.workflow_name!r}."
        )
    if len(nodes) > 1 and state:
        raise ConfigurationError(f"--state is the instance after one method call; {_label(nodes)} has several.")
    idx = [g.name_index[n] for n in nodes]
    if len(actions) == 1:
        actions = list(actions) * len(nodes)
    if len(actions) != len(nodes):
        raise ConfigurationError(f"{_label(nodes)}: {len(actions)} actions given for {len(nodes)} nodes.")
    if storage:
        wf.set_storage(decode_storage(storage))
    # the plan, computed once: for the actions (``auto``) and the fingerprint record each
    # result is stored with (that of the node computed from its parents' stored results)
    stored = wf.stored_metadata() if wf.storage is not None and any(a in ("auto", RUN) for a in actions) else None
    plan = wf.make_plan(stored) if stored is not None else None
    if "auto" in actions and plan is not None:
        wf.warn_stale(plan)
        if plan.unreadable:
            wf.warn_unreadable(plan.unreadable)
    acts = [(RUN if plan is None else plan.actions[i]) if a == "auto" else a for a, i in zip(actions, idx)]
    for a in acts:
        if a not in (RUN, REPLAY, LOAD, SKIP):
            raise ConfigurationError(f"Unknown step action {a!r}; expected one of {', '.join(ACTIONS)}.")
    with _reads_checked(wf, stored):
        done = [] if done is None else done
        log.info("%s of workflow %r: %s", _label(nodes), wf.workflow_name, ", ".join(sorted(set(acts))))
        values: dict[int, Any] = {}
        for parent, path in inputs:
            values[g.name_index[parent]] = load_value(path, f"Input {parent!r} of {_label(nodes)}")
        running = [a in RUNS for a in acts]
        marker = next((v for v in values.values() if type(v) is DamagedResult), None)
        if marker is not None and any(running):  # computed from a damaged result it would be wrong: no run
            log.warning("%s not run: its input %r is a damaged stored result", _label(nodes), marker.node)
            _pass_on(nodes, 0, outputs, state, marker, PASSED_ON, done)
            return done
        # where each value is needed last in this step (values are dropped after that)
        last: dict[int, int] = {}
        for k, i in enumerate(idx):
            if running[k]:
                for p in g.data_parents[i]:
                    last[p] = k
        for k, i in enumerate(idx):
            node, action = nodes[k], acts[k]
            if progress is not None:
                progress(node)
            seconds = 0.0
            instance: Any = None
            if action == SKIP:
                value: Any = _NotComputed(node, "skipped: stored, and no node that runs needs it")
                instance = _NotComputed(node, "skipped")
            elif action == LOAD:
                if wf.storage is None:
                    raise ConfigurationError(f"Node {node!r} is to be loaded from storage, but the step was given no storage.")
                try:
                    value = wf.load_result(i)
                except CorruptedResultError as exc:
                    if damaged != "mark":
                        raise CorruptedResultError(
                            f"The stored result of node {node!r} of workflow {wf.workflow_name!r} is damaged ({exc}). "
                            f"Remove it (functionfuse storage rm {wf.workflow_name} {node!r}) and run the pipeline "
                            "again: the node is then recomputed.",
                            path=exc.path,
                        ) from exc
                    log.warning("node %r: stored result damaged, to be recomputed: %s", node, exc)
                    _pass_on(nodes, k, outputs, state, DamagedResult(node, str(exc)), DAMAGED, done)
                    return done
                instance = _NotComputed(node, "loaded from storage: the instance is not stored")
            else:
                for p in g.data_parents[i]:
                    v = values.get(p)
                    if isinstance(v, _NotComputed):
                        raise StalePlanError(
                            f"Node {node!r} needs the value of node {g.names[p]!r}, which this run did not compute "
                            f"({v.why}). Storage changed since the pipeline was compiled: compile and run it again."
                        )
                save = plan is not None and action == RUN
                t = time.perf_counter()
                value = wf.run_node(i, values, save=save, record=plan.record(i) if plan is not None and save else None)
                seconds = time.perf_counter() - t
                log.info("node %r ran in %.3f s%s", node, seconds, " (stored)" if save else "")
                if state:
                    instance = values[g.index_of(g.nodes[i].instance)]  # type: ignore[attr-defined]
            if node in outputs:
                dump_value(value, outputs[node], f"Result of node {node!r}")
            if state:
                dump_value(instance, state, f"Instance state after node {node!r}")
            values[i] = value
            for p in [p for p, kk in last.items() if kk == k] + ([] if i in last else [i]):
                values.pop(p, None)
            done.append({"node": node, "action": action, "seconds": seconds})
        return done


@contextlib.contextmanager
def _reads_checked(wf: BaseWorkflow, stored: dict[str, Any] | None) -> Iterator[None]:
    """The step's reads of stored results are checked against what its plan saw (a
    result replaced since is refused as damaged: ``fpindex.check_planned``)."""
    if wf.storage is None or stored is None:
        yield
        return
    with fpindex.planned_reads(wf.storage, wf.workflow_name) as planned:
        planned.expect(stored)
        yield


def _pass_on(nodes: Sequence[str], start: int, outputs: Mapping[str, str], state: str | None, marker: DamagedResult,
             action: str, done: list[dict[str, Any]]) -> None:
    """Nodes *start*... of a step do not run: each hands on *marker* (*action* for the
    first, ``passed-on`` for the rest), in its outputs and in *done*."""
    for k, node in enumerate(nodes[start:]):
        if node in outputs:
            dump_value(marker, outputs[node], f"Result of node {node!r}")
        if state:
            dump_value(marker, state, f"Instance state after node {node!r}")
        done.append({"node": node, "action": action if k == 0 else PASSED_ON, "seconds": 0.0,
                     "damaged": marker.node, "message": marker.message})


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
    """Write the step's status file *path* (JSON, atomically): *node* (the node in
    progress, the one that failed, or the last), *state* (``started``, ``succeeded``,
    ``failed``) and *fields* (``nodes``: the step's nodes; ``done``: what it did with
    each node that ended); what local runs read back. Written when the step starts,
    before each node and when it ends, so a step stopped midway names the node it was
    running and the nodes it completed (and stored)."""
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
    parser.add_argument("--node", action="append", default=[], help="a node this step runs (several: in the order "
                        "they run, an execution unit)")
    parser.add_argument("--action", action="append", default=[], choices=ACTIONS,
                        help="what to do with the nodes: one for all, or one per --node (default: auto)")
    parser.add_argument("--snapshot", default=SNAPSHOT_PATH)
    parser.add_argument("--storage", default=None, help="the storage, encoded (see encode_storage)")
    parser.add_argument("--input", nargs=2, action="append", default=[], metavar=("PARENT", "PATH"))
    parser.add_argument("--result", help="output artifact: the value of the step's one node")
    parser.add_argument("--output", nargs=2, action="append", default=[], metavar=("NODE", "PATH"),
                        help="output artifact: the value of one of the step's nodes (a step of several nodes)")
    parser.add_argument("--damaged", default="fail", choices=("fail", "mark"), help="a damaged stored result "
                        "fails the step, or is marked for the steps after it and the runner (local runs)")
    parser.add_argument("--state", default=None, help="output artifact: the instance after a method call")
    parser.add_argument("--status", default=None, help="output artifact: the step's status (JSON), written when it "
                        "starts, before each node and when it ends")
    parser.add_argument("--executor-input", default=None, help="KFP's executor input (JSON): the step then writes "
                        "KFP's executor output file, listing its output artifacts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.check:
        with open(args.snapshot, "rb") as f:
            wf = load_snapshot(f.read())
        print(f"DAG snapshot of workflow {wf.workflow_name!r}: {len(wf.graph)} nodes load")
        return 0
    nodes: list[str] = args.node
    outputs = {node: path for node, path in args.output}
    if args.result:
        if len(nodes) != 1:
            parser.error("--result is the value of a step of one node; give --output NODE PATH for each of several")
        outputs[nodes[0]] = args.result
    if not nodes:  # a step may write no value: its nodes run to be stored, and no later step reads them
        parser.error("--node is required")
    done: list[dict[str, Any]] = []
    current = [nodes[0]]

    def progress(node: str) -> None:
        current[0] = node
        write_status(args.status, node, "started", nodes=nodes, done=done)

    write_status(args.status, nodes[0], "started", nodes=nodes, done=done)
    try:
        run_step(
            args.snapshot, nodes, args.action or ["auto"], args.storage, [tuple(p) for p in args.input], outputs,
            args.state, args.damaged, done=done, progress=progress,
        )
    except FunctionFuseError as exc:
        log.error("%s: %s", type(exc).__name__, exc, exc_info=exc.__cause__ is not None)
        write_status(args.status, current[0], "failed", nodes=nodes, done=done, kind=type(exc).__name__,
                     message=str(exc))
        finished = {d["node"] for d in done}
        for node, path in outputs.items():  # for whoever reads the step's files (run_local): what failed
            if node not in finished:
                try:
                    dump_value(StepFailure(current[0], type(exc).__name__, str(exc)), path, "the failure")
                except Exception:
                    pass
        return 1
    except Exception as exc:  # a defect: its traceback goes to the log, the status names it
        write_status(args.status, current[0], "failed", nodes=nodes, done=done, kind=type(exc).__name__,
                     message=str(exc))
        raise
    seconds = sum(d["seconds"] for d in done)
    summary: dict[str, Any] = {"nodes": nodes, "done": done, "seconds": seconds}
    if len(done) == 1:
        summary["action"] = done[0]["action"]
    damage = next((d for d in done if "damaged" in d), None)  # the runner plans again
    if damage is not None:
        summary.update(damaged=damage["damaged"], message=damage["message"])
    if args.executor_input:
        write_executor_output(args.executor_input, {"node": nodes[0], **{k: v for k, v in summary.items() if k != "done"}})
    write_status(args.status, nodes[-1], "succeeded", **summary)
    return 0


if __name__ == "__main__":
    # run the module's own copy, so the objects a step writes (StepFailure...) are
    # functionfuse's classes, not classes of __main__
    from functionfuse.backends.addons._kfpstep import main as _main

    sys.exit(_main())
