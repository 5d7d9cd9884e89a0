"""The `convert` task behind convert.v1.Converter/ConvertDocument.

Load it in the server (which validates requests) and in every worker:

    LONGRUN_TASK_MODULES="longrun_worker.builtin_tasks examples.convert.tasks"

Its params are a ConvertRequest as JSON (proto field names, no request_id or
labels); it returns a `convert.v1.ConvertResponse` message, which the worker
packs into Operation.response as it is.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Mapping
from typing import Any

from google.protobuf.json_format import ParseDict, ParseError

from convert.v1 import convert_pb2
from longrun_core.tasks import PermanentError, TaskContext, TaskSet

tasks = TaskSet()

MAX_CONTENT_BYTES = 64 * 1024
WRAP_WIDTH = 40


def parse_request(params: Mapping[str, Any]) -> convert_pb2.ConvertRequest:
    """The ConvertRequest the params describe; ValueError saying what is wrong."""
    request = convert_pb2.ConvertRequest()
    try:
        ParseDict(dict(params), request)
    except ParseError as exc:
        raise ValueError(f"params are not a convert.v1.ConvertRequest: {exc}") from exc
    if request.request_id or request.labels:
        raise ValueError("request_id and labels belong to the request, not to params")
    if not request.content:
        raise ValueError("content is required")
    if len(request.content.encode()) > MAX_CONTENT_BYTES:
        raise ValueError(f"content is larger than {MAX_CONTENT_BYTES} bytes")
    if request.target_format == convert_pb2.FORMAT_UNSPECIFIED:
        raise ValueError("target_format is required (HTML, UPPERCASE or WRAPPED_TEXT)")
    return request


def _check(params: Mapping[str, Any]) -> None:
    parse_request(params)


def render(content: str, fmt: convert_pb2.Format.ValueType) -> str:
    """The conversion itself: pure, so it is easy to test."""
    if fmt == convert_pb2.HTML:
        paragraphs = [p.strip() for p in content.split("\n\n") if p.strip()]
        return "\n".join(f"<p>{html.escape(' '.join(p.split()))}</p>" for p in paragraphs)
    if fmt == convert_pb2.UPPERCASE:
        return content.upper()
    if fmt == convert_pb2.WRAPPED_TEXT:
        return "\n".join(textwrap.fill(line, WRAP_WIDTH) for line in content.splitlines())
    raise PermanentError(f"unsupported format {convert_pb2.Format.Name(fmt)}")


@tasks.task("convert", validate=_check)
async def convert(ctx: TaskContext) -> convert_pb2.ConvertResponse:
    """Convert `content` to `target_format`, reporting progress."""
    request = parse_request(ctx.params)
    fmt_name = convert_pb2.Format.Name(request.target_format)
    await ctx.progress(0, f"converting {len(request.content)} characters to {fmt_name}")
    output = render(request.content, request.target_format)
    await ctx.progress(100, f"converted to {fmt_name}")
    return convert_pb2.ConvertResponse(
        content=output,
        format=request.target_format,
        input_lines=len(request.content.splitlines()),
        output_bytes=len(output.encode()),
    )
