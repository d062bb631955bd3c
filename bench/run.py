"""functionfuse benchmark suite: ``make bench`` / ``python bench/run.py [--quick]``.

The driver runs every case in a fresh interpreter (``run.py --case NAME``, which prints
one line of JSON), then prints one table comparing each figure with its baseline and
target, writes it to ``bench/results/latest.json`` and prints a summary line. Failed
targets do not change the exit status (this is a report); a case that crashes does
(exit status 1). See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import cases
from cases import MiB, RESULTS_DIR, Sizes, sizes_dict, sizes_for
from report import CONTRAST, INFO, Row, error_row, judged, render, summarize, summary_line

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
CASE_TIMEOUT_S = 600

# -- targets (the project's) -------------------------------------------------------------------
RUN_US_PER_NODE = 2.0  # figure 1: LocalWorkflow.run <= 2 us per node
BUILDRUN_SPEEDUP = 10.0  # figure 2: dask time / ours >= 10
BUILD_S_100K = 0.5  # figure 3: 100,000-node graph built in < 0.5 s
IO_RATIO = 0.8  # figure 4: storage throughput / raw throughput >= 0.8
MEM_RATIO = 3.0  # figure 5: peak growth < 3 arrays
FP_OVERHEAD = 1.2  # figure 6: fingerprint-policy run / name-only run <= 1.2
FP_ARRAY = 0.05  # figure 6: fingerprinting an array / storing it < 0.05
SIGN_OVERHEAD = 1.05  # figure 6: storing an array signed / unsigned < 1.05
PAR_SPEEDUP = 1.7  # figure 11: serial LocalWorkflow / LocalWorkflow(parallel=2) >= 1.7
PAR_VS_DASK = 0.9  # figure 11: dask threads (2 workers) / LocalWorkflow(parallel=2) >= 0.9

#: figures 7-10: the engine benchmarks, standalone scripts that start their own servers
#: (Ray, Prefect, an S3 server, Docker and a registry) and print one JSON row per figure:
#: ``{"name", "ours", "baseline", "unit", "ratio", "target", "pass", ...}``
ENGINES = (("7", "Ray", "ray_bench.py"), ("8", "Prefect", "prefect_bench.py"), ("9", "S3", "s3_bench.py"),
           ("10", "KFP", "kfp_bench.py"))
ENGINE_TIMEOUT_S = 1800


# -- running cases -------------------------------------------------------------------------------
def run_case_here(name: str, quick: bool, n: int | None, tmpdir: Path) -> dict[str, Any]:
    """``--case`` mode: run one case in this process and return its measurements."""
    s = sizes_for(quick)
    fn = cases.CASES[name]
    if name == "build_graph":
        return fn(s, n if n is not None else s.build_ns[-1])
    if name in ("storage_io", "fingerprint_chain", "fingerprint_array", "signing"):
        return fn(s, tmpdir)
    return fn(s)


def run_case_subprocess(name: str, quick: bool, n: int | None, tmpdir: Path) -> dict[str, Any]:
    """Run one case in a fresh interpreter; ``{"error": ...}`` if it fails."""
    cmd = [sys.executable, str(HERE), "--case", name, "--tmpdir", str(tmpdir)]
    if quick:
        cmd.append("--quick")
    if n is not None:
        cmd += ["--n", str(n)]
    label = name if n is None else f"{name} n={n}"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT_S, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CASE_TIMEOUT_S} s"}
    dt = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"[bench] {label}: FAILED ({tail})", file=sys.stderr, flush=True)
        return {"error": tail, "stderr": proc.stderr[-4000:]}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        print(f"[bench] {label}: FAILED (output is not JSON)", file=sys.stderr, flush=True)
        return {"error": f"output is not JSON: {lines[-1][:200]!r}"}
    print(f"[bench] {label}: {dt:.1f} s", file=sys.stderr, flush=True)
    return result


def collect(quick: bool, tmpdir: Path, engines: bool = True) -> dict[str, Any]:
    """Every case's raw measurements, keyed by case (build_graph: by size)."""
    s = sizes_for(quick)
    raw: dict[str, Any] = {}
    for name in ("run_ff", "run_loop", "run_dask", "buildrun_ff", "buildrun_dask"):
        raw[name] = run_case_subprocess(name, quick, None, tmpdir)
    # figure 3: one fresh process per size *and* repetition; sizes interleaved
    builds: dict[int, list[dict[str, Any]]] = {n: [] for n in s.build_ns}
    for _ in range(s.build_reps):
        for n in s.build_ns:
            builds[n].append(run_case_subprocess("build_graph", quick, n, tmpdir))
    raw["build_graph"] = {str(n): v for n, v in builds.items()}
    for name in ("storage_io", "memory_ff", "memory_loop", "memory_keepall", "memory_ff_parallel", "fingerprint_chain",
                 "fingerprint_array", "signing", "parallel", "parallel_python"):
        raw[name] = run_case_subprocess(name, quick, None, tmpdir)
    if engines:
        raw["engines"] = {script: run_engine(script, quick) for _fig, _engine, script in ENGINES}
    return raw


