"""``KFPWorkflow.run_local``: every step in a real container, with ``kfp.local.DockerRunner``.

What the steps did comes back through a structured channel, not their logs: every step
has a ``status`` output artifact, a small JSON file it writes when it starts and again
when it ends (``{"node", "state": "started"|"succeeded"|"failed", "action", "seconds",
"kind", "message"}``). After the run, the status files of its folder are read: they
count what ran, loaded or was skipped into the run report, and a failed step names its
node and gives its error; a step that started and never finished (killed, out of
memory) is named as such; a step with no status file never started.

A stored result found damaged when its step loads it does not fail the run, as on every
backend: the pipeline is built with ``--damaged mark``, so that step hands on a marker
that the steps needing it pass on instead of running, and their status files name it.
When no step failed, the run is planned again without that result
(:func:`~functionfuse.engine.recompute_damaged`) and a new pipeline runs; a step that
failed is the run's error. A marker is never returned as a result.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ...engine import plan_run, recompute_damaged, run_session
from ...errors import (
    ConfigurationError,
    CorruptedResultError,
    NodeExecutionError,
    RemoteRunError,
    SerializationError,
    StorageError,
    TaskNotFoundError,
    WorkflowNotFoundError,
)
from ...baseworkflow import LOAD, RUN, SKIP
from ...planner import Plan
from ...storage import signing
from . import _kfppipeline, _kfpstep

if TYPE_CHECKING:
    from .kfpback import KFPWorkflow

__all__ = ["run_local", "read_statuses", "STATUS_NAME"]

#: the output artifact of every step that holds its status (JSON)
STATUS_NAME = _kfppipeline.STATUS_OUTPUT


def read_statuses(folders: list[str]) -> list[dict[str, Any]]:
    """The status of every node of the steps of the pipeline runs in *folders*, in path
    order (unreadable or foreign files left out). A step's status file lists what it
    did with each node that ended (``done``) and names the node it was at when it
    failed or stopped; each becomes one status here: ``{"node", "state", "action",
    "seconds"}`` for a node done, ``{"node", "state": "failed"|"started", "kind",
    "message"}`` for the node a step failed or stopped at."""
    out = []
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*", STATUS_NAME))):
            try:
                with open(path) as f:
                    status = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(status, dict) or not isinstance(status.get("node"), str):
                continue
            done = status.get("done")
            if not isinstance(done, list):  # a step of one node that wrote no list
                out.append(status)
                continue
            out.extend({**d, "state": "succeeded"} for d in done if isinstance(d, dict) and isinstance(d.get("node"), str))
            if status.get("state") != "succeeded":
                out.append({k: v for k, v in status.items() if k not in ("done", "nodes", "action", "seconds")})
    return out


def _run_folders(outputs: str, earlier: set[str]) -> list[str]:
    """The folders of the pipeline runs started since *earlier* was listed."""
    if not os.path.isdir(outputs):
        return []
    return [os.path.join(outputs, d) for d in sorted(set(os.listdir(outputs)) - earlier)]


def _count(report: Any, statuses: list[dict[str, Any]]) -> None:
    """Count what the steps did into the run *report*."""
    for status in statuses:
        if status.get("state") != "succeeded":
            continue
        action = status.get("action")
        if action in ("run", "replay"):
            report.ran += 1
            report.record(status["node"], float(status.get("seconds") or 0.0))
        elif action == LOAD:
            report.loaded += 1
        elif action == SKIP:
            report.skipped += 1


#: storage errors a step's status names, raised here with their type (a storage error keeps
#: its type on every backend); their messages, as the steps word them, name node and workflow
_STORAGE_ERRORS = {c.__name__: c for c in (StorageError, TaskNotFoundError, WorkflowNotFoundError, SerializationError)}


def _failure(wf: "KFPWorkflow", exc: Exception, statuses: list[dict[str, Any]], report: Any) -> BaseException:
    """The error of a failed local run: the failed step's node and its error, from the
    status files (first a step that failed, then one that started and never ended); the
    node is the failed one of the run *report*."""
    failed = [s for s in statuses if s.get("state") == "failed"]
    for status in failed:
        node, kind, message = status["node"], str(status.get("kind") or "Error"), str(status.get("message") or "")
        report.failed = node
        if kind == "NodeExecutionError":
            return NodeExecutionError(message, node_name=node, workflow_name=wf.workflow_name)
        if kind in _STORAGE_ERRORS and f"node {node!r} of workflow {wf.workflow_name!r}" in message:
            return _STORAGE_ERRORS[kind](message)
        return RemoteRunError(f"The step of node {node!r} of workflow {wf.workflow_name!r} failed: {kind}: {message}")
    for status in statuses:
        if status.get("state") == "started":
            node = report.failed = status["node"]
            return NodeExecutionError(
                f"The step of node {node!r} of workflow {wf.workflow_name!r} started and ended without a result "
                "(its container was stopped, killed or ran out of memory; its log is above).",
                node_name=node,
                workflow_name=wf.workflow_name,
            )
    return RemoteRunError(
        f"The local KFP run of workflow {wf.workflow_name!r} failed before any step of a node started "
        f"({type(exc).__name__}: {exc}). Check that Docker can run the step image."
    )


def _mounts(wf: "KFPWorkflow", extra: Mapping[str, str]) -> list[Any]:
    import docker

    key_file = os.environ.get(signing.ENV_KEY_FILE)
    mounts = [
        docker.types.Mount(target=target, source=os.path.abspath(source), type="bind", read_only=source == key_file)
        for source, target in extra.items()
    ]
    storage = wf.step_storage if wf.step_storage is not None else wf.storage
    path = storage.local_path() if storage is not None else None
    if path:  # results on this machine: the steps see them at the same path
        os.makedirs(path, exist_ok=True)
        mounts.append(docker.types.Mount(target=path, source=path, type="bind"))
    return mounts


@contextlib.contextmanager
def _local_root(pipeline_root: str | os.PathLike | None) -> Iterator[str]:
    if pipeline_root is not None:
        root = os.path.abspath(os.fspath(pipeline_root))
        os.makedirs(root, exist_ok=True)
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="functionfuse-kfp-local-") as tmp:
        yield tmp


def run_local(
    wf: "KFPWorkflow",
    *,
    pipeline_root: str | os.PathLike | None = None,
    environment: Mapping[str, str] | None = None,
    mounts: Mapping[str, str] | None = None,
) -> Any:
    """Run *wf*'s pipeline here (see :meth:`KFPWorkflow.run_local`)."""
    from kfp import local

    with run_session(wf) as session:
        report = session.report
        # built again, not wf.image: settings changed since the last build (plugins,
        # cache policies) are in a new snapshot; an unchanged one is found built
        image = wf.build_image()
        stored, records, plan = plan_run(wf, session)
        storage_arg, env = wf._storage_for_steps()
        # of the step options, only a node's env applies to a local container; the
        # runner's environment (storage credentials, *environment*) wins over it
        node_env = {i: {"env": o["env"]} for i, o in wf._task_args.items() if o.get("env")}
        key_file = os.environ.get(signing.ENV_KEY_FILE)
        binds = _mounts(wf, {**(mounts or {}), **({key_file: key_file} if key_file else {})})
        for name in (signing.ENV_KEY, signing.ENV_KEY_FILE):  # this machine's signing key
            if os.environ.get(name) and name not in (environment or {}):
                env[name] = os.environ[name]
        env.update(environment or {})
        runner_args: dict[str, Any] = {"network_mode": "host"}
        if binds:
            runner_args["mounts"] = binds
        if env:
            runner_args["environment"] = env
        with _local_root(pipeline_root) as root:
            outputs_dir = os.path.join(root, "outputs")
            local.init(
                runner=local.DockerRunner(**runner_args),
                pipeline_root=outputs_dir,
                workspace_root=os.path.join(root, "workspace"),
                raise_on_error=True,
            )
            for _attempt in range(len(wf.graph) + 1):
                actions = plan.actions if stored is not None else None
                values = _attempt_run(wf, report, image, storage_arg, plan, actions, node_env, outputs_dir)
                if isinstance(values, dict):
                    break
                # stored results found damaged, and no step failed: those nodes run again
                # in a new plan (the nodes that ran and stored are loaded by it)
                assert stored is not None, "a damaged stored result without storage"
                names = wf.graph.name_index
                for status in values:
                    if status.get("state") == "succeeded" and status.get("action") == RUN:
                        record = plan.records[names[status["node"]]]  # type: ignore[index]
                        stored[status["node"]] = {"fingerprint": record}
                damaged: dict[str, str] = {}
                for status in values:
                    if status.get("damaged") in names:
                        damaged.setdefault(status["damaged"], str(status.get("message") or "damaged"))
                for node, message in damaged.items():
                    recompute_damaged(wf, session, stored, names[node], CorruptedResultError(message, path=node))
                plan = wf.make_plan(stored, records)
            else:
                raise StorageError(
                    f"Workflow {wf.workflow_name!r}: too many unreadable stored results in {wf.storage!r}."
                )
        if actions is not None:
            report.skipped = sum(1 for a in actions if a == SKIP)
    return wf.outputs(values)


