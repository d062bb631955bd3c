"""The ``functionfuse`` command's TARGETs (``path/to/file.py:NAME`` or
``package.module:NAME``: imported with ``run()`` inspected, not run) and the commands
that take one: ``plan`` and ``graph``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import shlex
import sys
import sysconfig
import traceback
from typing import Any

from ._clibase import _shown_path, _storage, _table
from .errors import TargetError
from .workflow import name_problem

def _as_nodes(obj: Any) -> list:
    from .baseworkflow import BaseWorkflow

    if isinstance(obj, BaseWorkflow):
        return list(obj.graph.output_refs)
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def _load_object(target: str, doing: str = "used") -> Any:
    """What ``file.py:NAME`` or ``module:NAME`` names (called first if it is a plain function).

    The target is imported with ``run()`` of every workflow inspected, not run (see
    :mod:`functionfuse.inspection`), and with its printing sent to standard error, so
    that this command's output stays what it prints. Without ``:NAME`` it is the
    workflow the import called ``run()`` on. Each such call is said on standard error:
    *doing* says what the command does with the workflow it was called on.
    """
    from .inspection import inspecting_runs

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


def cmd_plan(args: argparse.Namespace) -> int:
    given = _storage(args.storage, must_exist=False) if args.storage else None
    wf = _workflow(args.graph, args.workflow, given, args.cache, "planned")
    rows = _plan_rows(wf, args.storage)
    units = _unit_rows(wf) if args.units else None
    if args.json:
        print(json.dumps(rows if units is None else {"plan": rows, "units": units}, indent=2))
    else:
        print(_table([[r["task"], r["action"] or "-", r["status"], r["reason"]] for r in rows],
                     ["task", "action", "stored", "reason"]))
        if units is not None:
            print()
            print(str(wf.units()) if wf.fuses_units else _NO_UNITS.format(kind=type(wf).__name__))
    return 0


_NO_UNITS = "{kind} runs every node in this process: it has no execution units (Ray, Prefect and KFP workflows do)."


def _unit_rows(wf: Any) -> list[dict]:
    """The execution units a run of *wf* would submit (one node each on a backend that
    does not fuse)."""
    if not wf.fuses_units:
        return []
    names = wf.graph.names
    return [
        {"unit": k, "why": u.why, "group": u.group, "nodes": [names[i] for i in u.indices]}
        for k, u in enumerate(wf.units().running, 1)
    ]


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


def add_plan_commands(sub: Any, storage_help: str) -> None:
    """Add ``plan`` and ``graph`` to the subcommands *sub*."""
    plan = sub.add_parser("plan", help="what a run of a DAG would do with each node, and why")
    plan.add_argument("workflow", nargs="?", help="workflow name (default: that of a workflow object TARGET)")
    plan.add_argument("--graph", required=True, help="FILE.py:NAME or module:NAME of the DAG; a workflow object is "
                      "planned with its own storage, cache policy and queries")
    plan.add_argument("--storage", help=storage_help + "; overrides a workflow object's own storage")
    plan.add_argument("--cache", choices=["name", "fingerprint", "off"],
                      help="cache policy (default: the workflow object's, else fingerprint)")
    plan.add_argument("--units", action="store_true",
                      help="also list the execution units a run would submit (one task each) and why "
                           "(Ray, Prefect and KFP workflow objects; docs/units.md); with --json: {plan, units}")
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