def run_engine(script: str, quick: bool) -> dict[str, Any]:
    """Run one engine benchmark script; ``{"rows": [...]}`` or ``{"error": ...}``."""
    path = HERE.parent / script
    if not path.exists():
        return {"error": f"{script} not found"}
    cmd = [sys.executable, str(path), *(["--quick"] if quick else [])]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S, cwd=REPO,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {ENGINE_TIMEOUT_S} s"}
    rows = []
    for line in proc.stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "name" in row:
            rows.append(row)
    dt = time.perf_counter() - t0
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"[bench] {script}: FAILED ({tail})", file=sys.stderr, flush=True)
        return {"error": tail, "rows": rows, "stderr": proc.stderr[-4000:]}
    print(f"[bench] {script}: {dt:.1f} s", file=sys.stderr, flush=True)
    return {"rows": rows, "seconds": round(dt, 1)}


# -- rows ------------------------------------------------------------------------------------------
def _failed_cases(raw: dict[str, Any]) -> list[str]:
    out = [name for name, d in raw.items() if name not in ("build_graph", "engines") and _err(d)]
    out += [script for script, d in raw.get("engines", {}).items() if _err(d)]
    for n, reps in raw["build_graph"].items():
        bad = sum(1 for d in reps if _err(d))
        if bad:
            out.append(f"build_graph n={n} ({bad}x)")
    return out


def _err(d: dict[str, Any]) -> str | None:
    e = d.get("error")
    return None if e is None else str(e)


def rows_run(raw: dict[str, Any]) -> list[Row]:
    """Figure 1: LocalWorkflow.run per node, first and repeated run, vs plain loop and dask."""
    ff, loop, dk = raw["run_ff"], raw["run_loop"], raw["run_dask"]
    target = f"ours <= {RUN_US_PER_NODE:g} us/node"
    if _err(ff):
        return [error_row("1", "LocalWorkflow.run", target, str(_err(ff)))]
    n = ff["n"]
    first = min(ff["first_s"]) / n * 1e6
    repeat = min(ff["repeat_s"]) / n * 1e6
    loop_us = None if _err(loop) else min(loop["seconds"]) / loop["n"] * 1e6
    dask_us = None if _err(dk) else min(dk["seconds"]) / dk["n"] * 1e6
    dask_n = dk.get("n", "?")

    def ok(ours: float, _ratio: float | None) -> bool:
        return ours <= RUN_US_PER_NODE

    rows = []
    for key_loop, key_dask, when, ours in (("1a", "1b", "1st run", first), ("1c", "1d", "repeat run", repeat)):
        rows.append(judged(key_loop, f"run() {n}-chain, {when} | base: plain loop", ours, "us/node",
                           loop_us, "us/call", "base/ours", target, ok))
        rows.append(judged(key_dask, f"run() {n}-chain, {when} | base: dask sync, {dask_n}-chain", ours,
                           "us/node", dask_us, "us/node", "base/ours", target, ok))
    return rows


def rows_buildrun(raw: dict[str, Any]) -> list[Row]:
    """Figure 2: build + run of a chain, functionfuse vs dask.delayed."""
    ff, dk = raw["buildrun_ff"], raw["buildrun_dask"]
    target = f"base/ours >= {BUILDRUN_SPEEDUP:g}"
    if _err(ff):
        return [error_row("2", "build + run", target, str(_err(ff)))]
    dask_s = None if _err(dk) else min(dk["seconds"])
    note = " (recursion limit raised)" if dk.get("recursion_limit_raised") else ""
    return [judged("2", f"build+run {ff['n']}-chain | base: dask build+compute{note}", min(ff["seconds"]), "s",
                   dask_s, "s", "base/ours", target,
                   lambda _o, r: r is not None and r >= BUILDRUN_SPEEDUP)]


