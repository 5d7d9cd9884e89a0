"""Finding 9 (wrong errors) against real processes, on both backends:
params JSON cannot hold are INVALID_ARGUMENT over gRPC and HTTP; a
WaitOperation timeout outside a Duration is INVALID_ARGUMENT and a long
valid one is clamped; stored results JSON cannot show are still served over
HTTP; results a worker cannot store end FAILED with the cause at once; the
gateway answers malformed HTTP in AIP-193 JSON."""

from __future__ import annotations

import json
import math
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.rpc import code_pb2

from longrun.v1 import jobs_pb2
from longrun_core.model import State
from longrun_server.operations_service import MAX_DURATION_SECONDS
from tests.acceptance.calls import DataService, data_service, error_info, rpc_error_info
from tests.contract.records import make_record

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("google", marks=pytest.mark.google)]
)
def data(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DataService]:
    if request.param == "google":
        from tests.contract.google_backends import require_emulators

        require_emulators()
    with data_service(str(request.param), tmp_path_factory.mktemp("errors")) as svc:
        yield svc


def aip193(status: int, body: Any, http: int, code: str) -> str:
    """Checks the AIP-193 form; returns the ErrorInfo reason."""
    assert status == http, body
    error = body["error"]
    assert (error["code"], error["status"]) == (http, code)
    assert error["message"]
    (info,) = [d for d in error["details"] if d["@type"] == ERROR_INFO]
    assert info["domain"] == "longrun.dev"
    return str(info["reason"])


# ---- params ----


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_grpc_params_with_a_number_json_cannot_hold_are_invalid_argument(
    data: DataService, number: float
) -> None:
    params = struct_pb2.Struct()
    params.update({"ok": 1, "nested": {"x": [number]}})
    with data.stubs() as (jobs, _), pytest.raises(grpc.RpcError) as info:
        jobs.CreateJob(jobs_pb2.CreateJobRequest(task="noop", params=params), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = rpc_error_info(info.value)
    assert (detail.reason, detail.metadata["path"]) == ("PARAMS_INVALID", "params.nested.x[0]")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_http_params_with_a_number_json_cannot_hold_are_400(
    data: DataService, literal: str
) -> None:
    body = b'{"task": "noop", "params": {"x": ' + literal.encode() + b"}}"
    status, headers, reply = data.http_call("/v1/jobs", method="POST", body=body)
    assert headers["Content-Type"].startswith("application/json")
    assert aip193(status, reply, 400, "INVALID_ARGUMENT") == "BODY_MALFORMED"
    assert literal.lstrip("-") in reply["error"]["message"]


# ---- WaitOperation timeouts ----


def test_a_wait_timeout_outside_a_duration_is_invalid_argument(data: DataService) -> None:
    name = data.create("noop", {})
    with data.stubs() as (_, ops), pytest.raises(grpc.RpcError) as info:
        ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(seconds=2**62)
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error_info(info.value).reason == "TIMEOUT_INVALID"


def test_the_longest_valid_wait_timeout_is_clamped_to_the_max_wait(data: DataService) -> None:
    name = data.create("noop", {})
    data.wait(name)
    with data.stubs() as (_, ops):
        op = ops.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(seconds=MAX_DURATION_SECONDS)
            ),
            timeout=10,
        )
    assert op.done
    status, _, reply = data.http_call(
        f"/v1/{name}:wait", method="POST", body=b'{"timeout": "315576000000s"}'
    )
    assert status == 200 and reply["done"] is True


# ---- stored results JSON cannot show ----


def _stored(data: DataService, response: any_pb2.Any) -> str:
    rec = replace(
        make_record(),
        id=secrets.token_hex(8),
        state=State.SUCCEEDED,
        attempt=1,
        version=3,
        response=response.SerializeToString(),
    )
    data.store_directly(rec)
    return rec.name


def _nan_struct() -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(struct_pb2.Struct(fields={"ratio": struct_pb2.Value(number_value=math.nan)}))
    return packed


def _deep_struct(levels: int = 40) -> any_pb2.Any:
    """Nested past the parser's limit: built as bytes (no message can hold it)."""
    data = b""
    for _ in range(levels):
        value = b"\x2a" + _varint(len(data)) + data
        entry = b"\x0a\x01a\x12" + _varint(len(value)) + value
        data = b"\x0a" + _varint(len(entry)) + entry
    return any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Struct", value=data)


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


@pytest.mark.parametrize("kind", ["nan", "deep"])
def test_a_stored_result_json_cannot_show_is_served_over_http(data: DataService, kind: str) -> None:
    response = _nan_struct() if kind == "nan" else _deep_struct()
    name = _stored(data, response)

    status, _, op = data.http_call(f"/v1/{name}")
    assert status == 200, op
    assert op["done"] is True
    assert op["metadata"]["state"] == "SUCCEEDED"
    assert op["response"]["@type"] == "type.googleapis.com/google.protobuf.Struct"
    assert "@unprintable" in op["response"]
    # every list page holding it is served too
    listed = {o["name"]: o for page in data.http_list() for o in page.get("operations", [])}
    assert listed[name]["response"] == op["response"]
    # and gRPC hands out the stored bytes as they are
    with data.stubs() as (_, ops):
        got = ops.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=10)
    assert got.response == response


# ---- results a worker cannot store ----


@pytest.mark.parametrize(
    ("task", "reason", "says"),
    [
        ("nan_result", "RESULT_INVALID", "result.ratio is nan, which is not a JSON number"),
        ("deep_result", "RESULT_INVALID", "nested 33 levels deep"),
        ("unprintable_error", "TASK_FAILED", "Unprintable: <str() of the Unprintable raised"),
    ],
)
def test_an_outcome_that_cannot_be_stored_ends_failed_with_the_cause_at_once(
    data: DataService, task: str, reason: str, says: str
) -> None:
    started = time.monotonic()
    op = data.wait(data.create(task, {}), timeout=30)
    elapsed = time.monotonic() - started
    assert op.error.code == code_pb2.UNKNOWN
    assert says in op.error.message
    info = error_info(op.error)
    assert info.reason == reason
    assert info.metadata["attempt"] == "1"  # not "worker lost" after a lease
    assert elapsed < 10


# ---- malformed HTTP ----


def _raw_http(data: DataService, raw: bytes) -> tuple[int, Any]:
    host, port = data.http.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


def test_malformed_http_gets_aip193_json(data: DataService) -> None:
    status, body = _raw_http(data, b"FOO /v1/operations HTTP/1.1\r\nHost: x\r\n\r\n")
    assert aip193(status, body, 501, "UNIMPLEMENTED") == "METHOD_UNKNOWN"

    long_url = b"GET /v1/operations/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    status, body = _raw_http(data, long_url)
    assert aip193(status, body, 414, "INVALID_ARGUMENT") == "URL_TOO_LONG"

    garbage = b"not gzip at all"
    bad_gzip = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: " + str(len(garbage)).encode() + b"\r\n\r\n" + garbage
    )
    status, body = _raw_http(data, bad_gzip)
    assert aip193(status, body, 400, "INVALID_ARGUMENT") == "BODY_ENCODING_INVALID"
