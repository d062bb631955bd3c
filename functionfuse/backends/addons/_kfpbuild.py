"""The step-image side of a KFPWorkflow: where the image comes from and where it goes.

:class:`StepImageBuilder` is a part of :class:`~functionfuse.backends.addons.kfpback.KFPWorkflow`
(its base image, project folder, wheelhouse, registry and credentials, and the build and
push of the step image). The image itself is the kit's (:mod:`functionfuse.kit.stepimage`):
this class gives it the workflow's inputs, with the kit's one Docker client.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Mapping

from ...errors import ConfigurationError
from ...kit import stepimage
from ...kit.images import REGISTRY_FORM, docker_client
from ...storage import StorageProtocol
from . import _kfppipeline

__all__ = ["StepImageBuilder"]

log = logging.getLogger("functionfuse.kfp")

_CREDENTIAL_KEYS = ("server", "username", "password")


def _host(server: str) -> str:
    return re.sub(r"^https?://", "", server).rstrip("/").split("/", 1)[0]


class StepImageBuilder:
    """The image settings and the build and push of a KFPWorkflow (a part of it)."""

    workflow_name: str
    storage: StorageProtocol | None
    step_storage: StorageProtocol | None
    baseimage: str
    project_dir: str
    project_exclude: list[str]
    wheelhouse: str | None
    image: str | None
    pushed_image: str | None
    last_build: stepimage.StepImage | None
    _credentials: dict[str, str]

    def snapshot(self) -> bytes:  # the workflow's (KFPWorkflow.snapshot)
        raise NotImplementedError

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

    def set_registry(self, server: str | None = None, *, username: str | None = None,
                     password: str | None = None) -> None:
        """Push to *server* (default: the registry set now), as *username* with *password*
        when given; otherwise with the user and password set now, if they are for the
        same registry host (they are never sent to another one).

        :raises ConfigurationError: no registry given or set.
        """
        target = server or self.registry
        if not target:
            raise ConfigurationError(
                "No registry the cluster pulls the step image from: give a server ('host[:port][/namespace]'), "
                "or set_registry_credentials({'server': ...}) first."
            )
        creds = {"server": target}
        if username is not None and password is not None:
            creds.update(username=username, password=password)
        elif self._credentials.get("username") and (not self.registry or _host(self.registry) == _host(target)):
            creds.update(username=self._credentials["username"], password=self._credentials.get("password", ""))
        self.set_registry_credentials(creds)

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

    def _excluded(self) -> list[str]:
        """Folders never copied into the image: storage on this machine and the wheelhouse."""
        out = []
        for storage in (self.storage, self.step_storage):
            path = storage.local_path() if storage is not None else None
            if path:
                out.append(path)
        if self.wheelhouse:
            out.append(self.wheelhouse)
        return out

    def _image_inputs(self, snapshot: bytes | None = None) -> stepimage.StepImageInputs:
        return stepimage.StepImageInputs(
            project=self.project_dir,
            snapshot=self.snapshot() if snapshot is None else snapshot,
            base_image=self.baseimage,
            check=(*_kfppipeline.STEP_COMMAND, "--check"),
            exclude=tuple(self._excluded()),
            patterns=tuple(self.project_exclude),
            wheelhouse=self.wheelhouse,
        )

    def image_reference(self) -> str:
        """The step image of the project and DAG as they are now, computed without Docker:
        ``repository:<content hash>``, what :meth:`build_image` gives (or finds built).

        The content hash covers the build context (functionfuse, the project, the DAG
        snapshot with its plugins and cache policies), the base image's name and the
        wheelhouse; so any change to those names another image.
        """
        tag = stepimage.image_tag(self._image_inputs())
        return f"{stepimage.repository_for(self.workflow_name)}:{tag}"

    def _pull_reference(self, local: str) -> str:
        """The reference the steps pull *local* by: pushed to the registry when one is set
        (what :meth:`push_image` gives), else *local* itself."""
        return stepimage.registry_reference(local, self.registry) if self.registry else local

    def build_image(
        self, *, on_log: Callable[[str], None] | None = stepimage.stderr_log, force: bool = False, nocache: bool = False
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
        inputs = self._image_inputs()
        client = docker_client()
        try:
            built = stepimage.build_step_image(
                client, inputs, workflow_name=self.workflow_name, on_log=on_log, force=force or nocache, nocache=nocache
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
        client = docker_client()
        try:
            self.pushed_image = stepimage.push_step_image(client, image, self._credentials)
        finally:
            client.close()
        log.info("pushed %s", self.pushed_image)
        return self.pushed_image
