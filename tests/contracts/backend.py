"""The backend conformance suite: same DAGs, same results, same resume behaviour.

A backend joins by subclassing :class:`BackendConformance` and defining the
``make_workflow`` fixture: ``make_workflow(*nodes, workflow_name=...)`` returns a
workflow object with ``set_storage``, ``run`` and ``plan``. Node functions record
their executions in files (``calls_dir``), so the checks work for backends that run
nodes in other processes too.
"""

from __future__ import annotations

import io
import os

import pytest

from functionfuse import workflow
from functionfuse.errors import ConfigurationError, CorruptedResultError, NodeExecutionError, StaleResultWarning, StorageError, TaskNotFoundError
from functionfuse.storage import storage_factory
from functionfuse.storage.filestorage import FileStorage

CALLS = "FUNCTIONFUSE_TEST_CALLS"


def _record(name: str) -> None:
    folder = os.environ.get(CALLS)
    if folder:
        with open(os.path.join(folder, "calls.log"), "a") as f:
            f.write(name + "\n")


@workflow
def add(a, b):
    _record("add")
    return a + b


@workflow
def multiply(a, b):
    _record("multiply")
    return a * b


@workflow
def minus(a, b):
    _record("minus")
    return a - b


@workflow
def split(x):
    _record("split")
    return x, x * 10, {"key": x * 100}


@workflow
def gather(*args, scale=1, **kwargs):
    _record("gather")
    flat = []
    for a in args:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    flat.extend(kwargs.values())
    return sum(v * scale for v in flat)


@workflow
def fail_if(flag_file, value):
    _record("fail_if")
    if os.path.exists(flag_file):
        raise RuntimeError(f"flag {os.path.basename(flag_file)} is set")
    return value


@workflow
def fail_once(flag_file, value):
    """Raises once while *flag_file* exists (and removes it)."""
    _record("fail_once")
    if os.path.exists(flag_file):
        os.remove(flag_file)
        raise RuntimeError(f"{os.path.basename(flag_file)}: this node fails once")
    return value


@workflow
class IncrementalSum:
    def __init__(self, start):
        _record("IncrementalSum")
        self.start = start

    def add(self, n):
        _record("IncrementalSum.add")
        self.start += n
        return self.start


@workflow
def make_scaler(k):
    _record("make_scaler")
    return lambda x: x * k  # pickle refuses a lambda: storage cannot hold this value


@workflow
def apply(f, x):
    _record("apply")
    return f(x)


def at_callers_line(w) -> bool:
    """A warning points at the code that called into functionfuse (this suite, or the
    fixture class of a backend that wraps run()), not at functionfuse itself."""
    import functionfuse

    package = os.path.dirname(os.path.abspath(functionfuse.__file__)) + os.sep
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    filename = os.path.abspath(w.filename)
    return filename.startswith(tests) and not filename.startswith(package)


def seed_quick_start():
    a, b = 1, 1
    a_plus_b = add(a, b).set_name("node1")
    a_plus_two_b = add(a_plus_b, b).set_name("node2")
    return multiply(a_plus_b, a_plus_two_b).set_name("node3")


def seed_incremental_sum():
    one = minus(4, 3).set_name("four_minus_three")
    incremental_sum = IncrementalSum(start=one).set_name("IncrementalSum")
    two = minus(3, one).set_name("three_minus_one")
    incremental_sum.add(two).set_name("one_plus_two")
    incremental_sum.add(two).set_name("three_plus_two")
    six = incremental_sum.add(one).set_name("five_plus_one")
    return minus(six, 2).set_name("six_minus_two")


