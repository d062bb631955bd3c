"""The ``functionfuse`` command.

    functionfuse storage ls   [--storage SPEC] [WORKFLOW] [--graph TARGET] [--verify] [--json]
    functionfuse storage show [--storage SPEC] WORKFLOW TASK [--json]
    functionfuse storage runs [--storage SPEC] WORKFLOW [--last N] [--json]
    functionfuse storage sign [--storage SPEC] WORKFLOW [NAME ...] [--pattern GLOB]
    functionfuse storage rm   [--storage SPEC] WORKFLOW [NAME ...] [--pattern GLOB] [--yes]
    functionfuse plan         [--storage SPEC] [WORKFLOW] --graph TARGET [--cache POLICY] [--json]
    functionfuse graph        TARGET [--out DIR] [--workflow NAME] [--storage SPEC] [--format dot,svg,png]
    functionfuse stack up|down [--source DIR] [--dry-run]
    functionfuse kfp compile  TARGET [-o FILE] [--image IMG] [--storage SPEC] [--resume auto|plan]
    functionfuse kfp submit   TARGET --host URL --registry SERVER [--username USER --password-stdin] [--wait]
    functionfuse image build  [IMAGE ...] [--base-image IMG] [--wheelhouse DIR] [--push REGISTRY] [--json]
    functionfuse image push   REGISTRY [IMAGE ...] [--username USER --password-stdin] [--json]
    functionfuse release      REGISTRY [--steps dist,images,charts] [--check-versions] [--json]

SPEC is a folder (``storage`` by default, or ``$FUNCTIONFUSE_STORAGE``), ``file:PATH``,
an S3 URL ``s3://bucket/prefix`` (``s3a://`` too; the endpoint and keys come from
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``), or a JSON
file holding storage_factory options (``{"kind": ..., "options": {...}}``).
``storage rm`` removes the tasks named exactly (``model[1]`` is that name, not a
pattern) and those matching each ``--pattern``; it shows them and asks first. ``storage
ls`` lists folders (or S3 prefixes) whose names are not valid workflow names as
``foreign`` rows and leaves them alone.
TARGET is ``path/to/file.py:NAME`` or ``package.module:NAME`` (imported with the
current folder first on ``sys.path``, as ``python -m`` does), where NAME is a node, a
list of nodes, a workflow object, or a function without arguments that returns them.
A workflow object is planned as it would run: with its own storage (unless
``--storage`` is given) and its own cache policy and per-node queries.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import inspect
import os
import shlex
import sys
from typing import Any, Sequence

from ._version import __version__
from .errors import (
    CorruptedResultError,
    FunctionFuseError,
    SignatureError,
    SigningKeyError,
    StorageError,
    TaskNotFoundError,
)
from .workflow import name_problem, validate_name

__all__ = ["main"]


#: URL schemes of --storage and the storage kind each one means
_URL_KINDS = {"s3": "s3", "s3a": "s3", "file": "file"}


def _storage(spec: str | None) -> Any:
    from .storage import available_storages, storage_factory

    spec = spec or os.environ.get("FUNCTIONFUSE_STORAGE") or "storage"
    if spec.endswith(".json") and not os.path.isdir(spec):
        try:
            with open(spec) as f:
                options = json.load(f)
        except FileNotFoundError:
            raise FunctionFuseError(
                f"Storage {spec!r}: no such file. A SPEC ending in .json is a file of storage_factory options "
                '({"kind": ..., "options": {...}}); check the path, or name a folder.'
            ) from None
        except ValueError as exc:
            raise FunctionFuseError(f"Storage options file {spec!r} is not valid JSON: {exc}.") from None
        return storage_factory(options)
    scheme, sep, rest = spec.partition("://")
    if sep:
        kind = _URL_KINDS.get(scheme.lower()) or (scheme if scheme in available_storages else None)
        if kind is None:
            raise FunctionFuseError(
                f"Storage {spec!r}: unknown URL scheme {scheme!r}. Use s3://bucket/prefix (or s3a://), file:PATH, "
                "a folder, or a JSON file of storage_factory options for other kinds."
            )
        return storage_factory({"kind": kind, "options": {"path": rest}})
    if spec.startswith("file:"):
        spec = spec[len("file:") :]
    return storage_factory({"kind": "file", "options": {"path": spec}})


def _as_nodes(obj: Any) -> list:
    from .baseworkflow import BaseWorkflow

    if isinstance(obj, BaseWorkflow):
        return list(obj.graph.output_refs)
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def _load_object(target: str) -> Any:
    """What ``file.py:NAME`` or ``module:NAME`` names (called first if it is a plain function)."""
    from .baseworkflow import BaseWorkflow

    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise FunctionFuseError(f"{target!r} must look like path/to/file.py:NAME or package.module:NAME.")
    try:
        if where.endswith(".py") or os.path.sep in where:
            path = os.path.abspath(where)
            if not os.path.isfile(path):
                raise FunctionFuseError(f"{target!r}: no such file {where!r}.")
            sys.path.insert(0, os.path.dirname(path))  # as `python path/to/file.py` does
            spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            if not sys.path or sys.path[0] not in ("", os.getcwd()):
                sys.path.insert(0, os.getcwd())  # as `python -m` does
            module = importlib.import_module(where)
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if where == missing or where.startswith(missing + "."):
            raise FunctionFuseError(
                f"{target!r}: no module named {missing!r} in the current folder or on sys.path. Run the command "
                f"from the folder that holds it, install its package, or name the file: path/to/file.py:{name}."
            ) from None
        raise FunctionFuseError(
            f"{target!r}: importing {where!r} failed: no module named {missing!r}. Install the package that provides it."
        ) from None
    try:
        obj = getattr(module, name)
    except AttributeError:
        raise FunctionFuseError(f"{target!r}: {where!r} has no attribute {name!r}.") from None
    if callable(obj) and not hasattr(obj, "set_name") and not isinstance(obj, BaseWorkflow):
        obj = obj()
    return obj


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _workflow(target: str, workflow: str | None, storage: Any, cache: str | None) -> Any:
    """The workflow *target* names, set up as it would run.

    A workflow object is used as it is: its own cache policy and queries, its own storage
    unless *storage* is given. Nodes get a LocalWorkflow named *workflow*.
    """
    from .backends.builtin.localback import LocalWorkflow
    from .baseworkflow import BaseWorkflow

    obj = _load_object(target)
    if isinstance(obj, BaseWorkflow):
        if workflow and workflow != obj.workflow_name:
            raise FunctionFuseError(
                f"{target!r} is workflow {obj.workflow_name!r}, not {workflow!r}: omit WORKFLOW or pass "
                f"{obj.workflow_name!r}."
            )
        wf = obj
        if storage is not None or wf.storage is None:
            wf.set_storage(storage if storage is not None else _storage(None))
    else:
        if not workflow:
            raise FunctionFuseError(
                f"{target!r} names nodes, not a workflow object: give the WORKFLOW name their results are stored under."
            )
        wf = LocalWorkflow(*_as_nodes(obj), workflow_name=workflow)
        wf.set_storage(storage if storage is not None else _storage(None))
    if cache:
        wf.set_cache(cache)
    return wf


def _plan_rows(wf: Any) -> list[dict]:
    return [{"task": p.name, "action": p.action, "status": p.state, "reason": p.reason} for p in wf.plan()]


def _run_status(report: dict) -> str:
    from .report import outcome

    return outcome(report)


def _last_run_report(storage: Any, workflow: str) -> dict | None:
    last = getattr(storage, "last_run_report", None)
    if last is not None:
        return last(workflow)
    lister = getattr(storage, "list_run_reports", None)
    reports: list[dict] = lister(workflow) if lister is not None else []
    return reports[-1] if reports else None


def _workflow_names(storage: Any) -> list[str]:
    """Every workflow folder (or prefix) of *storage*, foreign ones too where it can list them."""
    lister = storage.list_workflows
    try:
        foreign = "include_foreign" in inspect.signature(lister).parameters
    except (TypeError, ValueError):  # no signature to read (a C or proxy method)
        foreign = False
    names: list[str] = lister(include_foreign=True) if foreign else lister()
    return names


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
            last = _last_run_report(storage, wf)
        except StorageError as exc:  # a linked folder, results signed with another key...
            rows.append({"workflow": wf, "foreign": True, "note": f"not read: {exc}"})
            continue
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
        wf = _workflow(args.graph, args.workflow, _storage(args.storage) if args.storage else None, None)
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
    if args.graph:
        for p in wf.plan():
            if not fnmatch.fnmatchcase(p.name, args.pattern):
                continue
            entry = entries.setdefault(p.name, {"task": p.name, "size": None, "finished": None})
            if entry.get("status") not in _DAMAGED:
                entry["status"] = p.state
                if p.detail:
                    entry["reason"] = p.detail
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


def cmd_show(args: argparse.Namespace) -> int:
    meta = _storage(args.storage).read_metadata(args.workflow, args.task)
    if args.json:
        print(json.dumps(meta, indent=2, default=str))
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
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    storage = _storage(args.storage)
    lister = getattr(storage, "list_run_reports", None)
    if lister is None:
        raise FunctionFuseError(f"{storage!r} does not store run reports.")
    reports = lister(args.workflow)
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


def _tasks_to_remove(storage: Any, args: argparse.Namespace) -> list[str]:
    """The tasks ``storage rm`` removes: each NAME exactly, then what each --pattern matches."""
    names = [validate_name(n, "Task name") for n in dict.fromkeys(args.names)]
    if names:
        stored = set(storage.list_tasks(args.workflow, "*"))
        missing = [n for n in names if n not in stored]
        if missing:
            ls = f"functionfuse storage ls {shlex.quote(args.workflow)}"
            if args.storage:
                ls += f" --storage {shlex.quote(args.storage)}"
            globs = [n for n in missing if any(c in n for c in "*?[")]
            hint = "".join(f" To remove the tasks matching {g!r}, use --pattern {shlex.quote(g)}." for g in globs)
            raise TaskNotFoundError(
                f"Workflow {args.workflow!r} has no stored task {', '.join(map(repr, missing))}: nothing removed. "
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
    names = _tasks_to_remove(storage, args)
    signed = already = 0
    for name in names:
        try:
            if storage.sign_task(args.workflow, name):
                signed += 1
            else:
                already += 1
        except TaskNotFoundError:  # removed meanwhile
            continue
        except CorruptedResultError as exc:  # damaged results are left for runs to recompute
            print(f"not signed: {exc}", file=sys.stderr)
    print(f"signed {signed} task(s) of workflow {args.workflow!r}; {already} already signed with this key")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    if not args.names and not args.pattern:
        print("functionfuse storage rm: name the tasks to remove (WORKFLOW NAME [NAME ...]) or select them with "
              "--pattern GLOB (e.g. --pattern '*' for every task)", file=sys.stderr)
        return 2
    storage = _storage(args.storage)
    names = _tasks_to_remove(storage, args)
    if not names:
        print(f"no task of workflow {args.workflow!r} matches {' or '.join(map(repr, args.pattern))}")
        return 0
    print(f"{len(names)} task(s) of workflow {args.workflow!r}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    if not args.yes:
        if not sys.stdin.isatty():
            print("Refusing to remove without confirmation: pass --yes.", file=sys.stderr)
            return 2
        try:
            answer = input("Remove them? [y/N] ")
        except EOFError:  # Ctrl-D: no
            print()
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing removed.")
            return 1
    gone = []
    for name in names:  # exactly the tasks shown, not what a pattern matches by now
        try:
            storage.remove_task(args.workflow, task_name=name)
        except TaskNotFoundError:  # removed meanwhile (another rm): done all the same
            gone.append(name)
    print(f"removed {len(names) - len(gone)} task(s)"
          + (f"; {len(gone)} had been removed meanwhile: {', '.join(gone[:20])}" if gone else ""))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    wf = _workflow(args.graph, args.workflow, _storage(args.storage) if args.storage else None, args.cache)
    rows = _plan_rows(wf)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table([[r["task"], r["action"], r["status"], r["reason"]] for r in rows], ["task", "action", "stored", "reason"]))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from .backends.builtin.graphback import GraphWorkflow

    obj = _load_object(args.target)
    name = args.workflow or getattr(obj, "workflow_name", None) or args.target.rpartition(":")[2]
    wf = GraphWorkflow(*_as_nodes(obj), workflow_name=name, doc_path=args.out)
    if args.storage:
        wf.set_storage(_storage(args.storage))
    elif getattr(obj, "storage", None) is not None:  # a workflow object: colour by its own storage
        wf.set_storage(obj.storage)
    formats = list(dict.fromkeys(f for group in args.format for f in group)) if args.format else ["dot", "svg", "png"]
    paths = wf.run(formats=formats)
    n = len(wf.graph)
    for fmt, path in paths.items():
        print(f"{fmt:<4} {path}")
    print(f"{n} node{'s' if n != 1 else ''} drawn", file=sys.stderr)
    return 0


_FORMATS = ("dot", "svg", "png")


def _formats(value: str) -> list[str]:
    """``--format svg,png``: a comma-separated list of drawing formats."""
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    unknown = [f for f in formats if f not in _FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(unknown) or value!r}: use dot, svg or png, comma-separated (--format svg,png)"
        )
    return formats


def cmd_stack(args: argparse.Namespace) -> int:
    from .kit.stack import Stack, find_source

    stack = Stack(find_source(args.source), dry_run=args.dry_run)
    print(stack.up() if args.stack_command == "up" else stack.down())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="functionfuse", description="Inspect and manage functionfuse workflows.")
    parser.add_argument("--version", action="version", version=f"functionfuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    storage_help = (
        "storage: a folder, file:PATH, an S3 URL s3://bucket/prefix (or s3a://; endpoint and keys from AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or a JSON file of storage_factory options "
        "(default: $FUNCTIONFUSE_STORAGE or ./storage)"
    )
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
        "show", help="show a stored result's metadata",
        description="Show a stored result's metadata (its header; the pickled value is not loaded). A stored "
        "result is a pickle: loading it (read_task, a run) runs code its writer chose, so trust a store like code, "
        "or set a signing key (FUNCTIONFUSE_STORAGE_KEY: results not signed with it are refused unread).",
    )
    show.add_argument("workflow")
    show.add_argument("task")
    show.add_argument("--storage", help=storage_help)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    runs = st_sub.add_parser("runs", help="list the stored run reports of a workflow (oldest first)")
    runs.add_argument("workflow")
    runs.add_argument("--storage", help=storage_help)
    runs.add_argument("--last", type=int, default=20, metavar="N", help="show the last N runs (default: 20; 0: all kept)")
    runs.add_argument("--json", action="store_true", help="print the whole reports as JSON")
    runs.set_defaults(func=cmd_runs)

    rm = st_sub.add_parser("rm", help="remove stored results, named exactly or selected with --pattern (asks first)")
    rm.add_argument("workflow")
    rm.add_argument("names", nargs="*", metavar="NAME",
                    help="task to remove, exactly as named: 'model[1]' is that task, not a pattern")
    rm.add_argument("--pattern", action="append", metavar="GLOB",
                    help="also remove the tasks matching this glob pattern, e.g. 'model*' or '*' (repeatable)")
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
    sign.set_defaults(func=cmd_sign)

    plan = sub.add_parser("plan", help="what a run of a DAG would do with each node, and why")
    plan.add_argument("workflow", nargs="?", help="workflow name (default: that of a workflow object TARGET)")
    plan.add_argument("--graph", required=True, help="FILE.py:NAME or module:NAME of the DAG; a workflow object is "
                      "planned with its own storage, cache policy and queries")
    plan.add_argument("--storage", help=storage_help + "; overrides a workflow object's own storage")
    plan.add_argument("--cache", choices=["name", "fingerprint", "off"],
                      help="cache policy (default: the workflow object's, else name)")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=cmd_plan)

    graph = sub.add_parser("graph", help="draw a DAG defined in a Python file or module (DOT, SVG, PNG)")
    graph.add_argument("target", help="FILE.py:NAME or module:NAME: a node, a list of nodes, a workflow, or a function returning them")
    graph.add_argument("--out", default=".", help="folder for the drawings (default: the current folder)")
    graph.add_argument("--workflow", help="workflow name: names the files and the stored results (default: NAME)")
    graph.add_argument("--storage", help="colour nodes by what this storage holds (" + storage_help.split(": ", 1)[1]
                       + "; default: a workflow object's own storage)")
    graph.add_argument("--format", type=_formats, action="append", metavar="FMT[,FMT]",
                       help="files to write: dot, svg, png, comma-separated or repeated (default: all three)")
    graph.set_defaults(func=cmd_graph)

    stack = sub.add_parser("stack", help="bring the functionfuse stack up on a local kind cluster, or down")
    stack.add_argument("stack_command", choices=["up", "down"], help="up: registry, cluster, images, operators, charts; "
                       "down: delete the cluster and the registry container")
    stack.add_argument("--source", help="functionfuse source tree with charts/ and manifests/ (default: this checkout)")
    stack.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    stack.set_defaults(func=cmd_stack)

    # argparse only: the Docker SDK is imported when an image subcommand runs
    from .kit.cli import add_image_commands, add_release_command

    add_image_commands(sub)
    from ._kfpcli import add_kfp_commands

    add_kfp_commands(sub, _load_object, _as_nodes, _storage, storage_help.split(": ", 1)[1])
    add_release_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe is reported here, not at exit
        return code
    except FunctionFuseError as exc:
        print(f"functionfuse: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfunctionfuse: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`functionfuse plan ... --json | head`): stop quietly, as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except OSError as exc:
        print(f"functionfuse: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
