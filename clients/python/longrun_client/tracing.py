"""Trace context propagation: when `opentelemetry-api` is installed (the
`tracing` extra), every call carries the caller's current span as W3C
`traceparent` (and `tracestate`, `baggage`) metadata, through the globally
configured propagator. A longrun server with tracing on continues that
trace in its CreateJob span and, through the task message, in the worker's
attempt. Without OpenTelemetry, or outside any span, nothing is added."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

Inject = Callable[[MutableMapping[str, str]], None]


def _injector() -> Inject | None:
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return None

    def injected(carrier: MutableMapping[str, str]) -> None:
        inject(carrier)

    return injected


_inject = _injector()


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (empty without one)."""
    if _inject is None:
        return ()
    carrier: dict[str, str] = {}
    _inject(carrier)
    return tuple((key.lower(), value) for key, value in carrier.items())
