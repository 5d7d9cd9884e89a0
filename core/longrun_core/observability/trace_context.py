"""The W3C trace context a task message carries from the server to the
worker (`TaskMessage.trace`, a `traceparent` value).

It travels inside what the queue signs (longrun_core.signing: the
`traceparent` attribute, or the embedded queue's column of the same
meaning), so a message cannot be re-parented without breaking its
signature; and it only ever chooses which trace a worker's span joins,
never what runs. A value that is not a well-formed `traceparent` is ignored."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanContext

#: The message attribute (and signed field) holding the trace context.
TRACE_ATTR = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def valid_traceparent(value: str | None) -> str:
    """`value` if it is a well-formed traceparent with non-zero ids, else ""."""
    if not value:
        return ""
    match = _TRACEPARENT.fullmatch(value)
    if match is None or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return ""
    return value


def current_traceparent() -> str:
    """The traceparent of the span current in this context ("" when there is
    none, e.g. tracing is off): what a message published now carries."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def remote_span_context(traceparent: str | None, tracestate: str = "") -> SpanContext | None:
    """The remote span a well-formed `traceparent` names (None otherwise):
    what a propagator's extract gives, without its carrier lookups."""
    value = valid_traceparent(traceparent)
    if not value:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    _, trace_id, span_id, flags = value.split("-")
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(flags, 16)),
        trace_state=state,
    )


def remote_parent(traceparent: str | None, tracestate: str = "") -> Context | None:
    """A context whose current span is the remote one `traceparent` names,
    to start a child span in (None when it is not well formed)."""
    span_context = remote_span_context(traceparent, tracestate)
    if span_context is None:
        return None
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    return set_span_in_context(NonRecordingSpan(span_context))
