"""Packing task results into Any, and task exceptions into google.rpc.Status."""

from __future__ import annotations

import asyncio
import datetime
import re
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2
from longrun_core import packing
from longrun_core.errors import DOMAIN
from longrun_core.packing import (
    bounded_error,
    error_status,
    pack_result,
    relative_paths,
    result_outcome,
    struct_to_dict,
)


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

    status = status_pb2.Status.FromString(error_status(exc, attempt=2, max_attempts=5, debug=True))

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
        error_status(
            LookupError("no task"),
            code=code_pb2.UNIMPLEMENTED,
            attempt=1,
            max_attempts=1,
            debug=True,
        )
    )
    assert status.code == code_pb2.UNIMPLEMENTED
    info, _ = _details(status)
    assert info.metadata["exception"] == "LookupError"


def test_error_status_truncates_the_message_and_the_detail() -> None:
    exc = _raise_here("x" * 100_000)

    status = status_pb2.Status.FromString(error_status(exc, attempt=1, max_attempts=1, debug=True))

    assert status.message == ("ValueError: " + "x" * 100_000)[:2000]
    _, debug = _details(status)
    assert debug.detail == repr(exc)[:1000]
    assert 0 < len(debug.stack_entries) <= 20


def test_error_status_stays_small_whatever_the_exception_says() -> None:
    exc = _raise_here("x" * 2_000_000)
    assert len(error_status(exc, attempt=1, max_attempts=1, debug=True)) < 64 * 1024


def test_error_status_has_no_debug_info_by_default() -> None:
    exc = _raise_here("disk full")
    data = error_status(exc, attempt=1, max_attempts=1)
    status = status_pb2.Status.FromString(data)
    assert status.message == "ValueError: disk full"
    assert [d.type_url for d in status.details] == ["type.googleapis.com/google.rpc.ErrorInfo"]
    assert b"_raise_here" not in data
    assert __file__.encode() not in data


def _raise_with_paths() -> BaseException:
    try:
        open(Path(__file__).parent / "no-such-dir" / "input.csv")  # noqa: SIM115
    except OSError as exc:
        return exc
    raise AssertionError("unreachable")


def test_debug_info_holds_no_absolute_path() -> None:
    exc = _raise_with_paths()
    status = status_pb2.Status.FromString(error_status(exc, attempt=1, max_attempts=1, debug=True))
    _, debug = _details(status)
    text = "".join(debug.stack_entries) + debug.detail
    assert str(Path(__file__).parent) not in text
    assert re.search(r"(^|[\s'\"(])/[\w.-]+/", text) is None, text
    # This file is in package `tests.unit`: its frames name it package-relative.
    assert 'File "tests/unit/test_packing.py"' in text
    assert "_raise_with_paths" in text
    assert "input.csv" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f'File "{packing.__file__}", line 3', 'File "longrun_core/packing.py", line 3'),
        (f"at {asyncio.__file__}", "at asyncio/__init__.py"),
        ("cannot open '/srv/data/in.csv'", "cannot open 'in.csv'"),
        (
            "see https://example.test/a/b, a/b/c and 1/2",
            "see https://example.test/a/b, a/b/c and 1/2",
        ),
    ],
    ids=["package-file", "stdlib", "other-path", "not-paths"],
)
def test_relative_paths(text: str, expected: str) -> None:
    assert relative_paths(text) == expected


def test_struct_to_dict_round_trips_a_struct() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": 1, "b": [True, None], "c": {"d": "e"}})
    assert struct_to_dict(struct) == {"a": 1, "b": [True, None], "c": {"d": "e"}}


# ---- results that cannot be stored ----


def _status_info(data: bytes | None) -> tuple[status_pb2.Status, error_details_pb2.ErrorInfo]:
    assert data is not None
    status = status_pb2.Status.FromString(data)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == DOMAIN
    return status, info


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": float("nan")}, "result.a is nan"),
        ([1.0, float("-inf")], "result[1] is -inf"),
        ({"a": {"b": 10**400}}, "result.a.b is an integer outside the range"),
    ],
)
def test_a_result_with_a_number_json_cannot_hold_is_refused(value: Any, where: str) -> None:
    with pytest.raises(TypeError, match=re.escape("not JSON-like: " + where)):
        pack_result(value)


def test_a_result_nested_deeper_than_clients_can_parse_is_refused() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(TypeError, match="nested 33 levels deep"):
        pack_result(deep)


