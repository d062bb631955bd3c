"""Serializers writing several objects of their type into one result, on file and S3
storage: a name written twice in one result is refused, fresh names per object work."""

from __future__ import annotations

import uuid

import pytest

import s3support  # noqa: I001 - sets the AWS environment of the tests first
from functionfuse.errors import SerializationError
from functionfuse.serializers import FILE_PROTOCOL, S3_PROTOCOL, TaskFiles
from functionfuse.storage import storage_factory


class MyText:
    def __init__(self, text):
        self.text = text


class FixedNameSerializer:
    """The example the docs used to show: every object written to ``text.txt``."""

    name = "FixedNameText"
    serializer_class = MyText

    @classmethod
    def pickle(cls, obj, protocols):
        files = protocols.get(S3_PROTOCOL) or protocols[FILE_PROTOCOL]
        with files.open("text.txt", "w") as f:
            f.write(obj.text)
        return "text.txt"

    @classmethod
    def unpickle(cls, pid, protocols):
        files = protocols.get(S3_PROTOCOL) or protocols[FILE_PROTOCOL]
        with files.open(pid, "r") as f:
            return MyText(f.read())


class TextSerializer:
    """The example of docs/s3.md: a fresh name per object."""

    name = "TextSerializer"
    serializer_class = MyText

    @classmethod
    def pickle(cls, obj, protocols):
        files = protocols.get(S3_PROTOCOL) or protocols[FILE_PROTOCOL]
        name = f"text-{uuid.uuid4().hex}.txt"  # one file per object: a result may hold several
        with files.open(name, "w") as f:
            f.write(obj.text)
        return name

    @classmethod
    def unpickle(cls, pid, protocols):
        files = protocols.get(S3_PROTOCOL) or protocols[FILE_PROTOCOL]
        with files.open(pid, "r") as f:
            return MyText(f.read())


@pytest.fixture(scope="module")
def s3server():
    server = s3support.start_server("moto")
    yield server
    server.stop()


@pytest.fixture(params=["file", "S3"])
def storage(request, tmp_path):
    if request.param == "file":
        return storage_factory({"kind": "file", "options": {"path": str(tmp_path / "storage")}})
    server = request.getfixturevalue("s3server")
    bucket = server.make_bucket()
    return storage_factory({"kind": "S3", "options": {"path": f"{bucket}/r", "s3fs": server.s3fs_options()}})


def test_a_name_written_twice_in_one_result_is_refused(storage):
    storage.register_persistent_serializers(FixedNameSerializer)
    with pytest.raises(SerializationError, match=r"'text\.txt' .*already written.*distinct name"):
        storage.save("wf", "two", [MyText("hello!"), MyText("bye!")])
    assert "two" not in storage.stored_tasks("wf")  # nothing half-written is kept


def test_one_object_per_result_with_a_fixed_name_still_works(storage):
    storage.register_persistent_serializers(FixedNameSerializer)
    storage.save("wf", "one", {"a": MyText("hello!")})
    storage.save("wf", "one", {"a": MyText("again")})  # a new version of the result: a new folder
    assert storage.read_task("wf", "one")["a"].text == "again"


def test_the_documented_serializer_stores_two_objects_in_one_result(storage):
    storage.register_persistent_serializers(TextSerializer)
    storage.save("wf", "two", [MyText("hello!"), MyText("bye!")])
    assert [t.text for t in storage.read_task("wf", "two")] == ["hello!", "bye!"]


def test_task_files_refuse_a_second_write_but_allow_it_after_remove(tmp_path):
    files = TaskFiles(str(tmp_path / "t.data"))
    with files.open("x.bin", "wb") as f:
        f.write(b"1")
    with pytest.raises(SerializationError, match=r"'x\.bin'.*counter or a uuid"):
        files.open("x.bin", "w")
    with files.open("x.bin", "ab") as f:  # appending to one's own file is deliberate
        f.write(b"2")
    with files.open("x.bin", "rb") as f:
        assert f.read() == b"12"
    files.remove("x.bin")
    with files.open("x.bin", "wb") as f:
        f.write(b"3")


def test_serializer_registry_loads_on_use_names_the_extra_and_refuses_unknown_names():
    from functionfuse.errors import ConfigurationError, MissingDependencyError, StorageError
    from functionfuse.serializers import _serializers, available_serializers, lookup_serializer, register_serializer
    from functionfuse.serializers.daskarray import DaskArraySerializer

    assert lookup_serializer("DaskArraySerializer") is DaskArraySerializer
    with pytest.raises(TypeError):
        available_serializers["x"] = ("a:b", "all")
    with pytest.raises(ConfigurationError, match="Serializer name 'DaskArraySerializer' is already registered"):
        register_serializer("DaskArraySerializer", "elsewhere:Other")
    register_serializer("NeedsExtra", "functionfuse_no_such_module:Serializer", extra="dask")
    try:
        with pytest.raises(MissingDependencyError, match=r"pip install 'functionfuse\[dask\]'"):
            lookup_serializer("NeedsExtra")
    finally:
        _serializers.unregister("NeedsExtra")
    with pytest.raises(StorageError, match="'NeedsExtra', which is not registered here"):
        lookup_serializer("NeedsExtra")
