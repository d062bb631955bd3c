"""Helpers of the KFPWorkflow tests: a user project on disk, and HTTP servers that
answer like the KFP API and the Kubernetes API.

A KFP API server cannot run here: it needs Kubernetes (and its Argo/MySQL/MinIO stack).
:class:`KFPAPIStandIn` stands in for it at the HTTP boundary only: it serves the few
``/apis/v2beta1`` endpoints that ``kfp.Client`` calls to submit a run (healthz,
experiments, runs), on 127.0.0.1, and records every request, so a test checks what the
real SDK client sent. The kind end-to-end test (tests/e2e) submits to a real KFP.
Neither can a Kubernetes API server run here: :class:`KubeAPIStandIn` answers the real
``kubectl`` binary's discovery and ConfigMap requests the same way.
"""

from __future__ import annotations

import http.server
import json
import os
import textwrap
import threading
import uuid
from typing import Any

#: the seed's quick-start DAG and stateful class-node example, as a module of a user project
SEED_MODULE = textwrap.dedent(
    '''
    """The user's pipeline code (a project module: steps import it, no script runs again)."""
    import os

    from functionfuse import workflow


    @workflow
    def sum(a, b):
        return a + b


    @workflow
    def multiply(a, b):
        return a * b


    @workflow
    class IncrementalSum:
        def __init__(self, start):
            self.start = start

        def add(self, n):
            self.start += n
            return self.start


    @workflow
    def minus(a, b):
        return a - b


    @workflow
    def fail_if(flag, value):
        if flag:
            raise ValueError(f"refusing {value!r}")
        return value


    @workflow
    def killed(value):
        """Ends its own process without a word and with the exit status of SIGKILL, as the
        kernel's OOM killer would (a step is PID 1 of its container, which a signal it
        sends itself cannot end)."""
        os._exit(137)


    @workflow
    def where():
        """Facts about the container the step runs in."""
        return {"pid": os.getpid(), "cwd": os.getcwd(), "in_image": os.path.exists("/opt/functionfuse-kfp/dag.pkl")}


    @workflow
    def env_value(name):
        """The environment variable *name* where the node runs (None: unset)."""
        return os.environ.get(name)


    def set_mark():
        """An initializer for InitializerPlugin: marks the process the node runs in."""
        os.environ["FF_PLUGIN_MARK"] = "set by the plugin"


    def seed():
        a, b = 1, 1
        a_plus_b = sum(a, b).set_name("node1")
        a_plus_two_b = sum(a_plus_b, b).set_name("node2")
        return multiply(a_plus_b, a_plus_two_b).set_name("node3")


    def stateful():
        one = minus(4, 3).set_name("four_minus_three")
        incremental_sum = IncrementalSum(start=one).set_name("IncrementalSum")
        two = minus(3, one).set_name("three_minus_one")
        incremental_sum.add(two).set_name("one_plus_two")
        incremental_sum.add(two).set_name("three_plus_two")
        six = incremental_sum.add(one).set_name("five_plus_one")
        return minus(six, 2).set_name("six_minus_two")
    '''
)

#: expected: the seed's results, as LocalWorkflow computes them
SEED_RESULT = 6  # (1 + 1) * ((1 + 1) + 1)
STATEFUL_RESULT = 4  # ((1 + 2) + 2 + 1) - 2


def write_project(folder: str, module: str) -> str:
    """A user project: the pipeline module, a .dockerignore, and files it keeps out."""
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    with open(os.path.join(folder, f"{module}.py"), "w") as f:
        f.write(SEED_MODULE)
    with open(os.path.join(folder, ".dockerignore"), "w") as f:
        f.write("# kept out of the image\ndata/\n*.secret\n")
    with open(os.path.join(folder, "data", "big.bin"), "wb") as f:
        f.write(b"\0" * 1024)
    with open(os.path.join(folder, "token.secret"), "w") as f:
        f.write("do-not-ship\n")
    with open(os.path.join(folder, "README.txt"), "w") as f:
        f.write("a user project\n")
    return folder


