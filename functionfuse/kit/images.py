"""Build and push the functionfuse images with the Docker SDK.

Four recipes, all built with the repository as the build context (``.dockerignore``
keeps it to the package, its metadata and the pinned requirements):

======== =========================== ============================ ===========================
name     Dockerfile                  tag                          FROM (default)
======== =========================== ============================ ===========================
base     ``Dockerfile``              ``<version>-py3XX``          ``python:3.11-slim``
ray      ``images/ray/Dockerfile``   ``<version>-py3XX-ray``      the base image just built
prefect  ``images/prefect/...``      ``<version>-py3XX-prefect``  the base image just built
kfp      ``images/kfp/Dockerfile``   ``<version>-py3XX-kfp``      the base image just built
======== =========================== ============================ ===========================

``py3XX`` is read from the built image itself (``python -c``), so a tag never lies about
the interpreter inside. Builds use the classic builder with ``network_mode="host"`` (no
BuildKit needed). With a *wheelhouse*, Python packages are downloaded on this machine
first (``pip download``, pinned by ``requirements/*.txt`` when present) and served to the
build from 127.0.0.1, so a build needs no index access and installs exactly the
versions the host tests with.

Every image carries the OCI labels of the release it belongs to (:func:`oci_labels`):
``org.opencontainers.image.version`` (the package version), ``.source`` (the project
URL in pyproject.toml), ``.revision`` (the git commit) and ``.created`` (the commit time,
or ``$SOURCE_DATE_EPOCH``): the same source gives the same labels, so a rebuild of an
unchanged checkout reuses the layer cache and yields the same image.

>>> image_tag("0.1.0", "py311", "ray")
'0.1.0-py311-ray'
>>> image_tag("0.1.0", "py311")
'0.1.0-py311'
"""

from __future__ import annotations

import gc
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from .._version import __version__
from ..errors import ConfigurationError, DockerUnavailableError, ImageBuildError, ImagePushError, missing_dependency
from .wheelhouse import (
    extra_requirements,
    prepare_wheelhouse,
    serve_directory,
    wheelhouse_buildargs,
    wheelhouse_digest,
    wheelhouse_ready,
)

__all__ = [
    "ImageRecipe",
    "RECIPES",
    "BuiltImage",
    "PushedImage",
    "ImageBuildError",
    "ImagePushError",
    "DockerUnavailableError",
    "image_tag",
    "docker_client",
    "build_images",
    "push_images",
    "local_images",
    "prepare_wheelhouse",
    "wheelhouse_buildargs",
    "wheelhouse_ready",
    "serve_directory",
    "wheelhouse_digest",
    "extra_requirements",
    "stream_build",
    "project_root",
    "oci_labels",
    "REGISTRY_FORM",
    "registry_repository",
    "source_date_epoch",
    "git_revision",
]

log = logging.getLogger("functionfuse.kit")

DEFAULT_BASE_IMAGE = "python:3.11-slim"
DEFAULT_REPOSITORY = "functionfuse"
LABEL_IMAGE = "io.functionfuse.image"
LABEL_VERSION = "io.functionfuse.version"
LABEL_PYTHON = "io.functionfuse.python"
OCI = "org.opencontainers.image."


@dataclass(frozen=True)
class ImageRecipe:
    """How one image is built: its Dockerfile (relative to the project root), the
    functionfuse extras it installs, and an optional file of pinned engine requirements."""

    name: str
    dockerfile: str
    extras: tuple[str, ...]
    requirements: str | None = None
    on_base: bool = True  # FROM the functionfuse base image unless told otherwise

    @property
    def suffix(self) -> str:
        return "" if self.name == "base" else f"-{self.name}"


RECIPES: Mapping[str, ImageRecipe] = {
    "base": ImageRecipe("base", "Dockerfile", ("s3", "dask"), on_base=False),
    "ray": ImageRecipe("ray", "images/ray/Dockerfile", ("ray", "s3", "dask"), "images/ray/requirements.txt"),
    "prefect": ImageRecipe("prefect", "images/prefect/Dockerfile", ("prefect", "s3"), "images/prefect/requirements.txt"),
    "kfp": ImageRecipe("kfp", "images/kfp/Dockerfile", ("s3", "dask"), "images/kfp/requirements.txt"),
}


