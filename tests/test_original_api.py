"""The API of the original functionfuse that its tests and users' scripts call:
``BaseWorkflow.find_nodes``, ``replace_func``, ``Node.get_name()``,
``LocalWorkflow.log_nodes``, ``RayWorkflow.set_plugin(pattern, plugin)`` and
``PrefectWorkflow.set_plugin(query, plugin)``.

As in the original, the patterns of these methods match a node's whole name
(``re.fullmatch``), unlike ``query()`` (``re.search``).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile

import pytest

import raysupport  # noqa: F401,I001 - sets the Ray environment before ray is imported

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.plugins import RandomStatePlugin
from functionfuse.errors import ConfigurationError, GraphError
from functionfuse.storage import storage_factory

if "prefect" not in sys.modules:
    # Prefect reads PREFECT_HOME when first imported: keep its files out of ~/.prefect
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="functionfuse-test-prefect-home-")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_PROFILE", None)


# -- node functions (module level: Ray workers import them) ---------------------------------
@workflow
def add(a, b):
    return a + b


@workflow
def minus(a, b):
    return a - b


@workflow
def draw(tag):
    return random.random()


def times(a, b):
    return a * b


def diamond():
    """The graph of the original project's tests: First sum -> Second sum -> Single minus."""
    s1 = add(1, 1).set_name("First sum")
    s2 = add(s1, 1).set_name("Second sum")
    m = minus(s1, s2).set_name("Single minus")
    return s1, s2, m


# -- find_nodes and get_name ------------------------------------------------------------------
def test_find_nodes_returns_the_nodes_whose_whole_name_matches():
    s1, s2, m = diamond()
    wf = LocalWorkflow(m, workflow_name="first")
    found = wf.find_nodes(r"^.*sum.*$")
    assert [n.get_name() for n in found] == ["First sum", "Second sum"]
    assert found[0] is s1 and found[1] is s2
    assert wf.find_nodes(r"^.*minus.*$") == [m]
    # the whole name, as in the original (re.fullmatch), not a part of it like query()
    assert wf.find_nodes("sum") == []
    assert wf.find_nodes("Second sum") == [s2]


def test_find_nodes_without_a_pattern_returns_every_node_in_topological_order():
    s1, s2, m = diamond()
    wf = LocalWorkflow(m, workflow_name="first")
    assert wf.find_nodes() == [s1, s2, m]


def test_find_nodes_refuses_an_invalid_pattern():
    wf = LocalWorkflow(diamond()[2], workflow_name="first")
    with pytest.raises(GraphError, match=r"'\(sum' is not a valid regular expression"):
        wf.find_nodes("(sum")


def test_get_name_of_an_unnamed_node_found_is_its_name_in_the_workflow():
    a = add(1, 2)
    b = add(a, 3)
    c = minus(b, a).set_name("result")
    wf = LocalWorkflow(c, workflow_name="auto")
    found = wf.find_nodes(r"add_\d+")
    assert found == [a, b]
    assert [n.get_name() for n in found] == wf.graph.names[:2] == ["add_0000", "add_0001"]
    assert c.get_name() == "result"


def test_get_name_of_an_unnamed_node_no_workflow_found_is_none():
    assert add(1, 2).get_name() is None
    assert add(1, 2).set_name("three").get_name() == "three"


# -- replace_func -------------------------------------------------------------------------------
def test_replace_func_runs_the_new_function_under_the_same_name():
    s1, s2, m = diamond()
    wf = LocalWorkflow(m, workflow_name="replaced")
    assert wf.run() == -1
    names = list(wf.graph.names)
    wf.replace_func(s2, times)  # also after a run: the compiled calls are rebuilt
    assert wf.run() == 0  # s1 = 2, s2 = 2 * 1, m = 2 - 2
    assert wf.graph.names == names


def test_replace_func_keeps_the_automatic_name_of_an_unnamed_node(tmp_path):
    a = add(2, 3)
    wf = LocalWorkflow(a, workflow_name="auto")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    wf.replace_func(a, times)
    assert wf.run() == 6
    assert wf.find_nodes()[0].get_name() == "add_0000"
    assert wf.storage.read_task("auto", "add_0000") == 6


def test_replace_func_takes_a_decorated_function():
    s1, s2, m = diamond()
    wf = LocalWorkflow(m, workflow_name="decorated")
    wf.replace_func(s1, minus)
    assert wf.run() == -1  # s1 = 0, s2 = 1, m = -1
    assert s1.func is minus.__wrapped__


def test_replace_func_recomputes_under_the_fingerprint_policy(tmp_path):
    s1, s2, m = diamond()
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path)}})
    wf = LocalWorkflow(m, workflow_name="fp")
    wf.set_storage(storage)
    wf.set_cache("fingerprint")
    assert wf.run() == -1
    wf.replace_func(s2, times)
    assert wf.plan().action("Second sum") == "run"
    assert wf.run() == 0


