"""The functionfuse command, driven as a user would (subprocess, real storage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from functionfuse import __version__

DAG = '''
from functionfuse import workflow

@workflow
def load(n):
    return list(range(n))

@workflow
def total(values, scale):
    return sum(values) * scale

def build(scale={scale}):
    return total(load(10).set_name("data"), scale).set_name("total")
'''


def ff(*args, cwd, check=True, stdin=subprocess.DEVNULL):
    out = subprocess.run([sys.executable, "-m", "functionfuse", *args], capture_output=True, text=True, cwd=cwd, stdin=stdin)
    if check:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture
def project(tmp_path):
    (tmp_path / "dag.py").write_text(DAG.format(scale=1))
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "import dag\n"
        "from functionfuse.backends.builtin.localback import LocalWorkflow\n"
        "from functionfuse.storage import storage_factory\n"
        "wf = LocalWorkflow(dag.build(), workflow_name='demo')\n"
        "wf.set_storage(storage_factory({'kind': 'file', 'options': {'path': 'storage'}}))\n"
        "print(wf.run())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "45", out.stderr
    return tmp_path


def test_version_and_help(tmp_path):
    assert ff("--version", cwd=tmp_path).stdout.strip() == f"functionfuse {__version__}"
    for sub in (["storage", "ls"], ["storage", "show"], ["storage", "rm"], ["plan"], ["graph"], ["stack"], ["kfp", "compile"],
                ["kfp", "submit"]):
        assert "usage:" in ff(*sub, "--help", cwd=tmp_path).stdout


def test_ls_workflows_and_tasks(project):
    out = ff("storage", "ls", cwd=project).stdout
    assert "demo" in out and "2" in out
    rows = json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)
    assert [r["task"] for r in rows] == ["data", "total"]
    assert all(r["status"] == "stored" and r["size"] > 0 and r["finished"] for r in rows)


def test_ls_graph_reports_stale_and_missing(project):
    (project / "dag.py").write_text(DAG.format(scale=2))
    os.remove(project / "storage" / "demo" / "data.ffr")
    rows = {r["task"]: r for r in json.loads(ff("storage", "ls", "demo", "--graph", "dag.py:build", "--json", cwd=project).stdout)}
    assert rows["data"]["status"] == "missing"
    assert rows["total"]["status"] == "stale" and "argument 'scale' changed" in rows["total"]["reason"]


def test_ls_verify_finds_a_damaged_payload(project):
    path = project / "storage" / "demo" / "data.ffr"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    plain = {r["task"]: r["status"] for r in json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)}
    assert plain["data"] == "stored"  # only the header is read without --verify
    verified = {r["task"]: r for r in json.loads(ff("storage", "ls", "demo", "--verify", "--json", cwd=project).stdout)}
    assert verified["data"]["status"] == "corrupted" and "data.ffr" in verified["data"]["reason"]
    assert verified["total"]["status"] == "stored"


def test_show_prints_metadata(project):
    meta = json.loads(ff("storage", "show", "demo", "total", "--json", cwd=project).stdout)
    assert meta["inputs"] == ["data"] and meta["function"].endswith("total")
    text = ff("storage", "show", "demo", "total", cwd=project).stdout
    assert "fingerprint" in text and "duration_s" in text


def test_rm_asks_first(project):
    out = ff("storage", "rm", "demo", "*", cwd=project, check=False)
    assert out.returncode == 2 and "--yes" in out.stderr
    assert len(json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)) == 2
    ff("storage", "rm", "demo", "tot*", "--yes", cwd=project)
    assert [r["task"] for r in json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)] == ["data"]


def test_plan_command(project):
    rows = json.loads(ff("plan", "demo", "--graph", "dag.py:build", "--json", cwd=project).stdout)
    assert [(r["task"], r["action"], r["status"]) for r in rows] == [("data", "skip", "current"), ("total", "load", "current")]


def test_errors_are_one_line_with_the_fix(project):
    out = ff("storage", "show", "demo", "nothing", cwd=project, check=False)
    assert out.returncode == 1 and "list_tasks" in out.stderr and "Traceback" not in out.stderr
    out = ff("plan", "demo", "--graph", "dag.py", cwd=project, check=False)
    assert out.returncode == 1 and "path/to/file.py:NAME" in out.stderr


def test_graph_command_draws_the_dag_file(project):
    out = ff("graph", "dag.py:build", "--out", "docs", cwd=project)
    assert "svg" in out.stdout and "2 nodes drawn" in out.stderr
    svg = (project / "docs" / "build.svg").read_text()
    assert all(f">{name}<" in svg for name in ("data", "total")), svg[:400]
    assert (project / "docs" / "build.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data" in (project / "docs" / "build.dot").read_text()


def test_graph_command_colours_by_storage(project):
    from functionfuse.backends.builtin.graphback import STATE_COLOURS

    (project / "dag.py").write_text(DAG.format(scale=3))
    ff("graph", "dag.py:build", "--workflow", "demo", "--storage", "storage", "--format", "dot", cwd=project)
    dot = (project / "demo.dot").read_text()
    assert not (project / "demo.svg").exists()
    line = {name: next(x for x in dot.splitlines() if f'"{name}"' in x and "fillcolor" in x) for name in ("data", "total")}
    assert STATE_COLOURS["current"] in line["data"] and STATE_COLOURS["stale"] in line["total"]


def test_graph_command_names_a_bad_target(project):
    out = ff("graph", "dag.py:nothing", cwd=project, check=False)
    assert out.returncode == 1 and "no attribute 'nothing'" in out.stderr and "Traceback" not in out.stderr
    out = ff("graph", "missing.py:build", cwd=project, check=False)
    assert out.returncode == 1 and "no such file" in out.stderr


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stack_up_dry_run_lists_every_step_with_existing_files(tmp_path):
    out = ff("stack", "up", "--dry-run", "--source", ROOT, cwd=tmp_path)
    commands = [line[2:].split() for line in out.stderr.splitlines() if line.startswith("+ ")]
    tools = [c[0] for c in commands]
    assert {"docker", "kind", "kubectl", "helm"} <= set(tools)
    assert any(c[:3] == ["kind", "create", "cluster"] for c in commands)
    assert any(c[:2] == ["helm", "dependency"] for c in commands)
    assert any("127.0.0.1:5001:5000" in c for c in commands), "the registry is published on loopback only"
    paths = [a for c in commands for a in c if a.startswith(ROOT)]
    assert paths and all(os.path.exists(p) for p in paths), [p for p in paths if not os.path.exists(p)]
    assert "stack up" in out.stdout


def test_stack_up_without_the_tools_says_what_to_install(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty PATH: none of docker, kind, kubectl, helm
    out = subprocess.run([sys.executable, "-m", "functionfuse", "stack", "up", "--source", ROOT], capture_output=True,
                         text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 1 and "kind" in out.stderr and "kind.sigs.k8s.io" in out.stderr
    assert "Traceback" not in out.stderr


def test_stack_needs_a_source_tree(tmp_path):
    out = ff("stack", "down", "--dry-run", "--source", str(tmp_path), cwd=tmp_path, check=False)
    assert out.returncode == 1 and "--source DIR" in out.stderr
    out = ff("stack", "down", "--dry-run", "--source", ROOT, cwd=tmp_path)
    assert "kind delete cluster --name functionfuse" in out.stderr and "docker rm -f kind-registry" in out.stderr


def test_storage_commands_over_s3_by_url_and_by_options_file(tmp_path):
    pytest.importorskip("s3fs", reason="the s3 extra is not installed")
    import s3support
    from contracts.backend import seed_quick_start
    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse.storage import storage_factory

    server = s3support.MotoProcess().start()
    try:
        bucket = server.make_bucket()
        options = {"kind": "S3", "options": {"path": f"{bucket}/results", "s3fs": server.s3fs_options()}}
        wf = LocalWorkflow(seed_quick_start(), workflow_name="demo")
        wf.set_storage(storage_factory(options))
        wf.run()
        creds = server.s3fs_options()
        env = {**os.environ, "AWS_ENDPOINT_URL": creds["endpoint_url"], "AWS_ACCESS_KEY_ID": creds["key"],
               "AWS_SECRET_ACCESS_KEY": creds["secret"]}
        by_url = subprocess.run([sys.executable, "-m", "functionfuse", "storage", "ls", "demo", "--json", "--storage",
                                 f"s3://{bucket}/results"], capture_output=True, text=True, env=env, cwd=tmp_path,
                                stdin=subprocess.DEVNULL)
        assert by_url.returncode == 0, by_url.stderr
        assert [r["task"] for r in json.loads(by_url.stdout)] == ["node1", "node2", "node3"]
        (tmp_path / "s3.json").write_text(json.dumps(options))
        meta = json.loads(ff("storage", "show", "demo", "node3", "--json", "--storage", "s3.json", cwd=tmp_path).stdout)
        assert meta["inputs"] == ["node1", "node2"]
        ff("storage", "rm", "demo", "node3", "--yes", "--storage", "s3.json", cwd=tmp_path)
        assert storage_factory(options).list_tasks("demo") == ["node1", "node2"]
    finally:
        server.stop()


def test_kfp_compile_writes_one_step_per_node_offline(project):
    pytest.importorskip("kfp", reason="the kfp extra is not installed")
    import yaml

    out = ff("kfp", "compile", "dag.py:build", "--workflow", "demo", "-o", "out/pipeline.yaml", "--image",
             "registry.example/demo:1", cwd=project)
    assert out.stdout.strip() == "out/pipeline.yaml" and "2 nodes" in out.stderr
    spec = yaml.safe_load((project / "out" / "pipeline.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"data", "total"} and tasks["total"]["dependentTasks"] == ["data"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/demo:1"}


def test_kfp_compile_plan_mode_needs_storage_and_leaves_out_stored_nodes(project):
    pytest.importorskip("kfp", reason="the kfp extra is not installed")
    import yaml

    out = ff("kfp", "compile", "dag.py:build", "--workflow", "demo", "--resume", "plan", cwd=project, check=False)
    assert out.returncode == 1 and "--storage" in out.stderr and "Traceback" not in out.stderr
    ff("kfp", "compile", "dag.py:build", "--workflow", "demo", "--resume", "plan", "--storage", "storage", cwd=project)
    tasks = yaml.safe_load((project / "demo.yaml").read_text())["root"]["dag"]["tasks"]
    assert set(tasks) == {"total"}  # everything is stored: "data" is not needed, "total" is loaded
    os.remove(project / "storage" / "demo" / "total.ffr")  # "total" runs; "data" is loaded for it
    ff("kfp", "compile", "dag.py:build", "--workflow", "demo", "--resume", "plan", "--storage", "storage", cwd=project)
    tasks = yaml.safe_load((project / "demo.yaml").read_text())["root"]["dag"]["tasks"]
    assert set(tasks) == {"data", "total"} and tasks["total"]["dependentTasks"] == ["data"]
