"""The trace an operation keeps: its CreateJob traceparent shown as
JobMetadata.trace_id (and so by `longrun get`), its first attempt's span kept
by a retry or a release and linked from later attempts' spans, and the HTTP
gateway's forwarding of a caller's W3C trace context."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.json_format import MessageToDict
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from longrun.v1 import jobs_pb2
from longrun_client.codec import operation_to_dict
from longrun_core import transitions
from longrun_core.model import OperationRecord, State, trace_id_of
from longrun_core.queue import TaskMessage
from longrun_server.rest import MAX_TRACESTATE_CHARS, trace_metadata
from longrun_worker.tracing import AttemptTracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _record(**changes: object) -> OperationRecord:
    rec = OperationRecord(
        id="op1",
        task="noop",
        params=b"",
        state=State.QUEUED,
        create_time=NOW,
        update_time=NOW,
        max_attempts=3,
    )
    return replace(rec, **changes)  # type: ignore[arg-type]


def test_the_metadata_names_the_createjob_trace() -> None:
    traced = _record(trace=PARENT).to_operation()
    metadata = jobs_pb2.JobMetadata()
    assert traced.metadata.Unpack(metadata)
    assert metadata.trace_id == TRACE
    # The JSON names: `traceId` on the HTTP gateway (what the console reads),
    # `trace_id` in `longrun get`.
    assert MessageToDict(metadata)["traceId"] == TRACE
    assert operation_to_dict(traced)["metadata"]["trace_id"] == TRACE
    untraced = jobs_pb2.JobMetadata()
    assert _record().to_operation().metadata.Unpack(untraced)
    assert untraced.trace_id == "" and "traceId" not in MessageToDict(untraced)


@pytest.mark.parametrize(
    ("value", "expected"), [(PARENT, TRACE), (None, ""), ("", ""), ("00-ab", "")]
)
def test_trace_id_of(value: str | None, expected: str) -> None:
    assert trace_id_of(value) == expected


def _claimed(rec: OperationRecord) -> OperationRecord:
    return transitions.claim(
        rec, worker="w", now=NOW, lease=timedelta(seconds=10), retention=timedelta(days=1)
    )


def test_a_retry_keeps_the_first_attempts_span_and_later_ones_do_not_replace_it() -> None:
    first, second = f"00-{TRACE}-{'1' * 16}-01", f"00-{TRACE}-{'2' * 16}-01"
    rec = _claimed(_record(trace=PARENT))
    rec = transitions.retry(
        rec, worker="w", attempt=1, now=NOW, delay=timedelta(0), error=b"", attempt_trace=first
    )
    assert rec.first_attempt_trace == first and rec.trace == PARENT
    rec = transitions.retry(
        _claimed(rec),
        worker="w",
        attempt=2,
        now=NOW,
        delay=timedelta(0),
        error=b"",
        attempt_trace=second,
    )
    assert rec.first_attempt_trace == first


def test_a_release_keeps_the_interrupted_attempts_span() -> None:
    first = f"00-{TRACE}-{'3' * 16}-01"
    released = transitions.release(
        _claimed(_record()),
        worker="w",
        attempt=1,
        now=NOW,
        retention=timedelta(days=1),
        max_releases=3,
        attempt_trace=first,
    )
    assert released.state is State.QUEUED and released.first_attempt_trace == first


def test_attempt_spans_link_later_attempts_to_the_first() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = AttemptTracer(provider)
    rec = _claimed(_record(trace=PARENT))
    assert tracer.attempt_traceparent() == ""
    # The first attempt: a child of the message's traceparent, no link.
    with tracer.attempt(rec, TaskMessage(rec.name, rec.task, 1, PARENT)):
        kept = tracer.attempt_traceparent()
    assert tracer.attempt_traceparent() == ""
    # The second, from a message without context (the sweeper's republish of an
    # older version): the record's trace is its parent; it links to the first.
    second = replace(rec, attempt=2, first_attempt_trace=kept)
    with tracer.attempt(second, TaskMessage(rec.name, rec.task, 2)):
        pass
    one, two = exporter.get_finished_spans()
    for span in (one, two):
        assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
        assert f"{span.context.trace_id:032x}" == TRACE
    assert kept == f"00-{TRACE}-{one.context.span_id:016x}-01"
    assert list(one.links) == []
    (link,) = two.links
    assert (link.context.trace_id, link.context.span_id) == (
        one.context.trace_id,
        one.context.span_id,
    )
    assert two.context.span_id != one.context.span_id


def test_without_a_provider_nothing_is_kept() -> None:
    tracer = AttemptTracer()
    rec = _claimed(_record(trace=PARENT))
    with tracer.attempt(rec, TaskMessage(rec.name, rec.task, 1, PARENT)):
        assert tracer.attempt_traceparent() == ""


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(values))


def test_the_gateway_forwards_a_well_formed_traceparent_and_its_tracestate() -> None:
    assert trace_metadata(_headers(traceparent=PARENT, tracestate="v=1")) == (
        ("traceparent", PARENT),
        ("tracestate", "v=1"),
    )
    upper = PARENT.upper().replace("00-", "00-", 1)
    assert trace_metadata(_headers(traceparent=f" {upper} ")) == (("traceparent", PARENT),)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": "00-zz-1-01"},
        {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"},
        {"tracestate": "v=1"},
    ],
)
def test_the_gateway_drops_a_missing_or_malformed_traceparent(headers: dict[str, str]) -> None:
    assert trace_metadata(_headers(**headers)) == ()


def test_the_gateway_drops_an_overlong_tracestate() -> None:
    long = "v=" + "x" * MAX_TRACESTATE_CHARS
    assert trace_metadata(_headers(traceparent=PARENT, tracestate=long)) == (
        ("traceparent", PARENT),
    )


def test_the_outcome_write_is_an_event_of_the_attempt_span_not_a_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = AttemptTracer(provider)
    rec = _claimed(_record(trace=PARENT))
    with tracer.outcome("done"):  # outside an attempt: nothing to mark
        pass
    with (
        tracer.attempt(rec, TaskMessage(rec.name, rec.task, 1, PARENT)),
        tracer.outcome("deadline"),
    ):
        pass
    (span,) = exporter.get_finished_spans()  # the attempt's only
    assert span.name == f"attempt {rec.task}"
    (event,) = span.events
    assert event.name == "outcome"
    assert event.attributes is not None and event.attributes["longrun.ending"] == "deadline"
    assert 0 <= float(event.attributes["longrun.write_seconds"]) < 5  # type: ignore[arg-type]
    assert span.start_time is not None and span.end_time is not None
    assert span.start_time <= event.timestamp <= span.end_time


def test_an_exception_out_of_an_attempt_is_recorded_on_its_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = AttemptTracer(provider)
    rec = _claimed(_record(trace=PARENT))
    with (
        pytest.raises(RuntimeError),
        tracer.attempt(rec, TaskMessage(rec.name, rec.task, 1, PARENT)),
    ):
        raise RuntimeError("store down")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError: store down"
    assert [e.name for e in span.events] == ["exception"]
    assert tracer.attempt_traceparent() == ""
