"""The settings the functionfuse-kfp chart publishes for KFPWorkflow steps.

The chart (``charts/functionfuse-kfp``) writes them into a ConfigMap of the namespace
where KFP runs the steps, labelled ``functionfuse.io/kfp-settings`` (its value is the
format version, ``v1``). :func:`read_kfp_settings` reads it

* from a file: the ConfigMap as YAML or JSON (``kubectl get configmap NAME -o yaml``, or
  a ``helm template`` render: the labelled ConfigMap among the documents), a ``List``, or
  a plain ``{key: value}`` mapping of its data;
* from a cluster with ``kubectl get configmap -n NAMESPACE -l functionfuse.io/kfp-settings
  -o json`` (or by name), with the current kube context or the one given.

=================================== ====================================================
key                                 meaning
=================================== ====================================================
``FUNCTIONFUSE_KFP_IMAGE``          the functionfuse KFP image (a base for step images)
``FUNCTIONFUSE_STORAGE``            ``s3://bucket/prefix`` of the stored results
``FUNCTIONFUSE_S3_ENDPOINT``        the S3 endpoint the steps reach ("" : AWS)
``AWS_DEFAULT_REGION``              its region
``FUNCTIONFUSE_S3_SECRET``          the Secret with the S3 credentials ("" : none)
``FUNCTIONFUSE_S3_ACCESS_KEY_KEY``  the key of the access key in that Secret
``FUNCTIONFUSE_S3_SECRET_KEY_KEY``  the key of the secret key in that Secret
``FUNCTIONFUSE_KFP_SERVICE_ACCOUNT`` the ServiceAccount the steps run as
``FUNCTIONFUSE_KFP_IMAGE_PULL_SECRET`` the Secret that pulls the step image ("" : none)
``FUNCTIONFUSE_KFP_PIPELINE_ROOT``  the pipeline root of runs
=================================== ====================================================

An empty value, or a key that is missing, is a setting not made; other keys are ignored.

>>> s = settings_from_data({"FUNCTIONFUSE_STORAGE": "s3://results/team",
...                         "FUNCTIONFUSE_S3_ENDPOINT": "http://seaweedfs.kubeflow:9000",
...                         "FUNCTIONFUSE_KFP_SERVICE_ACCOUNT": "ff-runner"}, "example")
>>> s.storage_options()
{'kind': 'S3', 'options': {'path': 'results/team', 's3fs': {'endpoint_url': 'http://seaweedfs.kubeflow:9000'}}}
>>> s.service_account, s.image_pull_secret
('ff-runner', None)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigurationError, KFPSettingsError

__all__ = [
    "LABEL",
    "FORMAT",
    "KEYS",
    "KFPSettings",
    "KFPSettingsError",
    "settings_from_data",
    "read_settings_file",
    "read_cluster_settings",
    "read_kfp_settings",
]

#: the label of the settings ConfigMap; its value is the format of the keys
LABEL = "functionfuse.io/kfp-settings"
FORMAT = "v1"
#: the keys read, and the field of :class:`KFPSettings` each one sets
KEYS = {
    "FUNCTIONFUSE_KFP_IMAGE": "image",
    "FUNCTIONFUSE_STORAGE": "storage",
    "FUNCTIONFUSE_S3_ENDPOINT": "s3_endpoint",
    "AWS_DEFAULT_REGION": "region",
    "FUNCTIONFUSE_S3_SECRET": "s3_secret",
    "FUNCTIONFUSE_S3_ACCESS_KEY_KEY": "access_key_key",
    "FUNCTIONFUSE_S3_SECRET_KEY_KEY": "secret_key_key",
    "FUNCTIONFUSE_KFP_SERVICE_ACCOUNT": "service_account",
    "FUNCTIONFUSE_KFP_IMAGE_PULL_SECRET": "image_pull_secret",
    "FUNCTIONFUSE_KFP_PIPELINE_ROOT": "pipeline_root",
}


@dataclass(frozen=True)
class KFPSettings:
    """What the chart's settings ConfigMap says; None: not set."""

    source: str  #: where they were read (a file, or namespace/name), for messages
    image: str | None = None
    storage: str | None = None
    s3_endpoint: str | None = None
    region: str | None = None
    s3_secret: str | None = None
    access_key_key: str | None = None
    secret_key_key: str | None = None
    service_account: str | None = None
    image_pull_secret: str | None = None
    pipeline_root: str | None = None

    def storage_options(self) -> dict[str, Any] | None:
        """The ``storage_factory`` options of the steps' storage (None: no storage set)."""
        if self.storage is None:
            return None
        path = self.storage[len("s3://"):] if self.storage.startswith("s3://") else self.storage
        s3fs: dict[str, Any] = {}
        if self.s3_endpoint:
            s3fs["endpoint_url"] = self.s3_endpoint
        if self.region:
            s3fs["client_kwargs"] = {"region_name": self.region}
        options: dict[str, Any] = {"path": path.strip("/")}
        if s3fs:
            options["s3fs"] = s3fs
        return {"kind": "S3", "options": options}

    def secret_keys(self) -> dict[str, str] | None:
        """``{environment variable: key of the Secret}`` for the S3 credentials (None: no
        Secret; the steps then use the identity of their service account)."""
        if self.s3_secret is None:
            return None
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_key or "accessKey",
            "AWS_SECRET_ACCESS_KEY": self.secret_key_key or "secretKey",
        }


