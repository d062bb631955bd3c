"""S3 storage against a real S3 HTTP server on 127.0.0.1 (moto; MinIO too where installed):
the storage contract, the layout and format shared with file storage, atomic writes,
retries and clear failures, credentials kept out of sight, a server stopped mid-run,
and Ray workers writing straight to S3."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time

import numpy as np
import pytest

import s3support  # noqa: I001 - sets the AWS environment of the tests first
from contracts.storage import WF, StorageContract, TextBlob
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import (
    ConfigurationError,
    CorruptedResultError,
    MissingDependencyError,
    StorageError,
    TaskNotFoundError,
)
from functionfuse.serializers import S3_PROTOCOL
from functionfuse.storage import _s3io, storage_factory
from functionfuse.storage.filestorage import FileStorage
from functionfuse.storage.s3storage import S3Storage, S3TaskFiles


# -- servers, buckets, storages ---------------------------------------------------------------
@pytest.fixture(scope="module", params=s3support.server_kinds())
def s3server(request):
    server = s3support.start_server(request.param)
    yield server
    server.stop()
    getattr(server, "close", lambda: None)()


@pytest.fixture
def moto():
    """A moto server of the test's own: stopped, restarted, or given faults."""
    server = s3support.MotoS3().start()
    yield server
    server.stop()


def _bucket(server):
    name = server.make_bucket()
    yield name
    try:
        server.faults.clear()
        server.raw_fs().rm(name, recursive=True)
    except Exception:  # the server may be stopped by the test
        pass


@pytest.fixture
def bucket(s3server):
    yield from _bucket(s3server)


def make_storage(server, bucket, prefix="results", **s3fs_extra):
    return storage_factory(
        {"kind": "S3", "options": {"path": f"{bucket}/{prefix}", "s3fs": server.s3fs_options(**s3fs_extra)}}
    )


FEW_RETRIES = {"config_kwargs": {"retries": {"mode": "standard", "max_attempts": 2}}}


def _damage(server):
    def damage(storage, workflow_name, task, how):
        fs = server.raw_fs()
        path = f"{storage.path}/{workflow_name}/{task}.ffr"
        data = bytearray(fs.cat_file(path))
        if how == "truncate":
            data = data[: len(data) // 2]
        else:
            data[-10] ^= 0x01
        fs.pipe_file(path, bytes(data))

    return damage


# -- the contract -----------------------------------------------------------------------------
class S3TextBlobSerializer:
    """The contract's TextBlob serializer, written through ``protocols[S3_PROTOCOL]``."""

    name = "S3TextBlob"
    serializer_class = TextBlob

    @classmethod
    def pickle(cls, obj, protocols):
        with protocols[S3_PROTOCOL].open("blob.txt", "w") as f:
            f.write(obj.text)
        return "blob.txt"

    @classmethod
    def unpickle(cls, pid, protocols):
        with protocols[S3_PROTOCOL].open(pid, "r") as f:
            return TextBlob(f.read())


class TestS3StorageContract(StorageContract):
    @pytest.fixture
    def storage(self, s3server, bucket):
        return make_storage(s3server, bucket)

    @pytest.fixture
    def corrupt(self, s3server):
        return _damage(s3server)

    def secrets(self, storage) -> list[str]:
        return [s3support.KEY, s3support.SECRET]

    def test_persistent_serializer_writes_beside_the_task_and_is_removed_with_it(self, storage, s3server):
        # the contract's serializer writes through FILE_PROTOCOL; under S3 it is S3_PROTOCOL
        fs = s3server.raw_fs()
        storage.register_persistent_serializers(S3TextBlobSerializer)
        value = {"blob": TextBlob("hello " * 1000), "plain": 3}
        storage.save(WF, "t", value)
        back = storage.read_task(WF, "t")
        assert back["plain"] == 3 and back["blob"].text == value["blob"].text
        assert storage.read_metadata(WF, "t")["serializers"] == ["S3TextBlob"]
        storage.save(WF, "t", {"blob": TextBlob("v2")})
        assert storage.read_task(WF, "t")["blob"].text == "v2"
        data = [p for p in fs.find(f"{storage.path}/{WF}") if ".data/" in p]
        assert len(data) == 1  # the replaced version's object is gone
        storage.remove_task(WF, task_name="t")
        assert storage.list_tasks(WF, "*") == []
        assert fs.find(f"{storage.path}/{WF}") == []


# -- options, registry, identity ----------------------------------------------------------------
def test_both_kind_names_and_the_documented_options(s3server, bucket):
    for kind in ("S3", "s3"):
        st = storage_factory({"kind": kind, "options": {"path": f"s3://{bucket}/a/b/", "s3fs": s3server.s3fs_options()}})
        assert isinstance(st, S3Storage) and st.path == f"{bucket}/a/b"
    st = storage_factory({"kind": "S3", "options": {"path": bucket, "s3fs": s3server.s3fs_options()}})
    st.save("wf", "t", 1)  # a bucket without prefix
    assert s3server.raw_fs().exists(f"{bucket}/wf/t.ffr")
    assert st.list_workflows() == ["wf"]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"s3fs": {}}, "'path'"),
        ({"path": "b/p", "extra": 1}, "'path' and 's3fs'"),
        ({"path": "Bad_Bucket!/p"}, "bucket name"),
        ({"path": "bucket/../up"}, "unsafe prefix"),
        ({"path": ""}, "bucket"),
        ({"path": "bucket", "s3fs": "http://x"}, "must be a dict"),
        ({"path": "bucket", "s3fs": {"asynchronous": True}}, "manages"),
    ],
    ids=["no-path", "unknown-key", "bad-bucket", "dotdot", "empty", "s3fs-not-dict", "managed-key"],
)
def test_bad_options_are_refused_clearly(options, match):
    with pytest.raises(ConfigurationError, match=match):
        storage_factory({"kind": "S3", "options": options})


