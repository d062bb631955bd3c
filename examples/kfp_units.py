"""200 cheap nodes as a handful of Kubeflow Pipelines steps (execution units).

A measurement campaign: one settings node, 49 samples of four small steps each
(simulate, denoise, calibrate, measure) and a summary of three nodes: 200 nodes, most
of them far cheaper than starting a pod. ``KFPWorkflow`` runs linear chains in one
container step and merges steps until at most 10 remain (``set_fusion``); each node's
result is still stored as soon as it is computed, and reports and errors name nodes.

    python examples/kfp_units.py --report            # how the steps were chosen (offline)
    python examples/kfp_units.py --compile units.yaml
    python examples/kfp_units.py --local --storage ./storage   # every step in a local container
    python examples/kfp_units.py --local --no-fusion           # one step (container) per node

``--local`` needs Docker (``scripts/setup-docker.sh``) and a base image with Python 3
(``--base-image``; ``--wheelhouse DIR`` installs packages without an index);
bench/kfp_bench.py times both local runs side by side.
"""

from __future__ import annotations

import argparse
import os
import random

from functionfuse import workflow

#: samples of the campaign (each four nodes)
SAMPLES = 49


@workflow
def settings(gain, offset, points):
    return {"gain": gain, "offset": offset, "points": points}


@workflow
def simulate(setup, seed):
    rng = random.Random(seed)
    return [setup["gain"] * rng.gauss(0.0, 1.0) + setup["offset"] for _ in range(setup["points"])]


@workflow
def denoise(signal):
    return [(a + b + c) / 3 for a, b, c in zip(signal, signal[1:], signal[2:])]


@workflow
def calibrate(signal):
    low = min(signal)
    return [x - low for x in signal]


@workflow
def measure(signal):
    mean = sum(signal) / len(signal)
    return {"mean": mean, "spread": max(signal) - min(signal)}


@workflow
def collect(*measurements):
    return list(measurements)


@workflow
def best(measurements):
    return max(range(len(measurements)), key=lambda k: measurements[k]["spread"])


@workflow
def summary(measurements, winner):
    means = [m["mean"] for m in measurements]
    return {"samples": len(measurements), "mean": round(sum(means) / len(means), 6), "best": winner}


def campaign(samples: int = SAMPLES):
    """The DAG: ``1 + 4 * samples + 3`` nodes (200 for the default 49 samples)."""
    setup = settings(2.0, 1.0, 64).set_name("settings")
    results = []
    for k in range(samples):
        signal = simulate(setup, k).set_name(f"simulate_{k:02d}")
        clean = calibrate(denoise(signal).set_name(f"denoise_{k:02d}")).set_name(f"calibrate_{k:02d}")
        results.append(measure(clean).set_name(f"measure_{k:02d}"))
    measurements = collect(*results).set_name("collect")
    return summary(measurements, best(measurements).set_name("best")).set_name("summary")


def main() -> None:
    from functionfuse.backends.addons.kfpback import KFPWorkflow
    from functionfuse.storage import storage_factory

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", action="store_true", help="print how the nodes were put into steps")
    parser.add_argument("--compile", metavar="FILE", help="write the pipeline YAML (offline)")
    parser.add_argument("--local", action="store_true", help="run every step in a local container")
    parser.add_argument("--no-fusion", action="store_true", help="one step per node")
    parser.add_argument("--storage", help="folder of the stored results")
    parser.add_argument("--base-image", default="python:3.11-slim")
    parser.add_argument("--wheelhouse", help="install Python packages from this wheel folder (no index needed)")
    args = parser.parse_args()

    wf = KFPWorkflow(campaign(), workflow_name="kfp-units", baseimage=args.base_image)
    wf.set_project(os.path.dirname(os.path.abspath(__file__)), exclude=["storage/", "*.ffr"])  # this folder
    if args.wheelhouse:
        wf.set_wheelhouse(args.wheelhouse)
    if args.no_fusion:
        wf.set_fusion(False)
    if args.storage:
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": args.storage}}))
    if args.report or not (args.compile or args.local):
        print(wf.step_units())
    if args.compile:
        print(wf.compile(args.compile))
    if args.local:
        print(wf.run_local())
        print(wf.last_run)


if __name__ == "__main__":
    main()
