"""Every store keeps shared secrets the same way: the first process to ask
for a name makes it, and every other process on the same store (the same
SQLite file, the same Firestore database), even one racing it, gets the
same bytes; different names and different stores get different ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from longrun_core.shared_secrets import PAGE_TOKEN_KEY, SECRET_BYTES, shared_secret
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.store import OperationStore

#: Opens one more store on the same place each call.
Opener = Callable[[], Awaitable[OperationStore]]


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.google)])
async def open_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Opener, Opener]]:
    """(open a store on place A, open a store on another place B)."""
    opened: list[OperationStore] = []
    if request.param == "sqlite":

        def on(path: Path) -> Opener:
            async def open_one() -> OperationStore:
                s = SqliteOperationStore(SqliteBackend(path))
                await s.start()
                opened.append(s)
                return s

            return open_one

        openers = (on(tmp_path / "a.db"), on(tmp_path / "b.db"))
    else:
        from tests.contract.google_backends import (
            fresh_project,
            make_firestore_store,
            require_emulators,
        )

        require_emulators()

        def on_project(project: str) -> Opener:
            async def open_one() -> OperationStore:
                s = await make_firestore_store(project=project)
                opened.append(s)
                return s

            return open_one

        openers = (on_project(fresh_project()), on_project(fresh_project()))
    try:
        yield openers
    finally:
        for s in opened:
            await s.close()


async def test_processes_on_one_store_share_the_secret(
    open_store: tuple[Opener, Opener],
) -> None:
    on_a, on_b = open_store
    first = await on_a()
    second = await on_a()
    key = await shared_secret(first, PAGE_TOKEN_KEY)
    assert key is not None and len(key) == SECRET_BYTES
    assert await shared_secret(second, PAGE_TOKEN_KEY) == key
    assert await shared_secret(first, PAGE_TOKEN_KEY) == key  # asked again: kept
    other_name = await shared_secret(first, "another_key")
    assert other_name is not None and other_name != key
    elsewhere = await shared_secret(await on_b(), PAGE_TOKEN_KEY)
    assert elsewhere is not None and elsewhere != key


async def test_racing_first_askers_agree(open_store: tuple[Opener, Opener]) -> None:
    on_a, _ = open_store
    stores = [await on_a() for _ in range(4)]
    keys = await asyncio.gather(*(shared_secret(s, PAGE_TOKEN_KEY) for s in stores))
    assert keys[0] is not None
    assert set(keys) == {keys[0]}
