"""Writing a Dask array through S3 storage vs plain ``dask.array.to_zarr``, on a local S3 server.

    python bench/s3_bench.py [--quick]

Prints one JSON object per line: ``{"name", "ours", "baseline", "unit", "ratio",
"target", "pass"}`` (plus ``"detail"``).

It starts its own S3 server (``moto_server`` on a free port of 127.0.0.1, in a process
of its own) and stops it at the end. The array: float64 random numbers,
``da.random.default_rng(seed).random``, 1 GiB in 64 MiB chunks (``--quick``: 128 MiB in
16 MiB chunks), generated chunk by chunk while it is written, by Dask's threaded
scheduler with one thread per core.

* **ours**: ``storage.save(...)`` of the array on an ``S3`` storage with
  ``DaskArraySerializer`` registered (a Zarr array under the result's data prefix, then
  the result object).
* **baseline**: ``dask.array.to_zarr(arr, "s3://bucket/...", storage_options=...)``:
  the same chunks, the same Zarr defaults (format 3, zstd), the same server.

Each write runs in a fresh interpreter (this script with ``--child``): imports and an
untimed warm-up write (clients, codecs) come first, then the peak-RSS mark is reset
(``/proc/self/clear_refs``), and the figure is the wall time of the write and the
peak RSS growth during it (``VmHWM`` minus the RSS before). Ours and the baseline
alternate; best time and lowest peak of the repetitions are reported, every sample in
``detail``. Rows:

* ``s3_dask_write_throughput``: MiB/s, ratio ours/baseline, target >= 0.7;
* ``s3_dask_write_peak_memory``: peak growth in MiB; ``baseline`` is one chunk per
  writing thread, so the ratio is in chunks per thread, target < 3 (the plain
  ``to_zarr`` figure is in ``detail``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT_TARGET = 0.7
MEMORY_TARGET = 3.0
MiB = 1 << 20


# -- the child: one write, measured -------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


def _peak() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # pragma: no cover - old kernels: the peak then includes the imports
        return False


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import gc

    import dask
    import dask.array as da

    options = {"endpoint_url": args.endpoint, "key": "bench", "secret": "bench"}
    n = args.size // 8
    chunk = args.chunk // 8
    arr = da.random.default_rng(args.seed).random((n,), chunks=chunk)
    small = da.random.default_rng(0).random((4 * 1024,), chunks=1024)
    name = f"{args.child}-{uuid.uuid4().hex[:8]}"

    if args.child == "ours":
        from functionfuse.serializers.daskarray import DaskArraySerializer
        from functionfuse.storage import storage_factory

        storage = storage_factory({"kind": "S3", "options": {"path": f"{args.bucket}/bench", "s3fs": options}})
        storage.register_persistent_serializers(DaskArraySerializer)

        def write(a, task):
            storage.save("bench", task, a)
    else:

        def write(a, task):
            da.to_zarr(a, f"s3://{args.bucket}/baseline/{task}.zarr", storage_options=options)

    with dask.config.set(scheduler="threads", num_workers=args.threads):
        write(small, f"warmup-{name}")
        gc.collect()
        before = _rss()
        exact = _reset_peak()
        t0 = time.perf_counter()
        write(arr, name)
        seconds = time.perf_counter() - t0
        peak = _peak()
    print(json.dumps({"seconds": seconds, "growth": max(0, peak - before), "exact_peak": exact}), flush=True)


# -- the parent: server, repetitions, rows ------------------------------------------------------
def _fs(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, key="bench", secret="bench", skip_instance_cache=True)


def _run_child(mode: str, endpoint: str, bucket: str, size: int, chunk: int, threads: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--endpoint", endpoint, "--bucket", bucket,
           "--size", str(size), "--chunk", str(chunk), "--threads", str(threads), "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} write failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 MiB in 16 MiB chunks, instead of 1 GiB in 64 MiB")
    parser.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    size, chunk, reps = (128 * MiB, 16 * MiB, 3) if args.quick else (1024 * MiB, 64 * MiB, 3)
    threads = os.cpu_count() or 1
    # keep the AWS settings of the machine out of the measurement
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    sys.path.insert(0, str(ROOT / "tests"))
    from s3support import MotoProcess  # moto_server in a process of its own, on 127.0.0.1

    server = MotoProcess().start()
    endpoint = server.endpoint
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        fs = _fs(endpoint)
        fs.mkdir(bucket)
        samples: dict[str, list[dict]] = {"ours": [], "baseline": []}
        for rep in range(reps):
            order = ("baseline", "ours") if rep % 2 == 0 else ("ours", "baseline")
            for mode in order:
                samples[mode].append(_run_child(mode, endpoint, bucket, size, chunk, threads, seed=rep))
                fs.rm(f"{bucket}/*", recursive=True)  # untimed: keep the server's memory flat
                fs.invalidate_cache()
        best = {m: min(s["seconds"] for s in v) for m, v in samples.items()}
        low = {m: min(s["growth"] for s in v) for m, v in samples.items()}
        rate = {m: size / MiB / best[m] for m in best}
        ratio = rate["ours"] / rate["baseline"]
        detail = {
            "size_mib": size // MiB, "chunk_mib": chunk // MiB, "threads": threads, "repetitions": reps,
            "seconds": {m: [round(s["seconds"], 3) for s in v] for m, v in samples.items()},
            "peak_growth_mib": {m: [round(s["growth"] / MiB, 1) for s in v] for m, v in samples.items()},
            "exact_peak": all(s["exact_peak"] for v in samples.values() for s in v),
        }
        print(json.dumps({
            "name": "s3_dask_write_throughput",
            "ours": round(rate["ours"], 1),
            "baseline": round(rate["baseline"], 1),
            "unit": "MiB/s",
            "ratio": round(ratio, 3),
            "target": f">= {THROUGHPUT_TARGET}",
            "pass": ratio >= THROUGHPUT_TARGET,
            "detail": detail,
        }), flush=True)
        per_thread = chunk * threads
        mem_ratio = low["ours"] / per_thread
        print(json.dumps({
            "name": "s3_dask_write_peak_memory",
            "ours": round(low["ours"] / MiB, 1),
            "baseline": round(per_thread / MiB, 1),
            "unit": "MiB",
            "ratio": round(mem_ratio, 3),
            "target": f"< {MEMORY_TARGET}",
            "pass": mem_ratio < MEMORY_TARGET,
            "detail": {
                "baseline_is": f"one {chunk // MiB} MiB chunk per writing thread ({threads} threads)",
                "to_zarr_peak_mib": round(low["baseline"] / MiB, 1),
                "to_zarr_chunks_per_thread": round(low["baseline"] / per_thread, 3),
            },
        }), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
