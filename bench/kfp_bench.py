"""KFPWorkflow step images: first build, rebuild after a one-line change, no-op.

    python bench/kfp_bench.py [--quick] [--base-image IMAGE] [--wheelhouse DIR]

Prints one JSON row per figure, in the format of the engine rows of ``bench/run.py``:
``{"name", "ours", "baseline", "unit", "ratio", "target", "pass", "detail"}``:

* rebuild after a one-line change to the user's code vs the first build: ``ours`` is
  ``build_image()`` after appending a line to the project's module, ``baseline`` is the
  first ``build_image()`` of the fresh project with Docker's layer cache off
  (``nocache=True``: the dependency install included, from the wheelhouse served on
  127.0.0.1, so no package index is involved). Target: ratio <= 0.5, and the install
  layer came from Docker's cache.
* unchanged project vs the first build: ``build_image()`` again with nothing changed,
  right after a build: the content hash finds the image, nothing is built. Target:
  ratio <= 0.05, and nothing built.
* the base layers the rebuild reused: build steps Docker took from its cache vs all
  build steps of the rebuild (a count). Target: the dependency install layer is one.

Full run: the rebuild and the no-op are the best of 3 (each rebuild after another
one-line change); ``--quick``: one each. The first build runs once either way. The project
is the seed's quick-start DAG in a module of a temporary folder. Needs a Docker daemon
(``scripts/setup-docker.sh``) and the local base image it makes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REBUILD_TARGET = 0.5  # rebuild / first build
NOOP_TARGET = 0.05  # unchanged / first build

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


def layer_counts(lines: list[str]) -> tuple[int, int, bool]:
    """(build steps taken from Docker's cache, build steps, whether the dependency install
    step was one of the cached) from a classic-builder log."""
    steps: list[list[str]] = []
    for line in lines:
        if re.match(r"^Step \d+/\d+ :", line):
            steps.append([line])
        elif steps:
            steps[-1].append(line)
    cached = [any("Using cache" in line for line in step) for step in steps]
    install = [c for step, c in zip(steps, cached) if "pip install" in step[0]]
    return sum(cached), len(steps), bool(install) and all(install)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one rebuild and one no-op instead of the best of 3")
    parser.add_argument("--base-image", default=os.environ.get("FF_LOCAL_BASE_IMAGE",
                                                                "functionfuse-local/debian-python:bookworm"))
    parser.add_argument("--wheelhouse", default=os.path.join(ROOT, "build", "wheelhouse"))
    args = parser.parse_args()
    reps = 1 if args.quick else 3

    from functionfuse.backends.addons.kfpback import KFPWorkflow
    from functionfuse.kit.images import docker_client

    client = docker_client()
    project = tempfile.mkdtemp(prefix="functionfuse-kfp-bench-")
    made: list[str] = []
    try:
        path = os.path.join(project, f"{MODULE}.py")
        with open(path, "w") as f:
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

        def measure(**build: Any) -> tuple[float, KFPWorkflow, list[str]]:
            lines: list[str] = []
            wf = workflow()
            t = time.perf_counter()
            ref = wf.build_image(on_log=lines.append, **build)
            seconds = time.perf_counter() - t
            made.append(ref)
            return seconds, wf, lines

        first, wf, _lines = measure(nocache=True)
        assert wf.last_build is not None and wf.last_build.built
        context_bytes = wf.last_build.context_bytes

        rebuilds: list[tuple[float, int, int, bool, bool]] = []
        for rep in range(reps):
            with open(path, "a") as f:
                f.write(f"\nVERSION_{rep} = {rep}  # a one-line change\n")
            seconds, wf, lines = measure()
            assert wf.last_build is not None
            cached, steps, install_cached = layer_counts(lines)
            rebuilds.append((seconds, cached, steps, install_cached, wf.last_build.built))
        rebuild = min(rebuilds)
        ratio = rebuild[0] / first
        install_cached = all(r[3] for r in rebuilds)
        print(json.dumps({
            "name": "rebuild after a one-line change vs first build",
            "ours": round(rebuild[0], 3),
            "baseline": round(first, 3),
            "unit": "s",
            "ratio": round(ratio, 4),
            "target": f"<= {REBUILD_TARGET}",
            "pass": ratio <= REBUILD_TARGET and install_cached and all(r[4] for r in rebuilds),
            "detail": {"rebuild_seconds": [round(r[0], 3) for r in rebuilds], "install_layer_cached": install_cached,
                       "first_build": "nocache=True", "context_bytes": context_bytes},
        }), flush=True)

        noops: list[tuple[float, bool]] = []
        for _ in range(reps):
            workflow().build_image(on_log=None)  # untimed: the image of the project as it is now exists
            seconds, wf, _lines = measure()
            assert wf.last_build is not None
            noops.append((seconds, wf.last_build.built))
        noop = min(noops)
        ratio = noop[0] / first
        print(json.dumps({
            "name": "unchanged project: build skipped vs first build",
            "ours": round(noop[0], 3),
            "baseline": round(first, 3),
            "unit": "s",
            "ratio": round(ratio, 4),
            "target": f"<= {NOOP_TARGET}",
            "pass": ratio <= NOOP_TARGET and not any(built for _s, built in noops),
            "detail": {"noop_seconds": [round(s, 3) for s, _b in noops], "built": [b for _s, b in noops]},
        }), flush=True)

        _s, cached, steps, _install, _built = rebuild
        print(json.dumps({
            "name": "base layers reused by the rebuild (cached build steps vs all)",
            "ours": cached,
            "baseline": steps,
            "unit": "steps",
            "ratio": round(cached / steps, 3) if steps else None,
            "target": "dependency install layer cached",
            "pass": install_cached,
            "detail": {"cached_steps": [r[1] for r in rebuilds], "build_steps": [r[2] for r in rebuilds]},
        }), flush=True)
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
