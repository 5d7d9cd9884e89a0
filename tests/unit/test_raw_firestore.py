"""The raw Firestore codec (google/raw_firestore.py) and the listen stream's
handling of responses that do not parse (google/listen_stream.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import document as document_types
from google.cloud.firestore_v1.types import firestore as firestore_types

from longrun_core.google.listen_stream import UNREADABLE, ListenStream, _parse
from longrun_core.google.raw_firestore import decode_value, encode_value, timestamp_of

Value: Any = document_types.Value.pb()
ListenResponse: Any = firestore_types.ListenResponse.pb()
TargetChange: Any = firestore_types.TargetChange.pb()

DOC = {
    "s": "text é",
    "i": 2**40,
    "b": True,
    "f": 0.5,
    "n": None,
    "raw": b"\x00\xff",
    "t": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    "labels": {"team": "a", "empty": ""},
    "pairs": ["team=a", "x=y"],
    "no_map": {},
    "no_list": [],
}


def test_values_round_trip() -> None:
    value = Value()
    encode_value(DOC, value)
    assert decode_value(value) == DOC


def test_encoding_matches_the_library() -> None:
    ours = Value()
    encode_value(DOC, ours)
    theirs = document_types.Value.pb(_helpers.encode_value(DOC))
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )


def test_timestamps_keep_nanoseconds_and_treat_naive_as_utc() -> None:
    precise = DatetimeWithNanoseconds(2026, 1, 1, nanosecond=123456789, tzinfo=UTC)
    assert (timestamp_of(precise).seconds, timestamp_of(precise).nanos) == (1767225600, 123456789)
    naive = datetime(2026, 1, 1, 0, 0, 1)
    assert timestamp_of(naive).seconds == 1767225601


def test_unsupported_types_are_refused() -> None:
    with pytest.raises(TypeError, match="set"):
        encode_value({1, 2}, Value())


def test_a_response_that_does_not_parse_is_unreadable_not_an_error() -> None:
    # A document_change whose document's update_time is garbled (as the emulator sent).
    garbled = b"\x1a\x0c\n\x0a\n\x02id\x22\x04\x00\x00\x00\x03"
    assert _parse(garbled) is UNREADABLE
    assert _parse(b"") is not UNREADABLE  # an empty message parses


class _Call:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
def stream() -> Iterator[ListenStream]:
    channel = grpc.insecure_channel("localhost:1")  # never connected: no call is made
    yield ListenStream(channel, "projects/p/databases/(default)", ())
    channel.close()


def test_an_unreadable_response_reopens_the_stream(stream: ListenStream) -> None:
    call = _Call()
    stream._call = call
    stream._handle(UNREADABLE)
    assert call.cancelled


def test_changes_reach_their_targets_with_the_version(stream: ListenStream) -> None:
    events: list[tuple[str, str, int | None]] = []
    stream._thread = threading.current_thread()  # keep add() from starting the reader
    a = stream.add(
        "projects/p/databases/(default)/documents/ops/a", lambda e, v: events.append(("a", e, v))
    )
    b = stream.add(
        "projects/p/databases/(default)/documents/ops/b", lambda e, v: events.append(("b", e, v))
    )
    current = ListenResponse()
    current.target_change.target_change_type = TargetChange.TargetChangeType.Value("CURRENT")
    current.target_change.target_ids.extend([a, b])
    stream._handle(current)
    change = ListenResponse()
    change.document_change.document.name = "projects/p/databases/(default)/documents/ops/b"
    change.document_change.document.fields["version"].integer_value = 7
    change.document_change.target_ids.append(b)
    stream._handle(change)
    stream.remove(a)
    stream._handle(current)  # a removed target hears nothing more
    assert events == [
        ("a", "current", None),
        ("b", "current", None),
        ("b", "changed", 7),
        ("b", "current", None),
    ]
