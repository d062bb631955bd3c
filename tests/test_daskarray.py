"""DaskArraySerializer: HDF5 under file storage, Zarr under S3 storage (a real S3 server
on 127.0.0.1), written chunk by chunk, read back lazily with the same chunks, removed
with the task."""

from __future__ import annotations

import os
import pickle
import threading
import tracemalloc

import numpy as np
import pytest

import s3support  # noqa: I001 - sets the AWS environment of the tests first

import dask
import dask.array as da
import h5py
import zarr

from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import ConfigurationError, SerializationError
from functionfuse.serializers import FILE_PROTOCOL, S3_PROTOCOL, available_serializers
from functionfuse.serializers import daskarray
from functionfuse.serializers.daskarray import DaskArraySerializer
from functionfuse.storage import storage_factory


@pytest.fixture(scope="module")
def s3server():
    server = s3support.MotoS3().start()
    yield server
    server.stop()


def _make(kind, tmp_path, server, bucket=None):
    if kind == "file":
        return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "store")}})
    return storage_factory({"kind": "S3", "options": {"path": f"{bucket}/store", "s3fs": server.s3fs_options()}})


@pytest.fixture(params=["file", "S3"])
def storage(request, tmp_path, s3server):
    bucket = s3server.make_bucket() if request.param == "S3" else None
    st = _make(request.param, tmp_path, s3server, bucket)
    st.register_persistent_serializers(DaskArraySerializer)  # as in the seed documentation
    yield st
    if bucket:
        s3server.raw_fs().rm(bucket, recursive=True)


def data_paths(st, workflow_name):
    """Everything stored for a workflow other than its results."""
    if st.protocol == FILE_PROTOCOL:
        root = os.path.join(st.path, workflow_name)
        out = []
        for folder, _, files in os.walk(root):
            out += [os.path.relpath(os.path.join(folder, f), root) for f in files if not f.endswith(".ffr")]
        return [p for p in out if not p.startswith(".tmp")]
    fs = st.filesystem
    prefix = f"{st.path}/{workflow_name}/"
    return [p[len(prefix) :] for p in fs.find(prefix) if not p.endswith(".ffr")]


ARRAYS = {
    "2d-float": lambda: da.random.default_rng(0).random((300, 200), chunks=(100, 50)),
    "irregular": lambda: da.from_array(np.arange(100), chunks=((10, 30, 60),)),
    "3d-int16": lambda: da.arange(6000, dtype=np.int16).reshape(10, 20, 30).rechunk((5, 10, 30)),
    "bool": lambda: da.from_array(np.arange(50) % 3 == 0, chunks=7),
    "complex": lambda: da.from_array(np.arange(20) * (1 + 2j), chunks=6),
    "uint8": lambda: da.arange(100, dtype=np.uint8, chunks=33),
    "datetime": lambda: da.from_array(np.arange(10).astype("datetime64[s]"), chunks=4),
    "empty": lambda: da.zeros((0, 4), chunks=(1, 2)),
    "0-d": lambda: da.asarray(np.array(3.5)),
}


@pytest.mark.parametrize("make", ARRAYS.values(), ids=ARRAYS.keys())
def test_round_trip_keeps_values_dtype_and_chunks(storage, make):
    arr = make()
    storage.save("wf", "t", arr)
    back = storage.read_task("wf", "t")
    assert isinstance(back, da.Array)
    assert back.chunks == arr.chunks and back.dtype == arr.dtype
    np.testing.assert_array_equal(back.compute(), arr.compute())
    assert storage.read_metadata("wf", "t")["serializers"] == ["DaskArraySerializer"]


def test_file_storage_writes_hdf5_with_the_dask_chunks(tmp_path, s3server):
    st = _make("file", tmp_path, s3server)
    st.register_persistent_serializers(DaskArraySerializer)
    arr = da.random.default_rng(1).random((400, 300), chunks=(100, 150))
    st.save("wf", "t", arr)
    [h5] = data_paths(st, "wf")
    assert h5.startswith("t.") and ".data/" in h5 and h5.endswith(".h5")
    with h5py.File(os.path.join(st.path, "wf", h5), "r") as f:
        assert f["data"].chunks == (100, 150)
        np.testing.assert_array_equal(f["data"][...], arr.compute())


