"""The two hot Firestore calls of a job, on raw protobuf messages.

Every state change of an operation is one read (`GetDocument`) and one
guarded write (`Commit` of one update with an update-time precondition).
Through `google.cloud.firestore` each of them builds proto-plus wrappers,
marshals every field through them, streams the read (`BatchGetDocuments`)
and deep-copies the decoded dict (`DocumentSnapshot.to_dict`): most of the
client-side CPU of a no-op job on the Google path (docs/benchmarks.md). Here
the same RPCs go out on the client's own channel (its credentials, its
connection) with the raw `firestore_v1` protobuf classes, and values are
encoded and decoded by hand for the types an operation document holds.

The semantics are the library's: `update` is `DocumentReference.update`
with a `last_update_time` write option (the top-level keys are the update
mask, a map value replaces the whole map), `get` is `DocumentReference.get`
(`RawSnapshot` has the attributes of a `DocumentSnapshot` the store uses).
gRPC errors become `google.api_core.exceptions` like the library's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1.types import common as common_types
from google.cloud.firestore_v1.types import document as document_types
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.cloud.firestore_v1.types import write as write_types
from google.protobuf import struct_pb2, timestamp_pb2

_Document: Any = document_types.Document.pb()
_Value: Any = document_types.Value.pb()
_Write: Any = write_types.Write.pb()
_GetDocumentRequest: Any = firestore_types.GetDocumentRequest.pb()
_CommitRequest: Any = firestore_types.CommitRequest.pb()
_CommitResponse: Any = firestore_types.CommitResponse.pb()
_Precondition: Any = common_types.Precondition.pb()

_GET = "/google.firestore.v1.Firestore/GetDocument"
_COMMIT = "/google.firestore.v1.Firestore/Commit"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Codes the library's own retry settings retry for these calls (a commit is
#: guarded by a precondition, so a retried commit that had landed fails it,
#: and the store's compare-and-set loop re-reads).
_RETRIED = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)
_FIRST_PAUSE = 0.1
_MAX_PAUSE = 5.0


def encode_value(value: Any, out: Any) -> None:
    """Set `out` (a Value) to `value`: None, bool, int, float, str, bytes,
    datetime (naive: UTC), a mapping with str keys or a list/tuple of these."""
    if value is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        out.boolean_value = value
    elif isinstance(value, int):
        out.integer_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes | bytearray | memoryview):
        out.bytes_value = bytes(value)
    elif isinstance(value, datetime):
        out.timestamp_value.CopyFrom(timestamp_of(value))
    elif isinstance(value, Mapping):
        fields = out.map_value.fields
        if not value:
            out.map_value.SetInParent()
        for key, item in value.items():
            encode_value(item, fields[str(key)])
    elif isinstance(value, list | tuple):
        values = out.array_value.values
        if not value:
            out.array_value.SetInParent()
        for item in value:
            encode_value(item, values.add())
    else:
        raise TypeError(f"cannot store a {type(value).__name__} in Firestore: {value!r}")


def timestamp_of(value: datetime) -> Any:
    if isinstance(value, DatetimeWithNanoseconds):
        return value.timestamp_pb()  # type: ignore[no-untyped-call]
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    seconds, micros = divmod(
        (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds, 1_000_000
    )
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def decode_value(value: Any) -> Any:
    kind = value.WhichOneof("value_type")
    if kind == "string_value":
        return value.string_value
    if kind == "integer_value":
        return value.integer_value
    if kind == "boolean_value":
        return value.boolean_value
    if kind == "null_value" or kind is None:
        return None
    if kind == "timestamp_value":
        return _time_of(value.timestamp_value)
    if kind == "bytes_value":
        return value.bytes_value
    if kind == "map_value":
        return {k: decode_value(v) for k, v in value.map_value.fields.items()}
    if kind == "array_value":
        return [decode_value(v) for v in value.array_value.values]
    if kind == "double_value":
        return value.double_value
    raise ValueError(f"cannot read a Firestore {kind} value")


class RawSnapshot:
    """What the store reads of a `DocumentSnapshot`."""

    __slots__ = ("_data", "exists", "id", "read_time", "reference", "update_time")

    def __init__(self, reference: Any, document: Any | None) -> None:
        self.reference = reference
        self.id: str = reference.id
        self.exists = document is not None
        self._data: dict[str, Any] | None = (
            None if document is None else {k: decode_value(v) for k, v in document.fields.items()}
        )
        self.update_time: DatetimeWithNanoseconds | None = (
            None if document is None else _time_of(document.update_time)
        )
        #: GetDocument does not say (the store's clock-skew estimate uses commit times).
        self.read_time: datetime | None = None

    def get(self, field: str) -> Any:
        if self._data is None:
            raise KeyError(field)
        return self._data[field]

    def to_dict(self) -> dict[str, Any] | None:
        """The document's fields (a fresh dict; its values are not shared)."""
        return None if self._data is None else dict(self._data)


