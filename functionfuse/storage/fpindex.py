"""The fingerprint index of a workflow: what a plan needs of every stored result, in one object.

Planning a run needs, for each stored result, the fingerprint record in its header.
Reading every header costs one request (one file open) per result; the index holds
them all in one object next to the results (``<workflow>/.fingerprint-index``), one
entry per result:

* the task name;
* the **identity** of the stored result the entry was made from, as the storage's
  listing shows it without reading the result: a file's device, inode, size,
  modification and change times (ns); an S3 object's ETag and size;
* the header's payload checksum and whether the header was signed;
* the node digest of the fingerprint record in the header, or that there is none.

An entry does not hold the record itself: a plan passes the current record of each node,
and an entry whose digest equals it stands for that record (equal digests: the same
code, arguments and inputs). A result whose digest differs (stale) is read from its
header, which has the record the plan's explanation needs. This keeps the index small
(about 150 bytes an entry), so reading it costs the same whatever the records hold.

**The index is a cache, never the truth.** An entry is used only when the identity the
listing shows now equals the one recorded: a result replaced (by another run, by
``storage.save``, by :meth:`~functionfuse.storage.base.Storage.sign_task`), removed
(``functionfuse storage rm``) or rewritten in place since has another identity (or is
not listed), and its header is read instead. An index that is missing, damaged (its
checksum line does not match), of another format version or another workflow's, is
ignored: every header is read, as without an index. With a signing key set, only an
index signed with that key (a keyed BLAKE3 tag over its body) and entries made from
signed headers are used.

What a run's plan saw is checked again when the run reads a result in the process
that planned (:func:`check_planned`): its payload checksum must be the one of the entry
(or header) the plan used, else the result was replaced after the plan and is refused as
damaged, so the run recomputes the node (reads in other processes, Ray workers, rely on
the identity check alone). The checksums belong to the run (:func:`planned_reads`, a
context variable its threads inherit), not to the storage object: another run sharing
the object, or a plan made without a run, neither changes nor ends the check. At worst
a stale entry costs a header read or a recompute, never a wrong value.

Entries are made from a header read while planning, with the identity listed *before*
it was read (a result replaced in between leaves an entry that no longer matches), and
from results a storage object saved itself, with the identity of the file it wrote.
The index is written atomically (a temporary file renamed into place; one PUT on S3),
at the end of a run and when a plan read headers; two writers race harmlessly: the
last one wins, and an entry the other had made is missing, so that header is read once
more. Removing the index (``storage.remove_fingerprint_index(workflow)``) is always safe.

The format is line based so that a plan reads 20,000 entries without building a JSON
object per entry: a first line of JSON (format, version, workflow), one line per entry
(tab-separated fields; task names cannot hold tabs or newlines), and a last line with
the xxh3-128 checksum of everything before it, or a signature.
"""

from __future__ import annotations

import hmac
import json
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import xxhash

from ..errors import CorruptedResultError
from ..graph import gc_paused
from . import signing

__all__ = [
    "IndexEntry", "FORMAT", "VERSION", "NAME", "parse", "render", "entry_line", "usable", "read_fingerprints",
    "save_index", "note_published", "check_planned", "planned_reads", "PlannedReads", "MAX_JOURNAL",
]

log = logging.getLogger("functionfuse.storage")

FORMAT = "functionfuse-fingerprint-index"
VERSION = 2
#: the object name of the index within a workflow (hidden: never listed as a task)
NAME = ".fingerprint-index"
#: what the signature of an index covers before its body (a result's tag starts with
#: its own preamble, b"FFRESULT...": the two can never be confused)
_TAG_PREFIX = b"FFINDEX1"
#: the node field of an entry stored without a fingerprint (a digest is hex)
NO_RECORD = "-"
_SEP = "\t"


class IndexEntry(NamedTuple):
    """One entry: the identity of the stored result, its header's checksum, whether the
    header was signed, and its node digest (*node*; "-" if it was stored without a
    fingerprint). *line* is the entry as stored."""

    identity: str
    checksum: str
    signed: bool
    node: str
    line: str

    def metadata(self, current: Mapping[str, Any] | None, name: str) -> dict:
        """What a plan needs: ``{"fingerprint": record or None, "checksum": ...}``: None
        if the result was stored without a fingerprint, else the current record of the
        node in *current* if its digest is the stored one (the same record).

        :raises LookupError: the stored record is another one (stale), or *current* has
            none for the node: read the result's header instead.
        """
        if self.node == NO_RECORD:
            return {"fingerprint": None, "checksum": self.checksum}
        record = current.get(name) if current is not None else None
        if record is None or record.get("node") != self.node:
            raise LookupError(name)
        return {"fingerprint": record, "checksum": self.checksum}


