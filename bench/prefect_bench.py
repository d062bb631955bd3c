"""PrefectWorkflow overhead per node vs the same DAG written directly with Prefect.

    python bench/prefect_bench.py [--quick]

Prints one JSON object per line: ``{"name", "ours", "baseline", "unit", "ratio",
"target", "pass"}``.

The DAG: 200 nodes, 20 layers of 10, each node adding two nodes of the layer before
(trivial work, so the figure is orchestration overhead). *ours* builds the nodes, a
``PrefectWorkflow`` and its flow, and runs it (no storage). The baseline is the same
DAG written by hand as one ``@task`` submitted 200 times in a ``@flow``, with the same
task runner (8 threads) and the same cache policy (``NO_CACHE``, PrefectWorkflow's
default): first as a Prefect user writes it (futures passed straight to ``.submit``),
then, on a second line, with the futures wrapped in ``opaque()`` as PrefectWorkflow
passes them (Prefect resolves those faster, so that line isolates our own layer).

Every variant runs against one Prefect temporary local server, interleaved, after a
warm-up, and each measurement starts once the server has recorded every task run of
the previous flow. The figure is the median wall time of a whole flow call divided by
the number of nodes; it includes Prefect's fixed cost per flow run (about a second).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Prefect reads its settings when first imported: keep its files out of ~/.prefect, use
# the temporary local server, send nothing anywhere, and keep stdout for the results.
_HOME = tempfile.mkdtemp(prefix="functionfuse-bench-prefect-")
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # busy CI machines
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_PROFILE", None)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import wait  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.utilities.annotations import opaque  # noqa: E402

from functionfuse import workflow  # noqa: E402
from functionfuse.backends.addons.prefectback import PrefectWorkflow  # noqa: E402

WIDTH, DEPTH = 10, 20
TARGET = 1.2
WORKERS = 8


def _add(a: int, b: int) -> int:
    return a + b


ff_add = workflow(_add)
pf_add = task(_add, cache_policy=NO_CACHE)


def ours() -> tuple[list[int], object]:
    layer = [ff_add(k, 1).set_name(f"n_0_{k}") for k in range(WIDTH)]
    for d in range(1, DEPTH):
        layer = [ff_add(layer[k], layer[(k + 1) % WIDTH]).set_name(f"n_{d}_{k}") for k in range(WIDTH)]
    wf = PrefectWorkflow(*layer, workflow_name="bench_ours")
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=WORKERS)})
    return wf.run(), wf.last_flow_run_id


def _baseline_dag(wrap) -> list[int]:
    futures = []
    layer = [pf_add.submit(k, 1) for k in range(WIDTH)]
    futures += layer
    for _ in range(1, DEPTH):
        layer = [pf_add.submit(wrap(layer[k]), wrap(layer[(k + 1) % WIDTH])) for k in range(WIDTH)]
        futures += layer
    wait(futures)
    return [f.result() for f in layer]


@flow(name="bench_baseline", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def baseline() -> list[int]:
    """The DAG as a Prefect user writes it: futures passed straight to .submit()."""
    return _baseline_dag(lambda f: f)


@flow(name="bench_baseline_opaque", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS))
def baseline_opaque() -> list[int]:
    """The same, with futures wrapped in ``opaque()`` as PrefectWorkflow passes them."""
    return _baseline_dag(opaque)


def run_flow(f) -> tuple[list[int], object]:
    state = f(return_state=True)
    return state.result(), state.state_details.flow_run_id


def settle(flow_run_id: object, tasks: int, timeout: float = 300.0) -> None:
    """Wait until the server has recorded every task run of the flow run.

    The server records task runs from events after the flow returns; a measurement
    started before that backlog is processed would pay for the previous flow.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.ID_DESC,
                limit=200,
            )
            if sum(1 for r in runs if r.state is not None and r.state.is_final()) >= tasks:
                break
            time.sleep(0.25)
    time.sleep(0.5)


def timed(fn, tasks: int) -> tuple[float, object]:
    t0 = time.perf_counter()
    out, flow_run_id = fn()
    elapsed = time.perf_counter() - t0
    settle(flow_run_id, tasks)
    return elapsed, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    reps = 3 if args.quick else 7
    nodes = WIDTH * DEPTH
    try:
        # warm-up (starts the temporary server), and every variant computes the same
        expected = timed(lambda: run_flow(baseline), nodes)[1]
        assert timed(lambda: run_flow(baseline_opaque), nodes)[1] == expected
        assert timed(ours, nodes)[1] == expected, "PrefectWorkflow and the hand-written flow disagree"
        times: dict[str, list[float]] = {"ours": [], "plain": [], "opaque": []}
        for _ in range(reps):  # interleaved, so drift and load affect every variant alike
            times["plain"].append(timed(lambda: run_flow(baseline), nodes)[0])
            times["ours"].append(timed(ours, nodes)[0])
            times["opaque"].append(timed(lambda: run_flow(baseline_opaque), nodes)[0])
        med = {k: statistics.median(v) / nodes for k, v in times.items()}
        rows = [
            ("prefect_overhead_per_node_200", med["ours"], med["plain"]),
            ("prefect_overhead_per_node_200_vs_opaque_futures", med["ours"], med["opaque"]),
        ]
        for name, ours_s, base_s in rows:
            ratio = ours_s / base_s
            print(json.dumps({
                "name": name,
                "ours": round(ours_s * 1e3, 3),
                "baseline": round(base_s * 1e3, 3),
                "unit": "ms/node",
                "ratio": round(ratio, 3),
                "target": f"<= {TARGET}",
                "pass": ratio <= TARGET,
            }), flush=True)
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.server.api.server import SubprocessASGIServer

        APILogWorker.drain_all(timeout=20)
        EventsWorker.drain_all(timeout=20)
        SubprocessASGIServer().stop()
        shutil.rmtree(_HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
