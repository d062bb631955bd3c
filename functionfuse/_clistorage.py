"""The ``functionfuse storage`` commands: ls, show, runs, sign, rm."""

from __future__ import annotations

import argparse
import fnmatch
import json
import reprlib
import shlex
import sys
from typing import TYPE_CHECKING, Any

from ._clibase import _size, _storage, _table
from ._clitargets import NOT_IN_DAG, _not_in_dag_reason, _workflow
from .errors import (
    CorruptedResultError,
    ResultTooLargeError,
    SignatureError,
    SigningKeyError,
    StorageError,
    TaskNotFoundError,
    WorkflowNotFoundError,
)
from .workflow import name_problem, validate_name

if TYPE_CHECKING:
    from .storage.protocol import StorageProtocol

def _run_status(report: dict) -> str:
    from .report import outcome

    return outcome(report)


def _last_run_report(storage: StorageProtocol, workflow: str) -> dict | None:
    return storage.last_run_report(workflow)


def _workflow_names(storage: StorageProtocol) -> list[str]:
    """Every workflow folder (or prefix) of *storage*, foreign ones too."""
    return storage.list_workflows(include_foreign=True)


def _workflow_rows(storage: Any) -> list[dict]:
    """One row per stored workflow: tasks, their total size, the last write, the last run.

    A folder whose name is not a valid workflow name (made by hand or by another tool)
    gets a ``foreign`` row with a note instead: it is reported, never read or changed.
    """
    rows: list[dict] = []
    for wf in _workflow_names(storage):
        problem = name_problem(wf)
        if problem is not None:
            rows.append({"workflow": wf, "foreign": True,
                         "note": f"foreign: not a functionfuse workflow, left as it is: {problem}"})
            continue
        try:
            listed = storage.list_tasks(wf, "*")
            metas = storage.read_metadata_many(wf, [t for t in listed if name_problem(t) is None])
        except StorageError as exc:  # a linked folder, results signed with another key...
            rows.append({"workflow": wf, "foreign": True, "note": f"not read: {exc}"})
            continue
        try:
            last = _last_run_report(storage, wf)
        except StorageError:  # e.g. a .runs folder that is a link: the results are still listed
            last = None
        good = [m for m in metas.values() if isinstance(m, dict)]
        rows.append({
            "workflow": wf,
            "foreign": False,
            "tasks": len(metas),
            "corrupted": len(metas) - len(good),
            "foreign_tasks": len(listed) - len(metas),
            "size": sum(m.get("size") or 0 for m in good),
            "last_write": max((m["finished"] for m in good if m.get("finished")), default=None),
            "last_run": None if last is None else {
                "started": last.get("started"), "status": _run_status(last), "seconds": last.get("seconds"),
                "ran": last.get("ran"), "loaded": last.get("loaded"), "failed": last.get("failed"),
            },
        })
    return rows


