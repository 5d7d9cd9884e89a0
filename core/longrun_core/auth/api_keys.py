"""API keys for machines without a Google identity.

A key is `lrk_<id>.<secret>`: a 16-hex-digit id (public: it names the key,
`projects/{project}/apiKeys/{id}`, and makes the principal `key:<id>`) and a
secret of 32 random bytes (base64url). The full key is shown once, when it is
minted; the store keeps only sha256(secret), compared in constant time. Each
key is bound to one project and one role, may expire, and is revoked (never
deleted, so its name is not reused). Keys are sent as `x-goog-api-key`
metadata / header (Google's spelling) or as `authorization: Bearer lrk_...`.

`ApiKeyVerifier` checks a presented key: the record is read from the
`KeyStore` (and kept `cache_ttl` seconds, so a revocation made through
another server takes that long to reach this one; one made through this one
is immediate) and its last-use time is written at most once per
`touch_interval` per key, not on every call.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from longrun_core.auth.roles import Role
from longrun_core.clock import Clock, SystemClock
from longrun_core.errors import InvalidArgument, Unauthenticated, Unavailable

log = logging.getLogger("longrun.auth")

KEY_PREFIX = "lrk_"
_KEY = re.compile(r"^lrk_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_KEY_NAME = re.compile(r"^projects/([^/]+)/apiKeys/([0-9a-f]{16})$")

DEFAULT_CACHE_TTL = 5.0
DEFAULT_TOUCH_INTERVAL = 60.0
DEFAULT_CACHED_KEYS = 10_000

API_KEY_INVALID = "API_KEY_INVALID"
API_KEY_REVOKED = "API_KEY_REVOKED"
API_KEY_EXPIRED = "API_KEY_EXPIRED"


@dataclass(frozen=True)
class ApiKey:
    """A stored key: never its secret, only the secret's sha256 (hex)."""

    key_id: str
    project: str
    role: Role
    secret_hash: str
    create_time: datetime
    expire_time: datetime | None = None
    last_use_time: datetime | None = None
    revoke_time: datetime | None = None

    @property
    def name(self) -> str:
        return key_name(self.project, self.key_id)

    @property
    def principal_id(self) -> str:
        return f"key:{self.key_id}"

    @property
    def revoked(self) -> bool:
        return self.revoke_time is not None

    def expired(self, now: datetime) -> bool:
        return self.expire_time is not None and now >= self.expire_time


@dataclass(frozen=True)
class MintedKey:
    key: ApiKey
    #: `lrk_<id>.<secret>`: shown once, never stored.
    secret: str


def key_name(project: str, key_id: str) -> str:
    return f"projects/{project}/apiKeys/{key_id}"


def parse_key_name(name: str) -> tuple[str, str]:
    """(project, key id) of `projects/{project}/apiKeys/{id}`."""
    match = _KEY_NAME.match(name)
    if match is None or not _PROJECT.match(match.group(1)):
        raise InvalidArgument(
            f"{name[:200]!r} is not an API key name (projects/PROJECT/apiKeys/ID)",
            reason="API_KEY_NAME_INVALID",
        )
    return match.group(1), match.group(2)


def check_project(project: str) -> str:
    if not _PROJECT.match(project):
        raise InvalidArgument(
            f"{project[:100]!r} is not a project id (lowercase letters, digits, . _ -; at most 63)",
            reason="PROJECT_INVALID",
        )
    return project


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint(
    project: str, role: Role, now: datetime, *, expire_time: datetime | None = None
) -> MintedKey:
    """A new key (32 random bytes of secret); store `.key`, show `.secret` once."""
    check_project(project)
    if expire_time is not None and expire_time <= now:
        raise InvalidArgument("an API key's expire time must be in the future")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        key_id=key_id,
        project=project,
        role=role,
        secret_hash=secret_hash(secret),
        create_time=now,
        expire_time=expire_time,
    )
    return MintedKey(key, f"{KEY_PREFIX}{key_id}.{secret}")


def parse_key(text: str) -> tuple[str, str]:
    """(key id, secret) of `lrk_<id>.<secret>`."""
    match = _KEY.match(text.strip())
    if match is None:
        raise Unauthenticated("the API key is malformed", reason=API_KEY_INVALID)
    return match.group(1), match.group(2)


