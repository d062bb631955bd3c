"""The ``ray`` storage kind on a real local Ray: the storage contract, the same bytes
as ``kind: file``, and its options."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest

import raysupport  # noqa: I001 - sets the Ray environment before ray is imported
from contracts.storage import KEY_A, WF, StorageContract, TextBlob, TextBlobSerializer, damage_file_result

import ray

from functionfuse.errors import ConfigurationError, SigningKeyError, StorageError, TaskNotFoundError
from functionfuse.storage import available_storages, frame, storage_factory
from functionfuse.storage.filestorage import FileStorage as LocalFileStorage
from functionfuse.storage.signing import ENV_KEY

REMOTE = {"resources": {"_disk": 0.001}}

@pytest.fixture(scope="session", autouse=True)
def _ray_session():
    yield
    raysupport.stop_ray()


@pytest.fixture
def local_ray():
    raysupport.start_local_ray()


def make(path, **extra):
    return storage_factory({"kind": "ray", "options": {"remoteArgs": REMOTE, "path": str(path), **extra}})


class TestRayFileStorageContract(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path, local_ray):
        return make(tmp_path / "store")

    @pytest.fixture
    def corrupt(self):
        return damage_file_result

    @pytest.fixture
    def use_key(self, monkeypatch):
        """The key in this process and, through a runtime environment of the storage
        tasks, on the storage node (a cluster's pods get it from a Secret instead)."""

        def use(storage, key):
            if key is None:
                monkeypatch.delenv(ENV_KEY, raising=False)
                storage.remote_args = dict(REMOTE)
            else:
                monkeypatch.setenv(ENV_KEY, key)
                storage.remote_args = {**REMOTE, "runtime_env": {"env_vars": {ENV_KEY: key}}}
            return storage

        return use

    def signing_copy(self, storage) -> bytes:
        storage.remote_args = dict(REMOTE)  # the test's runtime environment holds the key: not that
        return pickle.dumps(storage)

    def local_folder(self, storage) -> str:
        return storage.path  # the test's Ray cluster runs on this machine

    def index_owner(self, storage):
        return storage.local()  # the storage node is this machine

    def rebuild(self, blob: bytes, env: dict[str, str]) -> None:
        """A step of this process's Ray cluster: the copy needs no environment."""
        assert env == {}
        clone = pickle.loads(blob)
        assert clone.read_task(WF, "t") == {"v": 1}
        clone.save(WF, "copy", 2)

    def test_run_reports_are_trimmed_to_the_newest(self, storage):
        """The storage node trims (with the default of the file storage there)."""
        for i in range(LocalFileStorage.keep_run_reports + 2):
            storage.save_run_report(WF, {"n": i})
        reports = storage.list_run_reports(WF)
        assert len(reports) == LocalFileStorage.keep_run_reports and reports[0]["n"] == 2

    def test_the_storage_node_needs_the_key_too(self, storage, use_key, monkeypatch):
        """A process with the key, a storage node without it: the node refuses."""
        st = use_key(storage, KEY_A)
        st.save(WF, "t", 1)
        clone = pickle.loads(self.signing_copy(st))  # storage tasks run where no key is set
        with pytest.raises(SigningKeyError, match="no signing key"):
            clone.read_task(WF, "t")

    def test_persistent_serializer_writes_beside_the_task_and_is_removed_with_it(self, storage):
        """As in the contract, except that the serializer runs on the storage node (another
        process), so this process's count of its calls stays unchanged."""
        storage.register_persistent_serializers(TextBlobSerializer)
        before = TextBlobSerializer.pickled
        value = {"blob": TextBlob("hello " * 1000), "plain": 3}
        storage.save(WF, "t", value)
        assert TextBlobSerializer.pickled == before  # it ran there, not here
        data = [e for e in os.listdir(os.path.join(storage.path, WF)) if e.endswith(".data")]
        assert len(data) == 1 and os.listdir(os.path.join(storage.path, WF, data[0])) == ["blob.txt"]
        back = storage.read_task(WF, "t")
        assert back["plain"] == 3 and isinstance(back["blob"], TextBlob) and back["blob"].text == value["blob"].text
        assert storage.read_metadata(WF, "t")["serializers"] == ["TextBlob"]
        storage.save(WF, "t", {"blob": TextBlob("v2")})
        assert storage.read_task(WF, "t")["blob"].text == "v2"
        storage.remove_task(WF, task_name="t")
        assert storage.list_tasks(WF, "*") == []
        assert [e for e in os.listdir(os.path.join(storage.path, WF)) if not e.startswith(".")] == []


def test_kind_ray_is_registered():
    assert available_storages["ray"] == ("functionfuse.storage.rayfilestorage:FileStorage", "ray")


def test_same_format_as_file_storage(local_ray, tmp_path):
    value = {"array": np.arange(50_000, dtype=np.float64), "text": "x" * 1000}
    meta = {"node": "t", "started": "2026-01-01T00:00:00+00:00"}
    ray_store = make(tmp_path / "ray")
    file_store = LocalFileStorage(tmp_path / "file")
    ray_store.save("wf", "t", value, meta)
    file_store.save("wf", "t", value, meta)
    assert sorted(os.listdir(tmp_path / "ray" / "wf")) == sorted(os.listdir(tmp_path / "file" / "wf")) == [".tmp", "t.ffr"]
    headers = []
    for root in ("ray", "file"):
        path = tmp_path / root / "wf" / "t.ffr"
        with open(path, "rb") as f:
            header = frame.read_header(f, str(path), path.stat().st_size)
            headers.append((header, bytes(b"".join(frame.read_payload(f, header, str(path))))))
    (ray_header, ray_payload), (file_header, file_payload) = headers
    assert ray_payload == file_payload
    for key in ("format", "segments", "checksum", "meta"):
        assert ray_header[key] == file_header[key], key
    # kind "file" reads what the ray storage wrote, and the other way round
    np.testing.assert_array_equal(LocalFileStorage(tmp_path / "ray").read_task("wf", "t")["array"], value["array"])
    assert make(tmp_path / "file").read_metadata("wf", "t")["node"] == "t"


def test_loaded_arrays_are_writable_and_large_ones_survive(local_ray, tmp_path):
    storage = make(tmp_path)
    big = np.random.default_rng(0).random(3_000_000)  # 24 MB: through Ray's object store
    storage.save("wf", "big", big)
    back = storage.read_task("wf", "big")
    np.testing.assert_array_equal(back, big)
    back[0] = -1.0


def test_results_with_serializers_are_read_on_the_storage_node(local_ray, tmp_path):
    storage = make(tmp_path)
    storage.register_persistent_serializers(TextBlobSerializer)
    storage.save("wf", "blob", {"b": TextBlob("hello")})
    assert storage.read_task("wf", "blob")["b"].text == "hello"
    clone = pickle.loads(pickle.dumps(storage))  # serializers travel with the storage
    assert clone.read_task("wf", "blob")["b"].text == "hello"


def test_metadata_many_and_other_storage_methods_run_remotely(local_ray, tmp_path):
    storage = make(tmp_path)
    storage.save("wf", "a", 1, {"node": "a"})
    many = storage.read_metadata_many("wf", ["a", "gone"])
    assert list(many) == ["a"] and many["a"]["node"] == "a"
    assert storage.stored_tasks("wf") == {"a"}
    with pytest.raises(AttributeError):
        storage.no_such_method  # noqa: B018


def test_relative_path_is_resolved_where_the_storage_is_created(local_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = make("rel")
    storage.save("wf", "t", 3)
    assert (tmp_path / "rel" / "wf" / "t.ffr").is_file()
    assert storage.path == str(tmp_path / "rel")


def test_options_are_checked(local_ray, tmp_path):
    with pytest.raises(ConfigurationError, match="'path'"):
        storage_factory({"kind": "ray", "options": {"remoteArgs": REMOTE}})
    with pytest.raises(ConfigurationError, match="remoteArgs"):
        storage_factory({"kind": "ray", "options": {"path": str(tmp_path), "remote_args": REMOTE}})
    with pytest.raises(ConfigurationError, match="not valid ray.remote options"):
        storage_factory({"kind": "ray", "options": {"path": str(tmp_path), "remoteArgs": {"cpus": 1}}})
    with pytest.raises(ConfigurationError, match="rayInitArgs"):
        storage_factory({"kind": "ray", "options": {"path": str(tmp_path), "rayInitArgs": "auto"}})
    # remoteArgs may be left out: storage tasks then run on any node
    anywhere = storage_factory({"kind": "ray", "options": {"path": str(tmp_path)}})
    anywhere.save("wf", "t", 1)
    assert anywhere.read_task("wf", "t") == 1


def test_not_found_is_the_callers_exception(local_ray, tmp_path):
    storage = make(tmp_path)
    with pytest.raises(TaskNotFoundError) as info:
        storage.read_task("wf", "missing")
    assert type(info.value) is TaskNotFoundError  # not wrapped in a Ray error


def test_read_mode_initialises_ray_with_ray_init_args(tmp_path):
    """A notebook reading results: rayInitArgs starts (or connects to) Ray."""
    raysupport.stop_ray()
    raysupport._worker_path()
    raysupport._loopback_only()
    storage = make(
        tmp_path,
        rayInitArgs={"address": "local", "num_cpus": 1, "resources": {"_disk": 1}, "include_dashboard": False},
    )
    try:
        assert ray.is_initialized()
        storage.save("wf", "t", "read mode")
        assert storage.read_task("wf", "t") == "read mode"
    finally:
        raysupport.stop_ray()


def test_without_ray_the_error_says_what_to_do(tmp_path):
    raysupport.stop_ray()
    storage = make(tmp_path)
    with pytest.raises(ConfigurationError, match="rayInitArgs"):
        storage.list_tasks("wf")
    assert os.listdir(tmp_path) == []


# -- a storage resource that no node offers ------------------------------------------------
MISSING = {"resources": {"_nvme": 0.001}}


def test_a_resource_no_node_offers_times_out_naming_it(local_ray, tmp_path):
    st = storage_factory(
        {"kind": "ray", "options": {"remoteArgs": MISSING, "path": str(tmp_path / "s"), "resourceTimeout": 1}}
    )
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"'_nvme'.*ray start --resources") as info:
        st.list_tasks(WF)
    assert time.monotonic() - t0 < 10
    assert "remoteArgs" in str(info.value)
    # the answer is kept: the next call fails at once instead of waiting again
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError, match="'_nvme'"):
        st.save(WF, "t", 1)
    assert time.monotonic() - t0 < 1
    # a run report (saved also after Ctrl-C) fails at once with a StorageError, never waits
    with pytest.raises(StorageError, match="'_nvme'"):
        st.save_run_report(WF, {"workflow": WF})


