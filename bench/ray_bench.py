"""RayWorkflow on a real local Ray: per-node overhead, execution units, and a 100,000-node DAG.

    python bench/ray_bench.py [--quick]

Prints one JSON object per line: ``{"name", "ours", "baseline", "unit", "ratio",
"target", "pass"}`` (plus a few extra keys that describe the row).

* ``ray_fanout_per_node``: a 2,000-node fan-out/fan-in (one source, 2,000 nodes that
  each take it, one node that takes them all; trivial work, so the figure is
  orchestration). *ours* builds the nodes and a ``RayWorkflow`` and runs it
  (``return_results=True``, no storage); *baseline* is the same DAG written directly as
  ``ray.remote`` tasks and ``ray.get`` of the last one. Both run in the same Ray,
  alternately, after a warm-up; the figure is the median wall time divided by the
  number of nodes (``median_pair_ratio`` is the median of the ratios of runs made back
  to back). Target: ours at most 1.3x the baseline.
* ``ray_100k_nodes_bounded``: 99,999 nodes (1,000 chains of 99 steps, built layer by
  layer, whose ends are summed pairwise in a binary tree) run with
  ``max_pending_tasks=1000``. *ours* is the
  driver's peak resident memory during the run (sampled every 50 ms), *baseline* its
  resident memory just before ``run()`` (Ray started, DAG built); the row passes if the
  run completes with the right result. ``--quick`` uses 10,000 nodes.
* ``ray_chain_10k``: a 10,000-node chain of trivial nodes (``x + 1``). *ours* builds
  the nodes and a ``RayWorkflow`` and runs it (fusion on, the default: the chain is one
  execution unit, one Ray task); *baseline* is the same chain as chained ``ray.remote``
  tasks (each takes the previous one's ref) and ``ray.get`` of the last. Median wall
  times of runs made alternately, in seconds. Target: ours at most 0.1x the baseline
  (10x faster).
* ``ray_fanout_10ms_per_node``: the fan-out/fan-in of the first row with nodes that
  each sleep 10 ms (so the 2 CPUs, not the driver, bound both): fusion must not cost
  parallelism (the 2,000 middle nodes are 2,000 tasks on both sides). Measured as the
  first row. Target: ours at most 1.1x the baseline.

Ray is started here with 2 CPUs on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``)
and shut down at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
import ray  # noqa: E402

from functionfuse import workflow  # noqa: E402
from functionfuse.backends.builtin.rayback import RayWorkflow  # noqa: E402

FANOUT = 2000
TARGET = 1.3
CHAIN = 10_000
CHAIN_TARGET = 0.1
SLOW_SECONDS = 0.01
SLOW_TARGET = 1.1


# -- the DAG, both ways ------------------------------------------------------------------------
def _source():
    return 1


def _middle(x, i):
    return x + i


def _total(*xs):
    return sum(xs)


source, middle, total = workflow(_source), workflow(_middle), workflow(_total)


@ray.remote
def r_source():
    return 1


@ray.remote
def r_middle(x, i):
    return x + i


@ray.remote
def r_total(*xs):
    return sum(xs)


EXPECTED = sum(1 + i for i in range(FANOUT))


def run_ours() -> int:
    s = source()
    out = total(*[middle(s, i) for i in range(FANOUT)])
    return RayWorkflow(out, workflow_name="bench_fanout").run(return_results=True)


def run_baseline() -> int:
    s = r_source.remote()
    return ray.get(r_total.remote(*[r_middle.remote(s, i) for i in range(FANOUT)]))


def paired(ours_fn, base_fn, expected, repeats: int) -> tuple[list[float], list[float]]:
    """Wall times of *repeats* runs of each, alternately (ours first), each checked."""
    ours, base = [], []
    for _ in range(repeats):
        for fn, times in ((ours_fn, ours), (base_fn, base)):
            t = time.perf_counter()
            assert fn() == expected
            times.append(time.perf_counter() - t)
    return ours, base


def per_node_row(name: str, ours: list[float], base: list[float], nodes: int, target: float) -> dict:
    o = statistics.median(ours) / nodes * 1e3
    b = statistics.median(base) / nodes * 1e3
    pairs = statistics.median(a / b for a, b in zip(ours, base))
    return {
        "name": name,
        "ours": round(o, 4),
        "baseline": round(b, 4),
        "unit": "ms/node",
        "ratio": round(o / b, 3),
        "target": f"<= {target}",
        "pass": o / b <= target,
        "nodes": nodes,
        "repeats": len(ours),
        # each pair runs back to back, so load from other processes mostly cancels out
        "median_pair_ratio": round(pairs, 3),
    }


def fanout_row(repeats: int) -> dict:
    assert run_ours() == EXPECTED and run_baseline() == EXPECTED  # warm-up: workers, imports
    ours, base = paired(run_ours, run_baseline, EXPECTED, repeats)
    return per_node_row("ray_fanout_per_node", ours, base, FANOUT + 2, TARGET)


# -- 10 ms nodes: fusion must not cost parallelism ----------------------------------------------
def _slow_middle(x, i):
    time.sleep(SLOW_SECONDS)
    return x + i


slow_middle = workflow(_slow_middle)


@ray.remote
def r_slow_middle(x, i):
    time.sleep(SLOW_SECONDS)
    return x + i


def run_ours_slow() -> int:
    s = source()
    out = total(*[slow_middle(s, i) for i in range(FANOUT)])
    return RayWorkflow(out, workflow_name="bench_fanout_10ms").run(return_results=True)


def run_baseline_slow() -> int:
    s = r_source.remote()
    return ray.get(r_total.remote(*[r_slow_middle.remote(s, i) for i in range(FANOUT)]))


def slow_fanout_row(repeats: int) -> dict:
    assert run_ours_slow() == EXPECTED and run_baseline_slow() == EXPECTED  # warm-up
    ours, base = paired(run_ours_slow, run_baseline_slow, EXPECTED, repeats)
    row = per_node_row("ray_fanout_10ms_per_node", ours, base, FANOUT + 2, SLOW_TARGET)
    row["node_seconds"] = SLOW_SECONDS
    return row


# -- a chain of trivial nodes: one execution unit vs one Ray task per node ------------------------
def _step(x):
    return x + 1


step = workflow(_step)


@ray.remote
def r_step(x):
    return x + 1


def run_ours_chain(n: int = CHAIN) -> int:
    x = 0
    for _ in range(n):
        x = step(x)
    return RayWorkflow(x, workflow_name="bench_chain").run(return_results=True)


def run_baseline_chain(n: int = CHAIN) -> int:
    x = 0
    for _ in range(n):
        x = r_step.remote(x)
    return ray.get(x)


def chain_row(repeats: int) -> dict:
    assert run_ours_chain(100) == 100 and run_baseline_chain(100) == 100  # warm-up
    ours, base = paired(run_ours_chain, run_baseline_chain, CHAIN, repeats)
    o, b = statistics.median(ours), statistics.median(base)
    return {
        "name": "ray_chain_10k",
        "ours": round(o, 3),
        "baseline": round(b, 3),
        "unit": "s",
        "ratio": round(o / b, 4),
        "target": f"<= {CHAIN_TARGET}",
        "pass": o / b <= CHAIN_TARGET,
        "nodes": CHAIN,
        "repeats": repeats,
        "speedup": round(b / o, 1),
        "median_pair_ratio": round(statistics.median(a / c for a, c in zip(ours, base)), 4),
    }


# -- a big DAG with bounded submission ---------------------------------------------------------
def _pair(a, b):
    return a + b


pair = workflow(_pair)


def big_dag(n_nodes: int):
    """``chains`` chains of ``length`` steps from 0, built layer by layer (so that the
    topological order interleaves the chains and the ``max_pending_tasks`` window holds
    independent tasks), then the chain ends summed pairwise in a binary tree: about
    *n_nodes* nodes in all. Returns (output node, node count, expected result)."""
    chains = max(2, n_nodes // 100)
    length = max(1, (n_nodes - (chains - 1)) // chains)
    ends = [step(0) for _ in range(chains)]
    for _ in range(length - 1):
        ends = [step(x) for x in ends]
    nodes = chains * length
    while len(ends) > 1:
        nxt = [pair(ends[k], ends[k + 1]) for k in range(0, len(ends) - 1, 2)]
        nodes += len(nxt)
        if len(ends) % 2:
            nxt.append(ends[-1])
        ends = nxt
    return ends[0], nodes, chains * length


class PeakRSS:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def big_row(n_nodes: int, max_pending: int) -> dict:
    out, nodes, expected = big_dag(n_nodes)
    wf = RayWorkflow(out, workflow_name="bench_big")
    before = psutil.Process().memory_info().rss
    t = time.perf_counter()
    with PeakRSS() as mem:
        result = wf.run(return_results=True, max_pending_tasks=max_pending)
    seconds = time.perf_counter() - t
    mb = 1024 * 1024
    return {
        "name": "ray_100k_nodes_bounded" if n_nodes >= 100_000 else f"ray_{n_nodes // 1000}k_nodes_bounded",
        "ours": round(mem.peak / mb, 1),
        "baseline": round(before / mb, 1),
        "unit": "MB",  # driver RSS: peak during the run (ours) vs just before it (baseline)
        "ratio": round(mem.peak / before, 3),
        "target": "completes with bounded driver memory",
        "pass": result == expected,
        "nodes": nodes,
        "max_pending_tasks": max_pending,
        "growth_bytes_per_node": round((mem.peak - before) / nodes),
        "seconds": round(seconds, 1),
        "ms_per_node": round(seconds / nodes * 1e3, 3),
    }


ROWS = ("fanout", "big", "chain", "fanout_10ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and a 10,000-node big DAG")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS, help="the rows to measure (default: all)")
    args = ap.parse_args()
    quick = args.quick
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for row in args.rows:
            if row == "fanout":
                result = fanout_row(3 if quick else 7)
            elif row == "big":
                result = big_row(10_000 if quick else 100_000, 1000)
            elif row == "chain":
                result = chain_row(1 if quick else 3)
            else:
                result = slow_fanout_row(2 if quick else 5)
            print(json.dumps(result), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