def settings_from_data(data: Mapping[str, Any], source: str) -> KFPSettings:
    """The settings in the ``data`` of the ConfigMap read from *source*."""
    if not isinstance(data, Mapping):
        raise KFPSettingsError(f"The KFP settings of {source} are not a mapping of keys to values: {data!r}.")
    values: dict[str, str | None] = {}
    for key, field in KEYS.items():
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise KFPSettingsError(f"Setting {key!r} of {source} must be a string, not {value!r}.")
        values[field] = value.strip() if value and value.strip() else None
    storage = values["storage"]
    if storage is not None and not storage.startswith("s3://"):
        raise KFPSettingsError(f"FUNCTIONFUSE_STORAGE of {source} must be s3://bucket[/prefix], not {storage!r}.")
    return KFPSettings(source=source, **values)


def _documents(text: str, path: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    try:
        import yaml  # a kfp dependency
    except ImportError as exc:  # pragma: no cover - the kfp extra installs it
        raise KFPSettingsError(f"{path!r} is not JSON, and reading YAML needs PyYAML (pip install pyyaml).") from exc
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise KFPSettingsError(f"{path!r} is neither JSON nor YAML: {exc}") from exc


def _config_maps(doc: Any) -> list[Mapping[str, Any]]:
    if not isinstance(doc, Mapping):
        return []
    if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
        return [m for d in doc.get("items") or [] for m in _config_maps(d)]
    return [doc] if doc.get("kind") == "ConfigMap" else []


def _labelled(maps: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [m for m in maps if LABEL in ((m.get("metadata") or {}).get("labels") or {})]


def _name(m: Mapping[str, Any]) -> str:
    meta = m.get("metadata") or {}
    return f"{meta.get('namespace') or '?'}/{meta.get('name') or '?'}"


def _one(maps: list[Mapping[str, Any]], where: str, name: str | None) -> Mapping[str, Any]:
    """The settings ConfigMap among *maps*: the one named *name*, else the one labelled."""
    if name is not None:
        named = [m for m in maps if (m.get("metadata") or {}).get("name") == name]
        if not named:
            raise KFPSettingsError(f"No ConfigMap {name!r} in {where}.")
        return named[0]
    found = _labelled(maps)
    if not found:
        raise KFPSettingsError(
            f"No ConfigMap labelled {LABEL!r} in {where}: install the functionfuse-kfp chart there "
            "(helm install ... charts/functionfuse-kfp), or name the ConfigMap."
        )
    if len(found) > 1:
        raise KFPSettingsError(
            f"Several ConfigMaps labelled {LABEL!r} in {where} ({', '.join(map(_name, found))}): name the one to use."
        )
    return found[0]


def read_settings_file(path: str | os.PathLike, name: str | None = None) -> KFPSettings:
    """The settings in the file *path* (see the module documentation for its forms)."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise KFPSettingsError(f"Cannot read the KFP settings file {path!r}: {exc.strerror or exc}.") from exc
    docs = _documents(text, path)
    maps = [m for d in docs for m in _config_maps(d)]
    if not maps:
        if len(docs) == 1 and isinstance(docs[0], Mapping) and "kind" not in docs[0]:
            return settings_from_data(docs[0], path)  # the data alone
        raise KFPSettingsError(f"{path!r} holds no ConfigMap (and is not a mapping of settings).")
    chosen = maps[0] if len(maps) == 1 and name is None else _one(maps, repr(path), name)
    return settings_from_data(chosen.get("data") or {}, f"{path} ({_name(chosen)})")


def read_cluster_settings(
    namespace: str, name: str | None = None, *, context: str | None = None, kubectl: str = "kubectl",
    timeout: float = 60,
) -> KFPSettings:
    """The settings ConfigMap of *namespace*, read with ``kubectl`` (the labelled one, or
    the one named *name*), from the current kube context or *context*."""
    if not isinstance(namespace, str) or not namespace:
        raise ConfigurationError(f"The namespace of the KFP settings must be a name, not {namespace!r}.")
    exe = shutil.which(kubectl)
    if exe is None:
        raise KFPSettingsError(
            f"Reading the KFP settings of namespace {namespace!r} needs {kubectl!r}, which is not on PATH: install "
            "kubectl (https://kubernetes.io/docs/tasks/tools/), or save the ConfigMap to a file and read that."
        )
    cmd = [exe, *(["--context", context] if context else []), "get", "configmap", "-n", namespace, "-o", "json"]
    cmd += [name] if name else ["-l", LABEL]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise KFPSettingsError(f"kubectl did not answer within {timeout:g} s reading the KFP settings of {namespace!r}.")
    where = f"namespace {namespace!r}" + (f" (context {context!r})" if context else "")
    if proc.returncode != 0:
        raise KFPSettingsError(f"kubectl could not read the KFP settings of {where}: {proc.stderr.strip()[-2000:]}")
    try:
        doc = json.loads(proc.stdout)
    except ValueError as exc:
        raise KFPSettingsError(f"kubectl printed no JSON for the KFP settings of {where}: {exc}") from exc
    maps = _config_maps(doc)
    chosen = _one(maps, where, name)
    return settings_from_data(chosen.get("data") or {}, _name(chosen))


def read_kfp_settings(source: str | os.PathLike, *, context: str | None = None) -> KFPSettings:
    """The settings from *source*: an existing file, else ``NAMESPACE`` or
    ``NAMESPACE/NAME`` read with kubectl."""
    text = os.fspath(source)
    if os.path.exists(text):
        return read_settings_file(text)
    namespace, _, name = text.partition("/")
    if os.sep in name or not namespace:
        raise KFPSettingsError(f"{text!r} is neither an existing file nor NAMESPACE[/NAME].")
    return read_cluster_settings(namespace, name or None, context=context)