class BackendConformance:
    @pytest.fixture
    def make_workflow(self):  # pragma: no cover - overridden
        raise NotImplementedError

    @pytest.fixture
    def calls(self, tmp_path, monkeypatch):
        folder = tmp_path / "calls"
        folder.mkdir()
        monkeypatch.setenv(CALLS, str(folder))
        log = folder / "calls.log"

        def read() -> list[str]:
            return log.read_text().split() if log.exists() else []

        def reset() -> None:
            if log.exists():
                log.unlink()

        read.reset = reset
        return read

    @pytest.fixture
    def storage(self, tmp_path):
        return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})

    def test_seed_quick_start(self, make_workflow):
        assert make_workflow(seed_quick_start(), workflow_name="operations").run() == 6

    def test_seed_incremental_sum_gives_4(self, make_workflow):
        assert make_workflow(seed_incremental_sum(), workflow_name="stateful").run() == 4

    def test_several_outputs_give_a_list(self, make_workflow):
        x = add(1, 2)
        y = multiply(x, 3)
        z = minus(y, x)
        assert make_workflow(x, y, z, workflow_name="multi").run() == [3, 9, 6]

    def test_nodes_inside_containers_keywords_and_indexing(self, make_workflow):
        s = split(2)
        total = gather([s[0], s[1]], (s[2]["key"], 5), scale=2, extra=s[0])
        # (2 + 20 + 200 + 5 + 2) * 2
        assert make_workflow(total, workflow_name="containers").run() == 458
        assert make_workflow(s[1], workflow_name="item_output").run() == 20

    def test_descendants_of_roots_run_too(self, make_workflow, storage):
        root = add(1, 1).set_name("root")
        wanted = add(root, 1).set_name("wanted")
        add(root, 100).set_name("sibling")
        wf = make_workflow(wanted, workflow_name="descend")
        wf.set_storage(storage)
        assert wf.run() == 3
        assert storage.read_task("descend", "sibling") == 102

    def test_resume_runs_nothing_stored(self, make_workflow, storage, calls):
        wf = make_workflow(seed_quick_start(), workflow_name="resume")
        wf.set_storage(storage)
        assert wf.run() == 6
        assert sorted(calls()) == ["add", "add", "multiply"]
        assert storage.list_tasks("resume", "*") == ["node1", "node2", "node3"]
        calls.reset()
        assert wf.run() == 6
        assert calls() == []

    def test_resume_runs_only_what_is_missing(self, make_workflow, storage, calls):
        wf = make_workflow(seed_quick_start(), workflow_name="partial")
        wf.set_storage(storage)
        wf.run()
        storage.remove_task("partial", task_name="node3")
        calls.reset()
        assert wf.run() == 6
        assert calls() == ["multiply"]

    def test_stateful_resume_replays_the_instance(self, make_workflow, storage, calls):
        wf = make_workflow(seed_incremental_sum(), workflow_name="stateful_resume")
        wf.set_storage(storage)
        assert wf.run() == 4
        storage.remove_task("stateful_resume", pattern="five_plus_one")
        storage.remove_task("stateful_resume", pattern="six_minus_two")
        plan = {p.name: p.action for p in wf.plan()}
        assert plan == {
            "four_minus_three": "load",
            "IncrementalSum": "replay",
            "three_minus_one": "load",
            "one_plus_two": "replay",
            "three_plus_two": "replay",
            "five_plus_one": "run",
            "six_minus_two": "run",
        }
        calls.reset()
        assert wf.run() == 4
        # the instance is rebuilt and its earlier calls replayed, in order
        assert calls() == ["IncrementalSum", "IncrementalSum.add", "IncrementalSum.add", "IncrementalSum.add", "minus"]

    def test_same_dag_runs_in_two_workflows_and_twice(self, make_workflow):
        out = seed_quick_start()
        first = make_workflow(out, workflow_name="first")
        second = make_workflow(out, workflow_name="second")
        assert first.run() == second.run() == first.run() == 6

    def test_failure_names_the_node_and_keeps_earlier_results(self, make_workflow, storage, tmp_path, calls):
        flag = tmp_path / "fail.flag"
        flag.touch()
        before = add(1, 2).set_name("before")
        failing = fail_if(str(flag), before).set_name("failing")
        after = add(failing, 1).set_name("after")
        wf = make_workflow(after, workflow_name="failure")
        wf.set_storage(storage)
        with pytest.raises(NodeExecutionError) as info:
            wf.run()
        assert "'failing'" in str(info.value) and "'failure'" in str(info.value)
        assert info.value.node_name == "failing"
        assert "flag fail.flag is set" in str(info.value)
        assert storage.list_tasks("failure", "*") == ["before"]
        # only what ran is counted: not the failed node, not its child that never ran
        assert wf.last_run.ran == 1 and wf.last_run.failed == "failing"
        assert set(storage.last_run_report("failure")["node_seconds"]) == {"before"}
        flag.unlink()
        calls.reset()
        assert wf.run() == 4
        assert calls() == ["fail_if", "add"]

    def test_a_failure_beside_a_damaged_result_is_the_error_and_nothing_stale_is_loaded(
        self, make_workflow, storage, tmp_path, calls
    ):
        """A node fails once while, in the same run, a stored result is found damaged: the
        run raises the node's error. The damage must not turn into a retry that loads the
        stale result of a node that never ran (its input failed) as if it were current."""
        flag = tmp_path / "fail-once.flag"

        def build(k):
            before = add(1, 2).set_name("before")
            failing = fail_once(str(flag), before).set_name("failing")
            after = add(failing, k).set_name("after")
            other = add(10, 20).set_name("other")
            return after, add(other, k).set_name("other2")

        wf = make_workflow(*build(1), workflow_name="faildamage")
        wf.set_storage(storage)
        assert wf.run() == [4, 31]
        folder = os.path.join(storage.path, "faildamage")
        os.remove(os.path.join(folder, "failing.ffr"))  # must run again
        with open(os.path.join(folder, "other.ffr"), "r+b") as fh:  # damaged past its header
            fh.seek(-3, os.SEEK_END)
            fh.write(b"\x00\x01\x02")
        flag.touch()
        calls.reset()
        wf = make_workflow(*build(2), workflow_name="faildamage")  # after and other2 are stale
        wf.set_storage(storage)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a backend may warn about the damaged result
            with pytest.raises(NodeExecutionError) as info:
                wf.run()
        assert info.value.node_name == "failing"
        assert "fails once" in str(info.value)
        assert storage.read_task("faildamage", "after") == 4  # never ran: the old value stays...
        assert wf.plan().action("after") == "run"  # ...and is not taken for current
        # failing and after run again; other and other2 too unless the failed run already
        # recomputed the damaged result (a backend that read every stored result first, or
        # ran nodes side by side) and stored them: exactly what the plan says is not current
        # (a result damaged past its header still plans as a load: it runs once found)
        rerun = ["fail_once" if p.name == "failing" else "add" for p in wf.plan() if p.action == "run"]
        try:
            storage.read_task("faildamage", "other")
        except CorruptedResultError:
            rerun.append("add")
        rerun.sort()
        assert rerun[:1] == ["add"] and "fail_once" in rerun and len(rerun) <= 4
        calls.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert wf.run() == [5, 32]
        assert sorted(calls()) == rerun

    def test_a_result_copied_under_another_name_is_recomputed(self, make_workflow, storage, calls):
        """``cp node1.ffr node3.ffr`` must not make node3's value node1's."""
        import shutil
        import warnings

        wf = make_workflow(seed_quick_start(), workflow_name="copied")
        wf.set_storage(storage)
        assert wf.run() == 6
        folder = os.path.join(storage.path, "copied")
        shutil.copy(os.path.join(folder, "node1.ffr"), os.path.join(folder, "node3.ffr"))  # node1 holds 2
        calls.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a backend may warn that it recomputes
            assert wf.run() == 6
        assert calls() == ["multiply"]
        assert storage.read_task("copied", "node3") == 6

    def test_fingerprint_policy_recomputes_what_changed(self, make_workflow, storage, calls):
        def build(offset):
            a = add(1, 1).set_name("a")
            b = add(a, offset).set_name("b")
            return multiply(b, 2).set_name("c")

        first = make_workflow(build(0), workflow_name="fingerprints")
        first.set_storage(storage)
        assert first.run() == 4
        calls.reset()
        changed = make_workflow(build(1), workflow_name="fingerprints")
        changed.set_storage(storage)
        changed.set_cache("fingerprint")
        assert changed.run() == 6
        assert calls() == ["add", "multiply"]  # b and c; a is unchanged
        calls.reset()
        # the "name" policy reuses by name and warns about the node that changed, at
        # the caller's line
        by_name = make_workflow(build(5), workflow_name="fingerprints")
        by_name.set_storage(storage)
        by_name.set_cache("name")
        with pytest.warns(StaleResultWarning, match="'b'.*argument 'b' changed") as caught:
            assert by_name.run() == 6
        assert calls() == []
        assert len(caught) == 1 and at_callers_line(caught[0]), caught[0].filename

    def test_default_policy_recomputes_an_argument_change(self, make_workflow, storage, calls):
        def build(offset):
            a = add(1, 1).set_name("a")
            return multiply(add(a, offset).set_name("b"), 2).set_name("c")

        first = make_workflow(build(0), workflow_name="default_policy")
        first.set_storage(storage)
        assert first.run() == 4
        calls.reset()
        changed = make_workflow(build(1), workflow_name="default_policy")
        changed.set_storage(storage)
        assert changed.run() == 6
        assert calls() == ["add", "multiply"]  # b and c; a is unchanged

    def test_name_policy_warns_once_per_run_about_every_stale_node(self, make_workflow, storage, calls):
        def build(offset):
            return gather(*[add(i, offset).set_name(f"n{i:02d}") for i in range(12)]).set_name("total")

        first = make_workflow(build(0), workflow_name="stale_many")
        first.set_storage(storage)
        first.run()
        calls.reset()
        by_name = make_workflow(build(1), workflow_name="stale_many")
        by_name.set_storage(storage)
        by_name.set_cache("name")
        with pytest.warns(StaleResultWarning, match="12 nodes.*'n00'.*'n04'.*and 7 more") as caught:
            assert by_name.run() == sum(range(12))
        assert calls() == []
        assert len(caught) == 1 and at_callers_line(caught[0]), caught[0].filename

    def test_a_node_never_stored_is_recomputed_when_a_node_needs_it(self, make_workflow, storage, calls):
        def build():
            k = add(1, 1).set_name("k")
            scaler = make_scaler(k).set_name("scaler")
            return add(apply(scaler, 5).set_name("scaled"), 1).set_name("total")

        wf = make_workflow(build(), workflow_name="unstored")
        wf.set_storage(storage)
        if not wf.supports_unstored_nodes:
            with pytest.raises(ConfigurationError, match="set_persist"):
                wf.query("^scaler$").set_persist(False)
            return
        wf.query("^scaler$").set_persist(False)
        assert wf.run() == 11
        assert sorted(calls()) == ["add", "add", "apply", "make_scaler"]
        assert storage.list_tasks("unstored", "*") == ["k", "scaled", "total"]
        plan = {p.name: (p.action, p.state) for p in wf.plan()}
        assert plan["scaler"] == ("skip", "not stored")
        calls.reset()
        assert wf.run() == 11
        assert calls() == []
        storage.remove_task("unstored", task_name="scaled")
        plan = {p.name: (p.action, p.state) for p in wf.plan()}
        assert plan == {
            "k": ("load", "current"),
            "scaler": ("replay", "not stored"),
            "scaled": ("run", "missing"),
            "total": ("load", "current"),
        }
        calls.reset()
        assert wf.run() == 11
        assert calls() == ["make_scaler", "apply"]  # k is loaded for it
        assert storage.list_tasks("unstored", "*") == ["k", "scaled", "total"]

    def test_cache_off_always_runs(self, make_workflow, storage, calls):
        first = make_workflow(seed_quick_start(), workflow_name="cache_off")
        first.set_storage(storage)
        assert first.run() == 6
        calls.reset()
        again = make_workflow(seed_quick_start(), workflow_name="cache_off")
        again.set_storage(storage)
        again.set_cache("off")
        assert again.run() == 6
        assert sorted(calls()) == ["add", "add", "multiply"]

    def test_fingerprint_policy_detects_a_code_change(self, make_workflow, storage, calls):
        # add(2, 2) == multiply(2, 2): node "b" keeps its name and its value, only its code changes
        def build(operation):
            a = add(1, 1).set_name("a")
            b = operation(a, 2).set_name("b")
            return multiply(b, 3).set_name("c")

        first = make_workflow(build(add), workflow_name="code_change")
        first.set_storage(storage)
        assert first.run() == 12
        calls.reset()
        changed = make_workflow(build(multiply), workflow_name="code_change")
        changed.set_storage(storage)
        changed.set_cache("fingerprint")
        plan = {p.name: p for p in changed.plan()}
        assert (plan["a"].action, plan["b"].action, plan["c"].action) == ("load", "run", "run")
        assert plan["b"].state == "stale" and "code" in plan["b"].reason
        assert changed.run() == 12
        assert calls() == ["multiply", "multiply"]  # b and c

    def test_cache_policy_per_query(self, make_workflow, storage, calls):
        first = make_workflow(seed_quick_start(), workflow_name="cache_query")
        first.set_storage(storage)
        assert first.run() == 6
        calls.reset()
        again = make_workflow(seed_quick_start(), workflow_name="cache_query")
        again.set_storage(storage)
        again.query("^node3$").set_cache("off")
        assert again.run() == 6
        assert calls() == ["multiply"]  # node3 only; node1 and node2 are loaded for it

    def test_progress_on_a_terminal_and_a_stored_run_report(self, make_workflow, storage, monkeypatch):
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        stream = Terminal()
        monkeypatch.setattr("sys.stderr", stream)
        wf = make_workflow(seed_quick_start(), workflow_name="shown")
        wf.set_storage(storage)
        assert wf.run() == 6
        wf.run()
        lines = [x for x in stream.getvalue().replace("\r", "\n").splitlines() if x.startswith("[shown]")]
        assert any("3/3 nodes  3 run" in x for x in lines), stream.getvalue()[-500:]
        assert "3/3 nodes  0 run · 1 loaded · 2 skipped" in lines[-1]
        assert stream.getvalue().endswith("\n")
        first, second = storage.list_run_reports("shown")
        assert (first["ran"], first["nodes"], second["ran"]) == (3, 3, 0)
        assert set(first["node_seconds"]) == {"node1", "node2", "node3"}

        stream.truncate(0)
        stream.seek(0)
        wf.set_progress(False)
        wf.run()
        assert "[shown]" not in stream.getvalue()

    def test_plan_matches_what_runs(self, make_workflow, storage):
        wf = make_workflow(seed_quick_start(), workflow_name="plan")
        wf.set_storage(storage)
        assert [p.action for p in wf.plan()] == ["run", "run", "run"]
        wf.run()
        assert [p.action for p in wf.plan()] == ["skip", "skip", "load"]
        storage.remove_task("plan", task_name="node2")
        assert [(p.name, p.action) for p in wf.plan()] == [("node1", "load"), ("node2", "run"), ("node3", "load")]


