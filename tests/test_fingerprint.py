"""Fingerprints: stale results are detected, reported, and (by policy) recomputed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import ConfigurationError, StaleResultWarning
from functionfuse.fingerprint import Fingerprinter, FingerprintWarning, code_fingerprint, value_fingerprint
from functionfuse.storage import storage_factory

PIPELINE = '''
import json
from functionfuse import workflow

SCALE = {scale}

def helper(x):
    return x * SCALE{helper_extra}

@workflow
def load(n):
    """Make data."""
    return list(range(n))

@workflow
def transform(data, offset=0):
    return [helper(v) + offset for v in data]

@workflow
def summarize(values):
    return json.dumps({{"total": sum(values)}})

def build(n={n}, offset={offset}):
    data = load(n).set_name("data")
    values = transform(data, offset=offset).set_name("values")
    return summarize(values).set_name("summary")
'''

RUNNER = '''
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
import pipeline
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory
wf = LocalWorkflow(pipeline.build(), workflow_name="fp")
wf.set_storage(storage_factory({"kind": "file", "options": {"path": sys.argv[2]}}))
if sys.argv[3] != "-":
    wf.set_cache(sys.argv[3])
plan = [[p.name, p.action, p.state, p.reason] for p in wf.plan()]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = wf.run()
records = [r["node"] for r in wf.fingerprints()]
print(json.dumps({"result": result, "plan": plan, "ran": wf.last_run.ran, "records": records,
                  "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
'''


class Project:
    """A user project on disk, run in fresh processes like a user would."""

    def __init__(self, tmp_path):
        self.src = tmp_path / "src"
        self.src.mkdir()
        self.store = tmp_path / "store"
        (tmp_path / "runner.py").write_text(RUNNER)
        self.runner = tmp_path / "runner.py"
        self.write()

    def write(self, scale=2, n=5, offset=0, helper_extra=""):
        (self.src / "pipeline.py").write_text(PIPELINE.format(scale=scale, n=n, offset=offset, helper_extra=helper_extra))

    def run(self, policy="-", hashseed="0", cwd=None):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run(
            [sys.executable, str(self.runner), str(self.src), str(self.store), policy],
            capture_output=True, text=True, env=env, cwd=cwd or self.src, check=False,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path)


def states(report):
    return {name: (action, state) for name, action, state, _ in report["plan"]}


def test_fingerprints_agree_across_processes_hash_seeds_and_folders(project, tmp_path):
    first = project.run(hashseed="0")
    second = project.run(hashseed="12345", cwd=tmp_path)
    assert first["records"] == second["records"]
    assert second["ran"] == 0 and states(second)["summary"] == ("load", "current")


def test_a_copy_of_the_project_elsewhere_reuses_the_results(project, tmp_path):
    import shutil

    project.run()
    moved = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(project.src, moved)
    project.src = moved
    report = project.run("fingerprint")
    assert report["ran"] == 0 and {p[2] for p in report["plan"]} == {"current"}


def test_comments_docstrings_and_formatting_do_not_count(project):
    project.run()
    source = (project.src / "pipeline.py").read_text()
    source = source.replace('"""Make data."""', '"""Make the data set, documented better."""')
    source = source.replace("def helper(x):\n", "def helper(x):  # scale a value\n\n")
    (project.src / "pipeline.py").write_text(source)
    report = project.run("fingerprint")
    assert report["ran"] == 0, report["plan"]


def test_helper_change_is_stale_and_recomputed_downstream(project):
    project.run()
    project.write(helper_extra=" + 1")
    report = project.run("fingerprint")
    plan = {name: (action, state, reason) for name, action, state, reason in report["plan"]}
    assert plan["data"][:2] == ("load", "current")
    assert plan["values"][:2] == ("run", "stale") and "code of helper changed" in plan["values"][2]
    assert plan["summary"][:2] == ("run", "stale") and "input 'values' changed" in plan["summary"][2]
    assert json.loads(report["result"]) == {"total": 25}
    assert report["ran"] == 2


def test_module_constant_change_is_detected(project):
    project.run()
    project.write(scale=3)
    report = project.run("fingerprint")
    assert json.loads(report["result"]) == {"total": 30}
    assert "code of helper changed" in dict((p[0], p[3]) for p in report["plan"])["values"]


def test_argument_change_is_named(project):
    project.run()
    project.write(offset=1)
    report = project.run("fingerprint")
    reasons = {p[0]: p[3] for p in report["plan"]}
    assert "argument 'offset' changed" in reasons["values"]
    assert states(report)["data"] == ("load", "current")


def test_name_policy_reuses_and_warns_once(project):
    project.run()
    project.write(offset=1)
    report = project.run()  # default policy: name
    assert report["ran"] == 0
    assert json.loads(report["result"]) == {"total": 20}  # the stored, stale result
    stale = [w for w in report["warnings"] if w.startswith("StaleResultWarning")]
    # one warning, for the node that changed; not for the nodes downstream of it
    assert len(stale) == 1 and "'values'" in stale[0] and "argument 'offset' changed" in stale[0]
    assert states(report)["summary"] == ("load", "stale")
    assert states(report)["values"] == ("skip", "stale")


def test_off_policy_always_runs(project):
    project.run()
    assert project.run("off")["ran"] == 3


# -- in-process checks --------------------------------------------------------------------
@workflow
def scale(values, factor=1):
    return values * factor


@workflow
def total(values):
    return float(np.sum(values))


@pytest.fixture
def storage(tmp_path):
    return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "s")}})


def test_numpy_arguments_hash_by_content(storage):
    a = np.arange(1000.0)
    wf = LocalWorkflow(total(scale(a, 2).set_name("scaled")).set_name("total"), workflow_name="np")
    wf.set_storage(storage)
    wf.set_cache("fingerprint")
    wf.run()
    same = LocalWorkflow(total(scale(a.copy(), 2).set_name("scaled")).set_name("total"), workflow_name="np")
    same.set_storage(storage)
    same.set_cache("fingerprint")
    same.run()
    assert same.last_run.ran == 0
    changed = a.copy()
    changed[500] = -1
    wf3 = LocalWorkflow(total(scale(changed, 2).set_name("scaled")).set_name("total"), workflow_name="np")
    wf3.set_storage(storage)
    wf3.set_cache("fingerprint")
    assert wf3.run() == float(np.sum(changed * 2))
    assert wf3.last_run.ran == 2


def test_positional_and_keyword_arguments_agree():
    fp = code_fingerprint(scale.__wrapped__)
    assert list(fp) == ["scale"]
    a = LocalWorkflow(scale(3, 2), workflow_name="a").fingerprints()
    b = LocalWorkflow(scale(3, factor=2), workflow_name="b").fingerprints()
    assert a[0]["node"] == b[0]["node"] and a[0]["args"] == {"values": b[0]["args"]["values"], "factor": b[0]["args"]["factor"]}


def test_values_are_hashed_by_content_not_identity():
    assert value_fingerprint({"a": [1, 2], "b": {3}}) == value_fingerprint({"b": {3}, "a": [1, 2]})
    assert value_fingerprint([1, 2]) != value_fingerprint((1, 2))
    assert value_fingerprint(1) != value_fingerprint(1.0) != value_fingerprint(True)
    assert value_fingerprint(np.float32(1.5)) != value_fingerprint(np.float64(1.5))
    assert value_fingerprint(np.zeros((2, 3))) != value_fingerprint(np.zeros((3, 2)))


def test_equal_constants_of_different_types_in_one_graph_stay_apart():
    # the planner hashes each distinct plain constant once per plan: 1, True, 1.0, 0.0
    # and -0.0 compare equal in Python but must still give different fingerprints
    values = [1, True, 1.0, 0.0, -0.0, "1", b"1", None]
    records = LocalWorkflow(*[scale(v, 2) for v in values], workflow_name="consts").fingerprints()
    by_value = {repr(v): r["args"]["values"] for v, r in zip(values, records)}
    assert len(set(by_value.values())) == len(values), by_value
    assert by_value["1"] == value_fingerprint(1) and by_value["-0.0"] == value_fingerprint(-0.0)


class Opaque:
    def __reduce_ex__(self, protocol):
        raise TypeError("no")


def test_unfingerprintable_values_warn():
    with pytest.warns(FingerprintWarning, match="Opaque"):
        Fingerprinter().value(Opaque())


def test_library_code_is_referenced_by_name_only():
    code = code_fingerprint(total.__wrapped__)
    assert list(code) == ["total"]  # numpy's sum is not fingerprinted


@workflow
class Accumulator:
    def __init__(self, start):
        self.total = start

    def add(self, x):
        self.total += x
        return self.total


def test_class_nodes_fingerprint_every_method_and_the_chain():
    acc = Accumulator(1)
    first = acc.add(2)
    second = acc.add(2)
    records = LocalWorkflow(second, workflow_name="cls").fingerprints()
    assert set(records[0]["code"]) == {"Accumulator", "Accumulator.__init__", "Accumulator.add"}
    assert records[1]["node"] != records[2]["node"]  # same call, later in the chain
    assert records[2]["args"]["method"] == records[1]["args"]["method"]
    assert set(records[2]["inputs"]) == {"Accumulator_0000", "Accumulator.add_0000"}
    del first


def test_query_overrides_the_policy(storage):
    out = total(scale(np.ones(3), 1).set_name("scaled")).set_name("sum")
    wf = LocalWorkflow(out, workflow_name="q")
    wf.set_storage(storage)
    wf.run()
    wf.query("^sum$").set_cache("off")
    wf.run()
    assert wf.last_run.ran == 1
    with pytest.raises(ConfigurationError, match="'always'"):
        wf.set_cache("always")


def test_plan_reports_missing_current_and_corrupted(storage):
    out = total(scale(np.ones(3), 1).set_name("scaled")).set_name("sum")
    wf = LocalWorkflow(out, workflow_name="states")
    wf.set_storage(storage)
    assert {p.state for p in wf.plan()} == {"missing"}
    wf.run()
    assert {p.state for p in wf.plan()} == {"current"}
    path = os.path.join(storage.path, "states", "scaled.ffr")
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff")
    plan = {p.name: p for p in wf.plan()}
    assert plan["scaled"].state == "corrupted" and plan["scaled"].action == "run"
    assert "damaged header" in plan["scaled"].reason


def test_results_record_their_fingerprint(storage):
    out = scale(np.ones(3), 2).set_name("scaled")
    wf = LocalWorkflow(out, workflow_name="meta")
    wf.set_storage(storage)
    wf.run()
    meta = storage.read_metadata("meta", "scaled")
    assert meta["fingerprint"] == wf.fingerprints()[0]
    assert set(meta["fingerprint"]) == {"v", "node", "code", "args", "inputs"}


def test_no_stale_warning_when_nothing_changed(storage):
    out = scale(np.ones(3), 2).set_name("scaled")
    wf = LocalWorkflow(out, workflow_name="quiet")
    wf.set_storage(storage)
    wf.run()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wf.run()


def test_fingerprints_do_not_load_parent_results(storage, monkeypatch):
    out = total(scale(np.ones(3), 2).set_name("scaled")).set_name("sum")
    wf = LocalWorkflow(out, workflow_name="noload")
    wf.set_storage(storage)
    wf.run()
    monkeypatch.setattr(type(storage), "read_task", lambda *a, **k: pytest.fail("a result was loaded"))
    assert [p.action for p in wf.plan()] == ["skip", "load"]
    wf.fingerprints()


# -- soundness: what must make a result stale ---------------------------------------------------
@workflow
def source(v):
    return v


@workflow
def tenfold(x):
    return x * 10


def source_and_child(v):
    return tenfold(source(v).set_name("src")).set_name("child")


def test_a_node_computed_from_a_stale_loaded_input_is_recomputed_later(storage):
    first = LocalWorkflow(source_and_child(1), workflow_name="stale_parent")
    first.set_storage(storage)
    assert first.run() == 10
    storage.remove_task("stale_parent", task_name="child")
    by_name = LocalWorkflow(source_and_child(2), workflow_name="stale_parent")
    by_name.set_storage(storage)
    with pytest.warns(StaleResultWarning, match="'src'.*argument 'v' changed"):
        assert by_name.run() == 10  # child is computed from the stored (stale) src = 1
    meta = storage.read_metadata("stale_parent", "child")
    assert meta["fingerprint"]["inputs"]["src"] == storage.read_metadata("stale_parent", "src")["fingerprint"]["node"]
    plan = {p.name: p for p in by_name.plan()}
    assert plan["child"].state == "stale" and "input 'src' changed" in plan["child"].reason
    by_fingerprint = LocalWorkflow(source_and_child(2), workflow_name="stale_parent")
    by_fingerprint.set_storage(storage)
    by_fingerprint.set_cache("fingerprint")
    assert by_fingerprint.run() == 20
    assert by_fingerprint.last_run.ran == 2
    assert {p.state for p in by_fingerprint.plan()} == {"current"}


def test_a_chain_computed_from_a_stale_input_stays_stale_all_the_way(storage):
    def build(v):
        return tenfold(tenfold(source(v).set_name("src")).set_name("mid")).set_name("end")

    wf = LocalWorkflow(build(1), workflow_name="chain")
    wf.set_storage(storage)
    wf.run()
    storage.remove_task("chain", pattern="*d")  # mid and end
    with pytest.warns(StaleResultWarning):
        changed = LocalWorkflow(build(2), workflow_name="chain")
        changed.set_storage(storage)
        assert changed.run() == 100
    again = LocalWorkflow(build(2), workflow_name="chain")
    again.set_storage(storage)
    again.set_cache("fingerprint")
    assert again.run() == 200 and again.last_run.ran == 3


def test_name_policy_warns_about_nodes_reused_while_their_input_is_recomputed(storage):
    wf = LocalWorkflow(source_and_child(1), workflow_name="mixed")
    wf.set_storage(storage)
    wf.run()
    changed = LocalWorkflow(source_and_child(2), workflow_name="mixed")
    changed.set_storage(storage)
    changed.query("^src$").set_cache("fingerprint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert changed.run() == 10  # child is reused by name
        changed.run()
    stale = [str(w.message) for w in caught if w.category is StaleResultWarning]
    assert len(stale) == 1 and "'child'" in stale[0] and "input 'src' is recomputed" in stale[0], stale
    assert changed.last_run.ran == 0


def test_results_stored_without_a_fingerprint_are_unverified_not_stale(storage):
    storage.save("old", "src", 1, {})
    storage.save("old", "child", 10, {})
    wf = LocalWorkflow(source_and_child(1), workflow_name="old")
    wf.set_storage(storage)
    plan = {p.name: p for p in wf.plan()}
    assert plan["child"].state == "unverified" and plan["child"].action == "load"
    assert plan["child"].reason == "stored without a fingerprint"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wf.run() == 10
    wf.set_cache("fingerprint")
    assert [(p.action, p.state) for p in wf.plan()] == [("run", "unverified"), ("run", "unverified")]
    assert wf.run() == 10 and wf.last_run.ran == 2


def test_a_node_computed_from_a_result_without_fingerprint_records_that(storage):
    storage.save("older", "src", 1, {})
    wf = LocalWorkflow(source_and_child(1), workflow_name="older")
    wf.set_storage(storage)
    assert wf.run() == 10
    assert storage.read_metadata("older", "child")["fingerprint"]["inputs"] == {"src": "unrecorded"}
    wf.set_cache("fingerprint")
    assert wf.run() == 10 and wf.last_run.ran == 2
