"""The ``functionfuse`` command.

    functionfuse storage ls   [--storage SPEC] [WORKFLOW] [--graph TARGET] [--verify] [--json]
    functionfuse storage show [--storage SPEC] WORKFLOW TASK [--value [--max-bytes N]] [--json]
    functionfuse storage runs [--storage SPEC] WORKFLOW [--last N] [--json]
    functionfuse storage sign [--storage SPEC] WORKFLOW [NAME ...] [--pattern GLOB]
    functionfuse storage rm   [--storage SPEC] WORKFLOW [NAME ...] [--pattern GLOB] [--yes]
    functionfuse storage rm   [--storage SPEC] WORKFLOW --all [--yes]
    functionfuse plan         [--storage SPEC] [WORKFLOW] --graph TARGET [--cache POLICY] [--json]
    functionfuse graph        TARGET [--out DIR] [--workflow NAME] [--storage SPEC] [--format dot,svg,png]
    functionfuse stack up|down|install|steps [--source DIR] [--dry-run] [--context CTX] [--no-kfp]
    functionfuse kfp compile  TARGET [-o FILE] [--image IMG] [--storage SPEC] [--resume auto|plan]
    functionfuse kfp submit   TARGET --host URL --registry SERVER [--username USER --password-stdin] [--wait]
    functionfuse image build  [IMAGE ...] [--base-image IMG] [--wheelhouse DIR] [--push REGISTRY] [--json]
    functionfuse image push   REGISTRY [IMAGE ...] [--username USER --password-stdin] [--json]
    functionfuse release      REGISTRY [--steps dist,images,charts] [--check-versions] [--json]

SPEC is a folder (``storage`` by default, or ``$FUNCTIONFUSE_STORAGE``), ``file:PATH``,
an S3 URL ``s3://bucket/prefix`` (``s3a://`` too; the endpoint and keys come from
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``; with neither an
endpoint nor AWS credentials it is refused), or storage_factory options as JSON, inline or
in a ``.json`` file (``{"kind": ..., "options": {...}}``). A storage folder that does not
exist is an error (exit status 2) for the ``storage`` commands; ``plan`` and ``graph``
take it as a storage where nothing is stored yet.
``storage rm`` removes the tasks named exactly (``model[1]`` is that name, not a
pattern) and those matching each ``--pattern``; it shows them and asks first. ``storage
ls`` lists folders (or S3 prefixes) whose names are not valid workflow names as
``foreign`` rows and leaves them alone.
TARGET is ``path/to/file.py:NAME`` or ``package.module:NAME`` (imported with the
current folder first on ``sys.path``, as ``python -m`` does), where NAME is a node, a
list of nodes, a workflow object, or a function without arguments that returns them.
While a target is imported, ``run()`` of every workflow is not run: the call is said on
standard error, and without ``:NAME`` the target is the workflow it was called on.
A workflow object is planned as it would run: with its own storage (unless
``--storage`` is given) and its own cache policy and per-node queries.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.util
import json
import os
import reprlib
import shlex
import sys
import sysconfig
import traceback
from typing import TYPE_CHECKING, Any, Sequence

from ._version import __version__
from .errors import (
    ConfigurationError,
    CorruptedResultError,
    FunctionFuseError,
    ResultTooLargeError,
    SignatureError,
    SigningKeyError,
    StorageError,
    TargetError,
    TaskNotFoundError,
    WorkflowNotFoundError,
)
from .workflow import name_problem, validate_name

if TYPE_CHECKING:
    from .storage.protocol import StorageProtocol

__all__ = ["main"]


#: URL schemes of --storage and the storage kind each one means
_URL_KINDS = {"s3": "s3", "s3a": "s3", "file": "file"}


class _UsageError(ConfigurationError):
    """A command line naming something that cannot be used: the command exits 2, as
    argparse does for arguments it cannot parse."""


def _storage(spec: str | None, *, must_exist: bool = True) -> StorageProtocol:
    """The storage *spec* names (see the module documentation).

    A storage folder that does not exist is an error when *must_exist* (the storage
    commands read what is stored: a mistyped path is not "nothing stored"); otherwise
    (a plan before the first run) it is said on standard error.
    """
    from .storage import available_storages, storage_factory

    source = "--storage" if spec else "$FUNCTIONFUSE_STORAGE" if os.environ.get("FUNCTIONFUSE_STORAGE") else None
    spec = spec or os.environ.get("FUNCTIONFUSE_STORAGE") or "storage"
    options: Any
    if spec.lstrip()[:1] in ("{", "["):  # inline JSON options (a list is refused below)
        try:
            options = json.loads(spec)
        except ValueError as exc:
            raise _UsageError(f"Storage options {spec!r} are not valid JSON: {exc}.") from None
    elif spec.endswith(".json") and not os.path.isdir(spec):
        try:
            with open(spec) as f:
                options = json.load(f)
        except FileNotFoundError:
            raise _UsageError(
                f"Storage {spec!r}: no such file. A SPEC ending in .json is a file of storage_factory options "
                '({"kind": ..., "options": {...}}); check the path, or name a folder.'
            ) from None
        except ValueError as exc:
            raise _UsageError(f"Storage options file {spec!r} is not valid JSON: {exc}.") from None
    else:
        scheme, sep, rest = spec.partition("://")
        if sep:
            kind = _URL_KINDS.get(scheme.lower()) or (scheme if scheme in available_storages else None)
            if kind is None:
                raise _UsageError(
                    f"Storage {spec!r}: unknown URL scheme {scheme!r}. Use s3://bucket/prefix (or s3a://), file:PATH, "
                    "a folder, or storage_factory options as JSON (inline or a .json file) for other kinds."
                )
            options = {"kind": kind, "options": {"path": rest}}
        else:
            path = spec[len("file:") :] if spec.startswith("file:") else spec
            options = {"kind": "file", "options": {"path": path}}
    _check_storage_options(spec, options, source=source, must_exist=must_exist)
    return storage_factory(options)


def _check_storage_options(spec: str, options: Any, *, source: str | None, must_exist: bool) -> None:
    """Refuse what storage_factory would get wrong for a command line: options that are
    not ``{"kind": ..., "options": ...}``, a folder that does not exist, S3 without an
    endpoint and without AWS credentials."""
    if not isinstance(options, dict) or "kind" not in options or not isinstance(options.get("options", {}), dict):
        raise _UsageError(
            f"Storage options {spec!r} must be a JSON object with 'kind' and 'options', e.g. "
            '{"kind": "file", "options": {"path": "storage"}}.'
        )
    kind, opts = options["kind"], options.get("options", {})
    if kind == "file" and isinstance(opts.get("path"), str) and opts["path"] and not os.path.exists(opts["path"]):
        path = os.path.abspath(opts["path"])
        where = f"{'Storage' if source else 'The default storage'} folder {path!r} does not exist"
        if must_exist:
            fix = (f"Check the path given to {source}." if source else "Run the command where the workflow's "
                   "storage folder is, or give --storage PATH (or set $FUNCTIONFUSE_STORAGE).")
            raise _UsageError(f"{where}: nothing is stored there. {fix}")
        print(f"functionfuse: note: {where}: nothing is stored there yet", file=sys.stderr)
    if kind in ("s3", "S3"):
        s3fs = opts.get("s3fs") or {}
        if not isinstance(s3fs, dict):
            return  # storage_factory says what is wrong
        endpoint = (s3fs.get("endpoint_url") or (s3fs.get("client_kwargs") or {}).get("endpoint_url")
                    or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        if not endpoint and not _aws_credentials(s3fs):
            raise _UsageError(
                f"Storage {spec!r} names no S3 endpoint, so it would go to Amazon S3, for which no AWS credentials are "
                "configured either. For MinIO, moto or another S3 server set AWS_ENDPOINT_URL=http://HOST:PORT (in a "
                "JSON options file: \"s3fs\": {\"endpoint_url\": ...}); for Amazon S3 configure credentials "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials) or set "
                "AWS_ENDPOINT_URL=https://s3.amazonaws.com."
            )


#: environment variables that give botocore credentials (or a way to get them) without network
_AWS_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _aws_credentials(s3fs: dict) -> bool:
    """Whether credentials for Amazon S3 are configured, found without any request (an
    EC2 instance role cannot be: set AWS_ENDPOINT_URL there to say S3 is meant)."""
    if s3fs.get("key") or s3fs.get("anon") or s3fs.get("profile") or s3fs.get("session"):
        return True
    if any(os.environ.get(v) for v in _AWS_CREDENTIAL_VARIABLES):
        return True
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials",
             os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    return any(os.path.isfile(os.path.expanduser(f)) for f in files)


def _as_nodes(obj: Any) -> list:
    from .baseworkflow import BaseWorkflow

    if isinstance(obj, BaseWorkflow):
        return list(obj.graph.output_refs)
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def _load_object(target: str, doing: str = "used") -> Any:
    """What ``file.py:NAME`` or ``module:NAME`` names (called first if it is a plain function).

    The target is imported with ``run()`` of every workflow inspected, not run (see
    :mod:`functionfuse._inspection`), and with its printing sent to standard error, so
    that this command's output stays what it prints. Without ``:NAME`` it is the
    workflow the import called ``run()`` on. Each such call is said on standard error:
    *doing* says what the command does with the workflow it was called on.
    """
    from ._inspection import inspecting_runs

    where, sep, name = target.rpartition(":")
    if not sep:
        where, name = target, ""  # no NAME: the workflow run() is called on
    if not where or (sep and not name):
        raise TargetError(f"{target!r} must look like path/to/file.py:NAME or package.module:NAME.")
    failure: BaseException | None = None
    obj: Any = None
    with inspecting_runs() as calls, contextlib.redirect_stdout(sys.stderr):
        try:
            module = _import_target(target, where, name)
        except _ImportFailed as exc:
            if not calls:
                raise exc.error from None
            failure, module = exc.cause, exc.module  # after run(): what it did not compute was used
        if name:
            try:
                obj = getattr(module, name)
            except AttributeError:
                if failure is not None:
                    raise _import_error(target, where, failure) from None
                raise TargetError(f"{target!r}: {where!r} has no attribute {name!r}.") from None
            obj = _called(target, name, obj)
    chosen = obj if name else _run_workflow(target, where, calls)
    seen: set[int] = set()
    for call in calls:
        if id(call.workflow) in seen:
            continue
        seen.add(id(call.workflow))
        what = f"; {doing} the workflow it was called on" if call.workflow is chosen else ""
        print(f"functionfuse: {_shown_path(call.filename)}:{call.lineno} called run() on workflow "
              f"{call.workflow.workflow_name!r}: not run{what}", file=sys.stderr)
    if failure is not None:
        frame = _user_frame(failure)
        print(f"functionfuse: then {where} raised {type(failure).__name__}{' at ' + frame[0] if frame else ''} "
              "(it used what run() did not compute): ignored", file=sys.stderr)
    return chosen


class _ImportFailed(Exception):
    """Importing a target raised *cause*; *error* says so, *module* is what was run of it."""

    def __init__(self, error: TargetError, cause: BaseException, module: Any) -> None:
        super().__init__(str(error))
        self.error, self.cause, self.module = error, cause, module


def _import_target(target: str, where: str, name: str) -> Any:
    """The module *where* names, imported (or run, for a file)."""
    module: Any = None
    spec = None
    if where.endswith(".py") or os.path.sep in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise TargetError(f"{target!r}: no such file {where!r}.")
        sys.path.insert(0, os.path.dirname(path))  # as `python path/to/file.py` does
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
    elif not sys.path or sys.path[0] not in ("", os.getcwd()):
        sys.path.insert(0, os.getcwd())  # as `python -m` does
    try:
        if spec is not None:
            assert spec.loader is not None
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        return module
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if where == missing or where.startswith(missing + "."):
            raise TargetError(
                f"{target!r}: no module named {missing!r} in the current folder or on sys.path. Run the command "
                f"from the folder that holds it, install its package, or name the file: path/to/file.py:"
                f"{name or 'NAME'}."
            ) from None
        raise _ImportFailed(_import_error(target, where, exc, fix=" Install the package that provides it."), exc,
                            module) from None
    except Exception as exc:  # the user's code raised, or does not compile
        raise _ImportFailed(_import_error(target, where, exc), exc, module) from None


def _called(target: str, name: str, obj: Any) -> Any:
    """*obj*, or what it returns if it is a plain function."""
    from .baseworkflow import BaseWorkflow

    if not callable(obj) or hasattr(obj, "set_name") or isinstance(obj, BaseWorkflow):
        return obj
    try:
        return obj()
    except Exception as exc:
        raise TargetError(f"{target!r}: {name}() raised {_exception_text(exc)}{_frame_lines(exc)}") from None


def _run_workflow(target: str, where: str, calls: list) -> Any:
    """The workflow importing *where* called ``run()`` on (a drawing only if nothing else)."""
    from .backends.builtin.graphback import GraphWorkflow

    workflows = list({id(c.workflow): c for c in calls}.values())
    if len(workflows) > 1:
        workflows = [c for c in workflows if not isinstance(c.workflow, GraphWorkflow)] or workflows[:1]
    if len(workflows) == 1:
        return workflows[0].workflow
    if not workflows:
        raise TargetError(
            f"{target!r} has no NAME, and importing it called no workflow's run(): name the DAG, a workflow object "
            f"or a function returning them as {where}:NAME (TARGET is path/to/file.py:NAME or package.module:NAME)."
        )
    found = ", ".join(f"{c.workflow.workflow_name!r} ({_shown_path(c.filename)}:{c.lineno})" for c in workflows)
    raise TargetError(
        f"{target!r} calls run() on {len(workflows)} workflows: {found}. Name the one to use as {where}:NAME."
    )


def _exception_text(exc: BaseException) -> str:
    """``Type: message``, ending in one full stop."""
    text = f"{type(exc).__name__}: {exc.msg if isinstance(exc, SyntaxError) else exc}" if str(exc) else type(exc).__name__
    return text if text.endswith(".") else text + "."


def _import_error(target: str, where: str, exc: BaseException, fix: str = "") -> TargetError:
    """One line that says what importing *where* raised, then the user's line that raised it."""
    return TargetError(f"{target!r}: importing {where!r} failed: {_exception_text(exc)}{fix}{_frame_lines(exc)}")


