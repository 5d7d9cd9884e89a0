"""What a task returns, packed into google.protobuf.Any; what it raises, as a
google.rpc.Status; and the outcome a worker may store.

Nothing here raises on a task's behalf: a result that cannot be packed, or
is larger than the result limit, becomes an error status saying why, and an
exception whose `__str__` (or `__repr__`, or traceback) fails still gets a
status. A worker can therefore always write an outcome, instead of dying
on it and leaving the operation to be taken over as "worker lost".
"""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from typing import Any

from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from longrun_core.errors import DOMAIN
from longrun_core.validation import json_problem

#: Default largest serialized result (Any) or error (Status) a worker stores.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
#: The smallest result limit a worker accepts (room for any error status this
#: module builds).
MIN_RESULT_BYTES = 64 * 1024
#: The largest result limit a worker accepts.
MAX_RESULT_BYTES = 256 * 1024 * 1024


def pack_result(value: Any) -> bytes:
    """A message is packed as it is; a dict as Struct; a list, scalar or None as
    Value. Anything else, and any value JSON cannot hold (NaN, Infinity,
    nesting deeper than validation.MAX_NESTING, keys that are not strings),
    is a TypeError saying what and where."""
    if isinstance(value, Message):
        message: Message = value
        _check_message(message)
    elif (
        isinstance(value, dict)
        or value is None
        or isinstance(value, (list, tuple, str, int, float, bool))
    ):
        problem = json_problem(value, "result")
        if problem is not None:
            raise TypeError(f"task result is not JSON-like: {problem[0]} {problem[1]}")
        try:
            message = _struct_or_value(value)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise TypeError(f"task result is not JSON-like: {_text(exc)}") from exc
    else:
        raise TypeError(
            f"task returned {type(value).__name__}; return a protobuf message, a dict, "
            "a list, a string, a number, a bool or None"
        )
    any_msg = any_pb2.Any()
    any_msg.Pack(message)
    return any_msg.SerializeToString()


def _struct_or_value(value: Any) -> Message:
    if isinstance(value, dict):
        struct = struct_pb2.Struct()
        struct.update(value)
        return struct
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def _check_message(message: Message) -> None:
    """TypeError for a message that parses back only with a raised
    recursion limit, or holds what JSON cannot show (a NaN in a Struct, an
    out-of-range Timestamp). A type JSON printing does not know (inside an
    Any) is accepted: clients that know it can read it."""
    try:
        data = message.SerializeToString()
        type(message).FromString(data)
        MessageToDict(message)
    except (TypeError, KeyError):
        return
    except (ValueError, DecodeError, RecursionError, json_format.Error) as exc:
        raise TypeError(
            f"task result {message.DESCRIPTOR.full_name} cannot be stored: {_text(exc)}"
        ) from exc


def error_status(
    exc: BaseException,
    *,
    code: int = code_pb2.UNKNOWN,
    attempt: int,
    max_attempts: int,
    debug: bool = False,
) -> bytes:
    """A google.rpc.Status for a task's exception: the exception's type and text
    as the message and an ErrorInfo with the attempt count; with `debug`
    (a worker's --debug-errors) also a DebugInfo with the stack, its paths
    made relative (`relative_paths`). Never raises, whatever the exception's
    `__str__` does."""
    name = type(exc).__name__
    return _status(
        code,
        f"{name}: {_text(exc)}",
        reason="TASK_FAILED",
        metadata={"exception": name, "attempt": str(attempt), "max_attempts": str(max_attempts)},
        debug=_debug_info(exc) if debug else None,
    )


def outcome_status(
    code: int,
    message: str,
    *,
    reason: str,
    metadata: dict[str, str],
    attempt: int,
    max_attempts: int,
) -> bytes:
    """A status for an outcome the worker itself decided (an invalid or
    oversized result): ErrorInfo `reason` with `metadata` and the attempt count."""
    return _status(
        code,
        message,
        reason=reason,
        metadata=metadata | {"attempt": str(attempt), "max_attempts": str(max_attempts)},
    )


def result_outcome(
    value: Any, *, limit: int, attempt: int, max_attempts: int
) -> tuple[bytes | None, bytes | None]:
    """(response, None) for a result that can be stored, else (None, error):
    RESULT_INVALID (code UNKNOWN, like a task's exception) when it cannot be
    packed, RESULT_TOO_LARGE (RESOURCE_EXHAUSTED) when its packed size passes
    `limit`. Never raises."""
    try:
        packed = pack_result(value)
    except Exception as exc:  # TypeError saying why, or whatever a strange value raises
        problem = _text(exc)
        if not isinstance(exc, TypeError):
            problem = f"task result cannot be packed: {type(exc).__name__}: {problem}"
        return None, outcome_status(
            code_pb2.UNKNOWN,
            problem,
            reason="RESULT_INVALID",
            metadata={"exception": type(exc).__name__, "problem": problem[:500]},
            attempt=attempt,
            max_attempts=max_attempts,
        )
    if len(packed) > limit:
        return None, too_large_status(
            "result", len(packed), limit, attempt=attempt, max_attempts=max_attempts
        )
    return packed, None