R = TypeVar("R")


def _time_of(ts: Any) -> DatetimeWithNanoseconds:
    value: DatetimeWithNanoseconds = DatetimeWithNanoseconds.from_timestamp_pb(ts)  # type: ignore[no-untyped-call]
    return value


def _api_error(exc: grpc.RpcError) -> Exception:
    """The google.api_core exception the library would raise for `exc`."""
    error: Exception = gexc.from_grpc_error(exc)  # type: ignore[no-untyped-call]
    return error


def retried(call: Callable[[float], R], timeout: float) -> R:
    """`call(seconds left)` until it succeeds, fails with a code not in
    `_RETRIED`, or `timeout` passes (then its last error)."""
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        try:
            return call(max(deadline - time.monotonic(), 0.001))
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code not in _RETRIED or time.monotonic() + pause >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 1.3, _MAX_PAUSE)


class RawFirestore:
    """GetDocument and guarded Commit on `client`'s channel."""

    def __init__(self, client: Any) -> None:
        channel: grpc.Channel = client._firestore_api._transport.grpc_channel
        self._database = client._database_string
        self._metadata = (
            *client._rpc_metadata,
            ("x-goog-request-params", f"database={self._database}"),
        )
        self._get = channel.unary_unary(
            _GET,
            request_serializer=_GetDocumentRequest.SerializeToString,
            response_deserializer=_Document.FromString,
        )
        self._commit = channel.unary_unary(
            _COMMIT,
            request_serializer=_CommitRequest.SerializeToString,
            response_deserializer=_CommitResponse.FromString,
        )

    def get(self, reference: Any, timeout: float) -> RawSnapshot:
        """`reference.get()`: the document or a snapshot that does not exist."""
        request = _GetDocumentRequest(name=reference._document_path)
        try:
            doc = retried(
                lambda left: self._get(request, timeout=left, metadata=self._metadata), timeout
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return RawSnapshot(reference, None)
            raise _api_error(exc) from exc
        return RawSnapshot(reference, doc)

    @staticmethod
    def create_write(reference: Any, fields: Mapping[str, Any]) -> Any:
        """`create`: the document with `fields`, failing if it exists."""
        write = _Write()
        write.update.name = reference._document_path
        for key, value in fields.items():
            encode_value(value, write.update.fields[key])
        write.current_document.exists = False
        return write

    @staticmethod
    def update_write(reference: Any, fields: Mapping[str, Any], last_update_time: datetime) -> Any:
        """`update(fields, option=write_option(last_update_time=...))`: the
        top-level keys are the update mask (plain field names only)."""
        write = _Write()
        write.update.name = reference._document_path
        for key, value in fields.items():
            encode_value(value, write.update.fields[key])
        write.update_mask.field_paths.extend(fields.keys())
        write.current_document.update_time.CopyFrom(timestamp_of(last_update_time))
        return write

    def commit(self, writes: list[Any], timeout: float) -> list[DatetimeWithNanoseconds]:
        """Commit `writes` atomically (a batch); their update times."""
        request = _CommitRequest(database=self._database, writes=writes)
        try:
            response = retried(
                lambda left: self._commit(request, timeout=left, metadata=self._metadata), timeout
            )
        except grpc.RpcError as exc:
            raise _api_error(exc) from exc
        return [_time_of(result.update_time) for result in response.write_results]

    def update(
        self,
        reference: Any,
        fields: Mapping[str, Any],
        last_update_time: datetime,
        timeout: float,
    ) -> DatetimeWithNanoseconds:
        """One guarded update (`update_write`); its update time."""
        return self.commit([self.update_write(reference, fields, last_update_time)], timeout)[0]

    def create(
        self, reference: Any, fields: Mapping[str, Any], timeout: float
    ) -> DatetimeWithNanoseconds:
        """One `create_write`; its update time (AlreadyExists if it exists)."""
        return self.commit([self.create_write(reference, fields)], timeout)[0]
