"""The hot Pub/Sub calls of a job, on raw protobuf messages.

Through google-cloud-pubsub a publish goes into the publisher's batching
(a commit thread started per batch, proto-plus wrappers, api_core retry
wrappers), and each unary pull, ack and ack-deadline change of
pull="unary" builds proto-plus requests and responses: a large part of the
CPU of a no-op job on the Google path (docs/benchmarks.md). Here the same
RPCs (`Publish`, `Pull`, `Acknowledge`, `ModifyAckDeadline`) go out on the
clients' own channels (their credentials, their connections) with the raw
`pubsub_v1` protobuf classes, as blocking calls: the queue runs them on a
thread pool of its own (pubsub_queue), so slow publishes cannot hold the
loop's default executor.

(Not as `multicallable.future()` awaited on the loop: on a synchronous
channel each such call that finds the channel idle starts a completion
thread, and under load rounds of the benchmark stalled that way.)

Semantics are the library's: transient codes are retried with backoff up to
the call's total timeout (pubsub_queue's `_retry`), a pull is not retried
(a DEADLINE_EXCEEDED pull is an empty one), and gRPC errors become
`google.api_core.exceptions` like the library's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.protobuf import empty_pb2
from google.pubsub_v1.types import pubsub as pubsub_types

_PublishRequest: Any = pubsub_types.PublishRequest.pb()
_PublishResponse: Any = pubsub_types.PublishResponse.pb()
_PullRequest: Any = pubsub_types.PullRequest.pb()
_PullResponse: Any = pubsub_types.PullResponse.pb()
_AcknowledgeRequest: Any = pubsub_types.AcknowledgeRequest.pb()
_ModifyAckDeadlineRequest: Any = pubsub_types.ModifyAckDeadlineRequest.pb()

_PUBLISH = "/google.pubsub.v1.Publisher/Publish"
_PULL = "/google.pubsub.v1.Subscriber/Pull"
_ACKNOWLEDGE = "/google.pubsub.v1.Subscriber/Acknowledge"
_MODIFY_ACK_DEADLINE = "/google.pubsub.v1.Subscriber/ModifyAckDeadline"

#: The codes pubsub_queue's `_retry` retries (its _TRANSIENT_ERRORS).
RETRIED = frozenset(
    {
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
    }
)
_FIRST_PAUSE = 0.1
_MAX_PAUSE = 5.0


def api_error(exc: grpc.RpcError) -> Exception:
    """The google.api_core exception the library would raise for `exc`."""
    error: Exception = gexc.from_grpc_error(exc)  # type: ignore[no-untyped-call]
    return error


def retried(
    method: Callable[..., Any], request: Any, metadata: Sequence[tuple[str, str]], total: float
) -> Any:
    """`method(request)` until it succeeds, fails with a code not in
    `RETRIED`, or `total` seconds pass (then its last error, as an api_core
    exception); pauses 0.1 s, doubling up to 5 s."""
    deadline = time.monotonic() + total
    pause = _FIRST_PAUSE
    while True:
        left = max(deadline - time.monotonic(), 0.001)
        try:
            return method(request, timeout=left, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code not in RETRIED or time.monotonic() + pause >= deadline:
                raise api_error(exc) from exc
        time.sleep(pause)
        pause = min(pause * 2.0, _MAX_PAUSE)


class RawPubSub:
    """Publish, Pull, Acknowledge and ModifyAckDeadline (blocking) on the
    channels of a PublisherClient and a SubscriberClient."""

    def __init__(self, publisher: Any, subscriber: Any) -> None:
        pub: grpc.Channel = publisher.transport.grpc_channel
        sub: grpc.Channel = subscriber.transport.grpc_channel
        self._publish = pub.unary_unary(
            _PUBLISH,
            request_serializer=_PublishRequest.SerializeToString,
            response_deserializer=_PublishResponse.FromString,
        )
        self._pull = sub.unary_unary(
            _PULL,
            request_serializer=_PullRequest.SerializeToString,
            response_deserializer=_PullResponse.FromString,
        )
        self._acknowledge = sub.unary_unary(
            _ACKNOWLEDGE,
            request_serializer=_AcknowledgeRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        self._modify = sub.unary_unary(
            _MODIFY_ACK_DEADLINE,
            request_serializer=_ModifyAckDeadlineRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )

    def publish(self, topic: str, data: bytes, attributes: dict[str, str], total: float) -> str:
        """Publish one message; its message id once the service accepted it."""
        request = _PublishRequest(topic=topic)
        message = request.messages.add()
        message.data = data
        message.attributes.update(attributes)
        response = retried(
            self._publish, request, (("x-goog-request-params", f"topic={topic}"),), total
        )
        return str(response.message_ids[0]) if response.message_ids else ""

    def pull(self, subscription: str, max_messages: int, wait: float) -> list[Any]:
        """One Pull (not retried): the received messages (raw
        ReceivedMessage: ack_id, message, delivery_attempt); none when it
        waited `wait` seconds."""
        request = _PullRequest(subscription=subscription, max_messages=max_messages)
        try:
            response = self._pull(request, timeout=wait, metadata=_routing(subscription))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                return []
            raise api_error(exc) from exc
        return list(response.received_messages)

    def acknowledge(self, subscription: str, ack_ids: Iterable[str], total: float) -> None:
        request = _AcknowledgeRequest(subscription=subscription, ack_ids=list(ack_ids))
        retried(self._acknowledge, request, _routing(subscription), total)

    def modify_ack_deadline(
        self, subscription: str, ack_ids: Iterable[str], seconds: int, total: float
    ) -> None:
        request = _ModifyAckDeadlineRequest(
            subscription=subscription, ack_ids=list(ack_ids), ack_deadline_seconds=seconds
        )
        retried(self._modify, request, _routing(subscription), total)


def _routing(resource: str) -> tuple[tuple[str, str]]:
    return (("x-goog-request-params", f"subscription={resource}"),)
