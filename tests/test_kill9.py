"""Resume after ``kill -9``: no finished result is lost, no partial result is visible.

A script (written to ``tmp_path``) runs a 30-node DAG with file storage; each node
sleeps a little and returns an int, a tuple or a dict holding a 4 MiB NumPy array,
so a kill often lands in the middle of a write. The test kills it with SIGKILL at
random moments (seeded; set FUNCTIONFUSE_KILL9_SEED to try another seed), and after
each kill checks that

* every listed task reads back, equal to the value computed in plain Python;
* the listed tasks only grow from round to round, and are all names of nodes;
* no stored node was run again, and at most the node in progress was lost;

then lets it finish and checks the result, and that the final run executed exactly
the nodes that were not stored yet (the script logs each execution with O_APPEND).

The second test kills the Ray worker running an execution unit (a fused chain of slow
nodes, one Ray task) in the middle: the nodes finished before are stored, the error
names the node that was lost, and the next run runs only from it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from functionfuse.storage import storage_factory

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

SEED = int(os.environ.get("FUNCTIONFUSE_KILL9_SEED", "20240607"))
WORKFLOW = "kill9"
MAX_KILLS = 12

SCRIPT = r'''
"""A 30-node DAG whose nodes sleep and return data, run with file storage."""
import json
import os
import pickle
import random
import sys
import time

import numpy as np

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.storage import storage_factory

N_NODES = 30
ARRAY_LEN = 512 * 1024  # float64: 4 MiB
MOD = (1 << 61) - 1
WORKFLOW = "kill9"

_rng = random.Random(7)
#: parents of each node (earlier nodes only)
PARENTS = [sorted(_rng.sample(range(k), min(k, _rng.randint(0, 3)))) for k in range(N_NODES)]
#: nodes no other node depends on: the outputs, so that every node belongs to the graph
SINKS = [k for k in range(N_NODES) if not any(k in ps for ps in PARENTS)]


def name_of(k):
    return f"n{k:02d}"


def fingerprint(x):
    if isinstance(x, dict):
        return (x["acc"] * 31 + int(x["array"][12345])) % MOD
    if isinstance(x, tuple):
        return x[1]
    return x


def combine(k, inputs):
    """The value of node k given its inputs' values (plain Python)."""
    acc = k * 7919 + 1
    for x in inputs:
        acc = (acc * 1000003 + fingerprint(x)) % MOD
    if k % 4 == 1:
        return {"k": k, "acc": acc, "array": np.arange(ARRAY_LEN, dtype=np.float64) * 3.0 + (acc % 1000)}
    if k % 4 == 3:
        return (k, acc)
    return acc


def expected_values():
    values = {}
    for k in range(N_NODES):
        values[name_of(k)] = combine(k, [values[name_of(p)] for p in PARENTS[k]])
    return values


