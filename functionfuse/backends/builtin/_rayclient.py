"""``ray.init`` for RayWorkflow, with a clear error when a ``ray://`` cluster runs other versions.

Ray Client (``ray://host:10001``) needs the same Ray version and the same Python
major.minor on the laptop and on the cluster: Ray's own check
(``ray._private.utils.check_version_info`` with ``python_version_match_level="minor"``,
called by ``ray.util.client.RayAPIStub.connect``) runs only *after* the server accepted
the connection. Before that, the Ray Client proxy unpickles the client's ``JobConfig``
(``ray/util/client/server/proxier.py``, ``prepare_runtime_init_req``, Ray 2.60), so with
other versions ``ray.init`` usually fails first, with a server traceback
(``ConnectionAbortedError: Initialization failure from server``) or an unpickling error
that names neither version.

:func:`init_ray` calls ``ray.init`` as given. When a ``ray://`` connection fails, it asks
the cluster for its versions over a second connection that sends nothing pickled (an
empty job configuration, which the proxy does not unpickle), and when they differ from
this process's, raises :class:`~functionfuse.errors.VersionMismatchError` naming both
sides and the fix, chained to Ray's own error. Anything else is re-raised as it was,
with a note of this process's versions. A connection that succeeds costs nothing extra.
"""

from __future__ import annotations

import logging
import platform
import time
from typing import Any

from ...errors import VersionMismatchError

__all__ = ["init_ray", "local_versions", "cluster_versions", "mismatch"]

log = logging.getLogger("functionfuse.ray")


def local_versions() -> dict[str, str]:
    """``{"ray": ..., "python": ...}`` of this process."""
    import ray

    return {"ray": ray.__version__, "python": platform.python_version()}


def cluster_versions(address: str, *, retries: int = 1) -> dict[str, str]:
    """The Ray and Python versions of the cluster behind a ``ray://`` *address*.

    Opens a Ray Client session with an empty job configuration (nothing for the server to
    unpickle), reads its connection info and closes it.
    """
    from ray.util.client.worker import Worker

    conn = address[len("ray://"):] if address.startswith("ray://") else address
    worker = Worker(conn, connection_retries=retries)
    try:
        worker._server_init(None, {})  # type: ignore[arg-type]  # None: no pickled JobConfig
        info = worker.connection_info()
    finally:
        worker.close()
    return {"ray": str(info["ray_version"]), "python": str(info["python_version"])}


def _cluster_versions_retried(address: str, attempts: int = 3, pause: float = 2.0) -> dict[str, str]:
    """:func:`cluster_versions`, tried again after a pause: Ray 2.60's Ray Client proxy
    sometimes fails to start the server of a session opened right after another one
    closed, which is what happens after a refused ``ray.init``."""
    for attempt in range(attempts):
        try:
            return cluster_versions(address)
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(pause * (attempt + 1))
    raise AssertionError("unreachable")


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def mismatch(address: str, local: dict[str, str], cluster: dict[str, str]) -> VersionMismatchError | None:
    """The error for *local* vs *cluster* versions, or None when Ray Client accepts them."""
    if local["ray"] == cluster["ray"] and _minor(local["python"]) == _minor(cluster["python"]):
        return None
    want = f"Python {_minor(cluster['python'])} with `pip install 'ray[client]=={cluster['ray']}'`"
    return VersionMismatchError(
        f"Ray Client cannot use {address!r}: this process runs Ray {local['ray']} on Python {local['python']}, "
        f"the cluster Ray {cluster['ray']} on Python {cluster['python']}. Ray Client needs the same Ray version "
        f"and the same Python major.minor on both sides. Fix: run the driver in {want} (e.g. a virtual "
        "environment made with that Python), or run it on the cluster with `ray job submit` "
        "(the dashboard port, 8265), which has no such constraint.",
        local=local,
        cluster=cluster,
    )


def init_ray(args: dict[str, Any]) -> None:
    """``ray.init(**args)``; a failed ``ray://`` connection is explained by the versions."""
    import ray

    address = args.get("address")
    try:
        ray.init(**args)
    except Exception as exc:
        if not (isinstance(address, str) and address.startswith("ray://")):
            raise
        local = local_versions()
        try:
            cluster = _cluster_versions_retried(address)
        except Exception as probe:  # the cluster could not say: keep Ray's error, with what we know
            note = (f"functionfuse: this process runs Ray {local['ray']} on Python {local['python']}; Ray Client "
                    f"needs the cluster's Ray version and Python major.minor, which {address!r} did not report "
                    f"({type(probe).__name__}: {probe}).")
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(note)
            else:  # pragma: no cover - Python 3.10
                log.warning(note)
            raise
        error = mismatch(address, local, cluster)
        if error is None:
            raise
        raise error from exc
