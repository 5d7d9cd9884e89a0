"""One SQLite connection per process, used from a single dedicated thread so
the event loop never blocks on disk.

Storage faults are outages, not crashes. Every sqlite3 error that reaches this
module is mapped in one place, `storage_error`, to a domain error:

* SQLITE_FULL -> `StorageFull` (RESOURCE_EXHAUSTED, reason STORAGE_FULL);
* SQLITE_BUSY / LOCKED (past the busy timeout), READONLY, IOERR, CANTOPEN,
  PERM, CORRUPT, NOTADB, PROTOCOL -> `StoreUnavailable` (UNAVAILABLE);
* anything else (IntegrityError, ProgrammingError, ...) is a bug and
  propagates unchanged.

A transaction that failed is rolled back here, so the connection is never
left inside a dead transaction; the caller (a worker loop, the sweeper, an
RPC) retries later.

The file's identity. The process remembers the (st_dev, st_ino) of the file it
opened and compares it with what the path names now before and after every
call (one `stat`, about 2 us against 30-1000 us for the call itself), and the
backend's safety-net loop makes a call every second, so an idle process
notices too. A database deleted or replaced under a running process is
refused: every call raises `StoreReplaced`, with one ERROR log saying what
happened, so nothing is written (or read) silently from a file nobody else
sees. If the original file comes back at its path, calls go through again.
The first process to notice copies what it still holds open to
`<db>.rescued-<inode>` (SQLite's backup API), so the operations are not lost
with the file; the ERROR log says how to put it back.

The creation marker. Opening a database that does not exist creates it, and
records that fact in a marker file beside it (`.<db>-created`: a dotfile, so
`rm longrun.db*` leaves it). A process that
finds the marker but not the database refuses to start (`StartupError`)
instead of silently creating an empty database in place of a deleted one:
restore the file, or delete the marker to start empty on purpose. Deleting
the whole folder (database and marker) is taken as meaning it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from longrun_core.errors import (
    StartupError,
    StorageFull,
    StoreReplaced,
    StoreUnavailable,
    Unavailable,
)

log = logging.getLogger("longrun.sqlite")

T = TypeVar("T")

#: Primary result codes that mean "the file cannot be used now" (an outage).
_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY: "STORE_BUSY",
    sqlite3.SQLITE_LOCKED: "STORE_BUSY",
    sqlite3.SQLITE_READONLY: "STORE_READ_ONLY",
    sqlite3.SQLITE_IOERR: "STORE_IO_ERROR",
    sqlite3.SQLITE_CANTOPEN: "STORE_UNAVAILABLE",
    sqlite3.SQLITE_PERM: "STORE_UNAVAILABLE",
    sqlite3.SQLITE_PROTOCOL: "STORE_UNAVAILABLE",
    sqlite3.SQLITE_CORRUPT: "STORE_CORRUPT",
    sqlite3.SQLITE_NOTADB: "STORE_CORRUPT",
}
#: Of those, the ones a process cannot start with (a configuration to fix,
#: not an outage to wait out).
_FATAL_AT_START = {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_NOTADB}
#: How often `_open` tries again while the file is busy (another process is
#: creating it or switching it to WAL) before it reports the store unavailable.
#: The pause doubles from OPEN_BACKOFF up to OPEN_BACKOFF_MAX: about 15 s in
#: all, so a loaded machine's slow first schema write does not fail a start.
OPEN_ATTEMPTS = 20
OPEN_BACKOFF = 0.05
OPEN_BACKOFF_MAX = 1.0
#: How long a write waits for another process's lock (ms).
BUSY_TIMEOUT_MS = 30_000
#: After a full-disk error: at most one checkpoint this often (s), waiting this
#: long (ms) for readers.
CHECKPOINT_EVERY = 0.5
CHECKPOINT_BUSY_MS = 100
#: Errors after which the connection is replaced (at most this often, s).
_RECONNECT_AFTER = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}
RECONNECT_EVERY = 0.5


class _ChangedWhileOpening(sqlite3.OperationalError):
    """The path named another file (or none) after opening than before."""


def _primary(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def storage_error(exc: sqlite3.Error) -> Unavailable | None:
    """The domain error for a sqlite3 error that means the store cannot serve
    now; None for one that is a bug (those propagate as they are)."""
    primary = _primary(exc)
    name = str(getattr(exc, "sqlite_errorname", "") or type(exc).__name__)
    meta = {"sqlite_error": name}
    if primary == sqlite3.SQLITE_FULL:
        return StorageFull(
            f"the operation store's disk is full ({exc}); retry once space is freed",
            metadata=meta,
        )
    reason = _UNAVAILABLE.get(primary) if primary is not None else None
    if reason is None:
        return None
    return StoreUnavailable(
        f"the operation store cannot serve now ({name}: {exc}); retry later",
        reason=reason,
        metadata=meta,
    )


def marker_path(db_path: Path) -> Path:
    """The file that records that a database was created at `db_path`: a
    dotfile, so `rm longrun.db*` (database, WAL and all) leaves it."""
    return db_path.with_name(f".{db_path.name}-created")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _uri(path: Path, mode: str) -> str:
    return f"{path.absolute().as_uri()}?mode={mode}"


SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    params BLOB NOT NULL,
    state INTEGER NOT NULL,
    done INTEGER NOT NULL,
    create_us INTEGER NOT NULL,
    update_us INTEGER NOT NULL,
    labels TEXT NOT NULL,
    start_us INTEGER,
    end_us INTEGER,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    progress_percent INTEGER NOT NULL,
    progress_message TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL,
    request_id TEXT,
    request_hash TEXT,
    response BLOB,
    error BLOB,
    error_code INTEGER,
    lease_owner TEXT,
    lease_expire_us INTEGER,
    dispatch_due_us INTEGER,
    run_after_us INTEGER,
    expire_us INTEGER,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_order ON operations(create_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS operations_dispatch_due
    ON operations(dispatch_due_us) WHERE dispatch_due_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_lease_expire
    ON operations(lease_expire_us) WHERE lease_expire_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS operations_expire ON operations(expire_us) WHERE expire_us IS NOT NULL;

CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    operation TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    visible_us INTEGER NOT NULL,
    lease_token TEXT,
    deliveries INTEGER NOT NULL DEFAULT 0,
    enqueued_us INTEGER NOT NULL,
    trace TEXT
);
CREATE INDEX IF NOT EXISTS tasks_visible ON tasks(visible_us, seq);

CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    operation TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_time ON dead_letters(dead_us, seq);

CREATE TABLE IF NOT EXISTS health_probe (
    id INTEGER PRIMARY KEY,
    probe_us INTEGER NOT NULL,
    pid INTEGER NOT NULL
);
"""