def entry_line(name: str, identity: str, meta: Mapping[str, Any]) -> str | None:
    """The index line of a result whose header gave *meta* (as ``read_metadata`` returns
    it, or the metadata of a header just written), or None if it cannot be indexed."""
    record = meta.get("fingerprint")
    checksum = meta.get("checksum")
    if not isinstance(checksum, str):
        return None
    if isinstance(record, dict):
        node = record.get("node")
        if not isinstance(node, str) or node == NO_RECORD:
            return None
    elif record is None:
        node = NO_RECORD
    else:
        return None
    fields = (name, identity, checksum, "1" if meta.get("signed") else "0", node)
    if any(_SEP in f or "\n" in f or "\r" in f for f in fields):
        return None
    return _SEP.join(fields)


def render(workflow_name: str, lines: Iterable[str], signer: signing.Signer | None) -> bytes:
    """The stored form of an index of *lines* (from :func:`entry_line`)."""
    head = json.dumps({"format": FORMAT, "version": VERSION, "workflow": workflow_name}, separators=(",", ":"))
    body = "\n".join([head, *lines]).encode("utf-8") + b"\n"
    if signer is not None:
        return body + b"tag " + signer.tag(_TAG_PREFIX, body).hex().encode() + b"\n"
    return body + b"xxh3 " + xxhash.xxh3_128_hexdigest(body).encode() + b"\n"


def parse(data: bytes | None, workflow_name: str, signer: signing.Signer | None) -> dict[str, IndexEntry]:
    """The entries of a stored index by task name; empty if there is none, or it is
    damaged, of another format or workflow, or (with *signer*) not signed with its key."""
    if not data:
        return {}
    try:
        cut = data.rindex(b"\n", 0, len(data) - 1) + 1
        body, last = data[:cut], data[cut:].rstrip(b"\n")
        kind, _, check = last.partition(b" ")
        if kind == b"tag":
            if signer is None:
                ok = True  # no key here: nothing asks for authenticity (as for results)
            else:
                ok = hmac.compare_digest(check, signer.tag(_TAG_PREFIX, body).hex().encode())
        elif kind == b"xxh3":
            ok = signer is None and hmac.compare_digest(check, xxhash.xxh3_128_hexdigest(body).encode())
        else:
            ok = False
        if not ok:
            log.debug("fingerprint index of workflow %r ignored: check or signature does not match", workflow_name)
            return {}
        lines = body.decode("utf-8").split("\n")
        head = json.loads(lines[0])
        if not (
            isinstance(head, dict)
            and head.get("format") == FORMAT
            and head.get("version") == VERSION
            and head.get("workflow") == workflow_name
        ):
            return {}
        out: dict[str, IndexEntry] = {}
        for line in lines[1:]:
            if not line:
                continue
            fields = line.split(_SEP)
            if len(fields) != 5:
                return {}
            name, identity, checksum, signed, node = fields
            out[name] = IndexEntry(identity, checksum, signed == "1", node, line)
        return out
    except (ValueError, UnicodeDecodeError, RecursionError):
        log.debug("fingerprint index of workflow %r ignored: not readable", workflow_name)
        return {}


def usable(entry: IndexEntry | None, identity: str, signer: signing.Signer | None) -> bool:
    """Whether *entry* describes the stored result the listing shows with *identity*."""
    return entry is not None and entry.identity == identity and (signer is None or entry.signed)


# -- what a storage object does with it (the methods of Storage call these) --------------------------
def read_fingerprints(
    storage: Any, workflow_name: str, task_names: Iterable[str], current: Mapping[str, Any] | None
) -> dict[str, Any]:
    """See :meth:`functionfuse.storage.base.Storage.read_fingerprints`.

    The cyclic GC is paused meanwhile: the listing and the entries are many small
    objects without cycles, and collections they trigger would traverse everything the
    caller holds (the graph, the fingerprint records) again and again."""
    with gc_paused():
        return _read_fingerprints(storage, workflow_name, task_names, current)