def rows_build(raw: dict[str, Any], s: Sizes) -> list[Row]:
    """Figure 3: graph construction at three sizes, and the growth from the smallest to the largest."""
    builds = raw["build_graph"]
    best: dict[int, float | None] = {}
    for n in s.build_ns:
        ok = [d["seconds"] for d in builds[str(n)] if not _err(d)]
        best[n] = min(ok) if ok else None
    big, small = s.build_ns[-1], s.build_ns[0]
    limit = BUILD_S_100K * big / s.build_target_n  # scaled for --quick
    rows = []
    for i, n in enumerate(s.build_ns):
        key = f"3{'abc'[i]}" if i < 3 else f"3.{i}"
        name = f"build {n}-node graph (nodes + LocalWorkflow)"
        if best[n] is None:
            rows.append(error_row(key, name, "-", "every repetition failed"))
        elif n == big:
            target = f"ours < {limit:g} s"
            rows.append(judged(key, name, best[n], "s", None, "", "", target,
                               lambda o, _r: o < limit))
        else:
            rows.append(judged(key, name, best[n], "s", None, "", "", "info", None, INFO))
    t_big, t_small = best[big], best[small]
    growth = None if not (t_big and t_small) else t_big / t_small
    rows.append(judged("3d", f"build growth {big}/{small} | base: linear", growth, "x",
                       big / small, "x", "ours/base", f"info ({big / small:g} = linear)", None, INFO))
    return rows


def rows_io(raw: dict[str, Any]) -> list[Row]:
    """Figure 4: FileStorage save / read_task throughput vs raw file I/O."""
    io = raw["storage_io"]
    target = f"ours/base >= {IO_RATIO:g}"
    if _err(io):
        return [error_row("4", "FileStorage I/O", target, str(_err(io)))]
    size = io["bytes"]
    mib = size / MiB

    def rate(samples: list[float]) -> float:
        return size / min(samples) / MiB

    def ok(_o: float, r: float | None) -> bool:
        return r is not None and r >= IO_RATIO

    return [
        judged("4a", f"FileStorage.save {mib:g} MiB | base: write+fsync", rate(io["write_ours_s"]), "MiB/s",
               rate(io["write_raw_s"]), "MiB/s", "ours/base", target, ok),
        judged("4b", f"FileStorage.read_task {mib:g} MiB | base: read()", rate(io["read_ours_s"]), "MiB/s",
               rate(io["read_raw_s"]), "MiB/s", "ours/base", target, ok),
    ]


def rows_memory(raw: dict[str, Any]) -> list[Row]:
    """Figure 5: peak RSS growth of a chain of new arrays, in arrays."""
    target = f"ours/base < {MEM_RATIO:g}"
    rows = []
    variants = (
        ("5a", "memory_ff", "LocalWorkflow", target, None),
        ("5b", "memory_loop", "plain loop x = step(x)", "info (ideal ~2)", INFO),
        ("5c", "memory_keepall", "contrast: loop keeping all", target, CONTRAST),
        ("5d", "memory_ff_parallel", "LocalWorkflow(parallel=2)", target, None),
    )
    for key, case, what, tgt, kind in variants:
        d = raw.get(case, {"error": "not run"})
        if _err(d):
            rows.append(error_row(key, what, tgt, str(_err(d))))
            continue
        name = f"peak RSS growth, {d['nodes']} x {d['array_bytes'] / MiB:g} MiB, {what} | base: 1 array"
        check = None if kind == INFO else (lambda _o, r: r is not None and r < MEM_RATIO)
        rows.append(judged(key, name, d["growth"] / MiB, "MiB", d["array_bytes"] / MiB, "MiB",
                           "ours/base", tgt, check, kind or "target"))
    return rows


