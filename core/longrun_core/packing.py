"""What a task returns, packed into google.protobuf.Any; what it raises, as a
google.rpc.Status."""

from __future__ import annotations

import traceback
from typing import Any

from google.protobuf import any_pb2, struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun_core.errors import DOMAIN


def pack_result(value: Any) -> bytes:
    """A message is packed as it is; a dict as Struct; a list, scalar or None as
    Value. Anything else is a TypeError naming the type."""
    if isinstance(value, Message):
        message: Message = value
    elif isinstance(value, dict):
        message = struct_pb2.Struct()
        try:
            message.update(value)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"task result is not JSON-like: {exc}") from exc
    elif value is None or isinstance(value, (list, tuple, str, int, float, bool)):
        message = struct_pb2.Value()
        try:
            message.MergeFrom(_to_value(value))
        except (ValueError, TypeError) as exc:
            raise TypeError(f"task result is not JSON-like: {exc}") from exc
    else:
        raise TypeError(
            f"task returned {type(value).__name__}; return a protobuf message, a dict, "
            "a list, a string, a number, a bool or None"
        )
    any_msg = any_pb2.Any()
    any_msg.Pack(message)
    return any_msg.SerializeToString()


def error_status(
    exc: BaseException, *, code: int = code_pb2.UNKNOWN, attempt: int, max_attempts: int
) -> bytes:
    """A google.rpc.Status for a task's exception: the exception's type and text
    as the message, an ErrorInfo with the attempt count, and DebugInfo with the
    stack."""
    info = error_details_pb2.ErrorInfo(
        reason="TASK_FAILED",
        domain=DOMAIN,
        metadata={
            "exception": type(exc).__name__,
            "attempt": str(attempt),
            "max_attempts": str(max_attempts),
        },
    )
    debug = error_details_pb2.DebugInfo(
        stack_entries=[e[:2000] for e in traceback.format_exception(exc)[-20:]],
        detail=repr(exc)[:1000],
    )
    status = status_pb2.Status(code=code, message=f"{type(exc).__name__}: {exc}"[:2000])
    for detail in (info, debug):
        status.details.add().Pack(detail)
    data: bytes = status.SerializeToString()
    return data


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return MessageToDict(struct)


def _to_value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]
