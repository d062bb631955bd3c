"""Publish one functionfuse version: the sdist and wheel, the images, the Helm charts.

``functionfuse release REGISTRY`` (``make release REGISTRY=host[:port]/namespace``) runs
three steps, each of which can be run alone (``--steps``):

========= ======================================================================================
dist      ``python -m build`` into ``dist/``: ``functionfuse-<version>.tar.gz`` and the wheel
images    :func:`functionfuse.kit.images.build_images`, then a push of every image to
          ``REGISTRY/functionfuse:<version>-py3XX[-engine]``
charts    a copy of ``charts/`` whose ``global.image.registry`` is ``REGISTRY`` (every
          functionfuse image of the charts is ``<global.image.registry>/functionfuse:<tag>``),
          packaged (``helm package``) and pushed to ``oci://REGISTRY/charts/<chart>``
========= ======================================================================================

One version, from ``functionfuse/_version.py``: before anything is built,
:func:`version_mismatches` checks that every chart's ``version`` and ``appVersion``, the
umbrella's dependencies, the engine Dockerfiles' default base image and the image tags in
``manifests/`` carry it; the charts' default image tags are derived from ``appVersion``.

Nothing is pushed twice. An image is pushed only when the registry's manifest digest for
its tag differs from the one this daemon last pushed or pulled for the same image; a
chart only when the registry holds no chart of that name and version. Chart versions are
immutable: when the registry holds the version with other content, the release stops
and asks for a new version. Builds are reproducible enough for this: image labels come
from the commit (:func:`functionfuse.kit.images.oci_labels`), so an unchanged checkout
rebuilds to the same image from the layer cache.

Credentials come from ``$FUNCTIONFUSE_REGISTRY_USERNAME`` and
``$FUNCTIONFUSE_REGISTRY_PASSWORD``, or else from ``docker login`` / ``helm registry login``;
with the variables, helm reads them from a temporary file (mode 0600) removed when the
release ends.

The module is a little over 500 lines and stays one: the three steps share the version
checks, the registry credentials and the "nothing is pushed twice" bookkeeping, and
splitting them would make those shared helpers public across modules for no reader's gain.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import gzip
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

from .._version import __version__
from ..errors import ConfigurationError, ReleaseError, missing_dependency

__all__ = [
    "STEPS",
    "ReleaseError",
    "Published",
    "ReleaseReport",
    "release",
    "version_mismatches",
    "build_dist",
    "package_charts",
    "helm_binary",
    "is_loopback",
]

log = logging.getLogger("functionfuse.kit.release")

STEPS = ("dist", "images", "charts")
#: the image repository the charts' values name (under ``global.image.registry``)
DEFAULT_IMAGE_REPOSITORY = "functionfuse"
#: the registry the charts' values name (``global.image.registry``): the one releases publish to
DEFAULT_IMAGE_REGISTRY = "ghcr.io/functionfuse"
_LOOPBACK = re.compile(r"^(127(\.\d{1,3}){3}|localhost|\[::1\])(:\d+)?$")


@dataclass
class Published:
    """One artifact of a release: ``action`` is ``pushed``, ``unchanged`` or ``built``."""

    kind: str  # dist, image, chart
    name: str
    reference: str
    action: str
    digest: str | None = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "name", "reference", "action", "digest")}


@dataclass
class ReleaseReport:
    version: str
    registry: str | None
    artifacts: list[Published] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def pushed(self) -> list[Published]:
        return [a for a in self.artifacts if a.action == "pushed"]

    def as_dict(self) -> dict:
        return {
            "version": self.version,
            "registry": self.registry,
            "seconds": round(self.seconds, 1),
            "artifacts": [a.as_dict() for a in self.artifacts],
        }


# -- the version everywhere --------------------------------------------------------------------------
def _yaml() -> Any:
    try:
        import yaml
    except ImportError as exc:
        raise missing_dependency("yaml", "kit", exc) from exc
    return yaml


def version_mismatches(project: str, version: str = __version__) -> list[str]:
    """Every place in *project* that names a functionfuse version other than *version*
    (empty: they all agree). Each entry says where, what it holds, and the fix."""
    yaml = _yaml()
    found: list[str] = []

    def check(where: str, value: Any) -> None:
        if str(value) != version:
            found.append(f"{where} is {value!r}, not {version!r} (functionfuse/_version.py)")

    charts = os.path.join(project, "charts")
    for chart_yaml in sorted(glob.glob(os.path.join(charts, "*", "Chart.yaml"))):
        rel = os.path.relpath(chart_yaml, project)
        with open(chart_yaml) as f:
            meta = yaml.safe_load(f)
        check(f"{rel}: version", meta.get("version"))
        check(f"{rel}: appVersion", meta.get("appVersion"))
        for dep in meta.get("dependencies") or []:
            if str(dep.get("repository", "")).startswith("file://"):
                check(f"{rel}: dependency {dep['name']}", dep.get("version"))
        lock = os.path.join(os.path.dirname(chart_yaml), "Chart.lock")
        if os.path.isfile(lock):
            with open(lock) as f:
                for dep in yaml.safe_load(f).get("dependencies") or []:
                    if str(dep.get("repository", "")).startswith("file://"):
                        check(f"{os.path.relpath(lock, project)}: dependency {dep['name']}", dep.get("version"))
        values = os.path.join(os.path.dirname(chart_yaml), "values.yaml")
        if os.path.isfile(values):
            with open(values) as f:
                for key, block in _image_blocks(yaml.safe_load(f)):
                    tag = str(block.get("tag") or "")
                    if tag:  # "" means <appVersion>-<python>[-<engine>]
                        check(f"{os.path.relpath(values, project)}: {key}.tag version", tag.split("-py", 1)[0])
    image_ref = re.compile(r"\bfunctionfuse:(\d[^\s\"'@]*?)-py\d{2,3}\b")
    for dockerfile in [os.path.join(project, "Dockerfile")] + sorted(glob.glob(os.path.join(project, "images", "*", "Dockerfile"))):
        with open(dockerfile) as f:
            for n, line in enumerate(f, 1):
                m = re.match(r"\s*ARG\s+BASE_IMAGE=(\S+)", line)
                if m and image_ref.search(m.group(1)):
                    check(f"{os.path.relpath(dockerfile, project)}:{n}: ARG BASE_IMAGE", image_ref.search(m.group(1)).group(1))  # type: ignore[union-attr]
    for path in sorted(glob.glob(os.path.join(project, "manifests", "**", "*.y*ml"), recursive=True)):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                for m in image_ref.finditer(line):
                    check(f"{os.path.relpath(path, project)}:{n}: image", m.group(1))
    return found


# -- helpers -----------------------------------------------------------------------------------------
def helm_binary(project: str | None = None) -> str:
    """helm from the project's virtual environment (scripts/setup-helm.sh puts it there),
    next to this Python, or from PATH."""
    places = [os.path.join(project, ".venv", "bin", "helm")] if project else []
    places.append(os.path.join(os.path.dirname(sys.executable), "helm"))
    for local in places:
        if os.access(local, os.X_OK):
            return local
    found = shutil.which("helm")
    if not found:
        raise ConfigurationError("helm is not installed: run scripts/setup-helm.sh, or install helm >= 3.8 (OCI support).")
    return found


def is_loopback(registry: str) -> bool:
    """True for a registry on this machine (127.0.0.0/8, localhost): helm then uses plain HTTP."""
    return bool(_LOOPBACK.match(registry.split("/", 1)[0]))


def _check_registry(registry: str) -> str:
    registry = registry.strip().rstrip("/")
    if registry.startswith("oci://"):
        registry = registry[len("oci://") :]
    if not re.fullmatch(r"[A-Za-z0-9.\-]+(:\d+)?(/[a-z0-9._\-]+)*", registry):
        raise ConfigurationError(f"Registry {registry!r} must look like 'host[:port][/namespace]', e.g. ghcr.io/functionfuse.")
    return registry


def _credentials() -> tuple[str, str] | None:
    user = os.environ.get("FUNCTIONFUSE_REGISTRY_USERNAME")
    password = os.environ.get("FUNCTIONFUSE_REGISTRY_PASSWORD")
    if user is None and password is None:
        return None
    if not user or password is None:
        raise ConfigurationError(
            "Set both FUNCTIONFUSE_REGISTRY_USERNAME and FUNCTIONFUSE_REGISTRY_PASSWORD, or neither "
            "(then the credentials of `docker login` / `helm registry login` are used)."
        )
    return user, password


def _run(cmd: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None, what: str) -> subprocess.CompletedProcess:
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(list(cmd), cwd=cwd, env=dict(env) if env is not None else None, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ReleaseError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:3])} ...\n{(proc.stderr or proc.stdout)[-3000:]}")
    return proc


# -- dist --------------------------------------------------------------------------------------------
def build_dist(project: str, outdir: str, version: str = __version__) -> list[str]:
    """``python -m build`` (the sdist, then the wheel from it) into *outdir*, with
    ``SOURCE_DATE_EPOCH`` set from the commit; returns the two files."""
    from .images import source_date_epoch

    try:
        import build  # noqa: F401  (only to say what to install)
    except ImportError as exc:
        raise ConfigurationError("Building the sdist and wheel needs `build`: pip install -r requirements/kit.txt (or pip install build).") from exc
    os.makedirs(outdir, exist_ok=True)
    expected = [os.path.join(outdir, f"functionfuse-{version}.tar.gz"), os.path.join(outdir, f"functionfuse-{version}-py3-none-any.whl")]
    for path in expected:
        if os.path.exists(path):
            os.remove(path)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(source_date_epoch(project)), PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "build", "--outdir", outdir, project], env=env, what="python -m build")
    missing = [p for p in expected if not os.path.isfile(p)]
    if missing:
        raise ReleaseError(f"python -m build did not make {missing!r}: is functionfuse/_version.py at {version!r}?")
    return expected


# -- images ------------------------------------------------------------------------------------------
def _remote_digest(client: Any, reference: str, auth: Mapping[str, str] | None) -> str | None:
    """The manifest digest the registry holds for *reference*, or None when it has none."""
    import docker

    try:
        info = client.api.inspect_distribution(reference, auth_config=dict(auth) if auth else None)
    except docker.errors.APIError as exc:
        text = str(exc).lower()
        if exc.status_code in (401, 403) and "not found" not in text and "unknown" not in text:
            raise ReleaseError(f"The registry refused to show {reference!r}: {exc}. Log in (docker login) or set FUNCTIONFUSE_REGISTRY_USERNAME/PASSWORD.") from exc
        return None
    return str(info.get("Descriptor", {}).get("digest") or "") or None


def _local_digests(client: Any, tag: str, repository: str) -> set[str]:
    image = client.images.get(tag)
    return {d.split("@", 1)[1] for d in image.attrs.get("RepoDigests") or [] if d.split("@", 1)[0] == repository}


def publish_images(
    tags: Sequence[str], registry: str, *, client: Any, credentials: tuple[str, str] | None = None
) -> list[Published]:
    """Push each local image ``repository:tag`` to ``registry/repository:tag`` unless the
    registry already holds it (same manifest digest)."""
    from .images import push_images, registry_repository

    auth = {"username": credentials[0], "password": credentials[1]} if credentials else None
    done: list[Published] = []
    for source in tags:
        repo, _, tag = source.rpartition(":")
        target = registry_repository(registry, repo)
        reference = f"{target}:{tag}"
        remote = _remote_digest(client, reference, auth)
        if remote and remote in _local_digests(client, source, target):
            log.info("%s is already in the registry (%s)", reference, remote)
            done.append(Published("image", source, reference, "unchanged", remote))
            continue
        if remote:
            log.info("%s: the registry holds %s, another image; replacing it", reference, remote)
        (pushed,) = push_images([source], registry, username=credentials[0] if credentials else None,
                                password=credentials[1] if credentials else None, client=client)
        done.append(Published("image", source, reference, "pushed", pushed.digest))
    return done


# -- charts ------------------------------------------------------------------------------------------
def _chart_names(charts: str) -> list[str]:
    names = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(charts, "*", "Chart.yaml")))
    # dependencies first: the umbrella vendors the others
    return sorted(names, key=lambda n: n == "functionfuse")


def _image_blocks(values: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """(key path, block) of every ``{repository: functionfuse, tag: ...}`` block of a values tree."""
    if isinstance(values, dict):
        if values.get("repository") == DEFAULT_IMAGE_REPOSITORY and "tag" in values:
            yield path, values
        for key, value in values.items():
            yield from _image_blocks(value, f"{path}.{key}" if path else str(key))


def _point_images_at(values_path: str, repository: str) -> int:
    """Point every functionfuse image of a values file at *repository*
    (``REGISTRY/functionfuse``) by setting its ``global.image.registry`` to ``REGISTRY``
    (comments kept); returns how many image blocks that moves."""
    yaml = _yaml()
    registry, _, name = repository.rpartition("/")
    if name != DEFAULT_IMAGE_REPOSITORY or not registry:
        raise ReleaseError(f"Image repository {repository!r} must be 'REGISTRY/{DEFAULT_IMAGE_REPOSITORY}': the charts name "
                           f"their images <global.image.registry>/{DEFAULT_IMAGE_REPOSITORY}:<tag>.")
    with open(values_path) as f:
        text = f.read()
    blocks = list(_image_blocks(yaml.safe_load(text)))
    new, count = re.subn(rf"(?m)^([ \t]+registry:[ \t]*){re.escape(DEFAULT_IMAGE_REGISTRY)}[ \t]*$", rf"\g<1>{registry}", text)
    values = yaml.safe_load(new) or {}
    pointed = ((values.get("global") or {}).get("image") or {}).get("registry")
    if count != 1 or pointed != registry:
        raise ReleaseError(f"{values_path!r}: found {count} `registry: {DEFAULT_IMAGE_REGISTRY}` lines, and global.image.registry "
                           f"is {pointed!r} after pointing it at {registry!r}; write global.image.registry on a line of its own.")
    pinned = [key for key, block in blocks if block.get("registry")]
    if pinned:
        raise ReleaseError(f"{values_path!r}: {', '.join(pinned)} name their own registry, so a release cannot point them at {registry!r}; "
                           "leave image.registry empty (global.image.registry applies).")
    with open(values_path, "w") as f:
        f.write(new)
    return len(blocks)


def _helm_env() -> dict[str, str]:
    return dict(os.environ, HELM_EXPERIMENTAL_OCI="1")


def package_charts(project: str, outdir: str, *, image_repository: str | None, helm: str, version: str = __version__) -> list[str]:
    """Package every chart under ``project/charts`` into *outdir* (``helm package``), with
    the functionfuse images at *image_repository* (None: as in the source). Returns the
    ``.tgz`` files, the umbrella last."""
    src = os.path.join(project, "charts")
    os.makedirs(outdir, exist_ok=True)
    packaged: list[str] = []
    with tempfile.TemporaryDirectory(prefix="functionfuse-charts-") as tmp:
        staged = os.path.join(tmp, "charts")
        shutil.copytree(src, staged, ignore=shutil.ignore_patterns("*.tgz"))
        for name in _chart_names(staged):
            chart = os.path.join(staged, name)
            if image_repository:
                _point_images_at(os.path.join(chart, "values.yaml"), image_repository)
            shutil.rmtree(os.path.join(chart, "charts"), ignore_errors=True)
            with open(os.path.join(chart, "Chart.yaml")) as f:
                if "dependencies:" in f.read():
                    _run([helm, "dependency", "build", chart], env=_helm_env(), what=f"helm dependency build {name}")
            target = os.path.join(outdir, f"{name}-{version}.tgz")
            if os.path.exists(target):
                os.remove(target)
            _run([helm, "package", chart, "--destination", outdir], env=_helm_env(), what=f"helm package {name}")
            if not os.path.isfile(target):
                raise ReleaseError(f"helm package {name} did not make {target!r}: its Chart.yaml version is not {version!r}.")
            packaged.append(target)
    return packaged


def chart_contents(tgz: str | bytes) -> dict[str, bytes]:
    """The files of a packaged chart, by name; vendored subcharts are opened too, so two
    packagings of the same sources compare equal (helm stamps files with the packaging time)."""
    if isinstance(tgz, bytes):
        data = tgz
    else:
        with open(tgz, "rb") as f:
            data = f.read()
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            body = tar.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(".tgz"):
                for sub, content in chart_contents(body).items():
                    files[f"{member.name}!{sub}"] = content
            else:
                files[member.name] = body
    return files


@contextlib.contextmanager
def _helm_registry_args(registry: str, credentials: tuple[str, str] | None, plain_http: bool) -> Iterator[list[str]]:
    """The helm flags for the registry: ``--plain-http``, and with credentials a
    temporary registry config (docker's format) that holds them, removed afterwards."""
    args = ["--plain-http"] if plain_http else []
    if credentials is None:
        yield args
        return
    host = registry.split("/", 1)[0]
    with tempfile.TemporaryDirectory(prefix="functionfuse-helm-auth-") as tmp:
        path = os.path.join(tmp, "config.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            json.dump({"auths": {host: {"auth": token}}}, f)
        yield args + ["--registry-config", path]


def publish_charts(
    packages: Sequence[str],
    registry: str,
    *,
    helm: str,
    credentials: tuple[str, str] | None = None,
    plain_http: bool = False,
    version: str = __version__,
) -> list[Published]:
    """Push each packaged chart to ``oci://registry/charts`` unless that version is there
    already with the same content; a version there with other content is an error."""
    done: list[Published] = []
    remote_dir = f"oci://{registry}/charts"
    with _helm_registry_args(registry, credentials, plain_http) as flags:
        for tgz in packages:
            name = os.path.basename(tgz)[: -len(f"-{version}.tgz")]
            reference = f"{remote_dir}/{name}"
            with tempfile.TemporaryDirectory(prefix="functionfuse-chart-pull-") as tmp:
                proc = subprocess.run(
                    [helm, "pull", reference, "--version", version, "--destination", tmp, *flags],
                    capture_output=True, text=True, env=_helm_env(), stdin=subprocess.DEVNULL,
                )
                if proc.returncode == 0:
                    (pulled,) = glob.glob(os.path.join(tmp, "*.tgz"))
                    if chart_contents(pulled) == chart_contents(tgz):
                        log.info("%s:%s is already in the registry", reference, version)
                        done.append(Published("chart", name, f"{reference}:{version}", "unchanged"))
                        continue
                    raise ReleaseError(
                        f"{reference} version {version} is already published with other content. Chart versions "
                        "are immutable: raise __version__ in functionfuse/_version.py (and the charts with it) and release again."
                    )
                if re.search(r"(?i)unauthorized|denied|authenticat", proc.stderr):
                    raise ReleaseError(f"The registry refused helm pull {reference}: {proc.stderr.strip()}. Set FUNCTIONFUSE_REGISTRY_USERNAME/PASSWORD or run helm registry login.")
            out = _run([helm, "push", tgz, remote_dir, *flags], env=_helm_env(), what=f"helm push {name}")
            m = re.search(r"Digest:\s*(sha256:[0-9a-f]+)", out.stdout + out.stderr)
            done.append(Published("chart", name, f"{reference}:{version}", "pushed", m.group(1) if m else None))
    return done


# -- the whole release -------------------------------------------------------------------------------
def release(
    registry: str | None,
    *,
    steps: Sequence[str] = STEPS,
    project: str | None = None,
    base_image: str | None = None,
    engine_base_images: Mapping[str, str] | None = None,
    wheelhouse: str | None = None,
    dist_dir: str | None = None,
    plain_http: bool | None = None,
    client: Any = None,
    on_log: Callable[[str], None] | None = None,
) -> ReleaseReport:
    """Build and publish this checkout's version; see the module docstring.

    :param registry: ``host[:port][/namespace]``; images go to ``REGISTRY/functionfuse``,
        charts to ``oci://REGISTRY/charts``. Only the ``dist`` step may run without one.
    :param plain_http: helm over HTTP (default: for a registry on loopback only).
    """
    from . import images

    t0 = time.perf_counter()
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise ConfigurationError(f"Unknown release step(s) {bad!r}; the steps are {', '.join(STEPS)}.")
    project = project or images.project_root()
    if registry is None:
        if set(steps) - {"dist"}:
            raise ConfigurationError("Publishing images and charts needs a registry: functionfuse release host[:port]/namespace.")
    else:
        registry = _check_registry(registry)
    wrong = version_mismatches(project)
    if wrong:
        raise ReleaseError("The sources disagree on the version; fix these first:\n  " + "\n  ".join(wrong))
    credentials = _credentials()
    plain = is_loopback(registry) if (plain_http is None and registry) else bool(plain_http)
    report = ReleaseReport(__version__, registry)
    build_dir = os.path.join(project, "build", "release")

    if "dist" in steps:
        for path in build_dist(project, dist_dir or os.path.join(project, "dist")):
            report.artifacts.append(Published("dist", os.path.basename(path), path, "built"))
    if "images" in steps:
        assert registry is not None
        client = client or images.docker_client()
        built = images.build_images(
            list(images.RECIPES),
            base_image=base_image or images.DEFAULT_BASE_IMAGE,
            engine_base_images=engine_base_images,
            project=project,
            wheelhouse=wheelhouse,
            client=client,
            on_log=on_log,
        )
        report.artifacts += publish_images([b.tag for b in built], registry, client=client, credentials=credentials)
    if "charts" in steps:
        assert registry is not None
        helm = helm_binary(project)
        packages = package_charts(
            project, os.path.join(build_dir, "charts"), image_repository=f"{registry}/{images.DEFAULT_REPOSITORY}", helm=helm
        )
        report.artifacts += publish_charts(packages, registry, helm=helm, credentials=credentials, plain_http=plain)
    report.seconds = time.perf_counter() - t0
    return report
