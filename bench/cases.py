"""The benchmark cases. Each runs in a fresh interpreter (``run.py --case NAME``) and
returns a JSON-able dict of raw measurements; :mod:`run` turns them into table rows.

Timing rules, shared by every case:

* wall time with :func:`time.perf_counter`, best of N repetitions (every sample is
  kept in the JSON);
* the garbage collector stays in its default state (enabled, default thresholds)
  while timing. Between repetitions, *outside* the timed region, ``gc.collect()``
  frees the previous repetition's graph (nodes and their children lists form
  reference cycles), so that garbage is not charged to the next repetition.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import workloads as wl

MiB = 1 << 20
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass(frozen=True)
class Sizes:
    """Workload sizes and repetition counts of one mode (full or --quick)."""

    run_n: int = 20_000  # figure 1: chain run by LocalWorkflow and the plain loop
    run_dask_n: int = 2_000  # figure 1: dask chain (its build is quadratic: kept smaller)
    run_reps: int = 7  # figure 1: fast, so more repetitions
    buildrun_n: int = 4_000  # figure 2
    buildrun_reps: int = 7  # figure 2, functionfuse side (fast)
    buildrun_dask_reps: int = 3  # figure 2, dask side (seconds per repetition)
    build_ns: tuple[int, ...] = (25_000, 50_000, 100_000)  # figure 3
    build_reps: int = 7  # figure 3: fresh process per repetition
    build_target_n: int = 100_000  # figure 3: size the 0.5 s target is stated for
    io_bytes: int = 256 * MiB  # figure 4
    io_reps: int = 3
    mem_bytes: int = 100 * MiB  # figure 5: size of one array
    mem_nodes: int = 20
    fp_n: int = 20_000  # figure 6: chain run with storage, fingerprint vs name-only
    fp_reps: int = 3
    fp_array_bytes: int = 1024 * MiB  # figure 6: NumPy input hashed vs stored
    par_elems: int = 4_000_000  # figure 11: the array each of the independent nodes sorts
    par_nodes: int = 16
    par_sorts: int = 8  # np.sort calls per node (~0.2 s on an idle 2020s core)
    par_reps: int = 3
    par_py_nodes: int = 8  # figure 11, pure Python: nodes of a Python loop
    par_py_n: int = 1_500_000  # loop length (~0.04 s on an idle core)


FULL = Sizes()
QUICK = Sizes(
    run_n=2_000,
    run_dask_n=500,
    run_reps=5,
    buildrun_n=500,
    buildrun_reps=5,
    buildrun_dask_reps=3,
    build_ns=(2_500, 5_000, 10_000),
    build_reps=3,
    build_target_n=100_000,
    io_bytes=32 * MiB,
    io_reps=3,
    mem_bytes=20 * MiB,
    mem_nodes=20,
    fp_n=2_000,
    fp_reps=3,
    fp_array_bytes=64 * MiB,
    par_elems=1_000_000,
    par_nodes=16,
    par_sorts=2,
    par_reps=2,
    par_py_nodes=8,
    par_py_n=200_000,
)


def sizes_for(quick: bool) -> Sizes:
    return QUICK if quick else FULL


def sizes_dict(s: Sizes) -> dict[str, Any]:
    return asdict(s)


# -- helpers --------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call of *fn*."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best_of(fn: Callable[[], Any], reps: int, check: Callable[[Any], None] | None = None) -> list[float]:
    """Time *reps* calls of *fn* (each preceded by ``gc.collect()``, untimed); all samples."""
    samples = []
    for _ in range(reps):
        gc.collect()
        dt, out = timed(fn)
        samples.append(dt)
        if check is not None:
            check(out)
        del out
    return samples


def expect(value: Any, wanted: Any, what: str) -> None:
    if value != wanted:
        raise AssertionError(f"{what}: got {value!r}, expected {wanted!r}")


def maxrss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def filesystem_of(path: Path) -> str:
    """The file system type holding *path* (from the mount table), or '?'."""
    try:
        import psutil

        best, kind = "", "?"
        target = str(path.resolve())
        for part in psutil.disk_partitions(all=True):
            mp = part.mountpoint
            if (target == mp or target.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best, kind = mp, part.fstype
        return kind
    except Exception:  # informative only
        return "?"


# -- figure 1: scheduling overhead of LocalWorkflow.run -----------------------------------------
def case_run_ff(s: Sizes) -> dict[str, Any]:
    """``wf.run()`` on an already built chain: first run (compiles every node) and repeats."""
    n = s.run_n
    first: list[float] = []
    repeat: list[float] = []
    for _ in range(s.run_reps):
        gc.collect()
        wf = wl.ff_workflow(n)  # built, not timed
        dt, out = timed(wf.run)
        first.append(dt)
        expect(out, n, "first run result")
        for _ in range(3):
            dt, out = timed(wf.run)
            repeat.append(dt)
            expect(out, n, "repeated run result")
        del wf, out
    return {"n": n, "first_s": first, "repeat_s": repeat}


def case_run_loop(s: Sizes) -> dict[str, Any]:
    """The undecorated function called *n* times in a plain loop."""
    n = s.run_n
    samples = best_of(lambda: wl.plain_chain(n), s.run_reps, lambda out: expect(out, n, "loop result"))
    return {"n": n, "seconds": samples}


def case_run_dask(s: Sizes) -> dict[str, Any]:
    """``dask.delayed`` chain: ``compute(scheduler="sync")`` only (built once, untimed)."""
    import dask

    n = s.run_dask_n
    x = wl.dask_chain(n)
    samples = best_of(lambda: x.compute(scheduler="sync"), s.run_reps, lambda out: expect(out, n, "dask result"))
    return {"n": n, "seconds": samples, "dask": dask.__version__}


# -- figure 2: build + run ------------------------------------------------------------------
def case_buildrun_ff(s: Sizes) -> dict[str, Any]:
    """Create the nodes, construct LocalWorkflow and run: all timed."""
    n = s.buildrun_n
    samples = best_of(lambda: wl.ff_workflow(n).run(), s.buildrun_reps, lambda out: expect(out, n, "result"))
    return {"n": n, "seconds": samples}


def case_buildrun_dask(s: Sizes) -> dict[str, Any]:
    """Create the delayed chain and ``compute(scheduler="sync")``: all timed."""
    import dask

    n = s.buildrun_n
    raised = False

    def build_and_compute() -> Any:
        return wl.dask_chain(n).compute(scheduler="sync")

    try:
        build_and_compute()  # probe (untimed) whether dask recurses once per node here
    except RecursionError:
        # dask's chain may be handled recursively (by some versions, in tokenizing or
        # optimizing): give it the stack it needs rather than failing the comparison.
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * n + 1000))
        raised = True
    samples = best_of(build_and_compute, s.buildrun_dask_reps, lambda out: expect(out, n, "dask result"))
    return {"n": n, "seconds": samples, "recursion_limit_raised": raised, "dask": dask.__version__}


# -- figure 3: graph construction -------------------------------------------------------------
def case_build_graph(s: Sizes, n: int) -> dict[str, Any]:
    """One measurement per process: create *n* chained nodes, then construct LocalWorkflow."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    x = wl.ff_chain(n)
    t1 = time.perf_counter()
    wf = wl.LocalWorkflow(x, workflow_name="bench")
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    expect(len(wf.graph), n, "graph size")
    return {"n": n, "seconds": t2 - t0, "nodes_s": t1 - t0, "workflow_s": t2 - t1, "cpu_s": cpu}