#: where code that is not the user's lives: this package, the standard library, installed packages
_NOT_USERS = tuple(dict.fromkeys(
    os.path.join(os.path.abspath(p), "") for p in (
        os.path.dirname(__file__), *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")))
    if p
))


def _frame_lines(exc: BaseException) -> str:
    """``"\\n  file:line: source line"`` of :func:`_user_frame`, or ``""``."""
    frame = _user_frame(exc)
    return "" if frame is None else f"\n  {frame[0]}: {frame[1]}" if frame[1] else f"\n  {frame[0]}"


def _user_frame(exc: BaseException) -> tuple[str, str] | None:
    """Where the user's code raised *exc*: ``("file:line", "source line")``, or None.

    The innermost frame outside functionfuse, the standard library and installed
    packages; for a SyntaxError, the line that does not compile.
    """
    if isinstance(exc, SyntaxError) and exc.filename:
        where, text = f"{_shown_path(exc.filename)}:{exc.lineno}", (exc.text or "").strip()
    else:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
        own = [f for f in frames if not os.path.abspath(f.filename).startswith(_NOT_USERS)]
        if not (own or frames):
            return None
        frame = (own or frames)[-1]
        where, text = f"{_shown_path(frame.filename)}:{frame.lineno}", (frame.line or "").strip()
    return where, text


def _shown_path(path: str) -> str:
    """*path* relative to the current folder if it is below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if rel.startswith(os.pardir) else rel


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


def _workflow(target: str, workflow: str | None, storage: Any, cache: str | None, doing: str) -> Any:
    """The workflow *target* names, set up as it would run.

    A workflow object is used as it is: its own cache policy and queries, its own storage
    unless *storage* is given. Nodes get a LocalWorkflow named *workflow*.
    """
    from .backends.builtin.localback import LocalWorkflow
    from .baseworkflow import BaseWorkflow

    obj = _load_object(target, doing)
    if isinstance(obj, BaseWorkflow):
        if workflow and workflow != obj.workflow_name:
            raise TargetError(
                f"{target!r} is workflow {obj.workflow_name!r}, not {workflow!r}: omit WORKFLOW or pass "
                f"{obj.workflow_name!r}."
            )
        wf = obj
        if storage is not None or wf.storage is None:
            wf.set_storage(storage if storage is not None else _storage(None, must_exist=False))
    else:
        if not workflow:
            raise TargetError(
                f"{target!r} names nodes, not a workflow object: give the WORKFLOW name their results are stored under."
            )
        wf = LocalWorkflow(*_as_nodes(obj), workflow_name=workflow)
        wf.set_storage(storage if storage is not None else _storage(None, must_exist=False))
    if cache:
        wf.set_cache(cache)
    return wf


def _plan_rows(wf: Any, storage_spec: str | None = None) -> list[dict]:
    """The plan of *wf*, then a row for each stored result of no node of it."""
    rows: list[dict] = [{"task": p.name, "action": p.action, "status": p.state, "reason": p.reason} for p in wf.plan()]
    for task in _not_in_dag(wf):
        rows.append({"task": task, "action": None, "status": NOT_IN_DAG, "reason": _not_in_dag_reason(wf, task, storage_spec)})
    return rows


#: the state of a stored result whose name no node of the DAG has (a renamed or removed node)
NOT_IN_DAG = "not in DAG"


def _not_in_dag(wf: Any) -> list[str]:
    """Stored tasks of *wf*'s workflow that no node of its DAG is named (files no task
    can be named are foreign, not results: left out)."""
    if wf.storage is None:
        return []
    names = set(wf.graph.names)
    return [t for t in wf.storage.list_tasks(wf.workflow_name, "*") if t not in names and name_problem(t) is None]


def _not_in_dag_reason(wf: Any, task: str, storage_spec: str | None) -> str:
    rm = f"functionfuse storage rm {shlex.quote(wf.workflow_name)} {shlex.quote(task)}"
    rm += f" --storage {shlex.quote(storage_spec)}" if storage_spec else ""
    return (f"stored, but no node of the DAG is named {task!r} (renamed or removed); a run neither reads nor removes "
            f"it: `{rm}` does")


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


def cmd_plan(args: argparse.Namespace) -> int:
    given = _storage(args.storage, must_exist=False) if args.storage else None
    wf = _workflow(args.graph, args.workflow, given, args.cache, "planned")
    rows = _plan_rows(wf, args.storage)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table([[r["task"], r["action"] or "-", r["status"], r["reason"]] for r in rows],
                     ["task", "action", "stored", "reason"]))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from .backends.builtin.graphback import GraphWorkflow

    obj = _load_object(args.target, "drew")
    name = args.workflow or getattr(obj, "workflow_name", None) or args.target.rpartition(":")[2]
    wf = GraphWorkflow(*_as_nodes(obj), workflow_name=name, doc_path=args.out)
    if args.storage:
        wf.set_storage(_storage(args.storage, must_exist=False))
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

    plan = sub.add_parser("plan", help="what a run of a DAG would do with each node, and why")
    plan.add_argument("workflow", nargs="?", help="workflow name (default: that of a workflow object TARGET)")
    plan.add_argument("--graph", required=True, help="FILE.py:NAME or module:NAME of the DAG; a workflow object is "
                      "planned with its own storage, cache policy and queries")
    plan.add_argument("--storage", help=storage_help + "; overrides a workflow object's own storage")
    plan.add_argument("--cache", choices=["name", "fingerprint", "off"],
                      help="cache policy (default: the workflow object's, else fingerprint)")
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

    from .kit.stack import add_stack_command  # argparse only; the steps run when called

    add_stack_command(sub)

    # argparse only: the Docker SDK is imported when an image subcommand runs
    from .kit.cli import add_image_commands, add_release_command

    add_image_commands(sub)
    from ._kfpcli import add_kfp_commands

    add_kfp_commands(sub, _load_object, _as_nodes, lambda spec: _storage(spec, must_exist=False),
                     storage_help.split(": ", 1)[1])
    add_release_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe is reported here, not at exit
        return code
    except _UsageError as exc:
        print(f"functionfuse: error: {exc}", file=sys.stderr)
        return 2
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
