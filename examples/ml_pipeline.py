"""A small machine-learning pipeline: dataset -> split -> train -> evaluate.

Run it twice with the same storage folder: the first run computes and stores every
node; the second reads the stored results and runs nothing.

    python examples/ml_pipeline.py --storage examples/storage
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.backends.plugins import RandomStatePlugin
from functionfuse.storage import storage_factory


@workflow
def make_dataset(n_samples, n_features):
    """Two Gaussian blobs, one per class."""
    rng = np.random.default_rng(0)
    half = n_samples // 2
    x = np.vstack([rng.normal(-0.15, 1.0, (half, n_features)), rng.normal(0.15, 1.0, (half, n_features))])
    y = np.concatenate([np.zeros(half), np.ones(half)])
    return x, y


@workflow
def split(dataset, test_fraction):
    x, y = dataset
    order = np.random.permutation(len(y))  # seeded per node by RandomStatePlugin
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


@workflow
def train(data, epochs, learning_rate):
    """Logistic regression by full-batch gradient descent."""
    x, y = data["x_train"], data["y_train"]
    w = np.zeros(x.shape[1])
    b = 0.0
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= learning_rate * x.T @ (p - y) / len(y)
        b -= learning_rate * float(np.mean(p - y))
    return {"w": w, "b": b}


@workflow
def evaluate(model, data):
    logits = data["x_test"] @ model["w"] + model["b"]
    return float(np.mean((logits > 0) == (data["y_test"] == 1)))


def build():
    dataset = make_dataset(20_000, 50).set_name("dataset")
    data = split(dataset, 0.2).set_name("split")
    model = train(data, epochs=600, learning_rate=0.5).set_name("model")
    return evaluate(model, data).set_name("accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="storage", help="folder for stored results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    wf = LocalWorkflow(build(), workflow_name="classifier")
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": args.storage}}))
    wf.query("^split$").set_plugin(RandomStatePlugin(seed=42))
    print(wf.plan())
    start = time.perf_counter()
    accuracy = wf.run()
    print(f"accuracy = {accuracy:.4f}  ({time.perf_counter() - start:.2f} s; "
          f"{wf.last_run.ran} nodes run, {wf.last_run.loaded} loaded from storage)")


if __name__ == "__main__":
    main()
