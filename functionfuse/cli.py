"""The ``functionfuse`` command.

    functionfuse storage ls   [--storage SPEC] [WORKFLOW] [--graph TARGET] [--verify] [--json]
    functionfuse storage show [--storage SPEC] WORKFLOW TASK [--json]
    functionfuse storage rm   [--storage SPEC] WORKFLOW PATTERN [--yes]
    functionfuse plan         [--storage SPEC] WORKFLOW --graph TARGET [--cache POLICY] [--json]
    functionfuse graph        TARGET [--out DIR] [--workflow NAME] [--storage SPEC] [--format FMT ...]
    functionfuse stack up|down [--source DIR] [--dry-run]
    functionfuse kfp compile  TARGET [-o FILE] [--image IMG] [--storage SPEC] [--resume auto|plan]
    functionfuse kfp submit   TARGET --host URL --registry SERVER [--username USER --password-stdin] [--wait]
    functionfuse image build  [IMAGE ...] [--base-image IMG] [--wheelhouse DIR] [--push REGISTRY] [--json]
    functionfuse image push   REGISTRY [IMAGE ...] [--username USER --password-stdin] [--json]
    functionfuse release      REGISTRY [--steps dist,images,charts] [--check-versions] [--json]

SPEC is a folder (``storage`` by default, or ``$FUNCTIONFUSE_STORAGE``), ``file:PATH``,
or a JSON file holding storage_factory options (``{"kind": ..., "options": {...}}``).
TARGET is ``path/to/file.py:NAME`` or ``package.module:NAME``, where NAME is a node,
a list of nodes, or a function without arguments that returns them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from typing import Any, Sequence

from ._version import __version__
from .errors import CorruptedResultError, FunctionFuseError

__all__ = ["main"]


def _storage(spec: str | None) -> Any:
    from .storage import storage_factory

    spec = spec or os.environ.get("FUNCTIONFUSE_STORAGE") or "storage"
    if spec.endswith(".json") and os.path.isfile(spec):
        with open(spec) as f:
            return storage_factory(json.load(f))
    if spec.startswith("file:"):
        spec = spec[len("file:") :]
    elif "://" in spec:
        scheme = spec.split("://", 1)[0]
        return storage_factory({"kind": scheme, "options": {"path": spec.split("://", 1)[1]}})
    return storage_factory({"kind": "file", "options": {"path": spec}})


def _load_target(target: str) -> list:
    """Nodes named by ``file.py:NAME`` or ``module:NAME``."""
    return _as_nodes(_load_object(target))


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
    if where.endswith(".py") or os.path.sep in where:
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise FunctionFuseError(f"{target!r}: no such file {where!r}.")
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
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


def _plan_rows(storage: Any, workflow: str, target: str, cache: str | None) -> list[dict]:
    from .backends.builtin.localback import LocalWorkflow

    wf = LocalWorkflow(*_load_target(target), workflow_name=workflow)
    wf.set_storage(storage)
    if cache:
        wf.set_cache(cache)
    return [{"task": p.name, "action": p.action, "status": p.state, "reason": p.reason} for p in wf.plan()]


def cmd_ls(args: argparse.Namespace) -> int:
    storage = _storage(args.storage)
    if not args.workflow:
        rows = []
        for wf in storage.list_workflows():
            tasks = storage.list_tasks(wf, "*")
            rows.append({"workflow": wf, "tasks": len(tasks)})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(_table([[r["workflow"], str(r["tasks"])] for r in rows], ["workflow", "tasks"]) if rows else "no workflows stored")
        return 0
    entries: dict[str, dict] = {}
    for task in storage.list_tasks(args.workflow, args.pattern):
        try:
            meta = storage.read_metadata(args.workflow, task)
            if args.verify:
                storage.verify_task(args.workflow, task)
            entries[task] = {"task": task, "size": meta.get("size"), "finished": meta.get("finished"), "status": "stored"}
        except CorruptedResultError as exc:
            entries[task] = {"task": task, "size": None, "finished": None, "status": "corrupted", "reason": str(exc)}
    if args.graph:
        for row in _plan_rows(storage, args.workflow, args.graph, None):
            entry = entries.setdefault(row["task"], {"task": row["task"], "size": None, "finished": None})
            if entry.get("status") != "corrupted":
                entry["status"] = row["status"]
                if row["status"] != "current":
                    entry["reason"] = row["reason"].removeprefix("stale: ")
    rows = sorted(entries.values(), key=lambda r: r["task"])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no tasks stored for workflow {args.workflow!r}")
        return 0
    table = [
        [r["task"], _size(r["size"]) if r["size"] is not None else "-", (r["finished"] or "-")[:19], r["status"], r.get("reason", "")]
        for r in rows
    ]
    print(_table(table, ["task", "size", "finished (UTC)", "status", "reason"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    meta = _storage(args.storage).read_metadata(args.workflow, args.task)
    if args.json:
        print(json.dumps(meta, indent=2, default=str))
        return 0
    for key in ("workflow", "task", "kind", "function", "inputs", "started", "finished", "duration_s", "size", "checksum"):
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


def cmd_rm(args: argparse.Namespace) -> int:
    storage = _storage(args.storage)
    names = storage.list_tasks(args.workflow, args.pattern)
    if not names:
        print(f"no task of workflow {args.workflow!r} matches {args.pattern!r}")
        return 0
    print(f"{len(names)} task(s) of workflow {args.workflow!r}: {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}")
    if not args.yes:
        if not sys.stdin.isatty():
            print("Refusing to remove without confirmation: pass --yes.", file=sys.stderr)
            return 2
        if input("Remove them? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Nothing removed.")
            return 1
    removed = storage.remove_task(args.workflow, pattern=args.pattern)
    print(f"removed {len(removed)} task(s)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    rows = _plan_rows(_storage(args.storage), args.workflow, args.graph, args.cache)
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
    paths = wf.run(formats=args.format)
    n = len(wf.graph)
    for fmt, path in paths.items():
        print(f"{fmt:<4} {path}")
    print(f"{n} node{'s' if n != 1 else ''} drawn", file=sys.stderr)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from .kit.stack import Stack, find_source

    stack = Stack(find_source(args.source), dry_run=args.dry_run)
    print(stack.up() if args.stack_command == "up" else stack.down())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="functionfuse", description="Inspect and manage functionfuse workflows.")
    parser.add_argument("--version", action="version", version=f"functionfuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    storage_help = "storage: a folder, file:PATH, or a JSON file of storage_factory options (default: $FUNCTIONFUSE_STORAGE or ./storage)"
    st = sub.add_parser("storage", help="list, show and remove stored results")
    st_sub = st.add_subparsers(dest="storage_command", required=True)

    ls = st_sub.add_parser("ls", help="list workflows, or the tasks of one workflow with size, time and status")
    ls.add_argument("workflow", nargs="?", help="workflow name (omit to list workflows)")
    ls.add_argument("--storage", help=storage_help)
    ls.add_argument("--pattern", default="*", help="glob pattern of task names (default: *)")
    ls.add_argument("--graph", help="FILE.py:NAME or module:NAME of the DAG, to report stale and missing nodes")
    ls.add_argument("--verify", action="store_true", help="read every result to check its checksum")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_ls)

    show = st_sub.add_parser("show", help="show a stored result's metadata")
    show.add_argument("workflow")
    show.add_argument("task")
    show.add_argument("--storage", help=storage_help)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    rm = st_sub.add_parser("rm", help="remove stored results matching a glob pattern (asks first)")
    rm.add_argument("workflow")
    rm.add_argument("pattern", help="glob pattern of task names, e.g. 'model*' or '*'")
    rm.add_argument("--storage", help=storage_help)
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(func=cmd_rm)

    plan = sub.add_parser("plan", help="what a run of a DAG would do with each node, and why")
    plan.add_argument("workflow")
    plan.add_argument("--graph", required=True, help="FILE.py:NAME or module:NAME of the DAG")
    plan.add_argument("--storage", help=storage_help)
    plan.add_argument("--cache", choices=["name", "fingerprint", "off"], help="cache policy (default: name)")
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.set_defaults(func=cmd_plan)

    graph = sub.add_parser("graph", help="draw a DAG defined in a Python file or module (DOT, SVG, PNG)")
    graph.add_argument("target", help="FILE.py:NAME or module:NAME: a node, a list of nodes, a workflow, or a function returning them")
    graph.add_argument("--out", default=".", help="folder for the drawings (default: the current folder)")
    graph.add_argument("--workflow", help="workflow name: names the files and the stored results (default: NAME)")
    graph.add_argument("--storage", help="colour nodes by what this storage holds (" + storage_help.split(": ", 1)[1] + ")")
    graph.add_argument("--format", nargs="+", choices=["dot", "svg", "png"], default=["dot", "svg", "png"],
                       help="files to write (default: dot svg png)")
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
        return int(args.func(args))
    except FunctionFuseError as exc:
        print(f"functionfuse: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
