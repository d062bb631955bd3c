"""Shared helpers of the image and container tests: the Docker daemon, the local base
image, and the functionfuse images, built once per test session with the real CLI.

The machine setup (Docker engine, local base image made by debootstrap) is done by
scripts/setup-docker.sh; when it could not be done it leaves the reason in
$FF_KIT_STATE/docker-unavailable, and these tests skip with that reason.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = os.environ.get("FF_KIT_STATE", "/var/tmp/functionfuse-kit")
#: FROM of the base image in tests: made locally (no image can be pulled on CI machines)
LOCAL_BASE = os.environ.get("FF_LOCAL_BASE_IMAGE", "functionfuse-local/debian-python:bookworm")
WHEELHOUSE = os.path.join(ROOT, "build", "wheelhouse")
FIGURES = os.path.join(ROOT, "build", "image-figures.json")


def modules_imported_parsing(argv: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of *modules* a fresh Python imports to parse the ``functionfuse`` command
    line *argv* (the kit subcommands import the Docker SDK only when they run)."""
    code = (
        "import sys, json\n"
        "from functionfuse.cli import build_parser\n"
        f"build_parser().parse_args({argv!r})\n"
        f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def _setup_reason() -> str:
    try:
        with open(os.path.join(STATE, "docker-unavailable")) as f:
            return f.read().strip()
    except OSError:
        return "run scripts/setup-docker.sh (make test does) to install and start it"


@functools.lru_cache(maxsize=None)
def _client_or_reason() -> tuple[object | None, str]:
    try:
        import docker
    except ImportError:
        return None, "the Docker SDK is not installed (pip install -r requirements/kit.txt)"
    try:
        client = docker.from_env(timeout=900)
        client.ping()
    except Exception as exc:
        return None, f"no Docker daemon answers ({exc}); {_setup_reason()}"
    try:
        client.images.get(LOCAL_BASE)
    except Exception:
        return None, f"the local base image {LOCAL_BASE} is missing; {_setup_reason()}"
    return client, ""


def docker_client():
    """The Docker SDK client, or skip the test with the reason Docker cannot be used."""
    client, reason = _client_or_reason()
    if client is None:
        pytest.skip(f"Docker is not usable here: {reason}")
    return client


@functools.lru_cache(maxsize=None)
def _build(names: tuple[str, ...]) -> dict:
    from functionfuse.cli import main

    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["image", "build", *names, "--base-image", LOCAL_BASE, "--wheelhouse", WHEELHOUSE, "--json"])
    assert code == 0, f"functionfuse image build failed ({code})"
    result = json.loads(out.getvalue())
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def built_images() -> dict[str, dict]:
    """The four images (base, ray, prefect, kfp), built once per session: {name: record}.

    Layers are cached by the Docker daemon, so a run after an unchanged build takes seconds.
    Sizes and build times are also written to build/image-figures.json.
    """
    client = docker_client()
    result = _build(("base", "ray", "prefect", "kfp"))
    images = {b["name"]: b for b in result["built"]}
    base = client.images.get(LOCAL_BASE)
    figures = {
        "local_base_image": {"tag": LOCAL_BASE, "size": base.attrs["Size"]},
        "images": images,
        "total_wall_seconds": result["wall_seconds"],
    }
    os.makedirs(os.path.dirname(FIGURES), exist_ok=True)
    with open(FIGURES, "w") as f:
        json.dump(figures, f, indent=2)
    return images
