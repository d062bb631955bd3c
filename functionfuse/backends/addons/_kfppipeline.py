"""The KFP v2 pipeline of a workflow: one container step per execution unit.

The steps are the units of :mod:`functionfuse.units` (``Units.steps``: a node, or a
chain or group of nodes that the step runs in order). Each step runs
:data:`STEP_COMMAND` (``python3 -m`` the step module,
:mod:`~functionfuse.backends.addons._kfpstep`) in the workflow's image. Values travel
between steps as artifacts (cloudpickle files): a step of one node writes its value to
its ``result`` artifact, a step of several writes ``result_K`` for each of its nodes
(K: the position in the step) that a later step or the pipeline's outputs read;
values used only inside a step never leave it. A method call of a class node (always
a step of its own) also writes the instance after the call to its ``state`` artifact,
which the next call on the same instance reads (the instance itself is never stored,
as in the other backends). Every step also writes its ``status`` artifact (JSON: its
nodes, what it did with each, how it ended), which local runs read back. Steps depend
on each other only through their nodes' parents outside them.

With a plan (``actions``), nodes the plan skips have no step, loaded nodes have a step
of their own that reads storage and needs no input, and every other step runs its
nodes. Without one, every node is in a step that decides when it runs
(``--action auto``), so a compiled pipeline resumes from whatever storage holds when
it runs.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ...baseworkflow import LOAD, BaseWorkflow
from ...errors import ConfigurationError
from ...workflow import ClassNode, MethodNode
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


def _component(name: str, image: str, args: Callable[[Sequence[Any], Mapping[str, Any], Any], list],
               n_inputs: int, outputs: Sequence[str], doc: str) -> Any:
    """A container component with *n_inputs* artifact inputs, the artifact *outputs*
    (values) and a ``status`` artifact output."""
    from kfp import dsl

    P = inspect.Parameter
    params = [P(f"in_{k}", P.POSITIONAL_OR_KEYWORD, annotation=dsl.Input[dsl.Artifact]) for k in range(n_inputs)]
    params += [P(o, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[dsl.Artifact]) for o in outputs]
    params.append(P(STATUS_OUTPUT, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[dsl.Artifact]))

    def step(*placeholders: Any) -> Any:
        ins = placeholders[:n_inputs]
        outs = dict(zip(outputs, placeholders[n_inputs:]))
        status = placeholders[n_inputs + len(outputs)]
        return dsl.ContainerSpec(image=image, command=list(STEP_COMMAND), args=args(ins, outs, status))

    step.__name__ = step.__qualname__ = re.sub(r"\W", "_", name)
    step.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    step.__doc__ = doc
    return dsl.container_component(step)


@dataclass
class Step:
    """One container step of a pipeline: one node, or the nodes of an execution unit."""

    #: node positions, in the order the step runs them
    nodes: tuple[int, ...]
    #: the action of each node (``auto``: decided by the step when it runs)
    actions: tuple[str, ...]
    #: ``(parent, producer, output)`` of each value read from an earlier step (see :func:`step_inputs`)
    inputs: list[tuple[int, int, str]] = field(default_factory=list)
    #: the node whose value each output holds: ``{output name: node}`` (``state``: its instance after the call)
    outputs: dict[str, int] = field(default_factory=dict)
    #: how the step's nodes were put together (:class:`functionfuse.units.Unit` ``why``), and its group
    why: str = "single"
    group: str | None = None

    def output_of(self, i: int) -> str:
        """The output that holds node *i*'s value."""
        return "result" if len(self.nodes) == 1 else f"result_{self.nodes.index(i)}"


def plan_steps(wf: BaseWorkflow, units: Sequence[Any], actions: Sequence[str] | None) -> list[Step]:
    """The container steps of *units* (``Units.steps`` of :mod:`functionfuse.units`, in
    submission order), with the artifacts between them: a step reads the values of its
    nodes' parents outside it from the steps that hold them, and writes the values
    later steps (or the pipeline's outputs) read."""
    g = wf.graph
    steps: list[Step] = []
    step_of: dict[int, int] = {}
    for unit in units:
        nodes = tuple(unit.indices)
        acts = tuple(actions[i] if actions is not None else "auto" for i in nodes)
        if len(nodes) > 1 and any(type(g.nodes[i]) in (MethodNode, ClassNode) for i in nodes):
            raise ConfigurationError(  # the partition never does this: a class node's key is None
                f"Nodes {[g.names[i] for i in nodes][:5]!r} of workflow {wf.workflow_name!r}: a class or method node "
                "runs in a step of its own. Leave it out of set_group(...)."
            )
        step = Step(nodes, acts, why=unit.why, group=unit.group)
        inside = set(nodes)
        seen: set[tuple[int, int, str]] = set()
        for i, a in zip(nodes, acts):
            if a == LOAD:
                continue
            for j, producer, output in step_inputs(wf, i):
                if j in inside:
                    continue
                if (j, producer, output) not in seen:
                    seen.add((j, producer, output))
                    step.inputs.append((j, producer, output))
        steps.append(step)
        for i in nodes:
            step_of[i] = len(steps) - 1
        if len(nodes) == 1 and type(g.nodes[nodes[0]]) is MethodNode:
            step.outputs["state"] = nodes[0]
    # the outputs each step writes: what later steps read, and the pipeline's outputs
    wanted = {(p, o) for s in steps for _j, p, o in s.inputs} | {(i, "result") for i in g.outputs}
    for producer, output in sorted(wanted, key=lambda t: (t[0], t[1])):
        k = step_of.get(producer)
        if k is None:
            continue
        s = steps[k]
        if output == "result":
            s.outputs[s.output_of(producer)] = producer
        elif len(s.nodes) == 1:
            s.outputs["state"] = producer
    for s in steps:  # a step of one node always writes its result (what the KFP UI shows)
        if len(s.nodes) == 1:
            s.outputs.setdefault("result", s.nodes[0])
    return steps


