"""A Dask array pipeline with its results on S3, run twice to show the resume.

    python examples/s3_pipeline.py                       # starts a local moto_server for the demo
    python examples/s3_pipeline.py --endpoint http://127.0.0.1:9000 --bucket results
                                                         # an S3 server of yours (credentials from
                                                         # AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)

Node ``measurements`` returns a Dask array: DaskArraySerializer writes it chunk by chunk
as Zarr under the result's data prefix, and the next nodes get it back lazily.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dask.array as da  # noqa: E402

from functionfuse import workflow  # noqa: E402
from functionfuse.backends.builtin.localback import LocalWorkflow  # noqa: E402
from functionfuse.serializers.daskarray import DaskArraySerializer  # noqa: E402
from functionfuse.storage import storage_factory  # noqa: E402


@workflow
def measurements(n, seed):
    print(f"  computing measurements ({n:,} values)")
    return da.random.default_rng(seed).normal(10.0, 2.0, size=(n,), chunks=n // 8)


@workflow
def standardize(x):
    print("  standardizing")
    return (x - x.mean()) / x.std()


@workflow
def summary(z):
    print("  summarizing")
    return {"mean": round(float(z.mean().compute()), 6), "std": round(float(z.std().compute()), 6)}


def local_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="S3 endpoint URL (default: start a local moto_server)")
    parser.add_argument("--bucket", default="functionfuse-demo", help="an existing bucket (with --endpoint)")
    parser.add_argument("--n", type=int, default=4_000_000)
    args = parser.parse_args()

    proc = None
    s3fs_options: dict = {}
    if args.endpoint is None:
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        proc, args.endpoint = local_server()
        s3fs_options = {"key": "demo", "secret": "demo"}
    s3fs_options["endpoint_url"] = args.endpoint
    try:
        storage = storage_factory({"kind": "S3", "options": {"path": f"{args.bucket}/examples", "s3fs": s3fs_options}})
        if proc is not None:
            storage.filesystem.mkdir(args.bucket)
        storage.register_persistent_serializers(DaskArraySerializer)

        x = measurements(args.n, seed=0).set_name("measurements")
        z = standardize(x).set_name("standardized")
        result = summary(z).set_name("summary")
        wf = LocalWorkflow(result, workflow_name="s3_pipeline")
        wf.set_storage(storage)

        for attempt in ("first run: every node runs; results go to S3", "second run: read back from S3"):
            print(f"== {attempt} ==")
            print("  result:", wf.run())
        print("stored tasks:", storage.list_tasks("s3_pipeline"))
        stored = storage.read_task("s3_pipeline", "standardized")
        print(f"'standardized' read back lazily: {type(stored).__name__}, chunks {stored.chunks[0][:2]}...")
        storage.remove_workflow("s3_pipeline")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