# -- figure 4: FileStorage throughput ----------------------------------------------------------
def _raw_write(path: str, data: memoryview) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _raw_read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _remove_quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except (FileNotFoundError, KeyError, LookupError):
        pass


def case_storage_io(s: Sizes, tmp_parent: Path) -> dict[str, Any]:
    """``storage.save`` / ``storage.read_task`` of one array vs raw file writes / reads.

    Both sides write a new file each time (the previous one is removed, untimed) in the
    same folder; they alternate, and which goes first alternates too. Reads happen right
    after the writes, so both read from the page cache (warm): this isolates the CPU
    cost the storage adds (framing, checksum, unpickling) rather than the disk's speed.
    """
    import numpy as np

    from functionfuse.errors import TaskNotFoundError
    from functionfuse.storage import storage_factory

    tmp_parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ffbench-io-", dir=tmp_parent))
    try:
        arr = np.random.default_rng(0).random(s.io_bytes // 8)
        view = arr.data.cast("B")
        storage = storage_factory({"kind": "file", "options": {"path": str(root / "storage")}})
        raw_path = str(root / "raw.bin")
        wf, task = "bench_io", "array"

        def ours_write() -> None:
            storage.save(wf, task, arr, {})

        def raw_write() -> None:
            _raw_write(raw_path, view)

        def clear_ours() -> None:
            try:
                storage.remove_task(wf, task)
            except TaskNotFoundError:
                pass

        def clear_raw() -> None:
            _remove_quietly(lambda: os.remove(raw_path))

        w_ours: list[float] = []
        w_raw: list[float] = []
        for rep in range(s.io_reps):
            pair = [(ours_write, clear_ours, w_ours), (raw_write, clear_raw, w_raw)]
            for fn, clear, out in pair if rep % 2 == 0 else reversed(pair):
                clear()
                gc.collect()
                out.append(timed(fn)[0])

        back = storage.read_task(wf, task)  # verified once, untimed
        if not (back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)):
            raise AssertionError("storage.read_task returned a different array")
        del back
        if os.path.getsize(raw_path) != arr.nbytes:
            raise AssertionError("raw file has the wrong size")

        r_ours: list[float] = []
        r_raw: list[float] = []
        for rep in range(s.io_reps):
            pair2 = [(lambda: storage.read_task(wf, task), r_ours), (lambda: _raw_read(raw_path), r_raw)]
            for fn2, out in pair2 if rep % 2 == 0 else reversed(pair2):
                gc.collect()
                dt, obj = timed(fn2)
                del obj
                out.append(dt)
        return {
            "bytes": arr.nbytes,
            "folder": str(root),
            "filesystem": filesystem_of(root),
            "write_ours_s": w_ours,
            "write_raw_s": w_raw,
            "read_ours_s": r_ours,
            "read_raw_s": r_raw,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- figure 5: peak memory of a chain of large arrays ------------------------------------------
def _peak_growth(run: Callable[[], Any], check: Callable[[Any], None], prepare: Callable[[], Any] | None = None) -> dict[str, Any]:
    import psutil

    proc = psutil.Process()
    gc.collect()
    after_imports = proc.memory_info().rss
    keep = prepare() if prepare is not None else None  # e.g. build the graph (kept alive)
    gc.collect()
    base = proc.memory_info().rss
    floor = maxrss_bytes() - base  # growth can read no lower than this
    out = run()
    peak = maxrss_bytes()
    check(out)
    del keep
    return {
        "rss_after_imports": after_imports,
        "baseline_rss": base,
        "peak_rss": peak,
        "growth": peak - base,
        "floor": max(floor, 0),
    }


def _check_final(n_elems: int, n_nodes: int) -> Callable[[Any], None]:
    def check(a: Any) -> None:
        if isinstance(a, list):
            a = a[-1]
        expect(a.shape, (n_elems,), "final array shape")
        expect(float(a[0]), float(n_nodes - 1), "final array value")

    return check


def case_memory_ff(s: Sizes) -> dict[str, Any]:
    """LocalWorkflow (no storage) on the array chain; the graph is built before the baseline."""
    import numpy  # noqa: F401  (imported before the baseline, like the other variants)

    n_elems = s.mem_bytes // 8
    holder: dict[str, Any] = {}

    def prepare() -> Any:
        holder["wf"] = wl.LocalWorkflow(wl.ff_array_chain(n_elems, s.mem_nodes), workflow_name="bench_memory")
        return holder["wf"]

    res = _peak_growth(lambda: holder["wf"].run(), _check_final(n_elems, s.mem_nodes), prepare)
    return {"array_bytes": n_elems * 8, "nodes": s.mem_nodes, **res}


def case_memory_loop(s: Sizes) -> dict[str, Any]:
    """Plain loop ``x = step(x)``: the ideal (the old array dies once the new one exists)."""
    import numpy  # noqa: F401

    n_elems = s.mem_bytes // 8
    res = _peak_growth(lambda: wl.loop_array_chain(n_elems, s.mem_nodes), _check_final(n_elems, s.mem_nodes))
    return {"array_bytes": n_elems * 8, "nodes": s.mem_nodes, **res}


def case_memory_keepall(s: Sizes) -> dict[str, Any]:
    """Plain loop appending every array to a list: the check must fail for this one."""
    import numpy  # noqa: F401

    n_elems = s.mem_bytes // 8
    res = _peak_growth(lambda: wl.keepall_array_chain(n_elems, s.mem_nodes), _check_final(n_elems, s.mem_nodes))
    return {"array_bytes": n_elems * 8, "nodes": s.mem_nodes, **res}


def case_memory_ff_parallel(s: Sizes) -> dict[str, Any]:
    """LocalWorkflow(parallel=2) (no storage) on the array chain: the thread pool keeps the
    serial release schedule (the graph is built before the baseline)."""
    import numpy  # noqa: F401

    n_elems = s.mem_bytes // 8
    holder: dict[str, Any] = {}

    def prepare() -> Any:
        holder["wf"] = wl.LocalWorkflow(wl.ff_array_chain(n_elems, s.mem_nodes), workflow_name="bench_memory", parallel=2)
        return holder["wf"]

    res = _peak_growth(lambda: holder["wf"].run(), _check_final(n_elems, s.mem_nodes), prepare)
    return {"array_bytes": n_elems * 8, "nodes": s.mem_nodes, **res}


# -- figure 11: independent nodes side by side ---------------------------------------------------
def case_parallel(s: Sizes) -> dict[str, Any]:
    """*par_nodes* independent nodes, each sorting one array (NumPy releases the GIL),
    and their sum: LocalWorkflow serial, LocalWorkflow(parallel=2) and dask's threaded
    scheduler with 2 workers, the same functions, interleaved repetitions. Every run
    is timed whole (building each graph is not)."""
    import dask

    n, k, sorts = s.par_elems, s.par_nodes, s.par_sorts
    serial = wl.LocalWorkflow(wl.ff_fan(n, k, sorts), workflow_name="bench_par1")
    pool = wl.LocalWorkflow(wl.ff_fan(n, k, sorts), workflow_name="bench_par2", parallel=2)
    graph = wl.dask_fan(n, k, sorts)
    data = wl.make_data.__wrapped__(n, 0)
    t, _ = timed(lambda: wl.sort_work.__wrapped__(data, 1, sorts))
    del data
    out: dict[str, Any] = {"nodes": k, "elems": n, "sorts": sorts, "node_s": t, "loadavg_before": os.getloadavg()[0],
                           "serial_s": [], "parallel_s": [], "dask_s": []}
    results = []
    for _ in range(s.par_reps):
        for key, fn in (("serial_s", serial.run), ("parallel_s", pool.run),
                        ("dask_s", lambda: dask.compute(graph, scheduler="threads", num_workers=2)[0])):
            gc.collect()
            dt, value = timed(fn)
            out[key].append(dt)
            results.append(value)
    expect(len(set(results)), 1, "the same sum from every run")
    out["loadavg_after"] = os.getloadavg()[0]  # 1-minute load: other processes take cores from both pools
    return out


def case_parallel_python(s: Sizes) -> dict[str, Any]:
    """Nodes of a pure Python loop (the GIL held): serial LocalWorkflow, LocalWorkflow(parallel=2)
    (threads), and the same calls in a fresh pool of 2 forked processes (start included),
    interleaved repetitions; what threads cannot do and processes can."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    k, n = s.par_py_nodes, s.par_py_n
    serial = wl.LocalWorkflow(wl.ff_py_fan(k, n), workflow_name="bench_py1")
    pool = wl.LocalWorkflow(wl.ff_py_fan(k, n), workflow_name="bench_py2", parallel=2)
    f = wl.py_work.__wrapped__

    def processes() -> int:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
            return sum(ex.map(f, range(k), [n] * k))

    out: dict[str, Any] = {"nodes": k, "n": n, "loadavg_before": os.getloadavg()[0],
                           "serial_s": [], "threads_s": [], "processes_s": []}
    results = []
    for _ in range(s.par_reps):
        for key, fn in (("serial_s", serial.run), ("threads_s", pool.run), ("processes_s", processes)):
            gc.collect()
            dt, value = timed(fn)
            out[key].append(dt)
            results.append(value)
    expect(len(set(results)), 1, "the same sum from every run")
    out["loadavg_after"] = os.getloadavg()[0]
    return out


# -- figure 6: fingerprints -------------------------------------------------------------------------
def _shm_or(tmp_parent: Path) -> Path:
    """A memory file system if there is one (so storage costs no disk waits and the
    fingerprints' CPU cost shows in full), else *tmp_parent*."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    tmp_parent.mkdir(parents=True, exist_ok=True)
    return tmp_parent


def case_fingerprint_chain(s: Sizes, tmp_parent: Path) -> dict[str, Any]:
    """A chain run with file storage: the fingerprint policy against name-only reuse
    without fingerprints (the original behaviour), first run (every node runs and is
    saved) and resumed run (everything stored: the plan reads the workflow's
    fingerprint index, which the first run wrote when it ended). On the fingerprint
    side, also a resume with the index removed first (the plan reads every header and
    writes the index again): what the index saves.

    Both sides run alternately on a fresh storage folder each repetition.
    """
    from functionfuse.storage import storage_factory

    n = s.fp_n
    records_off = [{"v": 1, "node": "", "code": {}, "args": {}, "inputs": {}}] * n

    class NameOnly(wl.LocalWorkflow):
        """Reuse by name and record no fingerprints: the seed's behaviour."""

        def fingerprints(self) -> list[dict]:
            self._records = records_off
            return self._records

    base = Path(tempfile.mkdtemp(prefix="ffbench-fp-", dir=_shm_or(tmp_parent)))
    samples: dict[str, list[float]] = {
        "fp_first": [], "name_first": [], "fp_resume": [], "name_resume": [], "fp_resume_headers": [],
    }
    try:
        for rep in range(s.fp_reps):
            sides = [("fp", wl.LocalWorkflow, "fingerprint"), ("name", NameOnly, "name")]
            for label, cls, policy in sides if rep % 2 == 0 else reversed(sides):
                folder = base / f"{label}-{rep}"
                wf = cls(wl.ff_chain(n), workflow_name="chain")
                wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(folder)}}))
                wf.set_cache(policy)
                gc.collect()
                dt, out = timed(wf.run)
                expect(out, n, "first run")
                samples[f"{label}_first"].append(dt)
                gc.collect()
                dt, out = timed(wf.run)
                expect(out, n, "resumed run")
                expect(wf.last_run.ran, 0, "nodes run on resume")
                samples[f"{label}_resume"].append(dt)
                if label == "fp":
                    wf.storage.remove_fingerprint_index("chain")
                    gc.collect()
                    dt, out = timed(wf.run)
                    expect((out, wf.last_run.ran), (n, 0), "resumed run without the index")
                    samples["fp_resume_headers"].append(dt)
                shutil.rmtree(folder, ignore_errors=True)
                del wf
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"n": n, "filesystem": filesystem_of(base.parent), **samples}


