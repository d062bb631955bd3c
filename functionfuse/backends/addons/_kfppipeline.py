"""The KFP v2 pipeline of a workflow: one container step per node.

Each step runs :data:`STEP_COMMAND` (``python3 -m`` the step module,
:mod:`~functionfuse.backends.addons._kfpstep`) in the workflow's image. Values travel
between steps as artifacts (cloudpickle files): every step writes its node's value to
its ``result`` artifact, and a method call of a class node also writes the instance
after the call to its ``state`` artifact, which the next call on the same instance reads
(the instance itself is never stored, as in the other backends). Every step also writes
its ``status`` artifact (JSON: its node, what it did, how it ended), which local runs
read back. The pipeline's outputs are the results of the workflow's output nodes.

With a plan (``actions``), nodes the plan skips have no step, loaded nodes have a step
that reads storage and needs no input, and every other step runs its node. Without
one, every node has a step that decides when it runs (``--action auto``), so a
compiled pipeline resumes from whatever storage holds when it runs.
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any, Callable, Mapping, Sequence

from ...baseworkflow import LOAD, SKIP, BaseWorkflow
from ...errors import ConfigurationError
from ...workflow import MethodNode
from . import _kfpstep

#: the command of every step (its arguments follow)
STEP_COMMAND = ["python3", "-m", _kfpstep.__name__]
#: the output artifact of every step that holds its status (JSON)
STATUS_OUTPUT = "status"


def pipeline_name(workflow_name: str) -> str:
    """A KFP pipeline name for a workflow (lowercase letters, digits and '-')."""
    return (re.sub(r"[^a-z0-9]+", "-", workflow_name.lower()).strip("-") or "workflow")[:100]


def step_inputs(wf: BaseWorkflow, i: int) -> list[tuple[int, int, str]]:
    """``(parent, producer, output)`` for each value node *i* reads: the parent node whose
    value it is, and the step output that holds it."""
    g = wf.graph
    node = g.nodes[i]
    instance = g.index_of(node.instance) if type(node) is MethodNode else None
    out = []
    for j in g.data_parents[i]:
        if j == instance:
            prev = g.index_of(node.previous)  # type: ignore[attr-defined]
            out.append((j, prev, "state") if type(g.nodes[prev]) is MethodNode else (j, j, "result"))
        else:
            out.append((j, j, "result"))
    return out


def _component(name: str, image: str, args: Callable[[Sequence[Any], Any, Any, Any], list], n_inputs: int,
               state: bool) -> Any:
    """A container component with *n_inputs* artifact inputs, ``result`` and ``status``
    artifact outputs and, for method calls, a ``state`` one."""
    from kfp import dsl

    P = inspect.Parameter
    params = [P(f"in_{k}", P.POSITIONAL_OR_KEYWORD, annotation=dsl.Input[dsl.Artifact]) for k in range(n_inputs)]
    params.append(P("result", P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[dsl.Artifact]))
    params.append(P(STATUS_OUTPUT, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[dsl.Artifact]))
    if state:
        params.append(P("state", P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[dsl.Artifact]))

    def step(*placeholders: Any) -> Any:
        ins = placeholders[:n_inputs]
        result, status = placeholders[n_inputs], placeholders[n_inputs + 1]
        st = placeholders[n_inputs + 2] if state else None
        return dsl.ContainerSpec(image=image, command=list(STEP_COMMAND), args=args(ins, result, status, st))

    step.__name__ = step.__qualname__ = re.sub(r"\W", "_", name)
    step.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    step.__doc__ = f"functionfuse node {name!r}"
    return dsl.container_component(step)


def build_pipeline(
    wf: BaseWorkflow,
    image: str,
    *,
    storage_arg: str | None,
    actions: Sequence[str] | None,
    task_options: Mapping[int, Mapping[str, Any]],
    platform: Mapping[str, Any] | None = None,
    display_names: bool = True,
    mark_damaged: bool = False,
) -> tuple[Any, dict[int, str]]:
    """The ``@dsl.pipeline`` of *wf*; returns it and the pipeline output name of each
    output node. *mark_damaged*: a step that finds its stored result damaged hands on a
    marker instead of failing (for a runner that plans again: local runs)."""
    from kfp import dsl

    g = wf.graph
    names = g.names
    steps: list[tuple[int, Any, list[tuple[int, int, str]], str]] = []
    for i in range(len(g)):
        action = actions[i] if actions is not None else "auto"
        if action == SKIP:
            continue
        inputs = [] if action == LOAD else step_inputs(wf, i)
        node = g.nodes[i]
        state = type(node) is MethodNode

        def args(ins: Sequence[Any], result: Any, status: Any, st: Any, *, _i: int = i, _action: str = action,
                 _inputs: list = inputs) -> list:
            a: list[Any] = ["--node", names[_i], "--action", _action]
            if storage_arg:
                a += ["--storage", storage_arg]
            if mark_damaged:
                a += ["--damaged", "mark"]
            for (j, _p, _o), placeholder in zip(_inputs, ins):
                a += ["--input", names[j], placeholder.path]
            a += ["--result", result.path, "--status", status.path,
                  "--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]
            if st is not None:
                a += ["--state", st.path]
            return a

        steps.append((i, _component(names[i], image, args, len(inputs), state), inputs, action))

    outputs: dict[int, str] = {}
    for i in g.outputs:
        outputs.setdefault(i, f"out_{len(outputs)}")
    Outputs = typing.NamedTuple("Outputs", [(o, dsl.Artifact) for o in outputs.values()])  # type: ignore[misc]

    def functionfuse_pipeline() -> Outputs:
        tasks: dict[int, Any] = {}
        for i, component, inputs, _action in steps:
            kwargs = {f"in_{k}": tasks[p].outputs[o] for k, (_j, p, o) in enumerate(inputs)}
            task = component(**kwargs)
            if display_names:
                task.set_display_name(names[i])
            task.set_caching_options(False)  # storage decides what runs again, not KFP's cache
            wired = {p for _j, p, _o in inputs}
            order = [tasks[p] for p in g.parents[i] if p in tasks and p not in wired and _action != LOAD]
            if order:
                task.after(*order)
            try:
                apply_options(task, task_options.get(i, {}), platform or {})
            except ValueError as exc:  # kfp's own checks: name the node and the option setter
                raise ConfigurationError(
                    f"Step options of node {names[i]!r} of workflow {wf.workflow_name!r} are refused by KFP: {exc} "
                    "Change them with query(...).set_task_args({...})."
                ) from exc
            tasks[i] = task
        return Outputs(**{o: tasks[i].outputs["result"] for i, o in outputs.items()})

    functionfuse_pipeline.__annotations__ = {"return": Outputs}  # a type, not the string of this module's annotations
    functionfuse_pipeline.__doc__ = f"functionfuse workflow {wf.workflow_name!r} ({len(g)} nodes)"
    pipeline = dsl.pipeline(name=pipeline_name(wf.workflow_name), description=functionfuse_pipeline.__doc__)(
        functionfuse_pipeline
    )
    return pipeline, outputs


def package_image(path: str) -> str | None:
    """The step image a pipeline file written by ``compile()`` names (None: none, several,
    or not such a file)."""
    import yaml  # a kfp dependency

    try:
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        executors = docs[0]["deploymentSpec"]["executors"].values()
        images = {e["container"]["image"] for e in executors}
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return images.pop() if len(images) == 1 else None


#: per-node options (``KFPWorkflow.query(...).set_task_args``) and what they call
TASK_OPTIONS = {
    "cpu_request": "set_cpu_request",
    "cpu_limit": "set_cpu_limit",
    "memory_request": "set_memory_request",
    "memory_limit": "set_memory_limit",
    "accelerator_type": "set_accelerator_type",
    "accelerator_limit": "set_accelerator_limit",
    "retries": "set_retry",
    "env": "set_env_variable",
    "node_selector": "platform",
    "image_pull_policy": "platform",
    "image_pull_secrets": "platform",
}


def apply_options(task: Any, options: Mapping[str, Any], platform: Mapping[str, Any]) -> None:
    """Set the options of one node on its task (resources, retries, Kubernetes settings)."""
    kube: dict[str, Any] = {}
    merged = {**platform, **options}
    for key, value in merged.items():
        if key == "retries":
            task.set_retry(num_retries=int(value), backoff_duration="10s", backoff_factor=2.0)
        elif key == "env":
            for k, v in value.items():
                task.set_env_variable(k, str(v))
        elif key == "node_selector":
            kube["nodeSelector"] = {"labels": dict(value)}
        elif key == "image_pull_policy":
            kube["imagePullPolicy"] = value
        elif key == "image_pull_secrets":
            kube["imagePullSecret"] = [{"secretName": s} for s in value]
        elif key == "secret_env":
            kube["secretAsEnv"] = [
                {"secretName": secret, "keyToEnv": [{"secretKey": sk, "envVar": ev} for ev, sk in keys.items()]}
                for secret, keys in value.items()
            ]
        else:
            getattr(task, TASK_OPTIONS[key])(value if key != "accelerator_limit" else int(value))
    if kube:
        task.platform_config["kubernetes"] = {**task.platform_config.get("kubernetes", {}), **kube}