def rows_fingerprint(raw: dict[str, Any]) -> list[Row]:
    """Figure 6: what fingerprints cost: a chain run with storage, and a large array."""
    rows = []
    ch = raw["fingerprint_chain"]
    target = f"ours/base <= {FP_OVERHEAD:g}"
    if _err(ch):
        rows.append(error_row("6", "fingerprint overhead", target, str(_err(ch))))
    else:
        for key, when in (("6a", "first"), ("6b", "resume")):
            rows.append(judged(key, f"{ch['n']}-chain with storage ({ch['filesystem']}), {when} run, "
                               "fingerprint policy | base: name only, no fingerprints",
                               min(ch[f"fp_{when}"]), "s", min(ch[f"name_{when}"]), "s", "ours/base", target,
                               lambda _o, r: r is not None and r <= FP_OVERHEAD))
        if ch.get("fp_resume_headers"):
            rows.append(judged("6f", f"{ch['n']}-chain resumed, fingerprint policy, with the fingerprint index | "
                               "base: the same resume reading every header (index removed)", min(ch["fp_resume"]), "s",
                               min(ch["fp_resume_headers"]), "s", "ours/base", "info", lambda _o, _r: True, kind=INFO))
    arr = raw["fingerprint_array"]
    target = f"ours/base < {FP_ARRAY:g}"
    if _err(arr):
        rows.append(error_row("6c", "array fingerprint", target, str(_err(arr))))
    else:
        rows.append(judged("6c", f"fingerprint a {arr['bytes'] / MiB:g} MiB array | base: FileStorage.save "
                           f"({arr['filesystem']})", min(arr["fingerprint_s"]), "s", min(arr["save_s"]), "s",
                           "ours/base", target, lambda _o, r: r is not None and r < FP_ARRAY))
    sig = raw.get("signing", {"error": "not run"})
    target = f"ours/base < {SIGN_OVERHEAD:g}"
    if _err(sig):
        rows.append(error_row("6d", "signed results", target, str(_err(sig))))
    else:
        mib = sig["bytes"] / MiB
        med = statistics.median
        rows.append(judged("6d", f"store a {mib:g} MiB array signed (FUNCTIONFUSE_STORAGE_KEY) | base: unsigned "
                           f"({sig['filesystem']}, interleaved, medians)", med(sig["signed_s"]), "s",
                           med(sig["plain_s"]), "s", "ours/base", target, lambda _o, r: r is not None and r < SIGN_OVERHEAD))
        rows.append(judged("6e", f"the signature pass alone (keyed BLAKE3, {mib:g} MiB) | base: unsigned store",
                           med(sig["mac_s"]), "s", med(sig["plain_s"]), "s", "ours/base", "info",
                           lambda _o, _r: True, kind=INFO))
    return rows


def rows_parallel(raw: dict[str, Any]) -> list[Row]:
    """Figure 11: independent nodes that release the GIL, LocalWorkflow(parallel=2) vs the
    serial run and vs dask's threaded scheduler with 2 workers (best of interleaved runs)."""
    d = raw.get("parallel", {"error": "not run"})
    if _err(d):
        return [error_row("11", "LocalWorkflow(parallel=2)", f"base/ours >= {PAR_SPEEDUP:g}", str(_err(d)))]
    what = f"{d['nodes']} independent nodes of {d['node_s']:.2f} s np.sort, LocalWorkflow(parallel=2)"
    ours = min(d["parallel_s"])
    return [
        judged("11a", f"{what} | base: serial LocalWorkflow", ours, "s", min(d["serial_s"]), "s", "base/ours",
               f"base/ours >= {PAR_SPEEDUP:g}", lambda _o, r: r is not None and r >= PAR_SPEEDUP),
        judged("11b", f"{what} | base: dask threads, 2 workers", ours, "s", min(d["dask_s"]), "s", "base/ours",
               f"base/ours >= {PAR_VS_DASK:g}", lambda _o, r: r is not None and r >= PAR_VS_DASK),
        *_rows_parallel_python(raw),
    ]


def _rows_parallel_python(raw: dict[str, Any]) -> list[Row]:
    """Figure 11, information: pure Python nodes, threads vs a pool of processes."""
    d = raw.get("parallel_python", {"error": "not run"})
    if _err(d):
        return [error_row("11c", "pure Python nodes, parallel=2", "info", str(_err(d)))]
    what = f"{d['nodes']} pure Python nodes"
    serial = min(d["serial_s"])
    return [
        judged("11c", f"{what}, LocalWorkflow(parallel=2), threads | base: serial LocalWorkflow",
               min(d["threads_s"]), "s", serial, "s", "base/ours", "info (the GIL: ~1)", None, INFO),
        judged("11d", f"{what}, the same calls in 2 forked processes | base: serial LocalWorkflow",
               min(d["processes_s"]), "s", serial, "s", "base/ours", "info (not offered)", None, INFO),
    ]


