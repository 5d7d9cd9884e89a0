"""The trace context of a task message: read from the current span, only
well-formed values used, signed with the message, absent when tracing is off
(so messages keep the attributes and signatures they had before)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from longrun_core.observability.trace_context import current_traceparent, valid_traceparent
from longrun_core.queue import TaskMessage
from longrun_core.signing import SigningKeys, message_fields

GOOD = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


def test_no_span_means_no_trace_context() -> None:
    assert current_traceparent() == ""


def test_the_current_span_is_the_parent() -> None:
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("test")
    with tracer.start_as_current_span("publish") as span:
        value = current_traceparent()
    context = span.get_span_context()
    flags = int(context.trace_flags)
    assert flags & 1  # sampled
    assert value == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    assert valid_traceparent(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        "garbage",
        GOOD.upper(),
        "01" + GOOD[2:],
        "00-" + "0" * 32 + "-" + "cd" * 8 + "-01",
        "00-" + "ab" * 16 + "-" + "0" * 16 + "-01",
        GOOD + "-extra",
        GOOD + "\n",
    ],
)
def test_malformed_values_are_ignored(value: str | None) -> None:
    assert valid_traceparent(value) == ""


def test_the_trace_is_a_signed_attribute_only_when_present() -> None:
    plain = TaskMessage("operations/x", "noop", 1)
    traced = TaskMessage("operations/x", "noop", 1, GOOD)
    assert message_fields(plain)[1] == {"operation": "operations/x", "task": "noop", "attempt": "1"}
    assert message_fields(traced)[1]["traceparent"] == GOOD
    ring, _ = SigningKeys.generate()
    assert ring.sign(*message_fields(plain)) != ring.sign(*message_fields(traced))