def test_s3_storage_writes_zarr_next_to_the_result(s3server):
    bucket = s3server.make_bucket()
    st = _make("S3", None, s3server, bucket)
    st.register_persistent_serializers(DaskArraySerializer)
    arr = da.random.default_rng(2).random((400, 300), chunks=(100, 150))
    st.save("wf", "t", arr)
    paths = data_paths(st, "wf")
    meta = [p for p in paths if p.endswith("zarr.json")]
    assert len(meta) == 1 and meta[0].startswith("t.") and ".data/" in meta[0]
    assert len([p for p in paths if "/c/" in p]) == 4 * 2  # one object per chunk
    # any Zarr reader opens it, given the URL
    url = f"s3://{st.path}/wf/{meta[0][: -len('/zarr.json')]}"
    z = zarr.open_array(
        store=zarr.storage.FsspecStore.from_url(url, storage_options=s3server.s3fs_options(), read_only=True),
        mode="r",
    )
    assert z.chunks == (100, 150)
    np.testing.assert_array_equal(z[...], arr.compute())


def test_reading_is_lazy_until_computed(storage, s3server, monkeypatch):
    arr = da.arange(1000, chunks=100)
    storage.save("wf", "t", {"x": arr})
    reads: list = []
    if storage.protocol == FILE_PROTOCOL:
        real = daskarray._HDF5Dataset.__getitem__

        def counting(self, key):
            reads.append(key)
            return real(self, key)

        monkeypatch.setattr(daskarray._HDF5Dataset, "__getitem__", counting)

        def chunk_reads():
            return len(reads)
    else:
        def chunk_reads():
            return sum(1 for m, p, _ in s3server.faults.seen if m == "GET" and "/c/" in p)

    before = chunk_reads()
    back = storage.read_task("wf", "t")["x"]
    assert chunk_reads() == before  # nothing but metadata was read
    assert int(back[250:260].sum().compute()) == sum(range(250, 260))
    assert chunk_reads() - before == 1  # one chunk, the one asked for
    assert int(back.sum().compute()) == sum(range(1000))


@pytest.fixture(params=["file", "S3"])
def measured_storage(request, tmp_path):
    """Like ``storage``, but an S3 server in another process: its memory is not counted here."""
    if request.param == "file":
        st = _make("file", tmp_path, None)
        server = None
    else:
        server = s3support.MotoProcess().start()
        st = _make("S3", None, server, server.make_bucket())
    st.register_persistent_serializers(DaskArraySerializer)
    yield st
    if server is not None:
        server.stop()