@dataclass
class BuiltImage:
    name: str
    tag: str  # repository:tag
    image_id: str
    size: int  # bytes, uncompressed (what `docker images` shows)
    seconds: float
    python: str
    base_image: str

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "tag", "image_id", "size", "seconds", "python", "base_image")}


@dataclass
class PushedImage:
    source: str
    reference: str  # registry/repository:tag
    digest: str | None
    seconds: float

    def as_dict(self) -> dict:
        return {"source": self.source, "reference": self.reference, "digest": self.digest, "seconds": self.seconds}


def image_tag(version: str, python: str, engine: str | None = None) -> str:
    """The tag of an image: ``<version>-py3XX[-engine]`` (``engine`` None or "base": no suffix)."""
    if not re.fullmatch(r"py\d{2,3}", python):
        raise ConfigurationError(f"Python tag {python!r} must look like 'py311'.")
    return f"{version}-{python}" + ("" if engine in (None, "base") else f"-{engine}")


def project_root() -> str:
    """The functionfuse source tree that holds the Dockerfiles (this checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(root, "Dockerfile")) or not os.path.isfile(os.path.join(root, "pyproject.toml")):
        raise ConfigurationError(
            f"No functionfuse source tree with a Dockerfile at {root!r}: images are built from a checkout "
            "of functionfuse (git clone, then pip install -e '.[kit]'); pass --project to name one."
        )
    return root


# -- labels ------------------------------------------------------------------------------------------
def _git(project: str, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", project, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def source_date_epoch(project: str) -> int:
    """When the source was last changed, in seconds since the epoch: ``$SOURCE_DATE_EPOCH``
    if set, else the time of the git commit checked out, else the mtime of ``_version.py``."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env:
        if not env.isdigit():
            raise ConfigurationError(f"SOURCE_DATE_EPOCH={env!r} must be a whole number of seconds since 1970-01-01 UTC.")
        return int(env)
    committed = _git(project, "log", "-1", "--format=%ct")
    if committed and committed.isdigit():
        return int(committed)
    return int(os.path.getmtime(os.path.join(project, "functionfuse", "_version.py")))


