"""The worker's spans (with `--trace-exporter`): one `attempt TASK` span per
attempt, a child of the span that published the task message (the server's
CreateJob, through `TaskMessage.trace`; the operation's stored CreateJob
traceparent when the message has none), with an `outcome` event for the
write of what the attempt came to (an event rather than a span of its own:
a span costs about 30 us to make and half as much to export, an event a
few). Every attempt is a span of its own; an attempt after the first
carries a span Link to the first attempt's span
(`OperationRecord.first_attempt_trace`, kept by the retry or release the
first attempt wrote). Without a tracer provider all of it is a no-op."""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from opentelemetry.context import attach, detach
from opentelemetry.trace import Span, Status, StatusCode, set_span_in_context

from longrun_core.model import OperationRecord
from longrun_core.observability.trace_context import (
    remote_parent,
    remote_span_context,
    valid_traceparent,
)
from longrun_core.queue import TaskMessage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link

#: The traceparent of the attempt span current in this context ("" outside one).
_ATTEMPT: contextvars.ContextVar[str] = contextvars.ContextVar("longrun_attempt_span", default="")
#: The attempt span itself (None outside one), for its outcome event.
_SPAN: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "longrun_attempt_span_object", default=None
)


def _link_to(traceparent: str) -> list[Link]:
    """A Link to the span `traceparent` names (none if it is not well formed)."""
    from opentelemetry.trace import Link

    context = remote_span_context(traceparent)
    return [] if context is None else [Link(context, _LINK_ATTRIBUTES)]


_LINK_ATTRIBUTES = {"longrun.link": "first_attempt"}


class AttemptTracer:
    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._tracer = provider.get_tracer("longrun.worker") if provider is not None else None
        if self._tracer is not None:
            from opentelemetry.trace import SpanKind

            self._consumer = SpanKind.CONSUMER

    def attempt_traceparent(self) -> str:
        """The current attempt span as a traceparent ("" outside an attempt or
        without tracing): what a retry keeps as the first attempt's span."""
        return _ATTEMPT.get()

    @contextlib.contextmanager
    def attempt(self, rec: OperationRecord, message: TaskMessage) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        parent = valid_traceparent(message.trace) or valid_traceparent(rec.trace)
        context = remote_parent(parent) if parent else None
        first = rec.first_attempt_trace
        links = _link_to(first) if first else []
        span = self._tracer.start_span(
            f"attempt {rec.task}",
            context=context,
            kind=self._consumer,
            links=links,
            attributes={
                "longrun.operation": rec.name,
                "longrun.task": rec.task,
                "longrun.attempt": rec.attempt,
                "longrun.max_attempts": rec.max_attempts,
            },
        )
        # One attach/detach of our own rather than use_span's generator.
        token = attach(set_span_in_context(span))
        span_context = span.get_span_context()
        current = _SPAN.set(span)
        mark = _ATTEMPT.set(
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{int(span_context.trace_flags):02x}"
        )
        try:
            yield
        except Exception as exc:  # as use_span did: recorded, the span in error
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            _ATTEMPT.reset(mark)
            _SPAN.reset(current)
            detach(token)
            span.end()

    @contextlib.contextmanager
    def outcome(self, ending: str) -> Iterator[None]:
        """The write of what the attempt came to: an `outcome` event on the
        attempt's span when it is done (attributes `longrun.ending` and
        `longrun.write_seconds`), not a span of its own."""
        span = _SPAN.get()
        if span is None or not span.is_recording():
            yield
            return
        began = time.monotonic()
        try:
            yield
        finally:
            span.add_event(
                "outcome",
                {
                    "longrun.ending": ending,
                    "longrun.write_seconds": round(time.monotonic() - began, 6),
                },
            )
