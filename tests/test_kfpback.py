"""KFPWorkflow: real images, a real registry, real containers, the real KFP SDK.

* Without Docker: the compiled pipeline YAML is checked against the DAG (one step per
  node, named after it, the DAG's dependencies, step options); configuration errors;
  the build context (``.dockerignore``, content hash); submission with the real
  ``kfp.Client`` to :class:`kfpsupport.KFPAPIStandIn` (a KFP API server needs Kubernetes,
  so a small HTTP server on 127.0.0.1 stands in for it at the HTTP boundary).
* With Docker (skipped with the reason when the engine is unavailable): step images
  built for real FROM the local Debian base image, Python packages from the project's
  wheelhouse; pushes to Debian's docker-registry on 127.0.0.1 with htpasswd
  authentication; the seed DAG and the stateful class-node example run step by step in
  containers through ``kfp.local.DockerRunner``, with resume through file and S3 storage.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest
import yaml

pytest.importorskip("kfp")

from functionfuse.backends.addons.kfpback import KFPWorkflow  # noqa: E402
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402
from functionfuse.errors import (  # noqa: E402
    ConfigurationError,
    FunctionFuseError,
    NodeExecutionError,
    SerializationError,
)
from functionfuse.kit import stepimage  # noqa: E402
from functionfuse.kit.images import ImagePushError  # noqa: E402
from functionfuse.storage import storage_factory  # noqa: E402
from contracts import backend as contract  # noqa: E402
from contracts.backend import BackendConformance, LoadErrorConformance  # noqa: E402
from contracts import units as contract_units  # noqa: E402
from contracts.units import UnitConformance  # noqa: E402
from kfpsupport import SEED_RESULT, STATEFUL_RESULT, KFPAPIStandIn, write_project  # noqa: E402
from kitsupport import LOCAL_BASE, ROOT, WHEELHOUSE, docker_client  # noqa: E402

MODULE = "ffkfp_user_dag"
PASSWORD = "s3cr3t-Pa55word-for-kfp-tests"


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user project on disk whose module defines the DAGs; imported from there."""
    folder = write_project(str(tmp_path_factory.mktemp("user-project")), MODULE)
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module(MODULE)
        yield folder, module
    finally:
        sys.path.remove(folder)
        sys.modules.pop(MODULE, None)


@pytest.fixture
def dag(project):
    return project[1]


def make(dag_nodes, name, project, **kwargs):
    kwargs.setdefault("baseimage", LOCAL_BASE)
    wf = KFPWorkflow(*dag_nodes, workflow_name=name, **kwargs)
    wf.set_project(project[0])
    wf.set_wheelhouse(WHEELHOUSE)
    return wf


def file_storage(path):
    return storage_factory({"kind": "file", "options": {"path": str(path)}})


def compiled(wf, tmp_path, **kwargs):
    path = wf.compile(tmp_path / "pipeline.yaml", **kwargs)
    with open(path) as f:
        text = f.read()
    docs = list(yaml.safe_load_all(text))
    return text, docs[0], (docs[1] if len(docs) > 1 else {})


def tasks_by_node(spec):
    """{node name: task} of the root DAG (task display names are the node names)."""
    return {t["taskInfo"]["name"]: (key, t) for key, t in spec["root"]["dag"]["tasks"].items()}


# -- compile: offline, no Docker -----------------------------------------------------------------
@pytest.mark.parametrize("which", ["seed", "stateful"])
def test_compile_has_one_step_per_node_with_the_dags_dependencies(dag, project, tmp_path, monkeypatch, which):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # compile needs no Docker
    out = getattr(dag, which)()
    wf = make([out], f"compile-{which}", project)
    text, spec, _platform = compiled(wf, tmp_path)
    # the image a build of this project and DAG gives, named without Docker
    image = wf.image_reference()
    assert re.fullmatch(rf"functionfuse-kfp-compile-{which}:[0-9a-f]{{20}}", image)
    g = wf.graph
    tasks = tasks_by_node(spec)
    assert sorted(tasks) == sorted(g.names)
    key_of = {name: key for name, (key, _t) in tasks.items()}
    for i, name in enumerate(g.names):
        _key, task = tasks[name]
        expected = sorted(key_of[g.names[p]] for p in g.parents[i])
        assert sorted(task.get("dependentTasks", [])) == expected, name
        assert task["cachingOptions"].get("enableCache", False) is False
        executor = spec["deploymentSpec"]["executors"][spec["components"][task["componentRef"]["name"]]["executorLabel"]]
        container = executor["container"]
        assert container["image"] == image
        assert container["command"] == ["python3", "-m", "functionfuse.backends.addons._kfpstep"]
        args = container["args"]
        assert args[args.index("--node") + 1] == name
        assert args[args.index("--action") + 1] == "auto"
        # every parent whose value the node reads arrives as an input artifact file
        parents = [args[k + 1] for k, a in enumerate(args) if a == "--input"]
        assert sorted(parents) == sorted(g.names[p] for p in g.data_parents[i])
    outputs = spec["root"]["dag"]["outputs"]["artifacts"]
    assert [sel["artifactSelectors"][0]["producerSubtask"] for sel in outputs.values()] == [key_of[out.name]]


def test_compile_passes_the_instance_of_a_class_node_from_call_to_call(dag, project, tmp_path):
    wf = make([dag.stateful()], "compile-chain", project)
    _text, spec, _ = compiled(wf, tmp_path)
    tasks = tasks_by_node(spec)
    key = {name: k for name, (k, _t) in tasks.items()}
    chain = ["IncrementalSum", "one_plus_two", "three_plus_two", "five_plus_one"]
    for prev, call in zip(chain, chain[1:]):
        inputs = tasks[call][1]["inputs"]["artifacts"]
        sources = {(v["taskOutputArtifact"]["producerTask"], v["taskOutputArtifact"]["outputArtifactKey"]) for v in inputs.values()}
        produced = "result" if prev == "IncrementalSum" else "state"
        assert (key[prev], produced) in sources, call


def test_compile_sets_step_options_from_queries(dag, project, tmp_path):
    wf = make([dag.seed()], "compile-options", project)
    wf.query("^node3$").set_task_args(
        {"cpu_request": "250m", "cpu_limit": "2", "memory_request": "256Mi", "memory_limit": "1Gi", "retries": 3,
         "node_selector": {"pool": "highmem"}, "image_pull_policy": "Always", "accelerator_type": "nvidia.com/gpu",
         "accelerator_limit": 1, "env": {"MODE": "fast"}}
    )
    wf.query("^node1$").set_resources(memory_limit="2G")
    wf.set_storage_secret("ff-s3")
    text, spec, platform = compiled(wf, tmp_path)
    tasks = tasks_by_node(spec)
    node3 = tasks["node3"][1]
    assert node3["retryPolicy"]["maxRetryCount"] == 3
    exec3 = spec["components"][node3["componentRef"]["name"]]["executorLabel"]
    res = spec["deploymentSpec"]["executors"][exec3]["container"]["resources"]
    assert res["resourceCpuRequest"] == "250m" and res["resourceCpuLimit"] == "2"
    assert res["resourceMemoryRequest"] == "256Mi" and res["resourceMemoryLimit"] == "1Gi"
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu" and res["accelerator"]["resourceCount"] == "1"
    assert {"name": "MODE", "value": "fast"} in spec["deploymentSpec"]["executors"][exec3]["container"]["env"]
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert kube[exec3]["nodeSelector"] == {"labels": {"pool": "highmem"}}
    assert kube[exec3]["imagePullPolicy"] == "Always"
    assert kube[exec3]["secretAsEnv"][0]["secretName"] == "ff-s3"
    exec1 = spec["components"][tasks["node1"][1]["componentRef"]["name"]]["executorLabel"]
    assert spec["deploymentSpec"]["executors"][exec1]["container"]["resources"]["resourceMemoryLimit"] == "2G"
    assert "nodeSelector" not in kube.get(exec1, {})


