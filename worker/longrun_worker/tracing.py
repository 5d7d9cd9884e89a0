"""The worker's spans (with `--trace-exporter`): one `attempt TASK` span per
attempt, a child of the span that published the task message (the server's
CreateJob, through `TaskMessage.trace`), and an `outcome` span around the
write of what the attempt came to. Without a tracer provider both are
no-ops."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from longrun_core.model import OperationRecord
from longrun_core.observability.trace_context import TRACE_ATTR, valid_traceparent
from longrun_core.queue import TaskMessage

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider


class AttemptTracer:
    def __init__(self, provider: TracerProvider | None = None) -> None:
        self._tracer = provider.get_tracer("longrun.worker") if provider is not None else None

    @contextlib.contextmanager
    def attempt(self, rec: OperationRecord, message: TaskMessage) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = valid_traceparent(message.trace)
        context = TraceContextTextMapPropagator().extract({TRACE_ATTR: parent}) if parent else None
        with self._tracer.start_as_current_span(
            f"attempt {rec.task}",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes={
                "longrun.operation": rec.name,
                "longrun.task": rec.task,
                "longrun.attempt": rec.attempt,
                "longrun.max_attempts": rec.max_attempts,
            },
        ):
            yield

    @contextlib.contextmanager
    def outcome(self, ending: str) -> Iterator[None]:
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span("outcome", attributes={"longrun.ending": ending}):
            yield