def _read_fingerprints(
    storage: Any, workflow_name: str, task_names: Iterable[str], current: Mapping[str, Any] | None
) -> dict[str, Any]:
    listed: dict[str, str] | None = storage._identities(workflow_name)
    if listed is None:  # a kind that keeps no index
        wanted = storage.stored_tasks(workflow_name).intersection(task_names)
        return storage.read_metadata_many(workflow_name, sorted(wanted))
    signer = storage._signer()
    index = parse(_body(storage, workflow_name), workflow_name, signer)
    journal = dict(storage._fp_journal(workflow_name))  # a copy: other threads may save meanwhile
    out: dict[str, Any] = {}
    kept: dict[str, str] = {}  # task -> line of the index to write
    missing: list[str] = []
    for name in task_names:
        identity = listed.get(name)
        if identity is None:
            continue  # not stored
        entry = journal.get(name)
        if not usable(entry, identity, signer):
            entry = index.get(name)
        if entry is not None and identity and usable(entry, identity, signer):
            try:
                out[name] = entry.metadata(current, name)
            except LookupError:  # another record than the current one: read the header
                pass
            else:
                kept[name] = entry.line
                continue
        missing.append(name)
    made = 0
    if missing:
        for name, meta in storage.read_metadata_many(workflow_name, missing).items():
            if isinstance(meta, dict) and "fingerprint" not in meta:
                meta = {**meta, "fingerprint": None}  # stored without one
            out[name] = meta
            identity = listed.get(name)
            line = entry_line(name, identity, meta) if identity and isinstance(meta, dict) else None
            if line is not None:
                kept[name] = line
                old = index.get(name)
                made += old is None or old.line != line  # a stale entry read again is no change
    # results of this workflow the caller did not ask about keep a matching entry
    for source in (journal, index):
        for name, entry in source.items():
            if name not in kept and name not in out and entry.identity and usable(entry, listed.get(name, ""), signer):
                kept[name] = entry.line
    dropped = sum(1 for name, entry in index.items() if kept.get(name) != entry.line)
    if made or dropped or len(kept) != len(index):
        if kept:
            _write(storage, workflow_name, kept.values(), signer)
        else:  # nothing stored: no index (an empty one would keep a removed workflow's prefix)
            _delete(storage, workflow_name)
        _forget(storage, workflow_name, journal)
    return out


def save_index(storage: Any, workflow_name: str) -> None:
    """See :meth:`functionfuse.storage.base.Storage.save_fingerprint_index`."""
    journal = dict(storage._fp_journal(workflow_name))
    if not journal:
        return
    try:
        signer = storage._signer()
    except Exception as exc:  # noqa: BLE001 - e.g. a key that changed: the next plan reads the headers
        log.warning("fingerprint index of workflow %r not written: %s", workflow_name, exc)
        return
    lines = {name: entry.line for name, entry in parse(_body(storage, workflow_name), workflow_name, signer).items()}
    lines.update((name, entry.line) for name, entry in journal.items())
    if _write(storage, workflow_name, lines.values(), signer):
        _forget(storage, workflow_name, journal)


def note_published(storage: Any, workflow_name: str, task_name: str, identity: str, header: Mapping[str, Any]) -> None:
    """Remember the entry of a result *storage* has just written (the file or object it
    wrote has *identity*), for the index written at the end of the run."""
    if not storage._journal_saves:
        return
    planned = _PLANNED.get()
    if planned is not None and planned.storage is storage and planned.workflow == workflow_name:
        planned.saved(task_name, header.get("checksum"))  # the run replaced it: that is what is stored now
    meta = header.get("meta")
    meta = {
        "fingerprint": meta.get("fingerprint") if isinstance(meta, dict) else None,
        "checksum": header.get("checksum"),
        "signed": "mac" in header,
    }
    line = entry_line(task_name, identity, meta)
    journal = storage._fp_journal(workflow_name)
    if line is None or len(journal) >= MAX_JOURNAL:
        journal.pop(task_name, None)
        return
    fields = line.split(_SEP)
    journal[task_name] = IndexEntry(identity, fields[2], fields[3] == "1", fields[4], line)