def _ls_workflows(storage: Any, as_json: bool) -> int:
    rows = _workflow_rows(storage)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no workflows stored")
        return 0
    table = []
    for r in rows:
        if r["foreign"]:  # quoted: the name may end in a space, hold control characters or not be UTF-8
            shown = repr(r["workflow"])
            table.append([shown if len(shown) <= 60 else shown[:56] + "...'", "-", "-", "-", "-", r["note"]])
            continue
        run = r["last_run"]
        odd = [f"{r[k]} {what}" for k, what in (("corrupted", "corrupted"), ("foreign_tasks", "foreign")) if r[k]]
        tasks = f"{r['tasks']} ({', '.join(odd)})" if odd else str(r["tasks"])
        last = "-" if run is None else f"{(run['started'] or '-')[:19]} {run['status']}"
        table.append([r["workflow"], tasks, _size(r["size"]), (r["last_write"] or "-")[:19], last, ""])
    headers = ["workflow", "tasks", "size", "last write (UTC)", "last run (UTC)", "note"]
    if not any(r["foreign"] for r in rows):
        headers.pop()
        table = [row[:-1] for row in table]
    print(_table(table, headers))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    if args.graph:
        given = _storage(args.storage, must_exist=False) if args.storage else None
        wf = _workflow(args.graph, args.workflow, given, None, "listed")
        storage, workflow = wf.storage, wf.workflow_name
    else:
        storage, workflow = _storage(args.storage), args.workflow
        if not workflow:
            return _ls_workflows(storage, args.json)
    entries: dict[str, dict] = {}
    for task in storage.list_tasks(workflow, args.pattern):
        problem = name_problem(task)
        if problem is not None:  # a file another tool wrote: reported, never read
            entries[task] = {"task": task, "size": None, "finished": None, "status": "foreign",
                             "reason": f"not a functionfuse result, left as it is: {problem}"}
            continue
        try:
            meta = storage.read_metadata(workflow, task)
            if args.verify:
                storage.verify_task(workflow, task)
            entries[task] = {"task": task, "size": meta.get("size"), "finished": meta.get("finished"), "status": "stored"}
        except SignatureError as exc:  # unsigned, or changed without the key
            entries[task] = {"task": task, "size": None, "finished": None, "status": "unsigned", "reason": str(exc)}
        except CorruptedResultError as exc:
            entries[task] = {"task": task, "size": None, "finished": None, "status": "corrupted", "reason": str(exc)}
        except SigningKeyError as exc:
            entries[task] = {"task": task, "size": None, "finished": None, "status": "other key", "reason": str(exc)}
        except StorageError as exc:  # e.g. a newer result format: this task only, the listing goes on
            entries[task] = {"task": task, "size": None, "finished": None, "status": "unreadable", "reason": str(exc)}
    if args.graph:
        for p in wf.plan():
            if not fnmatch.fnmatchcase(p.name, args.pattern):
                continue
            entry = entries.setdefault(p.name, {"task": p.name, "size": None, "finished": None})
            if entry.get("status") not in _DAMAGED:
                entry["status"] = p.state
                if p.detail:
                    entry["reason"] = p.detail
        names = set(wf.graph.names)
        for entry in entries.values():
            if entry["task"] not in names and entry["status"] == "stored":
                entry.update(status=NOT_IN_DAG, reason=_not_in_dag_reason(wf, entry["task"], args.storage))
    rows = sorted(entries.values(), key=lambda r: r["task"])
    # with --verify, scripts can trust the exit code: 1 when a result cannot be used as it is
    failed = 1 if args.verify and any(r.get("status") in _DAMAGED for r in rows) else 0
    if args.json:
        print(json.dumps(rows, indent=2))
        return failed
    if not rows:
        print(f"no tasks stored for workflow {workflow!r}")
        return 0
    table = [
        [repr(r["task"]) if r["status"] == "foreign" else r["task"], _size(r["size"]) if r["size"] is not None else "-",
         (r["finished"] or "-")[:19], r["status"], r.get("reason", "")]
        for r in rows
    ]
    print(_table(table, ["task", "size", "finished (UTC)", "status", "reason"]))
    return failed


#: statuses of stored results that a run would not use as they are
_DAMAGED = frozenset({"corrupted", "unsigned", "other key"})


def _ls_command(args: argparse.Namespace, workflow: str | None = None) -> str:
    """The ``functionfuse storage ls`` command line that lists what *args* looked at."""
    ls = "functionfuse storage ls" + (f" {shlex.quote(workflow)}" if workflow else "")
    return ls + (f" --storage {shlex.quote(args.storage)}" if args.storage else "")


#: the largest stored result ``storage show --value`` loads unless --max-bytes says more
MAX_VALUE_BYTES = 64 * 1024 * 1024


def cmd_show(args: argparse.Namespace) -> int:
    storage = _storage(args.storage)
    try:
        meta = storage.read_metadata(args.workflow, args.task)
    except TaskNotFoundError:
        raise TaskNotFoundError(
            f"Workflow {args.workflow!r} has no stored task {args.task!r} in {storage!r}. "
            f"`{_ls_command(args, args.workflow)}` lists the stored tasks."
        ) from None
    shown = None
    if args.value:
        size = meta.get("size") or 0
        if size > args.max_bytes:
            raise ResultTooLargeError(
                f"Task {args.task!r} of workflow {args.workflow!r} stores {_size(size)} ({size} bytes), more than "
                f"--max-bytes {args.max_bytes} ({_size(args.max_bytes)}); it was not loaded. To load it anyway, "
                f"raise the limit: --max-bytes {size}."
            )
        shown = _value_repr(storage.read_task(args.workflow, args.task))
    if args.json:
        print(json.dumps(meta if shown is None else {**meta, "value": shown}, indent=2, default=str))
        return 0
    for key in ("workflow", "task", "kind", "function", "inputs", "started", "finished", "duration_s", "size", "checksum",
                "signed"):
        if key in meta:
            value = _size(meta[key]) if key == "size" else meta[key]
            print(f"{key:<11} {value}")
    for name, version in meta.get("versions", {}).items():
        print(f"{'version':<11} {name} {version}")
    fp = meta.get("fingerprint")
    if fp:
        print(f"{'fingerprint':<11} {fp['node']}")
        for name, digest in fp.get("code", {}).items():
            print(f"{'  code':<11} {name} {digest}")
    if shown is not None:
        print(f"{'value':<11} " + shown.replace("\n", "\n" + " " * 12))
    return 0