def _log(k):
    # read at call time: the run id changes from run to run, the code must not
    fd = os.open(os.environ["KILL9_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{os.environ['KILL9_RUN_ID']} {name_of(k)}\n".encode())
    finally:
        os.close(fd)


def sleep_of(k):
    return 0.03 + 0.01 * (k % 4)


@workflow
def step(k, *inputs):
    _log(k)
    time.sleep(sleep_of(k))
    return combine(k, inputs)


def build():
    nodes = []
    for k in range(N_NODES):
        nodes.append(step(k, *[nodes[p] for p in PARENTS[k]]).set_name(name_of(k)))
    return [nodes[k] for k in SINKS]


def main():
    storage_path, result_path = sys.argv[1:3]
    wf = LocalWorkflow(*build(), workflow_name=WORKFLOW)
    wf.set_storage(storage_factory({"kind": "file", "options": {"path": storage_path}}))
    result = wf.run()
    with open(result_path + ".part", "wb") as f:
        pickle.dump(result, f)
    os.replace(result_path + ".part", result_path)
    s = wf.last_run
    print(json.dumps({"ran": s.ran, "loaded": s.loaded, "skipped": s.skipped, "recomputed": s.recomputed}))


if __name__ == "__main__":
    main()
'''


def assert_same(actual, expected, where=""):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray) and actual.dtype == expected.dtype, where
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def executions(log_path, run_id: str) -> list[str]:
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        lines = [line.split() for line in f.read().splitlines()]
    return [name for rid, name in lines if rid == run_id]


def wait_for_execution(proc: subprocess.Popen, log_path, run_id: str, names, timeout: float = 60.0) -> float:
    """The time a node of *names* is seen starting in this run (or the run ended)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        ran = executions(log_path, run_id)
        if ran and ran[-1] in names:
            break
        time.sleep(0.001)
    return time.monotonic()


def test_kill_minus_9_loses_nothing_finished_and_leaves_nothing_partial(tmp_path):
    t0 = time.perf_counter()
    script = tmp_path / "kill9_dag.py"
    script.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("kill9_dag", script)
    dag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag)
    expected = dag.expected_values()
    all_names = set(expected)
    assert len(all_names) == 30
    big = {name for name, v in expected.items() if isinstance(v, dict)}

    storage_path = tmp_path / "storage"
    log_path = tmp_path / "executions.log"
    result_path = tmp_path / "result.pkl"
    storage = storage_factory({"kind": "file", "options": {"path": str(storage_path)}})
    wf_dir = storage_path / WORKFLOW
    rng = random.Random(SEED)
    context = f"(seed {SEED}; FUNCTIONFUSE_KILL9_SEED reproduces the kill times)"

    def start(run_id: str) -> subprocess.Popen:
        env = dict(os.environ, KILL9_LOG=str(log_path), KILL9_RUN_ID=run_id)
        # names and fingerprints must not depend on the string hash seed
        env["PYTHONHASHSEED"] = str(rng.randrange(1, 2**32))
        return subprocess.Popen(
            [sys.executable, str(script), str(storage_path), str(result_path)],
            env=env,
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def check_storage(listed: set[str], kills: int) -> None:
        assert listed <= all_names, f"unexpected tasks listed: {sorted(listed - all_names)} {context}"
        for name in sorted(listed):
            assert_same(storage.read_task(WORKFLOW, name), expected[name], f"{name} {context}")
        # besides its hidden folders (names never start with '.'), the workflow folder
        # holds finished results only; each kill leaves at most one unfinished write
        # in the staging folder
        entries = {e for e in os.listdir(wf_dir) if not e.startswith(".")} if wf_dir.exists() else set()
        assert entries == {n + ".ffr" for n in listed}, sorted(entries)
        staged = os.listdir(wf_dir / ".tmp") if (wf_dir / ".tmp").exists() else []
        assert len(staged) <= kills, staged

    stored: set[str] = set()
    kills = partial_kills = 0
    executed_total = 0
    finished = False
    for round_no in range(MAX_KILLS):
        run_id = f"r{round_no}"
        proc = start(run_id)
        mode = rng.random()
        if mode < 0.25:  # anywhere, start-up and planning included
            deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        elif mode < 0.6:  # while nodes run (robust to a slow start-up on a busy machine)
            deadline = wait_for_execution(proc, log_path, run_id, all_names) + rng.uniform(0.0, 0.45)
        else:  # around the end of a node returning an array: likely while its result is written
            seen = wait_for_execution(proc, log_path, run_id, big)
            deadline = seen + dag.sleep_of(1) + rng.uniform(0.0, 0.012)
        try:
            out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            finished = True
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
            if proc.returncode == -signal.SIGKILL:
                kills += 1
            else:
                finished = True
        assert not err, err.decode(errors="replace")
        if finished:
            assert proc.returncode == 0, (proc.returncode, out)

        listed = set(storage.list_tasks(WORKFLOW, "*"))
        ran = executions(log_path, run_id)
        executed_total += len(ran)
        assert stored <= listed, f"round {round_no} lost finished results {sorted(stored - listed)} {context}"
        check_storage(listed, kills)
        assert len(ran) == len(set(ran)), f"a node ran twice in round {round_no}: {ran}"
        assert not set(ran) & stored, f"round {round_no} re-ran stored nodes {sorted(set(ran) & stored)} {context}"
        # only the node in progress when the process was killed may be lost
        assert len(set(ran) - listed) <= (0 if finished else 1), (ran, sorted(listed))
        assert set(ran) <= listed | set(ran[-1:])
        if stored < listed < all_names:
            partial_kills += 1
        stored = listed
        if finished:
            break

    assert kills >= 3 and partial_kills >= 2, f"too few useful kills ({kills}, {partial_kills}) {context}"

    # the last run, to completion
    run_id = "final"
    proc = start(run_id)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert not err, err.decode(errors="replace")
    stats = json.loads(out.decode().strip().splitlines()[-1])
    ran = executions(log_path, run_id)
    assert sorted(ran) == sorted(all_names - stored), f"final run executed {ran}; stored before: {sorted(stored)}"
    assert stats["ran"] == len(all_names - stored) and stats["recomputed"] == 0, stats
    assert stats["ran"] + stats["loaded"] + stats["skipped"] == len(all_names), stats
    executed_total += len(ran)
    # every node ran once, plus at most one lost node per kill
    assert len(all_names) <= executed_total <= len(all_names) + kills

    with open(result_path, "rb") as f:
        result = pickle.load(f)
    assert_same(result, [expected[dag.name_of(k)] for k in dag.SINKS], "final result")
    listed = set(storage.list_tasks(WORKFLOW, "*"))
    assert listed == all_names
    check_storage(listed, kills)

    # one more run: everything is stored, nothing runs
    proc = start("again")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and not err, err.decode(errors="replace")
    assert json.loads(out.decode().strip().splitlines()[-1])["ran"] == 0
    assert executions(log_path, "again") == []
    staged = len(os.listdir(wf_dir / ".tmp"))
    print(f"kill9: {kills} kills ({partial_kills} with partial progress, {staged} during a write), {time.perf_counter() - t0:.1f} s")


# -- kill -9 inside an execution unit (RayWorkflow: a fused chain is one Ray task) ---------------
UNIT_NODES = 8
UNIT_SLEEP = 0.4


def _log_start(log: str, k: int) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{k} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def link(x, k, log):
    """A slow node of the chain: logs its start (its index and process), then x * 3 + k."""
    _log_start(log, k)
    time.sleep(UNIT_SLEEP)
    return x * 3 + k


def _starts(log) -> list[tuple[int, int]]:
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [(int(a), int(b)) for a, b in (line.split() for line in f.read().splitlines())]


def test_kill_minus_9_inside_a_fused_unit_loses_at_most_the_node_in_progress(tmp_path):
    """A chain of slow nodes is one Ray task (one execution unit); the worker process
    running it is killed with SIGKILL while a node in the middle runs. Every node that
    finished before is stored (and reads back right); the next run loads the last of
    them, runs only the rest, and no stored node runs again."""
    pytest.importorskip("ray")
    import raysupport  # noqa: I001 - the Ray environment of the test suite (127.0.0.1, 2 CPUs)

    raysupport.start_local_ray()
    from functionfuse import workflow
    from functionfuse.backends.builtin.rayback import RayWorkflow
    from functionfuse.errors import NodeExecutionError

    node = workflow(link)
    log = str(tmp_path / "starts.log")
    storage = storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    expected: dict[str, int] = {}

    def build():
        x, value = 1, 1
        for k in range(UNIT_NODES):
            x = node(x, k, log).set_name(f"link{k}")
            value = value * 3 + k
            expected[f"link{k}"] = value
        wf = RayWorkflow(x, workflow_name="kill9_unit")
        wf.set_storage(storage)
        # no retry by Ray: the killed unit ends the run, the next run resumes
        wf.query("^link").set_remote_args({"max_retries": 0})
        return wf

    wf = build()
    assert [len(u.indices) for u in wf.units().running] == [UNIT_NODES]
    victim = UNIT_NODES // 2

    def kill_when_the_middle_node_runs():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            starts = _starts(log)
            if starts and starts[-1][0] >= victim:
                time.sleep(UNIT_SLEEP / 4)  # inside the node, well before it ends
                os.kill(starts[-1][1], signal.SIGKILL)  # the Ray worker running the unit
                return
            time.sleep(0.005)

    import threading

    killer = threading.Thread(target=kill_when_the_middle_node_runs)
    killer.start()
    with pytest.raises(NodeExecutionError, match="Ray worker") as info:
        wf.run()
    killer.join()
    starts = _starts(log)
    assert len({pid for _, pid in starts}) == 1, starts  # one process ran the whole unit
    started = [k for k, _ in starts]
    assert started == list(range(len(started))) and started[-1] >= victim
    listed = set(storage.list_tasks("kill9_unit", "*"))
    # every node that finished before the kill is stored; at most the node in progress is lost
    assert {f"link{k}" for k in started[:-1]} <= listed <= {f"link{k}" for k in started}
    assert len(started) - len(listed) <= 1
    for name in listed:
        assert storage.read_task("kill9_unit", name) == expected[name]
    # the error and the report name the node that was lost, and count those stored before it
    lost = f"link{len(listed)}"
    assert info.value.node_name == lost and wf.last_run.failed == lost
    assert wf.last_run.ran == len(listed)

    os.remove(log)
    wf = build()
    assert wf.run(return_results=True) == expected[f"link{UNIT_NODES - 1}"]
    rerun = [k for k, _ in _starts(log)]
    assert rerun == [k for k in range(UNIT_NODES) if f"link{k}" not in listed]  # no stored node ran again
    assert (wf.last_run.ran, wf.last_run.loaded) == (UNIT_NODES - len(listed), 1)
    assert set(storage.list_tasks("kill9_unit", "*")) == set(expected)
