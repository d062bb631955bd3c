"""KFPWorkflow: the DAG as a Kubeflow Pipelines (v2) pipeline, one container step per
execution unit (a node, or a chain or group of nodes; at most 10 steps by default).

From a laptop to a cluster in four calls (:meth:`KFPWorkflow.run` does them all):

1. :meth:`~KFPWorkflow.build_image`: an image = the base image + functionfuse + the
   project directory (``.dockerignore`` honoured) + a snapshot of the DAG (functions and
   arguments serialised with cloudpickle, so no user script runs again in a step). The
   tag is a content hash: an unchanged project is not rebuilt.
2. :meth:`~KFPWorkflow.push_image`: to ``registry_credentials["server"]``, with the
   credentials held in memory only.
3. :meth:`~KFPWorkflow.compile`: the pipeline YAML. Each step runs one execution unit
   (:mod:`functionfuse.units`: linear chains and groups of nodes, merged down to
   ``max_units`` steps; :meth:`~KFPWorkflow.set_fusion`), its nodes in order, each
   stored as soon as it is computed; it depends on the steps of its nodes' parents
   outside it, reads their values from artifact files and writes those later steps
   read; class-node instances travel from one method call to the next.
   :meth:`~KFPWorkflow.step_units` (and :attr:`~KFPWorkflow.last_units` afterwards)
   says which nodes share a step and why.
4. Submit to ``kfp_host`` with ``kfp.Client`` (:meth:`~KFPWorkflow.run`), or run every
   step in a real local container with ``kfp.local.DockerRunner``
   (:meth:`~KFPWorkflow.run_local`).

Resuming works as in the other backends, from the plan of the core: with storage set,
``run()`` and ``run_local()`` leave out the steps of nodes that need not run, load
stored values instead of recomputing them, and every node that runs saves its result.
A pipeline written by ``compile()`` makes that decision in each step when it runs.

On a cluster with the functionfuse-kfp chart, :meth:`KFPWorkflow.set_cluster_settings`
takes the steps' storage and its Secret, the ServiceAccount, the image pull Secret and
the pipeline root from the ConfigMap the chart publishes.

This module is the facade with the seed's signatures; the parts live beside it:
``_kfpbuild`` (image settings, build and push, through the kit's
:mod:`functionfuse.kit.stepimage`), ``_kfpoptions`` (per-node step options),
``_kfppipeline`` (the pipeline), ``_kfplocal`` (:meth:`~KFPWorkflow.run_local`) and
``_kfpstep`` (a step, in its container). It is longer than 500 lines because it is the
seed's facade: every setter of the public class is here, documented.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, cast

from ...baseworkflow import BaseWorkflow
from ...baseworkflow import Query as BaseQuery
from ...query import targets
from ...errors import ConfigurationError, EngineError, RemoteRunError, StorageError, missing_dependency
from ...kit import kfpsettings, stepimage
from ...storage import StorageProtocol
from ...storage import signing as _signing
from ...units import Units
from . import _kfplocal, _kfppipeline, _kfpstep
from ._kfpbuild import StepImageBuilder
from ._kfpoptions import check_task_args, options_key

try:
    import cloudpickle  # noqa: F401
    import kfp
    from kfp import compiler as _compiler
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess test
    raise missing_dependency(getattr(_exc, "name", None) or "kfp", "kfp", _exc) from _exc

__all__ = ["KFPWorkflow", "Query", "KFPRun"]

log = logging.getLogger("functionfuse.kfp")

#: the seed's default base image (``set_cluster_settings`` replaces only this one)
_DEFAULT_BASE = "python"
#: the most container steps execution units are merged into by default (``set_fusion``)
DEFAULT_MAX_STEPS = 10



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
        indices = targets(self, method)
        checked = check_task_args(args, self.names)
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


class KFPWorkflow(StepImageBuilder, BaseWorkflow):
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
    #: a step runs an execution unit: drawings and ``functionfuse plan --units`` show them
    fuses_units = True

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
        self.step_storage: StorageProtocol | None = None
        self._storage_secret: dict[str, dict[str, str]] = {}
        self._signing_secret: tuple[str, str] | None = None
        #: the ServiceAccount the steps of a submitted run run as (None: KFP's default)
        self.service_account: str | None = None
        #: the pipeline root of submitted runs (None: the namespace's default)
        self.pipeline_root: str | None = None
        #: Secrets that pull the step image, given to every step (a node's own
        #: ``image_pull_secrets`` option replaces them for its step)
        self.image_pull_secrets: list[str] = []
        #: the chart settings applied last by :meth:`set_cluster_settings`
        self.cluster_settings: kfpsettings.KFPSettings | None = None
        #: the step image built (or found built) last by :meth:`build_image`: ``repository:tag``
        self.image: str | None = None
        #: the image reference pushed last by :meth:`push_image`
        self.pushed_image: str | None = None
        #: what the last :meth:`build_image` did (tag, content hash, seconds, built or found)
        self.last_build: stepimage.StepImage | None = None
        self._client: Any = None
        #: the execution units of the pipeline built last (:meth:`compile`, :meth:`run`,
        #: :meth:`run_local`): ``str()`` of it says which nodes share a step and why
        self.last_units: Units | None = None
        self.set_fusion(True, max_units=DEFAULT_MAX_STEPS)
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

    def set_kfp_host(self, kfp_host: str) -> None:
        """Set the address of the KFP API (``http://host:port``)."""
        if not isinstance(kfp_host, str) or not re.match(r"^https?://[^\s/]+", kfp_host):
            raise ConfigurationError(f"kfp_host {kfp_host!r} must be a URL such as 'http://localhost:3000'.")
        self.kfp_host = kfp_host.rstrip("/")
        self._client = None

    def set_step_storage(self, object_storage: StorageProtocol | None) -> None:
        """The storage as the steps see it, when it differs from :meth:`set_storage`'s
        (e.g. an S3 endpoint inside the cluster: ``http://minio.ns.svc:9000``)."""
        if object_storage is not None and not isinstance(object_storage, StorageProtocol):
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

    def set_service_account(self, name: str | None) -> None:
        """Run the steps of submitted runs as the Kubernetes ServiceAccount *name* (None:
        KFP's default, ``pipeline-runner``)."""
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name)):
            raise ConfigurationError(f"Service account {name!r} must be a Kubernetes name such as 'ff-kfp-runner'.")
        self.service_account = name

    def set_image_pull_secrets(self, names: list[str] | tuple[str, ...]) -> None:
        """Give every step these Kubernetes Secrets to pull the step image (a node's own
        ``image_pull_secrets`` step option replaces them for its step)."""
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise ConfigurationError(f"Image pull secrets must be a list of Secret names, not {names!r}.")
        self.image_pull_secrets = list(names)

    def set_cluster_settings(
        self, source: str | os.PathLike | kfpsettings.KFPSettings, *, context: str | None = None
    ) -> kfpsettings.KFPSettings:
        """Use the settings the functionfuse-kfp chart publishes for the steps (a
        ConfigMap labelled ``functionfuse.io/kfp-settings``; see
        :mod:`functionfuse.kit.kfpsettings`).

        :param source: a file holding the ConfigMap (YAML or JSON, e.g. ``kubectl get
            configmap NAME -o yaml``), or ``NAMESPACE`` / ``NAMESPACE/NAME`` to read it
            with kubectl from the current kube context (or *context*), or settings read
            before.
        :returns: the settings read. They set, when the ConfigMap has them: the step
            storage (S3, with the endpoint and region of the cluster) and the Secret of
            its credentials, the ServiceAccount of submitted runs, the image pull Secret
            of every step, the pipeline root of submitted runs, and the base image of
            the step image unless one was chosen (the default ``"python"`` is replaced).
            Later calls of the setters override them.
        """
        settings = source if isinstance(source, kfpsettings.KFPSettings) else \
            kfpsettings.read_kfp_settings(source, context=context)
        options = settings.storage_options()
        if options is not None:
            from ...storage import storage_factory

            self.set_step_storage(storage_factory(options))
        keys = settings.secret_keys()
        if settings.s3_secret is not None and keys is not None:
            self.set_storage_secret(settings.s3_secret, keys)
        if settings.service_account is not None:
            self.set_service_account(settings.service_account)
        if settings.image_pull_secret is not None:
            self.set_image_pull_secrets([settings.image_pull_secret])
        if settings.pipeline_root is not None:
            self.pipeline_root = settings.pipeline_root
        if settings.image is not None and self.baseimage == _DEFAULT_BASE:
            self.set_baseimage(settings.image)
        self.cluster_settings = settings
        return settings

    # -- the image ---------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The DAG snapshot the image holds (cloudpickle; raises SerializationError
        naming the node whose function or arguments do not pickle)."""
        return _kfpstep.dump_snapshot(self)

    # -- the pipeline ------------------------------------------------------------------
    def _storage_for_steps(self) -> tuple[str | None, dict[str, str]]:
        """The step storage encoded for the command line, without credentials, and the
        credentials taken out, as environment variables (the storage's own
        ``credential_free_copy``)."""
        storage = self.step_storage if self.step_storage is not None else self.storage
        if storage is None:
            return None, {}
        free = storage.credential_free_copy()
        return _kfpstep.encode_storage(free.storage), dict(free.env)

    def _platform(self) -> dict[str, Any]:
        """Kubernetes settings of every step: Secrets as environment variables (storage
        credentials, the signing key) and the image pull Secrets."""
        platform: dict[str, Any] = {}
        secrets = {name: dict(keys) for name, keys in self._storage_secret.items()}
        if self._signing_secret is not None:
            secrets.setdefault(self._signing_secret[0], {})[_signing.ENV_KEY] = self._signing_secret[1]
        if secrets:
            platform["secret_env"] = secrets
        if self.image_pull_secrets:
            platform["image_pull_secrets"] = list(self.image_pull_secrets)
        return platform

    def plan_actions(self) -> list[str] | None:
        """The action of each node for a run starting now (None without storage)."""
        if self.storage is None:
            return None
        return self.resume_actions()

    # -- execution units: one container step per unit -----------------------------------
    def set_fusion(self, enabled: bool = True, *, max_units: int | None = DEFAULT_MAX_STEPS) -> None:
        """One container step per execution unit (see :mod:`functionfuse.units`): linear
        chains of nodes run in one step, and units are merged until at most *max_units*
        steps remain (default 10; ``None``: no limit). ``set_fusion(False)``: one step per
        node (groups made with ``query(...).set_group`` are still one step each). Inside
        a step every node's result is stored as soon as it is computed; reports, plans
        and errors name nodes. Nodes with different step options (resources, retries,
        env, ...), plugins, and class and method nodes never share a step.
        :meth:`units` (or :attr:`last_units` after :meth:`compile`) says how the steps
        were chosen."""
        super().set_fusion(enabled, max_units=max_units)

    def fusion_key(self, i: int) -> Any:
        """Node *i*'s fusion key: the core's (plugins; ``None`` for class and method
        nodes) with its step options (:meth:`Query.set_task_args`) by value, so nodes
        launched differently never share a container step."""
        base = super().fusion_key(i)
        if base is None:
            return None
        return (base, options_key(self._task_args.get(i, {})))

    def step_units(self, plan: Any = None) -> Units:
        """The execution units of the pipeline's steps: those of *plan* (a :class:`Plan`
        from :meth:`plan`), or, without one, of a run of every node (a pipeline compiled
        with ``resume="auto"``, whose steps decide when they run). ``str()`` of it is the
        report of how the steps were chosen."""
        return self.units(plan if plan is not None else self.make_plan(None))

    def _resume_plan(self) -> Any:
        """The plan of a run starting now (None without storage), warned about as
        :meth:`resume_actions` warns."""
        if self.storage is None:
            return None
        plan = self.make_plan(self.stored_metadata())
        self.warn_stale(plan)
        if plan.unreadable:
            self.warn_unreadable(plan.unreadable)
        return plan

    def pipeline(self, image: str | None = None, *, plan: Any = None, local: bool = False) -> Any:
        """The ``kfp.dsl`` pipeline of this workflow (see :meth:`compile`); *plan*: the plan
        whose units and actions the steps follow (None: every node has a step that decides
        when it runs)."""
        storage_arg, _env = self._storage_for_steps()
        units = self.step_units(plan)
        self.last_units = units
        log.info("workflow %r: %s", self.workflow_name, units)
        pipeline, _outputs = _kfppipeline.build_pipeline(
            self,
            image or self._pull_reference(self.image_reference()),
            units=units.steps,
            storage_arg=storage_arg,
            actions=plan.actions if plan is not None else None,
            task_options=self._task_args,
            platform=self._platform(),
            display_names=not local,
        )
        return pipeline

    def compile(self, package_path: str | os.PathLike, *, image: str | None = None, resume: str = "auto") -> str:
        """Write the KFP v2 pipeline YAML to *package_path*; returns the path.

        One container step per execution unit (:meth:`step_units`; a step of one node
        is named after it), depending on the steps of its nodes' parents; how the steps
        were chosen is :attr:`last_units` afterwards (also logged). Works offline,
        without Docker.

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
        plan = self._resume_plan() if resume == "plan" else None
        path = os.fspath(package_path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        _compiler.Compiler().compile(self.pipeline(image, plan=plan), path)
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
            plan = self._resume_plan()
        except (StorageError, OSError) as exc:
            log.warning("storage cannot be read from here (%s): each step will decide when it runs", exc)
            plan = None
        with tempfile.TemporaryDirectory(prefix="functionfuse-kfp-") as tmp:
            package = os.path.join(tmp, f"{_kfppipeline.pipeline_name(self.workflow_name)}.yaml")
            _compiler.Compiler().compile(self.pipeline(image, plan=plan), package)
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
                pipeline_root=self.pipeline_root,
                service_account=self.service_account,
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
        return _kfplocal.run_local(self, pipeline_root=pipeline_root, environment=environment, mounts=mounts)