class _ShortRepr(reprlib.Repr):
    """reprlib's short repr, with the size of what it cuts and arrays as shape and dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 10
        self.maxstring = self.maxother = 200
        self.maxlong = 100

    def repr1(self, x: Any, level: int) -> str:
        if _is_array(x):
            return _array_header(x)
        text = super().repr1(x, level)
        if isinstance(x, (list, tuple, set, frozenset, dict)) and len(x) > self.maxlist:
            text += f" ({len(x)} items)"
        elif isinstance(x, (str, bytes)) and len(x) > self.maxstring:
            text += f" ({len(x)} {'characters' if isinstance(x, str) else 'bytes'})"
        return text


def _is_array(x: Any) -> bool:
    """NumPy, Dask, Zarr arrays, pandas frames and series (anything with a shape tuple and a dtype or columns)."""
    return isinstance(getattr(x, "shape", None), tuple) and (hasattr(x, "dtype") or hasattr(x, "columns"))


def _array_header(x: Any) -> str:
    kind = type(x)
    dtype = "" if hasattr(x, "columns") else f" dtype={x.dtype}"
    return f"{kind.__module__.split('.')[0]}.{kind.__qualname__} shape={x.shape}{dtype}"


def _value_repr(value: Any) -> str:
    """A short text of a stored value: arrays and frames as shape, dtype and their head;
    large containers and strings cut, with their size."""
    if not _is_array(value):
        return _ShortRepr().repr(value)
    header = _array_header(value)
    if hasattr(value, "head") and hasattr(value, "to_string"):  # pandas: the first rows
        return header + "\n" + value.head(5).to_string(max_cols=10)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return header + "\n" + numpy.array2string(value, threshold=50, edgeitems=3, max_line_width=100)
    return header  # a lazy array (Dask, Zarr): its values are not read


def cmd_runs(args: argparse.Namespace) -> int:
    storage = _storage(args.storage)
    reports = storage.list_run_reports(args.workflow)
    if args.last > 0:
        reports = reports[-args.last :]
    if args.json:
        print(json.dumps(reports, indent=2, default=str))
        return 0
    if not reports:
        print(f"no run reports stored for workflow {args.workflow!r}")
        return 0
    table = []
    for r in reports:
        slow = ", ".join(f"{name} {s:.2f} s" for name, s in (r.get("slowest") or [])[:3])
        table.append([
            (r.get("started") or "-")[:19], r.get("backend", "-"), _run_status(r),
            *(str(r.get(k, "-")) for k in ("nodes", "ran", "loaded", "skipped")),
            f"{r.get('seconds') or 0:.2f}", slow,
        ])
    print(_table(table, ["started (UTC)", "backend", "status", "nodes", "ran", "loaded", "skipped", "seconds", "slowest"]))
    return 0


def _selected_tasks(storage: Any, args: argparse.Namespace, verb: str = "remove") -> list[str]:
    """The tasks ``storage rm`` (or ``sign``) acts on: each NAME exactly, then what each
    --pattern matches."""
    names = [validate_name(n, "Task name") for n in dict.fromkeys(args.names)]
    if names:
        stored = set(storage.list_tasks(args.workflow, "*"))
        missing = [n for n in names if n not in stored]
        if missing:
            ls = _ls_command(args, args.workflow)
            globs = [n for n in missing if any(c in n for c in "*?[")]
            hint = "".join(f" To {verb} the tasks matching {g!r}, use --pattern {shlex.quote(g)}." for g in globs)
            raise TaskNotFoundError(
                f"Workflow {args.workflow!r} has no stored task {', '.join(map(repr, missing))}: nothing {verb}d. "
                f"`{ls}` lists the stored tasks.{hint}"
            )
    for pattern in args.pattern or ():  # files with names no task can have are foreign: left alone
        names.extend(n for n in storage.list_tasks(args.workflow, pattern) if n not in names and name_problem(n) is None)
    return names


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign the unsigned results of a workflow with this process's key, as they are."""
    storage = _storage(args.storage)
    if not args.names and not args.pattern:
        args.pattern = ["*"]
    names = _selected_tasks(storage, args, "sign")
    if not names:
        print(f"no task of workflow {args.workflow!r} to sign")
        return 0
    # a signature vouches for what is stored *now*: show what will be vouched for, and ask
    print(f"{len(names)} task(s) of workflow {args.workflow!r}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    refused = _confirmed(args, "Sign the unsigned ones, vouching for their content as it is now?", "sign", "signed")
    if refused is not None:
        return refused
    signed: list[str] = []
    already = problems = 0
    for name in names:
        try:
            if storage.sign_task(args.workflow, name):
                signed.append(name)
            else:
                already += 1
        except TaskNotFoundError:  # removed meanwhile
            continue
        except StorageError as exc:  # damaged, another key's, serializer files: left as they are
            problems += 1
            print(f"not signed: {exc}", file=sys.stderr)
    for name in signed:
        print(f"signed {name}")
    print(f"signed {len(signed)} task(s) of workflow {args.workflow!r}; {already} already signed with this key"
          + (f"; {problems} not signed (see above)" if problems else ""))
    return 1 if problems else 0


def _confirmed(args: argparse.Namespace, question: str, verb: str = "remove", done: str = "removed") -> int | None:
    """None if the change shown may go ahead (--yes, or "y" at a terminal), else the exit code."""
    if args.yes:
        return None
    if not sys.stdin.isatty():
        print(f"Refusing to {verb} without confirmation: pass --yes.", file=sys.stderr)
        return 2
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:  # Ctrl-D: no
        print()
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        print(f"Nothing {done}.")
        return 1
    return None


def _rm_workflow(args: argparse.Namespace) -> int:
    """``storage rm WORKFLOW --all``: every result, serializer file and run report of it."""
    workflow = validate_name(args.workflow, "Workflow name")
    storage = _storage(args.storage)
    if workflow not in _workflow_names(storage):
        raise WorkflowNotFoundError(
            f"No workflow {workflow!r} is stored in {storage!r}: nothing removed. `{_ls_command(args)}` lists the "
            "stored workflows."
        )
    tasks = storage.list_tasks(workflow, "*")
    metas = storage.read_metadata_many(workflow, [t for t in tasks if name_problem(t) is None])
    size = sum(m.get("size") or 0 for m in metas.values() if isinstance(m, dict))
    print(f"workflow {workflow!r}: {len(tasks)} task(s), {_size(size)}, and its run reports")
    refused = _confirmed(args, "Remove the whole workflow?")
    if refused is not None:
        return refused
    storage.remove_workflow(workflow)
    print(f"removed workflow {workflow!r}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    if args.all:
        if args.names or args.pattern:
            print("functionfuse storage rm: --all removes the whole workflow; give no NAME or --pattern with it",
                  file=sys.stderr)
            return 2
        return _rm_workflow(args)
    if not args.names and not args.pattern:
        print("functionfuse storage rm: name the tasks to remove (WORKFLOW NAME [NAME ...]) or select them with "
              "--pattern GLOB (e.g. --pattern '*' for every task), or remove the whole workflow with --all",
              file=sys.stderr)
        return 2
    storage = _storage(args.storage)
    names = _selected_tasks(storage, args)
    if not names:
        print(f"no task of workflow {args.workflow!r} matches {' or '.join(map(repr, args.pattern))}")
        return 0
    print(f"{len(names)} task(s) of workflow {args.workflow!r}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    refused = _confirmed(args, "Remove them?")
    if refused is not None:
        return refused
    gone = []
    for name in names:  # exactly the tasks shown, not what a pattern matches by now
        try:
            storage.remove_task(args.workflow, task_name=name)
        except TaskNotFoundError:  # removed meanwhile (another rm): done all the same
            gone.append(name)
    print(f"removed {len(names) - len(gone)} task(s)"
          + (f"; {len(gone)} had been removed meanwhile: {', '.join(gone[:20])}" if gone else ""))
    return 0


def add_storage_commands(sub: Any, storage_help: str) -> None:
    """Add ``storage`` (ls, show, runs, rm, sign) to the subcommands *sub*."""
    st = sub.add_parser("storage", help="list, show and remove stored results; list run reports")
    st_sub = st.add_subparsers(dest="storage_command", required=True)

    ls = st_sub.add_parser("ls", help="list workflows (tasks, size, last write, last run), or the tasks of one "
                           "workflow with size, time and status")
    ls.add_argument("workflow", nargs="?", help="workflow name (omit to list workflows)")
    ls.add_argument("--storage", help=storage_help)
    ls.add_argument("--pattern", default="*", help="glob pattern of task names (default: *)")
    ls.add_argument("--graph", help="FILE.py:NAME or module:NAME of the DAG (or of a workflow object), to report stale "
                    "and missing nodes")
    ls.add_argument("--verify", action="store_true", help="read every result to check its checksum (and its "
                    "signature, with a signing key set); exit 1 if any is damaged")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_ls)

    show = st_sub.add_parser(
        "show", help="show a stored result's metadata (and its value with --value)",
        description="Show a stored result's metadata (its header; the pickled value is not loaded without --value). "
        "A stored result is a pickle: loading it (--value, read_task, a run) unpickles it, which runs code its "
        "writer chose, so trust a store like code (docs/storage.md, \"Trust\"), or set a signing key "
        "(FUNCTIONFUSE_STORAGE_KEY: results not signed with it are refused unread).",
    )
    show.add_argument("workflow")
    show.add_argument("task")
    show.add_argument("--value", action="store_true", help="also load and print the value, short (arrays and frames "
                      "as shape, dtype and head). This unpickles the result: only for a store you trust like code")
    show.add_argument("--max-bytes", type=int, default=MAX_VALUE_BYTES, metavar="N",
                      help=f"with --value, refuse to load a result larger than N bytes (default: {MAX_VALUE_BYTES}, "
                      f"{_size(MAX_VALUE_BYTES)})"),
    show.add_argument("--storage", help=storage_help)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    runs = st_sub.add_parser("runs", help="list the stored run reports of a workflow (oldest first)")
    runs.add_argument("workflow")
    runs.add_argument("--storage", help=storage_help)
    runs.add_argument("--last", type=int, default=20, metavar="N", help="show the last N runs (default: 20; 0: all kept)")
    runs.add_argument("--json", action="store_true", help="print the whole reports as JSON")
    runs.set_defaults(func=cmd_runs)

    rm = st_sub.add_parser("rm", help="remove stored results, named exactly or selected with --pattern, or a whole "
                           "workflow with --all (asks first)")
    rm.add_argument("workflow")
    rm.add_argument("names", nargs="*", metavar="NAME",
                    help="task to remove, exactly as named: 'model[1]' is that task, not a pattern")
    rm.add_argument("--pattern", action="append", metavar="GLOB",
                    help="also remove the tasks matching this glob pattern, e.g. 'model*' or '*' (repeatable)")
    rm.add_argument("--all", action="store_true", help="remove the whole workflow: every task, its files and its "
                    "run reports")
    rm.add_argument("--storage", help=storage_help)
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(func=cmd_rm)

    sign = st_sub.add_parser(
        "sign", help="sign stored results with the key of $FUNCTIONFUSE_STORAGE_KEY, as they are",
        description="Sign the unsigned results of a workflow (all, NAMEs, or --pattern) with the key of "
        "$FUNCTIONFUSE_STORAGE_KEY or $FUNCTIONFUSE_STORAGE_KEY_FILE, so that runs with that key reuse them instead "
        "of recomputing them. Only for results you trust: a signature vouches for what is stored now. Each result's "
        "checksum and names are checked; nothing is unpickled.",
    )
    sign.add_argument("workflow")
    sign.add_argument("names", nargs="*", metavar="NAME", help="task to sign, exactly as named (default: every task)")
    sign.add_argument("--pattern", action="append", metavar="GLOB", help="sign the tasks matching this glob pattern")
    sign.add_argument("--storage", help=storage_help)
    sign.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    sign.set_defaults(func=cmd_sign)
