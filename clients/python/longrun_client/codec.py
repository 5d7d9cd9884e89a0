"""Unpacking Operation.response / metadata, and Operation <-> JSON-like data."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, TypeVar

from google.longrunning import operations_pb2
from google.protobuf import any_pb2, descriptor_pool, empty_pb2, struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

M = TypeVar("M", bound=Message)

_MAX_SAFE_INT = 2**53


def _number(value: float) -> int | float:
    """Struct numbers are doubles; give whole ones back as int (2, not 2.0)."""
    if value.is_integer() and abs(value) < _MAX_SAFE_INT:
        return int(value)
    return value


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: value_to_python(v) for key, v in struct.fields.items()}


def dict_to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    """A Struct holding a copy of `data` (which is not modified)."""
    struct = struct_pb2.Struct()
    struct.update(dict(data))
    return struct


def unpack_as(packed: any_pb2.Any, message_type: type[M]) -> M:
    """`packed` as a `message_type`; TypeError naming both types on a mismatch."""
    if packed.TypeName() != message_type.DESCRIPTOR.full_name:
        raise TypeError(
            f"expected {message_type.DESCRIPTOR.full_name}, got {packed.TypeName() or '(empty)'}"
        )
    message = message_type()
    packed.Unpack(message)
    return message


def message_class(type_name: str) -> type[Message] | None:
    """The class of a message type known to this process (its _pb2 imported)."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        return None
    cls: type[Message] = GetMessageClass(descriptor)
    return cls


def unpack_any(packed: any_pb2.Any) -> Any:
    """Struct -> dict, Value -> its Python value, ListValue -> list, Empty ->
    None, another known message -> that message, an unknown type -> the Any."""
    name = packed.TypeName()
    if name == "google.protobuf.Struct":
        return struct_to_dict(unpack_as(packed, struct_pb2.Struct))
    if name == "google.protobuf.Value":
        return value_to_python(unpack_as(packed, struct_pb2.Value))
    if name == "google.protobuf.ListValue":
        return [value_to_python(v) for v in unpack_as(packed, struct_pb2.ListValue).values]
    if name == "google.protobuf.Empty":
        unpack_as(packed, empty_pb2.Empty)
        return None
    cls = message_class(name)
    if cls is None:
        return packed
    return unpack_as(packed, cls)


def to_jsonable(value: Any) -> Any:
    """A result from `unpack_any` as JSON-ready data (messages as proto-named dicts)."""
    if isinstance(value, any_pb2.Any):
        return any_to_dict(value)
    if isinstance(value, Message):
        return MessageToDict(value, preserving_proto_field_name=True)
    return value


_JSON_VALUE_TYPES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}


def any_to_dict(packed: any_pb2.Any) -> dict[str, Any]:
    """JSON mapping of an Any: `{"@type": url, ...fields}` when its type is known
    here (`{"@type": url, "value": ...}` for Struct/Value/ListValue, whole numbers
    as ints), else `{"@type": url, "value": base64}` instead of json_format's
    TypeError on unknown types."""
    if packed.TypeName() in _JSON_VALUE_TYPES:
        return {"@type": packed.type_url, "value": unpack_any(packed)}
    if message_class(packed.TypeName()) is not None:
        result: dict[str, Any] = MessageToDict(packed, preserving_proto_field_name=True)
        return result
    return {"@type": packed.type_url, "value": base64.b64encode(packed.value).decode()}


def operation_to_dict(operation: operations_pb2.Operation) -> dict[str, Any]:
    """JSON mapping of an Operation (proto field names), tolerant of Any types
    this process does not know."""
    data: dict[str, Any] = {"name": operation.name}
    if operation.HasField("metadata"):
        data["metadata"] = any_to_dict(operation.metadata)
    data["done"] = operation.done
    if operation.HasField("error"):
        error: dict[str, Any] = {"code": operation.error.code, "message": operation.error.message}
        error["details"] = [any_to_dict(d) for d in operation.error.details]
        data["error"] = error
    elif operation.HasField("response"):
        data["response"] = any_to_dict(operation.response)
    return data
