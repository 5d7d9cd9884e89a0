"""Finding 6 (oversized data) against real processes, on both backends: a
list of big operations comes in pages any default client can receive (gRPC
and HTTP); a result over the limit fails its operation with
RESULT_TOO_LARGE instead of breaking GetOperation; an operation stored too
big to send is refused by Get and shown as a stand-in in lists; the
server's memory stays bounded while it lists big operations."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from longrun_core.model import State, pack
from longrun_core.settings import PAGE_HEADROOM_BYTES
from tests.acceptance.calls import MIB, DataService, data_service, error_info, rpc_error_info
from tests.acceptance.harness import wait_for
from tests.contract.records import make_record

PARAMS_BYTES = 255 * 1024


@pytest.fixture
def data(backend: str, tmp_path: Path) -> Iterator[DataService]:
    with data_service(backend, tmp_path) as svc:
        yield svc


def big_params() -> dict[str, str]:
    return {"blob": secrets.token_hex(PARAMS_BYTES // 2)}


def test_a_list_of_big_operations_comes_in_pages_every_client_can_receive(
    data: DataService,
) -> None:
    """20 noop jobs of 255 KiB params (and results): the default page of 50
    would be 10 MB; it comes as several pages under 4 MiB instead."""
    names = [data.create("noop", big_params()) for _ in range(20)]
    for name in names:
        assert data.wait(name).WhichOneof("result") == "response"

    pages = data.list_pages()  # a channel with the default 4 MiB receive limit
    listed = [op.name for page in pages for op in page.operations]
    assert sorted(listed) == sorted(names)  # each exactly once
    assert len(pages) >= 2
    for page in pages:
        assert 1 <= len(page.operations) < 20
        assert page.ByteSize() <= 4 * MIB - PAGE_HEADROOM_BYTES

    # The largest page size changes nothing about the bytes.
    assert sum(len(p.operations) for p in data.list_pages(page_size=1000)) == 20

    # grpcurl (another client with a 4 MiB default) and the HTTP gateway too.
    first = data.service.grpcurl(
        "google.longrunning.Operations/ListOperations", data={"name": "operations"}
    )
    assert first.code == 0, first.stderr
    assert 1 <= len(first.json()["operations"]) < 20
    http_pages = data.http_list()
    assert len(http_pages) >= 2
    assert sorted(op["name"] for p in http_pages for op in p["operations"]) == sorted(names)


def test_a_result_over_the_limit_fails_its_operation_and_get_still_works(
    data: DataService,
) -> None:
    """A 5 MB result (over the 1 MiB default and over any message a client
    takes) ends FAILED with RESULT_TOO_LARGE naming the size and the limit.
    A 900 KB result next to 255 KiB params fits SQLite, but not one 1 MiB
    Firestore document: there the limit is what the document leaves."""
    huge = data.create("big_result", {"size": 5_000_000})
    near = data.create("big_result", {"size": 900_000, "pad": "p" * PARAMS_BYTES})

    op = data.wait(huge)
    assert op.error.code == code_pb2.RESOURCE_EXHAUSTED
    info = error_info(op.error)
    assert info.reason == "RESULT_TOO_LARGE"
    assert int(info.metadata["size"]) > 5_000_000
    limit = int(info.metadata["limit"])
    if data.backend == "embedded":
        assert limit == MIB
    else:
        assert 700_000 < limit < MIB
    assert f"more than the {limit}" in op.error.message
    with data.stubs() as (_, ops):  # Get works with a default client
        got = ops.GetOperation(operations_pb2.GetOperationRequest(name=huge), timeout=10)
    assert got == op
    status, _, body = data.http_call(f"/v1/{huge}")
    assert status == 200 and body["error"]["details"][0]["reason"] == "RESULT_TOO_LARGE"

    near_op = data.wait(near)
    if data.backend == "embedded":
        assert near_op.WhichOneof("result") == "response"
        assert len(near_op.response.value) > 900_000
    else:
        near_info = error_info(near_op.error)
        assert near_info.reason == "RESULT_TOO_LARGE"
        assert int(near_info.metadata["limit"]) < 900_000


def test_the_result_limit_is_configurable(backend: str, tmp_path: Path) -> None:
    with data_service(backend, tmp_path, worker_env={"LONGRUN_MAX_RESULT_BYTES": "300000"}) as data:
        over = data.create("big_result", {"size": 400_000})
        under = data.create("big_result", {"size": 200_000})
        info = error_info(data.wait(over).error)
        assert (info.reason, info.metadata["limit"]) == ("RESULT_TOO_LARGE", "300000")
        assert data.wait(under).WhichOneof("result") == "response"


def test_an_operation_stored_too_big_to_send_is_refused_by_get_and_listed_as_a_stand_in(
    backend: str, tmp_path: Path
) -> None:
    """Stored before the result limit (here: written straight into the store),
    600 KB of result on a server that sends at most 512 KiB."""
    limit = 512 * 1024
    with data_service(
        backend, tmp_path, server_args=("--max-send-message-bytes", str(limit)), workers=0
    ) as data:
        big = replace(
            make_record(),
            id=secrets.token_hex(8),
            state=State.SUCCEEDED,
            attempt=1,
            version=3,
            response=pack(struct_pb2.Value(string_value="x" * 600_000)),
        )
        small = replace(big, id=secrets.token_hex(8), response=pack(struct_pb2.Value()))
        data.store_directly(big)
        data.store_directly(small)

        with data.stubs() as (_, ops), pytest.raises(grpc.RpcError) as info:
            ops.GetOperation(operations_pb2.GetOperationRequest(name=big.name), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        detail = rpc_error_info(info.value)
        assert (detail.reason, detail.metadata["limit"]) == ("OPERATION_TOO_LARGE", str(limit))

        listed = {op.name: op for page in data.list_pages() for op in page.operations}
        assert set(listed) == {big.name, small.name}
        assert error_info(listed[big.name].error).reason == "OPERATION_TOO_LARGE"
        assert listed[small.name].WhichOneof("result") == "response"
        http_ops = [op for page in data.http_list() for op in page["operations"]]
        assert {op["name"] for op in http_ops} == {big.name, small.name}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("backend", ["embedded"])
def test_listing_big_operations_leaves_the_server_memory_bounded(
    backend: str, tmp_path: Path
) -> None:
    """400 operations of 255 KiB params and results went through the server
    (created, waited for, listed three times, got one by one): with caches
    of 8 MiB its RSS grows by far less than the 200 MB they hold. (Caches
    bounded by entries only kept all of them: 1.5 GB after 2,000.)"""
    with data_service(
        backend, tmp_path, server_args=("--cache-max-bytes", str(8 * MIB)), workers=2
    ) as data:
        assert data.service.server is not None
        pid = data.service.server.pid
        wait_for(lambda: _rss_mb(pid) > 0, 5, "the server's RSS")
        fresh = _rss_mb(pid)
        names = [data.create("noop", big_params()) for _ in range(400)]
        for name in names:
            data.wait(name)
        for page_size in (0, 1000, 0):
            assert sum(len(p.operations) for p in data.list_pages(page_size)) == 400
        with data.stubs() as (_, ops):
            for name in names:
                ops.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=10)
        time.sleep(0.5)  # let the last responses leave
        grown = _rss_mb(pid) - fresh
        print(f"server RSS {fresh:.0f} MB fresh, grew {grown:.0f} MB")
        assert grown < 100, f"server RSS grew {grown:.0f} MB (from {fresh:.0f} MB)"


def test_the_http_body_limit_is_the_grpc_receive_limit(data: DataService) -> None:
    """A 2 MiB body passes the gateway and is judged by the server (params
    over 256 KiB); one over the server's 4 MiB receive limit is refused by the
    gateway, naming the limit. Neither is a plain-text 413."""
    body = b'{"task": "noop", "params": {"blob": "' + b"x" * (2 * MIB) + b'"}}'
    status, _, reply = data.http_call("/v1/jobs", method="POST", body=body)
    assert status == 400, reply
    assert reply["error"]["details"][0]["reason"] == "PARAMS_TOO_LARGE"

    body = b'{"task": "noop", "params": {"blob": "' + b"x" * (5 * MIB) + b'"}}'
    status, _, reply = data.http_call("/v1/jobs", method="POST", body=body)
    assert status == 400, reply
    info = reply["error"]["details"][0]
    assert (info["reason"], info["metadata"]["limit"]) == ("BODY_TOO_LARGE", str(4 * MIB))


def test_a_body_that_grows_past_the_limit_as_protobuf_is_invalid_not_429(
    data: DataService,
) -> None:
    """600,000 small numbers: 1.7 MB of JSON, about 6 MB as protobuf."""
    body = b'{"task": "noop", "params": {"n": [' + b",".join([b"1"] * 600_000) + b"]}}"
    status, _, reply = data.http_call("/v1/jobs", method="POST", body=body)
    assert status == 400, reply
    info = reply["error"]["details"][0]
    assert (info["reason"], info["metadata"]["limit"]) == ("REQUEST_TOO_LARGE", str(4 * MIB))