@pytest.mark.parametrize(
    "target, new_func, error",
    [
        ("other", times, "is not part of this workflow's graph"),
        ("node", 42, r"42 is not callable"),
        ("node", lambda a: a, r"cannot take the arguments of node 'Second sum'.*too many positional"),
    ],
    ids=["node-of-another-workflow", "not-callable", "other-signature"],
)
def test_replace_func_refuses(target, new_func, error):
    s1, s2, m = diamond()
    wf = LocalWorkflow(m, workflow_name="refused")
    node = add(0, 0) if target == "other" else s2
    with pytest.raises(GraphError, match=error):
        wf.replace_func(node, new_func)
    assert s2.func is add.__wrapped__


def test_replace_func_refuses_class_and_method_nodes():
    @workflow
    class Counter:
        def __init__(self, start):
            self.n = start

        def step(self):
            self.n += 1
            return self.n

    c = Counter(1).set_name("counter")
    s = c.step().set_name("step")
    wf = LocalWorkflow(s, workflow_name="stateful")
    with pytest.raises(GraphError, match=r"'counter' is a class node"):
        wf.replace_func(c, dict)
    with pytest.raises(GraphError, match=r"'step' is a method call"):
        wf.replace_func(s, len)


# -- log_nodes ------------------------------------------------------------------------------------
@workflow
def note(path, value):
    with open(path, "a") as f:
        f.write(f"{value}\n")
    return value


def test_log_nodes_run_every_time_and_are_never_stored(tmp_path):
    log = str(tmp_path / "log.txt")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    s1 = add(1, 1).set_name("First sum")
    logged = note(log, s1).set_name("log sum")
    m = minus(logged, 1).set_name("Single minus")
    for _ in range(2):
        wf = LocalWorkflow(m, workflow_name="logged")
        wf.set_storage(storage)
        wf.log_nodes(r"^log.*$")
        entry = wf.plan()[1]
        assert (entry.name, entry.action, entry.state) == ("log sum", "replay", "not stored")
        assert entry.reason == "selected by log_nodes(): runs on every run, never stored"
        assert wf.run() == 1
        assert storage.list_tasks("logged", "*") == ["First sum", "Single minus"]
    with open(log) as f:
        assert f.read().split() == ["2", "2"]


def test_log_nodes_match_whole_names(tmp_path):
    s1, s2, m = diamond()
    wf = LocalWorkflow(m, workflow_name="logged")
    with pytest.raises(ConfigurationError, match=r"Pattern 'sum' matches no node of workflow 'logged'.*re\.fullmatch"):
        wf.log_nodes("sum")  # no node is named 'sum'
    wf.log_nodes("Second sum")
    assert [e.name for e in wf.plan() if "log_nodes" in e.reason] == []  # without storage everything runs
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    assert [e.name for e in wf.plan() if "log_nodes" in e.reason] == ["Second sum"]


# -- set_plugin on Ray and Prefect -----------------------------------------------------------------
def seeded(seed):
    random.seed(seed)
    return random.random()


@pytest.fixture(scope="module")
def local_ray():
    pytest.importorskip("ray")
    raysupport.start_local_ray()
    yield
    raysupport.stop_ray()


def test_ray_set_plugin_applies_to_the_nodes_whose_whole_name_matches(local_ray):
    from functionfuse.backends.builtin.rayback import RayWorkflow

    a = draw("a").set_name("draw")
    b = draw(a).set_name("draw_more")
    plugin = RandomStatePlugin(seed=7)  # the default seed_func seeds `random` where the node runs
    wf = RayWorkflow(a, b, workflow_name="plugged")
    wf.set_plugin(pattern="draw", plugin=plugin)
    with pytest.raises(ConfigurationError, match="Pattern 'draw_' matches no node.*did you mean 'draw' or 'draw_more'"):
        wf.set_plugin(pattern="draw_", plugin=plugin)
    got = wf.run(return_results=True)
    assert got[0] == seeded(plugin.seed_for("draw"))
    assert got[1] != seeded(plugin.seed_for("draw_more"))
    wf = RayWorkflow(a, b, workflow_name="plugged")
    wf.set_plugin(pattern=r"draw\w*", plugin=plugin)
    assert wf.run(return_results=True) == [seeded(plugin.seed_for(name)) for name in ("draw", "draw_more")]


@pytest.fixture(scope="module")
def prefect_server():
    prefect = pytest.importorskip("prefect")
    yield prefect
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all(timeout=20)
    EventsWorker.drain_all(timeout=20)
    SubprocessASGIServer().stop()


def test_prefect_set_plugin_applies_to_the_nodes_whose_whole_name_matches(prefect_server):
    from functionfuse.backends.addons.prefectback import PrefectWorkflow

    a = draw("a").set_name("draw")
    b = draw(a).set_name("draw_more")  # after 'draw': tasks share this process's `random`
    wf = PrefectWorkflow(a, b, workflow_name="plugged")
    plugin = RandomStatePlugin(seed=7, seed_func=random.seed)
    wf.set_plugin(query="draw", plugin=plugin)
    with pytest.raises(ConfigurationError, match="Pattern 'raw' matches no node"):
        wf.set_plugin(query="raw", plugin=plugin)
    got = wf.run()
    assert got[0] == seeded(plugin.seed_for("draw"))
    assert got[1] != seeded(plugin.seed_for("draw_more"))
