"""What JSON (and so google.protobuf.Struct) can hold: params with NaN,
Infinity or nesting too deep are INVALID_ARGUMENT; results the same are
found before packing, with the path to the bad value."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import struct_pb2

from longrun_core.errors import InvalidArgument
from longrun_core.validation import (
    MAX_NESTING,
    check_params_values,
    json_problem,
    struct_problem,
)


def nested(depth: int) -> dict[str, Any]:
    """`depth` objects, one inside the other."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def struct_of(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def test_the_nesting_limit_is_what_protobuf_parses_back() -> None:
    """MAX_NESTING objects parse back from the wire; 34 (the next Struct
    level past protobuf's 100-message limit) do not."""
    ok = struct_of(nested(MAX_NESTING)).SerializeToString()
    assert struct_pb2.Struct.FromString(ok)
    too_deep = struct_of(nested(34)).SerializeToString()
    with pytest.raises(Exception, match="Error parsing"):
        struct_pb2.Struct.FromString(too_deep)


@pytest.mark.parametrize(
    ("number", "shown"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf")]
)
def test_params_with_a_number_json_cannot_hold_are_invalid(number: float, shown: str) -> None:
    params = struct_of({"ok": 1, "deep": {"list": [1, {"x": number}]}})
    with pytest.raises(InvalidArgument) as info:
        check_params_values(params)
    assert info.value.reason == "PARAMS_INVALID"
    assert info.value.message == f"params.deep.list[1].x is {shown}, which is not a JSON number"
    assert info.value.metadata == {"path": "params.deep.list[1].x"}


def test_params_nested_deeper_than_the_limit_are_invalid() -> None:
    check_params_values(struct_of(nested(MAX_NESTING)))
    with pytest.raises(InvalidArgument) as info:
        check_params_values(struct_of(nested(MAX_NESTING + 1)))
    assert info.value.reason == "PARAMS_INVALID"
    assert f"at most {MAX_NESTING} are allowed" in info.value.message


def test_nested_lists_count_as_levels_too() -> None:
    value: Any = 1
    for _ in range(MAX_NESTING):
        value = [value]
    assert struct_problem(struct_of({"v": value}), "p") is not None  # the object + 32 lists
    assert struct_problem(struct_of({"v": value[0]}), "p") is None


def test_plain_params_pass() -> None:
    check_params_values(struct_of({"a": [1, 2.5, "x", True, None, {"b": -1e308}]}))


@pytest.mark.parametrize(
    ("value", "path", "problem"),
    [
        ({"a": math.nan}, "result.a", "is nan, which is not a JSON number"),
        ([1, math.inf], "result[1]", "is inf, which is not a JSON number"),
        ({"a": 10**400}, "result.a", "is an integer outside the range of a double"),
        ({"a": {1: "x"}}, "result.a", "has a key of type int; JSON keys are strings"),
        ({"a": b"x"}, "result.a", "is a bytes, which is not a JSON value"),
        ({"a": {1, 2}}, "result.a", "is a set, which is not a JSON value"),
    ],
)
def test_a_result_json_cannot_hold_is_found_with_its_path(
    value: Any, path: str, problem: str
) -> None:
    assert json_problem(value, "result") == (path, problem)


def test_a_deep_or_cyclic_result_is_found_without_recursing() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):  # far past Python's recursion limit
        node["a"] = {}
        node = node["a"]
    found = json_problem(deep, "result")
    assert found is not None and "nested 33 levels deep" in found[1]
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    found = json_problem(cyclic, "result")
    assert found is not None and "nested" in found[1]


@pytest.mark.parametrize(
    "value", [None, "x", 3, 2.5, True, [], {}, {"a": [1, None, {"b": "c"}]}, (1, 2)]
)
def test_plain_json_values_have_no_problem(value: Any) -> None:
    assert json_problem(value, "result") is None
