"""The functionfuse command, driven as a user would (subprocess, real storage)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

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


#: the installed console script, as a user runs it (``python -m functionfuse`` would put the
#: current folder on sys.path and hide import problems of ``module:NAME`` targets)
FUNCTIONFUSE = os.path.join(os.path.dirname(sys.executable), "functionfuse")


def ff(*args, cwd, check=True, stdin=subprocess.DEVNULL):
    assert os.access(FUNCTIONFUSE, os.X_OK), f"{FUNCTIONFUSE} is missing: pip install -e . in this environment"
    out = subprocess.run([FUNCTIONFUSE, *args], capture_output=True, text=True, cwd=cwd, stdin=stdin)
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
    for sub in (["storage", "ls"], ["storage", "show"], ["storage", "runs"], ["storage", "rm"], ["plan"], ["graph"], ["stack"],
                ["kfp", "compile"], ["kfp", "submit"], ["image", "build"], ["image", "push"], ["release"]):
        assert "usage:" in ff(*sub, "--help", cwd=tmp_path).stdout
    assert "s3://" in ff("storage", "ls", "--help", cwd=tmp_path).stdout


def test_ls_workflows_and_tasks(project):
    out = ff("storage", "ls", cwd=project).stdout
    assert "demo" in out and "2" in out and "finished" in out
    (overview,) = json.loads(ff("storage", "ls", "--json", cwd=project).stdout)
    assert (overview["workflow"], overview["tasks"], overview["corrupted"]) == ("demo", 2, 0)
    assert overview["size"] > 0 and overview["last_write"].startswith("20")
    assert overview["last_run"]["status"] == "finished" and overview["last_run"]["ran"] == 2
    rows = json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)
    assert [r["task"] for r in rows] == ["data", "total"]
    assert all(r["status"] == "stored" and r["size"] > 0 and r["finished"] for r in rows)


def test_ls_graph_reports_stale_and_missing(project):
    (project / "dag.py").write_text(DAG.format(scale=2))
    os.remove(project / "storage" / "demo" / "data.ffr")
    rows = {r["task"]: r for r in json.loads(ff("storage", "ls", "demo", "--graph", "dag.py:build", "--json", cwd=project).stdout)}
    assert rows["data"]["status"] == "missing"
    assert rows["total"]["status"] == "stale" and "argument 'scale' changed" in rows["total"]["reason"]



def test_ls_graph_gives_what_storage_holds_and_honours_the_pattern(project):
    (project / "dag.py").write_text(DAG.format(scale=1).replace("load(10)", "load(11)"))
    rows = {r["task"]: r for r in json.loads(ff("storage", "ls", "demo", "--graph", "dag.py:build", "--json", cwd=project).stdout)}
    assert rows["data"]["status"] == "stale" and rows["data"]["reason"] == "argument 'n' changed"  # no plan wording
    assert rows["total"]["status"] == "stale" and rows["total"]["reason"] == "input 'data' changed"
    only = json.loads(ff("storage", "ls", "demo", "--graph", "dag.py:build", "--pattern", "tot*", "--json", cwd=project).stdout)
    assert [r["task"] for r in only] == ["total"]

def test_ls_verify_finds_a_damaged_payload(project):
    path = project / "storage" / "demo" / "data.ffr"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    plain = {r["task"]: r["status"] for r in json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)}
    assert plain["data"] == "stored"  # only the header is read without --verify
    out = ff("storage", "ls", "demo", "--verify", "--json", cwd=project, check=False)
    assert out.returncode == 1  # scripts can trust the exit code of --verify
    verified = {r["task"]: r for r in json.loads(out.stdout)}
    assert verified["data"]["status"] == "corrupted" and "data.ffr" in verified["data"]["reason"]
    assert verified["total"]["status"] == "stored"
    path.write_bytes(bytes(data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:]))  # repaired
    assert ff("storage", "ls", "demo", "--verify", cwd=project, check=False).returncode == 0


def test_ls_and_verify_report_copied_unsigned_and_other_key_results(project):
    import shutil

    store = project / "storage" / "demo"
    shutil.copy(store / "data.ffr", store / "total.ffr")  # cp data.ffr total.ffr
    rows = {r["task"]: r for r in json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)}
    assert rows["total"]["status"] == "corrupted" and "copied or renamed" in rows["total"]["reason"]
    assert ff("storage", "ls", "demo", "--verify", cwd=project, check=False).returncode == 1
    env = {**os.environ, "FUNCTIONFUSE_STORAGE_KEY": "cli-signing-key-0123456789abcdef"}
    out = subprocess.run([FUNCTIONFUSE, "storage", "ls", "demo", "--verify", "--json"], capture_output=True,
                         text=True, cwd=project, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 1, out.stderr
    rows = {r["task"]: r for r in json.loads(out.stdout)}
    assert rows["data"]["status"] == "unsigned" and "not signed" in rows["data"]["reason"]
    assert "cli-signing-key" not in out.stdout + out.stderr
    help_text = ff("storage", "show", "--help", cwd=project).stdout
    assert "trust a store like code" in " ".join(help_text.split())


def test_show_prints_metadata(project):
    meta = json.loads(ff("storage", "show", "demo", "total", "--json", cwd=project).stdout)
    assert meta["inputs"] == ["data"] and meta["function"].endswith("total")
    text = ff("storage", "show", "demo", "total", cwd=project).stdout
    assert "fingerprint" in text and "duration_s" in text


def test_runs_lists_the_stored_run_reports(project):
    (project / "dag.py").write_text(DAG.format(scale=1) + "\nbroken = total(load(3).set_name('data'), None).set_name('total')\n")
    ff("storage", "rm", "demo", "total", "--yes", cwd=project)
    run = ("import sys; sys.path.insert(0, '.'); import dag\n"
           "from functionfuse.backends.builtin.localback import LocalWorkflow\n"
           "from functionfuse.storage import storage_factory\n"
           "wf = LocalWorkflow(dag.broken, workflow_name='demo')\n"
           "wf.set_storage(storage_factory({'kind': 'file', 'options': {'path': 'storage'}}))\n"
           "wf.run()\n")
    assert subprocess.run([sys.executable, "-c", run], capture_output=True, cwd=project).returncode == 1
    first, second = json.loads(ff("storage", "runs", "demo", "--json", cwd=project).stdout)
    assert (first["ran"], first["failed"], second["failed"]) == (2, None, "total")
    assert set(first["node_seconds"]) == {"data", "total"}
    text = ff("storage", "runs", "demo", cwd=project).stdout.splitlines()
    assert text[0].split()[:4] == ["started", "(UTC)", "backend", "status"] and len(text) == 3
    assert "LocalWorkflow  finished" in text[1] and "failed at 'total'" in text[2]
    assert len(json.loads(ff("storage", "runs", "demo", "--last", "1", "--json", cwd=project).stdout)) == 1
    assert "failed at 'total'" in ff("storage", "ls", cwd=project).stdout
    assert "no run reports" in ff("storage", "runs", "other", cwd=project).stdout


def test_rm_asks_first(project):
    out = ff("storage", "rm", "demo", "--pattern", "*", cwd=project, check=False)
    assert out.returncode == 2 and "--yes" in out.stderr
    assert len(json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)) == 2
    ff("storage", "rm", "demo", "--pattern", "tot*", "--yes", cwd=project)
    assert [r["task"] for r in json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)] == ["data"]


def stored_tasks(project, workflow="demo"):
    return [r["task"] for r in json.loads(ff("storage", "ls", workflow, "--json", cwd=project).stdout)]


def test_rm_names_mean_themselves_even_with_glob_characters(project):
    from functionfuse.storage import storage_factory

    storage = storage_factory({"kind": "file", "options": {"path": str(project / "storage")}})
    for name in ("model1", "model[1]", "model*", "modelx"):
        storage.save("models", name, name)
    out = ff("storage", "rm", "models", "model[1]", "--yes", cwd=project)
    assert "model[1]" in out.stdout and "removed 1 task(s)" in out.stdout
    assert stored_tasks(project, "models") == ["model*", "model1", "modelx"]
    ff("storage", "rm", "models", "model*", "--yes", cwd=project)
    assert stored_tasks(project, "models") == ["model1", "modelx"]


def test_rm_several_names_and_patterns(project):
    from functionfuse.storage import storage_factory

    storage = storage_factory({"kind": "file", "options": {"path": str(project / "storage")}})
    for name in ("a1", "a2", "b1", "b2", "c"):
        storage.save("many", name, name)
    ff("storage", "rm", "many", "a1", "c", "--yes", cwd=project)
    assert stored_tasks(project, "many") == ["a2", "b1", "b2"]
    ff("storage", "rm", "many", "a2", "--pattern", "b?", "--yes", cwd=project)
    assert stored_tasks(project, "many") == []
    out = ff("storage", "rm", "many", "--pattern", "z*", "--yes", cwd=project)
    assert "no task of workflow 'many' matches 'z*'" in out.stdout
    out = ff("storage", "rm", "many", "--yes", cwd=project, check=False)
    assert out.returncode == 2 and "NAME" in out.stderr and "--pattern" in out.stderr


def test_rm_of_a_name_not_stored_names_it_and_removes_nothing(project):
    out = ff("storage", "rm", "demo", "total", "nothere", "--yes", cwd=project, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "'nothere'" in out.stderr and "functionfuse storage ls demo" in out.stderr
    assert stored_tasks(project) == ["data", "total"]
    out = ff("storage", "rm", "demo", "tot*", "--yes", cwd=project, check=False)  # a pattern given as a name
    assert out.returncode == 1 and "'tot*'" in out.stderr and "--pattern 'tot*'" in out.stderr
    assert stored_tasks(project) == ["data", "total"]
    out = ff("storage", "rm", "demo", "a/b", "--yes", cwd=project, check=False)
    assert out.returncode == 1 and "'a/b'" in out.stderr and "Traceback" not in out.stderr


FOREIGN = ["bad name ", "a..b", "ctl\x01", "x" * 230]


def test_ls_lists_foreign_folders_without_failing(project):
    from functionfuse.storage import storage_factory

    root = project / "storage"
    for name in FOREIGN:
        (root / name).mkdir()
    os.mkdir(os.fsencode(root) + b"/latin1-\xe9")  # not UTF-8: a lone surrogate once decoded
    storage = storage_factory({"kind": "file", "options": {"path": str(root)}})
    assert storage.list_workflows() == ["demo"]
    assert len(storage.list_workflows(include_foreign=True)) == 6

    out = ff("storage", "ls", cwd=project)
    lines = out.stdout.splitlines()
    assert any(line.startswith("demo ") and "finished" in line for line in lines), out.stdout
    assert "'bad name '" in out.stdout and "'latin1-\\udce9'" in out.stdout and "'ctl\\x01'" in out.stdout
    assert out.stdout.count("foreign: ") == 5 and "Traceback" not in out.stderr
    rows = json.loads(ff("storage", "ls", "--json", cwd=project).stdout)
    good = [r for r in rows if not r.get("foreign")]
    assert [r["workflow"] for r in good] == ["demo"] and good[0]["tasks"] == 2
    foreign = {r["workflow"]: r for r in rows if r.get("foreign")}
    assert set(foreign) == {*FOREIGN, "latin1-\udce9"}
    assert "whitespace" in foreign["bad name "]["note"] and "'..'" in foreign["a..b"]["note"]


def test_ls_lists_foreign_files_of_a_workflow_without_failing(project):
    (project / "storage" / "demo" / "bad name .ffr").write_bytes(b"x")
    (project / "storage" / "demo" / "a..b.ffr").write_bytes(b"x")
    (overview,) = json.loads(ff("storage", "ls", "--json", cwd=project).stdout)
    assert (overview["tasks"], overview["corrupted"], overview["foreign_tasks"]) == (2, 0, 2)
    assert "2 (2 foreign)" in ff("storage", "ls", cwd=project).stdout
    rows = {r["task"]: r for r in json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)}
    assert rows["data"]["status"] == rows["total"]["status"] == "stored"
    assert rows["a..b"]["status"] == "foreign" and "'..'" in rows["a..b"]["reason"]
    text = ff("storage", "ls", "demo", cwd=project).stdout
    assert "'bad name '" in text and "foreign" in text
    out = ff("storage", "rm", "demo", "--pattern", "*", "--yes", cwd=project)
    assert "removed 2 task(s)" in out.stdout
    assert sorted(f for f in os.listdir(project / "storage" / "demo") if f.endswith(".ffr")) == ["a..b.ffr", "bad name .ffr"]


def at_a_terminal(args, cwd, keys=b"", interrupt=False):
    """Run the command with a pseudo-terminal as its stdin/stdout/stderr; at its prompt,
    type *keys* or press Ctrl-C (SIGINT). Returns the exit status and what it printed."""
    master, slave = os.openpty()
    proc = subprocess.Popen([FUNCTIONFUSE, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out, answered = b"", 0.0
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if b"[y/N]" in out and not answered:
                answered = time.monotonic() + 0.3
                if not interrupt:
                    os.write(master, keys)
            # Ctrl-C shortly after the prompt shows, again if nothing happened for 10 s (a
            # signal that lands before the command starts reading its answer is lost)
            if interrupt and answered and b"interrupted" not in out and time.monotonic() >= answered:
                proc.send_signal(signal.SIGINT)
                answered = time.monotonic() + 10
            if select.select([master], [], [], 0.3)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the command exited and closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_rm_prompt_at_a_terminal(project):
    code, out = at_a_terminal(["storage", "rm", "demo", "--pattern", "*"], project, keys=b"\x04")  # Ctrl-D
    assert code == 1 and "Nothing removed." in out and "Traceback" not in out, out
    code, out = at_a_terminal(["storage", "rm", "demo", "--pattern", "*"], project, interrupt=True)  # Ctrl-C
    assert code == 130 and "interrupted" in out and "Traceback" not in out, out
    code, out = at_a_terminal(["storage", "rm", "demo", "data", "total"], project, keys=b"n\n")
    assert code == 1 and "Nothing removed." in out
    assert len(json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)) == 2
    code, out = at_a_terminal(["storage", "rm", "demo", "total"], project, keys=b"y\n")
    assert code == 0 and "removed 1 task(s)" in out, out
    assert [r["task"] for r in json.loads(ff("storage", "ls", "demo", "--json", cwd=project).stdout)] == ["data"]


def test_plan_command(project):
    rows = json.loads(ff("plan", "demo", "--graph", "dag.py:build", "--json", cwd=project).stdout)
    assert [(r["task"], r["action"], r["status"]) for r in rows] == [("data", "skip", "current"), ("total", "load", "current")]


WORKFLOW_OBJECT = """
from functionfuse.backends.builtin.localback import LocalWorkflow