def step_label(wf: BaseWorkflow, step: Step, width: int = 60) -> str:
    """A step's name for people: its node, or ``group 'prep': a, b, ... z (12 nodes)``."""
    names = [wf.graph.names[i] for i in step.nodes]
    if len(names) == 1:
        return names[0]
    text = ", ".join(names)
    if len(text) > width:
        text = f"{names[0]}, {names[1]}, ... {names[-1]}"
    text = f"{text} ({len(names)} nodes)"
    return f"group {step.group!r}: {text}" if step.group else text


def build_pipeline(
    wf: BaseWorkflow,
    image: str,
    *,
    units: Sequence[Any],
    storage_arg: str | None,
    actions: Sequence[str] | None,
    task_options: Mapping[int, Mapping[str, Any]],
    platform: Mapping[str, Any] | None = None,
    display_names: bool = True,
    mark_damaged: bool = False,
) -> tuple[Any, dict[int, str]]:
    """The ``@dsl.pipeline`` of *wf*, one container step per unit of *units* (``Units.steps``,
    in submission order); returns it and the pipeline output name of each output node. *mark_damaged*: a step that finds
    a stored result damaged hands on a marker instead of failing (for a runner that plans
    again: local runs)."""
    from kfp import dsl

    g = wf.graph
    names = g.names
    steps = plan_steps(wf, units, actions)
    components = []
    for k, step in enumerate(steps):
        nodes = step.nodes
        outs = list(step.outputs)

        def args(ins: Sequence[Any], placeholders: Mapping[str, Any], status: Any, *, _step: Step = step) -> list:
            a: list[Any] = []
            for i in _step.nodes:
                a += ["--node", names[i]]
            acts = set(_step.actions)
            for act in (acts if len(acts) == 1 else _step.actions):
                a += ["--action", act]
            if storage_arg:
                a += ["--storage", storage_arg]
            if mark_damaged:
                a += ["--damaged", "mark"]
            for (j, _p, _o), placeholder in zip(_step.inputs, ins):
                a += ["--input", names[j], placeholder.path]
            for output, i in _step.outputs.items():
                if output == "result":
                    a += ["--result", placeholders[output].path]
                elif output == "state":
                    a += ["--state", placeholders[output].path]
                else:
                    a += ["--output", names[i], placeholders[output].path]
            a += ["--status", status.path, "--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]
            return a

        name = names[nodes[0]] if len(nodes) == 1 else f"unit_{k}_{step.group or names[nodes[0]]}"
        doc = (f"functionfuse node {names[nodes[0]]!r}" if len(nodes) == 1 else
               f"functionfuse nodes {', '.join(repr(names[i]) for i in nodes)}")
        components.append(_component(name, image, args, len(step.inputs), outs, doc))

    step_of = {i: k for k, s in enumerate(steps) for i in s.nodes}
    outputs: dict[int, tuple[int, str]] = {}
    pipeline_outputs: dict[int, str] = {}
    for i in g.outputs:
        if i in step_of and i not in outputs:
            outputs[i] = (step_of[i], steps[step_of[i]].output_of(i))
            pipeline_outputs[i] = f"out_{len(pipeline_outputs)}"
    Outputs = typing.NamedTuple("Outputs", [(o, dsl.Artifact) for o in pipeline_outputs.values()])  # type: ignore[misc]

    def functionfuse_pipeline() -> Outputs:
        tasks: list[Any] = []
        for k, (step, component) in enumerate(zip(steps, components)):
            kwargs = {f"in_{n}": tasks[step_of[p]].outputs[steps[step_of[p]].output_of(p) if o == "result" else o]
                      for n, (_j, p, o) in enumerate(step.inputs)}
            task = component(**kwargs)
            if display_names:
                task.set_display_name(step_label(wf, step))
            task.set_caching_options(False)  # storage decides what runs again, not KFP's cache
            wired = {step_of[p] for _j, p, _o in step.inputs}
            inside = set(step.nodes)
            after = sorted({step_of[p] for i, a in zip(step.nodes, step.actions) if a != LOAD
                            for p in g.parents[i] if p not in inside and p in step_of} - wired - {k})
            if after:
                task.after(*[tasks[u] for u in after])
            first = step.nodes[0]
            try:
                apply_options(task, task_options.get(first, {}), platform or {})
            except ValueError as exc:  # kfp's own checks: name the node and the option setter
                raise ConfigurationError(
                    f"Step options of node {names[first]!r} of workflow {wf.workflow_name!r} are refused by KFP: "
                    f"{exc} Change them with query(...).set_task_args({{...}})."
                ) from exc
            tasks.append(task)
        return Outputs(**{o: tasks[outputs[i][0]].outputs[outputs[i][1]] for i, o in pipeline_outputs.items()})

    functionfuse_pipeline.__annotations__ = {"return": Outputs}  # a type, not the string of this module's annotations
    functionfuse_pipeline.__doc__ = f"functionfuse workflow {wf.workflow_name!r} ({len(g)} nodes, {len(steps)} steps)"
    pipeline = dsl.pipeline(name=pipeline_name(wf.workflow_name), description=functionfuse_pipeline.__doc__)(
        functionfuse_pipeline
    )
    return pipeline, pipeline_outputs


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