class Database:
    """A connection to the database file, run on one thread."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.marker = marker_path(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        #: (st_dev, st_ino) of the file the connection opened.
        self._identity: tuple[int, int] | None = None
        #: What happened to the file, once this process found it gone or replaced.
        self._lost: str | None = None
        #: The last storage fault a call met since `probe` last looked (see `probe`).
        self._recent_fault: Unavailable | None = None
        #: How many calls met a storage fault (for tests and metrics).
        self.faults = 0
        #: When (monotonic) `_checkpoint` last ran.
        self._checkpointed = -CHECKPOINT_EVERY
        #: The connection met an error that a new connection may not meet
        #: (see `_reconnect`), and when the last reconnection was tried.
        self._stale = False
        self._reconnected = -RECONNECT_EVERY
        #: The reader connection is to be replaced too (set on the database
        #: thread, acted on by `read` on the loop thread, which owns the reader).
        self._reset_reader = False

    # ---- opening ----

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the file; retried here while another process holds
        it busy at start (creating it, switching it to WAL)."""
        delay = OPEN_BACKOFF
        for attempt in range(OPEN_ATTEMPTS):
            try:
                return self._open_once()
            except sqlite3.Error as exc:
                primary = _primary(exc)
                busy = primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if (busy or isinstance(exc, _ChangedWhileOpening)) and attempt + 1 < OPEN_ATTEMPTS:
                    log.debug("database busy at open (%s); retrying in %.2fs", exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, OPEN_BACKOFF_MAX)
                    continue
                mapped = storage_error(exc)
                if mapped is None or primary in _FATAL_AT_START:
                    raise self._cannot_open(exc) from exc
                raise mapped from exc
        raise AssertionError("unreachable")

    def _cannot_open(self, exc: BaseException) -> StartupError:
        return StartupError(
            f"cannot open the SQLite database {self.path}: {exc}. Its folder must exist "
            f"or be creatable, and be writable by this user (uid {os.getuid()})"
        )

    def _open_once(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._cannot_open(exc) from exc
        # The marker first: it is written only once the file exists, so a
        # marker seen before the file was looked for and found missing means
        # the file was deleted. (Looked at the other way round, another
        # process creating the file and its marker between the two looks
        # read as a deletion: a test opening one new database from eight
        # threads at once failed that way once in a few thousand rounds.)
        marked = self.marker.exists()
        before = _identity(self.path)
        if before is None and marked:
            raise StartupError(self._deleted_at_start())
        # Never create the file by accident: only when it is known to be new.
        conn = self._connect("rw" if before is not None else "rwc")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            after = _identity(self.path)
            if after is None or (before is not None and after != before):
                # Deleted or replaced while we opened it: look again.
                raise _ChangedWhileOpening(f"{self.path} changed while it was being opened")
        except BaseException:
            conn.close()
            raise
        self._identity = after
        if not self.marker.exists():
            self._write_marker(created=before is None)
        return conn

    def _connect(self, mode: str) -> sqlite3.Connection:
        return sqlite3.connect(
            _uri(self.path, mode),
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )

    def _reconnect(self) -> None:
        """Replace the connection by a new one to the same file. SQLite opens
        a file it may not write (chattr +i, a read-only mount) read-only for
        good, and reports SQLITE_READONLY ever after; a new connection made
        once the file is writable again writes. Database thread only."""
        now = time.monotonic()
        if now - self._reconnected < RECONNECT_EVERY:
            return
        self._reconnected = now
        try:
            conn = self._connect("rw")
        except sqlite3.Error as exc:
            log.debug("cannot reconnect to %s yet: %s", self.path, exc)
            return
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            same = _identity(self.path) == self._identity
        except (sqlite3.Error, OSError) as exc:
            log.debug("cannot reconnect to %s yet: %s", self.path, exc)
            same = False
        if not same:  # another file by now: check_file refuses it
            conn.close()
            return
        old, self._conn = self._conn, conn
        self._stale = False
        self._reset_reader = True
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        log.debug("reconnected to %s", self.path)

    def _deleted_at_start(self) -> str:
        try:
            note = self.marker.read_text(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError):
            note = ""
        return (
            f"the SQLite database {self.path} does not exist, but {self.marker} says one was "
            f"created there ({note or 'no details'}): it was deleted or moved, and starting "
            "would silently create an empty one in its place. Restore the file (look for "
            f"{self.path.name}.rescued-* beside it), or delete {self.marker} to start with "
            "an empty database on purpose"
        )

    def _write_marker(self, *, created: bool) -> None:
        what = "created" if created else "first opened by this version"
        text = (
            f"{what} {time.strftime('%Y-%m-%dT%H:%M:%S%z')} by pid {os.getpid()} on "
            f"{socket.gethostname()}\n"
            f"longrun keeps its operations in {self.path.name}. While this file exists, "
            "longrun refuses to start if that database is missing (it would otherwise "
            "create an empty one). Delete this file together with the database to start "
            "afresh.\n"
        )
        tmp = self.marker.with_name(f"{self.marker.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.marker)
        except OSError as exc:
            log.warning("cannot write the database marker %s: %s", self.marker, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def start(self) -> None:
        if self._conn is None:
            self._conn = await self.run(lambda: self._open())

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("database not started")
        return self._conn

    # ---- running calls ----

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the database thread. A storage fault raises
        its domain error (see `storage_error`), with any transaction `fn` left
        open rolled back; a lost file raises `StoreReplaced`."""
        return await self.run(lambda: self._guarded(fn))

    def _guarded(self, fn: Callable[[sqlite3.Connection], T], *, record_fault: bool = True) -> T:
        self._connection()
        self.check_file()
        if self._stale:
            self._reconnect()
        conn = self._connection()
        try:
            result = fn(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            mapped = storage_error(exc)
            if mapped is None:
                raise
            if record_fault:
                self._fault(mapped)
            if isinstance(mapped, StorageFull):
                self._checkpoint(conn)
            if _primary(exc) in _RECONNECT_AFTER:
                self._stale = True
            raise mapped from exc
        # A write that raced the file's removal went to a file nobody sees: say so.
        self.check_file()
        return result

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """After a write failed for lack of space: copy the WAL into the
        database and truncate it (at most every CHECKPOINT_EVERY seconds).
        SQLite checkpoints on its own only once the WAL reaches 1000 pages,
        and a full disk can be full of WAL, mostly old versions of the same
        pages: without this, freeing some space would not be enough, the WAL
        would take it again."""
        now = time.monotonic()
        if now - self._checkpointed < CHECKPOINT_EVERY:
            return
        self._checkpointed = now
        try:
            conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            busy, frames, moved = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            log.info(
                "disk full: checkpoint %s (%s of %s WAL frames copied)",
                "incomplete" if busy else "done, WAL truncated",
                moved,
                frames,
            )
        except sqlite3.Error as exc:
            log.debug("disk full: checkpoint failed (%s)", exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _fault(self, error: Unavailable) -> None:
        self.faults += 1
        self._recent_fault = error

    def check_file(self, *, report: bool = True) -> None:
        """Raise `StoreReplaced` if the path no longer names the file this
        process opened (one `stat`). `report`: log what happened (and rescue a
        deleted file) the first time; only on the database thread, which owns
        the connection the rescue copies from."""
        try:
            now = _identity(self.path)
        except OSError as exc:
            unreadable = StoreUnavailable(
                f"the operation store's file cannot be looked up ({exc.strerror}); retry later",
                metadata={"errno": errno.errorcode.get(exc.errno or 0, "")},
            )
            self._fault(unreadable)
            raise unreadable from exc
        if now == self._identity:
            if self._lost is not None and report:
                log.warning("the SQLite database %s is back at its path; serving again", self.path)
                self._lost = None
            return
        what = "deleted" if now is None else "replaced by another file"
        if report and self._lost is None:
            self._lost = what
            self._report_lost(what)
        lost = StoreReplaced(
            f"the operation store's database file was {what} while this process was running; "
            "refusing to read or write it until an operator restores it or restarts the "
            "service (see the server log)",
            reason="STORE_FILE_DELETED" if now is None else "STORE_FILE_REPLACED",
        )
        self._fault(lost)
        raise lost

    def _report_lost(self, what: str) -> None:
        rescued = self._rescue() if self._conn is not None else None
        saved = (
            f"What this process still held open was copied to {rescued}."
            if rescued is not None
            else "Copying what this process still held open failed (see above)."
        )
        log.error(
            "the SQLite database %s was %s while this process (pid %d) had it open. Refusing "
            "every read and write: they would go to a file no other process sees, or to a new "
            "empty one. %s To recover: stop every longrun process that uses it, delete any "
            "%s-wal and %s-shm left at that path, move the copy (or a backup) to %s, and start "
            "them again.",
            self.path,
            what,
            os.getpid(),
            saved,
            self.path.name,
            self.path.name,
            self.path,
            extra={"action": "store_file_lost"},
        )

    def _rescue(self) -> Path | None:
        """Copy the lost database this process still holds open to
        `<db>.rescued-<inode>` (once per file: the first process to try makes
        it; the others name it). Database thread only."""
        assert self._identity is not None and self._conn is not None
        target = self.path.with_name(f"{self.path.name}.rescued-{self._identity[1]}")
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return target
        except OSError as exc:
            log.error("cannot copy the deleted database to %s: %s", target, exc)
            return None
        os.close(fd)
        try:
            copy = sqlite3.connect(target)
            try:
                self._conn.backup(copy)
            finally:
                copy.close()
        except sqlite3.Error as exc:
            log.error("cannot copy the deleted database to %s: %s", target, exc)
            return None
        return target

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short read on the loop thread, on a read-only connection of its
        own (cheaper than the hop to the database thread); if the file is busy,
        fall back to the database thread. `fn` must consume its cursor (an
        unconsumed one pins an old snapshot on that connection)."""
        if self._conn is None:
            raise RuntimeError("database not started")
        try:
            self.check_file(report=False)
            if self._reset_reader and self._reader is not None:
                self._reset_reader = False
                self._reader.close()
                self._reader = None
            if self._reader is None:
                self._reader = self._open_reader()
            return fn(self._reader)
        except sqlite3.Error as exc:
            if _primary(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return await self.call(fn)
            mapped = storage_error(exc)
            if mapped is None:
                raise
            self._fault(mapped)
            raise mapped from exc

    def _open_reader(self) -> sqlite3.Connection:
        # mode=rw: never creates the file (a deleted database stays deleted).
        reader = sqlite3.connect(
            _uri(self.path, "rw"), uri=True, isolation_level=None, timeout=0.05
        )
        try:
            reader.execute("PRAGMA query_only=1")
            reader.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            self.check_file(report=False)  # it opened the writer's file, not a replacement
        except BaseException:
            reader.close()
            raise
        return reader

    async def data_version(self) -> int:
        """Changes whenever another connection commits (cheap; no table read)."""
        row = await self.call(lambda c: c.execute("PRAGMA data_version").fetchone())
        return int(row[0])

    async def probe(self) -> None:
        """Raise the storage fault (an `Unavailable`) if the store cannot take a
        write now, or if any call of this process met a fault since the last
        probe: a one-row write can fit in WAL space already there on a full
        disk while bigger writes fail."""
        recent, self._recent_fault = self._recent_fault, None
        pid = os.getpid()

        def write(conn: sqlite3.Connection) -> None:
            now = time.time_ns() // 1000
            transaction(
                conn,
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO health_probe (id, probe_us, pid) VALUES (1, ?, ?)",
                    (now, pid),
                ),
            )

        await self.run(lambda: self._guarded(write, record_fault=False))
        if recent is not None:
            raise recent

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.run(conn.close)
        self._executor.shutdown(wait=False)


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run `fn` in BEGIN IMMEDIATE ... COMMIT. On any error (in `fn` or in the
    COMMIT: a full disk fails there) the transaction is rolled back unless
    SQLite already did, so the connection never stays inside it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result
