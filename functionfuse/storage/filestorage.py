"""File storage: one framed file per result under ``path/workflow_name``.

Layout of a workflow folder::

    path/workflow_name/<task>.ffr                 a result (see functionfuse.storage.frame)
    path/workflow_name/<task>.<token>.data/       serializer files of that result, if any
    path/workflow_name/.tmp/                      writes in progress
    path/workflow_name/.runs/                     run reports
    path/workflow_name/.fingerprint-index         what plans read instead of every header
                                                  (a cache: functionfuse.storage.fpindex)
    path/.removing-<token>/                       a workflow being removed

A write goes to ``.tmp``, is flushed with fsync and renamed into place, and the
folder is fsynced: a reader sees the old result or the new one, never a part.

No symbolic link below ``path`` is followed (``path`` itself may be one), so nothing
the storage writes or removes is outside it: a workflow folder, ``.tmp`` or ``.runs``
that is a link is refused with a StorageError that names it; a result file or data
folder that is a link reads as damaged; removing a link unlinks the link only.
Leftovers of killed writes (in ``.tmp``) and of killed removals (``.removing-*``) are
swept by the first write of a storage object (docs/storage.md, "Symlinks and
leftovers"). A workflow removed while a result or run report is written is made
again, once; the second time the write fails with a StorageError.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from typing import Any, Callable

from ..errors import ConfigurationError, CorruptedResultError, StorageError
from ..serializers import FILE_PROTOCOL, TaskFiles
from ..workflow import name_problem
from . import _files, fpindex, frame, runreports
from .base import Storage

__all__ = ["FileStorage"]

SUFFIX = _files.SUFFIX
_TMP = ".tmp"
_TRASH = re.compile(r"\.removing-[0-9a-f]{8,32}")


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

    def _folder(self, path: str, *, create: bool = False) -> bool:
        """Whether the storage's own folder *path* is there (made first if *create*).

        A link in its place is refused, whatever it points to; so is anything else
        that is not a folder when the folder is to be written to.
        """
        if create:
            try:
                os.mkdir(path)
            except FileExistsError:
                pass
            except FileNotFoundError:
                try:
                    os.makedirs(path, exist_ok=True)
                except FileExistsError:  # a dangling link
                    pass
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(mode):
            raise StorageError(
                f"{path!r} is a symbolic link: file storage follows no link inside its folder "
                f"{self.path!r}, so that nothing it writes or removes can be outside it. Remove the link "
                "(it is made again as a folder when needed), or move the folder it points to into its place."
            )
        if stat.S_ISDIR(mode):
            return True
        if create:
            raise StorageError(f"{path!r} is not a folder, and file storage keeps its own files there. Move it away.")
        return False

    def _data_dirs(self, workflow_name: str, task_name: str) -> list[tuple[str, str]]:
        rx = re.compile(re.escape(task_name) + r"\.([0-9a-f]{16})\.data")
        out = []
        try:
            with os.scandir(self._wf(workflow_name)) as it:
                for e in it:
                    m = rx.fullmatch(e.name)
                    if m:
                        out.append((m.group(1), e.path))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    def _prepare(self, workflow_name: str) -> str:
        """Make (and check) the workflow folder and its ``.tmp``; return ``.tmp``.

        The first call of this object sweeps killed removals, the first per workflow
        killed writes."""
        if not self._swept:
            self._sweep_trash()
        wf = self._wf(workflow_name)
        self._folder(wf, create=True)
        tmp = os.path.join(wf, _TMP)
        self._folder(tmp, create=True)
        if workflow_name not in self._swept:
            self._swept.add(workflow_name)
            _files.sweep_tmp(tmp)
        return tmp

    def _sweep_trash(self) -> None:
        """Finish removals that were killed: ``.removing-*`` at the root (a link is unlinked)."""
        try:
            with os.scandir(self.path) as it:
                trash = [e.path for e in it if _TRASH.fullmatch(e.name) and (e.is_symlink() or e.is_dir())]
        except OSError:
            return
        for path in trash:
            _files.remove_entry(path)

    def _removed_while_running(self, workflow_name: str, what: str) -> StorageError:
        return StorageError(
            f"Workflow {workflow_name!r} was removed while running: its folder {self._wf(workflow_name)!r} "
            f"vanished twice while {what} was written. Run the workflow again, and remove a workflow "
            "only when no run uses it."
        )

    # -- primitives -----------------------------------------------------------------
    def _publish(self, workflow_name: str, task_name: str, encode: Callable) -> dict:
        for _ in range(2):  # a workflow removed meanwhile is made again, once
            header = self._publish_once(workflow_name, task_name, encode)
            if header is not None:
                return header
        raise self._removed_while_running(workflow_name, f"the result of task {task_name!r}")

    def _publish_once(self, workflow_name: str, task_name: str, encode: Callable) -> dict | None:
        """Write and commit one result; None if the workflow folder vanished meanwhile."""
        tmpdir = self._prepare(workflow_name)
        wf = os.path.dirname(tmpdir)
        token = uuid.uuid4().hex[:16]
        staging = TaskFiles(os.path.join(tmpdir, token + ".data"))
        tmpfile = os.path.join(tmpdir, token + SUFFIX)
        final_data = os.path.join(wf, f"{task_name}.{token}.data")
        previous = self._previous_data(workflow_name, task_name)
        try:
            # made (and locked) before the serializers run, so no sweep takes their files
            fd = os.open(tmpfile, _files.CREATE_FLAGS, 0o644)
        except FileNotFoundError:  # .tmp or the workflow folder was removed (remove_workflow)
            return None
        committed, identity = False, ""
        try:
            _files.hold(fd)
            enc = encode({FILE_PROTOCOL: staging}, token)
            try:
                _files.write_result(fd, enc)
                os.fsync(fd)
                if staging.used:
                    _files.fsync_dir(staging.root)
                    os.rename(staging.root, final_data)
                os.replace(tmpfile, self._file(workflow_name, task_name))
                committed = True
                identity = _identity(os.fstat(fd))  # of the file written, whatever replaces it later
            except FileNotFoundError:  # as above
                pass
        finally:
            os.close(fd)
            if not committed:
                for p in (tmpfile, staging.root, final_data):  # fresh names: only ever this write's
                    _files.remove_entry(p)
        if not committed:
            return None
        _files.fsync_dir(wf)
        fpindex.note_published(self, workflow_name, task_name, identity, enc.header)
        # the previous version's serializer data is now unreachable
        if previous and previous != token:
            _files.remove_entry(os.path.join(wf, f"{task_name}.{previous}.data"))
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
        # read_header refuses a data token other than 16 hex digits, and serializers without one
        return header["data"] if header["meta"].get("serializers") else None

    def _open(self, workflow_name: str, task_name: str) -> tuple[Any, int, str]:
        path = self._file(workflow_name, task_name)
        if not self._folder(self._wf(workflow_name)):
            raise self._not_found(workflow_name, task_name, path)
        try:
            fd = os.open(path, _files.READ_FLAGS)
        except FileNotFoundError:
            raise self._not_found(workflow_name, task_name, path) from None
        except OSError:
            if not os.path.islink(path):
                raise
            raise CorruptedResultError(
                f"{path} is a symbolic link, not a stored result: file storage reads no result through "
                f"a link. Run the workflow again to replace it, or remove the link with "
                f"storage.remove_task({workflow_name!r}, {task_name!r}).",
                path=path,
            ) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{path} is a folder, not a stored result.")
            if not stat.S_ISREG(st.st_mode):
                raise CorruptedResultError(
                    f"{path} is not a regular file, not a stored result. Remove it with "
                    f"storage.remove_task({workflow_name!r}, {task_name!r}).",
                    path=path,
                )
            return open(fd, "rb", buffering=0), st.st_size, path
        except BaseException:
            os.close(fd)
            raise

    def _data_protocols(self, workflow_name: str, task_name: str, token: str | None) -> dict:
        # *token* comes from a header read_header checked: 16 hex digits, never a path
        where = self._file(workflow_name, task_name)
        root = os.path.join(self._wf(workflow_name), f"{task_name}.{token}.data")
        if os.path.islink(root):
            raise CorruptedResultError(
                f"The data folder {root} of stored result {where} is a symbolic link: file storage reads "
                f"no serializer data through a link. Run the workflow again to replace the result, or "
                f"remove it with storage.remove_task({workflow_name!r}, {task_name!r}).",
                path=root,
            )
        return {FILE_PROTOCOL: TaskFiles(root)}

    def _task_names(self, workflow_name: str) -> list[str]:
        """Results, and links in their place (they read as damaged, and can be removed)."""
        wf = self._wf(workflow_name)
        names: list[str] = []
        if not self._folder(wf):
            return names
        try:
            with os.scandir(wf) as it:
                for e in it:
                    n = e.name
                    if n.endswith(SUFFIX) and not n.startswith(".") and (e.is_symlink() or e.is_file()):
                        names.append(n[: -len(SUFFIX)])
        except (FileNotFoundError, NotADirectoryError):
            pass
        return names

    def _remove(self, workflow_name: str, task_name: str) -> None:
        path = self._file(workflow_name, task_name)
        if not self._folder(self._wf(workflow_name)):
            raise self._not_found(workflow_name, task_name, path)
        try:
            os.unlink(path)  # a link: the link only
        except FileNotFoundError:
            raise self._not_found(workflow_name, task_name, path) from None
        for _, data in self._data_dirs(workflow_name, task_name):
            _files.remove_entry(data)

    def _remove_workflow(self, workflow_name: str) -> None:
        self._sweep_trash()
        path = self._wf(workflow_name)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):  # the link only: what it points to is not this storage's
            _files.remove_entry(path)
            return
        if not stat.S_ISDIR(mode):
            return
        # rename first so a concurrent reader never sees a half-removed workflow
        trash = os.path.join(self.path, f".removing-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:  # a concurrent remove_workflow renamed it first
            return
        _files.remove_entry(trash)

    # -- the fingerprint index (see functionfuse.storage.fpindex) ---------------------------
    def _identities(self, workflow_name: str) -> dict[str, str]:
        """Every listed result (as :meth:`_task_names`) with its identity (lstat)."""
        wf = self._wf(workflow_name)
        out: dict[str, str] = {}
        if not self._folder(wf):
            return out
        n_suffix = len(SUFFIX)
        try:
            with os.scandir(wf) as it:
                for e in it:
                    n = e.name
                    if n.endswith(SUFFIX) and not n.startswith("."):
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:  # removed meanwhile
                            continue
                        mode = st.st_mode
                        if stat.S_ISREG(mode):
                            out[n[:-n_suffix]] = _identity(st)
                        elif stat.S_ISLNK(mode):
                            out[n[:-n_suffix]] = ""  # listed (it reads as damaged), never indexed
        except (FileNotFoundError, NotADirectoryError):
            pass
        return out

    def _index_body(self, workflow_name: str) -> bytes | None:
        try:
            with open(os.open(os.path.join(self._wf(workflow_name), fpindex.NAME), _files.READ_FLAGS), "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return None
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _put_index(self, workflow_name: str, body: bytes) -> None:
        """Write ``path/workflow_name/.fingerprint-index`` atomically (through ``.tmp``),
        never into a workflow folder that is gone (removed meanwhile)."""
        if not self._folder(self._wf(workflow_name)):
            return
        tmp = os.path.join(self._prepare(workflow_name), f"{uuid.uuid4().hex[:16]}.index")
        try:
            with open(os.open(tmp, _files.CREATE_FLAGS, 0o644), "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self._wf(workflow_name), fpindex.NAME))
        except BaseException:
            _files.remove_entry(tmp)
            raise

    def _delete_index(self, workflow_name: str) -> None:
        if self._folder(self._wf(workflow_name)):
            try:
                os.unlink(os.path.join(self._wf(workflow_name), fpindex.NAME))
            except FileNotFoundError:
                pass

    # -- run reports (see Storage.save_run_report) -----------------------------------------
    def _runs(self, workflow_name: str) -> str:
        return os.path.join(self._wf(workflow_name), runreports.FOLDER)

    def _put_report(self, workflow_name: str, name: str, body: bytes) -> None:
        """Write ``path/workflow_name/.runs/<name>`` atomically (through ``.tmp``)."""
        for _ in range(2):  # a workflow removed meanwhile is made again, once
            tmpdir = self._prepare(workflow_name)
            runs = self._runs(workflow_name)
            self._folder(runs, create=True)
            tmp = os.path.join(tmpdir, name)
            try:
                with open(os.open(tmp, _files.CREATE_FLAGS, 0o644), "wb") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, os.path.join(runs, name))
            except FileNotFoundError:
                _files.remove_entry(tmp)
                continue
            return
        raise self._removed_while_running(workflow_name, "its run report")

    def _report_names(self, workflow_name: str, *, after_write: bool = False) -> list[str]:
        runs = self._runs(workflow_name)
        if not self._folder(self._wf(workflow_name)) or not self._folder(runs):
            return []
        try:
            return os.listdir(runs)
        except OSError:
            return []

    def _read_report(self, workflow_name: str, name: str) -> bytes | None:
        try:
            with open(os.open(os.path.join(self._runs(workflow_name), name), _files.READ_FLAGS), "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    return None
                return f.read()
        except OSError:
            return None

    def _remove_reports(self, workflow_name: str, names: list[str]) -> None:
        runs = self._runs(workflow_name)
        for name in names:
            path = os.path.join(runs, name)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):  # a folder named like one is not a report
                    os.unlink(path)
            except FileNotFoundError:  # trimmed by a concurrent run
                pass

    # -- capabilities (see functionfuse.storage.protocol) ----------------------------------
    def local_path(self) -> str:
        """The storage folder (``path``): results are files on this machine."""
        return self.path

    def list_workflows(self, *, include_foreign: bool = False) -> list[str]:
        """Names of the workflows stored under ``path``, sorted.

        A folder whose name is not a valid workflow name (made by hand or by another
        tool) is left out, so it cannot break a listing of the others; with
        *include_foreign* it is listed too, for a caller that reports it (check each
        name with :func:`~functionfuse.workflow.name_problem`). Hidden folders
        (``.name``) are never listed, and a link to a folder is foreign: no link below
        the root is followed.
        """
        try:
            with os.scandir(self.path) as it:
                names = [
                    e.name for e in it
                    if not e.name.startswith(".")
                    and (e.is_dir(follow_symlinks=False) or (include_foreign and e.is_symlink() and e.is_dir()))
                ]
        except FileNotFoundError:
            return []
        if not include_foreign:
            names = [n for n in names if name_problem(n) is None]
        return sorted(names)


def _identity(st: os.stat_result) -> str:
    """What tells one stored file from any other that had its name: device, inode, size,
    modification and change times (a rename, a rewrite or a touch changes the last)."""
    return f"{st.st_dev:x}.{st.st_ino:x}.{st.st_size:x}.{st.st_mtime_ns:x}.{st.st_ctime_ns:x}"
