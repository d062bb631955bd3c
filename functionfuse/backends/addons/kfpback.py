"""KFPWorkflow: the DAG as a Kubeflow Pipelines (v2) pipeline, one container step per node.

From a laptop to a cluster in four calls (:meth:`KFPWorkflow.run` does them all):

1. :meth:`~KFPWorkflow.build_image`: an image = the base image + functionfuse + the
   project directory (``.dockerignore`` honoured) + a snapshot of the DAG (functions and
   arguments serialised with cloudpickle, so no user script runs again in a step). The
   tag is a content hash: an unchanged project is not rebuilt.
2. :meth:`~KFPWorkflow.push_image`: to ``registry_credentials["server"]``, with the
   credentials held in memory only.
3. :meth:`~KFPWorkflow.compile`: the pipeline YAML. Each step is named after its node,
   depends on the steps of its node's parents, reads their values from artifact files
   and writes its own; class-node instances travel from one method call to the next.
4. Submit to ``kfp_host`` with ``kfp.Client`` (:meth:`~KFPWorkflow.run`), or run every
   step in a real local container with ``kfp.local.DockerRunner``
   (:meth:`~KFPWorkflow.run_local`).

Resuming works as in the other backends, from the plan of the core: with storage set,
``run()`` and ``run_local()`` leave out the steps of nodes that need not run, load
stored values instead of recomputing them, and every node that runs saves its result.
A pipeline written by ``compile()`` makes that decision in each step when it runs.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import glob
import json
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, cast

from ...baseworkflow import LOAD, BaseWorkflow
from ...baseworkflow import Query as BaseQuery
from ...errors import (
    ConfigurationError,
    EngineError,
    FunctionFuseError,
    NodeExecutionError,
    RemoteRunError,
    StorageError,
    missing_dependency,
)
from ...kit.images import REGISTRY_FORM
from ...storage import signing as _signing
from . import _kfpimage, _kfppipeline, _kfpstep

try:
    import cloudpickle  # noqa: F401
    import kfp
    from kfp import compiler as _compiler
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise missing_dependency(getattr(_exc, "name", None) or "kfp", "kfp", _exc) from _exc

__all__ = ["KFPWorkflow", "Query", "KFPRun"]

log = logging.getLogger("functionfuse.kfp")

#: the quantities kfp 2.x accepts (``PipelineTask._validate_cpu_request_limit`` and
#: ``_validate_memory_request_limit``): a CPU count may be decimal, memory may not
_CPU = re.compile(r"([0-9]*[.])?[0-9]+m?")
_MEMORY_UNITS = ("E", "Ei", "P", "Pi", "T", "Ti", "G", "Gi", "M", "Mi", "K", "Ki")
_MEMORY = re.compile(r"[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?")
_PULL_POLICIES = ("Always", "Never", "IfNotPresent")
_CREDENTIAL_KEYS = ("server", "username", "password")
#: s3fs options that hold credentials: never in an image or a pipeline file
_SECRET_OPTIONS = ("key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def _whole_memory(value: str) -> str | None:
    """*value* (a decimal memory quantity such as ``1.5Gi``) as a whole number of a
    smaller unit of the same kind (``1536Mi``), or of bytes; None if it is no quantity."""
    from decimal import Decimal, InvalidOperation

    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(Ei|Pi|Ti|Gi|Mi|Ki|E|P|T|G|M|K)?", value.strip())
    if not m:
        return None
    try:
        amount = Decimal(m.group(1))
    except InvalidOperation:  # pragma: no cover - the pattern admits numbers only
        return None
    unit = m.group(2) or ""
    binary = unit.endswith("i")
    ladder = ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki", ""] if binary else ["E", "P", "T", "G", "M", "K", ""]
    step = 1024 if binary else 1000
    for smaller in ladder[ladder.index(unit):-1]:
        if amount == amount.to_integral_value():
            return f"{int(amount)}{smaller}"
        amount *= step
    return str(int(amount.to_integral_value(rounding="ROUND_CEILING")))  # bytes


def _check_option(key: str, value: Any, nodes: str = "") -> Any:
    """*value* checked (and normalised) as the step option *key* of *nodes* (their names,
    for the error)."""
    bad = None
    fix = ""
    if key in ("cpu_request", "cpu_limit"):
        value = str(value)
        bad = None if _CPU.fullmatch(value) else "a CPU quantity such as '500m', '1' or '2.5'"
    elif key in ("memory_request", "memory_limit"):
        value = str(value)
        if not _MEMORY.fullmatch(value):
            bad = (f"a memory quantity: a whole number of bytes, optionally followed by one of {', '.join(_MEMORY_UNITS)} "
                   "(e.g. '512Mi', '4G'; KFP takes no decimals)")
            whole = _whole_memory(value)
            fix = f" Use {whole!r} instead." if whole is not None and whole != value else ""
    elif key in ("accelerator_limit", "retries"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        bad = None if ok else "a whole number >= 0"
    elif key == "accelerator_type":
        bad = None if isinstance(value, str) and value else "an accelerator name such as 'nvidia.com/gpu'"
    elif key in ("node_selector", "env"):
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        bad = None if ok else "a dict of str to str"
        value = {k: str(v) for k, v in value.items()} if ok else value
    elif key == "image_pull_policy":
        bad = None if value in _PULL_POLICIES else f"one of {', '.join(_PULL_POLICIES)}"
    elif key == "image_pull_secrets":
        ok = isinstance(value, (list, tuple)) and all(isinstance(s, str) and s for s in value)
        bad = None if ok else "a list of Kubernetes secret names"
        value = list(value) if ok else value
    if bad:
        where = f" of {nodes}" if nodes else ""
        raise ConfigurationError(f"Task option {key!r}{where} must be {bad}, not {value!r}.{fix}")
    return value


def _docker_client() -> Any:
    """A Docker SDK client; the kit's error, naming the fix, when no daemon answers.

    (Like ``functionfuse.kit.images.docker_client``, but the failed client's connection
    is closed, not left to the garbage collector.)
    """
    import docker

    from ...kit.images import DockerUnavailableError

    client: Any = None
    error = None
    # the SDK leaves the socket of a refused connection to the garbage collector, held by
    # the exception's traceback: keep only the message, and collect it here, quietly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=600)
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
            f"No Docker daemon answers ({error}). Start one (on Debian as root, scripts/setup-docker.sh installs "
            "and starts it) or set DOCKER_HOST."
        )
    return client


class Query(BaseQuery):
    """The nodes of a workflow whose names match a pattern; sets their step options."""

    workflow: "KFPWorkflow"

    def set_task_args(self, args: Mapping[str, Any]) -> "Query":
        """Set options of these nodes' pipeline steps.

        :param args: any of ``cpu_request``, ``cpu_limit`` (``"500m"``, ``"2"``),
            ``memory_request``, ``memory_limit`` (``"512Mi"``, ``"4G"``),
            ``accelerator_type`` (``"nvidia.com/gpu"``), ``accelerator_limit`` (GPUs,
            an int), ``retries`` (an int), ``env`` (``{"NAME": "value"}``),
            ``node_selector`` (``{"label": "value"}``), ``image_pull_policy``
            (``"Always"``, ``"IfNotPresent"``, ``"Never"``), ``image_pull_secrets``
            (names of Kubernetes secrets). Calls add up: a later call overrides earlier
            ones only for the keys it sets.
        :returns: this query.
        """
        return self._set(args, "set_task_args")

    def set_resources(self, **resources: Any) -> "Query":
        """Shortcut: ``set_resources(cpu_limit="2", memory_limit="4Gi", accelerator_limit=1)``."""
        return self._set(resources, "set_resources")

    def _set(self, args: Mapping[str, Any], method: str) -> "Query":
        indices = self._targets(method)
        if not isinstance(args, Mapping):
            raise ConfigurationError(f"set_task_args takes a dict of step options, not {type(args).__name__} {args!r}.")
        unknown = sorted(k for k in args if k not in _kfppipeline.TASK_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"set_task_args: {', '.join(map(repr, unknown))} "
                f"{'is not a step option' if len(unknown) == 1 else 'are not step options'}. "
                f"Valid options: {', '.join(sorted(_kfppipeline.TASK_OPTIONS))}."
            )
        names = self.names
        nodes = (f"node {names[0]!r}" if len(names) == 1 else
                 f"nodes {', '.join(map(repr, names[:3]))}{', ...' if len(names) > 3 else ''}")
        checked = {k: _check_option(k, v, nodes) for k, v in args.items()}
        options = self.workflow._task_args
        for i in indices:
            options[i] = {**options.get(i, {}), **checked}
        return self


@dataclass(frozen=True)
class KFPRun:
    """A pipeline run submitted to a KFP API server."""

    run_id: str
    url: str
    host: str
    image: str


class KFPWorkflow(BaseWorkflow):
    """A backend to run workflows on Kubeflow Pipelines.

    :param nodes: DAG nodes. The backend finds all DAG roots that are ancestors of the
        nodes and runs the graph from those roots through every descendant.
    :param workflow_name: the name of the workflow, used by storage (and, in KFP, as the
        pipeline name).
    :param baseimage: the image the step image is built on: it must have Python 3 with
        ``venv`` and whatever the project's code needs (e.g. ``python:3.11-slim``).
    :param registry_credentials: ``{"server": "registry[:port][/namespace]", "username":
        ..., "password": ...}``: where :meth:`push_image` pushes the step image.
    :param kfp_host: the KFP API (or UI) address for ``kfp.Client``.

    >>> from functionfuse import workflow
    >>> @workflow
    ... def inc(x):
    ...     return x + 1
    >>> wf = KFPWorkflow(inc(inc(1).set_name("one")).set_name("two"), workflow_name="doc")
    >>> wf.query("^two$").set_task_args({"cpu_limit": "1", "memory_limit": "1Gi"}).names
    ['two']
    """

    query_class = Query
    #: each node is a container step and values pass between steps through storage
    supports_unstored_nodes = False

    def __init__(
        self,
        *nodes: Any,
        workflow_name: str,
        baseimage: str = "python",
        registry_credentials: Mapping[str, str] = {},
        kfp_host: str = "http://localhost:3000",
    ) -> None:
        super().__init__(*nodes, workflow_name=workflow_name)
        self._task_args: dict[int, dict[str, Any]] = {}
        self.baseimage = ""
        self.kfp_host = ""
        self._credentials: dict[str, str] = {}
        self.project_dir = os.getcwd()
        self.project_exclude: list[str] = []
        self.wheelhouse: str | None = None
        self.step_storage: Any = None
        self._storage_secret: dict[str, dict[str, str]] = {}
        self._pipeline_options: dict[str, Any] = {}
        #: the step image built (or found built) last by :meth:`build_image`: ``repository:tag``
        self.image: str | None = None
        #: the image reference pushed last by :meth:`push_image`
        self.pushed_image: str | None = None
        #: what the last :meth:`build_image` did (tag, content hash, seconds, built or found)
        self.last_build: _kfpimage.StepImage | None = None
        self._client: Any = None
        self.set_baseimage(baseimage)
        self.set_registry_credentials(registry_credentials)
        self.set_kfp_host(kfp_host)

    def _repr_details(self) -> list[str]:  # never credentials
        return [f"base {self.baseimage!r}"]

    # -- configuration -----------------------------------------------------------------
    def query(self, pattern: str | None = None) -> Query:
        """Query nodes by regexp pattern (``re.search``; ``None``: every node).

        :returns: a :class:`Query`; :meth:`Query.set_task_args` sets step options (and
            refuses a query that matches no node).
        """
        return cast(Query, super().query(pattern))  # the base builds self.query_class, this Query

    def set_baseimage(self, baseimage: str) -> None:
        """Set the image the step image is built on (see the class documentation).

        The step image adds functionfuse, kfp and cloudpickle (in a virtual environment
        that also sees the base image's packages), the project directory and the DAG.
        """
        if not isinstance(baseimage, str) or not baseimage.strip() or any(c.isspace() for c in baseimage):
            raise ConfigurationError(f"Base image {baseimage!r} must be an image reference such as 'python:3.11-slim'.")
        self.baseimage = baseimage

    def set_registry_credentials(self, registry_credentials: Mapping[str, str]) -> None:
        """Set where and how to push the step image.

        :param registry_credentials: ``server`` (``host[:port][/namespace]``), and
            ``username`` and ``password`` as for ``docker login`` (both or neither).
            They are kept in this object only: never written to a file, an image, a
            pipeline or a log.
        """
        if not isinstance(registry_credentials, Mapping):
            raise ConfigurationError("registry_credentials must be a dict with 'server', 'username' and 'password'.")
        unknown = sorted(set(registry_credentials) - set(_CREDENTIAL_KEYS))
        if unknown:
            raise ConfigurationError(
                f"registry_credentials has unknown keys {unknown!r}; the keys are 'server', 'username' and 'password'."
            )
        creds = {k: v for k, v in registry_credentials.items() if v not in (None, "")}
        bad = [k for k, v in creds.items() if not isinstance(v, str)]
        if bad:
            raise ConfigurationError(f"registry_credentials[{bad[0]!r}] must be a str.")
        if ("username" in creds) != ("password" in creds):
            raise ConfigurationError("registry_credentials: give both 'username' and 'password', or neither.")
        if "server" in creds:
            creds["server"] = re.sub(r"^https?://", "", creds["server"]).rstrip("/")
            if not REGISTRY_FORM.fullmatch(creds["server"]):
                raise ConfigurationError(
                    f"registry_credentials['server'] {registry_credentials['server']!r} must look like "
                    "'host[:port][/namespace]', e.g. 'registry.example.com/team' or '127.0.0.1:5000'."
                )
        self._credentials = creds

    @property
    def registry(self) -> str | None:
        """The registry server the image is pushed to (None: not set)."""
        return self._credentials.get("server")

    def set_kfp_host(self, kfp_host: str) -> None:
        """Set the address of the KFP API (``http://host:port``)."""
        if not isinstance(kfp_host, str) or not re.match(r"^https?://[^\s/]+", kfp_host):
            raise ConfigurationError(f"kfp_host {kfp_host!r} must be a URL such as 'http://localhost:3000'.")
        self.kfp_host = kfp_host.rstrip("/")
        self._client = None

    def set_project(self, path: str | os.PathLike, *, exclude: list[str] | tuple[str, ...] = ()) -> None:
        """Set the project directory copied into the image (default: the current
        directory when the workflow was created).

        Its ``.dockerignore`` is honoured; *exclude* adds patterns of the same syntax
        (e.g. ``["data/", "*.ckpt"]``). File storage folders and the wheelhouse are
        always left out.
        """
        path = os.path.abspath(os.fspath(path))
        if not os.path.isdir(path):
            raise ConfigurationError(f"Project directory {path!r} does not exist.")
        if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
            raise ConfigurationError(f"exclude must be a list of .dockerignore patterns, not {exclude!r}.")
        self.project_dir = path
        self.project_exclude = list(exclude)

    def set_wheelhouse(self, path: str | os.PathLike | None) -> None:
        """Install the image's Python packages from a wheelhouse folder on this machine
        (filled with ``pip wheel`` on the first build, served on 127.0.0.1 during
        builds), so builds need no package index. None: install from the index."""
        self.wheelhouse = None if path is None else os.path.abspath(os.fspath(path))

    def set_step_storage(self, object_storage: Any) -> None:
        """The storage as the steps see it, when it differs from :meth:`set_storage`'s
        (e.g. an S3 endpoint inside the cluster: ``http://minio.ns.svc:9000``)."""
        if object_storage is not None and not hasattr(object_storage, "save"):
            raise ConfigurationError(f"{object_storage!r} is not a storage object; use storage_factory(...).")
        self.step_storage = object_storage

    def set_storage_secret(self, secret_name: str, keys: Mapping[str, str] | None = None) -> None:
        """Give the steps storage credentials from a Kubernetes secret, as environment
        variables. *keys*: ``{ENV_VAR: secret_key}``; default
        ``{"AWS_ACCESS_KEY_ID": "accessKey", "AWS_SECRET_ACCESS_KEY": "secretKey"}``."""
        keys = dict(keys or {"AWS_ACCESS_KEY_ID": "accessKey", "AWS_SECRET_ACCESS_KEY": "secretKey"})
        self._storage_secret = {secret_name: keys}

    def set_signing_secret(self, secret_name: str, key: str = "signingKey") -> None:
        """Give the steps the storage signing key (``FUNCTIONFUSE_STORAGE_KEY``, see
        :mod:`functionfuse.storage.signing`) from key *key* of a Kubernetes secret. The
        key is never in the pipeline or the image; a step without it refuses to store or
        load results of a storage configured where a key was set."""
        if not isinstance(secret_name, str) or not secret_name or not isinstance(key, str) or not key:
            raise ConfigurationError(
                f"set_signing_secret takes a secret name and a key of that secret, got {secret_name!r}, {key!r}."
            )
        self._signing_secret = (secret_name, key)

    # -- the image ---------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The DAG snapshot the image holds (cloudpickle; raises SerializationError
        naming the node whose function or arguments do not pickle)."""
        return _kfpstep.dump_snapshot(self)

    def _excluded(self) -> list[str]:
        """Folders never copied into the image: file storage and the wheelhouse."""
        out = []
        for storage in (self.storage, self.step_storage):
            path = getattr(storage, "path", None)
            if storage is not None and type(storage).__name__ == "FileStorage" and path:
                out.append(path)
        if self.wheelhouse:
            out.append(self.wheelhouse)
        return out

    def image_reference(self) -> str:
        """The step image of the project and DAG as they are now, computed without Docker:
        ``repository:<content hash>``, what :meth:`build_image` gives (or finds built).

        The content hash covers the build context (functionfuse, the project, the DAG
        snapshot with its plugins and cache policies), the base image's name and the
        wheelhouse; so any change to those names another image.
        """
        tag = _kfpimage.image_tag(
            self.project_dir, self.snapshot(), self.baseimage, self._excluded(), self.project_exclude, self.wheelhouse
        )
        return f"{_kfpimage.repository_for(self.workflow_name)}:{tag}"

    def _pull_reference(self, local: str) -> str:
        """The reference the steps pull *local* by: pushed to the registry when one is set
        (what :meth:`push_image` gives), else *local* itself."""
        return _kfpimage.registry_reference(local, self.registry) if self.registry else local

    def build_image(
        self, *, on_log: Callable[[str], None] | None = _kfpimage.stderr_log, force: bool = False, nocache: bool = False
    ) -> str:
        """Build the step image (or find it built) and return its ``repository:tag``.

        The tag is the content hash of the project and DAG as they are now (see
        :meth:`image_reference`): with nothing changed since the last build, nothing is
        built (``last_build.built`` is False).

        :param on_log: called with each line of the build log (default: standard
            error; None: quiet).
        :param force: build even if an image with the same content hash exists.
        :param nocache: do not reuse Docker's cached layers (implies a build).
        """
        snapshot = self.snapshot()
        client = _docker_client()
        try:
            built = _kfpimage.build_step_image(
                client,
                workflow_name=self.workflow_name,
                base_image=self.baseimage,
                project=self.project_dir,
                snapshot=snapshot,
                exclude=self._excluded(),
                patterns=self.project_exclude,
                wheelhouse=self.wheelhouse,
                on_log=on_log,
                force=force or nocache,
                nocache=nocache,
            )
        finally:
            client.close()
        self.last_build = built
        self.image = built.reference
        return built.reference

    def push_image(self) -> str:
        """Push the step image of the project and DAG as they are now to
        ``registry_credentials["server"]`` (building it first unless it is built);
        returns the pushed reference (``server/repository:tag``)."""
        if not self.registry:
            raise ConfigurationError(
                "No registry to push to: set_registry_credentials({'server': 'registry.example.com[:port]', "
                "'username': ..., 'password': ...}) first."
            )
        # built again, not self.image: a plugin, cache policy or code change since the
        # last build is a new snapshot, so a new image (finding an unchanged one is cheap)
        image = self.build_image()
        client = _docker_client()
        try:
            self.pushed_image = _kfpimage.push_step_image(client, image, self._credentials)
        finally:
            client.close()
        log.info("pushed %s", self.pushed_image)
        return self.pushed_image

    # -- the pipeline ------------------------------------------------------------------
    def _storage_for_steps(self) -> tuple[str | None, dict[str, str]]:
        """The step storage encoded for the command line (credentials removed), and the
        credentials removed, as environment variables."""
        storage = self.step_storage if self.step_storage is not None else self.storage
        if storage is None:
            return None, {}
        env: dict[str, str] = {}
        options = getattr(storage, "_options", None)
        if isinstance(options, dict):
            storage = copy.copy(storage)
            clean = copy.deepcopy(options)
            for key in _SECRET_OPTIONS:
                value = clean.pop(key, None)
                if value is not None and key in ("key", "aws_access_key_id"):
                    env["AWS_ACCESS_KEY_ID"] = str(value)
                elif value is not None and key in ("secret", "aws_secret_access_key", "password"):
                    env["AWS_SECRET_ACCESS_KEY"] = str(value)
                elif value is not None:
                    env["AWS_SESSION_TOKEN"] = str(value)
            for key in list(clean.get("client_kwargs", {}) or {}):
                if key in _SECRET_OPTIONS:
                    value = clean["client_kwargs"].pop(key)
                    env[key.upper()] = str(value)
            storage._options = clean  # type: ignore[attr-defined]
            storage._io = None  # type: ignore[attr-defined]
        return _kfpstep.encode_storage(storage), env

    def _platform(self) -> dict[str, Any]:
        secrets = {name: dict(keys) for name, keys in self._storage_secret.items()}
        signing = getattr(self, "_signing_secret", None)
        if signing is not None:
            secrets.setdefault(signing[0], {})[_signing.ENV_KEY] = signing[1]
        return {"secret_env": secrets} if secrets else {}

    def plan_actions(self) -> list[str] | None:
        """The action of each node for a run starting now (None without storage)."""
        if self.storage is None:
            return None
        return self.resume_actions()

    def pipeline(self, image: str | None = None, *, actions: list[str] | None = None, local: bool = False) -> Any:
        """The ``kfp.dsl`` pipeline of this workflow (see :meth:`compile`)."""
        storage_arg, _env = self._storage_for_steps()
        pipeline, _outputs = _kfppipeline.build_pipeline(
            self,
            image or self._pull_reference(self.image_reference()),
            storage_arg=storage_arg,
            actions=actions,
            task_options=self._task_args,
            platform=self._platform(),
            display_names=not local,
        )
        return pipeline

    def compile(self, package_path: str | os.PathLike, *, image: str | None = None, resume: str = "auto") -> str:
        """Write the KFP v2 pipeline YAML to *package_path*; returns the path.

        One container step per node, named after it, depending on its parents' steps.
        Works offline, without Docker.

        :param image: the step image reference. Default: the image of the project and
            DAG as they are now (:meth:`image_reference`, computed without Docker), as
            :meth:`push_image` pushes it (``server/repository:<hash>``) when a registry
            is set, else the local ``repository:<hash>`` that :meth:`build_image` gives.
            Build and push it before the pipeline runs (:meth:`run` does both).
        :param resume: ``"auto"``: each step asks storage when it runs whether its node
            runs, loads or is skipped; ``"plan"``: the plan of the core computed now
            (nodes that need not run have no step).
        """
        if resume not in ("auto", "plan"):
            raise ConfigurationError(f"resume must be 'auto' or 'plan', not {resume!r}.")
        actions = self.plan_actions() if resume == "plan" else None
        path = os.fspath(package_path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        _compiler.Compiler().compile(self.pipeline(image, actions=actions), path)
        return path

    # -- running -----------------------------------------------------------------------
    def client(self) -> Any:
        """The ``kfp.Client`` for ``kfp_host``."""
        if self._client is None:
            try:
                with warnings.catch_warnings():  # said on every construction, whatever the server
                    warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline")
                    self._client = kfp.Client(host=self.kfp_host)
            except Exception as exc:
                raise EngineError(f"Cannot connect to the KFP API at {self.kfp_host!r}: {exc}") from exc
        return self._client

    def run(self, wait: bool = False, *, timeout: float = 3600, experiment_name: str | None = None) -> Any:
        """Build and push the image, compile the pipeline and submit it to ``kfp_host``.

        :param wait: wait for the run to finish and return the results of the output
            nodes (read from storage, which must be set) like ``LocalWorkflow.run``.
        :returns: a :class:`KFPRun` (run id and URL), or the results with ``wait=True``.
        """
        if wait and self.storage is None:
            raise ConfigurationError(
                "run(wait=True) returns the results read back from storage: set_storage(...) first "
                "(the steps must reach the same storage, see set_step_storage)."
            )
        image = self.push_image()  # builds the image first unless it is built
        try:
            actions = self.plan_actions()
        except (StorageError, OSError) as exc:
            log.warning("storage cannot be read from here (%s): each step will decide when it runs", exc)
            actions = None
        with tempfile.TemporaryDirectory(prefix="functionfuse-kfp-") as tmp:
            package = os.path.join(tmp, f"{_kfppipeline.pipeline_name(self.workflow_name)}.yaml")
            _compiler.Compiler().compile(self.pipeline(image, actions=actions), package)
            run = self.submit(package, experiment_name=experiment_name)
        if not wait:
            return run
        info = self.client().wait_for_run_completion(run.run_id, timeout=timeout)
        state = str(getattr(info, "state", "") or "")
        if state.upper() not in ("SUCCEEDED", "SUCCESS", "COMPLETED"):
            raise RemoteRunError(
                f"KFP run {run.run_id} of workflow {self.workflow_name!r} ended {state or 'in an unknown state'}: "
                f"see {run.url}"
            )
        return self.outputs({i: self.load_result(i) for i in set(self.graph.outputs)})

    def submit(self, package_path: str | os.PathLike, *, experiment_name: str | None = None) -> KFPRun:
        """Submit a pipeline package written by :meth:`compile` to ``kfp_host``.

        :returns: the :class:`KFPRun` (run id, URL in the KFP UI).
        """
        client = self.client()
        image = _kfppipeline.package_image(os.fspath(package_path)) or self.pushed_image or self.image or ""
        try:
            result = client.create_run_from_pipeline_package(
                os.fspath(package_path),
                arguments={},
                run_name=f"{self.workflow_name} {time.strftime('%Y-%m-%d %H-%M-%S')}",
                experiment_name=experiment_name,
            )
        except Exception as exc:
            raise EngineError(f"The KFP API at {self.kfp_host!r} refused the pipeline run: {exc}") from exc
        run = KFPRun(
            run_id=str(result.run_id),
            url=f"{client._get_url_prefix()}/#/runs/details/{result.run_id}",
            host=self.kfp_host,
            image=image,
        )
        log.info("submitted run %s: %s", run.run_id, run.url)
        return run

    def run_local(
        self,
        *,
        pipeline_root: str | os.PathLike | None = None,
        environment: Mapping[str, str] | None = None,
        mounts: Mapping[str, str] | None = None,
    ) -> Any:
        """Run the pipeline here: every step in a real container from the step image,
        with ``kfp.local.DockerRunner`` (host network). Builds the image if needed.

        With storage set, nodes that need not run have no step, stored values are loaded
        in their steps, and every node that runs stores its result. File storage is
        mounted into the containers at the same path. The image is the one of the
        project and DAG as they are now (:meth:`build_image`: built if it changed).

        Of the step options (:meth:`Query.set_task_args`), a node's ``env`` reaches its
        container; resources, accelerators, retries and the Kubernetes settings are for
        a cluster (local runs leave them out).

        :param pipeline_root: folder for the step artifacts (default: a temporary folder,
            removed afterwards).
        :param environment: extra environment variables of every step container. They,
            and the storage credentials, win over a node's ``env`` of the same name. A
            storage signing key set here (``FUNCTIONFUSE_STORAGE_KEY``, or
            ``FUNCTIONFUSE_STORAGE_KEY_FILE``, mounted read-only) reaches the steps too.
        :param mounts: extra folders of this machine to mount into the step containers:
            ``{host path: container path}`` (e.g. a data folder the nodes read).
        :returns: the result of the single node given to the constructor, or a list of
            results for several, like ``LocalWorkflow.run``.
        """
        from kfp import local

        started = time.perf_counter()
        report, progress = self.start_run()
        try:
            # built again, not self.image: settings changed since the last build (plugins,
            # cache policies) are in a new snapshot; an unchanged one is found built
            image = self.build_image()
            actions = self.plan_actions()
            storage_arg, env = self._storage_for_steps()
            # of the step options, only a node's env applies to a local container; the
            # runner's environment (storage credentials, *environment*) wins over it
            node_env = {i: {"env": o["env"]} for i, o in self._task_args.items() if o.get("env")}
            pipeline, outputs = _kfppipeline.build_pipeline(
                self, image, storage_arg=storage_arg, actions=actions, task_options=node_env, display_names=False,
            )
            key_file = os.environ.get(_signing.ENV_KEY_FILE)
            binds = self._mounts({**(mounts or {}), **({key_file: key_file} if key_file else {})})
            for name in (_signing.ENV_KEY, _signing.ENV_KEY_FILE):  # this machine's signing key
                if os.environ.get(name) and name not in (environment or {}):
                    env[name] = os.environ[name]
            env.update(environment or {})
            runner_args: dict[str, Any] = {"network_mode": "host"}
            if binds:
                runner_args["mounts"] = binds
            if env:
                runner_args["environment"] = env
            with self._local_root(pipeline_root) as root:
                outputs_dir = os.path.join(root, "outputs")
                earlier = set(os.listdir(outputs_dir)) if os.path.isdir(outputs_dir) else set()
                local.init(
                    runner=local.DockerRunner(**runner_args),
                    pipeline_root=os.path.join(root, "outputs"),
                    workspace_root=os.path.join(root, "workspace"),
                    raise_on_error=True,
                )
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
                    try:
                        task = pipeline()
                    except ConfigurationError:
                        raise
                    except (RuntimeError, ValueError) as exc:  # a failed step (ValueError: it was an output)
                        raise self._local_failure(exc, self._run_folders(outputs_dir, earlier)) from exc
                values = {i: _kfpstep.load_value(task.outputs[o].path, f"Result of node {self.graph.names[i]!r}")
                          for i, o in outputs.items()}
                self._record_steps(report, self._run_folders(outputs_dir, earlier))
            if actions is not None:
                report.skipped = sum(1 for a in actions if a == "skip")
        except BaseException as exc:
            self.finish_run(report, progress, started, exc)
            raise
        self.finish_run(report, progress, started)
        return self.outputs(values)

    @staticmethod
    def _run_folders(outputs: str, earlier: set[str]) -> list[str]:
        """The folders of the pipeline runs started since *earlier* was listed."""
        if not os.path.isdir(outputs):
            return []
        return [os.path.join(outputs, d) for d in sorted(set(os.listdir(outputs)) - earlier)]

    def _record_steps(self, report: Any, folders: list[str]) -> None:
        """Count what the steps did (their executor output files) into the run report."""
        paths = [p for f in folders for p in glob.glob(os.path.join(glob.escape(f), "**", "executor_output.json"),
                                                           recursive=True)]
        for path in sorted(paths):
            try:
                with open(path) as f:
                    listing = json.load(f).get("artifacts", {})
                meta = listing["result"]["artifacts"][0]["metadata"]
            except (OSError, ValueError, KeyError, IndexError):
                continue
            if meta.get("action") in ("run", "replay"):
                report.ran += 1
                report.record(str(meta.get("node")), float(meta.get("seconds") or 0.0))
            elif meta.get("action") == LOAD:
                report.loaded += 1
            elif meta.get("action") == "skip":
                report.skipped += 1

    def _mounts(self, extra: Mapping[str, str]) -> list[Any]:
        import docker

        key_file = os.environ.get(_signing.ENV_KEY_FILE)
        mounts = [
            docker.types.Mount(
                target=target, source=os.path.abspath(source), type="bind", read_only=source == key_file
            )
            for source, target in extra.items()
        ]
        storage = self.step_storage if self.step_storage is not None else self.storage
        if storage is not None and type(storage).__name__ == "FileStorage":
            os.makedirs(storage.path, exist_ok=True)
            mounts.append(docker.types.Mount(target=storage.path, source=storage.path, type="bind"))
        return mounts

    @contextlib.contextmanager
    def _local_root(self, pipeline_root: str | os.PathLike | None) -> Iterator[str]:
        if pipeline_root is not None:
            root = os.path.abspath(os.fspath(pipeline_root))
            os.makedirs(root, exist_ok=True)
            yield root
            return
        with tempfile.TemporaryDirectory(prefix="functionfuse-kfp-local-") as tmp:
            yield tmp

    def _local_failure(self, exc: Exception, folders: list[str]) -> BaseException:
        """The error of a failed local pipeline run, naming the node of the failed step,
        with the step's own message (a failed step leaves it in its result file)."""
        for folder in folders:
            for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*", "result"))):
                try:
                    failure = _kfpstep.load_value(path, "the failure")
                except FunctionFuseError:
                    continue
                if not isinstance(failure, _kfpstep.StepFailure):
                    continue
                if failure.kind == "NodeExecutionError":
                    return NodeExecutionError(failure.message, node_name=failure.node, workflow_name=self.workflow_name)
                return RemoteRunError(
                    f"The step of node {failure.node!r} of workflow {self.workflow_name!r} failed: "
                    f"{failure.kind}: {failure.message}"
                )
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
        m = re.search(r"Inner task failed: '([^']+)'", text)
        if m:
            task = m.group(1)
            by_task = {re.sub(r"[^a-z0-9]+", "-", n.lower()).strip("-"): n for n in self.graph.names}
            name = by_task.get(task, by_task.get(re.sub(r"-\d+$", "", task), task))
            return NodeExecutionError(
                f"Node {name!r} of workflow {self.workflow_name!r} failed in its container step {task!r} "
                "(its log is above).",
                node_name=name,
                workflow_name=self.workflow_name,
            )
        return RemoteRunError(f"The local KFP run of workflow {self.workflow_name!r} failed: {text}")
