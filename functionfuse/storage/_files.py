"""The file operations of :mod:`functionfuse.storage.filestorage`: opening without
following a link, fsync of files and folders, the locks that mark writes in progress,
sweeping leftovers of killed writes out of ``.tmp``, and writing a framed result
(hashed while it is written)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from typing import Any, Iterable

try:
    import fcntl
except ImportError:  # Windows: leftovers are judged by their times alone
    fcntl = None  # type: ignore[assignment]

from . import frame
from .frame import iter_pieces

__all__ = [
    "SUFFIX", "READ_FLAGS", "CREATE_FLAGS", "fsync_dir", "hold", "held", "remove_entry", "sweep_tmp", "write_result",
]

#: the file name suffix of a stored result
SUFFIX = ".ffr"
MAX_WRITE = 1 << 30
# leftovers in .tmp: removed when untouched this long...
STALE_TMP_SECONDS = 10 * 60
# ...and, of those untouched this long, the oldest while they exceed either cap
IDLE_TMP_SECONDS = 60
MAX_TMP_BYTES = 1 << 30
MAX_TMP_ENTRIES = 100
# never follow a link in the last component; never block on a FIFO
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: str) -> None:
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


def hold(fd: int) -> None:
    """Mark a write as live: it holds a lock on its ``.tmp/<token>.ffr`` until closed."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: the times decide
            pass


def held(path: str) -> bool:
    """Whether a live write holds the lock on *path* (a ``.tmp/<token>.ffr``)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def remove_entry(path: str) -> None:
    """Remove a file, link or folder without following a link (best effort, like
    ``rmtree(ignore_errors=True)``): a link is unlinked, never what it points to."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)  # refuses a link put in its place meanwhile
        else:
            os.unlink(path)
    except OSError:
        pass


def last_change(entry: os.DirEntry) -> tuple[float, int]:
    """When a leftover was last written (a folder: anything in it) and its bytes."""
    st = entry.stat(follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_mtime, st.st_size
    newest, size = st.st_mtime, 0
    for folder, dirs, files in os.walk(entry.path):  # follows no link
        for name in dirs + files:
            try:
                sub = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            newest = max(newest, sub.st_mtime)
            size += 0 if stat.S_ISDIR(sub.st_mode) else sub.st_size
    return newest, size


def sweep_tmp(tmp: str) -> None:
    """Remove leftovers of killed writes from *tmp*.

    A write in progress locks its ``<token>.ffr`` (see ``hold``): its entries are
    neither removed nor counted. Of the others, one untouched for
    ``STALE_TMP_SECONDS`` goes; of those untouched for ``IDLE_TMP_SECONDS``, the
    oldest go while they hold more than ``MAX_TMP_BYTES`` or ``MAX_TMP_ENTRIES``.
    Where locks are not supported, a write in progress is only protected by
    touching its files.
    """
    now = time.time()
    idle = []
    try:
        with os.scandir(tmp) as it:
            entries = list(it)
    except OSError:
        return
    for e in entries:
        if held(os.path.join(tmp, e.name.split(".", 1)[0] + SUFFIX)):
            continue
        try:
            changed, size = last_change(e)
        except OSError:
            continue
        if now - changed > STALE_TMP_SECONDS:
            remove_entry(e.path)
        elif now - changed > IDLE_TMP_SECONDS:
            idle.append((changed, size, e.path))
    idle.sort()
    total, count = sum(size for _, size, _ in idle), len(idle)
    for _, size, path in idle:
        if total <= MAX_TMP_BYTES and count <= MAX_TMP_ENTRIES:
            break
        remove_entry(path)
        total, count = total - size, count - 1


def write_all(fd: int, pieces: Iterable[Any]) -> None:
    for mv in iter_pieces(pieces):
        n = mv.nbytes
        off = 0
        while off < n:
            off += os.write(fd, mv[off : off + MAX_WRITE])


#: a result at least this large is hashed (sealed) while its payload is written
OVERLAP_FROM = 4 << 20


def write_result(fd: int, enc: frame.Encoded) -> None:
    """Write *enc* to the empty file *fd*. A large deferred encoding is sealed (its
    checksum and MAC computed) in a thread while its segments are written after room
    for the header, which is written last: hashing and writing both release the GIL, so
    the pass over the payload that checking (and signing) needs costs no extra time."""
    if enc.sealed or enc.size < OVERLAP_FROM:
        write_all(fd, enc.pieces)
        return
    failure: list[BaseException] = []

    def seal() -> None:
        try:
            enc.seal(parallel=False)  # one core hashes while the other copies into the page cache
        except BaseException as exc:  # noqa: BLE001 - re-raised in the writer
            failure.append(exc)

    sealer = threading.Thread(target=seal, name="functionfuse-seal", daemon=True)
    sealer.start()
    try:
        os.lseek(fd, enc.first_size, os.SEEK_SET)
        write_all(fd, enc.segments)
    finally:
        sealer.join()
    if failure:
        raise failure[0]
    first = memoryview(enc.first)
    off = 0
    while off < first.nbytes:
        off += os.pwrite(fd, first[off:], off)
