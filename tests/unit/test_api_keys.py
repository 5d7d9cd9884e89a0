"""API keys: minted once, stored as a hash, expire, revoked, last use written
at most once a minute (SQLite store; the contract suite covers Firestore)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from longrun_core.access import Permission, Principal, acting_as
from longrun_core.auth.api_keys import ApiKeyVerifier, mint, parse_key, secret_hash
from longrun_core.auth.policy import PolicyAccess
from longrun_core.auth.roles import Role
from longrun_core.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.db import Database

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0
        self.mono = 0.0

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteKeyStore]:
    s = SqliteKeyStore(Database(tmp_path / "keys.db"), owns=True)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def make_verifier(store: SqliteKeyStore, clock: Clock, **kw: float) -> ApiKeyVerifier:
    return ApiKeyVerifier(store, clock=clock, monotonic=clock.monotonic, **kw)  # type: ignore[arg-type]


def test_a_minted_key_has_an_id_and_a_32_byte_secret() -> None:
    minted = mint("billing", Role.EDITOR, T0)
    key_id, secret = parse_key(minted.secret)
    assert key_id == minted.key.key_id and len(key_id) == 16
    assert len(secret) == 43  # 32 bytes, base64url without padding
    assert minted.key.secret_hash == secret_hash(secret)
    assert minted.key.name == f"projects/billing/apiKeys/{key_id}"
    assert mint("billing", Role.EDITOR, T0).key.key_id != key_id


@pytest.mark.parametrize("project", ["", "Billing", "a/b", "x" * 64])
def test_a_key_needs_a_project_id(project: str) -> None:
    with pytest.raises(InvalidArgument):
        mint(project, Role.VIEWER, T0)


def test_an_expiry_in_the_past_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        mint("p1", Role.VIEWER, T0, expire_time=T0)


async def test_only_the_hash_is_stored(store: SqliteKeyStore, tmp_path: Path) -> None:
    minted = mint("billing", Role.ADMIN, T0)
    await store.add(minted.key)
    _, secret = parse_key(minted.secret)
    rows = await store.db.call(lambda c: c.execute("SELECT * FROM api_keys").fetchall())
    assert len(rows) == 1
    assert secret not in repr(rows) and minted.secret not in repr(rows)
    assert secret_hash(secret) in repr(rows)
    await store.db.call(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
    assert secret.encode() not in (tmp_path / "keys.db").read_bytes()


async def test_a_good_key_verifies_and_a_wrong_secret_does_not(store: SqliteKeyStore) -> None:
    clock = Clock()
    minted = mint("billing", Role.EDITOR, T0)
    await store.add(minted.key)
    verifier = make_verifier(store, clock)
    assert (await verifier.verify(minted.secret)).key_id == minted.key.key_id
    wrong = minted.secret[:-4] + ("AAAA" if not minted.secret.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(wrong)
    assert info.value.reason == "API_KEY_INVALID"
    unknown = mint("billing", Role.EDITOR, T0).secret
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(unknown)
    assert info.value.reason == "API_KEY_INVALID"
    for garbage in ("lrk_", "lrk_zz.yy", "not-a-key", minted.secret + "x"):
        with pytest.raises(Unauthenticated) as info:
            await verifier.verify(garbage)
        assert info.value.reason == "API_KEY_INVALID"


async def test_an_expired_key_is_refused(store: SqliteKeyStore) -> None:
    clock = Clock()
    minted = mint("billing", Role.EDITOR, T0, expire_time=T0 + timedelta(days=30))
    await store.add(minted.key)
    verifier = make_verifier(store, clock)
    await verifier.verify(minted.secret)
    clock.advance(30 * 86400)
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(minted.secret)
    assert info.value.reason == "API_KEY_EXPIRED"


async def test_a_revoked_key_is_refused_at_once_here_and_within_the_ttl_elsewhere(
    store: SqliteKeyStore,
) -> None:
    clock = Clock()
    minted = mint("billing", Role.EDITOR, T0)
    await store.add(minted.key)
    here = make_verifier(store, clock, cache_ttl=5.0)
    elsewhere = make_verifier(store, clock, cache_ttl=5.0)
    await here.verify(minted.secret)
    await elsewhere.verify(minted.secret)
    revoked = await store.revoke(minted.key.key_id, T0)
    assert revoked is not None and revoked.revoked
    here.forget(minted.key.key_id)  # what the ApiKeys service does after revoking
    with pytest.raises(Unauthenticated) as info:
        await here.verify(minted.secret)
    assert info.value.reason == "API_KEY_REVOKED"
    await elsewhere.verify(minted.secret)  # its cached record is still fresh
    clock.advance(5.0)
    with pytest.raises(Unauthenticated) as info:
        await elsewhere.verify(minted.secret)
    assert info.value.reason == "API_KEY_REVOKED"


async def test_revoking_twice_keeps_the_first_time(store: SqliteKeyStore) -> None:
    minted = mint("billing", Role.EDITOR, T0)
    await store.add(minted.key)
    first = await store.revoke(minted.key.key_id, T0 + timedelta(seconds=1))
    second = await store.revoke(minted.key.key_id, T0 + timedelta(seconds=9))
    assert first is not None and second is not None
    assert first.revoke_time == second.revoke_time == T0 + timedelta(seconds=1)
    assert await store.revoke("0123456789abcdef", T0) is None


async def test_last_use_is_written_at_most_once_a_minute(store: SqliteKeyStore) -> None:
    clock = Clock()
    minted = mint("billing", Role.EDITOR, T0)
    await store.add(minted.key)
    verifier = make_verifier(store, clock, cache_ttl=0.0)  # read the record every call
    for _ in range(20):
        await verifier.verify(minted.secret)
        clock.advance(1.0)
    assert verifier.touches == 1
    stored = await store.get(minted.key.key_id)
    assert stored is not None and stored.last_use_time == T0
    clock.advance(41.0)  # 61 s after the first use
    await verifier.verify(minted.secret)
    assert verifier.touches == 2
    stored = await store.get(minted.key.key_id)
    assert stored is not None and stored.last_use_time == T0 + timedelta(seconds=61)


async def test_a_second_server_does_not_rewrite_a_fresh_last_use(store: SqliteKeyStore) -> None:
    clock = Clock()
    minted = mint("billing", Role.EDITOR, T0)
    await store.add(minted.key)
    await make_verifier(store, clock).verify(minted.secret)
    clock.advance(10.0)
    other = make_verifier(store, clock)
    await other.verify(minted.secret)
    assert other.touches == 0  # the stored last use is 10 s old


async def test_a_key_carries_its_own_binding(store: SqliteKeyStore) -> None:
    clock = Clock()
    minted = mint("billing", Role.VIEWER, T0)
    await store.add(minted.key)
    verifier = make_verifier(store, clock)
    access = PolicyAccess(key_grant=verifier.grant)
    await verifier.verify(minted.secret)
    with acting_as(Principal(minted.key.principal_id)):
        access.require(Permission.GET, "billing")
        assert access.visible_projects(Permission.LIST) == frozenset({"billing"})
        with pytest.raises(PermissionDenied):
            access.require(Permission.CANCEL, "billing")
        with pytest.raises(PermissionDenied):
            access.require(Permission.GET, "payroll")
    with acting_as(Principal("key:0123456789abcdef")), pytest.raises(PermissionDenied):
        access.require(Permission.GET, "billing")


async def test_a_failed_last_use_write_does_not_refuse_the_call(
    store: SqliteKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    minted = mint("billing", Role.EDITOR, T0)
    await store.add(minted.key)

    async def outage(key_id: str, when: datetime) -> None:
        raise Unavailable("disk full")

    monkeypatch.setattr(store, "touch", outage)
    verifier = make_verifier(store, clock)
    assert (await verifier.verify(minted.secret)).key_id == minted.key.key_id
    assert verifier.touches == 0
