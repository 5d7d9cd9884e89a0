"""`--trace-exporter`: OpenTelemetry tracing, off by default.

Each process builds its own `TracerProvider` (never the global one) and
passes it down: the server to its gRPC interceptor
(rpc_tracing.py), the worker to its attempt spans. The
trace context crosses the queue in the task message
(`TaskMessage.trace`, signed: trace_context.py).

Exporters: `otlp` (OTLP over gRPC; endpoint, headers and TLS from the
standard OTEL_EXPORTER_OTLP_* variables, default localhost:4317), `file`
(one JSON object per finished span appended to `--trace-file`: tests and
debugging), `none` (off)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

TRACE_EXPORTERS = ("none", "otlp", "file")


@dataclass(frozen=True)
class TracingSettings:
    exporter: str = "none"
    file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"

    def check(self) -> None:
        if self.exporter not in TRACE_EXPORTERS:
            raise ValueError(f"trace exporter must be one of {', '.join(TRACE_EXPORTERS)}")
        if self.exporter == "file" and self.file is None:
            raise ValueError("--trace-exporter file needs --trace-file")


def span_record(span: ReadableSpan) -> dict[str, object]:
    """What the file exporter writes for one span."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "links": [
            {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
            for link in span.links
        ],
        "attributes": {k: v for k, v in (span.attributes or {}).items()},
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "status": span.status.status_code.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "service": span.resource.attributes.get("service.name"),
    }


def _file_exporter(path: Path) -> object:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
            with self._lock, path.open("a", encoding="utf-8") as out:
                out.write(lines)
            return SpanExportResult.SUCCESS

    return JsonLinesSpanExporter()


def build_tracer_provider(settings: TracingSettings, service_name: str) -> TracerProvider:
    """A provider exporting as `settings` say (call only when enabled)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    settings.check()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
    )
    if settings.exporter == "file":
        assert settings.file is not None
        exporter = _file_exporter(settings.file)
        assert isinstance(exporter, SpanExporter)
        # Batched off the event loop, written within half a second (and at shutdown).
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    elif settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
