"""JSON in and out of the HTTP gateway (server/longrun_server/rest_json.py):
strict request bodies, and responses that print whatever is stored."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, struct_pb2
from google.rpc import status_pb2

from longrun.v1 import jobs_pb2
from longrun_server.rest_json import dumps, loads_strict, message_json

# ---- in ----


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ('{"a": [-Infinity]}', "-Infinity is not a JSON number"),
        ('{"a": 1e400}', "number 1e400 is outside the range of a double"),
        ('{"a": -1e400}', "number -1e400 is outside the range of a double"),
        ('{"a": ' + "9" * 400 + "}", "is outside the range of a double"),
    ],
)
def test_bodies_with_numbers_no_field_can_hold_are_refused(body: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        loads_strict(body)


def test_plain_json_is_read_as_usual() -> None:
    body = '{"a": [1, 2.5, -1e308, "x", true, null, {"b": 12345678901234567890}]}'
    assert loads_strict(body) == json.loads(body)


# ---- out ----


def _any(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def nan_result() -> any_pb2.Any:
    return _any(struct_pb2.Struct(fields={"x": struct_pb2.Value(number_value=math.nan)}))


def deep_result(levels: int = 40) -> any_pb2.Any:
    """A Struct nested deeper than protobuf parses back, packed from bytes
    (it cannot be built as a message and packed: Pack would not parse it,
    but MessageToDict must)."""
    data = b""
    for _ in range(levels):
        value = b"\x2a" + _len(data) + data  # Value.struct_value = 5 (tag 0x2a)
        entry = b"\x0a\x01a\x12" + _len(value) + value  # key "a", value
        data = b"\x0a" + _len(entry) + entry  # Struct.fields = 1
    return any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Struct", value=data)


def _len(data: bytes) -> bytes:
    n, out = len(data), b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def done_op(name: str, result: any_pb2.Any) -> operations_pb2.Operation:
    op = operations_pb2.Operation(name=name, done=True)
    op.metadata.Pack(jobs_pb2.JobMetadata(task="noop", state=jobs_pb2.JobMetadata.SUCCEEDED))
    op.response.CopyFrom(result)
    return op


@pytest.mark.parametrize(
    ("result", "why"),
    [(nan_result(), "NaN"), (deep_result(), "Error parsing")],
    ids=["nan", "deep"],
)
def test_an_unprintable_result_is_served_base64_and_the_rest_as_usual(
    result: any_pb2.Any, why: str
) -> None:
    shown = message_json(done_op("operations/x", result))
    assert shown["name"] == "operations/x"
    assert shown["done"] is True
    assert shown["metadata"]["task"] == "noop"
    assert shown["metadata"]["state"] == "SUCCEEDED"
    response = shown["response"]
    assert response["@type"] == "type.googleapis.com/google.protobuf.Struct"
    assert base64.b64decode(response["value"]) == result.value
    assert why in response["@unprintable"]
    json.loads(dumps(shown))  # valid JSON, no NaN


def test_a_list_page_with_one_unprintable_operation_prints_the_others_as_usual() -> None:
    good = done_op("operations/good", _any(struct_pb2.Struct(fields={"k": struct_pb2.Value()})))
    page = operations_pb2.ListOperationsResponse(
        operations=[good, done_op("operations/bad", nan_result())], next_page_token="tok"
    )
    shown = message_json(page)
    assert shown["nextPageToken"] == "tok"
    assert shown["operations"][0] == message_json(good)
    assert shown["operations"][0]["response"] == {
        "@type": "type.googleapis.com/google.protobuf.Struct",
        "value": {"k": None},
    }
    assert "@unprintable" in shown["operations"][1]["response"]


def test_enum_encoding_is_kept_around_a_fallback() -> None:
    shown = message_json(done_op("operations/x", nan_result()), use_integers_for_enums=True)
    assert shown["metadata"]["state"] == 3


def test_error_details_of_unknown_types_fall_back_one_by_one() -> None:
    known = _any(status_pb2.Status(code=1))
    unknown = any_pb2.Any(type_url="type.googleapis.com/no.such.Detail", value=b"\x01")
    op = operations_pb2.Operation(name="operations/x", done=True)
    op.error.CopyFrom(status_pb2.Status(code=2, message="m", details=[known, unknown]))
    shown = message_json(op)
    details = shown["error"]["details"]
    assert details[0] == {"@type": "type.googleapis.com/google.rpc.Status", "code": 1}
    assert details[1]["value"] == "AQ=="
    assert shown["error"]["message"] == "m"


def test_printable_messages_are_the_plain_proto3_json() -> None:
    op = done_op("operations/x", _any(struct_pb2.Value(string_value="v")))
    assert message_json(op)["response"] == {
        "@type": "type.googleapis.com/google.protobuf.Value",
        "value": "v",
    }
