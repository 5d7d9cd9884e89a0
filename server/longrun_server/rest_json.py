"""JSON in and out of the HTTP gateway.

In: request bodies are strict JSON (RFC 8259): `NaN`, `Infinity` and numbers
outside the range of a double (`1e400`) are refused as malformed, since no
proto field can hold them faithfully.

Out: responses are the proto3 JSON mapping. The gateway never fails on
stored data: an `Any` it cannot print as JSON (a type this process does not
know, a Struct holding NaN or Infinity, a message nested deeper than the
protobuf parser's recursion limit) is sent in a fallback form,

    {"@type": "<type url>", "value": "<base64 of the serialized message>",
     "@unprintable": "<why it is not JSON>"}

and everything around it prints as usual. A gRPC client gets the same
message as stored.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

#: What json_format raises on a message it cannot print.
PRINT_ERRORS = (
    TypeError,
    KeyError,
    ValueError,
    RecursionError,
    DecodeError,
    json_format.Error,
)


# ---- in ----


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259); send a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is outside the range of a double")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 309:  # more digits than any double holds
        raise ValueError(f"number {text[:40]}... is outside the range of a double")
    return int(text)


def loads_strict(body: bytes | str) -> Any:
    """`json.loads` that refuses NaN, Infinity and out-of-range numbers
    (ValueError naming the number); RecursionError for absurd nesting."""
    return json.loads(
        body,
        parse_constant=_reject_constant,
        parse_float=_finite_float,
        parse_int=_bounded_int,
    )


# ---- out ----


def message_json(message: Message, *, use_integers_for_enums: bool = False) -> Any:
    """The proto3 JSON form of `message`; where part of it cannot be printed,
    that part alone takes the fallback form (see the module docstring)."""
    try:
        return json_format.MessageToDict(
            message,
            preserving_proto_field_name=False,
            use_integers_for_enums=use_integers_for_enums,
        )
    except PRINT_ERRORS as exc:
        if isinstance(message, any_pb2.Any):
            return any_fallback(message, exc)
        return _field_by_field(message, exc, use_integers_for_enums)


def any_fallback(message: any_pb2.Any, exc: BaseException | str) -> dict[str, Any]:
    """An `Any` as its type URL and base64 bytes, with why JSON could not show it."""
    return {
        "@type": message.type_url,
        "value": base64.b64encode(message.value).decode("ascii"),
        "@unprintable": _reason(exc),
    }


def _field_by_field(message: Message, exc: BaseException, enums_as_ints: bool) -> Any:
    """Print the scalar fields together and each message field on its own,
    so the unprintable part is found and only it falls back."""
    scalars = type(message)()
    scalars.CopyFrom(message)
    nested: list[tuple[FieldDescriptor, Any]] = []
    for fd, value in message.ListFields():
        if fd.message_type is not None and not _scalar_map(fd):
            scalars.ClearField(fd.name)
            nested.append((fd, value))
    if not nested:  # nothing to split: the message itself cannot be printed
        return {
            "@unprintable": _reason(exc),
            "value": base64.b64encode(message.SerializeToString()).decode("ascii"),
        }
    out: dict[str, Any] = message_json(scalars, use_integers_for_enums=enums_as_ints)
    for fd, value in nested:
        if _is_map(fd):
            out[fd.json_name] = {
                str(k): message_json(v, use_integers_for_enums=enums_as_ints)
                for k, v in value.items()
            }
        elif fd.is_repeated:
            out[fd.json_name] = [
                message_json(v, use_integers_for_enums=enums_as_ints) for v in value
            ]
        else:
            out[fd.json_name] = message_json(value, use_integers_for_enums=enums_as_ints)
    return out


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and bool(fd.message_type.GetOptions().map_entry)


def _scalar_map(fd: FieldDescriptor) -> bool:
    entry = fd.message_type
    return entry is not None and _is_map(fd) and entry.fields_by_name["value"].message_type is None


def _reason(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    try:
        text = str(exc)
    except Exception:  # any text will do
        text = ""
    return f"{type(exc).__name__}: {text}"[:500]


def dumps(payload: Mapping[str, Any]) -> str:
    """The response body (pretty, UTF-8, never NaN)."""
    return json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
