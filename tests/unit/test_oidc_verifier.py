"""The one OIDC verifier (longrun_core.auth.oidc): tokens signed with local
keys, certificates served by a local HTTP server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from longrun_core.auth.oidc import OidcConfig, OidcVerifier
from longrun_core.errors import Unauthenticated
from tests.support.oidc import (
    AUDIENCE,
    GOOGLE_ISSUER,
    KeyServer,
    SigningKey,
    id_token,
    make_key,
    serve_keys,
)

OTHER_ISSUER = "https://issuer.example.test"


@pytest.fixture(scope="module")
def keys() -> Iterator[dict[str, SigningKey]]:
    yield {kid: make_key(kid) for kid in ("k1", "k2", "impostor")}


@pytest.fixture
async def server(keys: dict[str, SigningKey]) -> AsyncIterator[KeyServer]:
    state = KeyServer(certs={"k1": keys["k1"].cert_pem}, jwks=[keys["k2"]])
    async for s in serve_keys(state):
        yield s


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def verifier(server: KeyServer, clock: Clock | None = None, **kw: object) -> OidcVerifier:
    config = OidcConfig(
        audience=AUDIENCE,
        issuers={GOOGLE_ISSUER: server.certs_url, OTHER_ISSUER: server.jwks_url},
        **kw,  # type: ignore[arg-type]
    )
    return OidcVerifier(config, clock=clock or time.time)


async def refused(v: OidcVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        await v.verify_token(token)
    return info.value


async def test_a_good_token_gives_its_verified_email(
    server: KeyServer, keys: dict[str, SigningKey]
) -> None:
    v = verifier(server)
    try:
        got = await v.verify(f"Bearer {id_token(keys['k1'], email='Alice@Example.com')}")
        assert (got.email, got.email_verified, got.issuer) == (
            "Alice@Example.com",
            True,
            GOOGLE_ISSUER,
        )
    finally:
        await v.close()


async def test_the_audience_must_be_the_configured_one(
    server: KeyServer, keys: dict[str, SigningKey]
) -> None:
    v = verifier(server)
    try:
        error = await refused(v, id_token(keys["k1"], aud="https://other.example.test"))
        assert error.reason == "TOKEN_INVALID"
        assert "audience" in error.message.lower()
    finally:
        await v.close()


def test_an_audience_is_required() -> None:
    with pytest.raises(ValueError, match="audience"):
        OidcVerifier(OidcConfig(audience=""))


async def test_an_expired_token_is_token_expired(
    server: KeyServer, keys: dict[str, SigningKey]
) -> None:
    v = verifier(server)
    now = int(time.time())
    try:
        error = await refused(v, id_token(keys["k1"], iat=now - 7200, exp=now - 3600))
        assert error.reason == "TOKEN_EXPIRED"
    finally:
        await v.close()


async def test_a_token_living_longer_than_the_bound_is_refused(
    server: KeyServer, keys: dict[str, SigningKey]
) -> None:
    v = verifier(server, max_token_lifetime=3600)
    now = int(time.time())
    try:
        error = await refused(v, id_token(keys["k1"], iat=now, exp=now + 10 * 365 * 86400))
        assert error.reason == "TOKEN_INVALID"
        assert "lives" in error.message
        # Backdated iat to look short-lived, but expiring far ahead of now: refused too.
        error = await refused(v, id_token(keys["k1"], iat=now + 86400, exp=now + 86400 + 60))
        assert error.reason == "TOKEN_INVALID"
        ok = await v.verify_token(id_token(keys["k1"], iat=now, exp=now + 3600))
        assert ok.email_verified
    finally:
        await v.close()


async def test_an_unknown_issuer_is_refused(server: KeyServer, keys: dict[str, SigningKey]) -> None:
    v = verifier(server)
    try:
        error = await refused(v, id_token(keys["k1"], iss="https://evil.example.test"))
        assert error.reason == "TOKEN_INVALID"
        assert "issuer" in error.message
    finally:
        await v.close()


async def test_an_issuer_is_checked_with_its_own_keys(
    server: KeyServer, keys: dict[str, SigningKey]
) -> None:
    """k2 is published only in the other issuer's JWKS: a Google-issuer token
    signed with it fails; the same key under the other issuer passes."""
    v = verifier(server)
    try:
        assert (await refused(v, id_token(keys["k2"]))).reason == "TOKEN_INVALID"
        got = await v.verify_token(id_token(keys["k2"], iss=OTHER_ISSUER))
        assert got.issuer == OTHER_ISSUER
    finally:
        await v.close()


@pytest.mark.parametrize("value", ["true", 1, None, "True"])
async def test_email_verified_must_be_the_boolean_true(
    server: KeyServer, keys: dict[str, SigningKey], value: object
) -> None:
    v = verifier(server)
    try:
        got = await v.verify_token(id_token(keys["k1"], email_verified=value))
        assert got.email_verified is False
    finally:
        await v.close()


async def test_a_bad_signature_is_refused(server: KeyServer, keys: dict[str, SigningKey]) -> None:
    v = verifier(server)
    try:
        forged = id_token(keys["impostor"], kid="k1")  # claims k1, signed by another key
        assert (await refused(v, forged)).reason == "TOKEN_INVALID"
        good = id_token(keys["k1"])
        head, _body, sig = good.split(".")
        tampered = id_token(keys["k1"], email="mallory@example.com").split(".")[1]
        assert (await refused(v, f"{head}.{tampered}.{sig}")).reason == "TOKEN_INVALID"
    finally:
        await v.close()


async def test_an_unknown_key_id_refetches_once_then_fails(
    server: KeyServer, keys: dict[str, SigningKey]
) -> None:
    v = verifier(server)
    try:
        await v.verify_token(id_token(keys["k1"]))
        assert server.hits == 1
        v.certs_for(GOOGLE_ISSUER).min_refetch = 0.0
        assert (await refused(v, id_token(keys["impostor"]))).reason == "TOKEN_INVALID"
        assert server.hits == 2  # one early refetch for the unknown kid
    finally:
        await v.close()


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "x" * 20000])
async def test_garbage_is_token_invalid(server: KeyServer, token: str) -> None:
    v = verifier(server)
    try:
        assert (await refused(v, token)).reason == "TOKEN_INVALID"
    finally:
        await v.close()


async def test_a_verified_token_is_cached_until_it_expires(
    server: KeyServer, keys: dict[str, SigningKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    v = verifier(server, clock)
    calls = 0
    from google.oauth2 import id_token as google_id_token

    real = google_id_token.verify_token

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(google_id_token, "verify_token", counting)
    now = int(clock.now)
    token = id_token(keys["k1"], iat=now, exp=now + 600)
    try:
        first = await v.verify_token(token)
        for _ in range(5):
            assert await v.verify_token(token) == first
        assert calls == 1
        assert v.cache.hits == 5
        # At exp the entry is gone: the token is verified anew (google-auth
        # judges its expiry on the real clock, so here it passes again).
        clock.now = now + 600
        await v.verify_token(token)
        assert calls == 2
    finally:
        await v.close()


async def test_a_refused_token_is_not_cached(
    server: KeyServer, keys: dict[str, SigningKey]
) -> None:
    v = verifier(server)
    try:
        bad = id_token(keys["k1"], aud="https://other.example.test")
        for _ in range(2):
            await refused(v, bad)
        assert len(v.cache) == 0
    finally:
        await v.close()
