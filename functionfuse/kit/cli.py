"""``functionfuse image build|push`` and ``functionfuse release``: the deployment-kit
subcommands of the ``functionfuse`` command.

Only argparse is imported here; :mod:`functionfuse.kit.images`, :mod:`functionfuse.kit.release`
(and the Docker SDK) are imported when a subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["add_image_commands", "add_release_command", "add_auth_arguments", "registry_password"]

IMAGES = ("base", "ray", "prefect", "kfp")


def _names(values: list[str]) -> list[str]:
    if not values or "all" in values:
        return list(IMAGES)
    return values


def registry_password(args: argparse.Namespace) -> str | None:
    """The registry password of a command with :func:`add_auth_arguments`: None without
    ``--username``; else one line of standard input (``--password-stdin``) or
    ``$FUNCTIONFUSE_REGISTRY_PASSWORD`` (kept in memory, never written to disk)."""
    if args.username is None:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = os.environ.get("FUNCTIONFUSE_REGISTRY_PASSWORD")
    if password is None:
        from ..errors import ConfigurationError

        raise ConfigurationError(
            "--username needs a password: pass --password-stdin or set FUNCTIONFUSE_REGISTRY_PASSWORD "
            "(it is kept in memory and sent with each push, never written to disk)."
        )
    return password


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_build(args: argparse.Namespace) -> int:
    from . import images

    engine_bases: dict[str, str] = {}
    for item in args.engine_base_image or []:
        engine, sep, image = item.partition("=")
        if not sep or not image:
            from ..errors import ConfigurationError

            raise ConfigurationError(f"--engine-base-image {item!r} must look like ENGINE=IMAGE, e.g. ray=rayproject/ray:2.60.0-py311-cpu.")
        engine_bases[engine] = image
    password = registry_password(args) if args.push else None
    on_log = None if (args.quiet or args.json) else (lambda line: print(f"  {line}", file=sys.stderr))
    built = images.build_images(
        _names(args.images),
        repository=args.repository,
        base_image=args.base_image,
        engine_base_images=engine_bases,
        project=args.project,
        wheelhouse=args.wheelhouse,
        nocache=args.no_cache,
        on_log=on_log,
    )
    pushed: list[Any] = []
    if args.push:
        pushed = images.push_images([b.tag for b in built], args.push, username=args.username, password=password)
    if args.json:
        print(json.dumps({"built": [b.as_dict() for b in built], "pushed": [p.as_dict() for p in pushed]}, indent=2))
        return 0
    for b in built:
        print(f"{b.tag:<40} {_mb(b.size):>10}  {b.seconds:6.1f} s  (FROM {b.base_image})")
    for p in pushed:
        print(f"pushed {p.reference} {p.digest or ''}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from . import images

    client = images.docker_client()
    tags = args.tag or images.local_images(client, _names(args.images), repository=args.repository)
    if not tags:
        print("No functionfuse images of this version are built here: run `functionfuse image build` first.", file=sys.stderr)
        return 1
    pushed = images.push_images(tags, args.registry, username=args.username, password=registry_password(args), client=client)
    if args.json:
        print(json.dumps([p.as_dict() for p in pushed], indent=2))
    else:
        for p in pushed:
            print(f"pushed {p.reference} {p.digest or ''}  ({p.seconds:.1f} s)")
    return 0


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--username`` and ``--password-stdin`` (see :func:`registry_password`) to *parser*."""
    parser.add_argument("--username", help="registry user (the password comes from --password-stdin or $FUNCTIONFUSE_REGISTRY_PASSWORD)")
    parser.add_argument("--password-stdin", action="store_true", help="read the registry password from standard input")


def add_image_commands(sub: Any) -> None:
    """Add ``image build`` and ``image push`` to the ``functionfuse`` command's subparsers."""
    img = sub.add_parser("image", help="build and push the functionfuse container images")
    img_sub = img.add_subparsers(dest="image_command", required=True)

    build = img_sub.add_parser(
        "build",
        help="build images tagged <version>-py3XX[-engine] (base, ray, prefect, kfp)",
        description="Build the functionfuse images with the local Docker daemon (classic builder, host network).",
    )
    build.add_argument("images", nargs="*", metavar="IMAGE", help="base, ray, prefect, kfp or all (default: all)")
    build.add_argument("--base-image", default="python:3.11-slim", help="FROM of the base image (default: python:3.11-slim)")
    build.add_argument(
        "--engine-base-image",
        action="append",
        metavar="ENGINE=IMAGE",
        help="FROM of an engine image instead of the base just built, e.g. ray=rayproject/ray:2.60.0-py311-cpu",
    )
    build.add_argument("--repository", default="functionfuse", help="image repository name (default: functionfuse)")
    build.add_argument(
        "--wheelhouse",
        metavar="DIR",
        help="collect wheels on this machine into DIR and serve them to the builds on 127.0.0.1 (no index access in builds)",
    )
    build.add_argument("--project", help="functionfuse source tree to build from (default: this checkout)")
    build.add_argument("--push", metavar="REGISTRY", help="push the images to REGISTRY (host[:port]) once built")
    build.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    build.add_argument("--quiet", "-q", action="store_true", help="do not print the build output")
    build.add_argument("--json", action="store_true", help="print JSON (tags, sizes, build times, digests)")
    add_auth_arguments(build)
    build.set_defaults(func=cmd_build)

    push = img_sub.add_parser("push", help="push the images built here to a registry")
    push.add_argument("registry", help="registry host[:port][/namespace], e.g. 127.0.0.1:5000")
    push.add_argument("images", nargs="*", metavar="IMAGE", help="base, ray, prefect, kfp or all (default: all built here)")
    push.add_argument("--repository", default="functionfuse", help="repository name the images were built with (default: functionfuse)")
    push.add_argument("--tag", action="append", help="push this local repository:tag instead (repeatable)")
    push.add_argument("--json", action="store_true", help="print JSON")
    add_auth_arguments(push)
    push.set_defaults(func=cmd_push)