class KFPAPIStandIn:
    """The KFP v2beta1 API endpoints that ``kfp.Client`` submits through, on 127.0.0.1.

    ``requests`` holds ``(method, path, json body or None)`` of each request received.
    Runs are reported ``SUCCEEDED`` when asked for (nothing runs them).
    """

    def __init__(self, run_state: str = "SUCCEEDED") -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.run_state = run_state
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                return json.loads(raw) if raw else None

            def _send(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.requests.append(("GET", self.path, None))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/healthz":
                    return self._send(200, {"multi_user": False})
                if path == "/apis/v2beta1/experiments":
                    found = list(outer.experiments.values())
                    return self._send(200, {"experiments": found, "total_size": len(found)} if found else {})
                if path.startswith("/apis/v2beta1/runs/"):
                    run = outer.runs.get(path.rsplit("/", 1)[1])
                    if run is None:
                        return self._send(404, {"error": "run not found", "code": 5})
                    return self._send(200, {**run, "state": outer.run_state})
                return self._send(404, {"error": f"no route {path}", "code": 5})

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                outer.requests.append(("POST", self.path, body))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
                    outer.experiments[exp["experiment_id"]] = exp
                    return self._send(200, exp)
                if path == "/apis/v2beta1/runs":
                    run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
                    outer.runs[run["run_id"]] = run
                    return self._send(200, run)
                return self._send(404, {"error": f"no route {path}", "code": 5})

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="kfp-api-stand-in", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "KFPAPIStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def run_requests(self) -> list[dict]:
        return [body for method, path, body in self.requests if method == "POST" and path.startswith("/apis/v2beta1/runs")]


class KubeAPIStandIn:
    """The few Kubernetes API paths that a real ``kubectl get configmap`` calls, on 127.0.0.1.

    No Kubernetes API server can run here (see the module documentation); the real
    ``kubectl`` binary talks to this one over HTTP: version, discovery (``/api``,
    ``/apis``, ``/api/v1``), and ConfigMaps of a namespace (listed, with a label
    selector ``key`` or ``key=value``, or got by name). :meth:`kubeconfig` writes a
    kubeconfig that points at it. ``requests`` holds the paths asked for.
    """

    def __init__(self, configmaps: list[dict]) -> None:
        self.configmaps = configmaps
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, code: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self, what: str) -> None:
                self._send(404, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                 "message": f"{what} not found", "reason": "NotFound", "code": 404})

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                from urllib.parse import parse_qs, urlparse

                url = urlparse(self.path)
                outer.requests.append(self.path)
                path, query = url.path, parse_qs(url.query)
                if path == "/version":
                    return self._send(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0"})
                if path == "/api":
                    return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
                if path == "/apis":
                    return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
                if path == "/api/v1":
                    return self._send(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "configmaps", "singularName": "configmap", "namespaced": True, "kind": "ConfigMap",
                         "verbs": ["get", "list"], "shortNames": ["cm"]}]})
                parts = path.strip("/").split("/")
                if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (5, 6) and parts[4] == "configmaps":
                    namespace = parts[3]
                    here = [m for m in outer.configmaps if m["metadata"].get("namespace") == namespace]
                    if len(parts) == 6:
                        named = [m for m in here if m["metadata"]["name"] == parts[5]]
                        return self._send(200, named[0]) if named else self._not_found(f'configmaps "{parts[5]}"')
                    for selector in query.get("labelSelector", []):
                        key, _, value = selector.partition("=")
                        here = [m for m in here if key in (m["metadata"].get("labels") or {})
                                and (not value or m["metadata"]["labels"][key] == value)]
                    return self._send(200, {"kind": "ConfigMapList", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": "1"}, "items": here})
                return self._not_found(path)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="kube-api-stand-in", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: str, context: str = "stand-in") -> str:
        """Write a kubeconfig whose current context is *context*, pointing here."""
        with open(path, "w") as f:
            json.dump({
                "apiVersion": "v1", "kind": "Config", "current-context": context,
                "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
                "users": [{"name": "stand-in", "user": {}}],
                "contexts": [{"name": context, "context": {"cluster": "stand-in", "user": "stand-in"}}],
            }, f)
        return path

    def __enter__(self) -> "KubeAPIStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