def case_fingerprint_array(s: Sizes, tmp_parent: Path) -> dict[str, Any]:
    """Fingerprinting a large NumPy argument vs storing the same array (FileStorage.save,
    on disk: bench/results)."""
    import numpy as np

    from functionfuse.fingerprint import Fingerprinter
    from functionfuse.storage import storage_factory

    tmp_parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ffbench-fparr-", dir=tmp_parent))
    try:
        arr = np.random.default_rng(1).random(s.fp_array_bytes // 8)
        storage = storage_factory({"kind": "file", "options": {"path": str(root)}})
        fp_s: list[float] = []
        save_s: list[float] = []
        for _ in range(s.io_reps):
            gc.collect()
            fp_s.append(timed(lambda: Fingerprinter().value(arr))[0])
            gc.collect()
            save_s.append(timed(lambda: storage.save("wf", "array", arr, {}))[0])
        return {"bytes": arr.nbytes, "filesystem": filesystem_of(root), "fingerprint_s": fp_s, "save_s": save_s}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def case_signing(s: Sizes, tmp_parent: Path) -> dict[str, Any]:
    """Storing a large NumPy array signed (FUNCTIONFUSE_STORAGE_KEY set) vs unsigned, the
    two interleaved, on a memory file system when there is one (no disk writeback, which
    makes single saves to disk vary by 3x, hides or inflates the CPU cost: on tmpfs a
    store is as fast as it gets, so the relative cost of signing is the largest); plus the
    signature pass alone."""
    import numpy as np

    from functionfuse.storage import signing, storage_factory

    base = _shm_or(tmp_parent)
    base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ffbench-sign-", dir=base))
    try:
        arr = np.random.default_rng(2).random(s.fp_array_bytes // 8)
        storage = storage_factory({"kind": "file", "options": {"path": str(root)}})
        key = "bench-signing-key-0123456789abcdef"
        signer = signing.Signer(key.encode())
        plain_s: list[float] = []
        signed_s: list[float] = []
        mac_s: list[float] = []
        for _ in range(max(s.io_reps, 7)):
            os.environ.pop(signing.ENV_KEY, None)
            gc.collect()
            plain_s.append(timed(lambda: storage.save("wf", "plain", arr, {}))[0])
            os.environ[signing.ENV_KEY] = key
            gc.collect()
            signed_s.append(timed(lambda: storage.save("wf", "signed", arr, {}))[0])
            mac_s.append(timed(lambda: signer.payload_hasher().update(memoryview(arr).cast("B")))[0])
        expect(storage.read_metadata("wf", "signed")["signed"], True, "the signed result is signed")
        os.environ.pop(signing.ENV_KEY, None)
        return {"bytes": arr.nbytes, "filesystem": filesystem_of(root), "plain_s": plain_s, "signed_s": signed_s,
                "mac_s": mac_s}
    finally:
        os.environ.pop("FUNCTIONFUSE_STORAGE_KEY", None)
        shutil.rmtree(root, ignore_errors=True)


#: case name -> function; build_graph also takes ``n``, storage_io the temporary folder
CASES: dict[str, Callable[..., dict[str, Any]]] = {
    "run_ff": case_run_ff,
    "run_loop": case_run_loop,
    "run_dask": case_run_dask,
    "buildrun_ff": case_buildrun_ff,
    "buildrun_dask": case_buildrun_dask,
    "build_graph": case_build_graph,
    "storage_io": case_storage_io,
    "memory_ff": case_memory_ff,
    "memory_loop": case_memory_loop,
    "memory_keepall": case_memory_keepall,
    "memory_ff_parallel": case_memory_ff_parallel,
    "parallel": case_parallel,
    "parallel_python": case_parallel_python,
    "fingerprint_chain": case_fingerprint_chain,
    "fingerprint_array": case_fingerprint_array,
    "signing": case_signing,
}
