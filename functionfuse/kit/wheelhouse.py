"""An offline wheelhouse for image builds: Python packages downloaded on this machine,
served to ``docker build`` on 127.0.0.1.

One wheelhouse for every image of the kit (the release images of
:mod:`functionfuse.kit.images` and the step images of :mod:`functionfuse.kit.stepimage`):
:func:`prepare_wheelhouse` fills a folder with a wheel of every package an image
installs (``pip wheel``, pinned by the project's ``requirements/*.txt`` when present),
and :func:`wheelhouse_buildargs` serves it while a build runs and gives the build
arguments (``PIP_NO_INDEX``, ``PIP_FIND_LINKS``, ``PIP_CONSTRAINT``,
``FUNCTIONFUSE_WHEELS``) that the Dockerfiles pass to pip. A build then needs no index
access and installs exactly the versions the host tests with.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterator, Protocol, Sequence

from ..errors import ConfigurationError, ImageBuildError

__all__ = [
    "WheelRecipe",
    "extra_requirements",
    "prepare_wheelhouse",
    "wheelhouse_digest",
    "wheelhouse_ready",
    "wheelhouse_buildargs",
    "serve_directory",
]

log = logging.getLogger("functionfuse.kit")


class WheelRecipe(Protocol):
    """What the wheelhouse needs of an image recipe (:class:`functionfuse.kit.images.ImageRecipe`)."""

    @property
    def name(self) -> str: ...

    @property
    def extras(self) -> tuple[str, ...]: ...

    @property
    def requirements(self) -> str | None: ...


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)$")


def _pyproject_requirements(project: str, extras: Sequence[str]) -> list[str] | None:
    """The requirements in *project*'s ``pyproject.toml`` (None on Python 3.10: no tomllib)."""
    if sys.version_info >= (3, 11):
        import tomllib

        with open(os.path.join(project, "pyproject.toml"), "rb") as f:
            project_table = tomllib.load(f)["project"]
        reqs = list(project_table.get("dependencies", []))
        optional = project_table.get("optional-dependencies", {})
        for extra in extras:
            reqs += [r for r in optional.get(extra, []) if not r.startswith("functionfuse")]
        return reqs
    return None  # pragma: no cover - Python 3.10


def extra_requirements(project: str | None, extras: Sequence[str]) -> list[str]:
    """The requirements of functionfuse's core and *extras*: from the ``pyproject.toml``
    of the source tree *project*, or, with None (functionfuse installed from a wheel),
    from the installed package's metadata."""
    found = _pyproject_requirements(project, extras) if project is not None else None
    if found is not None:
        return found
    from importlib.metadata import requires

    reqs = []
    for r in requires("functionfuse") or []:
        spec, _, marker = r.partition(";")
        m = re.search(r'extra\s*==\s*"([^"]+)"', marker)
        if not marker.strip() or (m and m.group(1) in extras):
            reqs.append(spec.strip())
    return reqs


def _constraints(project: str) -> list[str]:
    """Pins from the project's requirements/*.txt, as pip constraints (no extras allowed there)."""
    folder = os.path.join(project, "requirements")
    pins: dict[str, str] = {}
    if not os.path.isdir(folder):
        return []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".txt"):
            continue
        with open(os.path.join(folder, name)) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                m = _REQ_NAME.match(line)
                if not line or line.startswith("-") or not m or "==" not in m.group(3):
                    continue
                pins.setdefault(m.group(1).lower().replace("_", "-"), f"{m.group(1)}{m.group(3)}")
    return sorted(pins.values())


#: Backports that packages require only on older Pythons, e.g. async-timeout for
#: python_full_version < "3.11.3": pip evaluates such markers for this machine's Python,
#: which may be newer than the image's (Debian bookworm has 3.11.2), so they are always added.
_BACKPORTS = ("async-timeout", "exceptiongroup", "tomli", "typing-extensions", "importlib-metadata")