def test_compile_gives_every_step_the_signing_key_from_a_secret(dag, project, tmp_path, monkeypatch):
    from functionfuse.storage.signing import ENV_KEY

    monkeypatch.setenv(ENV_KEY, "laptop-signing-key-0123456789abcdef")
    wf = make([dag.seed()], "compile-signing", project)
    wf.set_storage(file_storage(tmp_path / "storage"))
    wf.set_storage_secret("ff-s3")
    wf.set_signing_secret("ff-signing")
    text, spec, platform = compiled(wf, tmp_path)
    assert "laptop-signing-key" not in text  # the key itself never enters the pipeline
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert kube, "no Kubernetes settings compiled"
    for settings in kube.values():
        secrets = {s["secretName"]: s["keyToEnv"] for s in settings["secretAsEnv"]}
        assert {"secretKey": "signingKey", "envVar": ENV_KEY} in secrets["ff-signing"]
        assert {e["envVar"] for e in secrets["ff-s3"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    with pytest.raises(ConfigurationError, match="set_signing_secret"):
        wf.set_signing_secret("")


def test_compile_with_the_plan_leaves_out_nodes_that_need_not_run(dag, project, tmp_path):
    out = dag.seed()
    storage = file_storage(tmp_path / "storage")
    local = LocalWorkflow(out, workflow_name="compile-plan")
    local.set_storage(storage)
    assert local.run() == SEED_RESULT
    storage.remove_task("compile-plan", "node2")
    wf = make([out], "compile-plan", project)
    wf.set_storage(storage)
    _text, spec, _ = compiled(wf, tmp_path, resume="plan")
    tasks = tasks_by_node(spec)
    # as in every backend: the missing node2 runs (it needs node1, loaded), node3 is stored
    assert sorted(tasks) == ["node1", "node2", "node3"]
    actions = {}
    for name, (_k, t) in tasks.items():
        ex = spec["components"][t["componentRef"]["name"]]["executorLabel"]
        args = spec["deploymentSpec"]["executors"][ex]["container"]["args"]
        actions[name] = args[args.index("--action") + 1]
    assert actions == {"node1": "load", "node2": "run", "node3": "load"}
    assert actions == dict(zip(wf.graph.names, wf.plan_actions() or []))
    assert "inputs" not in tasks["node1"][1]  # a loaded node reads storage, not its parents
    local.run()  # everything stored again: only node3 (the output) is loaded
    _text, spec, _ = compiled(wf, tmp_path, resume="plan")
    assert sorted(tasks_by_node(spec)) == ["node3"]


# -- compile: execution units, one container step per unit ---------------------------------------
def steps_of(spec):
    """{task key: (the nodes its step runs, in order; the task; the container args)}."""
    out = {}
    for key, task in spec["root"]["dag"]["tasks"].items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        args = spec["deploymentSpec"]["executors"][executor]["container"]["args"]
        out[key] = ([args[k + 1] for k, a in enumerate(args) if a == "--node"], task, args)
    return out


def checked_steps(wf, spec):
    """The steps of a compiled pipeline, checked against the DAG: every node in exactly
    one step, in topological order inside it; a step depends on exactly the steps holding
    its nodes' parents outside it, and reads exactly those parents' values, each from the
    step that holds it."""
    g = wf.graph
    steps = steps_of(spec)
    step_of = {}
    for key, (nodes, _task, _args) in steps.items():
        assert [g.name_index[n] for n in nodes] == sorted(g.name_index[n] for n in nodes), key
        for n in nodes:
            assert n not in step_of, f"{n} is in two steps"
            step_of[n] = key
    assert sorted(step_of) == sorted(g.names)
    for key, (nodes, task, args) in steps.items():
        inside = {g.name_index[n] for n in nodes}
        parents = {p for i in inside for p in g.parents[i]} - inside
        assert sorted(task.get("dependentTasks", [])) == sorted({step_of[g.names[p]] for p in parents}), key
        data = {p for i in inside for p in g.data_parents[i]} - inside
        read = [(args[k + 1], args[k + 2]) for k, a in enumerate(args) if a == "--input"]
        assert sorted(name for name, _ in read) == sorted(g.names[p] for p in data), key
        artifacts = task.get("inputs", {}).get("artifacts", {})
        for name, placeholder in read:
            slot = re.search(r"artifacts\['(\w+)'\]", placeholder).group(1)
            assert artifacts[slot]["taskOutputArtifact"]["producerTask"] == step_of[name], (key, name)
    return steps


def load_example(name):
    """An example script of examples/ as a module (steps would import it by name)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_200_node_example_compiles_to_at_most_10_steps_and_reports_why(project, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # compile needs no Docker
    try:
        example = load_example("kfp_units")
        wf = make([example.campaign()], "compile-units", project)
        assert len(wf.graph) == 200
        _text, spec, _ = compiled(wf, tmp_path)
        steps = checked_steps(wf, spec)
        assert 2 <= len(steps) <= 10
        report = str(wf.last_units)
        assert report.startswith(f"200 running nodes in {len(steps)} units") and "limit 10" in report
        assert all(f"unit {k}:" in report for k in range(1, len(steps) + 1))
        # the off switch: one step per node, as before units
        wf.set_fusion(False)
        _text, spec, _ = compiled(wf, tmp_path)
        assert all(len(nodes) == 1 for nodes, _t, _a in checked_steps(wf, spec).values())
        assert len(spec["root"]["dag"]["tasks"]) == 200
    finally:
        sys.modules.pop("kfp_units", None)


def test_cli_compile_prints_the_steps_and_how_they_were_chosen(project, tmp_path):
    example = os.path.join(ROOT, "examples", "kfp_units.py")
    proc = functionfuse_command("kfp", "compile", f"{example}:campaign", "-o", "p.yaml", project=project, cwd=tmp_path,
                                env_extra={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    steps = len(yaml.safe_load((tmp_path / "p.yaml").read_text())["root"]["dag"]["tasks"])
    assert steps <= 10
    assert f"200 nodes of workflow 'campaign' compiled into {steps} steps" in proc.stderr
    assert f"200 running nodes in {steps} units" in proc.stderr and "unit 1: " in proc.stderr
    proc = functionfuse_command("kfp", "compile", f"{example}:campaign", "-o", "p.yaml", "--json", project=project,
                                cwd=tmp_path, env_extra={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
                                stdin=subprocess.DEVNULL)
    listing = json.loads(proc.stdout)
    assert listing["steps"] == steps == len(listing["units"]) and sum(map(len, listing["units"])) == 200


def test_a_chain_is_one_step_writing_only_what_later_steps_read(dag, project, tmp_path):
    x = dag.sum(1, 1).set_name("c0")
    for k in range(1, 6):
        x = dag.sum(x, k).set_name(f"c{k}")
    after = dag.multiply(x, 2).set_name("after")
    side = dag.minus(x, 1).set_name("side")
    wf = make([after, side], "compile-chain-unit", project)
    _text, spec, _ = compiled(wf, tmp_path)
    steps = checked_steps(wf, spec)
    chain = [s for s in steps.values() if len(s[0]) > 1]
    assert [nodes for nodes, _t, _a in chain] == [[f"c{k}" for k in range(6)]]
    args = chain[0][2]
    # one output artifact: c5, which two later steps read; the other values stay inside the step
    assert [args[k + 1] for k, a in enumerate(args) if a == "--output"] == ["c5"]
    assert "--result" not in args and "--input" not in args
    assert len(steps) == 3


def test_a_step_whose_values_no_later_step_reads_writes_none_and_runs(dag, project, tmp_path):
    """With a plan: a chain missing from storage runs (to be stored) while the output it
    feeds is loaded; its step writes no value artifact, and the step entry accepts that."""
    from functionfuse.backends.addons import _kfpstep

    x = dag.sum(1, 1).set_name("c0")
    for k in range(1, 4):
        x = dag.sum(x, k).set_name(f"c{k}")
    out = dag.multiply(x, 2).set_name("out")
    storage = file_storage(tmp_path / "storage")
    local = LocalWorkflow(out, workflow_name="compile-no-output")
    local.set_storage(storage)
    local.run()
    storage.remove_task("compile-no-output", pattern="c*")
    wf = make([out], "compile-no-output", project)
    wf.set_storage(storage)
    _text, spec, _ = compiled(wf, tmp_path, resume="plan")
    steps = steps_of(spec)
    chain = [args for nodes, _t, args in steps.values() if nodes == ["c0", "c1", "c2", "c3"]]
    assert len(chain) == 1 and "--output" not in chain[0] and "--result" not in chain[0]
    assert sorted(nodes for nodes, _t, _a in steps.values()) == [["c0", "c1", "c2", "c3"], ["out"]]
    snapshot = tmp_path / "dag.pkl"
    snapshot.write_bytes(_kfpstep.dump_snapshot(wf))
    status = tmp_path / "run" / "status"
    argv = ["--snapshot", str(snapshot), "--storage", _kfpstep.encode_storage(storage), "--action", "run",
            "--status", str(status)] + [a for k in range(4) for a in ("--node", f"c{k}")]
    assert _kfpstep.main(argv) == 0
    assert json.loads(status.read_text())["state"] == "succeeded"
    assert sorted(storage.list_tasks("compile-no-output", "c*")) == ["c0", "c1", "c2", "c3"]


def test_nodes_with_different_step_options_are_different_steps(dag, project, tmp_path):
    x = dag.sum(1, 1).set_name("a0")
    for k in range(1, 6):
        x = dag.sum(x, k).set_name(f"a{k}")
    wf = make([x], "compile-options-units", project)
    wf.query("^a[23]$").set_task_args({"cpu_limit": "2", "memory_limit": "1Gi"})
    wf.query("^a5$").set_task_args({"env": {"MODE": "fast"}})
    _text, spec, _ = compiled(wf, tmp_path)
    groups = sorted(nodes for nodes, _t, _a in checked_steps(wf, spec).values())
    assert groups == [["a0", "a1"], ["a2", "a3"], ["a4"], ["a5"]]
    assert wf.fusion_key(2) == wf.fusion_key(3) != wf.fusion_key(1)
    # the same options, set by another call in another order: the same step
    wf.query("^a4$").set_task_args({"memory_limit": "1Gi"}).set_task_args({"cpu_limit": "2"})
    _text, spec, _ = compiled(wf, tmp_path)
    steps = checked_steps(wf, spec)
    assert sorted(nodes for nodes, _t, _a in steps.values()) == [["a0", "a1"], ["a2", "a3", "a4"], ["a5"]]
    executors = spec["deploymentSpec"]["executors"]
    for nodes, task, _args in steps.values():
        container = executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
        assert (container.get("resources", {}).get("resourceCpuLimit") == "2") == (nodes[0] == "a2"), nodes


def test_a_user_group_is_one_step(dag, project, tmp_path):
    src = dag.sum(2, 3).set_name("src")
    preps = [dag.multiply(src, k).set_name(f"prep_{k}") for k in range(1, 5)]
    total = dag.sum(dag.sum(preps[0], preps[1]).set_name("left"), dag.sum(preps[2], preps[3]).set_name("right"))
    wf = make([total.set_name("total")], "compile-group", project)
    wf.query("^prep_").set_group("prep")
    wf.set_fusion(False)  # groups apply with automatic fusion off too
    _text, spec, _ = compiled(wf, tmp_path)
    steps = checked_steps(wf, spec)
    grouped = [(nodes, task) for nodes, task, _a in steps.values() if len(nodes) > 1]
    assert [nodes for nodes, _t in grouped] == [["prep_1", "prep_2", "prep_3", "prep_4"]]
    assert grouped[0][1]["taskInfo"]["name"].startswith("group 'prep': ")
    assert len(steps) == 5
    wf.query("^prep_2$").set_task_args({"cpu_limit": "1"})  # a group shares one step's options
    with pytest.raises(ConfigurationError, match=r"Group 'prep'.*'prep_1'.*'prep_2'"):
        compiled(wf, tmp_path)


def test_a_failure_inside_a_step_names_the_node_and_keeps_the_nodes_done_before_it(dag, project, tmp_path):
    """A step of three nodes whose second fails: its status names that node and lists the
    first as done (and stored); the local runner reads one status per node."""
    from functionfuse.backends.addons import _kfplocal, _kfpstep

    three = dag.sum(1, 2).set_name("three")
    refuses = dag.fail_if(True, three).set_name("refuses")
    last = dag.minus(refuses, 1).set_name("last")
    storage = file_storage(tmp_path / "storage")
    wf = make([last], "step-unit-failure", project)
    wf.set_storage(storage)
    assert [len(u.indices) for u in wf.step_units().steps] == [3]
    snapshot = tmp_path / "dag.pkl"
    snapshot.write_bytes(_kfpstep.dump_snapshot(wf))
    run = tmp_path / "run" / "step"
    argv = ["--snapshot", str(snapshot), "--storage", _kfpstep.encode_storage(storage), "--node", "three", "--node",
            "refuses", "--node", "last", "--output", "last", str(run / "last"), "--status", str(run / "status")]
    assert _kfpstep.main(argv) == 1
    status = json.loads((run / "status").read_text())
    assert (status["state"], status["node"], status["kind"]) == ("failed", "refuses", "NodeExecutionError")
    assert "Node 'refuses' of workflow 'step-unit-failure' failed" in status["message"]
    assert "ValueError: refusing 3" in status["message"]
    assert [d["node"] for d in status["done"]] == ["three"] and status["nodes"] == ["three", "refuses", "last"]
    assert storage.list_tasks("step-unit-failure", "*") == ["three"] and storage.read_task("step-unit-failure", "three") == 3
    assert type(_kfpstep.load_value(str(run / "last"), "last")) is _kfpstep.StepFailure
    per_node = _kfplocal.read_statuses([str(tmp_path / "run")])
    assert [(s["node"], s["state"]) for s in per_node] == [("three", "succeeded"), ("refuses", "failed")]
    assert per_node[0]["action"] == "run"


def test_compile_names_the_image_a_push_gives_and_follows_the_snapshot(dag, project, tmp_path, monkeypatch):
    """Offline, the pipeline names the image build_image() and push_image() will give now:
    the content hash of the project and DAG, on the registry when one is set; a plugin or
    cache policy set later is a new snapshot, so another image."""
    from functionfuse.backends.plugins import InitializerPlugin

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")

    def image_of(wf):
        _text, spec, _ = compiled(wf, tmp_path)
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert len(images) == 1
        return images.pop()

    wf = make([dag.seed()], "compile-image", project)
    local = wf.image_reference()
    assert image_of(wf) == local
    wf.set_registry_credentials({"server": "127.0.0.1:5000/team", "username": "me", "password": PASSWORD})
    assert image_of(wf) == "127.0.0.1:5000/team/" + local
    assert make([dag.seed()], "compile-image", project).image_reference() == local  # the same inputs, the same tag
    wf.query("^node2$").set_plugin(InitializerPlugin(dag.set_mark))
    with_plugin = wf.image_reference()
    assert with_plugin != local and image_of(wf) == "127.0.0.1:5000/team/" + with_plugin
    wf.set_cache("name")  # not the default: the snapshot, so the tag, changes
    assert wf.image_reference() not in (local, with_plugin)


def test_decimal_memory_is_refused_when_set_naming_the_node_and_the_whole_quantity(dag, project, tmp_path):
    wf = make([dag.seed()], "memory", project)
    with pytest.raises(ConfigurationError, match=r"'memory_limit' of node 'node3' must be a memory quantity.*"
                       r"KFP takes no decimals.*not '1.5Gi'\. Use '1536Mi' instead\."):
        wf.query("^node3$").set_task_args({"memory_limit": "1.5Gi"})
    with pytest.raises(ConfigurationError, match=r"'memory_request' of nodes 'node1', 'node2', 'node3'.*Use '500M'"):
        wf.query(None).set_resources(memory_request="0.5G")
    # what kfp accepts is accepted, and compiles: whole memory, decimal or milli CPUs
    wf.query("^node3$").set_task_args({"memory_limit": "1536Mi", "memory_request": "1000", "cpu_limit": ".5",
                                       "cpu_request": "0.25"})
    _text, spec, _ = compiled(wf, tmp_path)
    task = tasks_by_node(spec)["node3"][1]
    res = spec["deploymentSpec"]["executors"][spec["components"][task["componentRef"]["name"]]["executorLabel"]]
    res = res["container"]["resources"]
    assert (res["resourceMemoryLimit"], res["resourceCpuLimit"]) == ("1536Mi", ".5")


def test_a_step_option_kfp_refuses_names_the_node(dag, project, tmp_path):
    wf = make([dag.seed()], "refused", project)
    wf._task_args[wf.graph.name_index["node2"]] = {"memory_limit": "1.5Gi"}  # past the check, as an older version let it
    with pytest.raises(ConfigurationError, match=r"Step options of node 'node2' of workflow 'refused' are refused by KFP"):
        wf.compile(tmp_path / "p.yaml")


def test_a_malformed_registry_is_a_configuration_error(dag, project):
    wf = make([dag.seed()], "bad-registry", project)
    with pytest.raises(ConfigurationError, match=r"'registry example.com' must look like 'host\[:port\]\[/namespace\]'"):
        wf.set_registry_credentials({"server": "registry example.com"})
    # and from the push itself, before any Docker call: the fix is the setting, not the push
    with pytest.raises(ConfigurationError, match="must look like 'host\\[:port\\]\\[/namespace\\]'"):
        stepimage.push_step_image(None, "functionfuse-kfp-x:abc", {"server": "bad registry"})


def test_the_image_tag_is_the_base_images_name_not_whether_it_is_here(dag, project, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    one = make([dag.seed()], "base-name", project, baseimage="registry.example.com/python:3.11-slim")
    other = make([dag.seed()], "base-name", project, baseimage="registry.example.com/python:3.12-slim")
    assert one.image_reference() != other.image_reference()
    assert one.image_reference() == make([dag.seed()], "base-name", project,
                                         baseimage="registry.example.com/python:3.11-slim").image_reference()


# -- the command line (no Docker) ----------------------------------------------------------------
TARGET = """
import os
import {module}
from functionfuse.backends.addons.kfpback import KFPWorkflow

wf = KFPWorkflow({module}.seed(), workflow_name="kfp-seed", baseimage={base!r},
                 registry_credentials={{"server": {server!r}, "username": "ff",
                                        "password": os.environ.get("KFP_TEST_PASSWORD", "unused")}})
wf.set_project({folder!r})
wf.set_wheelhouse({wheelhouse!r})
wf.query("^node3$").set_task_args({{"cpu_limit": "2"}})
"""


def write_target(tmp_path, project, server):
    path = tmp_path / "target.py"
    path.write_text(TARGET.format(module=MODULE, base=LOCAL_BASE, server=server, folder=project[0], wheelhouse=WHEELHOUSE))
    return path


def functionfuse_command(*args, project, cwd, env_extra=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([project[0], ROOT]), **(env_extra or {})}
    kwargs.setdefault("timeout", 900)
    return subprocess.run([sys.executable, "-m", "functionfuse", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, **kwargs)


def test_cli_compile_under_another_name_keeps_the_workflows_settings(project, tmp_path):
    target = write_target(tmp_path, project, "127.0.0.1:5000/team")
    proc = functionfuse_command("kfp", "compile", f"{target}:wf", "--workflow", "renamed", "-o", "p.yaml",
                                project=project, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "renamed"
    tasks = tasks_by_node(spec)
    executors = spec["deploymentSpec"]["executors"]
    ex3 = executors[spec["components"][tasks["node3"][1]["componentRef"]["name"]]["executorLabel"]]
    assert ex3["container"]["resources"]["resourceCpuLimit"] == "2"  # the target's per-node option
    # its registry, and the content-hash tag of the renamed workflow
    assert re.fullmatch(r"127\.0\.0\.1:5000/team/functionfuse-kfp-renamed:[0-9a-f]{20}", ex3["container"]["image"])


def test_cli_compile_applies_the_cluster_settings_before_its_own_options(project, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"FUNCTIONFUSE_STORAGE": "s3://results/ff", "FUNCTIONFUSE_S3_SECRET": "ff-s3",
                                    "FUNCTIONFUSE_KFP_IMAGE_PULL_SECRET": "ff-registry"}))
    target = write_target(tmp_path, project, "127.0.0.1:5000/team")
    proc = functionfuse_command("kfp", "compile", f"{target}:wf", "-o", "p.yaml", "--cluster-settings", str(settings),
                                project=project, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    spec, platform = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    kube = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(kube) == len(spec["deploymentSpec"]["executors"])
    for executor in kube.values():
        assert executor["imagePullSecret"] == [{"secretName": "ff-registry"}]
        assert executor["secretAsEnv"][0]["secretName"] == "ff-s3"
    proc = functionfuse_command("kfp", "compile", f"{target}:wf", "-o", "q.yaml", "--cluster-settings", "no/such/file",
                                project=project, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "'no/such/file' is neither an existing file nor NAMESPACE[/NAME]" in proc.stderr


def test_set_registry_keeps_the_workflows_credentials_for_its_registry_host_only(dag, project):
    mine = {"server": "127.0.0.1:5000/team", "username": "ff", "password": PASSWORD}

    def after(server, username=None, password=None, current=mine):
        wf = make([dag.seed()], "set-registry", project, registry_credentials=current)
        wf.set_registry(server, username=username, password=password)
        return wf._credentials

    assert after(None) == mine
    assert after("127.0.0.1:5000/other") == {**mine, "server": "127.0.0.1:5000/other"}
    assert after("127.0.0.1:5000", "me", "pw") == {"server": "127.0.0.1:5000", "username": "me", "password": "pw"}
    # never sent to another registry host
    assert after("registry.example.com") == {"server": "registry.example.com"}
    with pytest.raises(ConfigurationError, match="No registry the cluster pulls the step image from"):
        after(None, current={})


def test_example_plans_with_the_laptops_s3_endpoint_and_gives_the_steps_theirs(tmp_path):
    """The laptop and the steps see one S3 store at two addresses: the example plans
    through the laptop's (here a real S3 server on 127.0.0.1) and compiles the steps'."""
    s3support = pytest.importorskip("s3support")
    pytest.importorskip("s3fs")
    from functionfuse.backends.addons._kfpstep import decode_storage

    server = s3support.start_server("moto")
    try:
        bucket = server.make_bucket()
        env = {**os.environ, "PYTHONPATH": ROOT, "DOCKER_HOST": "unix:///nonexistent/docker.sock",
               "AWS_ACCESS_KEY_ID": s3support.KEY, "AWS_SECRET_ACCESS_KEY": s3support.SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}
        base = [sys.executable, os.path.join(ROOT, "examples", "kfp_pipeline.py"), "--storage-s3", f"{bucket}/ff",
                "--s3-endpoint", server.endpoint, "--s3-step-endpoint", "http://minio.kubeflow.svc:9000",
                "--s3-secret", "functionfuse-s3"]
        plan = subprocess.run([*base, "--plan"], capture_output=True, text=True, env=env, timeout=300)
        assert plan.returncode == 0, plan.stderr[-3000:]
        rows = [line.split() for line in plan.stdout.strip().splitlines()[1:]]
        assert len(rows) == 10 and all(r[1:3] == ["run", "missing"] for r in rows)
        proc = subprocess.run([*base, "--compile", str(tmp_path / "p.yaml")], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.stop()
    text = (tmp_path / "p.yaml").read_text()
    assert s3support.KEY not in text and s3support.SECRET not in text
    docs = list(yaml.safe_load_all(text))
    args = next(iter(docs[0]["deploymentSpec"]["executors"].values()))["container"]["args"]
    storage = decode_storage(args[args.index("--storage") + 1])
    assert storage._options["endpoint_url"] == "http://minio.kubeflow.svc:9000"
    kube = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["secretAsEnv"][0]["secretName"] == "functionfuse-s3" for e in kube.values())


# -- configuration errors ------------------------------------------------------------------------
def test_unknown_or_bad_task_options_are_named(dag, project):
    wf = make([dag.seed()], "bad-options", project)
    with pytest.raises(ConfigurationError, match=r"'cpus' is not a step option.*Valid options: .*cpu_limit"):
        wf.query("^node1$").set_task_args({"cpus": 2})
    with pytest.raises(ConfigurationError, match=r"'memory_limit' of node 'node1' must be a memory quantity.*'lots'"):
        wf.query("^node1$").set_task_args({"memory_limit": "lots"})
    with pytest.raises(ConfigurationError, match=r"'image_pull_policy' of nodes 'node1', 'node2', 'node3' must be one of Always, Never, IfNotPresent"):
        wf.query(None).set_task_args({"image_pull_policy": "always"})
    with pytest.raises(ConfigurationError, match=r"'retries' of nodes .* must be a whole number"):
        wf.query(None).set_task_args({"retries": -1})


def test_registry_credentials_are_checked_and_never_shown(dag, project):
    wf = make([dag.seed()], "creds", project)
    with pytest.raises(ConfigurationError, match=r"unknown keys \['token'\]"):
        wf.set_registry_credentials({"server": "r:5000", "token": "x"})
    with pytest.raises(ConfigurationError, match="both 'username' and 'password'"):
        wf.set_registry_credentials({"server": "r:5000", "username": "me"})
    with pytest.raises(ConfigurationError, match="No registry to push to: set_registry_credentials"):
        wf.push_image()
    wf.set_registry_credentials({"server": "https://r.example.com:5000/", "username": "me", "password": PASSWORD})
    assert wf.registry == "r.example.com:5000"
    assert PASSWORD not in repr(wf) and PASSWORD not in repr(vars(wf).get("last_build"))
    with pytest.raises(ConfigurationError, match="kfp_host 'localhost:3000' must be a URL"):
        wf.set_kfp_host("localhost:3000")
    with pytest.raises(ConfigurationError, match="Base image 'python 3' must be an image reference"):
        wf.set_baseimage("python 3")


def test_an_unpicklable_argument_is_named(project):
    import threading

    from functionfuse import workflow

    @workflow
    def use(lock):
        return lock

    wf = make([use(threading.Lock()).set_name("uses_a_lock")], "unpicklable", project)
    with pytest.raises(SerializationError, match=r"Node 'uses_a_lock'.*cannot be serialised with cloudpickle"):
        wf.snapshot()


def test_build_without_a_docker_daemon_says_how_to_start_one(dag, project, monkeypatch):
    from functionfuse.kit.images import DockerUnavailableError

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    wf = make([dag.seed()], "no-docker", project)
    with pytest.raises(DockerUnavailableError, match="No Docker daemon answers.*scripts/setup-docker.sh"):
        wf.build_image()


def test_missing_kfp_gives_the_install_hint():
    code = (
        "import sys; sys.modules['kfp'] = None\n"
        "try:\n"
        "    import functionfuse.backends.addons.kfpback\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "MissingDependencyError" in out and "pip install 'functionfuse[kfp]'" in out


# -- the build context (no Docker) ---------------------------------------------------------------
def context_of(wf):
    buf = io.BytesIO()
    digest, _count = stepimage.write_context(buf, wf._image_inputs(), stepimage.step_requirements())
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return digest, files


def test_build_context_honours_dockerignore_and_leaves_storage_out(dag, project, tmp_path):
    folder = project[0]
    wf = make([dag.seed()], "context", project)
    wf.set_storage(file_storage(os.path.join(folder, "storage")))
    os.makedirs(os.path.join(folder, "storage", "context"), exist_ok=True)
    with open(os.path.join(folder, "storage", "context", "node1.ffr"), "wb") as f:
        f.write(b"stored result")
    wf.set_registry_credentials({"server": "127.0.0.1:5000", "username": "me", "password": PASSWORD})
    _digest, files = context_of(wf)
    names = set(files)
    assert f"project/{MODULE}.py" in names and "project/README.txt" in names and "project/.dockerignore" in names
    assert not any(n.startswith(("project/data/", "project/storage/")) or n.endswith(".secret") for n in names)
    assert "dag.pkl" in names and "functionfuse/backends/addons/_kfpstep.py" in names
    assert not any("__pycache__" in n for n in names)
    assert not any(PASSWORD.encode() in data for data in files.values())


def test_content_hash_follows_the_code_and_nothing_else(dag, project, tmp_path):
    folder = project[0]
    wf = make([dag.seed()], "hash", project)
    d1, _ = context_of(wf)
    d2, _ = context_of(make([dag.seed()], "hash", project))
    assert d1 == d2  # the same DAG built again: the same content
    extra = os.path.join(folder, "helper.py")
    with open(extra, "w") as f:
        f.write("X = 1\n")
    try:
        d3, _ = context_of(wf)
        assert d3 != d1
        with open(extra, "w") as f:
            f.write("X = 2\n")  # a one-line change
        assert context_of(wf)[0] not in (d1, d3)
    finally:
        os.remove(extra)
    assert context_of(wf)[0] == d1


# -- a step meeting a damaged stored result (in this process, no Docker) -----------------------
def damage(storage, workflow_name, node):
    """Overwrite the last bytes of a stored result: its header stays readable."""
    with open(os.path.join(storage.path, workflow_name, f"{node}.ffr"), "r+b") as fh:
        fh.seek(-3, os.SEEK_END)
        fh.write(b"\x00\x01\x02")


def test_a_step_marks_a_damaged_stored_result_and_the_steps_after_it_pass_it_on(dag, project, tmp_path):
    from functionfuse.backends.addons import _kfpstep
    from functionfuse.errors import CorruptedResultError

    storage = file_storage(tmp_path / "storage")
    local = LocalWorkflow(dag.seed(), workflow_name="step-damaged")
    local.set_storage(storage)
    assert local.run() == SEED_RESULT
    damage(storage, "step-damaged", "node1")
    wf = make([dag.seed()], "step-damaged", project)
    snapshot = tmp_path / "dag.pkl"
    snapshot.write_bytes(_kfpstep.dump_snapshot(wf))
    common = ["--snapshot", str(snapshot), "--storage", _kfpstep.encode_storage(storage)]

    def step(node, *args, damaged="mark"):
        out = tmp_path / node
        argv = [*common, "--node", node, "--result", str(out / "result"), "--status", str(out / "status"), *args]
        code = _kfpstep.main([*argv, "--damaged", damaged] if damaged else argv)
        with open(out / "status") as f:
            return code, json.load(f), _kfpstep.load_value(str(out / "result"), node)

    code, status, value = step("node1", "--action", "load")
    assert code == 0 and status["state"] == "succeeded" and status["action"] == "damaged"
    assert status["damaged"] == "node1" and "checksum" in status["message"]
    assert type(value) is _kfpstep.DamagedResult and value.node == "node1"
    _, _, node2 = step("node2", "--action", "load")
    assert node2 == 3
    # node3 gets the marker: it does not run (it would store a wrong value), it hands it on
    before = storage.read_metadata_many("step-damaged", ["node3"])
    code, status, value = step("node3", "--action", "run", "--input", "node1", str(tmp_path / "node1" / "result"),
                               "--input", "node2", str(tmp_path / "node2" / "result"))
    assert code == 0 and (status["action"], status["damaged"]) == ("passed-on", "node1")
    assert type(value) is _kfpstep.DamagedResult and value.node == "node1"
    assert storage.read_metadata_many("step-damaged", ["node3"]) == before
    # without --damaged mark (pipelines for a cluster): the step fails, naming the node and the fix
    code, status, value = step("node1", "--action", "load", damaged=None)
    assert code == 1 and (status["state"], status["kind"]) == ("failed", "CorruptedResultError")
    assert "node 'node1' of workflow 'step-damaged'" in status["message"]
    assert "functionfuse storage rm step-damaged 'node1'" in status["message"]
    assert type(value) is _kfpstep.StepFailure
    with pytest.raises(CorruptedResultError):
        storage.read_task("step-damaged", "node1")  # left as it was, for the user to remove


def test_a_step_refuses_a_result_replaced_after_its_plan(dag, project, tmp_path, monkeypatch):
    """A step plans (``auto``), then reads node3's stored result (the output: the plan loads it); if another process
    replaced it in between (same fingerprint, other value), the step must not load it:
    it is handled as a damaged result (marked), as in every other backend."""
    from functionfuse.backends.addons import _kfpstep

    storage = file_storage(tmp_path / "storage")
    local = LocalWorkflow(dag.seed(), workflow_name="step-replaced")
    local.set_storage(storage)
    assert local.run() == SEED_RESULT
    wf = make([dag.seed()], "step-replaced", project)
    snapshot = tmp_path / "dag.pkl"
    snapshot.write_bytes(_kfpstep.dump_snapshot(wf))
    other = file_storage(tmp_path / "storage")
    meta = {k: v for k, v in other.read_metadata("step-replaced", "node3").items() if k not in ("checksum", "format", "signed")}
    read = type(storage).read_task

    def replaced_first(self, workflow, task):
        if task == "node3":
            other.save(workflow, task, -1, meta)  # the fingerprint the plan expects, another value
        return read(self, workflow, task)

    monkeypatch.setattr(type(storage), "read_task", replaced_first)
    out = tmp_path / "node3"
    argv = ["--snapshot", str(snapshot), "--storage", _kfpstep.encode_storage(storage), "--node", "node3",
            "--action", "auto", "--result", str(out / "result"), "--status", str(out / "status"), "--damaged", "mark"]
    assert _kfpstep.main(argv) == 0
    with open(out / "status") as f:
        status = json.load(f)
    assert status["action"] == "damaged" and "replaced after the plan" in status["message"]
    assert type(_kfpstep.load_value(str(out / "result"), "node3")) is _kfpstep.DamagedResult


# -- submission through the real kfp.Client (no Docker) ------------------------------------------
def test_submit_sends_the_compiled_pipeline_through_kfp_client(dag, project, tmp_path):
    with KFPAPIStandIn() as api:
        wf = make([dag.seed()], "submit", project, kfp_host=api.url)
        package = wf.compile(tmp_path / "p.yaml", image="127.0.0.1:5000/functionfuse-kfp-submit:abc")
        run = wf.submit(package, experiment_name="functionfuse-tests")
    assert re.fullmatch(r"[0-9a-f-]{36}", run.run_id)
    assert run.url == f"{api.url}/#/runs/details/{run.run_id}"
    posted = api.run_requests()
    assert len(posted) == 1
    spec = posted[0]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "submit"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"127.0.0.1:5000/functionfuse-kfp-submit:abc"}
    experiments = [b for m, p, b in api.requests if m == "POST" and p.startswith("/apis/v2beta1/experiments")]
    assert experiments[0]["display_name"] == "functionfuse-tests"
    assert posted[0]["experiment_id"] == next(iter(api.experiments))


def shared_inputs_digest():
    """A digest of what every step image holds besides the test's project: the
    functionfuse package and the wheelhouse."""
    import hashlib

    from functionfuse.kit.images import wheelhouse_digest

    root, files = stepimage.package_files()
    h = hashlib.sha256(wheelhouse_digest(WHEELHOUSE).encode() if os.path.isdir(WHEELHOUSE) else b"")
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + f.read())
    return h.hexdigest()


def while_the_shared_inputs_are_unchanged(check, attempts=3):
    """Run *check* (it compares image tags made at different times) again if it failed
    while the functionfuse package or the wheelhouse changed: both are in every step
    image, so a change in between rightly gives another tag."""
    for attempt in range(attempts):
        before = shared_inputs_digest()
        try:
            return check()
        except AssertionError:
            if attempt == attempts - 1 or shared_inputs_digest() == before:
                raise


def drop(client, ref):
    """Remove a tag a test made (a stopped step container may still hold the image)."""
    import docker

    try:
        client.images.remove(ref, force=True, noprune=False)
    except docker.errors.NotFound:
        pass


# -- with Docker: images ------------------------------------------------------------------------
TEST_WORKFLOWS = {"kfp-seed", "kfp-stateful", "kfp-two-outputs", "kfp-failure", "kfp-s3", "kfp-example-test", "kfp-on-ff",
                  "kfp-pull", "kfp-settings", "kfp-base-alias", "kfp-killed", "kfp-damaged"}


@pytest.fixture(scope="module")
def client():
    client = docker_client()
    yield client
    # the step images of this module's workflows (layers shared with later runs stay cached)
    for image in client.images.list(filters={"label": stepimage.LABEL_WORKFLOW}):
        if image.labels.get(stepimage.LABEL_WORKFLOW) in TEST_WORKFLOWS:
            for tag in image.tags:
                drop(client, tag)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    import shutil

    from functionfuse.kit.registry import LocalRegistry

    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (scripts/setup-docker.sh installs it)")
    with LocalRegistry(users={"ff": PASSWORD}, root=str(tmp_path_factory.mktemp("registry"))) as reg:
        yield reg


@pytest.fixture(scope="module")
def built(client, project):
    """The seed DAG's image, built once for the module (log lines collected; forced, so
    the build runs even if an earlier session left the image: Docker's cache keeps it quick)."""
    lines: list[str] = []
    wf = make([project[1].seed()], "kfp-seed", project)
    ref = wf.build_image(on_log=lines.append, force=True)
    return wf, ref, lines


@pytest.mark.slow
def test_build_image_holds_the_project_and_the_dag(client, built):
    wf, ref, lines = built
    assert ref == wf.image and re.fullmatch(r"functionfuse-kfp-kfp-seed:[0-9a-f]{20}", ref)
    assert any("Step" in line for line in lines)  # the build log reached the caller
    script = (
        "import os, sys; from functionfuse.backends.addons._kfpstep import load_snapshot;"
        "wf = load_snapshot(open('/opt/functionfuse-kfp/dag.pkl','rb').read());"
        "print(sorted(wf.graph.names)); print(sorted(os.listdir('.')));"
        "import kfp, cloudpickle; print(kfp.__version__)"
    )
    out = client.containers.run(ref, ["python3", "-c", script], remove=True, network_mode="none").decode().split("\n")
    import kfp

    assert out[0] == "['node1', 'node2', 'node3']"
    listing = eval(out[1])  # noqa: S307 - our own output
    assert f"{MODULE}.py" in listing and "README.txt" in listing
    assert "data" not in listing and "token.secret" not in listing
    assert out[2] == kfp.__version__


@pytest.mark.slow
def test_build_on_a_functionfuse_image_uses_its_environment(client, project):
    """A base image whose python3 is a virtual environment (functionfuse's kfp image) is
    installed into, so its packages stay importable in the steps."""
    from functionfuse import __version__

    base = f"functionfuse:{__version__}-py311-kfp"
    try:
        client.images.get(base)
    except Exception:
        pytest.skip(f"{base} is not built here (tests/test_images.py builds it)")
    wf = make([project[1].seed()], "kfp-on-ff", project, baseimage=base)
    ref = wf.build_image(on_log=None)
    code = "import dask, numpy, functionfuse, os, sys; print(functionfuse.__file__); print(os.path.realpath(sys.prefix))"
    out = client.containers.run(ref, ["python3", "-c", code], remove=True, network_mode="none").decode().split()
    assert out[0] == "/opt/functionfuse-kfp/lib/functionfuse/__init__.py"  # the functionfuse that compiled the DAG
    assert out[1] == "/opt/functionfuse"  # the base image's environment
    assert wf.run_local() == SEED_RESULT


@pytest.mark.slow
def test_unchanged_project_is_not_rebuilt_and_a_change_reuses_cached_layers(client, built, project):
    def unchanged() -> str:
        ref = make([project[1].seed()], "kfp-seed", project).build_image(on_log=None)  # built, or found built
        again = make([project[1].seed()], "kfp-seed", project)
        assert again.build_image(on_log=None) == ref
        assert again.last_build is not None and not again.last_build.built
        return ref

    ref = while_the_shared_inputs_are_unchanged(unchanged)
    path = os.path.join(project[0], "changed.py")
    with open(path, "w") as f:
        f.write("VALUE = 1\n")
    lines: list[str] = []
    try:
        changed = make([project[1].seed()], "kfp-seed", project)
        new_ref = changed.build_image(on_log=lines.append)
    finally:
        os.remove(path)
    assert new_ref != ref and changed.last_build is not None and changed.last_build.built
    text = "\n".join(lines)
    # the dependency install layer came from the cache; the project layer did not
    install = text.index("pip install")
    assert "Using cache" in text[install : install + 300]
    drop(client, new_ref)


@pytest.mark.slow
def test_push_with_credentials_in_memory_only(client, built, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # where docker login would write
    wf, _ref, _ = built
    wf.set_registry_credentials({"server": registry.address, "username": "ff", "password": PASSWORD})

    def push() -> tuple[str, str]:
        ref = wf.build_image(on_log=None)  # the image of the project as it is now (found built)
        pushed = wf.push_image()
        repo, tag = ref.split(":")
        assert pushed == f"{registry.address}/{repo}:{tag}"
        return ref, pushed

    ref, pushed = while_the_shared_inputs_are_unchanged(push)
    repo, tag = ref.split(":")
    assert tag in registry.tags(repo, auth=("ff", PASSWORD))
    assert not (tmp_path / "docker-config").exists()  # nothing written by a login
    image = client.images.get(ref)
    assert PASSWORD not in json.dumps(image.attrs) and PASSWORD not in json.dumps(image.history())
    # a pipeline compiled now names the pushed image, not the local tag the cluster cannot pull
    _text, spec, _ = compiled(wf, tmp_path)
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {pushed}
    drop(client, pushed)


def pull_error(client, repo, tag, auth=None):
    """What the daemon says when it cannot pull ``repo:tag`` (None: pulled)."""
    import docker

    try:
        for chunk in client.api.pull(repo, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk or "errorDetail" in chunk:
                return chunk.get("error") or chunk["errorDetail"].get("message", "")
    except docker.errors.APIError as exc:
        return str(exc)
    return None


@pytest.mark.slow
def test_the_pushed_image_pulls_back_with_credentials_and_runs_a_step(client, registry, project):
    import docker

    wf = make([project[1].seed()], "kfp-pull", project)
    wf.set_registry_credentials({"server": registry.address, "username": "ff", "password": PASSWORD})
    pushed = wf.push_image()
    assert wf.image is not None
    built_id = client.images.get(wf.image).id
    repo, tag = pushed.rsplit(":", 1)
    manifest = registry.manifest(repo.split("/", 1)[1], tag, auth=("ff", PASSWORD))
    assert manifest["config"]["digest"] == built_id  # the registry holds this very image
    # gone from here, then pulled back from the registry
    drop(client, wf.image)
    drop(client, pushed)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(built_id)
    assert re.search(r"(?i)unauthori[sz]ed|authentication required|no basic auth", pull_error(client, repo, tag) or "")
    assert pull_error(client, repo, tag, auth={"username": "ff", "password": PASSWORD}) is None
    pulled = client.images.get(pushed)
    try:
        assert pulled.id == built_id
        assert any(d.startswith(f"{repo}@sha256:") for d in pulled.attrs["RepoDigests"])
        # one step from the pulled reference: node1 = sum(1, 1)
        script = ("python3 -m functionfuse.backends.addons._kfpstep --node node1 --action run --result /tmp/result && "
                  "python3 -c \"import pickle; print(pickle.load(open('/tmp/result', 'rb')))\"")
        out = client.containers.run(pushed, ["sh", "-c", script], remove=True, network_mode="none")
        assert out.decode().strip().splitlines()[-1] == "2"
    finally:
        drop(client, pushed)


@pytest.mark.slow
def test_the_tag_does_not_change_when_the_base_image_arrives(client, project):
    """The base image counts by its name: the tag computed while it is absent (offline,
    or before a build pulls it) is the one the build gives once it is here."""
    alias = "functionfuse-local/kfp-test-base:alias"
    wf = make([project[1].seed()], "kfp-base-alias", project, baseimage=alias)

    def check():
        drop(client, alias)
        expected = wf.image_reference()
        client.images.get(LOCAL_BASE).tag(alias)  # what a pull would do
        try:
            assert wf.image_reference() == expected
            assert wf.build_image(on_log=None) == expected and wf.last_build is not None and wf.last_build.built
            assert wf.build_image(on_log=None) == expected and not wf.last_build.built
        finally:
            drop(client, alias)
            drop(client, expected)

    while_the_shared_inputs_are_unchanged(check)


@pytest.mark.slow
def test_push_with_a_wrong_password_fails_clearly(built, registry):
    wf, _ref, _ = built
    wrong = "not-the-password-123"
    wf.set_registry_credentials({"server": registry.address, "username": "ff", "password": wrong})
    with pytest.raises(ImagePushError, match=rf"Registry '{re.escape(registry.address)}' refused user 'ff'") as err:
        wf.push_image()
    assert wrong not in str(err.value)
    assert "set_registry_credentials" in str(err.value)


# -- with Docker: running steps in containers ---------------------------------------------------
@pytest.mark.slow
def test_run_local_runs_the_seed_dag_in_containers_and_resumes(client, built, project, tmp_path):
    wf, ref, _ = built
    storage = file_storage(tmp_path / "storage")
    wf.set_storage(storage)
    assert wf.run_local() == SEED_RESULT
    assert wf.last_run.ran == 3
    assert sorted(storage.list_tasks("kfp-seed", "*")) == ["node1", "node2", "node3"]
    metadata = storage.read_metadata_many("kfp-seed", ["node1", "node2", "node3"])
    assert [metadata[n]["node"] for n in ("node1", "node2", "node3")] == ["node1", "node2", "node3"]
    assert all("fingerprint" in m for m in metadata.values())
    # second run: nothing runs, the output is loaded in its step
    assert wf.run_local() == SEED_RESULT
    assert (wf.last_run.ran, wf.last_run.loaded, wf.last_run.skipped) == (0, 1, 2)
    # a lost intermediate result runs again (with node1 loaded for it); node3 stays stored
    storage.remove_task("kfp-seed", "node2")
    assert wf.run_local() == SEED_RESULT
    assert (wf.last_run.ran, wf.last_run.loaded) == (1, 2)
    assert storage.read_task("kfp-seed", "node2") == 3
    # the storage is not in the image: a new storage state, or another storage, needs no rebuild
    now = wf.image
    wf.set_storage(file_storage(tmp_path / "other-storage"))
    assert wf.image_reference() == now


@pytest.mark.slow
def test_run_local_recomputes_a_damaged_stored_result_and_never_returns_a_marker(client, project, tmp_path):
    import warnings

    from functionfuse.errors import ResultRecomputedWarning

    storage = file_storage(tmp_path / "storage")
    wf = make([project[1].seed()], "kfp-damaged", project)
    wf.set_storage(storage)
    assert wf.run_local() == SEED_RESULT
    # node3 runs again and needs node1, whose stored result is damaged past its header
    storage.remove_task("kfp-damaged", "node3")
    damage(storage, "kfp-damaged", "node1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert wf.run_local() == SEED_RESULT
    assert any(issubclass(w.category, ResultRecomputedWarning) and "node1" in str(w.message) for w in caught)
    assert (wf.last_run.recomputed, wf.last_run.ran) == (1, 2)  # node1, then node3 in the new plan
    assert storage.read_task("kfp-damaged", "node1") == 2
    assert storage.read_task("kfp-damaged", "node3") == SEED_RESULT
    # the output itself damaged: loaded as a marker, recomputed, never returned
    damage(storage, "kfp-damaged", "node3")
    with pytest.warns(ResultRecomputedWarning, match="node3"):
        assert wf.run_local() == SEED_RESULT
    assert wf.last_run.recomputed == 1 and storage.read_task("kfp-damaged", "node3") == SEED_RESULT
    drop(client, wf.image)


@pytest.mark.slow
def test_run_local_stateful_class_nodes(client, project, tmp_path):
    wf = make([project[1].stateful()], "kfp-stateful", project)
    storage = file_storage(tmp_path / "storage")
    wf.set_storage(storage)
    assert wf.run_local() == STATEFUL_RESULT
    assert storage.read_task("kfp-stateful", "five_plus_one") == 6
    first = wf.image
    # the steps stored the fingerprints this process computes: every result is current
    # (the default policy is "fingerprint"; a policy set after the first build goes into a
    # new snapshot, checked below)
    wf.set_cache("name")
    assert {e.state for e in wf.plan()} == {"current"}
    assert storage.read_task("kfp-stateful", "IncrementalSum").start == 1  # stored when constructed
    storage.remove_task("kfp-stateful", "three_plus_two")
    assert wf.run_local() == STATEFUL_RESULT
    plan_ran = wf.last_run.ran
    assert plan_ran == 3  # IncrementalSum and one_plus_two replayed, three_plus_two run
    assert storage.read_task("kfp-stateful", "three_plus_two") == 5
    # the steps ran from a snapshot with the policy set after the first build
    assert wf.image is not None and wf.image != first
    code = ("from functionfuse.backends.addons._kfpstep import load_snapshot;"
            "print(load_snapshot(open('/opt/functionfuse-kfp/dag.pkl', 'rb').read()).cache_policy)")
    assert client.containers.run(wf.image, ["python3", "-c", code], remove=True, network_mode="none").decode().strip() \
        == "name"
    drop(client, first)
    drop(client, wf.image)


@pytest.mark.slow
def test_run_local_without_storage_returns_several_outputs(client, project):
    m = project[1]
    facts = m.where().set_name("where")
    wf = make([m.seed(), facts], "kfp-two-outputs", project)
    result, where = wf.run_local()
    assert result == SEED_RESULT
    assert where["in_image"] is True and where["cwd"] == "/opt/functionfuse-kfp/project"
    assert where["pid"] != os.getpid()
    drop(client, wf.image)


@pytest.mark.slow
def test_a_nodes_env_reaches_its_local_container(client, project):
    m = project[1]
    wf = make([m.env_value("FF_NODE_MODE").set_name("mode"), m.env_value("FF_RUN_WIDE").set_name("wide")],
              "kfp-settings", project)
    wf.query("^mode$").set_task_args({"env": {"FF_NODE_MODE": "fast", "FF_RUN_WIDE": "from the node"}})
    wf.query("^wide$").set_task_args({"env": {"FF_RUN_WIDE": "from the node"}})
    # the runner's environment wins over a node's env of the same name
    assert wf.run_local(environment={"FF_RUN_WIDE": "from the run"}) == ["fast", "from the run"]


@pytest.mark.slow
def test_a_plugin_set_after_a_build_reaches_the_steps(client, project):
    from functionfuse.backends.plugins import InitializerPlugin

    m = project[1]
    wf = make([m.env_value("FF_PLUGIN_MARK").set_name("mark")], "kfp-settings", project)
    assert wf.run_local() is None
    first = wf.image
    wf.query("^mark$").set_plugin(InitializerPlugin(m.set_mark))
    assert wf.run_local() == "set by the plugin"  # run_local builds the new snapshot
    assert wf.image != first
    drop(client, first)


@pytest.mark.slow
def test_a_failing_step_names_its_node(client, project):
    m = project[1]
    wf = make([m.fail_if(True, m.sum(1, 2).set_name("three")).set_name("refuses")], "kfp-failure", project)
    with pytest.raises(NodeExecutionError, match=r"Node 'refuses' of workflow 'kfp-failure' failed") as err:
        wf.run_local()
    assert err.value.node_name == "refuses"
    assert "ValueError: refusing 3" in str(err.value)  # the step's own error, from its container
    # both nodes ran in one container step: the node done before the failure counts as done
    assert [len(u.indices) for u in wf.last_units.steps] == [2]
    assert (wf.last_run.ran, wf.last_run.failed) == (1, "refuses")
    drop(client, wf.image)


@pytest.mark.slow
def test_a_step_killed_before_it_ends_is_named_from_its_status_file(client, project):
    """The step's status artifact says it started and never finished: its node is named
    (from the status channel, not the runner's log text)."""
    m = project[1]
    wf = make([m.killed(m.sum(1, 2).set_name("three")).set_name("oom")], "kfp-killed", project)
    with pytest.raises(NodeExecutionError, match=r"step of node 'oom' of workflow 'kfp-killed' started and ended "
                                                 r"without a result") as err:
        wf.run_local()
    assert err.value.node_name == "oom"
    assert wf.last_run.ran == 1 and wf.last_run.error is not None  # node 'three' ran; the report says how it ended
    assert [len(u.indices) for u in wf.last_units.steps] == [2]  # in the same step, killed after it
    drop(client, wf.image)


@pytest.mark.slow
def test_run_local_with_s3_storage_keeps_credentials_out_of_the_pipeline(client, project, tmp_path):
    s3support = pytest.importorskip("s3support")
    pytest.importorskip("s3fs")
    server = s3support.start_server("moto")
    try:
        bucket = server.make_bucket()
        storage = storage_factory({"kind": "S3", "options": {"path": f"{bucket}/ff", "s3fs": {
            "endpoint_url": server.endpoint, "key": s3support.KEY, "secret": s3support.SECRET}}})
        wf = make([project[1].seed()], "kfp-s3", project)
        wf.set_storage(storage)
        text, _spec, _ = compiled(wf, tmp_path)
        assert s3support.SECRET not in text and s3support.KEY not in text
        assert wf.run_local(environment={"AWS_DEFAULT_REGION": "us-east-1"}) == SEED_RESULT
        assert sorted(storage.list_tasks("kfp-s3", "*")) == ["node1", "node2", "node3"]
        assert storage.read_task("kfp-s3", "node2") == 3
        assert wf.run_local(environment={"AWS_DEFAULT_REGION": "us-east-1"}) == SEED_RESULT
        assert (wf.last_run.ran, wf.last_run.loaded) == (0, 1)
    finally:
        server.stop()


@pytest.mark.slow
def test_run_local_steps_sign_with_the_key_of_this_machine(client, built, tmp_path, monkeypatch):
    from functionfuse.errors import SigningKeyError
    from functionfuse.storage.signing import ENV_KEY

    wf, _ref, _ = built
    storage = file_storage(tmp_path / "storage")
    wf.set_storage(storage)
    monkeypatch.setenv(ENV_KEY, "kfp-signing-key-0123456789abcdef")
    assert wf.run_local() == SEED_RESULT  # the steps got the key: they stored signed results
    assert all(storage.read_metadata("kfp-seed", n)["signed"] for n in ("node1", "node2", "node3"))
    assert wf.run_local() == SEED_RESULT and wf.last_run.ran == 0  # and read them back, verified
    monkeypatch.setenv(ENV_KEY, "another-key-0123456789abcdef")
    with pytest.raises(SigningKeyError, match="key id"):
        storage.read_task("kfp-seed", "node3")


# -- with Docker: the backend conformance suite, every node in its own container -------------------
class ContainerRuns(KFPWorkflow):
    """KFPWorkflow whose ``run()`` is ``run_local()``: what the conformance suite calls.

    The suite's node functions record their calls in files under the test's temporary
    folder (``FUNCTIONFUSE_TEST_CALLS``): that folder is mounted into every container and
    the variable passed on. Their module imports pytest, which the image lacks, so it
    travels by value (cloudpickle's ``register_pickle_by_value``).
    """

    mount = ""

    def run(self):
        # only a folder the containers see (a Ray test earlier in the process may have
        # pointed the variable at a folder of its own, not mounted)
        folder = os.environ.get(contract.CALLS)
        env = {contract.CALLS: folder} if folder and folder.startswith(self.mount + os.sep) else {}
        return self.run_local(environment=env, mounts={self.mount: self.mount})


@pytest.mark.slow
class TestKFPConformance(BackendConformance, LoadErrorConformance, UnitConformance):
    """Every node in a container step, chains and groups fused into one step each (the default)."""

    fusion = True

    @pytest.fixture(scope="class")
    def empty_project(self, tmp_path_factory, client):
        import cloudpickle

        for module in (contract, contract_units):
            cloudpickle.register_pickle_by_value(module)
        yield str(tmp_path_factory.mktemp("empty-project"))
        for module in (contract, contract_units):
            cloudpickle.unregister_pickle_by_value(module)

    @pytest.fixture
    def make_workflow(self, empty_project, tmp_path_factory):
        def make(*nodes, workflow_name):
            TEST_WORKFLOWS.add(workflow_name)
            wf = ContainerRuns(*nodes, workflow_name=workflow_name, baseimage=LOCAL_BASE)
            wf.set_project(empty_project)
            wf.set_wheelhouse(WHEELHOUSE)
            wf.mount = str(tmp_path_factory.getbasetemp())
            if not self.fusion:
                wf.set_fusion(False)
            return wf

        return make


@pytest.mark.slow
class TestKFPConformanceUnfused(TestKFPConformance):
    """The same suite with fusion off: one container step per node (groups still one step)."""

    fusion = False


# -- with Docker: run() = build, push, compile, submit ------------------------------------------
@pytest.mark.slow
def test_run_builds_pushes_and_submits(client, built, registry, project, tmp_path):
    wf, ref, _ = built
    storage = file_storage(tmp_path / "storage")
    with KFPAPIStandIn() as api:
        wf.set_kfp_host(api.url)
        wf.set_registry_credentials({"server": registry.address, "username": "ff", "password": PASSWORD})
        wf.set_storage(None)
        run = wf.run()
        assert wf.image is not None and run.image == f"{registry.address}/{wf.image}"
        spec = api.run_requests()[0]["pipeline_spec"]
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert images == {run.image}
        assert PASSWORD not in json.dumps(api.requests)
        # wait=True: the stand-in reports the run finished; results come from storage,
        # here filled by a local run in containers
        wf.set_storage(storage)
        assert wf.run_local() == SEED_RESULT
        assert wf.run(wait=True) == SEED_RESULT
        assert len(api.run_requests()) == 2
    drop(client, run.image)


@pytest.mark.slow
def test_example_runs_locally_from_a_script(client, tmp_path):
    """The worked example as a user runs it: its DAG lives in the script (``__main__``)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, os.path.join(ROOT, "examples", "kfp_pipeline.py"), "--local", "--base-image", LOCAL_BASE,
           "--wheelhouse", WHEELHOUSE, "--storage", str(tmp_path / "storage"), "--workflow-name", "kfp-example-test"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"node3": SEED_RESULT, "six_minus_two": STATEFUL_RESULT}
    # the stored class instance loads back here, where the script is __main__ again
    storage = file_storage(tmp_path / "storage")
    assert sorted(storage.list_tasks("kfp-example-test", "*")) == sorted(
        ["node1", "node2", "node3", "four_minus_three", "IncrementalSum", "three_minus_one", "one_plus_two",
         "three_plus_two", "five_plus_one", "six_minus_two"]
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "not rebuilt" not in proc.stderr:
        # the image holds the functionfuse package of this checkout: an edit to it in
        # between rebuilds it (rightly); unchanged, a third run must find it built
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not rebuilt" in proc.stderr
    assert "0 run, 2 loaded from storage, 8 skipped" in proc.stderr


@pytest.mark.slow
def test_cli_submit_pushes_with_the_targets_credentials(client, built, registry, project, tmp_path):
    """A KFPWorkflow target with registry credentials: ``kfp submit --registry`` (no
    --username) pushes with them to the htpasswd registry, which refuses anonymous pushes."""
    target = write_target(tmp_path, project, registry.address)
    with KFPAPIStandIn() as api:
        proc = functionfuse_command("kfp", "submit", f"{target}:wf", "--host", api.url, "--registry", registry.address,
                                    "--json", project=project, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                    env_extra={"KFP_TEST_PASSWORD": PASSWORD})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        repo, tag = out["image"].rsplit(":", 1)
        assert tag in registry.tags(repo.split("/", 1)[1], auth=("ff", PASSWORD))
        spec = api.run_requests()[0]["pipeline_spec"]
        node3 = spec["deploymentSpec"]["executors"][
            spec["components"][spec["root"]["dag"]["tasks"]["node3"]["componentRef"]["name"]]["executorLabel"]]
        assert node3["container"]["resources"]["resourceCpuLimit"] == "2"
        assert PASSWORD not in proc.stdout + proc.stderr + json.dumps(api.requests)
    drop(client, out["image"])


@pytest.mark.slow
def test_cli_submit_builds_pushes_and_submits(client, built, registry, project):
    """``functionfuse kfp submit`` as a user runs it: the password comes on standard input."""
    folder, _module = project
    with KFPAPIStandIn() as api:
        cmd = [sys.executable, "-m", "functionfuse", "kfp", "submit", f"{MODULE}:seed", "--workflow", "kfp-seed",
               "--host", api.url, "--registry", registry.address, "--username", "ff", "--password-stdin",
               "--baseimage", LOCAL_BASE, "--project", folder, "--wheelhouse", WHEELHOUSE, "--json"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, ROOT])}
        proc = subprocess.run(cmd, input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=folder, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["run_id"] and out["image"].startswith(f"{registry.address}/functionfuse-kfp-kfp-seed:")
        spec = api.run_requests()[0]["pipeline_spec"]
        assert set(spec["root"]["dag"]["tasks"]) == {"node1", "node2", "node3"}
        assert PASSWORD not in proc.stdout + proc.stderr + json.dumps(api.requests)
    drop(client, out["image"])
