"""Packing task results into Any, and task exceptions into google.rpc.Status."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2
from longrun_core.errors import DOMAIN
from longrun_core.packing import error_status, pack_result, struct_to_dict


def unpack_any(data: bytes) -> any_pb2.Any:
    return any_pb2.Any.FromString(data)


def test_a_dict_is_packed_as_a_struct() -> None:
    value = {"name": "x", "size": 3, "tags": ["a", "b"], "nested": {"ok": True, "none": None}}

    packed = unpack_any(pack_result(value))

    assert packed.Is(struct_pb2.Struct.DESCRIPTOR)
    struct = struct_pb2.Struct()
    assert packed.Unpack(struct)
    assert struct_to_dict(struct) == value


def test_an_empty_dict_is_an_empty_struct() -> None:
    packed = unpack_any(pack_result({}))
    struct = struct_pb2.Struct()
    assert packed.Unpack(struct)
    assert len(struct.fields) == 0


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (None, "null_value", 0),
        ("text", "string_value", "text"),
        ("", "string_value", ""),
        (3, "number_value", 3.0),
        (2.5, "number_value", 2.5),
        (True, "bool_value", True),
        (False, "bool_value", False),
    ],
)
def test_a_scalar_or_none_is_packed_as_a_value(value: Any, kind: str, expected: Any) -> None:
    packed = unpack_any(pack_result(value))

    assert packed.Is(struct_pb2.Value.DESCRIPTOR)
    result = struct_pb2.Value()
    assert packed.Unpack(result)
    assert result.WhichOneof("kind") == kind
    assert getattr(result, kind) == expected


@pytest.mark.parametrize("value", [[1, "two", None, {"k": [True]}], (1, 2), []])
def test_a_list_or_tuple_is_packed_as_a_list_value(value: Any) -> None:
    packed = unpack_any(pack_result(value))

    assert packed.Is(struct_pb2.Value.DESCRIPTOR)
    result = struct_pb2.Value()
    assert packed.Unpack(result)
    assert result.WhichOneof("kind") == "list_value"
    as_python = struct_to_dict(struct_pb2.Struct(fields={"v": result}))["v"]
    assert as_python == list(value)


@pytest.mark.parametrize(
    "message",
    [
        duration_pb2.Duration(seconds=5, nanos=7),
        jobs_pb2.JobMetadata(task="resize", attempt=2),
        struct_pb2.Struct(fields={"a": struct_pb2.Value(string_value="b")}),
        struct_pb2.Value(number_value=1.5),
    ],
    ids=lambda m: type(m).__name__,
)
def test_a_protobuf_message_is_packed_as_it_is(message: Any) -> None:
    packed = unpack_any(pack_result(message))

    assert packed.Is(message.DESCRIPTOR)
    assert packed.type_url == f"type.googleapis.com/{message.DESCRIPTOR.full_name}"
    out = type(message)()
    assert packed.Unpack(out)
    assert out == message


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "object"),
        ({1, 2}, "set"),
        (b"bytes", "bytes"),
        (datetime.date(2030, 1, 1), "date"),
        (1 + 2j, "complex"),
    ],
)
def test_an_unsupported_type_is_a_type_error_naming_it(value: Any, type_name: str) -> None:
    with pytest.raises(TypeError) as info:
        pack_result(value)
    message = str(info.value)
    assert f"task returned {type_name};" in message
    assert "protobuf message" in message


@pytest.mark.parametrize("value", [{"a": object()}, {"a": b"x"}, {1: "non-string key"}])
def test_a_dict_with_unsupported_contents_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="not JSON-like"):
        pack_result(value)


@pytest.mark.parametrize("value", [[object()], (1, b"x")])
def test_a_list_with_unsupported_contents_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="not JSON-like"):
        pack_result(value)


# ---- error_status ----


def _raise_here(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def _details(
    status: status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.DebugInfo]:
    assert len(status.details) == 2
    info = error_details_pb2.ErrorInfo()
    debug = error_details_pb2.DebugInfo()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(debug)
    return info, debug


def test_error_status_describes_the_exception_and_the_attempt() -> None:
    exc = _raise_here("disk full")

    status = status_pb2.Status.FromString(error_status(exc, attempt=2, max_attempts=5))

    assert status.code == code_pb2.UNKNOWN
    assert status.message == "ValueError: disk full"
    info, debug = _details(status)
    assert info.reason == "TASK_FAILED"
    assert info.domain == DOMAIN
    assert dict(info.metadata) == {"exception": "ValueError", "attempt": "2", "max_attempts": "5"}
    assert debug.detail == "ValueError('disk full')"
    stack = "".join(debug.stack_entries)
    assert "_raise_here" in stack
    assert "disk full" in stack


def test_error_status_takes_the_given_code() -> None:
    status = status_pb2.Status.FromString(
        error_status(LookupError("no task"), code=code_pb2.UNIMPLEMENTED, attempt=1, max_attempts=1)
    )
    assert status.code == code_pb2.UNIMPLEMENTED
    info, _ = _details(status)
    assert info.metadata["exception"] == "LookupError"


def test_error_status_truncates_the_message_and_the_detail() -> None:
    exc = _raise_here("x" * 100_000)

    status = status_pb2.Status.FromString(error_status(exc, attempt=1, max_attempts=1))

    assert status.message == ("ValueError: " + "x" * 100_000)[:2000]
    _, debug = _details(status)
    assert debug.detail == repr(exc)[:1000]
    assert 0 < len(debug.stack_entries) <= 20


def test_error_status_stays_small_whatever_the_exception_says() -> None:
    exc = _raise_here("x" * 2_000_000)
    assert len(error_status(exc, attempt=1, max_attempts=1)) < 64 * 1024


def test_struct_to_dict_round_trips_a_struct() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": 1, "b": [True, None], "c": {"d": "e"}})
    assert struct_to_dict(struct) == {"a": 1, "b": [True, None], "c": {"d": "e"}}