def looks_like_key(text: str) -> bool:
    return text.startswith(KEY_PREFIX)


class KeyStore(Protocol):
    """Where API keys live (a table beside the operations in SQLite, a
    collection in Firestore). Contract: tests/contract/test_key_store_contract.py."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, key: ApiKey) -> None:
        """Store a new key (its id is fresh: 64 random bits)."""
        ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def list(self, project: str, *, after: str = "", limit: int = 100) -> list[ApiKey]:
        """The project's keys (revoked ones too) with ids > `after`, by id."""
        ...

    async def revoke(self, key_id: str, when: datetime) -> ApiKey | None:
        """Mark the key revoked (a revoked key keeps its first revoke time);
        None if there is no such key."""
        ...

    async def touch(self, key_id: str, when: datetime) -> None:
        """Record that the key was used at `when` (kept if later than the last)."""
        ...


class ApiKeyVerifier:
    """Turns a presented key into its stored record, or Unauthenticated."""

    def __init__(
        self,
        store: KeyStore,
        *,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        touch_interval: float = DEFAULT_TOUCH_INTERVAL,
        max_cached: int = DEFAULT_CACHED_KEYS,
    ) -> None:
        self.store = store
        self._clock = clock or SystemClock()
        self._monotonic = monotonic
        self.cache_ttl = cache_ttl
        self.touch_interval = touch_interval
        self.max_cached = max(1, max_cached)
        #: key id -> (read at (monotonic), record); least recently used first.
        self._records: collections.OrderedDict[str, tuple[float, ApiKey]] = (
            collections.OrderedDict()
        )
        #: key id -> when this process last wrote its last-use time.
        self._touched: dict[str, datetime] = {}
        #: Last-use writes made (observability, tests).
        self.touches = 0

    async def verify(self, text: str) -> ApiKey:
        key_id, secret = parse_key(text)
        key = await self._record(key_id)
        if key is None or not hmac.compare_digest(key.secret_hash, secret_hash(secret)):
            raise Unauthenticated("the API key is not valid", reason=API_KEY_INVALID)
        if key.revoked:
            raise Unauthenticated(f"API key {key.name} was revoked", reason=API_KEY_REVOKED)
        now = self._clock.now()
        if key.expired(now):
            raise Unauthenticated(f"API key {key.name} has expired", reason=API_KEY_EXPIRED)
        await self._touch(key, now)
        return key

    def grant(self, key_id: str) -> tuple[str, Role] | None:
        """The (project, role) of a key this verifier let in (from its cache;
        a key's project and role never change)."""
        entry = self._records.get(key_id)
        return None if entry is None else (entry[1].project, entry[1].role)

    def forget(self, key_id: str) -> None:
        """Drop a cached record (after this process revoked the key)."""
        self._records.pop(key_id, None)

    def remember(self, key: ApiKey) -> None:
        self._records[key.key_id] = (self._monotonic(), key)
        self._records.move_to_end(key.key_id)
        while len(self._records) > self.max_cached:
            old, _ = self._records.popitem(last=False)
            self._touched.pop(old, None)

    async def _record(self, key_id: str) -> ApiKey | None:
        entry = self._records.get(key_id)
        if entry is not None and self._monotonic() - entry[0] < self.cache_ttl:
            self._records.move_to_end(key_id)
            return entry[1]
        key = await self.store.get(key_id)
        if key is None:
            self.forget(key_id)
            return None
        self.remember(key)
        return key

    async def _touch(self, key: ApiKey, now: datetime) -> None:
        last = self._touched.get(key.key_id)
        if key.last_use_time is not None and (last is None or key.last_use_time > last):
            last = key.last_use_time
        if last is not None and (now - last).total_seconds() < self.touch_interval:
            return
        self._touched[key.key_id] = now
        try:
            await self.store.touch(key.key_id, now)
            self.touches += 1
        except Unavailable as exc:  # a missed last-use time must not refuse the call
            log.warning("cannot record the use of API key %s: %s", key.key_id, exc)
            return
        entry = self._records.get(key.key_id)
        if entry is not None:  # keep when it was read: the TTL counts from the store read
            self._records[key.key_id] = (entry[0], replace(entry[1], last_use_time=now))