class PlannedReads:
    """The payload checksums a run's plan saw stored (``{task: checksum}``), for the
    reads of one storage object and workflow (see :func:`planned_reads`)."""

    __slots__ = ("storage", "workflow", "checksums", "_saved")

    def __init__(self, storage: Any, workflow_name: str) -> None:
        self.storage = storage
        self.workflow = workflow_name
        self.checksums: dict[str, str] = {}
        self._saved: dict[str, str | None] = {}  # what the run stored itself, in any attempt

    def expect(self, stored: Mapping[str, Any] | None) -> None:
        """Check reads against *stored* (what the run's latest plan was made from), and
        the results the run saved itself since it began (a later attempt loads them)."""
        checksums = {
            name: m["checksum"]
            for name, m in (stored or {}).items()
            if isinstance(m, dict) and isinstance(m.get("checksum"), str)
        }
        for name, checksum in self._saved.items():
            if checksum is None:
                checksums.pop(name, None)
            else:
                checksums[name] = checksum
        self.checksums = checksums

    def saved(self, task_name: str, checksum: Any) -> None:
        """The run stored *task_name* with *checksum* (in this process)."""
        if isinstance(checksum, str):
            self.checksums[task_name] = self._saved[task_name] = checksum
        else:
            self.checksums.pop(task_name, None)
            self._saved[task_name] = None


#: the plan of the run in progress in this context (threads a run starts copy it)
_PLANNED: ContextVar[PlannedReads | None] = ContextVar("functionfuse_planned_reads", default=None)


@contextmanager
def planned_reads(storage: Any, workflow_name: str) -> Iterator[PlannedReads]:
    """While the block runs, reads of *workflow_name* from *storage* in this context
    are checked against the checksums :meth:`PlannedReads.expect` is given (a run's
    plan); threads the run starts must run in a copy of the context
    (:func:`contextvars.copy_context`) to be checked too."""
    planned = PlannedReads(storage, workflow_name)
    token = _PLANNED.set(planned)
    try:
        yield planned
    finally:
        _PLANNED.reset(token)


def check_planned(storage: Any, workflow_name: str, task_name: str, header: Mapping[str, Any], where: str) -> None:
    """Refuse a result read during a run that is not the one the run's plan saw.

    The plan read each result's checksum from the index (or its header); a result
    replaced since (by another process) has another one. It is then treated as damaged:
    the run recomputes the node instead of loading a value its plan did not judge.
    Reads outside a run (no :func:`planned_reads` in this context) are not checked.

    :raises CorruptedResultError: the checksums differ.
    """
    planned = _PLANNED.get()
    if planned is None or planned.storage is not storage or planned.workflow != workflow_name:
        return
    expected = planned.checksums.get(task_name)
    if expected is not None and header.get("checksum") != expected:
        raise CorruptedResultError(
            f"{where} is not the result this run planned with (checksum {header.get('checksum')}, planned "
            f"{expected}): it was replaced after the plan was made, so the node is recomputed.",
            path=where,
        )


#: entries a storage object remembers per workflow before the index is written, at most
#: (past that, the rest are read from their headers by the next plan)
MAX_JOURNAL = 200_000


def _body(storage: Any, workflow_name: str) -> bytes | None:
    try:
        return storage._index_body(workflow_name)
    except Exception as exc:  # noqa: BLE001 - a cache: without it every header is read
        log.debug("fingerprint index of workflow %r not read: %s", workflow_name, exc)
        return None


def _write(storage: Any, workflow_name: str, lines: Iterable[str], signer: signing.Signer | None) -> bool:
    try:
        storage._put_index(workflow_name, render(workflow_name, lines, signer))
        return True
    except Exception as exc:  # noqa: BLE001 - a cache: the next plan reads those headers again
        log.warning("fingerprint index of workflow %r not written (the next run reads the results' headers): %s",
                    workflow_name, exc)
        return False


def _delete(storage: Any, workflow_name: str) -> None:
    try:
        storage._delete_index(workflow_name)
    except Exception as exc:  # noqa: BLE001 - a cache: its entries match nothing stored
        log.debug("fingerprint index of workflow %r not removed: %s", workflow_name, exc)


def _forget(storage: Any, workflow_name: str, written: Mapping[str, IndexEntry]) -> None:
    """Drop the journal entries that are in the index now (unless replaced meanwhile)."""
    journal = storage._fp_journal(workflow_name)
    for name, entry in written.items():
        if journal.get(name) is entry:
            journal.pop(name, None)
