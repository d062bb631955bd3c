"""How long S3 storage takes to fail, and what it says: a run against a down server fails
within one retry budget (the run report does not wait out a second one), and requests
that fail the same way every time (refused by the HTTP layer, unusable options, missing
credentials, 4xx) fail at once with the cause and the fix. The server is a real one on
127.0.0.1 (tests/s3support.py), or a closed port there."""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

import pytest
from botocore import exceptions as bx
from botocore.retries import standard

import s3support  # noqa: I001 - sets the AWS environment of the tests first
from functionfuse import workflow
from functionfuse.backends.builtin.localback import LocalWorkflow
from functionfuse.errors import StorageError
from functionfuse.storage import _s3io, storage_factory

#: docs/s3.md: 5 attempts, "at most 15 s" of pauses before a down server is reported
DOCUMENTED_PAUSES_MAX = 15.0
#: time on top of the retry pauses for the requests themselves, imports and the workflow
MARGIN = 3.0


@pytest.fixture
def moto():
    server = s3support.MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def pauses(monkeypatch):
    """The attempt numbers after which botocore paused to retry, each pause made 10 ms."""
    seen: list[int] = []

    def delay_amount(self, context):
        seen.append(context.attempt_number)
        return 0.01

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", delay_amount)
    return seen


def s3_storage(endpoint, bucket="bucket", **s3fs):
    options = {"endpoint_url": endpoint, "key": s3support.KEY, "secret": s3support.SECRET, **s3fs}
    return storage_factory({"kind": "S3", "options": {"path": f"{bucket}/results", "s3fs": options}})


HOOKS: dict = {}


@workflow
def step(x, name):
    hook = HOOKS.pop(name, None)
    if hook is not None:
        hook()
    return x + 1


def two_steps(workflow_name):
    first = step(0, "first").set_name("first")
    return LocalWorkflow(step(first, "second").set_name("second"), workflow_name=workflow_name)


# -- one retry budget per failed run -----------------------------------------------------------
def test_the_documented_budget_is_five_attempts_and_at_most_15_s_of_pauses():
    assert _s3io.DEFAULT_RETRIES == {"mode": "standard", "total_max_attempts": 5}
    assert _s3io.RETRY_PAUSES_MAX == 1 + 2 + 4 + 8 == DOCUMENTED_PAUSES_MAX


def test_a_run_against_a_closed_port_fails_within_one_retry_budget(caplog):
    endpoint = f"http://127.0.0.1:{s3support.free_port()}"  # nothing listens there
    wf = two_steps("dead")
    wf.set_storage(s3_storage(endpoint))
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        wf.run()
    took = time.monotonic() - started
    assert took < DOCUMENTED_PAUSES_MAX + MARGIN, f"the failed run took {took:.1f} s"
    msg = str(info.value)
    assert endpoint in msg and "Is the server running" in msg and "run again" in msg
    [report] = [r.getMessage() for r in caplog.records if "run report" in r.getMessage()]
    assert endpoint in report and "in its one attempt" in report


def test_a_server_stopped_mid_run_costs_the_retries_of_one_request(moto, pauses):
    bucket = moto.make_bucket()
    wf = two_steps("stopped")
    wf.set_storage(s3_storage(moto.endpoint, bucket))
    HOOKS["second"] = moto.stop  # the node's save then finds the server gone
    with pytest.raises(StorageError, match="'second'") as info:
        wf.run()
    assert moto.endpoint in str(info.value)
    # the save of node 'second' retried after attempts 1-4 of 5; its run report made one
    # attempt (not another 4 retries)
    assert pauses == [1, 2, 3, 4]


def test_run_reports_are_stored_with_their_short_budget_while_the_server_is_up(moto):
    bucket = moto.make_bucket()
    st = s3_storage(moto.endpoint, bucket)
    moto.faults.add("503", times=1, when=s3support.is_op("PUT", key_part="/.runs/"))
    wf = two_steps("reports")
    wf.set_storage(st)
    assert wf.run() == 2
    assert st.list_run_reports("reports") == []  # its one attempt met the 503: not retried
    assert wf.run() == 2
    [report] = st.list_run_reports("reports")
    assert report["workflow"] == "reports"


def test_a_report_is_stored_even_when_older_ones_cannot_be_removed(moto, caplog):
    st = s3_storage(moto.endpoint, moto.make_bucket())
    moto.faults.add("503", times=1, when=s3support.is_op("GET", "list-type=2"))  # the listing that prunes
    st.save_run_report("wf", {"n": 1})
    assert [r["n"] for r in st.list_run_reports("wf")] == [1]
    assert "old run reports of workflow 'wf' were not removed" in caplog.text