class UnreadableStorage(FileStorage):
    """A file storage that cannot read two results though it lists them: ``denied`` (as
    after a change of permissions, or a cloud storage refusing the read) and
    ``vanished`` (removed by another process after the run was planned)."""

    def read_task(self, workflow_name, task_name):
        if task_name == "denied":
            raise PermissionError(13, "Permission denied", self._file(workflow_name, task_name))
        if task_name == "vanished":
            raise TaskNotFoundError(f"No stored result for task {task_name!r}")
        return super().read_task(workflow_name, task_name)


class LoadErrorConformance:
    """A stored result that cannot be read (not damaged: nothing to recompute) fails the
    run with an error naming the node and the workflow, on every backend; a storage
    error keeps its type."""

    @pytest.mark.parametrize(
        "node, kind, detail",
        [("denied", StorageError, "Permission denied"), ("vanished", TaskNotFoundError, "No stored result")],
    )
    def test_a_result_that_cannot_be_read_names_the_node_and_the_workflow(
        self, make_workflow, tmp_path, node, kind, detail
    ):
        def build():
            first = add(1, 2).set_name(node)
            return add(first, 1).set_name("after")

        path = str(tmp_path / "storage")
        wf = make_workflow(build(), workflow_name="unreadable")
        wf.set_storage(FileStorage(path))
        assert wf.run() == 4
        os.remove(os.path.join(path, "unreadable", "after.ffr"))  # runs again, with its input loaded
        wf = make_workflow(build(), workflow_name="unreadable")
        wf.set_storage(UnreadableStorage(path))
        with pytest.raises(kind) as info:
            wf.run()
        message = str(info.value)
        assert f"node {node!r} of workflow 'unreadable'" in message and detail in message
        assert wf.last_run.failed == node
        assert FileStorage(path).read_task("unreadable", node) == 3  # kept as it was
