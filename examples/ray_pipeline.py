"""The dataset -> split -> train -> evaluate pipeline of ml_pipeline.py, on Ray.

This is the seed's RayWorkflow example as written: Ray gets two custom resources,
``_disk`` (the node that holds the storage) and ``_model`` (the node that trains);
results are stored by the ``ray`` storage kind on the ``_disk`` node, and the ``model``
node is placed on the ``_model`` node. Run it twice with the same storage folder: the
second run reads the stored results back and runs nothing.

    python examples/ray_pipeline.py --storage storage

The results are ordinary functionfuse files: ``storage_factory({"kind": "file", ...})``
reads them on this machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

# Keep the local Ray that this example starts on 127.0.0.1 (Ray otherwise also listens
# on the machine's network address). Must be set before ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ml_pipeline import build  # noqa: E402 - the same DAG LocalWorkflow runs

from functionfuse.backends.builtin.rayback import RayWorkflow  # noqa: E402
from functionfuse.backends.plugins import RandomStatePlugin  # noqa: E402
from functionfuse.graph import Graph  # noqa: E402
from functionfuse.storage import storage_factory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="storage", help="folder for stored results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    graph = Graph([build()])
    dataset = graph.nodes[graph.name_index["dataset"]]  # the root: the seed starts from it

    # -- the seed example, as written ------------------------------------------------------
    ray_init_args = {
        "resources": {"_disk": 1.0, "_model": 1},
        "include_dashboard": False,
    }

    ray_storage_remote_args = {
        "resources": {"_disk": 0.001}
    }

    ray_workflow = RayWorkflow(dataset, workflow_name="classifier", ray_init_args=ray_init_args)

    # Ray init is called in the RayWorkflow constructor!!! Storage should be created AFTER RayWorkflow is created.
    storage_path = os.path.join(os.getcwd(), args.storage)
    opt = {
        "kind": "ray",
        "options": {
            "remoteArgs": ray_storage_remote_args,
            "path": storage_path,
        }
    }

    storage = storage_factory(opt)
    ray_workflow.set_storage(storage)
    ray_workflow.query(pattern="^model$").set_remote_args({"num_cpus": 1, "resources": {"_model": 1}})
    ray_workflow.query(pattern="^split$").set_plugin(RandomStatePlugin(seed=42))

    print(ray_workflow.plan())
    start = time.perf_counter()
    _ = ray_workflow.run()
    # -----------------------------------------------------------------------------------------
    stats = ray_workflow.last_run
    print(f"accuracy = {storage.read_task('classifier', 'accuracy'):.4f}  ({time.perf_counter() - start:.2f} s; "
          f"{stats.ran} nodes run, {stats.loaded} loaded from storage)")


if __name__ == "__main__":
    main()
