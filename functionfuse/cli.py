"""The ``functionfuse`` command.

    functionfuse storage ls   [--storage SPEC] [WORKFLOW] [--graph TARGET] [--verify] [--json]
    functionfuse storage show [--storage SPEC] WORKFLOW TASK [--value [--max-bytes N]] [--json]
    functionfuse storage runs [--storage SPEC] WORKFLOW [--last N] [--json]
    functionfuse storage sign [--storage SPEC] WORKFLOW [NAME ...] [--pattern GLOB]
    functionfuse storage rm   [--storage SPEC] WORKFLOW [NAME ...] [--pattern GLOB] [--yes]
    functionfuse storage rm   [--storage SPEC] WORKFLOW --all [--yes]
    functionfuse plan         [--storage SPEC] [WORKFLOW] --graph TARGET [--cache POLICY] [--json]
    functionfuse graph        TARGET [--out DIR] [--workflow NAME] [--storage SPEC] [--format dot,svg,png]
    functionfuse stack up|down|install|steps|check [--source DIR] [--dry-run] [--context CTX] [--no-kfp] [-f VALUES]
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
import os
import sys
from typing import Sequence

from ._clibase import _UsageError, _storage
from ._clistorage import add_storage_commands
from ._clitargets import _as_nodes, _load_object, add_plan_commands
from ._version import __version__
from .errors import FunctionFuseError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="functionfuse", description="Inspect and manage functionfuse workflows.")
    parser.add_argument("--version", action="version", version=f"functionfuse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    storage_help = (
        "storage: a folder, file:PATH, an S3 URL s3://bucket/prefix (or s3a://; endpoint and keys from AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or a JSON file of storage_factory options "
        "(default: $FUNCTIONFUSE_STORAGE or ./storage)"
    )
    add_storage_commands(sub, storage_help)
    add_plan_commands(sub, storage_help)

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