def prepare_wheelhouse(
    wheelhouse: str,
    recipes: Sequence[WheelRecipe],
    *,
    project: str,
    python: str | None = None,
    requirements: Sequence[str] = (),
) -> None:
    """Put a wheel of every package the *recipes* install into *wheelhouse* (``pip wheel``),
    and of the *requirements* (requirement strings such as ``kfp==2.17.0``).

    Runs with this machine's pip configuration (index, certificates); wheels already
    there are reused, and a package published only as an sdist (kfp-server-api) is built
    into a wheel here, so images never build anything. The build tools of the
    functionfuse source install (setuptools, wheel) are included.
    """
    os.makedirs(wheelhouse, exist_ok=True)
    extras = sorted({e for r in recipes for e in r.extras})
    reqs = ["setuptools>=68", "wheel", "pip"] + list(_BACKPORTS) + extra_requirements(project, extras)
    reqs += list(requirements)
    for r in recipes:
        if r.requirements:
            with open(os.path.join(project, r.requirements)) as f:
                reqs += [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]
    with tempfile.TemporaryDirectory() as tmp:
        req_file = os.path.join(tmp, "requirements.txt")
        with open(req_file, "w") as f:
            f.write("\n".join(reqs) + "\n")
        cmd = [python or sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--prefer-binary",
               "--wheel-dir", wheelhouse, "--find-links", wheelhouse, "-r", req_file]
        # the pins, also served to the builds (PIP_CONSTRAINT), so an image installs the
        # pinned version even when the wheelhouse holds several
        con_file = os.path.join(wheelhouse, "constraints.txt")
        with open(con_file, "w") as f:
            f.write("".join(f"{c}\n" for c in _constraints(project)))
        cmd += ["-c", con_file]
        log.info("collecting wheels for %s into %s", ", ".join(r.name for r in recipes), wheelhouse)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageBuildError(
                f"pip wheel into the wheelhouse {wheelhouse!r} failed (exit {proc.returncode}):\n"
                + (proc.stderr or proc.stdout)[-4000:]
            )
        log.info("wheelhouse ready in %.1f s", time.perf_counter() - t0)


def wheelhouse_digest(wheelhouse: str) -> str:
    """A digest of the wheel files and pins in *wheelhouse* (names and sizes)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(wheelhouse)):
        if name.endswith((".whl", ".txt")):
            h.update(f"{name}\0{os.path.getsize(os.path.join(wheelhouse, name))}\n".encode())
    if os.path.isfile(os.path.join(wheelhouse, "constraints.txt")):
        with open(os.path.join(wheelhouse, "constraints.txt"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _stable_port(path: str, salt: str = "") -> int:
    """A port in 20000-29999 derived from *path* (and *salt*): the same for every build from it."""
    key = (salt + "\0" if salt else "") + os.path.abspath(path)
    return 20000 + int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10000


_STAMP = ".functionfuse-wheels-"


def _stamp_path(wheelhouse: str, requirements: Sequence[str]) -> str:
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    return os.path.join(wheelhouse, _STAMP + key)


def wheelhouse_ready(wheelhouse: str, requirements: Sequence[str]) -> bool:
    """Whether :func:`wheelhouse_buildargs` filled *wheelhouse* for *requirements* (its
    ``stamp``) already, so a build does not run ``pip wheel`` again."""
    return os.path.exists(_stamp_path(wheelhouse, requirements))


@contextlib.contextmanager
def wheelhouse_buildargs(
    wheelhouse: str | None,
    recipes: Sequence[WheelRecipe],
    *,
    project: str | None,
    requirements: Sequence[str] = (),
    stamp: Sequence[str] | None = None,
    salt: str = "",
) -> Iterator[dict[str, str]]:
    """Build arguments that install Python packages from *wheelhouse*, served on
    127.0.0.1 while the block runs; ``{}`` without a wheelhouse (builds use the index).

    The wheelhouse is filled first (:func:`prepare_wheelhouse` for *recipes* and
    *requirements*), unless *stamp* is given and was filled before: a list of
    requirement strings that, unchanged, means the wheels are there. The URL stays the
    same from one build to the next (a port derived from the path and *salt*) and
    ``FUNCTIONFUSE_WHEELS`` (the wheelhouse's digest) changes with its content, so
    Docker's layer cache is reused exactly when the wheels and pins are the same.
    """
    if wheelhouse is None:
        yield {}
        return
    if stamp is None or not wheelhouse_ready(wheelhouse, stamp):
        if project is None:
            raise ConfigurationError(
                f"Filling the wheelhouse {wheelhouse!r} needs the functionfuse source tree (its pyproject.toml "
                "and requirements/): install functionfuse from a checkout, or build without a wheelhouse."
            )
        prepare_wheelhouse(wheelhouse, recipes, project=project, requirements=requirements)
        if stamp is not None:
            with open(_stamp_path(wheelhouse, stamp), "w") as f:
                f.write("\n".join(stamp) + "\n")
    with serve_directory(wheelhouse, port=_stable_port(wheelhouse, salt)) as url:
        yield {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": url,
            "PIP_CONSTRAINT": url + "constraints.txt",
            "FUNCTIONFUSE_WHEELS": wheelhouse_digest(wheelhouse),
        }


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("wheelhouse: " + format, *args)


@contextlib.contextmanager
def serve_directory(path: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve *path* over HTTP on *host* while the block runs; yields its URL.

    *port* 0, or a port that is taken: a free port.
    """
    handler = functools.partial(_QuietHandler, directory=os.path.abspath(path))
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="functionfuse-wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