def test_a_message_result_holding_a_nan_struct_is_refused() -> None:
    message = struct_pb2.Struct(fields={"x": struct_pb2.Value(number_value=float("nan"))})
    with pytest.raises(TypeError, match=r"google\.protobuf\.Struct cannot be stored: .*NaN"):
        pack_result(message)


def test_a_message_result_too_deep_to_parse_back_is_refused() -> None:
    inner = struct_pb2.Value(number_value=1)
    for _ in range(40):
        holder = struct_pb2.Value()
        holder.struct_value.fields["a"].CopyFrom(inner)
        inner = holder
    with pytest.raises(TypeError, match=r"google\.protobuf\.Value cannot be stored"):
        pack_result(inner)


def test_a_message_with_an_any_of_a_type_unknown_here_is_still_packed() -> None:
    """Printing it as JSON needs the type; a client that has it reads it."""
    detail = any_pb2.Any(type_url="type.googleapis.com/no.such.Type", value=b"\x08\x01")
    message = status_pb2.Status(code=3, details=[detail])
    assert unpack_any(pack_result(message)).Is(status_pb2.Status.DESCRIPTOR)


@pytest.mark.parametrize(
    ("value", "exception", "text"),
    [
        ({"a": float("nan")}, "TypeError", "result.a is nan"),
        (object(), "TypeError", "task returned object"),
    ],
)
def test_result_outcome_turns_an_unstorable_result_into_an_error(
    value: Any, exception: str, text: str
) -> None:
    response, error = result_outcome(value, limit=1024 * 1024, attempt=2, max_attempts=3)
    assert response is None
    status, info = _status_info(error)
    assert status.code == code_pb2.UNKNOWN
    assert text in status.message
    assert info.reason == "RESULT_INVALID"
    assert info.metadata["exception"] == exception
    assert (info.metadata["attempt"], info.metadata["max_attempts"]) == ("2", "3")


def test_result_outcome_never_raises_whatever_the_value_does() -> None:
    class Evil(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError("no items for you")

    response, error = result_outcome(Evil(a=1), limit=1024 * 1024, attempt=1, max_attempts=1)
    assert response is None
    status, info = _status_info(error)
    assert "task result cannot be packed: RuntimeError: no items for you" in status.message
    assert info.metadata["exception"] == "RuntimeError"


def test_a_result_over_the_limit_is_result_too_large_naming_size_and_limit() -> None:
    value = {"blob": "x" * 200_000}
    size = len(pack_result(value))
    response, error = result_outcome(value, limit=100_000, attempt=1, max_attempts=3)
    assert response is None
    status, info = _status_info(error)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert info.reason == "RESULT_TOO_LARGE"
    assert dict(info.metadata) == {
        "what": "result",
        "size": str(size),
        "limit": "100000",
        "attempt": "1",
        "max_attempts": "3",
    }
    assert f"is {size} bytes serialized, more than the 100000" in status.message


def test_a_result_at_the_limit_is_stored() -> None:
    value = {"blob": "x" * 1000}
    size = len(pack_result(value))
    response, error = result_outcome(value, limit=size, attempt=1, max_attempts=1)
    assert error is None and response == pack_result(value)


def test_an_error_over_the_limit_is_replaced_keeping_its_code_and_message_start() -> None:
    big = status_pb2.Status(code=code_pb2.NOT_FOUND, message="gone: " + "y" * 300_000)
    data = big.SerializeToString()
    replaced = bounded_error(data, limit=100_000, attempt=1, max_attempts=1)
    status, info = _status_info(replaced)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert info.reason == "RESULT_TOO_LARGE"
    assert info.metadata["what"] == "error"
    assert info.metadata["size"] == str(len(data))
    assert "(code 5: gone: yyy" in status.message
    assert len(replaced) < 4096
    assert bounded_error(data, limit=len(data), attempt=1, max_attempts=1) == data


# ---- exceptions that misbehave ----


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class ReprRaises(Exception):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class StrRecurses(Exception):
    def __str__(self) -> str:
        return str(self)


@pytest.mark.parametrize("exc_type", [StrRaises, ReprRaises, StrRecurses])
def test_error_status_survives_an_exception_whose_text_raises(exc_type: type[Exception]) -> None:
    try:
        raise exc_type("boom")
    except exc_type as exc:
        caught = exc
    status = status_pb2.Status.FromString(
        error_status(caught, attempt=1, max_attempts=2, debug=True)
    )
    assert status.message.startswith(f"{exc_type.__name__}: ")
    info, debug = _details(status)
    assert info.metadata["exception"] == exc_type.__name__
    assert debug.stack_entries  # a traceback, or a line saying why there is none
