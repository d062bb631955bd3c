"""File storage: one framed file per result under ``path/workflow_name``.

Layout of a workflow folder::

    path/workflow_name/<task>.ffr                 a result (see functionfuse.storage.frame)
    path/workflow_name/<task>.<token>.data/       serializer files of that result, if any
    path/workflow_name/.tmp/                      writes in progress

A write goes to ``.tmp``, is flushed with fsync and renamed into place, and the
folder is fsynced: a reader sees the old result or the new one, never a part.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from ..errors import ConfigurationError, StorageError
from ..serializers import FILE_PROTOCOL, TaskFiles
from ..workflow import name_problem, validate_name
from . import frame
from .base import Storage
from .frame import iter_pieces

__all__ = ["FileStorage"]

SUFFIX = ".ffr"
_TMP = ".tmp"
_RUNS = ".runs"
_KEEP_RUNS = 100
_STALE_TMP_SECONDS = 24 * 3600
_MAX_WRITE = 1 << 30


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # not supported (e.g. some network file systems)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, pieces: Iterable[Any]) -> None:
    for mv in iter_pieces(pieces):
        n = mv.nbytes
        off = 0
        while off < n:
            off += os.write(fd, mv[off : off + _MAX_WRITE])


class FileStorage(Storage):
    """Local file storage. Pickle (protocol 5) is used to save results of the graph nodes.

    :param path: folder of the storage; results of a workflow go to ``path/workflow_name``.
    """

    protocol = FILE_PROTOCOL

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ConfigurationError(f"FileStorage path must be a non-empty folder path, not {path!r}.")
        self.path = os.path.abspath(os.fspath(path))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ConfigurationError(f"FileStorage path {self.path!r} exists and is not a folder.")
        self._swept: set[str] = set()

    @classmethod
    def from_options(cls, options: dict) -> "FileStorage":
        unknown = set(options) - {"path"}
        if unknown or "path" not in options:
            raise ConfigurationError(
                f"File storage options are {{'path': ...}}; got {sorted(options)!r}. "
                'Use {"kind": "file", "options": {"path": "storage"}}.'
            )
        return cls(options["path"])

    def __repr__(self) -> str:
        return f"FileStorage({self.path!r})"

    def __getstate__(self) -> dict:
        return {"path": self.path, "_serializers": self._serializers, **self._signing_state()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._swept = set()

    # -- paths ----------------------------------------------------------------------
    def _wf(self, workflow_name: str) -> str:
        return os.path.join(self.path, workflow_name)

    def _file(self, workflow_name: str, task_name: str) -> str:
        return os.path.join(self.path, workflow_name, task_name + SUFFIX)

    def _data_dirs(self, workflow_name: str, task_name: str) -> list[tuple[str, str]]:
        rx = re.compile(re.escape(task_name) + r"\.([0-9a-f]{16})\.data")
        out = []
        try:
            with os.scandir(self._wf(workflow_name)) as it:
                for e in it:
                    m = rx.fullmatch(e.name)
                    if m:
                        out.append((m.group(1), e.path))
        except FileNotFoundError:
            pass
        return out

    def _prepare(self, workflow_name: str) -> str:
        tmp = os.path.join(self._wf(workflow_name), _TMP)
        os.makedirs(tmp, exist_ok=True)
        if workflow_name not in self._swept:  # leftovers of writes killed long ago
            self._swept.add(workflow_name)
            cutoff = time.time() - _STALE_TMP_SECONDS
            with os.scandir(tmp) as it:
                for e in it:
                    try:
                        if e.stat(follow_symlinks=False).st_mtime < cutoff:
                            shutil.rmtree(e.path) if e.is_dir() else os.remove(e.path)
                    except OSError:
                        pass
        return tmp

    # -- primitives -----------------------------------------------------------------
    def _publish(self, workflow_name: str, task_name: str, encode: Callable) -> dict:
        tmpdir = self._prepare(workflow_name)
        token = uuid.uuid4().hex[:16]
        staging = TaskFiles(os.path.join(tmpdir, token + ".data"))
        tmpfile = os.path.join(tmpdir, token + SUFFIX)
        final_data = os.path.join(self._wf(workflow_name), f"{task_name}.{token}.data")
        previous = self._previous_data(workflow_name, task_name)
        try:
            enc = encode({FILE_PROTOCOL: staging}, token)
            fd = os.open(tmpfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, enc.pieces)
                os.fsync(fd)
            finally:
                os.close(fd)
            if staging.used:
                _fsync_dir(staging.root)
                os.rename(staging.root, final_data)
            os.replace(tmpfile, self._file(workflow_name, task_name))
            _fsync_dir(self._wf(workflow_name))
        except BaseException:
            for p in (tmpfile, staging.root):
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                elif os.path.exists(p):
                    os.remove(p)
            raise
        # the previous version's serializer data is now unreachable
        if previous and previous != token:
            shutil.rmtree(os.path.join(self._wf(workflow_name), f"{task_name}.{previous}.data"), ignore_errors=True)
        return enc.header

    def _previous_data(self, workflow_name: str, task_name: str) -> str | None:
        """Data token of the result about to be replaced, if it has serializer data."""
        try:
            reader, size, where = self._open(workflow_name, task_name)
        except StorageError:
            return None
        try:
            with reader:
                header = frame.read_header(reader, where, size)
        except StorageError:  # damaged: its data folder is found by remove_task's scan
            return None
        return header.get("data") if header["meta"].get("serializers") else None

    def _open(self, workflow_name: str, task_name: str) -> tuple[Any, int, str]:
        path = self._file(workflow_name, task_name)
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise self._not_found(workflow_name, task_name, path) from None
        except IsADirectoryError:
            raise StorageError(f"{path} is a folder, not a stored result.") from None
        return f, os.fstat(f.fileno()).st_size, path

    def _data_protocols(self, workflow_name: str, task_name: str, token: str | None) -> dict:
        root = os.path.join(self._wf(workflow_name), f"{task_name}.{token}.data")
        return {FILE_PROTOCOL: TaskFiles(root)}

    def _task_names(self, workflow_name: str) -> list[str]:
        names = []
        try:
            with os.scandir(self._wf(workflow_name)) as it:
                for e in it:
                    n = e.name
                    if n.endswith(SUFFIX) and not n.startswith(".") and e.is_file():
                        names.append(n[: -len(SUFFIX)])
        except (FileNotFoundError, NotADirectoryError):
            pass
        return names

    def _remove(self, workflow_name: str, task_name: str) -> None:
        path = self._file(workflow_name, task_name)
        try:
            os.remove(path)
        except FileNotFoundError:
            raise self._not_found(workflow_name, task_name, path) from None
        for _, data in self._data_dirs(workflow_name, task_name):
            shutil.rmtree(data, ignore_errors=True)

    def _remove_workflow(self, workflow_name: str) -> None:
        path = self._wf(workflow_name)
        if not os.path.isdir(path):
            return
        # rename first so a concurrent reader never sees a half-removed workflow
        trash = os.path.join(self.path, f".removing-{uuid.uuid4().hex[:8]}")
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def save_run_report(self, workflow_name: str, report: dict) -> None:
        """Write *report* as ``path/workflow_name/.runs/<time>-<token>.json`` (atomically)."""
        validate_name(workflow_name, "Workflow name")
        tmpdir = self._prepare(workflow_name)
        runs = os.path.join(self._wf(workflow_name), _RUNS)
        os.makedirs(runs, exist_ok=True)
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}"
        name = f"{stamp}-{uuid.uuid4().hex[:8]}.json"
        tmp = os.path.join(tmpdir, name)
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(runs, name))
        reports = sorted(os.listdir(runs))
        for old in reports[: max(0, len(reports) - _KEEP_RUNS)]:
            os.remove(os.path.join(runs, old))

    def list_run_reports(self, workflow_name: str) -> list[dict]:
        """Stored run reports of the workflow, oldest first."""
        return list(reversed(list(self._run_reports(workflow_name))))

    def last_run_report(self, workflow_name: str) -> dict | None:
        """The newest stored run report of the workflow (one file read), or None."""
        return next(self._run_reports(workflow_name), None)

    def _run_reports(self, workflow_name: str) -> Iterator[dict]:
        """Readable run reports, newest first."""
        validate_name(workflow_name, "Workflow name")
        runs = os.path.join(self._wf(workflow_name), _RUNS)
        for name in sorted(os.listdir(runs), reverse=True) if os.path.isdir(runs) else []:
            try:
                with open(os.path.join(runs, name)) as f:
                    yield json.load(f)
            except (OSError, ValueError):
                continue

    def list_workflows(self, *, include_foreign: bool = False) -> list[str]:
        """Names of the workflows stored under ``path``, sorted.

        A folder whose name is not a valid workflow name (made by hand or by another
        tool) is left out, so it cannot break a listing of the others; with
        *include_foreign* it is listed too, for a caller that reports it (check each
        name with :func:`~functionfuse.workflow.name_problem`). Hidden folders
        (``.name``) are never listed.
        """
        try:
            with os.scandir(self.path) as it:
                names = [e.name for e in it if e.is_dir() and not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        if not include_foreign:
            names = [n for n in names if name_problem(n) is None]
        return sorted(names)