# -- permanent failures: at once, with the cause and the fix ------------------------------------
def test_credentials_in_the_endpoint_url_fail_at_once_with_the_fix(moto, caplog):
    bucket = moto.make_bucket()
    user_info = f"{quote(s3support.KEY, safe='')}:{quote(s3support.SECRET, safe='')}"
    st = s3_storage(f"http://{user_info}@127.0.0.1:{moto.port}", bucket)
    wf = two_steps("userinfo")
    wf.set_storage(st)
    before = moto.faults.requests
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        wf.run()
    took = time.monotonic() - started
    assert took < 2, f"took {took:.1f} s"
    msg = str(info.value)
    assert "Cannot combine AUTHORIZATION header" in msg and "not retried" in msg
    assert f"Remove the user-info from endpoint_url ('{moto.endpoint}')" in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "Is the server running" not in msg
    assert moto.faults.requests == before  # refused before anything was sent
    texts = [msg, repr(st)] + [r.getMessage() for r in caplog.records]
    for secret in (s3support.KEY, s3support.SECRET, user_info, quote(s3support.SECRET, safe="")):
        assert not any(secret in t for t in texts)


def test_a_refused_request_through_s3fs_is_not_retried_either(moto):
    bucket = moto.make_bucket()
    st = s3_storage(f"http://someone:hunter22@127.0.0.1:{moto.port}", bucket)
    with pytest.raises(StorageError, match="user-info"):
        st.check()
    files = st._files("wf", "t", "0123456789abcdef", read_only=False)  # what a serializer gets
    started = time.monotonic()
    with pytest.raises(_s3io.NotRetried, match="Remove the user-info") as info:
        with files.open("blob.bin", "wb") as f:
            f.write(b"x")
    assert time.monotonic() - started < 1  # s3fs's own loop would pause 1 s over 5 tries
    assert "someone" not in str(info.value) and "hunter22" not in str(info.value)


def test_an_endpoint_url_without_scheme_is_refused_with_the_fix():
    port = s3support.free_port()
    st = s3_storage(f"127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"full URL such as 'http://127.0.0.1:9000'") as info:
        st.list_tasks("wf")
    assert time.monotonic() - started < 2
    assert f"127.0.0.1:{port}" in str(info.value) and "'bucket'" in str(info.value)


def test_missing_credentials_fail_at_once_with_the_fix(moto, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    bucket = moto.make_bucket()
    st = storage_factory({"kind": "S3", "options": {"path": bucket, "s3fs": {"endpoint_url": moto.endpoint}}})
    started = time.monotonic()
    with pytest.raises(StorageError, match="No usable S3 credentials.*AWS_ACCESS_KEY_ID"):
        st.list_tasks("wf")
    assert time.monotonic() - started < 2


def _client_error(status, code):
    return bx.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    "exc, transient",
    [
        (bx.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (bx.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (bx.HTTPClientError(error=ConnectionResetError("reset")), True),
        (_client_error(503, "SlowDown"), True),
        (_client_error(500, "InternalError"), True),
        (_client_error(400, "RequestTimeout"), True),
        (bx.HTTPClientError(error=ValueError("Cannot combine AUTHORIZATION header")), False),
        (bx.HTTPClientError(error=TypeError("bad header value")), False),
        (bx.ParamValidationError(report="Invalid bucket name"), False),
        (bx.NoCredentialsError(), False),
        (_client_error(400, "InvalidArgument"), False),
        (_client_error(409, "OperationAborted"), False),
    ],
    ids=[
        "refused", "read-timeout", "reset", "slowdown", "500", "request-timeout",
        "http-layer-valueerror", "http-layer-typeerror", "param-validation", "no-credentials", "400", "409",
    ],
)
def test_transient_and_permanent_failures(exc, transient):
    assert _s3io.is_transient(exc) is transient


def test_user_info_never_reaches_a_message():
    io = _s3io.S3IO("bucket", {"endpoint_url": "http://someone:s3cr%2Ft@127.0.0.1:9/", "key": "k", "secret": "s"})
    texts = [
        str(io.error(exc, "GET", "k"))
        for exc in (
            bx.EndpointConnectionError(endpoint_url="http://someone:s3cr%2Ft@127.0.0.1:9/bucket/k"),
            ValueError("Invalid endpoint: someone:s3cr/t@127.0.0.1:9"),
            bx.HTTPClientError(error=ValueError("refused for someone with s3cr/t")),
        )
    ]
    for text in texts:
        assert "someone" not in text and "s3cr" not in text and "127.0.0.1:9" in text
    assert "Remove the user-info" in texts[2]

