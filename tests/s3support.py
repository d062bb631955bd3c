"""A real S3 server on 127.0.0.1 for the S3 tests: moto's S3 (and MinIO where installed).

:class:`MotoS3` serves moto's S3 HTTP API from this process with werkzeug, on a free
port of 127.0.0.1. Unlike ``moto.server.ThreadedMotoServer``, :meth:`MotoS3.stop`
really stops it: the listening socket is closed and every open connection is cut, so
clients get "connection refused" or "connection reset", as when a server goes down.
moto keeps its buckets in this process, so :meth:`MotoS3.start` on the same port brings
back the same server with everything it stored, as a restarted MinIO would from disk.

It can also inject faults (:attr:`MotoS3.faults`): HTTP 500/503, ``SlowDown``,
``AccessDenied``, reset connections and response bodies cut off midway.

:class:`MinioS3` runs a ``minio`` binary found on PATH (none is installed here), with
its data in a temporary folder, stopped by PID; :class:`MotoProcess` runs
``moto_server`` in a process of its own, for tests that measure this process's memory.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any, Callable

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

#: distinctive credentials, so a test can look for them where they must not be
KEY = "FFTESTKEYID0123456789"
SECRET = "ffTestSecret/with+chars-0123456789abcdefXYZ"

logging.getLogger("werkzeug").setLevel(logging.CRITICAL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"S3 test server did not listen on 127.0.0.1:{port} within {timeout} s")


class Fault:
    def __init__(self, kind: str, times: int, when: Callable[[dict], bool]) -> None:
        self.kind, self.times, self.when, self.hits = kind, times, when, 0


class Faults:
    """Faults to inject into the requests that match, each up to *times* times (-1: always)."""

    _ERRORS = {
        "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
        "503": ("503 Service Unavailable", "ServiceUnavailable", "Please reduce your request rate."),
        "slowdown": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
        "403": ("403 Forbidden", "AccessDenied", "Access Denied"),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Fault] = []
        self.requests = 0
        #: (method, path, query) of the latest requests
        self.seen: collections.deque = collections.deque(maxlen=10_000)

    def add(self, kind: str, times: int = 1, when: Callable[[dict], bool] | None = None) -> Fault:
        """*kind*: "500", "503", "slowdown", "403", "reset" or "cut" (body cut off)."""
        assert kind in self._ERRORS or kind in ("reset", "cut"), kind
        rule = Fault(kind, times, when or (lambda environ: True))
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, environ: dict) -> Fault | None:
        with self._lock:
            self.requests += 1
            self.seen.append((environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
            for rule in self._rules:
                if rule.times != 0 and rule.when(environ):
                    rule.times -= 1 if rule.times > 0 else 0
                    rule.hits += 1
                    return rule
        return None


def is_op(method: str, query: str = "", key_part: str = "") -> Callable[[dict], bool]:
    """A request filter: HTTP method, a query-string part ("uploads", "partNumber=2"), a path part."""

    def when(environ: dict) -> bool:
        return (
            environ.get("REQUEST_METHOD") == method
            and query in environ.get("QUERY_STRING", "")
            and key_part in environ.get("PATH_INFO", "")
        )

    return when


def _abort(environ: dict) -> None:
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            # no lingering (a reset when the handler closes it), and cut it now: werkzeug
            # still holds file objects on it, so close() alone would wait for them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class MotoS3:
    """moto's S3 on 127.0.0.1:<port>, stoppable and restartable on the same port."""

    kind = "moto"

    def __init__(self, port: int | None = None) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.port = port or free_port()
        self.faults = Faults()
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the WSGI app, with faults --------------------------------------------------------------
    def _app(self, environ: dict, start_response: Callable) -> Any:
        rule = self.faults.take(environ)
        if rule is None:
            return self._moto(environ, start_response)
        body_in = environ.get("wsgi.input")
        if rule.kind == "reset":
            _abort(environ)
            raise ConnectionResetError("fault injected: connection reset")
        if rule.kind == "cut":
            return self._cut(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        if body_in is not None and (length.isdigit() or environ.get("wsgi.input_terminated")):
            try:  # read the request body, so the connection stays usable
                body_in.read(int(length)) if length.isdigit() else body_in.read()
            except Exception:
                pass
        status, code, message = Faults._ERRORS[rule.kind]
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
        ).encode()
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(xml)))])
        return [xml]

    def _cut(self, environ: dict, start_response: Callable) -> Any:
        """moto's real response, with its body cut off after half of it."""
        captured: dict = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self._moto(environ, capture))
        start_response(captured["status"], captured["headers"])

        def chunks() -> Any:
            yield body[: len(body) // 2]
            _abort(environ)
            raise ConnectionResetError("fault injected: body cut off")

        return chunks()

    # -- start, stop ----------------------------------------------------------------------------
    def start(self) -> "MotoS3":
        from werkzeug.serving import ThreadedWSGIServer

        from moto.moto_server.werkzeug_app import MotoRequestHandler

        connections: set = set()
        lock = threading.Lock()

        class Handler(MotoRequestHandler):
            def setup(self) -> None:
                super().setup()
                with lock:
                    connections.add(self.connection)

            def finish(self) -> None:
                with lock:
                    connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log(self, *args: Any) -> None:  # quiet: no request lines on stderr
                pass

            def log_request(self, *args: Any) -> None:
                pass

            def connection_dropped(self, *args: Any) -> None:
                pass

        class Server(ThreadedWSGIServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a connection the test cut on purpose

        deadline = time.monotonic() + 30
        while True:
            try:
                server = Server("127.0.0.1", self.port, self._app, handler=Handler)
                break
            except OSError:  # the port of a stopped server may be in TIME_WAIT for a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._server = server
        self._connections, self._conn_lock = connections, lock
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        _wait_listening(self.port)
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._conn_lock:
            conns = list(self._connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        assert self._thread is not None
        self._thread.join(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- helpers ----------------------------------------------------------------------------------
    def s3fs_options(self, **extra: Any) -> dict:
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET, **extra}

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"ff-{uuid.uuid4().hex[:12]}"
        self.raw_fs().mkdir(name)
        return name

    def raw_fs(self) -> Any:
        """A plain s3fs file system on this server, to look at what is stored."""
        import s3fs

        fs = getattr(self, "_raw_fs", None)
        if fs is None:
            fs = self._raw_fs = s3fs.S3FileSystem(
                skip_instance_cache=True, use_listings_cache=False, **self.s3fs_options()
            )
        return fs


class MinioS3(MotoS3):
    """A MinIO server (``minio`` on PATH), data in a temporary folder; stopped by PID."""

    kind = "minio"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.faults = Faults()  # MinIO cannot inject faults: fault tests use moto
        self._data = tempfile.mkdtemp(prefix="functionfuse-minio-")
        self._proc: subprocess.Popen | None = None

    def start(self) -> "MinioS3":
        env = dict(os.environ, MINIO_ROOT_USER=KEY, MINIO_ROOT_PASSWORD=SECRET, MINIO_BROWSER="off")
        self._proc = subprocess.Popen(
            [shutil.which("minio") or "minio", "server", self._data, "--address", f"127.0.0.1:{self.port}",
             "--console-address", f"127.0.0.1:{free_port()}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.port)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._data, ignore_errors=True)


class MotoProcess(MotoS3):
    """``moto_server`` in a process of its own (stopped by PID): what it stores does not
    count in this process's memory, for tests that measure the client's memory."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.faults = Faults()  # no fault injection in another process
        self._proc: subprocess.Popen | None = None

    def start(self) -> "MotoProcess":
        import sys

        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "moto.server"]
        self._proc = subprocess.Popen(
            cmd + ["-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_listening(self.port)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_kinds() -> list[str]:
    """moto always; MinIO too where a ``minio`` binary is installed."""
    return ["moto"] + (["minio"] if shutil.which("minio") else [])


def start_server(kind: str = "moto") -> MotoS3:
    return (MinioS3() if kind == "minio" else MotoS3()).start()
