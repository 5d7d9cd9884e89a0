"""The embedded backend's change notifier: real Unix datagram sockets in a
real directory, several notifiers standing for several processes."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from longrun_core.sqlite import notify
from longrun_core.sqlite.notify import Notifier
from tests.support.waiting import wait_until


class Listener:
    def __init__(self, directory: Path) -> None:
        self.notifier = Notifier(directory)
        self.heard: list[bytes] = []
        self.notifier.add_handler(self.heard.append)

    def listen(self) -> None:
        self.notifier.listen()

    @property
    def path(self) -> str:
        assert self.notifier._path is not None
        return str(self.notifier._path)


@pytest.fixture
async def listeners(tmp_path: Path) -> AsyncIterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.notifier.close()


def make(listeners: list[Listener], directory: Path) -> Listener:
    listener = Listener(directory)
    listeners.append(listener)
    return listener


async def test_a_listener_that_binds_later_is_heard_at_once(
    tmp_path: Path, listeners: list[Listener], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No periodic re-listing during the test: only the greeting can tell the
    # first listener about the second.
    monkeypatch.setattr(notify, "RELIST", 3600.0)
    first = make(listeners, tmp_path)
    first.listen()
    first.notifier.send(b"qbefore")  # lists the directory now: only itself there
    await asyncio.sleep(0)
    second = make(listeners, tmp_path)
    second.listen()
    await wait_until(lambda: second.path in first.notifier._targets, 5, description="greeting")
    first.notifier.send(b"ofrom-first")
    second.notifier.send(b"ofrom-second")
    await wait_until(lambda: b"ofrom-first" in second.heard, 5, description="second hears first")
    await wait_until(lambda: b"ofrom-second" in first.heard, 5, description="first hears second")
    assert not any(part.startswith(notify.HELLO) for part in first.heard + second.heard)


async def test_a_full_listener_hears_everything_late(
    tmp_path: Path, listeners: list[Listener]
) -> None:
    sender = make(listeners, tmp_path)
    busy = make(listeners, tmp_path)
    sender.listen()
    busy.listen()
    await wait_until(lambda: busy.path in sender.notifier._targets, 5, description="greeting")
    loop = asyncio.get_running_loop()
    assert busy.notifier._sock is not None
    fd = busy.notifier._sock.fileno()
    loop.remove_reader(fd)  # the busy listener stops reading for a while
    sent = [f"o{i}".encode() for i in range(_queue_length() + 30)]
    for payload in sent:  # one datagram per loop iteration: more than the queue holds
        sender.notifier.send(payload)
        await asyncio.sleep(0)
    await wait_until(lambda: sender.notifier._pending, 5, description="a full queue")
    loop.add_reader(fd, busy.notifier._on_readable)
    await wait_until(lambda: set(sent) <= set(busy.heard), 10, description="every payload")


def _queue_length() -> int:
    """How many datagrams Linux queues per Unix socket (10 by default)."""
    try:
        return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        return 10


async def test_a_dead_listener_is_dropped_and_its_socket_removed(
    tmp_path: Path, listeners: list[Listener]
) -> None:
    stale = tmp_path / "deadbeef.sock"
    orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    orphan.bind(str(stale))
    orphan.close()  # the file stays, nobody is bound: a process that died
    sender = make(listeners, tmp_path)
    sender.listen()
    assert str(stale) in sender.notifier._targets or not stale.exists()
    sender.notifier.send(b"qhello")
    await wait_until(lambda: not stale.exists(), 5, description="stale socket removed")
    assert str(stale) not in sender.notifier._targets
    assert os.listdir(tmp_path) == [Path(sender.path).name]
