"""Fingerprints: stale results are detected, reported, and (by policy) recomputed."""

from __future__ import annotations

import functools
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


def test_the_default_policy_recomputes_an_argument_change(project):
    project.run()
    project.write(offset=1)
    report = project.run()  # default policy: fingerprint
    assert report["ran"] == 2 and report["warnings"] == []
    assert json.loads(report["result"]) == {"total": 25}
    assert states(report)["data"] == ("load", "current")


def test_name_policy_reuses_and_warns_once(project):
    project.run()
    project.write(offset=1)
    report = project.run("name")
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
    by_name.set_cache("name")
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
        changed.set_cache("name")
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
    changed.set_cache("name")
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
    wf.set_cache("name")
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
    wf.set_cache("name")
    assert wf.run() == 10
    assert storage.read_metadata("older", "child")["fingerprint"]["inputs"] == {"src": "unrecorded"}
    wf.set_cache("fingerprint")
    assert wf.run() == 10 and wf.last_run.ran == 2


class UserModules:
    """Modules of a user project written to a folder and imported from it."""

    def __init__(self, folder, monkeypatch):
        self.folder = folder
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.setattr(sys, "dont_write_bytecode", True)
        self.names: list[str] = []

    def write(self, name, source, namespace=False):
        path = self.folder.joinpath(*name.split("."))
        if name.count("."):
            path.parent.mkdir(parents=True, exist_ok=True)
            for parent in [path.parent, *path.parent.parents]:
                if parent == self.folder or namespace:
                    break
                (parent / "__init__.py").touch()
        path.with_suffix(".py").write_text(source)

    def load(self, name):
        import importlib

        importlib.invalidate_caches()
        self.names.append(name)
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        return importlib.import_module(name)

    def close(self):
        for name in list(sys.modules):
            if any(name == n or name.startswith(n.split(".")[0] + ".") or name == n.split(".")[0] for n in self.names):
                del sys.modules[name]


@pytest.fixture
def modules(tmp_path, monkeypatch):
    m = UserModules(tmp_path / "project", monkeypatch)
    (tmp_path / "project").mkdir()
    yield m
    m.close()


def test_helpers_of_dotted_submodules_are_tracked(modules):
    modules.write("ffdots.sub.leaf", "SCALE = 2\n\ndef deep(x):\n    return x * SCALE\n")
    modules.write("ffdots_user", "import ffdots.sub.leaf\n\ndef node(x):\n    return ffdots.sub.leaf.deep(x)\n")
    user = modules.load("ffdots_user")
    before = code_fingerprint(user.node)
    assert "deep" in before
    modules.write("ffdots.sub.leaf", "SCALE = 2\n\ndef deep(x):\n    return x * SCALE + 1\n")
    modules.load("ffdots.sub.leaf")
    after = code_fingerprint(user.node)
    assert after["deep"] != before["deep"] and after != before
    modules.write("ffdots.sub.leaf", "SCALE = 3\n\ndef deep(x):\n    return x * SCALE + 1\n")
    modules.load("ffdots.sub.leaf")
    assert code_fingerprint(user.node)["deep"] != after["deep"]


def test_helpers_of_namespace_packages_are_tracked(modules):
    modules.write("ffnamespace.leaf", "def deep(x):\n    return x + 1\n", namespace=True)
    modules.write("ffnamespace_user", "import ffnamespace.leaf\n\ndef node(x):\n    return ffnamespace.leaf.deep(x)\n")
    assert "deep" in code_fingerprint(modules.load("ffnamespace_user").node)


def test_constants_of_user_modules_read_as_attributes_count(modules):
    modules.write("ffconsts", "FACTOR = 2\n")
    modules.write("ffconsts_user", "import ffconsts\n\ndef node(x):\n    return x * ffconsts.FACTOR\n")
    user = modules.load("ffconsts_user")
    before = code_fingerprint(user.node)
    modules.write("ffconsts", "FACTOR = 3\n")
    modules.load("ffconsts")
    assert code_fingerprint(user.node) != before


