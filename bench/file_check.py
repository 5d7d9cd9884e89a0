"""`python -m bench.file_check`: what the embedded store's file-identity check
(one `stat` before and after every database call, docs/storage.md) costs, on
the three kinds of call: a read on the loop thread (the GetOperation path), a
read on the database thread, and a one-row write transaction. Each is timed
with the check and with it replaced by a no-op, interleaved, best of ROUNDS."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from longrun_core.sqlite.db import Database, transaction

CALLS = 3000
ROUNDS = 5


async def _per_call(op: Callable[[], Awaitable[object]]) -> float:
    for _ in range(200):
        await op()
    start = time.perf_counter()
    for _ in range(CALLS):
        await op()
    return (time.perf_counter() - start) / CALLS * 1e6


async def main() -> None:
    db = Database(Path(tempfile.mkdtemp()) / "bench.db")
    await db.start()
    await db.call(lambda c: c.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"))
    await db.call(lambda c: c.execute("INSERT INTO kv VALUES (1, 'x')"))

    def write(conn: sqlite3.Connection) -> None:
        transaction(conn, lambda c: c.execute("UPDATE kv SET v = 'y' WHERE k = 1"))

    def read(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
        return conn.execute("SELECT v FROM kv WHERE k = 1").fetchall()

    kinds: dict[str, Callable[[], Awaitable[object]]] = {
        "read, loop thread": lambda: db.read(read),
        "read, database thread": lambda: db.call(read),
        "write transaction": lambda: db.call(write),
    }
    checked = db.check_file
    best: dict[tuple[str, bool], float] = {}
    for _ in range(ROUNDS):
        for with_check in (True, False):
            db.check_file = checked if with_check else (lambda *, report=True: None)  # type: ignore[method-assign]
            for name, op in kinds.items():
                us = await _per_call(op)
                best[name, with_check] = min(us, best.get((name, with_check), us))
    db.check_file = checked  # type: ignore[method-assign]
    start = time.perf_counter()
    for _ in range(100_000):
        db.check_file(report=False)
    stat_us = (time.perf_counter() - start) / 100_000 * 1e6
    await db.close()
    print(f"one check (a stat): {stat_us:.2f} us")
    print(f"{'call':<24}{'with check':>12}{'without':>10}{'added':>8}")
    for name in kinds:
        on, off = best[name, True], best[name, False]
        print(f"{name:<24}{on:>10.1f}us{off:>8.1f}us{on - off:>6.1f}us")


if __name__ == "__main__":
    asyncio.run(main())
