"""The embedded backend's change notifier: real Unix datagram sockets in a
real directory, several notifiers standing for several processes."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from longrun_core.errors import StartupError
from longrun_core.sqlite import notify
from longrun_core.sqlite.backend import SqliteBackend, notify_directory
from longrun_core.sqlite.notify import Notifier, ensure_private_directory, socket_path_fits
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


# ---- where the directory is, and that it is private ----


def test_the_directory_is_beside_the_database(tmp_path: Path) -> None:
    db = tmp_path / "data" / "longrun.db"
    assert notify_directory(db) == tmp_path / "data" / "longrun.db.notify"


def test_a_directory_too_long_for_a_socket_path_falls_back_to_the_temp_folder(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 40) / "longrun.db"
    where = notify_directory(deep)
    assert where.parent == Path(tempfile.gettempdir())
    assert where.name.startswith(f"longrun-{os.getuid()}-")
    assert socket_path_fits(where)
    assert where == notify_directory(deep)  # every process finds the same one


async def test_processes_sharing_a_database_hear_each_other_through_it(tmp_path: Path) -> None:
    """Two backends on one file (two processes; or two containers mounting
    the volume holding it) meet in `<db>.notify/`."""
    db = tmp_path / "vol" / "longrun.db"
    first, second = SqliteBackend(db), SqliteBackend(db)
    heard: list[str] = []
    second.on_operation_changed(heard.append)
    await first.start()
    await second.start()
    try:
        await wait_until(lambda: first.notifier._targets, 5, description="the greeting")
        first.operation_written("operations/abc")
        await wait_until(lambda: heard == ["operations/abc"], 5, description="notification")
        sockets = os.listdir(db.with_name("longrun.db.notify"))
        assert len(sockets) == 2 and all(s.endswith(".sock") for s in sockets)
    finally:
        await first.close()
        await second.close()


def test_a_new_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    where = tmp_path / "x.db.notify"
    old = os.umask(0)
    try:
        ensure_private_directory(where)
    finally:
        os.umask(old)
    info = os.lstat(where)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    ensure_private_directory(where)  # an existing private one is fine


@pytest.mark.parametrize("mode", [0o777, 0o750, 0o701])
async def test_a_directory_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    db = tmp_path / "longrun.db"
    where = notify_directory(db)
    where.mkdir()
    os.chmod(where, mode)
    backend = SqliteBackend(db)
    with pytest.raises(StartupError, match=f"has mode {mode:04o}, open to other users"):
        await backend.start()
    await backend.close()
    assert os.listdir(where) == []  # nothing bound there


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    where = tmp_path / "x.db.notify"
    where.mkdir(mode=0o700)
    os.chown(where, 65534, 65534)
    with pytest.raises(StartupError, match="belongs to uid 65534"):
        ensure_private_directory(where)


def test_a_symlink_or_a_file_in_its_place_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "x.db.notify"
    link.symlink_to(target)
    with pytest.raises(StartupError, match="is not a directory"):
        ensure_private_directory(link)
    plain = tmp_path / "y.db.notify"
    plain.write_text("")
    with pytest.raises(StartupError, match="is not a directory"):
        ensure_private_directory(plain)
