"""fingerprint_records: its short paths (one argument and at most one parent, the links
of a chain; plain positional calls) hash exactly what the record holds, as the general
path does, so a node's digest does not depend on which path computed it."""

from __future__ import annotations

from functionfuse import workflow
from functionfuse._records import fingerprint_records, fp_join
from functionfuse.fingerprint import FINGERPRINT_VERSION
from functionfuse.graph import Graph


@workflow
def inc(x):
    return x + 1


@workflow
def add(a, b=0):
    return a + b


@workflow
def pair(v):
    return (v, v)


def _digest_of(record: dict, kind: str = "function") -> str:
    """The node digest recomputed from the record's own parts (the documented layout)."""
    code = "\x1f".join(f"{k}={v}" for k, v in record["code"].items())
    args = [f"{k}={v}" for k, v in record["args"].items()]
    inputs = [f"{k}={v}" for k, v in record["inputs"].items()]
    return fp_join(f"v{FINGERPRINT_VERSION}", kind, code, "|", *args, "|", *inputs)


def test_every_record_of_a_mixed_graph_hashes_its_own_parts():
    x = inc(0)  # one constant argument, no parent
    for _ in range(5):
        x = inc(x)  # one node argument, one parent
    s = add(x, 2)  # two arguments
    t = add(a=s, b=3)  # keywords: the general path
    u = inc(pair(t)[0])  # a node item
    g = Graph([x, s, t, u])
    records = fingerprint_records(g)
    assert len(records) == len(g)
    for i, record in enumerate(records):
        assert record["node"] == _digest_of(record), g.names[i]
    by_name = dict(zip(g.names, records))
    first = by_name[g.names[0]]
    assert first["inputs"] == {}
    assert first["args"]["x"] == records[0]["args"]["x"] and not first["args"]["x"].startswith("@")
    second = records[1]
    assert second["args"] == {"x": "@N" + records[0]["node"]}
    assert second["inputs"] == {g.names[0]: records[0]["node"]}


def test_a_call_by_keyword_has_the_digest_of_the_positional_one():
    p = inc(1)
    positional, keyword = inc(p), inc(x=p)
    g = Graph([positional, keyword])
    records = fingerprint_records(g)
    by_name = dict(zip(g.names, records))
    a, b = by_name[g.names[g.index_of(positional)]], by_name[g.names[g.index_of(keyword)]]
    assert a == b
    assert fingerprint_records(Graph([inc(5)]))[0]["node"] == fingerprint_records(Graph([inc(x=5)]))[0]["node"]


def test_a_changed_constant_or_parent_changes_the_chain_from_there_on():
    def chain(start, n=4):
        x = inc(start)
        for _ in range(n - 1):
            x = inc(x)
        return fingerprint_records(Graph([x]))

    a, b = chain(0), chain(1)
    assert all(ra["node"] != rb["node"] for ra, rb in zip(a, b))
    assert chain(0) == a  # the same graph twice: the same records


def test_records_are_built_on_demand_and_equal_their_list(tmp_path, monkeypatch):
    """A resumed run compares digests only: planning a stored chain builds no record,
    a stale result is still planned stale, and a record read twice is the same dict."""
    import pickle

    from functionfuse.backends.builtin.localback import LocalWorkflow
    from functionfuse._records import Records
    from functionfuse.storage import storage_factory

    def chain(start):
        x = inc(start)
        for _ in range(4):
            x = inc(x)
        wf = LocalWorkflow(x, workflow_name="lazy")
        wf.set_storage(storage_factory({"kind": "file", "options": {"path": str(tmp_path)}}))
        return wf

    wf = chain(0)
    assert wf.run() == 5
    records = wf.fingerprints()
    assert isinstance(records, Records) and records == [records[i] for i in range(len(records))]
    assert records[2] is records[2] and records.digest(2) == records[2]["node"]
    assert pickle.loads(pickle.dumps(records)) == list(records)
    ref = wf.stored_metadata(records)[wf.graph.names[3]]["fingerprint"]  # an index entry: the current record
    assert ref.get("node") == records.digest(3) and pickle.loads(pickle.dumps(ref)) == records[3] == ref

    def no_records(self, i):
        raise AssertionError(f"record {i} built while planning a resume")

    with monkeypatch.context() as m:
        m.setattr(Records, "__getitem__", no_records)
        assert [p.action for p in chain(0).plan()] == ["skip"] * 4 + ["load"]
    stale = chain(1).plan()  # another constant: every stored result differs
    assert [p.state for p in stale] == ["stale"] * 5 and [p.action for p in stale] == ["run"] * 5
    assert "input" in stale[1].detail or "argument" in stale[0].detail