def test_written_chunk_by_chunk_without_materialising_the_array(measured_storage, monkeypatch):
    storage = measured_storage

    def refuse(*args, **kwargs):
        raise AssertionError("the whole array was materialised")

    monkeypatch.setattr(da.Array, "__array__", refuse)
    monkeypatch.setattr(da.Array, "compute", refuse)
    chunk = 2 << 20
    arr = da.random.default_rng(3).random((32 * chunk // 8,), chunks=chunk // 8)  # 64 MiB, 32 chunks
    storage.save("wf", "warm-up", da.ones(10, chunks=5) + 0)  # clients, codecs: made once, not measured
    tracemalloc.start()
    try:
        with dask.config.set(num_workers=2):
            storage.save("wf", "big", arr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # two writing threads, each with about a chunk and its compressed copy, plus fixed costs
    assert peak < 8 * chunk, f"peak {peak / 2**20:.1f} MiB while writing 2 MiB chunks"
    monkeypatch.undo()
    back = storage.read_task("wf", "big")
    assert back.chunks == arr.chunks
    np.testing.assert_array_equal(back[: 1000].compute(), arr[: 1000].compute())


def test_removing_or_replacing_the_task_removes_its_array_data(storage):
    storage.save("wf", "t", da.ones((100,), chunks=10))
    storage.save("wf", "keep", da.zeros((10,), chunks=5) + 1)
    first = [p for p in data_paths(storage, "wf") if p.startswith("t.")]
    assert first
    storage.save("wf", "t", da.ones((50,), chunks=25) * 3)
    second = [p for p in data_paths(storage, "wf") if p.startswith("t.")]
    assert second and not set(first) & set(second)
    assert float(storage.read_task("wf", "t").sum().compute()) == 150.0
    storage.remove_task("wf", task_name="t")
    assert all(p.startswith("keep.") for p in data_paths(storage, "wf"))
    storage.remove_workflow("wf")
    assert data_paths(storage, "wf") == []


def test_arrays_anywhere_in_a_result_and_an_array_met_twice_is_written_once(storage):
    a = da.arange(40, chunks=10)
    b = da.ones((4, 4), chunks=2)
    storage.save("wf", "t", {"a": a, "again": [a, (a,)], "b": b, "n": 5})
    back = storage.read_task("wf", "t")
    assert back["n"] == 5
    for x in (back["a"], back["again"][0], back["again"][1][0]):
        np.testing.assert_array_equal(x.compute(), np.arange(40))
    np.testing.assert_array_equal(back["b"].compute(), np.ones((4, 4)))
    stored = {p.split("/")[1] for p in data_paths(storage, "wf")}
    assert len(stored) == 2


def test_results_read_back_by_name_on_a_storage_without_the_serializer(storage, tmp_path):
    assert "DaskArraySerializer" in available_serializers
    storage.save("wf", "t", da.arange(10, chunks=5))
    fresh = pickle.loads(pickle.dumps(storage))
    fresh._serializers = []  # a storage object made elsewhere, with nothing registered
    assert int(fresh.read_task("wf", "t").sum().compute()) == 45


def test_loaded_arrays_can_be_pickled_and_computed_elsewhere(storage):
    storage.save("wf", "t", da.arange(30, chunks=7))
    back = storage.read_task("wf", "t")
    again = pickle.loads(pickle.dumps(back))
    np.testing.assert_array_equal(again.compute(), np.arange(30))


def test_loaded_arrays_compute_from_several_threads(storage):
    storage.save("wf", "t", da.arange(10_000, chunks=500))
    back = storage.read_task("wf", "t")
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(int(back.sum().compute()))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [sum(range(10_000))] * 4


def test_arrays_that_cannot_be_stored_are_refused_clearly(storage):
    unknown = da.arange(10, chunks=5)
    unknown = unknown[unknown > 3]
    with pytest.raises(SerializationError, match="compute_chunk_sizes"):
        storage.save("wf", "t", unknown)
    objects = da.from_array(np.array([{"a": 1}, None], dtype=object), chunks=1)
    with pytest.raises(SerializationError, match="object"):
        storage.save("wf", "t", objects)
    assert storage.list_tasks("wf") == []
    assert data_paths(storage, "wf") == []


def test_protocols_that_do_not_match_are_reported():
    with pytest.raises(ConfigurationError, match="FILE_PROTOCOL"):
        DaskArraySerializer.pickle(da.ones(3, chunks=3), {})
    pid = {"format": 1, "kind": "zarr", "name": "x.zarr", "shape": [3], "dtype": "<f8", "chunks": [[3]]}
    with pytest.raises(SerializationError, match="another kind of storage"):
        DaskArraySerializer.unpickle(pid, {FILE_PROTOCOL: object()})
    with pytest.raises(SerializationError, match="newer"):
        DaskArraySerializer.unpickle({**pid, "format": 99}, {S3_PROTOCOL: object()})


CALLS: list[str] = []


@workflow
def make_array(n):
    CALLS.append("make_array")
    return da.arange(n, chunks=n // 4)


@workflow
def double(arr):
    CALLS.append("double")
    return arr * 2


@workflow
def total(arr):
    CALLS.append("total")
    return int(arr.sum().compute())


def test_a_pipeline_of_dask_arrays_resumes_from_storage(storage):
    arr = make_array(1000).set_name("array")
    doubled = double(arr).set_name("doubled")
    result = total(doubled).set_name("total")
    wf = LocalWorkflow(result, workflow_name="pipeline")
    wf.set_storage(storage)
    CALLS.clear()
    assert wf.run() == 2 * sum(range(1000))
    assert CALLS == ["make_array", "double", "total"]
    storage.remove_task("pipeline", task_name="total")
    CALLS.clear()
    assert wf.run() == 2 * sum(range(1000))
    assert CALLS == ["total"]  # "doubled" was loaded (lazily) from storage
