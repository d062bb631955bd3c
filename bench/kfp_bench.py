"""KFPWorkflow step images: first build, rebuild after a one-line change, no-op.

    python bench/kfp_bench.py [--base-image IMAGE] [--wheelhouse DIR]

Prints one JSON object per line: ``{"name", "seconds", "unit", ...}``, one per figure:

* ``kfp_first_build``: ``build_image()`` of a fresh project with Docker's layer cache
  off (``nocache=True``): the dependency install included (packages from the wheelhouse,
  served on 127.0.0.1, so no index is involved).
* ``kfp_rebuild_one_line``: the same project after a one-line change to the user's
  code: only the project and snapshot layers are rebuilt; ``cached_layers`` counts the
  build steps Docker took from its cache (the install layer must be one of them,
  ``install_layer_cached``).
* ``kfp_noop``: ``build_image()`` again with nothing changed: the content hash finds the
  image, nothing is built (``built`` is false).

The project is the seed's quick-start DAG in a module of a temporary folder. Needs a
Docker daemon (``scripts/setup-docker.sh``) and the local base image it makes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODULE = "ffkfp_bench_dag"
SOURCE = '''\
from functionfuse import workflow


@workflow
def sum(a, b):
    return a + b


@workflow
def multiply(a, b):
    return a * b


def build():
    a_plus_b = sum(1, 1).set_name("node1")
    a_plus_two_b = sum(a_plus_b, 1).set_name("node2")
    return multiply(a_plus_b, a_plus_two_b).set_name("node3")
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-image", default=os.environ.get("FF_LOCAL_BASE_IMAGE",
                                                                "functionfuse-local/debian-python:bookworm"))
    parser.add_argument("--wheelhouse", default=os.path.join(ROOT, "build", "wheelhouse"))
    args = parser.parse_args()

    from functionfuse.backends.addons.kfpback import KFPWorkflow
    from functionfuse.kit.images import docker_client

    client = docker_client()
    project = tempfile.mkdtemp(prefix="functionfuse-kfp-bench-")
    made: list[str] = []
    try:
        with open(os.path.join(project, f"{MODULE}.py"), "w") as f:
            f.write(SOURCE)
        with open(os.path.join(project, ".dockerignore"), "w") as f:
            f.write("data/\n")
        sys.path.insert(0, project)
        module = importlib.import_module(MODULE)

        def workflow() -> KFPWorkflow:
            wf = KFPWorkflow(module.build(), workflow_name="kfp-bench", baseimage=args.base_image)
            wf.set_project(project)
            wf.set_wheelhouse(args.wheelhouse)
            return wf

        def measure(name: str, **build: object) -> tuple[float, KFPWorkflow, list[str]]:
            lines: list[str] = []
            wf = workflow()
            t = time.perf_counter()
            ref = wf.build_image(on_log=lines.append, **build)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t
            made.append(ref)
            return seconds, wf, lines

        def report(name: str, seconds: float, wf: KFPWorkflow, lines: list[str], **extra: object) -> None:
            assert wf.last_build is not None
            cached = sum(1 for line in lines if "Using cache" in line)
            print(json.dumps({"name": name, "seconds": round(seconds, 3), "unit": "s", "built": wf.last_build.built,
                              "cached_layers": cached, "image": wf.last_build.reference,
                              "context_bytes": wf.last_build.context_bytes, **extra}), flush=True)

        seconds, wf, lines = measure("first", nocache=True)
        report("kfp_first_build", seconds, wf, lines)

        with open(os.path.join(project, f"{MODULE}.py"), "a") as f:
            f.write("\nVERSION = 2  # a one-line change\n")
        seconds, wf, lines = measure("rebuild")
        text = "\n".join(lines)
        at = text.find("pip install")
        install_cached = at >= 0 and "Using cache" in text[at: at + 300]
        report("kfp_rebuild_one_line", seconds, wf, lines, install_layer_cached=install_cached)

        seconds, wf, lines = measure("noop")
        report("kfp_noop", seconds, wf, lines)
    finally:
        sys.path.remove(project) if project in sys.path else None
        shutil.rmtree(project, ignore_errors=True)
        for ref in dict.fromkeys(made):
            try:
                client.images.remove(ref, force=True)
            except Exception:
                pass
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