def git_revision(project: str) -> str:
    """The commit checked out in *project* (``-dirty`` when tracked files differ from it);
    ``$FUNCTIONFUSE_REVISION`` if set; ``unknown`` outside git."""
    env = os.environ.get("FUNCTIONFUSE_REVISION", "").strip()
    if env:
        return env
    commit = _git(project, "rev-parse", "HEAD")
    if not commit:
        return "unknown"
    changed = _git(project, "status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if changed else commit


def _source_url(project: str) -> str:
    if sys.version_info >= (3, 11):
        import tomllib

        try:
            with open(os.path.join(project, "pyproject.toml"), "rb") as f:
                urls = tomllib.load(f)["project"].get("urls", {})
            return str(urls.get("Source") or urls.get("Homepage") or "")
        except (OSError, KeyError, ValueError):
            return ""
    return ""  # pragma: no cover - Python 3.10: no tomllib


def oci_labels(project: str, version: str = __version__) -> dict[str, str]:
    """The ``org.opencontainers.image.*`` labels of an image built from *project*."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(source_date_epoch(project)))
    labels = {OCI + "version": version, OCI + "revision": git_revision(project), OCI + "created": created}
    source = _source_url(project)
    if source:
        labels[OCI + "source"] = source
    return labels


# -- Docker ----------------------------------------------------------------------------------------
def docker_client(timeout: int = 600) -> Any:
    """A Docker SDK client for the daemon of the environment (``DOCKER_HOST`` or the local
    socket); :class:`DockerUnavailableError`, naming the fix, when no daemon answers.

    The client of a refused connection is closed here, not left to the garbage collector.
    """
    try:
        import docker
    except ImportError as exc:
        raise missing_dependency("docker", "kit", exc) from exc
    client: Any = None
    error = None
    # the SDK leaves the socket of a refused connection to the garbage collector, held by
    # the exception's traceback: keep only the message, and collect it here, quietly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except docker.errors.DockerException as exc:
            error = str(exc)
        if error is not None:
            if client is not None:
                client.close()
            client = None
            gc.collect()
    if error is not None:
        raise DockerUnavailableError(
            f"No Docker daemon answers ({error}). Start one (on Debian as root, scripts/setup-docker.sh "
            "installs and starts it) or set DOCKER_HOST."
        )
    return client


def stream_build(stream: Iterator[dict], tag: str, on_log: Callable[[str], None] | None) -> str | None:
    """Follow the decoded output *stream* of a build of *tag*: each log line to the debug
    log and to *on_log*; returns the image ID the daemon reports. A build error raises
    :class:`ImageBuildError` ending with the last lines of the build log."""
    tail: list[str] = []
    image_id = None
    for chunk in stream:
        if "error" in chunk or "errorDetail" in chunk:
            message = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "")
            log_tail = "".join(tail[-25:]).rstrip()
            raise ImageBuildError(f"Building {tag!r} failed: {message.strip()}\n--- last build output ---\n{log_tail}")
        text = chunk.get("stream")
        if text:
            tail.append(text)
            if len(tail) > 200:
                del tail[:100]
            for line in text.rstrip("\n").splitlines():
                log.debug("%s | %s", tag, line)
                if on_log is not None:
                    on_log(line)
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = aux["ID"]
    return image_id


def _python_tag(client: Any, image: str) -> str:
    """``py3XX`` of the interpreter on the image's PATH, read by running it (no network)."""
    code = "import sys; print('py%d%d' % sys.version_info[:2])"
    try:
        out = client.containers.run(image, ["python3", "-c", code], remove=True, network_mode="none", entrypoint=[])
    except Exception as exc:
        raise ImageBuildError(f"Cannot run python3 in image {image!r} to read its version: {exc}") from exc
    text = out.decode().strip() if isinstance(out, bytes) else str(out).strip()
    if not re.fullmatch(r"py\d{2,3}", text):
        raise ImageBuildError(f"python3 in image {image!r} printed {text!r}, not a version.")
    return text


def build_image(
    client: Any,
    recipe: ImageRecipe,
    *,
    repository: str = DEFAULT_REPOSITORY,
    base_image: str,
    project: str,
    version: str = __version__,
    buildargs: Mapping[str, str] | None = None,
    network_mode: str = "host",
    nocache: bool = False,
    on_log: Callable[[str], None] | None = None,
    labels: Mapping[str, str] | None = None,
) -> BuiltImage:
    """Build one image and tag it ``repository:<version>-py3XX[-engine]``.

    :param labels: labels added to the image (default: :func:`oci_labels` of *project*).
    """
    provisional = f"{repository}:{version}-building{recipe.suffix}"
    args = {"BASE_IMAGE": base_image, **(buildargs or {})}
    t0 = time.perf_counter()
    log.info("building %s image from %s on %s", recipe.name, recipe.dockerfile, base_image)
    stream = client.api.build(
        path=project,
        dockerfile=recipe.dockerfile,
        tag=provisional,
        buildargs=args,
        network_mode=network_mode,
        rm=True,
        forcerm=True,
        pull=False,
        nocache=nocache,
        decode=True,
        labels={**(oci_labels(project, version) if labels is None else labels), LABEL_IMAGE: recipe.name, LABEL_VERSION: version},
    )
    stream_build(stream, provisional, on_log)
    seconds = time.perf_counter() - t0
    python = _python_tag(client, provisional)
    tag = image_tag(version, python, recipe.name)
    image = client.images.get(provisional)
    image.tag(repository, tag)
    client.api.remove_image(provisional, noprune=True)
    image.reload()
    built = BuiltImage(recipe.name, f"{repository}:{tag}", image.id, int(image.attrs.get("Size", 0)), seconds, python, base_image)
    log.info("built %s (%.1f MB) in %.1f s", built.tag, built.size / 1e6, seconds)
    return built


def build_images(
    names: Sequence[str] = ("base", "ray", "prefect", "kfp"),
    *,
    repository: str = DEFAULT_REPOSITORY,
    base_image: str = DEFAULT_BASE_IMAGE,
    engine_base_images: Mapping[str, str] | None = None,
    project: str | None = None,
    wheelhouse: str | None = None,
    network_mode: str = "host",
    nocache: bool = False,
    client: Any = None,
    on_log: Callable[[str], None] | None = None,
) -> list[BuiltImage]:
    """Build the images *names* (the base first when an engine image is built on it).

    :param base_image: FROM of the base image (``python:3.11-slim`` by default).
    :param engine_base_images: FROM of engine images, e.g. ``{"ray": "rayproject/ray:2.60.0-py311-cpu"}``;
        an engine image not named here is built on the base image.
    :param wheelhouse: a folder for wheels downloaded on this machine (``pip download``)
        and served to the builds on 127.0.0.1; None: builds install from the index.
    """
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ConfigurationError(f"Unknown image(s) {unknown!r}; the images are {', '.join(RECIPES)} (or 'all').")
    engine_base_images = dict(engine_base_images or {})
    bad = sorted(set(engine_base_images) - (set(RECIPES) - {"base"}))
    if bad:
        raise ConfigurationError(f"Engine base images given for {bad!r}; engines are ray, prefect and kfp.")
    project = project or project_root()
    client = client or docker_client()
    ordered = [n for n in RECIPES if n in names]
    needs_base = any(RECIPES[n].on_base and n not in engine_base_images for n in ordered)
    if needs_base and "base" not in ordered:
        ordered.insert(0, "base")  # engine images are built FROM it
    built: list[BuiltImage] = []
    with wheelhouse_buildargs(wheelhouse, [RECIPES[n] for n in ordered], project=project) as buildargs:
        base_tag: str | None = None
        labels = oci_labels(project)
        for name in ordered:
            recipe = RECIPES[name]
            frm = base_image if name == "base" else (engine_base_images.get(name) or base_tag)
            assert frm is not None
            image = build_image(
                client,
                recipe,
                repository=repository,
                base_image=frm,
                project=project,
                buildargs=buildargs,
                network_mode=network_mode,
                nocache=nocache,
                on_log=on_log,
                labels=labels,
            )
            if name == "base":
                base_tag = image.tag
            if name in names:
                built.append(image)
    return built


# -- pushing ---------------------------------------------------------------------------------------
def local_images(
    client: Any, names: Sequence[str] | None = None, version: str = __version__, repository: str = DEFAULT_REPOSITORY
) -> list[str]:
    """Tags (``repository:tag``) of the functionfuse images of *version* built here
    (not the copies tagged for a registry)."""
    found: list[str] = []
    for image in client.images.list(filters={"label": f"{LABEL_VERSION}={version}"}):
        kind = image.labels.get(LABEL_IMAGE)
        if names is not None and kind not in names:
            continue
        found.extend(t for t in image.tags if re.fullmatch(rf"{re.escape(repository)}:{re.escape(version)}-py\d+(-\w+)?", t))
    return sorted(set(found))


#: what a registry argument looks like: ``host[:port][/namespace]``
REGISTRY_FORM = re.compile(r"[A-Za-z0-9.\-]+(:\d+)?(/[a-z0-9._\-/]+)?")


def registry_repository(registry: str, repository: str) -> str:
    """Where :func:`push_images` puts the local *repository* on *registry*: the last
    part of its name under the registry (``functionfuse`` -> ``REGISTRY/functionfuse``)."""
    return f"{registry}/{repository.rsplit('/', 1)[-1]}"


def push_images(
    tags: Sequence[str],
    registry: str,
    *,
    username: str | None = None,
    password: str | None = None,
    client: Any = None,
) -> list[PushedImage]:
    """Tag each local image ``registry/repository:tag`` and push it.

    Credentials are passed to the daemon with each push request and kept in memory only:
    nothing is written to ``~/.docker/config.json``.
    """
    if not REGISTRY_FORM.fullmatch(registry):
        raise ConfigurationError(f"Registry {registry!r} must look like 'host[:port][/namespace]', e.g. 127.0.0.1:5000.")
    if (username is None) != (password is None):
        raise ConfigurationError("Give both a username and a password for the registry, or neither.")
    client = client or docker_client()
    auth = {"username": username, "password": password} if username is not None else None
    pushed: list[PushedImage] = []
    for source in tags:
        repo, sep, tag = source.rpartition(":")
        if not sep or "/" in tag:
            raise ConfigurationError(f"Image {source!r} has no tag; expected repository:tag.")
        target_repo = registry_repository(registry, repo)
        t0 = time.perf_counter()
        if not client.api.tag(source, target_repo, tag):
            raise ImagePushError(f"Cannot tag {source!r} as {target_repo}:{tag}.")
        digest = None
        for chunk in client.api.push(target_repo, tag=tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk or "errorDetail" in chunk:
                message = chunk.get("error") or chunk.get("errorDetail", {}).get("message", "")
                raise ImagePushError(f"Pushing {target_repo}:{tag} failed: {message}")
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
        result = PushedImage(source, f"{target_repo}:{tag}", digest, time.perf_counter() - t0)
        log.info("pushed %s (%s) in %.1f s", result.reference, digest, result.seconds)
        pushed.append(result)
    return pushed
