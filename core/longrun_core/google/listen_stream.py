"""Many document listeners on one Firestore `Listen` stream.

`DocumentReference.on_snapshot` opens one bidirectional `Listen` stream per
document, with a consumer thread of its own, builds proto-plus snapshots of
every change and tears the stream and the thread down again when the
listener stops. A WaitOperation on the Google path paid that for every
operation it watched: about a third of the server's CPU per no-op job
(docs/benchmarks.md). The `Listen` RPC itself carries any number of targets:
here one stream (one reader thread, raw protobufs) carries one
`DocumentsTarget` per watched document, added and removed as waiters come
and go.

Events, delivered on the reader thread to the callback given to `add`:

* `current`: the target is live. Firestore sends CURRENT once the target
  reflects every change committed before it was added, so every later
  change to the document produces a `changed` event.
* `changed(version)`: the document changed (version: its `version` field;
  None when it was deleted or has none).
* `reset`: something may have been missed (the stream broke and was opened
  again with every target, Firestore reset or removed the target, or a
  response did not parse: then every target gets it): readers should read
  again. A target Firestore removed is added again.

The stream is opened again after an error with a backoff, and re-adds every
target; `close` ends it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)

_ListenRequest: Any = firestore_types.ListenRequest.pb()
_ListenResponse: Any = firestore_types.ListenResponse.pb()
_TargetChange: Any = firestore_types.TargetChange.pb()
_LISTEN = "/google.firestore.v1.Firestore/Listen"
_NO_CHANGE = _TargetChange.TargetChangeType.Value("NO_CHANGE")
_ADD = _TargetChange.TargetChangeType.Value("ADD")
_REMOVE = _TargetChange.TargetChangeType.Value("REMOVE")
_CURRENT = _TargetChange.TargetChangeType.Value("CURRENT")
_RESET = _TargetChange.TargetChangeType.Value("RESET")
#: Seconds between attempts to open the stream again (doubling up to MAX).
RETRY_MIN = 0.1
RETRY_MAX = 5.0

#: (event, version): ("current", None), ("changed", version|None), ("reset", None).
Callback = Callable[[str, int | None], None]


class ListenStream:
    """One `Listen` stream on `channel` with single-document targets."""

    def __init__(
        self, channel: grpc.Channel, database: str, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        self._call_listen = channel.stream_stream(
            _LISTEN,
            request_serializer=_ListenRequest.SerializeToString,
            response_deserializer=_parse,
        )
        self._database = database
        self._metadata = (*metadata, ("x-goog-request-params", f"database={database}"))
        self._lock = threading.Lock()
        #: target id -> (document path, callback)
        self._targets: dict[int, tuple[str, Callback]] = {}
        self._next_id = 1
        self._requests: queue.SimpleQueue[Any] | None = None
        self._call: Any = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    @property
    def targets(self) -> int:
        return len(self._targets)

    def add(self, document_path: str, callback: Callback) -> int:
        """Listen to `document_path`; returns the target id for `remove`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the listen stream is closed")
            target_id = self._next_id
            self._next_id += 1
            self._targets[target_id] = (document_path, callback)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="firestore-listen", daemon=True
                )
                self._thread.start()
            elif self._requests is not None:
                self._requests.put(self._add_request(target_id, document_path))
        return target_id

    def remove(self, target_id: int) -> None:
        with self._lock:
            if self._targets.pop(target_id, None) is None:
                return
            if self._requests is not None:
                self._requests.put(_ListenRequest(database=self._database, remove_target=target_id))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._targets.clear()
            requests, call = self._requests, self._call
        if requests is not None:
            requests.put(None)
        if call is not None:
            call.cancel()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # ---- the reader thread ----

    def _add_request(self, target_id: int, document_path: str) -> Any:
        request = _ListenRequest(database=self._database)
        request.add_target.target_id = target_id
        request.add_target.documents.documents.append(document_path)
        return request

    def _run(self) -> None:
        pause = RETRY_MIN
        first = True
        while True:
            with self._lock:
                if self._closed:
                    return
                requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
                for target_id, (path, _) in self._targets.items():
                    requests.put(self._add_request(target_id, path))
                self._requests = requests
                self._call = call = self._call_listen(_iterate(requests), metadata=self._metadata)
                callbacks = [cb for _, cb in self._targets.values()]
            if not first:
                for callback in callbacks:  # changes may have been missed meanwhile
                    _deliver(callback, "reset", None)
            first = False
            try:
                for response in call:
                    self._handle(response)
                    pause = RETRY_MIN
            except grpc.RpcError as exc:
                if self._closed:
                    return
                if exc.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                    pause = 0.0  # we ended it: open the next one now
                else:
                    log.warning(
                        "Firestore listen stream failed (%s: %s); opening it again",
                        exc.code(),
                        exc.details(),
                    )
            with self._lock:
                self._requests = None
                self._call = None
                if self._closed:
                    return
            requests.put(None)
            if pause:
                self._wake.wait(pause)
            pause = min(max(pause * 2, RETRY_MIN), RETRY_MAX)

    def _handle(self, response: Any) -> None:
        if response is UNREADABLE:
            # Whichever target it was for missed a change. The emulator's stream
            # stops sending after such a response: open a new one (every target
            # is added again and gets `reset`).
            log.warning("unreadable Firestore listen response; opening the stream again")
            if self._call is not None:
                self._call.cancel()
            return
        kind = response.WhichOneof("response_type")
        if kind == "document_change":
            change = response.document_change
            version = _version(change.document)
            for target_id in change.target_ids:
                self._event(target_id, "changed", version)
            for target_id in change.removed_target_ids:
                self._event(target_id, "changed", None)
        elif kind in ("document_delete", "document_remove"):
            for target_id in getattr(response, kind).removed_target_ids:
                self._event(target_id, "changed", None)
        elif kind == "target_change":
            change = response.target_change
            kind_of = change.target_change_type
            if kind_of == _CURRENT:
                for target_id in change.target_ids:
                    self._event(target_id, "current", None)
            elif kind_of == _RESET:
                for target_id in change.target_ids:
                    self._event(target_id, "reset", None)
            elif kind_of == _REMOVE:
                if change.HasField("cause"):
                    log.warning("Firestore removed listen targets: %s", change.cause.message)
                for target_id in change.target_ids:
                    self._readd(target_id)
            # NO_CHANGE (a consistent snapshot) and ADD need nothing.
        elif kind == "filter":
            self._event(response.filter.target_id, "reset", None)

    def _event(self, target_id: int, event: str, version: int | None) -> None:
        entry = self._targets.get(target_id)
        if entry is not None:
            _deliver(entry[1], event, version)

    def _readd(self, target_id: int) -> None:
        """A target Firestore removed (not one we did): add it again, reset."""
        with self._lock:
            entry = self._targets.get(target_id)
            if entry is None or self._requests is None:
                return
            self._requests.put(self._add_request(target_id, entry[0]))
        _deliver(entry[1], "reset", None)


#: What `_parse` returns for a response that does not parse (None would
#: make gRPC fail the call).
UNREADABLE = object()


def _parse(data: bytes) -> Any:
    """A ListenResponse, or UNREADABLE (the emulator now and then sends a
    document whose update_time is garbled; failing the deserialization
    would end the whole stream, and the same document would end the next)."""
    try:
        return _ListenResponse.FromString(data)
    except DecodeError:
        return UNREADABLE


def _iterate(requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
    while (request := requests.get()) is not None:
        yield request


def _version(document: Any) -> int | None:
    value = document.fields.get("version")
    if value is None or value.WhichOneof("value_type") != "integer_value":
        return None
    return int(value.integer_value)


def _deliver(callback: Callback, event: str, version: int | None) -> None:
    try:
        callback(event, version)
    except Exception:  # a callback's bug must not end the stream
        log.exception("listen callback failed")