flow = LocalWorkflow(build(), workflow_name="demo")
flow.set_cache("name")
"""


def test_plan_of_a_workflow_object_is_its_own_plan(project):
    (project / "dag.py").write_text(DAG.format(scale=2) + WORKFLOW_OBJECT)

    def actions(*args):
        rows = json.loads(ff("plan", *args, "--json", cwd=project).stdout)
        return {r["task"]: r["action"] for r in rows}

    # the object's "name" policy reuses the changed node, as its run() would
    assert actions("--graph", "dag.py:flow") == {"data": "skip", "total": "load"}
    assert actions("demo", "--graph", "dag.py:flow") == {"data": "skip", "total": "load"}
    assert actions("demo", "--graph", "dag.py:build") == {"data": "load", "total": "run"}  # nodes: the default
    assert actions("--graph", "dag.py:flow", "--cache", "fingerprint") == {"data": "load", "total": "run"}
    out = ff("plan", "other", "--graph", "dag.py:flow", cwd=project, check=False)
    assert out.returncode == 1 and "is workflow 'demo', not 'other'" in out.stderr
    out = ff("plan", "--graph", "dag.py:build", cwd=project, check=False)
    assert out.returncode == 1 and "WORKFLOW" in out.stderr and "Traceback" not in out.stderr


UNITS_OBJECT = """
from functionfuse import workflow
from functionfuse.backends.builtin.graphback import GraphWorkflow


