"""Request limits (documented in the README) with errors that say what to fix."""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from google.protobuf import struct_pb2

from longrun_core.errors import InvalidArgument

MAX_PARAMS_BYTES = 256 * 1024
#: Levels of nested objects and lists in params and results (the outermost
#: counts as one). Protobuf parsers stop at 100 message levels, which a
#: google.protobuf.Struct reaches at 33 nested objects: deeper values could
#: be stored but not read back by any client.
MAX_NESTING = 32
MAX_LABELS = 64
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
MAX_LABEL_VALUE = 63


def check_params_size(params: bytes) -> None:
    if len(params) > MAX_PARAMS_BYTES:
        raise InvalidArgument(
            f"params are {len(params)} bytes serialized; at most {MAX_PARAMS_BYTES} are allowed "
            "(pass large inputs by reference, e.g. a storage URI)",
            reason="PARAMS_TOO_LARGE",
            metadata={"size": str(len(params)), "limit": str(MAX_PARAMS_BYTES)},
        )


def check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            f"{len(labels)} labels given; at most {MAX_LABELS} are allowed",
            reason="TOO_MANY_LABELS",
        )
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"label key {key[:80]!r} is invalid: use 1-63 characters of lowercase letters, "
                "digits, '_' or '-', starting with a letter",
                reason="LABEL_KEY_INVALID",
                metadata={"key": key[:80]},
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"label {key!r} value is {len(value)} characters; at most {MAX_LABEL_VALUE}",
                reason="LABEL_VALUE_TOO_LONG",
                metadata={"key": key},
            )


def check_request_id(request_id: str) -> str | None:
    """AIP-155: request_id, when given, is a UUID4 in canonical form."""
    if not request_id:
        return None
    try:
        parsed = uuid.UUID(request_id)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != 4 or str(parsed) != request_id.lower():
        raise InvalidArgument(
            f"request_id {request_id[:80]!r} is not a UUID4 such as "
            "'3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b'",
            reason="REQUEST_ID_INVALID",
        )
    return str(parsed)


def check_params_values(params: struct_pb2.Struct) -> None:
    """INVALID_ARGUMENT for params JSON cannot carry: a NaN or infinite
    number, or nesting deeper than MAX_NESTING."""
    problem = struct_problem(params, "params")
    if problem is not None:
        path, what = problem
        raise InvalidArgument(
            f"{path} {what}",
            reason="PARAMS_INVALID",
            metadata={"path": path[:200]},
        )


def struct_problem(struct: struct_pb2.Struct, root: str) -> tuple[str, str] | None:
    """(path, problem) of the first value of `struct` that is not plain JSON
    (a number that is NaN or infinite) or nested too deep; None if all are."""
    stack: list[tuple[str, struct_pb2.Struct | struct_pb2.ListValue, int]] = [(root, struct, 1)]
    while stack:
        path, container, depth = stack.pop()
        if depth > MAX_NESTING:
            return path, f"is nested {depth} levels deep; at most {MAX_NESTING} are allowed"
        items = (
            ((f"{path}.{key}", value) for key, value in container.fields.items())
            if isinstance(container, struct_pb2.Struct)
            else ((f"{path}[{i}]", value) for i, value in enumerate(container.values))
        )
        for where, value in items:
            kind = value.WhichOneof("kind")
            if kind == "number_value" and not math.isfinite(value.number_value):
                return where, f"is {value.number_value}, which is not a JSON number"
            if kind == "struct_value":
                stack.append((where, value.struct_value, depth + 1))
            elif kind == "list_value":
                stack.append((where, value.list_value, depth + 1))
    return None


def json_problem(value: Any, root: str) -> tuple[str, str] | None:
    """(path, problem) of the first part of a Python value that JSON (and so
    google.protobuf.Struct / Value) cannot hold faithfully: a NaN, infinite
    or out-of-range number, a key that is not a string, a type that is not
    JSON, or nesting deeper than MAX_NESTING. None if it is plain JSON."""
    stack: list[tuple[str, Any, int]] = [(root, value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, dict):
            if depth + 1 > MAX_NESTING:
                return path, f"is nested {depth + 1} levels deep; at most {MAX_NESTING} are allowed"
            for key, child in item.items():
                if not isinstance(key, str):
                    return path, f"has a key of type {type(key).__name__}; JSON keys are strings"
                stack.append((f"{path}.{key}", child, depth + 1))
        elif isinstance(item, (list, tuple)):
            if depth + 1 > MAX_NESTING:
                return path, f"is nested {depth + 1} levels deep; at most {MAX_NESTING} are allowed"
            stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, f"is {item}, which is not a JSON number"
        elif isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > _LARGEST_DOUBLE:
                return path, "is an integer outside the range of a double"
        elif item is not None and not isinstance(item, (str, bool)):
            return path, f"is a {type(item).__name__}, which is not a JSON value"
    return None


_LARGEST_DOUBLE = int(1.7976931348623157e308)
