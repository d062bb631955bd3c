"""Fingerprints across machines: results stored in S3 by a laptop run (LocalWorkflow) are
reused by a cluster run (RayWorkflow on a two-node Ray cluster), and the other way round.

The "laptop" and the "cluster" are separate processes with their own checkout of the
same project (different folders, different hash seeds); they share only the S3 server
(moto on 127.0.0.1, in a process of its own).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import s3support
from test_fingerprint import PIPELINE

pytest.importorskip("s3fs", reason="the s3 extra is not installed")

TESTS = os.path.dirname(os.path.abspath(__file__))

RUNNER = '''
import json, os, sys
src, options, backend = sys.argv[1:4]
sys.path.insert(0, src)
import pipeline
from functionfuse.storage import storage_factory
with open(options) as f:
    storage = storage_factory(json.load(f))
if backend == "ray":
    import raysupport
    cluster = raysupport.start_cluster([{"num_cpus": 1}, {"num_cpus": 1}])
    from functionfuse.backends.builtin.rayback import RayWorkflow
    wf = RayWorkflow(pipeline.build(), workflow_name="shared")
    wf.set_storage(storage)
    wf.set_cache("fingerprint")
    result = wf.run(return_results=True)
    nodes = len(__import__("ray").nodes())
    __import__("ray").shutdown()
    cluster.shutdown()
else:
    from functionfuse.backends.builtin.localback import LocalWorkflow
    wf = LocalWorkflow(pipeline.build(), workflow_name="shared")
    wf.set_storage(storage)
    wf.set_cache("fingerprint")
    result = wf.run()
    nodes = 1
print(json.dumps({"result": result, "ran": wf.last_run.ran, "nodes": nodes}))
'''


@pytest.fixture
def s3(tmp_path):
    server = s3support.MotoProcess().start()
    try:
        bucket = server.make_bucket()
        options = tmp_path / "storage.json"
        options.write_text(json.dumps({"kind": "S3", "options": {"path": f"{bucket}/results", "s3fs": server.s3fs_options()}}))
        yield options
    finally:
        server.stop()


def checkout(where, scale=2):
    where.mkdir(parents=True)
    (where / "pipeline.py").write_text(PIPELINE.format(scale=scale, n=5, offset=0, helper_extra=""))
    return where


def run(tmp_path, src, options, backend, hashseed):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=os.pathsep.join([str(src), TESTS]))
    out = subprocess.run([sys.executable, str(runner), str(src), str(options), backend], capture_output=True,
                         text=True, env=env, cwd=src, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_laptop_results_in_s3_are_reused_by_a_cluster_run_and_back(tmp_path, s3):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    laptop = checkout(tmp_path / "laptop" / "project")
    cluster = checkout(tmp_path / "cluster" / "srv" / "checkout")

    first = run(tmp_path, laptop, s3, "local", hashseed="1")
    assert first["ran"] == 3
    on_cluster = run(tmp_path, cluster, s3, "ray", hashseed="2")
    assert on_cluster["nodes"] == 2, "the cluster run must use the two-node cluster"
    assert on_cluster["result"] == first["result"] and on_cluster["ran"] == 0

    # the helper changes on the cluster's checkout: only what uses it runs again there...
    shutil.rmtree(cluster)
    checkout(cluster, scale=3)
    changed = run(tmp_path, cluster, s3, "ray", hashseed="3")
    assert changed["ran"] == 2 and changed["result"] != first["result"]
    # ...and the laptop, given the same change, reuses what the cluster stored
    shutil.rmtree(laptop)
    checkout(laptop, scale=3)
    back = run(tmp_path, laptop, s3, "local", hashseed="4")
    assert back["ran"] == 0 and back["result"] == changed["result"]
