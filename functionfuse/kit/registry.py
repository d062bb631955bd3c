"""A real image registry on 127.0.0.1: Debian's ``docker-registry`` (distribution 2.8).

Debian's shipped configuration listens on every interface; :class:`LocalRegistry`
writes its own, bound to ``127.0.0.1`` on a free port, with its storage in a folder of
its own, and starts and stops exactly the process it started (by PID). The Docker daemon
treats 127.0.0.0/8 as an insecure registry, so pushes need no TLS. With ``users``, the
registry asks for HTTP basic credentials (an htpasswd file of bcrypt hashes).

    with LocalRegistry() as registry:
        push_images(["functionfuse:0.1.0-py311"], registry.address)   # 127.0.0.1:PORT
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from typing import Any, Mapping

from ..errors import ConfigurationError, RegistryError

__all__ = ["LocalRegistry", "RegistryError", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on *host* now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bcrypt(password: str) -> str:
    """A bcrypt hash for htpasswd, from the C library's crypt (libxcrypt supports $2b$)."""
    try:
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt is deprecated in 3.11, gone in 3.13
        try:
            import crypt
        except ImportError as exc:  # pragma: no cover - Python >= 3.13 without bcrypt
            raise ConfigurationError("Registry users need bcrypt hashes: pip install bcrypt.") from exc
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not hashed or not hashed.startswith("$2"):
        raise ConfigurationError("This C library cannot make bcrypt hashes: pip install bcrypt.")
    return hashed


class LocalRegistry:
    """A ``docker-registry`` process on 127.0.0.1.

    :param port: the port (0: a free one).
    :param root: folder for its configuration, storage and log (default: a new
        temporary folder, removed by :meth:`stop`).
    :param users: ``{username: password}`` for basic authentication (None: open).
    :param binary: the registry program.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        root: str | None = None,
        users: Mapping[str, str] | None = None,
        binary: str = "docker-registry",
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.users = dict(users or {})
        self.binary = binary
        self._own_root = root is None
        self.root = root
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: the registry part of an image reference."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> str:
        assert self.root is not None
        return os.path.join(self.root, "registry.log")

    def _config(self) -> str:
        assert self.root is not None
        storage = os.path.join(self.root, "storage")
        os.makedirs(storage, exist_ok=True)
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {json.dumps(storage)}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}:{self.port}",
            "  headers:",
            "    X-Content-Type-Options: [nosniff]",
        ]
        if self.users:
            htpasswd = os.path.join(self.root, "htpasswd")
            with open(htpasswd, "w") as f:
                for user, password in self.users.items():
                    if ":" in user:
                        raise ConfigurationError(f"Registry user name {user!r} may not contain ':'.")
                    f.write(f"{user}:{_bcrypt(password)}\n")
            lines += ["auth:", "  htpasswd:", "    realm: functionfuse-test", f"    path: {json.dumps(htpasswd)}"]
        path = os.path.join(self.root, "config.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30.0) -> "LocalRegistry":
        if self.process is not None:
            return self
        if shutil.which(self.binary) is None:
            raise RegistryError(
                f"{self.binary!r} is not installed: on Debian, apt-get install docker-registry "
                "(scripts/setup-docker.sh does it)."
            )
        if self.root is None:
            self.root = tempfile.mkdtemp(prefix="functionfuse-registry-")
        if not self.port:
            self.port = free_port(self.host)
        config = self._config()
        logf = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [self.binary, "serve", config], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
            )
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RegistryError(f"docker-registry exited with {self.process.returncode}: {self._log_tail()}")
            try:
                self.request("/v2/")
                return self
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RegistryError(f"docker-registry did not answer on {self.address} within {timeout:.0f} s")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the process this object started (by its PID), then remove a temporary root."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "LocalRegistry":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the registry HTTP API (v2), to check what was pushed ------------------------------
    def request(self, path: str, *, auth: tuple[str, str] | None = None, accept: str | None = None) -> Any:
        req = urllib.request.Request(f"http://{self.address}{path}")
        if auth is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        if accept:
            req.add_header("Accept", accept)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy: loopback only
        with opener.open(req, timeout=10) as resp:
            body = resp.read()
            return json.loads(body) if body else {}

    def tags(self, repository: str, auth: tuple[str, str] | None = None) -> list[str]:
        """Tags of *repository* stored in the registry."""
        return sorted(self.request(f"/v2/{repository}/tags/list", auth=auth).get("tags") or [])

    def manifest(self, repository: str, tag: str, auth: tuple[str, str] | None = None) -> dict:
        """The image manifest (schema 2) of ``repository:tag``."""
        return self.request(
            f"/v2/{repository}/manifests/{tag}",
            auth=auth,
            accept="application/vnd.docker.distribution.manifest.v2+json",
        )
