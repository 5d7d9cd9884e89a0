"""Every API key store (SQLite table, Firestore collection) keeps the same
contract: add/get round-trips every field, only the hash is kept, list is
per project by id with paging, revoke keeps the first time, touch only moves
the last-use time forward."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from longrun_core.auth.api_keys import KeyStore, mint, parse_key
from longrun_core.auth.roles import Role
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.db import Database

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.google)])
async def keys(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    store: KeyStore
    if request.param == "sqlite":
        store = SqliteKeyStore(Database(tmp_path / "keys.db"), owns=True)
    else:
        from longrun_core.google.firestore_keys import FirestoreKeyStore
        from tests.contract.google_backends import fresh_project, require_emulators

        require_emulators()
        store = FirestoreKeyStore(project=fresh_project())
    await store.start()
    try:
        yield store
    finally:
        await store.close()


async def test_a_key_round_trips(keys: KeyStore) -> None:
    minted = mint("billing", Role.EDITOR, T0, expire_time=T0 + timedelta(days=30))
    await keys.add(minted.key)
    assert await keys.get(minted.key.key_id) == minted.key
    assert await keys.get("0123456789abcdef") is None


async def test_no_field_holds_the_secret(keys: KeyStore) -> None:
    minted = mint("billing", Role.ADMIN, T0)
    await keys.add(minted.key)
    stored = await keys.get(minted.key.key_id)
    _, secret = parse_key(minted.secret)
    assert stored is not None and secret not in repr(stored)


async def test_list_is_per_project_by_id_with_paging(keys: KeyStore) -> None:
    mine = [mint("billing", Role.VIEWER, T0).key for _ in range(5)]
    other = mint("payroll", Role.VIEWER, T0).key
    for key in [*mine, other]:
        await keys.add(key)
    ids = sorted(k.key_id for k in mine)
    first = await keys.list("billing", limit=3)
    assert [k.key_id for k in first] == ids[:3]
    rest = await keys.list("billing", after=first[-1].key_id, limit=3)
    assert [k.key_id for k in rest] == ids[3:]
    assert [k.key_id for k in await keys.list("payroll")] == [other.key_id]
    assert await keys.list("nobody") == []


async def test_revoke_keeps_the_first_time_and_the_key(keys: KeyStore) -> None:
    key = mint("billing", Role.EDITOR, T0).key
    await keys.add(key)
    first = await keys.revoke(key.key_id, T0 + timedelta(minutes=1))
    again = await keys.revoke(key.key_id, T0 + timedelta(minutes=2))
    assert first is not None and again is not None
    assert first.revoke_time == again.revoke_time == T0 + timedelta(minutes=1)
    stored = await keys.get(key.key_id)
    assert stored is not None and stored.revoked
    assert [k.key_id for k in await keys.list("billing")] == [key.key_id]
    assert await keys.revoke("0123456789abcdef", T0) is None


async def test_touch_only_moves_forward(keys: KeyStore) -> None:
    key = mint("billing", Role.EDITOR, T0).key
    await keys.add(key)
    await keys.touch(key.key_id, T0 + timedelta(minutes=5))
    await keys.touch(key.key_id, T0 + timedelta(minutes=1))
    stored = await keys.get(key.key_id)
    assert stored is not None and stored.last_use_time == T0 + timedelta(minutes=5)
    await keys.touch("0123456789abcdef", T0)  # no such key: nothing happens
    assert await keys.get("0123456789abcdef") is None