def test_builtins_ufuncs_and_c_functions_are_told_apart():
    import math
    import operator

    pairs = [(len, print), (np.add, np.multiply), (math.sin, math.cos), (operator.add, operator.mul),
             (functools.partial(operator.add, 1), functools.partial(operator.mul, 1))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of them is opaque
        for a, b in pairs:
            assert value_fingerprint(a) != value_fingerprint(b), (a, b)
            assert value_fingerprint(a) == value_fingerprint(a)


def make_scaler(factor):
    def apply(x):
        return x * factor[0] + sum(config.values()) + float(weights.sum())

    config = {"shift": 1}
    weights = np.ones(2)
    return apply


def test_mutable_closure_values_count():
    base = code_fingerprint(make_scaler([2]))
    assert code_fingerprint(make_scaler([2])) == base
    assert code_fingerprint(make_scaler([3])) != base

    def with_config(config):
        def f(x):
            return x + config["k"]

        return f

    assert code_fingerprint(with_config({"k": 1})) != code_fingerprint(with_config({"k": 2}))

    def with_array(arr):
        return lambda x: x * arr

    assert code_fingerprint(with_array(np.zeros(3))) != code_fingerprint(with_array(np.ones(3)))


DECORATED = '''
import functools
from functionfuse import workflow

def scaled(k):
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(x):
            return fn(x) * k
        return wrapper
    return decorate

@scaled({k})
def helper(x):
    return x + 1

@workflow
def node(x):
    return helper(x)
'''


def test_decorators_of_helpers_count_and_workflow_does_not(modules):
    for name, k in (("ffdeco_a", 2), ("ffdeco_b", 2), ("ffdeco_c", 3)):
        modules.write(name, DECORATED.format(k=k))
    a, b, c = (modules.load(n) for n in ("ffdeco_a", "ffdeco_b", "ffdeco_c"))
    assert a.helper(1) == 4 and c.helper(1) == 6
    fa, fb, fc = (code_fingerprint(m.node.__wrapped__) for m in (a, b, c))
    assert fa == fb  # same code in two modules
    assert set(fa) == {"node", "helper"}
    assert fc["helper"] != fa["helper"]
    # the decorator's own code counts too
    modules.write("ffdeco_d", DECORATED.format(k=2).replace("fn(x) * k", "fn(x) * k + 0"))
    assert code_fingerprint(modules.load("ffdeco_d").node.__wrapped__)["helper"] != fa["helper"]
    # @workflow itself is not part of the computation
    modules.write("ffdeco_e", DECORATED.format(k=2).replace("@workflow\n", ""))
    assert code_fingerprint(modules.load("ffdeco_e").node)["node"] == fa["node"]


LAMBDAS = '''
import json, sys
from functionfuse import workflow
from functionfuse.fingerprint import code_fingerprint

first = lambda x: x + 1
second = lambda x: x + 2
third = lambda x: x + {third}

@workflow
def node(x):
    return first(x) + second(x) + third(x)

if __name__ == "__main__":
    print(json.dumps(code_fingerprint(node.__wrapped__)))
'''


def test_lambdas_get_distinct_keys_that_do_not_depend_on_the_module_name(modules, tmp_path):
    modules.write("fflambdas", LAMBDAS.format(third=3))
    imported = code_fingerprint(modules.load("fflambdas").node.__wrapped__)
    assert len(imported) == 4 and len(set(imported.values())) == 4, imported
    script = subprocess.run([sys.executable, str(modules.folder / "fflambdas.py")], capture_output=True, text=True, check=True)
    assert json.loads(script.stdout) == imported
    modules.write("fflambdas", LAMBDAS.format(third=4))
    changed = code_fingerprint(modules.load("fflambdas").node.__wrapped__)
    assert [k for k in imported if imported[k] != changed[k]] == [k for k in imported if k.endswith("#2")]


# -- arrays in stores: Zarr and Dask ------------------------------------------------------------
def zarr_array(path, data, chunks=(5, 5), **kwargs):
    zarr = pytest.importorskip("zarr")
    store = str(path) if isinstance(path, os.PathLike) else path
    z = zarr.create_array(store, shape=data.shape, chunks=chunks, dtype=data.dtype, **kwargs)
    z[:] = data
    return z


@pytest.fixture
def no_chunk_decoding(monkeypatch):
    """Fingerprinting a Zarr array must not read its data (only stored chunk bytes)."""
    zarr = pytest.importorskip("zarr")

    def refuse(*args, **kwargs):
        raise AssertionError("the array's data was read")

    monkeypatch.setattr(zarr.core.array.AsyncArray, "getitem", refuse)


def test_zarr_arrays_are_fingerprinted_by_stored_content_not_by_path(tmp_path, no_chunk_decoding):
    zarr = pytest.importorskip("zarr")
    data = np.arange(100.0).reshape(10, 10)
    here = zarr_array(tmp_path / "a.zarr", data)
    elsewhere = zarr_array(tmp_path / "other" / "b.zarr", data)
    digest = value_fingerprint(here)
    assert value_fingerprint(elsewhere) == digest
    assert value_fingerprint(zarr.open_array(str(tmp_path / "a.zarr"))) == digest
    assert value_fingerprint(zarr_array(tmp_path / "c.zarr", data, chunks=(2, 10))) != digest
    assert value_fingerprint(zarr_array(tmp_path / "d.zarr", data.astype("f4"))) != digest
    assert value_fingerprint(zarr_array(tmp_path / "e.zarr", data, compressors=None)) != digest
    group = zarr.open_group(str(tmp_path / "g.zarr"))
    inner = group.create_array("inner", shape=(10, 10), chunks=(5, 5), dtype="f8")
    inner[:] = data
    assert value_fingerprint(inner) == digest  # inside a group: the path within the store does not count
    with zarr.config.set({"array.write_empty_chunks": True}):
        zarr.open_array(str(tmp_path / "a.zarr"), mode="r+")[0, 0] = -1.0  # same path, new content
    assert value_fingerprint(zarr.open_array(str(tmp_path / "a.zarr"))) != digest


def test_dask_arrays_read_from_zarr_follow_the_stored_data(tmp_path, no_chunk_decoding):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    data = np.arange(100.0).reshape(10, 10)
    zarr_array(tmp_path / "a.zarr", data)
    zarr_array(tmp_path / "copy.zarr", data)
    before = da.from_zarr(str(tmp_path / "a.zarr"))
    digest = value_fingerprint(before)
    derived = value_fingerprint(before + 1)
    assert value_fingerprint(da.from_zarr(str(tmp_path / "copy.zarr"))) == digest
    assert value_fingerprint(da.from_zarr(str(tmp_path / "a.zarr"), inline_array=True)) == digest
    zarr.open_array(str(tmp_path / "a.zarr"), mode="r+")[:] = data * 2
    after = da.from_zarr(str(tmp_path / "a.zarr"))
    assert after.name == before.name  # Dask's token does not see the new data...
    assert value_fingerprint(after) != digest  # ...the fingerprint does
    assert value_fingerprint(after + 1) != derived
    # other Dask arrays: their graph name; random arrays get a new name every time
    assert value_fingerprint(da.from_array(data, chunks=5)) == value_fingerprint(da.from_array(data.copy(), chunks=5))
    assert value_fingerprint(da.random.random(4)) != value_fingerprint(da.random.random(4))


def test_zarr_on_s3_uses_the_stored_etags(monkeypatch, no_chunk_decoding):
    pytest.importorskip("s3fs")
    import s3support
    import zarr
    from zarr.storage import FsspecStore

    server = s3support.MotoS3().start()
    try:
        bucket = server.make_bucket()
        data = np.arange(64, dtype="i8").reshape(8, 8)

        def on_s3(path):
            store = FsspecStore.from_url(f"s3://{bucket}/{path}", storage_options=server.s3fs_options())
            return zarr_array(store, data, chunks=(4, 4))

        here, there, different = on_s3("a.zarr"), on_s3("deeper/b.zarr"), on_s3("c.zarr")
        different[0, 0] = -1

        def refuse(self, key, *args, **kwargs):
            raise AssertionError(f"chunk {key!r} was read: the ETag identifies it")

        with monkeypatch.context() as patched:
            patched.setattr(FsspecStore, "get", refuse)
            digest = value_fingerprint(here)
            assert value_fingerprint(there) == digest
            assert value_fingerprint(different) != digest
        here[0, 0] = -1
        assert value_fingerprint(here) == value_fingerprint(different)
    finally:
        server.stop()


def test_fingerprints_import_no_array_library_for_other_values():
    code = (
        "import sys, numpy as np\n"
        "from functionfuse.fingerprint import value_fingerprint\n"
        "class Point:\n    def __init__(self): self.x = 1\n"
        "value_fingerprint([np.ones(3), {'a': Point()}, len, np.add])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'zarr', 'dask', 's3fs'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


VALUES = '''
import dataclasses, json, sys
from functionfuse.fingerprint import value_fingerprint

@dataclasses.dataclass
class Config:
    rate: float
    layers: tuple

class Plain:
    def __init__(self, n):
        self.n = n

class Slotted:
    __slots__ = ("n",)
    def __init__(self, n):
        self.n = n
    def __reduce__(self):
        return (Slotted, (self.n,))

def digests(rate):
    return [value_fingerprint(v) for v in (Config(rate, (2, 3)), Plain(rate), Slotted(rate))]

if __name__ == "__main__":
    print(json.dumps(digests(0.5)))
'''


def test_values_of_user_classes_agree_as_a_script_or_imported(modules):
    """An argument that is an instance of a class of the user's own script gets the same
    fingerprint whether the file runs as ``__main__`` (a laptop run) or is imported (a
    step of a cluster run), and still changes with its contents."""
    modules.write("ffvalues", VALUES)
    imported = modules.load("ffvalues").digests(0.5)
    script = subprocess.run([sys.executable, str(modules.folder / "ffvalues.py")], capture_output=True, text=True, check=True)
    assert json.loads(script.stdout) == imported
    changed = modules.load("ffvalues").digests(0.25)
    assert all(a != b for a, b in zip(imported, changed))
