"""The storage protocol part of the storage contract: every kind implements
:class:`~functionfuse.storage.protocol.StorageProtocol`, with the protocol's signatures,
and each capability does what it says (mixed into ``StorageContract``).

Hooks a kind may override: ``secrets`` (the credentials its storage objects hold) and
``rebuild`` (how a credential-free copy is used where it goes).
"""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys

import pytest

from functionfuse.storage import CredentialFreeCopy, Placement, StorageProtocol
from functionfuse.storage.filestorage import FileStorage

#: the workflow every contract test stores under
WF = "contract"
#: AWS settings that carry no credential (kept in the environment of a rebuilt copy)
CLEAN_AWS_ENV = frozenset({"AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"})


class ProtocolContract:
    # -- the protocol and its capabilities -------------------------------------------
    def test_implements_the_storage_protocol_with_its_signatures(self, storage):
        assert isinstance(storage, StorageProtocol)
        members = [n for n, v in vars(StorageProtocol).items() if callable(v) and not n.startswith("_")]
        assert {"save", "read_task", "placement", "local_path", "credential_free_copy"} <= set(members)
        for name in members:
            want = inspect.signature(getattr(StorageProtocol, name))
            have = inspect.signature(getattr(type(storage), name))
            assert [(p.name, p.kind, p.default) for p in have.parameters.values()] == [
                (p.name, p.kind, p.default) for p in want.parameters.values()
            ], f"{type(storage).__name__}.{name}{have} differs from StorageProtocol.{name}{want}"
        assert isinstance(storage.protocol, str) and storage.protocol
        assert isinstance(storage.serializers, tuple)

    def test_placement_gives_an_object_that_works_where_it_places_it(self, storage):
        storage.save(WF, "t", {"v": 3})
        placed = storage.placement()
        if placed is None:  # this object works as it is in any process
            assert pickle.loads(pickle.dumps(storage)).read_task(WF, "t") == {"v": 3}
            return
        assert isinstance(placed, Placement) and isinstance(placed.options, dict)
        assert isinstance(placed.storage, StorageProtocol) and placed.storage.placement() is None
        import ray

        @ray.remote
        def read(st):
            return st.read_task(WF, "t"), st.list_tasks(WF)

        assert ray.get(read.options(**placed.options).remote(placed.storage)) == ({"v": 3}, ["t"])

    def test_local_path_is_a_folder_a_plain_file_storage_reads(self, storage):
        storage.save(WF, "t", [1, 2])
        path = storage.local_path()
        if path is None:
            pytest.skip(f"{type(storage).__name__} keeps its results in no folder of this machine")
        assert os.path.isabs(path) and os.path.isdir(os.path.join(path, WF))
        assert FileStorage(path).read_task(WF, "t") == [1, 2]

    def secrets(self, storage) -> list[str]:
        """The credentials *storage* holds (none by default)."""
        return []

    def rebuild(self, blob: bytes, env: dict[str, str]) -> None:
        """Use a pickled credential-free copy as a step does: in a fresh process whose
        environment has *env* (and no other credentials), read ``t`` and store ``copy``."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k in CLEAN_AWS_ENV}
        code = (
            "import pickle, sys\n"
            "st = pickle.loads(sys.stdin.buffer.read())\n"
            f"assert st.read_task({WF!r}, 't') == {{'v': 1}}\n"
            f"st.save({WF!r}, 'copy', 2)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], input=blob, env={**clean, **env}, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")

    def test_credential_free_copy_holds_no_secret_and_works_from_its_environment(self, storage):
        storage.save(WF, "t", {"v": 1})
        copy = storage.credential_free_copy()
        assert isinstance(copy, CredentialFreeCopy) and isinstance(copy.storage, StorageProtocol)
        assert copy.storage is not storage and all(isinstance(v, str) for v in copy.env.values())
        blob = pickle.dumps(copy.storage)
        for secret in self.secrets(storage):
            assert secret.encode() not in blob and secret not in repr(copy.storage)
            assert secret in copy.env.values()  # carried by the environment instead
        self.rebuild(blob, copy.env)
        assert storage.read_task(WF, "copy") == 2  # the copy wrote to the same store
        assert storage.read_task(WF, "t") == {"v": 1}  # and the original still works

    # -- run reports -----------------------------------------------------------
    def test_run_reports_are_listed_oldest_first_and_are_not_tasks(self, storage):
        assert storage.list_run_reports(WF) == [] and storage.last_run_report(WF) is None
        for i in range(3):
            storage.save_run_report(WF, {"n": i, "ran": "not a count"})
        reports = storage.list_run_reports(WF)
        assert [r["n"] for r in reports] == [0, 1, 2]
        assert reports[0]["ran"] is None  # a field of another type reads as None
        assert storage.last_run_report(WF)["n"] == 2
        assert storage.list_tasks(WF) == [] and storage.stored_tasks(WF) == set()

    def test_run_reports_are_trimmed_to_the_newest(self, storage, monkeypatch):
        monkeypatch.setattr(type(storage), "keep_run_reports", 2)
        for i in range(4):
            storage.save_run_report(WF, {"n": i})
        assert [r["n"] for r in storage.list_run_reports(WF)] == [2, 3]