def bounded_error(error: bytes, *, limit: int, attempt: int, max_attempts: int) -> bytes:
    """`error` (a serialized Status) if it is within `limit`, else a
    RESULT_TOO_LARGE status keeping the start of its message."""
    if len(error) <= limit:
        return error
    original = status_pb2.Status.FromString(error)
    return too_large_status(
        "error",
        len(error),
        limit,
        attempt=attempt,
        max_attempts=max_attempts,
        original=f" (code {original.code}: {original.message[:500]})",
    )


def too_large_status(
    what: str, size: int, limit: int, *, attempt: int, max_attempts: int, original: str = ""
) -> bytes:
    return outcome_status(
        code_pb2.RESOURCE_EXHAUSTED,
        f"the task's {what} is {size} bytes serialized, more than the {limit} stored for "
        "an operation (the worker's --max-result-bytes, or less where the store holds less)"
        f"{original}; return large outputs by reference, e.g. a storage URI",
        reason="RESULT_TOO_LARGE",
        metadata={"what": what, "size": str(size), "limit": str(limit)},
        attempt=attempt,
        max_attempts=max_attempts,
    )


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return MessageToDict(struct)


def _status(
    code: int,
    message: str,
    *,
    reason: str,
    metadata: dict[str, str],
    debug: error_details_pb2.DebugInfo | None = None,
) -> bytes:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata)
    status = status_pb2.Status(code=code, message=message[:2000])
    status.details.add().Pack(info)
    if debug is not None:
        status.details.add().Pack(debug)
    data: bytes = status.SerializeToString()
    return data


def _debug_info(exc: BaseException) -> error_details_pb2.DebugInfo:
    try:
        stack = traceback.format_exception(exc)[-20:]
    except Exception as failure:  # a broken __str__ breaks the last line
        stack = [f"(no traceback: formatting it raised {type(failure).__name__})"]
    try:
        detail = repr(exc)
    except Exception:
        detail = f"<{type(exc).__name__} with a failing __repr__>"
    return error_details_pb2.DebugInfo(
        stack_entries=[relative_paths(entry)[:2000] for entry in stack],
        detail=relative_paths(detail)[:1000],
    )


#: An absolute POSIX path: a '/' not preceded by a name character, ':' or '/'
#: (so neither `a/b` nor `http://host/x` matches), then names joined by '/'.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[\w.@+-]+/)*[\w.@+-]+")


def relative_paths(text: str) -> str:
    """`text` without absolute paths. A Python file inside a package becomes
    its package-relative form (`longrun_worker/builtin_tasks.py`), a path
    under an import root (sys.path) the rest after that root
    (`asyncio/tasks.py`), any other absolute path its last part
    (`/srv/data/in.csv` -> `in.csv`)."""
    return _ABSOLUTE_PATH.sub(lambda m: _relative(m.group(0)), text)


@functools.lru_cache(maxsize=1024)
def _relative(path: str) -> str:
    if path.endswith(".py") and os.path.isfile(path):
        folder, parts = os.path.dirname(path), [os.path.basename(path)]
        while os.path.isfile(os.path.join(folder, "__init__.py")):
            folder, name = os.path.split(folder)
            parts.append(name)
        if len(parts) > 1:
            return "/".join(reversed(parts))
    for root in _import_roots():
        if path.startswith(root) and len(path) > len(root):
            return path[len(root) :]
    return os.path.basename(path) or path


def _import_roots() -> list[str]:
    """sys.path's absolute folders with a trailing '/', longest first (so a
    nested root wins over the folder holding it)."""
    roots = {
        os.path.join(os.path.abspath(p), "")
        for p in sys.path
        if p and os.path.isabs(p) and os.path.abspath(p) != os.sep
    }
    return sorted(roots, key=len, reverse=True)


def _text(exc: BaseException) -> str:
    """str(exc), or a stand-in when its `__str__` raises (or recurses)."""
    try:
        return str(exc)
    except Exception as failure:
        return f"<str() of the {type(exc).__name__} raised {type(failure).__name__}>"