def _engine_bases(items: list[str] | None) -> dict[str, str]:
    bases: dict[str, str] = {}
    for item in items or []:
        engine, sep, image = item.partition("=")
        if not sep or not image:
            from ..errors import ConfigurationError

            raise ConfigurationError(f"--engine-base-image {item!r} must look like ENGINE=IMAGE, e.g. ray=rayproject/ray:2.60.0-py311-cpu.")
        bases[engine] = image
    return bases


def cmd_release(args: argparse.Namespace) -> int:
    from . import release

    if args.check_versions:
        from .images import project_root

        wrong = release.version_mismatches(args.project or project_root())
        for line in wrong:
            print(line, file=sys.stderr)
        if not wrong:
            from .._version import __version__

            print(f"every chart, image default and manifest names functionfuse {__version__}")
        return 1 if wrong else 0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    on_log = None if (args.quiet or args.json) else (lambda line: print(f"  {line}", file=sys.stderr))
    report = release.release(
        args.registry,
        steps=steps,
        project=args.project,
        base_image=args.base_image,
        engine_base_images=_engine_bases(args.engine_base_image),
        wheelhouse=args.wheelhouse,
        dist_dir=args.dist,
        plain_http=args.plain_http,
        on_log=on_log,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    for a in report.artifacts:
        print(f"{a.action:<9} {a.kind:<5} {a.reference}  {a.digest or ''}".rstrip())
    print(f"functionfuse {report.version}: {len(report.pushed)} artifact(s) pushed, "
          f"{sum(a.action == 'unchanged' for a in report.artifacts)} already published ({report.seconds:.1f} s)")
    return 0


def add_release_command(sub: Any) -> None:
    """Add ``release`` to the ``functionfuse`` command's subparsers."""
    rel = sub.add_parser(
        "release",
        help="build and publish this version: sdist and wheel, images, Helm charts (OCI)",
        description=(
            "Build the sdist and wheel (dist/), build and push every image to REGISTRY/functionfuse, "
            "package every chart and push it to oci://REGISTRY/charts. Artifacts the registry already "
            "holds are not pushed again. Credentials: $FUNCTIONFUSE_REGISTRY_USERNAME and "
            "$FUNCTIONFUSE_REGISTRY_PASSWORD, else docker login / helm registry login."
        ),
    )
    rel.add_argument("registry", nargs="?", help="host[:port][/namespace], e.g. ghcr.io/functionfuse or 127.0.0.1:5000/ff")
    rel.add_argument("--steps", default="dist,images,charts", help="comma-separated steps to run (default: dist,images,charts)")
    rel.add_argument("--check-versions", action="store_true", help="only check that every chart, image default and manifest names this version")
    rel.add_argument("--base-image", default="python:3.11-slim", help="FROM of the base image (default: python:3.11-slim)")
    rel.add_argument("--engine-base-image", action="append", metavar="ENGINE=IMAGE", help="FROM of an engine image instead of the base")
    rel.add_argument("--wheelhouse", metavar="DIR", help="build the images from wheels collected into DIR (see `image build`)")
    rel.add_argument("--dist", metavar="DIR", help="where the sdist and wheel go (default: dist/ of the project)")
    rel.add_argument("--plain-http", action=argparse.BooleanOptionalAction, default=None,
                     help="helm talks HTTP to the registry (default: only for 127.0.0.0/8 and localhost)")
    rel.add_argument("--project", help="functionfuse source tree to release (default: this checkout)")
    rel.add_argument("--quiet", "-q", action="store_true", help="do not print the build output")
    rel.add_argument("--json", action="store_true", help="print JSON (every artifact, pushed or unchanged, with digests)")
    rel.set_defaults(func=cmd_release)