def test_resource_timeout_is_checked(local_ray, tmp_path):
    with pytest.raises(ConfigurationError, match="'resourceTimeout' must be a number of seconds"):
        make(tmp_path / "s", resourceTimeout="soon")


def test_a_run_on_a_storage_without_its_node_fails_and_reports(local_ray, tmp_path):
    from functionfuse import workflow as ff_workflow
    from functionfuse.backends.builtin.rayback import RayWorkflow

    @ff_workflow
    def one():
        return 1

    wf = RayWorkflow(one().set_name("one"), workflow_name=WF)
    wf.set_storage(
        storage_factory({"kind": "ray", "options": {"remoteArgs": MISSING, "path": str(tmp_path), "resourceTimeout": 1}})
    )
    t0 = time.monotonic()
    with pytest.raises(ConfigurationError, match="'_nvme'"):
        wf.run()
    assert time.monotonic() - t0 < 10
    assert wf.last_run.status == "failed"


def test_ctrl_c_while_waiting_for_the_storage_node_ends_the_run_at_once(local_ray, tmp_path):
    import signal
    import threading

    from functionfuse import workflow as ff_workflow
    from functionfuse.backends.builtin.rayback import RayWorkflow

    @ff_workflow
    def one():
        return 1

    wf = RayWorkflow(one().set_name("one"), workflow_name=WF)
    options = {"remoteArgs": {"resources": {"_tape": 0.001}}, "path": str(tmp_path), "resourceTimeout": 60}
    wf.set_storage(storage_factory({"kind": "ray", "options": options}))
    timer = threading.Timer(1.0, signal.raise_signal, (signal.SIGINT,))  # Ctrl-C, one second in
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            wf.run()
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 10  # the run report is not waited for
    assert wf.last_run.status == "interrupted"