def rows_engines(raw: dict[str, Any]) -> list[Row]:
    """Figures 7-10: each engine script's rows as it judged them."""
    rows = []
    for fig, engine, script in ENGINES:
        got = raw.get("engines", {}).get(script)
        if got is None:
            continue
        for i, r in enumerate(got.get("rows", [])):
            target = str(r.get("target", ""))
            comparison = target.startswith(("<", ">", "="))
            rows.append(Row(f"{fig}{chr(ord('a') + i)}", f"{engine}: {r['name']}", r.get("ours"), r.get("unit", ""),
                            r.get("baseline"), r.get("unit", ""), r.get("ratio"), "ours/base",
                            f"ours/base {target}" if comparison else target, passed=bool(r.get("pass"))))
        if _err(got):
            rows.append(error_row(f"{fig}!", f"{engine} benchmark ({script})", "runs", str(_err(got))))
    return rows


def build_rows(raw: dict[str, Any], s: Sizes) -> list[Row]:
    return [*rows_run(raw), *rows_buildrun(raw), *rows_build(raw, s), *rows_io(raw), *rows_memory(raw),
            *rows_fingerprint(raw), *rows_parallel(raw), *rows_engines(raw)]


# -- report ----------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=REPO, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    changes = git("status", "--porcelain", "--", "functionfuse")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "functionfuse": version("functionfuse"),
        "numpy": version("numpy"),
        "dask": version("dask"),
        "git_commit": commit,
        "functionfuse_has_uncommitted_changes": None if changes is None else bool(changes),
    }


def _cpu_busy() -> tuple[float, float] | None:
    """(CPU seconds the machine has spent busy, CPU seconds used by this process and its
    finished children), or None without psutil. Their difference over the run is the
    CPU time other processes took from the benchmarks."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    machine = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own += ru.ru_utime + ru.ru_stime
    return machine, own


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    ap.add_argument("--case", choices=sorted(cases.CASES), help="run one case in this process and print its JSON")
    ap.add_argument("--n", type=int, help="graph size for --case build_graph")
    ap.add_argument("--tmpdir", type=Path, default=RESULTS_DIR,
                    help="folder for the storage case's temporary files (default: bench/results; not /tmp, "
                         "which may be a tmpfs)")
    ap.add_argument("--no-engines", action="store_true",
                    help="skip the Ray, Prefect, S3 and KFP benchmarks (figures 7-10), which start servers")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json", help="where to write the JSON table")
    args = ap.parse_args(argv)
    args.tmpdir = args.tmpdir.resolve()  # cases run with the repository as working folder

    if args.case:
        print(json.dumps(run_case_here(args.case, args.quick, args.n, args.tmpdir)))
        return 0

    mode = "quick" if args.quick else "full"
    s = sizes_for(args.quick)
    t0 = time.perf_counter()
    busy0 = _cpu_busy()
    raw = collect(args.quick, args.tmpdir, engines=not args.no_engines)
    busy1 = _cpu_busy()
    rows = build_rows(raw, s)
    seconds = time.perf_counter() - t0
    counts = summarize(rows)
    failed_cases = _failed_cases(raw)
    line = summary_line(counts, mode, seconds)
    if failed_cases:
        line += f"; cases that crashed: {', '.join(failed_cases)} (see the JSON)"
    cpus = os.cpu_count() or 1
    others = None
    if busy0 is not None and busy1 is not None:
        # CPU time the whole machine spent busy, minus what this run (driver and cases) used
        others = max(0.0, (busy1[0] - busy0[0]) - (busy1[1] - busy0[1])) / seconds
        if others >= 0.25:
            line += (f"; other processes used {others:.1f} of {cpus} CPUs on average during the run, "
                     "so wall times may read high")
    title = f"functionfuse benchmarks ({mode} run; each ratio is followed by its definition)"
    print(render(rows, title))
    print(line)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "seconds": round(seconds, 2),
        "environment": {**environment(), "other_processes_cpus": None if others is None else round(others, 2)},
        "sizes": sizes_dict(s),
        "rows": [r.as_json() for r in rows],
        "summary": counts,
        "summary_line": line,
        "cases": raw,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {args.out}", file=sys.stderr)
    return 1 if counts["error"] or failed_cases else 0


if __name__ == "__main__":
    sys.exit(main())