def _attempt_run(
    wf: "KFPWorkflow",
    report: Any,
    image: str,
    storage_arg: str | None,
    plan: Plan,
    actions: list[str] | None,
    node_env: Mapping[int, Mapping[str, Any]],
    outputs_dir: str,
) -> dict[int, Any] | list[dict[str, Any]]:
    """One pipeline run of *plan* (one step per execution unit; *actions*: the plan's, or
    None: the steps decide): the values of the output nodes, or, when steps met a
    damaged stored result, the node statuses of the run (the error of a failed step is
    raised)."""
    units = wf.units(plan)
    wf.last_units = units
    pipeline, outputs = _kfppipeline.build_pipeline(
        wf, image, units=units.steps, storage_arg=storage_arg, actions=actions, task_options=node_env,
        display_names=False, mark_damaged=True,
    )
    earlier = set(os.listdir(outputs_dir)) if os.path.isdir(outputs_dir) else set()
    report.loaded = 0  # what this attempt loaded (what ran is counted over all attempts)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
        try:
            task = pipeline()
        except ConfigurationError:
            raise
        except (RuntimeError, ValueError) as exc:  # a failed step (ValueError: it was an output)
            statuses = read_statuses(_run_folders(outputs_dir, earlier))
            _count(report, statuses)  # what did finish is in the report of the failed run
            raise _failure(wf, exc, statuses, report) from exc
    statuses = read_statuses(_run_folders(outputs_dir, earlier))
    _count(report, statuses)
    if any(s.get("state") == "succeeded" and s.get("damaged") for s in statuses):
        return statuses
    values = {i: _kfpstep.load_value(task.outputs[o].path, f"Result of node {wf.graph.names[i]!r}")
              for i, o in outputs.items()}
    for i, v in values.items():
        if type(v) is _kfpstep.DamagedResult:  # its step's status file is missing: never a result
            raise StorageError(
                f"Result of node {wf.graph.names[i]!r} of workflow {wf.workflow_name!r} was not computed: the stored "
                f"result of node {v.node!r} is damaged ({v.message}). Run the workflow again to recompute it."
            )
    return values
