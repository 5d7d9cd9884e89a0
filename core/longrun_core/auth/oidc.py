"""Verify OIDC ID tokens (`authorization: Bearer <JWT>`): the one verifier
behind the API's authentication and the push worker's endpoint.

A token passes when

* its issuer (`iss`) is one of the configured issuers, and its signature
  verifies against that issuer's keys (`certs.CertsCache`: Google's
  certificates URL for Google's two issuer spellings by default, any other
  issuer by its JWKS URL). The unverified `iss` only picks which keys to try;
  the verified claims must name the same issuer;
* it has not expired and was not issued in the future (`clock_skew` seconds
  of slack);
* its audience is the configured one, exactly. The audience is always
  configured, never derived from a request;
* it lives no longer than `max_token_lifetime`: `exp - iat` and `exp - now`
  at most that plus `clock_skew` (Google's tokens live an hour; a token valid
  for years is a stolen signing key's or a misissued one).

Whether the email is verified (`email_verified` must be the JSON boolean
true, the string "true" is not) is reported in `VerifiedToken` for the
caller to require: the API makes `user:<email>` principals only of verified
emails, the push endpoint answers 403 otherwise.

Verification itself is `google.oauth2.id_token.verify_token`, handed the
cached keys through a transport that serves them. Verified tokens are cached
by sha256(token) until their `exp` (`token_cache.TokenCache`).

Failures raise `longrun_core.errors.Unauthenticated` with reason
TOKEN_INVALID or TOKEN_EXPIRED; unreachable keys raise `CertsUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.auth import exceptions as gauth_exceptions
from google.auth import transport
from google.oauth2 import id_token

from longrun_core.auth.certs import CertsCache
from longrun_core.auth.oidc_limits import (
    DEFAULT_CLOCK_SKEW,
    DEFAULT_MAX_TOKEN_LIFETIME,
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
    MAX_CLOCK_SKEW,
    MAX_TOKEN_LIFETIME_LIMIT,
)
from longrun_core.auth.token_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, TokenCache
from longrun_core.errors import Unauthenticated

#: Longest token accepted (bytes); Google's are about 1 KiB.
MAX_TOKEN_BYTES = 16 * 1024

TOKEN_INVALID = "TOKEN_INVALID"
TOKEN_EXPIRED = "TOKEN_EXPIRED"


@dataclass(frozen=True)
class OidcConfig:
    """What a token must be to pass (see the module doc)."""

    audience: str
    #: issuer -> the URL of its keys (Google's certs document or a JWK set).
    issuers: Mapping[str, str] = field(
        default_factory=lambda: dict.fromkeys(GOOGLE_ISSUERS, GOOGLE_CERTS_URL)
    )
    clock_skew: int = DEFAULT_CLOCK_SKEW
    max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME
    #: Bounds of the verified-token cache (0 entries: no cache).
    cache_entries: int = DEFAULT_MAX_ENTRIES
    cache_bytes: int = DEFAULT_MAX_BYTES

    def check(self) -> None:
        if not self.audience:
            raise ValueError("an OIDC audience is required (the exact `aud` tokens must carry)")
        if not self.issuers or not all(self.issuers) or not all(self.issuers.values()):
            raise ValueError("at least one OIDC issuer with its keys URL is required")
        if not 0 <= self.clock_skew <= MAX_CLOCK_SKEW:
            raise ValueError(f"the token clock skew must be 0..{MAX_CLOCK_SKEW} seconds")
        if not 60 <= self.max_token_lifetime <= MAX_TOKEN_LIFETIME_LIMIT:
            raise ValueError(f"the max token lifetime must be 60..{MAX_TOKEN_LIFETIME_LIMIT} s")


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str
    subject: str
    #: The `email` claim ("" when absent) and whether `email_verified` is true.
    email: str
    email_verified: bool
    expires: float


class _ServedResponse(transport.Response):
    def __init__(self, body: bytes) -> None:
        self._body = body

    @property
    def status(self) -> int:
        return 200

    @property
    def headers(self) -> Mapping[str, str]:
        return {"content-type": "application/json"}

    @property
    def data(self) -> bytes:
        return self._body


class _ServedCerts(transport.Request):
    """A google-auth transport that answers the certs URL from the cache."""

    def __init__(self, url: str, body: bytes) -> None:
        self._url = url
        self._body = body

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> transport.Response:
        if url != self._url or method != "GET":
            raise ValueError(f"unexpected request {method} {url}")
        return _ServedResponse(self._body)


def bearer_token(authorization: str | None) -> str:
    """The token of an `authorization: Bearer <token>` value."""
    if not authorization:
        raise Unauthenticated("no authorization header", reason="CREDENTIALS_MISSING")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "the authorization header is not `Bearer <token>`", reason=TOKEN_INVALID
        )
    return token


def _segment(token: str, index: int) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthenticated("the token is not a JWT", reason=TOKEN_INVALID)
    text = parts[index]
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise Unauthenticated("the token is not a JWT", reason=TOKEN_INVALID) from exc
    if not isinstance(value, dict):
        raise Unauthenticated("the token is not a JWT", reason=TOKEN_INVALID)
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class OidcVerifier:
    """Verifies ID tokens against an `OidcConfig`; one per process."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        clock: Callable[[], float] = time.time,
        session: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.audience = config.audience
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        factory = session or self._session
        caches: dict[str, CertsCache] = {}
        self._keys: dict[str, CertsCache] = {}
        for issuer, url in config.issuers.items():
            if url not in caches:
                caches[url] = CertsCache(url, session=factory)
            self._keys[issuer] = caches[url]
        self.cache: TokenCache[VerifiedToken] = TokenCache(
            max_entries=config.cache_entries, max_bytes=config.cache_bytes, clock=clock
        )

    def certs_for(self, issuer: str) -> CertsCache:
        return self._keys[issuer]

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def verify(self, authorization: str | None) -> VerifiedToken:
        """Verify the token of an `authorization: Bearer` value."""
        return await self.verify_token(bearer_token(authorization))

    async def verify_token(self, token: str) -> VerifiedToken:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(
                f"the token is longer than {MAX_TOKEN_BYTES} bytes", reason=TOKEN_INVALID
            )
        verified = await self._verify_uncached(token)
        self.cache.put(token, verified, verified.expires, size=len(verified.email) * 2 + 200)
        return verified

    async def _verify_uncached(self, token: str) -> VerifiedToken:
        header = _segment(token, 0)
        unverified_iss = _segment(token, 1).get("iss")
        if not isinstance(unverified_iss, str) or unverified_iss not in self._keys:
            raise Unauthenticated(
                f"token issuer {str(unverified_iss)[:100]!r} is not accepted", reason=TOKEN_INVALID
            )
        keys = self._keys[unverified_iss]
        kid = header.get("kid")
        certs = await keys.get()
        if kid is not None and str(kid) not in certs.key_ids:
            certs = await keys.get(refetch=True)  # keys rotated since the last fetch?
        try:
            claims = id_token.verify_token(
                token,
                _ServedCerts(keys.url, certs.body),
                audience=self.audience,
                certs_url=keys.url,
                clock_skew_in_seconds=self.config.clock_skew,
            )
        except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
            expired = "expired" in str(exc).lower()
            raise Unauthenticated(
                f"invalid token: {str(exc)[:300]}",
                reason=TOKEN_EXPIRED if expired else TOKEN_INVALID,
            ) from exc
        issuer = claims.get("iss")
        if issuer != unverified_iss:  # pragma: no cover - the signature covers iss
            raise Unauthenticated("the token's issuer changed", reason=TOKEN_INVALID)
        expires = self._check_lifetime(claims)
        email = claims.get("email")
        return VerifiedToken(
            issuer=unverified_iss,
            subject=str(claims.get("sub") or ""),
            email=email if isinstance(email, str) else "",
            # Only the JSON boolean true: "true" (a string) is some issuer's bug or a forgery.
            email_verified=claims.get("email_verified") is True,
            expires=expires,
        )

    def _check_lifetime(self, claims: Mapping[str, Any]) -> float:
        """The token's exp; Unauthenticated if it lives longer than the bound."""
        iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
        if iat is None or exp is None:
            raise Unauthenticated("the token has no numeric iat and exp", reason=TOKEN_INVALID)
        bound = self.config.max_token_lifetime + self.config.clock_skew
        if exp - iat > bound:
            raise Unauthenticated(
                f"the token lives {exp - iat:.0f}s (exp - iat), more than the "
                f"{self.config.max_token_lifetime}s accepted",
                reason=TOKEN_INVALID,
            )
        if exp - self._clock() > bound:
            raise Unauthenticated(
                f"the token expires more than {self.config.max_token_lifetime}s from now",
                reason=TOKEN_INVALID,
            )
        return exp