@workflow
def step(x):
    return x + 1


x = 0
for k in range(4):
    x = step(x).set_name(f"s{k}")
chain = GraphWorkflow(x, workflow_name="chain")
solo = GraphWorkflow(x, workflow_name="chain")
solo.query("^s2$").set_fusion(False)
"""


def test_plan_units_lists_the_units_and_why(project):
    (project / "units.py").write_text(UNITS_OBJECT)
    out = ff("plan", "--graph", "units.py:chain", "--units", cwd=project).stdout
    assert "4 running nodes in 1 unit (1 chain)" in out and "unit 1: 4 nodes [chain]: s0, s1, s2, s3" in out
    got = json.loads(ff("plan", "--graph", "units.py:solo", "--units", "--json", cwd=project).stdout)
    assert [(u["why"], u["nodes"]) for u in got["units"]] == [
        ("chain", ["s0", "s1"]), ("alone", ["s2"]), ("single", ["s3"])
    ]
    assert [r["task"] for r in got["plan"]] == ["s0", "s1", "s2", "s3"]
    # a LocalWorkflow runs every node in its process: it says so instead of listing units
    out = ff("plan", "demo", "--graph", "dag.py:build", "--units", cwd=project).stdout
    assert "has no execution units" in out


def test_module_targets_are_found_in_the_current_folder(project):
    out = ff("graph", "dag:build", "--format", "dot", cwd=project)
    assert "dot" in out.stdout and (project / "build.dot").exists()
    rows = json.loads(ff("plan", "demo", "--graph", "dag:build", "--json", cwd=project).stdout)
    assert [r["task"] for r in rows] == ["data", "total"]
    rows = json.loads(ff("storage", "ls", "demo", "--graph", "dag:build", "--json", cwd=project).stdout)
    assert [r["status"] for r in rows] == ["current", "current"]


def test_errors_are_one_line_with_the_fix(project):
    out = ff("storage", "show", "demo", "nothing", cwd=project, check=False)
    assert out.returncode == 1 and "`functionfuse storage ls demo`" in out.stderr and "Traceback" not in out.stderr
    out = ff("plan", "demo", "--graph", "dag.py", cwd=project, check=False)
    assert out.returncode == 1 and "path/to/file.py:NAME" in out.stderr
    out = ff("graph", "nomodule:build", cwd=project, check=False)
    assert out.returncode == 1 and "no module named 'nomodule'" in out.stderr and "Traceback" not in out.stderr
    (project / "needs.py").write_text("import notinstalled\n")
    out = ff("graph", "needs:build", cwd=project, check=False)
    assert out.returncode == 1 and "'notinstalled'" in out.stderr and "Install" in out.stderr
    assert "Traceback" not in out.stderr
    out = ff("graph", "dag.py:build", "--out", "dag.py/drawings", cwd=project, check=False)  # a file, not a folder
    assert out.returncode == 1 and "dag.py/drawings" in out.stderr and "--out" in out.stderr
    assert "Traceback" not in out.stderr
    out = ff("storage", "ls", "--storage", "missing.json", cwd=project, check=False)
    assert out.returncode == 2 and "'missing.json': no such file" in out.stderr and not (project / "missing.json").exists()
    (project / "bad.json").write_text("{")
    out = ff("storage", "ls", "--storage", "bad.json", cwd=project, check=False)
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = ff("storage", "ls", "--storage", "gs://bucket/prefix", cwd=project, check=False)
    assert out.returncode == 2 and "unknown URL scheme 'gs'" in out.stderr and "s3://" in out.stderr


def test_plan_json_into_a_closed_pipe_is_quiet(project):
    # as `functionfuse plan ... --json | head -0`: the reader is gone before anything is written
    proc = subprocess.Popen([FUNCTIONFUSE, "plan", "demo", "--graph", "dag.py:build", "--json"], cwd=project,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141 and err == b""


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

    (project / "storage" / "demo" / "data.ffr").write_bytes(b"torn")  # unreadable: drawn red
    ff("graph", "--format", "dot", "--workflow", "demo", "--storage", "storage", "dag.py:build", cwd=project)
    dot = (project / "demo.dot").read_text()
    data = next(x for x in dot.splitlines() if '"data"' in x and "fillcolor" in x)
    assert STATE_COLOURS["corrupted"] in data and "(corrupted)" in data


def test_graph_formats_come_before_or_after_the_target(project):
    out = ff("graph", "--format", "svg", "dag.py:build", cwd=project)
    assert out.stdout.split() == ["svg", "./build.svg"]
    out = ff("graph", "dag.py:build", "--format", "dot,png", "--format", "dot", "--out", "d", cwd=project)
    assert sorted(os.listdir(project / "d")) == ["build.dot", "build.png"]
    out = ff("graph", "dag.py:build", "--format", "dot", "svg", cwd=project, check=False)
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr
    out = ff("graph", "--format", "jpg", "dag.py:build", cwd=project, check=False)
    assert out.returncode == 2 and "use dot, svg or png" in out.stderr


def test_graph_command_names_a_bad_target(project):
    out = ff("graph", "dag.py:nothing", cwd=project, check=False)
    assert out.returncode == 1 and "no attribute 'nothing'" in out.stderr and "Traceback" not in out.stderr
    out = ff("graph", "missing.py:build", cwd=project, check=False)
    assert out.returncode == 1 and "no such file" in out.stderr


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
        for scheme in ("s3", "s3a"):
            by_url = subprocess.run([FUNCTIONFUSE, "storage", "ls", "demo", "--json", "--storage", f"{scheme}://{bucket}/results"],
                                    capture_output=True, text=True, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
            assert by_url.returncode == 0, by_url.stderr
            assert [r["task"] for r in json.loads(by_url.stdout)] == ["node1", "node2", "node3"]
        (tmp_path / "s3.json").write_text(json.dumps(options))
        (overview,) = json.loads(ff("storage", "ls", "--json", "--storage", "s3.json", cwd=tmp_path).stdout)
        assert overview["tasks"] == 3 and overview["size"] > 0 and overview["last_run"]["ran"] == 3
        (report,) = json.loads(ff("storage", "runs", "demo", "--json", "--storage", "s3.json", cwd=tmp_path).stdout)
        assert set(report["node_seconds"]) == {"node1", "node2", "node3"}
        meta = json.loads(ff("storage", "show", "demo", "node3", "--json", "--storage", "s3.json", cwd=tmp_path).stdout)
        assert meta["inputs"] == ["node1", "node2"]
        ff("storage", "rm", "demo", "node3", "--yes", "--storage", "s3.json", cwd=tmp_path)
        assert storage_factory(options).list_tasks("demo") == ["node1", "node2"]

        # a prefix another tool wrote beside the workflows: listed as foreign, not an error
        import s3fs

        s3fs.S3FileSystem(**server.s3fs_options()).pipe(f"{bucket}/results/bad name /x.ffr", b"x")
        assert storage_factory(options).list_workflows() == ["demo"]
        out = ff("storage", "ls", "--json", "--storage", "s3.json", cwd=tmp_path)
        rows = {r["workflow"]: r for r in json.loads(out.stdout)}
        assert rows["demo"]["tasks"] == 2 and rows["bad name "]["foreign"] and "whitespace" in rows["bad name "]["note"]
        assert "'bad name '" in ff("storage", "ls", "--storage", "s3.json", cwd=tmp_path).stdout
    finally:
        server.stop()


def test_kfp_compile_writes_the_pipeline_offline_one_step_per_unit_or_per_node(project):
    pytest.importorskip("kfp", reason="the kfp extra is not installed")
    import yaml

    out = ff("kfp", "compile", "dag.py:build", "--workflow", "demo", "-o", "out/pipeline.yaml", "--image",
             "registry.example/demo:1", cwd=project)
    # the chain data -> total is one execution unit: one step, and the report says why
    assert out.stdout.strip() == "out/pipeline.yaml" and "2 nodes of workflow 'demo' compiled into 1 step" in out.stderr
    assert "unit 1: 2 nodes [chain]: data, total" in out.stderr
    spec = yaml.safe_load((project / "out" / "pipeline.yaml").read_text())
    assert len(spec["root"]["dag"]["tasks"]) == 1
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/demo:1"}
    out = ff("kfp", "compile", "dag.py:build", "--workflow", "demo", "-o", "out/pipeline.yaml", "--image",
             "registry.example/demo:1", "--no-fusion", cwd=project)
    assert "compiled into 2 steps" in out.stderr
    tasks = yaml.safe_load((project / "out" / "pipeline.yaml").read_text())["root"]["dag"]["tasks"]
    assert set(tasks) == {"data", "total"} and tasks["total"]["dependentTasks"] == ["data"]


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


def test_two_rm_of_every_task_at_once_both_succeed(tmp_path):
    """Two ``storage rm WF --pattern '*'`` at once: a task the other one removed first is
    done, not an error (each lists the tasks, then removes them one by one)."""
    from functionfuse.storage.filestorage import FileStorage

    storage = FileStorage(tmp_path / "storage")
    for i in range(400):
        storage.save("many", f"t{i:03d}", i)
    cmd = [FUNCTIONFUSE, "storage", "rm", "many", "--pattern", "*", "--yes", "--storage", "storage"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert storage.list_tasks("many") == []
    # one that lists the tasks after the other removed them all says so and removes none
    removed = [int(out.split("removed ")[1].split()[0]) if "removed " in out else 0 for out, _ in outs]
    assert all("removed " in out or "no task of workflow 'many' matches" in out for out, _ in outs), outs
    assert sum(removed) == 400  # each task removed exactly once, by one of them


def test_sign_keeps_a_trusted_store_when_a_key_is_set(project):
    """Turning on signing for an existing store: `storage sign` signs its results as they
    are, so the next run with the key reuses them instead of recomputing them."""
    key = {**os.environ, "FUNCTIONFUSE_STORAGE_KEY": "cli-signing-key-0123456789abcdef"}

    def run(*args):
        return subprocess.run([FUNCTIONFUSE, *args], capture_output=True, text=True, cwd=project, env=key,
                              stdin=subprocess.DEVNULL)

    assert run("storage", "ls", "demo", "--verify").returncode == 1  # unsigned: refused with the key
    assert run("storage", "sign", "demo").returncode == 2  # no terminal: --yes is needed, nothing signed
    assert run("storage", "ls", "demo", "--verify").returncode == 1
    out = run("storage", "sign", "demo", "--yes")
    assert out.returncode == 0, out.stderr
    assert "signed 2 task(s)" in out.stdout and "signed data" in out.stdout  # each one is named
    assert run("storage", "ls", "demo", "--verify").returncode == 0
    assert "already signed" in run("storage", "sign", "demo", "total", "--yes").stdout
    rows = {r["task"]: r["status"] for r in json.loads(run("storage", "ls", "demo", "--json").stdout)}
    assert rows == {"data": "stored", "total": "stored"}


def test_ls_of_every_workflow_survives_a_linked_folder_and_another_key(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "x.ffr").write_bytes(b"not a result")
    os.symlink(elsewhere, project / "storage" / "linked")
    rows = {r["workflow"]: r for r in json.loads(ff("storage", "ls", "--json", cwd=project).stdout)}
    assert rows["linked"]["foreign"] and "link" in rows["linked"]["note"]
    assert rows["demo"]["tasks"] == 2
    assert (elsewhere / "x.ffr").exists()
    signed = {**os.environ, "FUNCTIONFUSE_STORAGE_KEY": "cli-signing-key-0123456789abcdef"}
    subprocess.run([FUNCTIONFUSE, "storage", "sign", "demo", "--yes"], check=True, cwd=project, env=signed,
                   capture_output=True, stdin=subprocess.DEVNULL)
    other = {**os.environ, "FUNCTIONFUSE_STORAGE_KEY": "other-signing-key-0123456789abcdef"}
    out = subprocess.run([FUNCTIONFUSE, "storage", "ls", "--json"], cwd=project, env=other, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    rows = {r["workflow"]: r for r in json.loads(out.stdout)}
    assert rows["demo"]["foreign"] and "key id" in rows["demo"]["note"]


def test_crafted_run_reports_and_newer_results_do_not_break_listings(project):
    runs = project / "storage" / "demo" / ".runs"
    (runs / "29991231T235959.000000000-deadbeef.json").write_text(json.dumps({"started": 5, "seconds": "x",
                                                                              "slowest": 5}))
    (runs / "29991231T235959.000000001-deadbeef.json").write_text("[1, 2]")
    for args in (("storage", "ls"), ("storage", "ls", "--json"), ("storage", "runs", "demo"),
                 ("storage", "runs", "demo", "--json")):
        ff(*args, cwd=project)  # exit 0, no traceback
    import struct

    import xxhash

    raw = (project / "storage" / "demo" / "data.ffr").read_bytes()
    fields = struct.pack("<8sHHI", b"FFRESULT", 9, 0, len(b"{}"))  # a format from the future
    (project / "storage" / "demo" / "zz.ffr").write_bytes(
        fields + struct.pack("<Q", xxhash.xxh3_64(fields + b"{}").intdigest()) + b"{}" + raw[:0])
    out = ff("storage", "ls", "demo", "--json", cwd=project)
    rows = {r["task"]: r["status"] for r in json.loads(out.stdout)}
    assert rows["zz"] == "unreadable" and rows["data"] == "stored" and rows["total"] == "stored"