def test_missing_extra_names_the_pip_install(monkeypatch):
    import functionfuse.storage as package

    for mod in ("s3storage", "_s3io", "_s3options"):
        monkeypatch.delitem(sys.modules, f"functionfuse.storage.{mod}", raising=False)
        monkeypatch.delattr(package, mod, raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with pytest.raises(MissingDependencyError, match=r"'s3fs'.*pip install 'functionfuse\[s3\]'"):
        storage_factory({"kind": "S3", "options": {"path": "bucket"}})


def test_repr_names_the_place_not_the_credentials(s3server, bucket):
    st = make_storage(s3server, bucket)
    text = repr(st)
    assert bucket in text and s3server.endpoint in text
    assert s3support.KEY not in text and s3support.SECRET not in text


def test_endpoint_user_info_is_never_shown():
    assert _s3io.display_endpoint({"endpoint_url": "http://user:pw@127.0.0.1:9000/x?q=1"}) == "http://127.0.0.1:9000/x"


# -- layout and format --------------------------------------------------------------------------
def test_layout_mirrors_file_storage_and_listing_shows_results_only(s3server, bucket):
    st = make_storage(s3server, bucket, prefix="p")
    st.register_persistent_serializers(S3TextBlobSerializer)
    st.save("wf", "plain", 1)
    st.save("wf", "blob", TextBlob("x"))
    fs = s3server.raw_fs()
    for stray in ("wf/.tmp/abc.ffr", "wf/notes.txt", "wf/sub/deep.ffr", "wf/.hidden.ffr"):
        fs.pipe_file(f"{bucket}/p/{stray}", b"not a result")
    keys = sorted(k[len(f"{bucket}/p/") :] for k in fs.find(f"{bucket}/p"))
    token = st.read_metadata("wf", "blob")
    assert "wf/plain.ffr" in keys and "wf/blob.ffr" in keys
    assert [k for k in keys if k.startswith("wf/blob.") and k.endswith(".data/blob.txt")]
    assert token["serializers"] == ["S3TextBlob"]
    assert st.list_tasks("wf") == ["blob", "plain"]
    assert st.list_workflows() == ["wf"]


def test_result_objects_are_byte_for_byte_file_storage_results(s3server, bucket, tmp_path):
    st = make_storage(s3server, bucket)
    fs = s3server.raw_fs()
    value = {"a": np.arange(100_000, dtype=np.int32), "b": "text"}
    st.save("wf", "t", value, {"node": "t", "inputs": ["x"]})
    # an object downloaded from S3 is a file storage result...
    os.makedirs(tmp_path / "wf")
    (tmp_path / "wf" / "t.ffr").write_bytes(fs.cat_file(f"{st.path}/wf/t.ffr"))
    local = FileStorage(tmp_path)
    back = local.read_task("wf", "t")
    np.testing.assert_array_equal(back["a"], value["a"])
    assert local.read_metadata("wf", "t")["checksum"] == st.read_metadata("wf", "t")["checksum"]
    # ...and a file storage result uploaded to S3 is an S3 result
    local.save("wf", "u", [1, 2, 3])
    fs.pipe_file(f"{st.path}/wf/u.ffr", (tmp_path / "wf" / "u.ffr").read_bytes())
    assert st.read_task("wf", "u") == [1, 2, 3]
    assert fs.cat_file(f"{st.path}/wf/u.ffr") == (tmp_path / "wf" / "u.ffr").read_bytes()


def test_metadata_of_many_tasks_is_read_in_parallel_and_reports_damage(s3server, bucket):
    st = make_storage(s3server, bucket)
    for i in range(6):
        st.save("wf", f"t{i}", i, {"node": f"t{i}"})
    _damage(s3server)(st, "wf", "t3", "truncate")
    found = st.read_metadata_many("wf", [f"t{i}" for i in range(6)] + ["gone"])
    assert sorted(found) == [f"t{i}" for i in range(6)]
    assert isinstance(found["t3"], CorruptedResultError)
    assert found["t5"]["node"] == "t5"


def test_remove_workflow_removes_results_and_their_data(s3server, bucket):
    st = make_storage(s3server, bucket)
    st.register_persistent_serializers(S3TextBlobSerializer)
    st.save("wf", "a", TextBlob("a"))
    st.save("wf", "b", 2)
    st.save("other", "c", 3)
    st.remove_workflow("wf")
    fs = s3server.raw_fs()
    assert fs.find(f"{st.path}/wf") == []
    assert st.list_workflows() == ["other"]


def test_remove_task_also_removes_data_left_by_an_interrupted_write(s3server, bucket):
    st = make_storage(s3server, bucket)
    fs = s3server.raw_fs()
    st.save("wf", "t", 1)
    fs.pipe_file(f"{st.path}/wf/t.0123456789abcdef.data/orphan.bin", b"left by a killed write")
    fs.pipe_file(f"{st.path}/wf/t2.0123456789abcdef.data/other.bin", b"another task's")
    st.save("wf", "t2", 2)
    st.remove_task("wf", task_name="t")
    assert fs.find(f"{st.path}/wf/t.0123456789abcdef.data") == []
    assert fs.exists(f"{st.path}/wf/t2.0123456789abcdef.data/other.bin")


def test_run_reports_are_stored_with_the_workflow_and_not_listed_as_tasks(s3server, bucket, monkeypatch):
    from functionfuse.storage import s3storage

    st = make_storage(s3server, bucket)
    wf = LocalWorkflow(step(1, "r").set_name("r"), workflow_name="reports")
    wf.set_storage(st)
    wf.run()
    [report] = st.list_run_reports("reports")
    assert report["workflow"] == "reports"
    assert st.list_tasks("reports") == ["r"] and st.list_workflows() == ["reports"]
    monkeypatch.setattr(s3storage.S3Storage, "keep_run_reports", 2)
    for i in range(3):
        st.save_run_report("reports", {"n": i})
    assert [r.get("n") for r in st.list_run_reports("reports")] == [1, 2]
    assert st.list_run_reports("never_ran") == []


# -- atomic writes --------------------------------------------------------------------------------
@pytest.fixture
def small_parts(monkeypatch):
    """Multipart uploads from 5 MiB on (S3's smallest part), so tests stay small."""
    monkeypatch.setattr(_s3io, "SINGLE_PUT_MAX", 5 << 20)
    monkeypatch.setattr(_s3io, "PART", 5 << 20)


def test_large_result_is_one_multipart_upload(small_parts, s3server, bucket):
    st = make_storage(s3server, bucket)
    a = np.random.default_rng(1).random(1_800_000)  # 14.4 MB: 3 parts
    st.save("wf", "big", a)
    back = st.read_task("wf", "big")
    np.testing.assert_array_equal(back, a)
    back[0] = 7.0  # writable, like file storage's
    assert st.verify_task("wf", "big")["size"] >= a.nbytes


def test_failed_multipart_upload_leaves_the_old_result_and_nothing_else(small_parts, moto):
    bucket = moto.make_bucket()
    st = make_storage(moto, bucket, **FEW_RETRIES)
    st.save("wf", "t", "old")
    rule = moto.faults.add("reset", times=-1, when=s3support.is_op("PUT", "partNumber=2"))
    with pytest.raises(StorageError, match="even after retrying"):
        st.save("wf", "t", np.ones(1_800_000))
    assert rule.hits >= 2  # retried before giving up
    moto.faults.clear()
    assert st.read_task("wf", "t") == "old"
    fs = moto.raw_fs()
    assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []
    assert fs.find(f"{st.path}/wf") == [f"{st.path}/wf/t.ffr"]
    st.save("wf", "t", np.ones(1_800_000))
    assert st.read_task("wf", "t").sum() == 1_800_000


def test_a_reader_never_sees_a_half_written_or_mixed_result(s3server, bucket):
    st = make_storage(s3server, bucket)
    n = 300_000  # 2.4 MB: read with several ranged requests after the first one
    st.save("wf", "t", np.full(n, 0.0))
    errors: list = []
    seen: set = set()

    def writer():
        try:
            for v in range(1, 12):
                st.save("wf", "t", np.full(n + v, float(v)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    w = threading.Thread(target=writer)
    w.start()
    while w.is_alive() or not seen:
        a = st.read_task("wf", "t")
        v = a[0]
        assert (a == v).all() and a.size == n + int(v)
        seen.add(float(v))
    w.join()
    assert not errors
    assert st.read_task("wf", "t")[0] == 11.0


def test_result_replaced_between_ranged_reads_is_read_again(s3server, bucket, monkeypatch):
    st = make_storage(s3server, bucket)
    st.save("wf", "t", np.full(200_000, 1.0))
    real = _s3io.ObjectReader.readinto
    replaced = []

    def readinto(self, buffer):
        if not replaced and self._pos >= len(self._first):  # between the first and second request
            replaced.append(True)
            st.save("wf", "t", np.full(200_000, 2.0))
        return real(self, buffer)

    monkeypatch.setattr(_s3io.ObjectReader, "readinto", readinto)
    assert st.read_task("wf", "t")[0] == 2.0
    assert replaced


# -- transient and permanent errors -----------------------------------------------------------------
def test_transient_errors_are_retried_with_backoff(moto):
    bucket = moto.make_bucket()
    st = make_storage(moto, bucket)
    f = moto.faults
    put = f.add("slowdown", times=2, when=s3support.is_op("PUT", key_part=".ffr"))
    st.save("wf", "t", np.arange(50_000))
    get = f.add("500", times=2, when=s3support.is_op("GET", key_part=".ffr"))
    np.testing.assert_array_equal(st.read_task("wf", "t"), np.arange(50_000))
    lst = f.add("reset", times=2, when=s3support.is_op("GET", "list-type=2"))
    assert st.list_tasks("wf") == ["t"]
    unavailable = f.add("503", times=1, when=s3support.is_op("POST", "delete"))
    st.remove_task("wf", task_name="t")
    assert (put.hits, get.hits, lst.hits, unavailable.hits) == (2, 2, 2, 1)
    assert st.list_tasks("wf") == []


def test_a_response_body_cut_off_is_read_again(moto):
    bucket = moto.make_bucket()
    st = make_storage(moto, bucket)
    a = np.random.default_rng(2).random(100_000)
    st.save("wf", "t", a)

    def later_range(environ):
        return environ.get("REQUEST_METHOD") == "GET" and environ.get("HTTP_RANGE", "").startswith("bytes=65536-")

    cut = moto.faults.add("cut", times=1, when=later_range)
    np.testing.assert_array_equal(st.read_task("wf", "t"), a)
    assert cut.hits == 1


def test_missing_bucket_fails_fast_naming_bucket_and_endpoint(moto):
    st = make_storage(moto, "no-such-bucket-here")
    before = moto.faults.requests
    t = time.monotonic()
    with pytest.raises(StorageError) as info:
        st.save("wf", "t", 1)
    assert time.monotonic() - t < 5
    msg = str(info.value)
    assert "'no-such-bucket-here'" in msg and moto.endpoint in msg and "does not exist" in msg
    assert moto.faults.requests - before == 1  # not retried
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        st.check()


def test_access_denied_fails_fast_naming_bucket_and_endpoint(moto):
    bucket = moto.make_bucket()
    st = make_storage(moto, bucket)
    st.save("wf", "t", 1)
    moto.faults.add("403", times=-1)
    before = moto.faults.requests
    with pytest.raises(StorageError) as info:
        st.read_task("wf", "t")
    msg = str(info.value)
    assert "denied" in msg and repr(bucket) in msg and moto.endpoint in msg
    assert moto.faults.requests - before == 1
    assert s3support.SECRET not in msg and s3support.KEY not in msg


def test_a_stopped_server_is_reported_with_the_endpoint_and_what_to_do(moto):
    bucket = moto.make_bucket()
    st = make_storage(moto, bucket, **FEW_RETRIES)
    st.save("wf", "t", 1)
    moto.stop()
    with pytest.raises(StorageError) as info:
        st.list_tasks("wf")
    msg = str(info.value)
    assert moto.endpoint in msg and "retrying" in msg and "run again" in msg
    moto.start()
    assert st.read_task("wf", "t") == 1


# -- credentials ----------------------------------------------------------------------------------
def test_credentials_never_reach_logs_errors_metadata_or_stored_objects(s3server, bucket, caplog):
    caplog.set_level(logging.DEBUG)
    st = make_storage(s3server, bucket)
    st.register_persistent_serializers(S3TextBlobSerializer)
    messages = [repr(st)]
    st.save("wf", "t", {"x": TextBlob("payload"), "n": 1}, {"node": "t"})
    st.read_task("wf", "t")
    meta = st.read_metadata("wf", "t")
    st.list_tasks("wf")
    for bad in (make_storage(s3server, "no-bucket-for-this-test"),):
        try:
            bad.read_task("wf", "t")
        except StorageError as exc:
            messages.append(str(exc))
    with pytest.raises(TaskNotFoundError) as info:
        st.read_task("wf", "nothing")
    messages.append(str(info.value))
    st.remove_task("wf", task_name="t")
    records = [r.getMessage() for r in caplog.records]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("functionfuse", "s3fs", "fsspec"))]
    stored = b"".join(s3server.raw_fs().cat_file(p) for p in s3server.raw_fs().find(bucket))
    for text in messages + records + [repr(meta)]:
        assert s3support.SECRET not in text
    for text in messages + ours + [repr(meta)]:
        assert s3support.KEY not in text
    assert s3support.SECRET.encode() not in stored and s3support.KEY.encode() not in stored


def test_credentials_from_the_environment_stay_out_of_pickles(s3server, bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3support.KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3support.SECRET)
    st = storage_factory({"kind": "S3", "options": {"path": bucket, "s3fs": {"endpoint_url": s3server.endpoint}}})
    st.save("wf", "t", 5)
    blob = pickle.dumps(st)
    assert s3support.SECRET.encode() not in blob and s3support.KEY.encode() not in blob
    assert pickle.loads(blob).read_task("wf", "t") == 5


# -- the protocol object ------------------------------------------------------------------------------
def test_task_files_object_for_serializers(s3server, bucket):
    st = make_storage(s3server, bucket)
    files = st._files("wf", "t", "0123456789abcdef", read_only=False)
    assert isinstance(files, S3TaskFiles)
    assert files["client"] is files.fs and files["folder"] == files.prefix  # the seed's dictionary form
    assert files.url("x.bin") == f"s3://{st.path}/wf/t.0123456789abcdef.data/x.bin"
    with files.open("x.bin", "wb") as f:
        f.write(b"abc")
    assert files.used and files.exists("x.bin")
    with pytest.raises(ConfigurationError):
        files.path("../escape")
    files.remove("x.bin")
    assert not files.exists("x.bin")
    ro = st._files("wf", "t", "0123456789abcdef", read_only=True)
    with pytest.raises(StorageError, match="read-only"):
        ro.open("y", "wb")


# -- a server stopped in the middle of a run ------------------------------------------------------------
CALLS: list[str] = []
HOOKS: dict = {}


@workflow
def step(x, name):
    CALLS.append(name)
    hook = HOOKS.pop(name, None)
    if hook is not None:
        hook()
    return x + 1


def test_server_stopped_mid_run_fails_clearly_and_the_rerun_resumes(moto):
    bucket = moto.make_bucket()
    st = make_storage(moto, bucket, **FEW_RETRIES)
    a = step(0, "a").set_name("a")
    b = step(a, "b").set_name("b")
    c = step(b, "c").set_name("c")
    d = step(c, "d").set_name("d")
    wf = LocalWorkflow(d, workflow_name="resume")
    wf.set_storage(st)
    CALLS.clear()
    HOOKS["c"] = moto.stop  # the server goes down while node c runs
    t = time.monotonic()
    with pytest.raises(StorageError) as info:
        wf.run()
    assert time.monotonic() - t < 60
    msg = str(info.value)
    assert "'c'" in msg and moto.endpoint in msg and "run again" in msg
    assert CALLS == ["a", "b", "c"]

    moto.start()  # back, on the same port, with what it stored
    kept = {n: st.read_metadata("resume", n)["checksum"] for n in ("a", "b")}
    CALLS.clear()
    assert wf.run() == 4
    assert CALLS == ["c", "d"]  # a and b were not computed again
    assert st.list_tasks("resume") == ["a", "b", "c", "d"]
    assert {n: st.read_metadata("resume", n)["checksum"] for n in ("a", "b")} == kept


# -- Ray workers write straight to S3 ---------------------------------------------------------------------
@workflow
def worker_pid(tag):
    return os.getpid()


@workflow
def ones(n, pid):
    import dask.array as da

    return da.ones((n,), chunks=n // 4) * 2


@workflow
def total(arr, pid):
    return float(arr.sum().compute()), os.getpid()


@pytest.mark.slow
def test_ray_workers_write_results_straight_to_s3(s3server, bucket, monkeypatch):
    try:
        import raysupport
        from functionfuse.backends.builtin.rayback import RayWorkflow
    except ImportError as exc:  # pragma: no cover - without the ray extra
        pytest.skip(f"RayWorkflow not available: {exc}")
    from functionfuse.serializers.daskarray import DaskArraySerializer

    raysupport.start_local_ray()
    st = make_storage(s3server, bucket)
    st.register_persistent_serializers(DaskArraySerializer)
    driver_saves: list = []

    def no_save_here(self, workflow_name, task_name, obj, metadata=None):
        driver_saves.append(task_name)
        raise AssertionError("the driver must not save node results")

    monkeypatch.setattr(S3Storage, "save", no_save_here)  # only in this (the driver's) process
    p = worker_pid("x").set_name("pid")
    arr = ones(1000, p).set_name("arr")
    result = total(arr, p).set_name("total")
    wf = RayWorkflow(result, workflow_name="ray_s3")
    wf.set_storage(st)
    value, summed_in = wf.run(return_results=True)
    assert value == 2000.0
    assert driver_saves == []
    fresh = make_storage(s3server, bucket)  # nothing registered: the serializer is found by name
    assert fresh.list_tasks("ray_s3") == ["arr", "pid", "total"]
    assert fresh.read_task("ray_s3", "pid") != os.getpid()
    stored = fresh.read_task("ray_s3", "arr")
    assert stored.chunks == ((250, 250, 250, 250),) and float(stored.sum().compute()) == 2000.0
    assert any(".zarr/" in k for k in s3server.raw_fs().find(f"{st.path}/ray_s3"))
