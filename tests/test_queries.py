"""Queries and workflow reprs on every backend.

* A query whose pattern matches no node can be looked at, but every method that sets
  an option on its nodes refuses, naming the pattern (a typo must not leave the nodes
  silently without the resources, retries or cache policy meant for them).
* ``repr()`` of a workflow says what it holds (name, node count, storage, cache policy),
  and of a query its pattern, count and the nodes it matches.

Prefect and KFP workflows are built for real (nothing runs); RayWorkflow needs a
running Ray, started once for this module on 127.0.0.1.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile

import pytest

# Prefect creates PREFECT_HOME when first imported: keep it out of ~/.prefect (see test_prefectback.py).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="functionfuse-test-prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

import raysupport  # noqa: E402,I001 - sets the Ray environment before ray is imported

from functionfuse import workflow  # noqa: E402
from functionfuse.backends.builtin.graphback import GraphWorkflow  # noqa: E402
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402
from functionfuse.backends.plugins import RandomStatePlugin  # noqa: E402
from functionfuse.baseworkflow import Query  # noqa: E402
from functionfuse.errors import ConfigurationError  # noqa: E402
from functionfuse.storage import storage_factory  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")


@workflow
def dataset(n):
    return list(range(n))


@workflow
def train(data, lr=0.1):
    return sum(data) * lr


@workflow
def score(model, data):
    return model / max(len(data), 1)


def dag():
    data = dataset(4).set_name("dataset")
    model = train(data).set_name("model")
    return score(model, data).set_name("accuracy")


@pytest.fixture(scope="module")
def ray_running():
    pytest.importorskip("ray")
    import ray

    was_running = ray.is_initialized()
    raysupport.start_local_ray()
    yield
    if not was_running:
        raysupport.stop_ray()


def make(backend: str, request: pytest.FixtureRequest, **kwargs):
    """A workflow of *backend* over :func:`dag` (built, never run)."""
    if backend == "local":
        return LocalWorkflow(dag(), workflow_name="queries", **kwargs)
    if backend == "graph":
        return GraphWorkflow(dag(), workflow_name="queries", doc_path=tempfile.mkdtemp(), **kwargs)
    if backend == "prefect":
        pytest.importorskip("prefect")
        from functionfuse.backends.addons.prefectback import PrefectWorkflow

        return PrefectWorkflow(dag(), workflow_name="queries", **kwargs)
    if backend == "kfp":
        pytest.importorskip("kfp")
        from functionfuse.backends.addons.kfpback import KFPWorkflow

        return KFPWorkflow(dag(), workflow_name="queries", **kwargs)
    if backend == "ray":
        request.getfixturevalue("ray_running")
        from functionfuse.backends.builtin.rayback import RayWorkflow

        return RayWorkflow(dag(), workflow_name="queries", **kwargs)
    raise AssertionError(backend)


def _query_class(backend: str) -> type:
    if backend == "local":
        from functionfuse.backends.builtin import localback

        return localback.Query  # the base Query with retries and timeouts
    if backend == "graph":
        return Query
    if backend == "prefect":
        from functionfuse.backends.addons import prefectback as module
    elif backend == "kfp":
        from functionfuse.backends.addons import kfpback as module  # type: ignore[no-redef]
    else:
        pytest.importorskip("ray")
        from functionfuse.backends.builtin import rayback as module  # type: ignore[no-redef]
    return module.Query


PLUGIN = RandomStatePlugin(min=0, max=10, seed=1)

#: every method of every backend's Query that sets an option on its nodes, with valid arguments
SETTERS = {
    "local": {
        "set_plugin": ((PLUGIN,), {}),
        "set_cache": (("off",), {}),
        "set_retries": ((2,), {}),
        "set_timeout": ((60,), {}),
    },
    "graph": {"set_plugin": ((PLUGIN,), {}), "set_cache": (("off",), {})},
    "prefect": {
        "set_task_args": (({"retries": 1},), {}),
        "set_plugin": ((PLUGIN,), {}),
        "set_cache": (("off",), {}),
    },
    "kfp": {
        "set_task_args": (({"cpu_limit": "1"},), {}),
        "set_resources": ((), {"cpu_limit": "1"}),
        "set_plugin": ((PLUGIN,), {}),
        "set_cache": (("off",), {}),
    },
    "ray": {
        "set_remote_args": (({"num_cpus": 1},), {}),
        "set_plugin": ((PLUGIN,), {}),
        "set_cache": (("off",), {}),
    },
}
CASES = [(backend, method) for backend, methods in SETTERS.items() for method in methods]


def _options(wf) -> dict:
    """Every per-node option a query can have set on *wf*."""
    return {
        attr: dict(getattr(wf, attr))
        for attr in ("_plugins", "_cache", "_task_args", "_remote_args", "_retries", "_timeouts")
        if hasattr(wf, attr)
    }


def _setters(backend: str) -> list[str]:
    return sorted(name for name, _ in inspect.getmembers(_query_class(backend), inspect.isfunction) if name.startswith("set_"))


@pytest.mark.parametrize("backend", list(SETTERS))
def test_every_setter_of_every_query_class_refuses_an_empty_query(backend, request):
    # also a setter added later: the check comes before its arguments are looked at
    wf = make(backend, request)
    assert set(SETTERS[backend]) <= set(_setters(backend))
    for method in _setters(backend):
        params = inspect.signature(getattr(_query_class(backend), method)).parameters.values()
        only_keywords = all(p.kind in (p.VAR_KEYWORD, p.KEYWORD_ONLY) for p in list(params)[1:])
        args, kwargs = ((), {"anything": object()}) if only_keywords else ((object(),), {})
        with pytest.raises(ConfigurationError, match=rf"Query 'nothing here' of workflow 'queries' matches no node, so {method}\(\)"):
            getattr(wf.query("nothing here"), method)(*args, **kwargs)


@pytest.mark.parametrize("backend, method", CASES, ids=[f"{b}-{m}" for b, m in CASES])
def test_a_query_matching_no_node_refuses_every_setter(backend, method, request):
    wf = make(backend, request)
    before = _options(wf)
    query = wf.query("^modle$")  # a typo of 'model'
    assert len(query) == 0  # looking at an empty query is fine
    args, kwargs = SETTERS[backend][method]
    with pytest.raises(ConfigurationError) as info:
        getattr(query, method)(*args, **kwargs)
    message = str(info.value)
    assert "'^modle$'" in message and f"{method}()" in message and "'queries'" in message
    assert "matches no node" in message
    assert "'dataset', 'model', 'accuracy'" in message  # what the nodes are called
    assert "did you mean 'model'" in message
    assert _options(wf) == before  # nothing was set
    # the same call on a query that matches sets the option
    getattr(wf.query("^model$"), method)(*args, **kwargs)
    assert _options(wf) != before


def test_an_empty_query_of_a_big_workflow_lists_a_few_names():
    nodes = [dataset(i).set_name(f"part{i:03d}") for i in range(50)]
    wf = LocalWorkflow(*nodes, workflow_name="many")
    with pytest.raises(ConfigurationError) as info:
        wf.query("^gpu").set_cache("off")
    message = str(info.value)
    assert "'part000', 'part001'" in message and "'part049'" not in message and "50 nodes" in message


def test_a_query_built_without_a_pattern_says_so():
    wf = LocalWorkflow(dag(), workflow_name="queries")
    with pytest.raises(ConfigurationError, match=r"This query of workflow 'queries' matches no node"):
        Query([], wf).set_plugin(PLUGIN)  # the seed's constructor: Query(nodes, workflow)


def test_query_repr_shows_pattern_count_and_nodes():
    wf = LocalWorkflow(dag(), workflow_name="queries")
    assert repr(wf.query("^(model|accuracy)$")) == (
        "<Query '^(model|accuracy)$' of workflow 'queries': 2 nodes ['model', 'accuracy']>"
    )
    assert repr(wf.query("^model$")) == "<Query '^model$' of workflow 'queries': 1 node ['model']>"
    assert repr(wf.query("^modle$")) == "<Query '^modle$' of workflow 'queries': no node matches>"
    assert repr(wf.query()) == "<Query (every node) of workflow 'queries': 3 nodes ['dataset', 'model', 'accuracy']>"
    many = LocalWorkflow(*[dataset(i).set_name(f"part{i:03d}") for i in range(50)], workflow_name="many")
    text = repr(many.query("part"))
    assert text.startswith("<Query 'part' of workflow 'many': 50 nodes ['part000', 'part001',")
    assert text.endswith("'part009', ... 40 more]>")


@pytest.mark.parametrize("backend", ["local", "graph", "prefect", "kfp", "ray"])
def test_workflow_repr_shows_name_nodes_storage_and_cache(backend, request, tmp_path):
    wf = make(backend, request)
    cls = type(wf).__name__
    policy = wf.cache_policy
    assert repr(wf).startswith(f"<{cls} 'queries': 3 nodes, no storage, cache {policy!r}")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
    wf.set_cache("off")
    wf.query("^model$").set_cache("name")
    text = repr(wf)
    assert text.startswith(f"<{cls} 'queries': 3 nodes, storage FileStorage({str(tmp_path)!r}), cache 'off' ('name' for 1 node)")
    assert text.endswith(">")


def test_kfp_workflow_repr_shows_its_base_image_and_never_credentials(request):
    wf = make("kfp", request, baseimage="python:3.11-slim",
              registry_credentials={"server": "127.0.0.1:5000/team", "username": "kfp-user-xyz", "password": "pa55-w0rd"})
    text = repr(wf)
    assert re.fullmatch(r"<KFPWorkflow 'queries': 3 nodes, no storage, cache '\w+', base 'python:3.11-slim'>", text)
    assert "pa55-w0rd" not in text and "kfp-user-xyz" not in text


def test_ray_run_returns_none_unless_results_are_asked_for(request):
    # unlike LocalWorkflow.run(), RayWorkflow.run() fetches no value by default
    wf = make("ray", request)
    assert wf.run() is None
    assert wf.run(return_results=True) == pytest.approx(0.6 / 4)


def test_the_ray_workflows_addon_queries_with_the_checked_base_query():
    # ray.workflow is gone from this Ray, so the addon cannot be created here; its queries
    # are the base Query checked above (tests/rayworkflow/ runs the addon on ray 2.47)
    pytest.importorskip("ray")
    from functionfuse.backends.addons import rayworkflowback

    assert rayworkflowback.RayWorkflow.query_class is Query
    assert rayworkflowback.RayWorkflow.__repr__ is LocalWorkflow.__repr__
