"""The frames between the worker and a task process (longrun_worker.frames)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from longrun_worker import frames


async def _read_all(data: bytes) -> list[tuple[int, bytes] | None]:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out: list[tuple[int, bytes] | None] = []
    while True:
        frame = await frames.read_frame(reader)
        out.append(frame)
        if frame is None:
            return out


async def test_frames_round_trip_and_the_end_of_the_stream_reads_as_none() -> None:
    data = frames.encode(frames.HELLO, b'{"pid": 1}') + frames.encode(frames.CANCEL)
    assert await _read_all(data) == [(frames.HELLO, b'{"pid": 1}'), (frames.CANCEL, b""), None]


async def test_a_frame_cut_short_reads_as_the_end() -> None:
    data = frames.encode(frames.RESULT, b"0123456789")[:-3]
    assert await _read_all(data) == [None]


async def test_frames_over_the_limit_are_refused_on_both_sides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = frames.encode(frames.RESULT, b"x" * 11)
    monkeypatch.setattr(frames, "MAX_FRAME", 10)
    with pytest.raises(frames.FrameTooLarge, match="11 bytes exceeds the limit of 10"):
        frames.encode(frames.RESULT, b"x" * 11)
    with pytest.raises(frames.FrameTooLarge):
        await _read_all(big)
    assert frames.encode(frames.RESULT, b"x" * 10)  # at the limit: fine


def test_the_channel_sends_from_threads_without_interleaving_and_reads_eof() -> None:
    ours, theirs = socket.socketpair()
    channel = frames.Channel(ours)
    payloads = [bytes([i]) * 50_000 for i in range(8)]
    threads = [threading.Thread(target=channel.send, args=(frames.PROGRESS, p)) for p in payloads]
    for thread in threads:
        thread.start()
    peer = frames.Channel(theirs)
    got = [peer.recv() for _ in payloads]
    for thread in threads:
        thread.join()
    assert sorted(p for _, p in got) == sorted(payloads)  # type: ignore[misc]
    ours.close()
    assert peer.recv() is None
    theirs.close()
