"""The functionfuse command on scripts and stores it cannot use as they are: renamed
nodes, scripts that call run(), bad storage options, import errors, values, removing a
workflow (driven as a user would: subprocess, real storage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from test_cli import DAG, FUNCTIONFUSE, ff, project  # noqa: F401 - project is a fixture


def test_plan_and_ls_graph_show_a_renamed_node_as_not_in_dag(project):
    (project / "dag.py").write_text(DAG.format(scale=1).replace('set_name("total")', 'set_name("grand_total")'))
    rows = {r["task"]: r for r in json.loads(ff("plan", "demo", "--graph", "dag.py:build", "--json", cwd=project).stdout)}
    assert rows["grand_total"]["status"] == "missing" and rows["grand_total"]["action"] == "run"
    assert rows["total"]["status"] == "not in DAG" and rows["total"]["action"] is None
    assert "storage rm demo total" in rows["total"]["reason"]
    text = ff("plan", "demo", "--graph", "dag.py:build", cwd=project).stdout
    assert any(line.split()[:3] == ["total", "-", "not"] for line in text.splitlines()), text
    listed = {r["task"]: r for r in json.loads(ff("storage", "ls", "demo", "--graph", "dag.py:build", "--json", cwd=project).stdout)}
    assert listed["total"]["status"] == "not in DAG" and listed["total"]["size"] > 0
    assert listed["grand_total"]["status"] == "missing" and listed["data"]["status"] == "current"


SCRIPT = '''
import os
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory

@workflow
def touch(name):
    open(name, "w").close()   # a side effect the inspecting commands must not cause
    return name

node = touch("ran.txt").set_name("touched")
local_workflow = LocalWorkflow(node, workflow_name="script")
local_workflow.set_storage(storage_factory({"kind": "file", "options": {"path": "storage"}}))
print("result:", local_workflow.run())
print(local_workflow.storage.read_task("script", "touched"))   # fails when run() did not run
'''


def test_plan_and_graph_of_a_script_that_calls_run_do_not_run_it(tmp_path):
    (tmp_path / "script.py").write_text(SCRIPT)
    for target in ("script.py", "script.py:local_workflow"):
        out = ff("plan", "--graph", target, "--json", cwd=tmp_path)
        assert [(r["task"], r["action"], r["status"]) for r in json.loads(out.stdout)] == [("touched", "run", "missing")]
        assert "script.py:15 called run() on workflow 'script': not run" in out.stderr, out.stderr
        assert not (tmp_path / "ran.txt").exists()
    assert "planned the workflow it was called on" in out.stderr and "Traceback" not in out.stderr
    out = ff("graph", "script.py", "--format", "dot", cwd=tmp_path)
    assert (tmp_path / "script.dot").exists() and "not run" in out.stderr and not (tmp_path / "ran.txt").exists()
    out = ff("storage", "ls", "script", "--graph", "script.py", "--json", cwd=tmp_path)
    assert [r["status"] for r in json.loads(out.stdout)] == ["missing"] and not (tmp_path / "ran.txt").exists()

    (tmp_path / "plain.py").write_text("x = 1\n")
    out = ff("plan", "--graph", "plain.py", cwd=tmp_path, check=False)
    assert out.returncode == 1 and "plain.py:NAME" in out.stderr and "run()" in out.stderr
    two = SCRIPT.replace("print(local_workflow.storage", "# print(local_workflow.storage")
    (tmp_path / "two.py").write_text(two + "LocalWorkflow(node, workflow_name='other').run()\n")
    out = ff("plan", "--graph", "two.py", cwd=tmp_path, check=False)
    assert out.returncode == 1 and "'script'" in out.stderr and "'other'" in out.stderr and "two.py:NAME" in out.stderr


def test_a_bad_storage_is_a_usage_error(project):
    for args in (["storage", "ls"], ["storage", "ls", "demo"], ["storage", "runs", "demo"], ["storage", "show", "demo", "total"]):
        out = ff(*args, "--storage", str(project / "nonexistent"), cwd=project, check=False)
        assert out.returncode == 2 and repr(str(project / "nonexistent")) in out.stderr and "does not exist" in out.stderr, out
    out = ff("storage", "ls", cwd=project / "storage", check=False)  # the default ./storage, from the wrong folder
    assert out.returncode == 2 and "does not exist" in out.stderr and "--storage" in out.stderr
    inline = json.dumps({"kind": "file", "options": {"path": "storage"}})
    (overview,) = json.loads(ff("storage", "ls", "--json", "--storage", inline, cwd=project).stdout)
    assert overview["workflow"] == "demo" and overview["tasks"] == 2
    out = ff("storage", "ls", "--storage", '{"kind": "file", ', cwd=project, check=False)
    assert out.returncode == 2 and "not valid JSON" in out.stderr and "Traceback" not in out.stderr
    out = ff("storage", "ls", "--storage", '["file"]', cwd=project, check=False)
    assert out.returncode == 2 and "'kind'" in out.stderr and "Traceback" not in out.stderr
    # a plan for a storage nothing was stored in yet is a plan: every node runs
    out = ff("plan", "demo", "--graph", "dag.py:build", "--storage", "fresh", "--json", cwd=project)
    assert [r["action"] for r in json.loads(out.stdout)] == ["run", "run"] and "does not exist" in out.stderr
    assert not (project / "fresh").exists()


def test_an_s3_url_without_endpoint_or_credentials_fails_fast(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws
    t = time.monotonic()
    out = subprocess.run([FUNCTIONFUSE, "storage", "ls", "--storage", "s3://bucket/results"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "endpoint" in out.stderr and "AWS_ENDPOINT_URL" in out.stderr, out.stderr
    assert "resumes" not in out.stderr and time.monotonic() - t < 20
    (tmp_path / "s3.json").write_text(json.dumps({"kind": "S3", "options": {"path": "bucket/results"}}))
    out = subprocess.run([FUNCTIONFUSE, "storage", "ls", "--storage", "s3.json"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "endpoint_url" in out.stderr, out.stderr


def test_import_and_syntax_errors_show_the_users_line_not_a_traceback(project):
    (project / "broken.py").write_text("from functionfuse import workflow\n\ndef build(:\n    pass\n")
    out = ff("plan", "demo", "--graph", "broken.py:build", cwd=project, check=False)
    lines = out.stderr.splitlines()
    assert out.returncode == 1 and "SyntaxError" in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert "broken.py:3" in out.stderr and "def build(:" in out.stderr and "cli.py" not in out.stderr
    assert len(lines) <= 3, out.stderr
    (project / "raises.py").write_text("import dag\n\nvalue = dag.build()\ntotal = 1 / 0\n")
    out = ff("graph", "raises.py:value", cwd=project, check=False)
    assert out.returncode == 1 and "ZeroDivisionError" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "raises.py:4" in out.stderr and "total = 1 / 0" in out.stderr and "cli.py" not in out.stderr
    (project / "helper.py").write_text("def fail():\n    raise RuntimeError('no config')\n")
    (project / "calls.py").write_text("import helper\n\ndef build():\n    return helper.fail()\n")
    out = ff("plan", "demo", "--graph", "calls:build", cwd=project, check=False)
    assert out.returncode == 1 and "RuntimeError: no config" in out.stderr and "helper.py:2" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_show_value_prints_the_stored_value_within_a_size_limit(project):
    assert "unpickles" in " ".join(ff("storage", "show", "--help", cwd=project).stdout.split())
    out = ff("storage", "show", "demo", "total", "--value", cwd=project)
    assert out.stdout.splitlines()[-1].split() == ["value", "45"], out.stdout
    out = ff("storage", "show", "demo", "data", "--value", "--max-bytes", "10", cwd=project, check=False)
    assert out.returncode == 1 and "--max-bytes" in out.stderr and "[0, 1" not in out.stdout
    code = (
        "import numpy as np\n"
        "from functionfuse.storage import storage_factory\n"
        "s = storage_factory({'kind': 'file', 'options': {'path': 'storage'}})\n"
        "s.save('arrays', 'big', {'a': np.arange(1_000_000, dtype='float32').reshape(1000, 1000), 'n': list(range(5000))})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=project)
    out = ff("storage", "show", "arrays", "big", "--value", cwd=project)
    value = out.stdout[out.stdout.index("value"):]
    assert "shape=(1000, 1000)" in value and "float32" in value and "5000 items" in value, value
    assert len(value) < 3000, value
    shown = json.loads(ff("storage", "show", "arrays", "big", "--value", "--json", cwd=project).stdout)
    assert "shape=(1000, 1000)" in shown["value"] and shown["task"] == "big"


def test_missing_task_error_names_the_command_that_lists_tasks(project):
    out = ff("storage", "show", "demo", "nothing", "--storage", "storage", cwd=project, check=False)
    assert out.returncode == 1 and "'nothing'" in out.stderr and "Traceback" not in out.stderr
    assert "`functionfuse storage ls demo --storage storage`" in out.stderr and "list_tasks" not in out.stderr


def test_rm_all_removes_a_whole_workflow_after_asking(project):
    out = ff("storage", "rm", "demo", "--all", cwd=project, check=False)
    assert out.returncode == 2 and "--yes" in out.stderr and (project / "storage" / "demo").exists()
    out = ff("storage", "rm", "demo", "total", "--all", "--yes", cwd=project, check=False)
    assert out.returncode == 2 and "--all" in out.stderr and (project / "storage" / "demo" / "total.ffr").exists()
    out = ff("storage", "rm", "other", "--all", "--yes", cwd=project, check=False)
    assert out.returncode == 1 and "'other'" in out.stderr and "functionfuse storage ls" in out.stderr
    out = ff("storage", "rm", "demo", "--all", "--yes", cwd=project)
    assert "2 task(s)" in out.stdout and "removed workflow 'demo'" in out.stdout
    assert json.loads(ff("storage", "ls", "--json", cwd=project).stdout) == []


@pytest.mark.parametrize("path", [
    "functionfuse.backends.builtin.localback:LocalWorkflow",
    "functionfuse.backends.builtin.rayback:RayWorkflow",
    "functionfuse.backends.builtin.graphback:GraphWorkflow",
    "functionfuse.backends.addons.prefectback:PrefectWorkflow",
    "functionfuse.backends.addons.kfpback:KFPWorkflow",
], ids=lambda p: p.rpartition(":")[2])
def test_run_of_every_backend_is_recorded_not_run_while_inspecting(path):
    import importlib

    from functionfuse.inspection import inspecting_runs

    module, _, name = path.partition(":")
    try:
        cls: Any = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        pytest.skip(f"{name}: {exc}")

    class Custom(cls):  # a user's subclass with its own run() is inspected too
        def run(self, *args, **kwargs):
            raise AssertionError("ran")

    for kind in (cls, Custom):
        wf = object.__new__(kind)  # no engine started, nothing set up: run() must not touch it
        with inspecting_runs() as calls:
            assert wf.run() is None
        assert [(c.workflow, c.filename, c.lineno) for c in calls] == [(wf, __file__, calls[0].lineno)]
    with pytest.raises(AssertionError, match="ran"):
        object.__new__(Custom).run()
