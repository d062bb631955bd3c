"""A DAG run as a Prefect flow: shards load concurrently, a stateful node aggregates them.

Each node is a Prefect task named after the node; every result is also stored by
functionfuse, so a second run loads what the first one computed.

    # with Prefect's temporary local server (no setup)
    python examples/prefect_pipeline.py --storage examples/storage

    # against a Prefect server, to watch the run in the Prefect UI
    prefect server start --host 127.0.0.1 --port 4200        # in another terminal
    PREFECT_API_URL=http://127.0.0.1:4200/api python examples/prefect_pipeline.py
    # then open http://127.0.0.1:4200 (Runs -> the "prefect_pipeline" flow run)

For a Prefect deployment, ``flow`` below is the flow object: use
``examples/prefect_pipeline.py:flow`` as the entrypoint (the storage folder then comes
from FUNCTIONFUSE_STORAGE).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

from prefect.task_runners import ThreadPoolTaskRunner

from functionfuse import workflow
from functionfuse.backends.addons.prefectback import PrefectWorkflow
from functionfuse.storage import storage_factory

N_SHARDS = 4


@workflow
def load_shard(shard, size):
    """Pretend to download one shard (0.5 s of waiting): the shards load concurrently."""
    time.sleep(0.5)
    rng = random.Random(shard)
    return [rng.gauss(10.0 + shard, 3.0) for _ in range(size)]


@workflow
def clean(values, low, high):
    return [v for v in values if low <= v <= high]


@workflow
class RunningStats:
    """A stateful node: each update() is a task that runs after the previous one."""

    def __init__(self):
        self.n, self.total, self.total_sq = 0, 0.0, 0.0

    def update(self, values):
        self.n += len(values)
        self.total += sum(values)
        self.total_sq += sum(v * v for v in values)
        return self.n

    def summary(self):
        mean = self.total / self.n
        return {"n": self.n, "mean": mean, "std": math.sqrt(self.total_sq / self.n - mean * mean)}


@workflow
def count(values):
    return len(values)


@workflow
def report(summary, kept):
    return f"{summary['n']} values kept of {sum(kept)} loaded: mean {summary['mean']:.3f}, std {summary['std']:.3f}"


def build(storage_path: str) -> PrefectWorkflow:
    shards = [load_shard(k, 20_000).set_name(f"shard_{k}") for k in range(N_SHARDS)]
    cleaned = [clean(s, 0.0, 25.0).set_name(f"clean_{k}") for k, s in enumerate(shards)]
    stats = RunningStats().set_name("stats")
    for k, c in enumerate(cleaned):
        stats.update(c).set_name(f"update_{k}")
    summary = stats.summary().set_name("summary")
    loaded = [count(s).set_name(f"count_{k}") for k, s in enumerate(shards)]
    result = report(summary, loaded).set_name("report")

    wf = PrefectWorkflow(result, workflow_name="prefect_pipeline")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": storage_path}}))
    # any prefect.task option, per node: loading is I/O, so retry it
    wf.query("^shard_").set_task_args({"retries": 2, "retry_delay_seconds": 1, "tags": ["io"]})
    # any prefect.flow option: here, at most 4 tasks at a time
    wf.set_prefect_flow_options({"task_runner": ThreadPoolTaskRunner(max_workers=4), "log_prints": True})
    return wf


pipeline = build(os.environ.get("FUNCTIONFUSE_STORAGE", "storage"))
#: the Prefect flow (a deployment's entrypoint: examples/prefect_pipeline.py:flow)
flow = pipeline.generate_flow()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=None, help="folder for stored results (default: $FUNCTIONFUSE_STORAGE or ./storage)")
    args = parser.parse_args()
    wf = build(args.storage) if args.storage else pipeline

    print(wf.plan())
    start = time.perf_counter()
    print(wf.run())
    print(
        f"{time.perf_counter() - start:.2f} s: {wf.last_run.ran} tasks run, "
        f"{wf.last_run.loaded} results loaded from storage; Prefect flow run {wf.last_flow_run_id}"
    )
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if PREFECT_API_URL.value():
        print(f"see it in the Prefect UI: {PREFECT_UI_URL.value()}/runs/flow-run/{wf.last_flow_run_id}")


if __name__ == "__main__":
    main()
