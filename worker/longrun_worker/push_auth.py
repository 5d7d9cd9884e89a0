"""Who is pushing: verify the OIDC token Pub/Sub attaches to push requests.

A push subscription created with `--push-auth-service-account=SA` sends
`Authorization: Bearer <JWT>`, a Google-signed ID token whose claims name the
service account (`email`, `email_verified`), the audience (`aud`: the
subscription's `--push-auth-token-audience`, by default the endpoint URL) and
the issuer (`iss`: accounts.google.com). A request passes when

* the token's signature verifies against the issuer's public keys
  (`certs_url`: Google's `{key id: PEM certificate}` document, or any
  issuer's JWK set, converted here to PEM; cached for the Cache-Control
  max-age of their response and fetched again early when a token names a
  key id not in the cache: key rotation), it has not expired and was not
  issued in the future (`clock_skew` seconds of slack), else 401;
* its audience is the configured one, exactly (else 401). The audience is
  always configured: never derived from the request's Host or
  X-Forwarded-Proto, which whoever sends the request chooses;
* its issuer is one of `issuers` (else 401);
* it lives no longer than `max_token_lifetime`: `exp - iat` and `exp - now`
  at most that plus `clock_skew` (else 401; Google's tokens live an hour, a
  token valid for years is a stolen signing key's or a misissued one);
* its `email` is one of the allowed service accounts and `email_verified` is
  the JSON boolean true (the string "true" is not) (else 403).

Anyone can mint a Google-signed token for any audience, so the audience alone
proves nothing: oidc mode refuses to start without allowed service accounts.
Verification itself is `google.oauth2.id_token.verify_token`; the certificates
are fetched here with aiohttp (no blocking I/O on the loop) and handed to it
through a transport that serves the cached response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.auth import exceptions as gauth_exceptions
from google.auth import transport
from google.oauth2 import id_token

from longrun_worker.push_config import AuthSettings

log = logging.getLogger("longrun.push")

#: Certificates are kept this long when their response has no max-age.
DEFAULT_CERTS_TTL = 300.0
#: At most one early refetch (unknown key id) per this many seconds.
MIN_REFETCH_INTERVAL = 30.0
CERTS_FETCH_TIMEOUT = 10.0

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


class Unauthenticated(Exception):
    """No token, or not a valid one for this endpoint: HTTP 401."""


class PermissionDenied(Exception):
    """A valid token from an identity that may not push here: HTTP 403."""


class CertsUnavailable(Exception):
    """The certificates could not be fetched (our side): HTTP 503, retried."""


@dataclass(frozen=True)
class Identity:
    email: str
    subject: str


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


@dataclass
class _Certs:
    body: bytes
    key_ids: frozenset[str]
    expires: float
    fetched: float


class CertsCache:
    """Google's public certificates, fetched with aiohttp and cached for
    their Cache-Control max-age. A failed fetch keeps using stale ones."""

    def __init__(
        self,
        url: str,
        *,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._session = session
        self._clock = clock
        self._certs: _Certs | None = None
        self._lock = asyncio.Lock()
        self.min_refetch = MIN_REFETCH_INTERVAL
        #: How many times the certificates were fetched (observability, tests).
        self.fetches = 0

    async def get(self, *, refetch: bool = False) -> _Certs:
        """The cached certificates; fetched when missing or expired, or with
        `refetch` unless they were fetched within `min_refetch` seconds."""
        async with self._lock:
            now = self._clock()
            certs = self._certs
            if (
                certs is not None
                and now < certs.expires
                and (not refetch or now - certs.fetched < self.min_refetch)
            ):
                return certs
            try:
                self._certs = await self._fetch(now)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if certs is None:
                    raise CertsUnavailable(f"cannot fetch {self.url}: {exc}") from exc
                log.warning("cannot refresh %s (%s); using the cached certificates", self.url, exc)
                # Keep them a little longer rather than fail every push; retry later.
                certs.fetched, certs.expires = now, now + max(self.min_refetch, 1.0)
                return certs
            return self._certs

    async def _fetch(self, now: float) -> _Certs:
        self.fetches += 1
        timeout = aiohttp.ClientTimeout(total=CERTS_FETCH_TIMEOUT)
        async with self._session().get(self.url, timeout=timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = await resp.read()
            cache_control = resp.headers.get("Cache-Control", "")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("the certificates are not a JSON object")
        if "keys" in doc:  # a JWK set: served to google-auth as {kid: PEM public key}
            doc = jwks_to_pem(doc)
            body = json.dumps(doc).encode()
        key_ids = frozenset(doc)
        match = _MAX_AGE.search(cache_control)
        ttl = float(match.group(1)) if match else DEFAULT_CERTS_TTL
        return _Certs(body=body, key_ids=key_ids, expires=now + ttl, fetched=now)


_EC_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}


def _b64_int(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("not a base64url string")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def jwks_to_pem(jwks: Mapping[str, Any]) -> dict[str, str]:
    """An OIDC issuer's JWK set as `{kid: PEM public key}` (the form
    google-auth verifies with, like Google's certificates). Signing keys of
    type RSA and EC (P-256, P-384) with a `kid` are kept; others are skipped."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ValueError("the JWK set has no `keys` list")
    out: dict[str, str] = {}
    for jwk in keys:
        if not isinstance(jwk, dict) or not jwk.get("kid") or jwk.get("use") not in (None, "sig"):
            continue
        try:
            public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
            if jwk.get("kty") == "RSA":
                public = rsa.RSAPublicNumbers(_b64_int(jwk["e"]), _b64_int(jwk["n"])).public_key()
            elif jwk.get("kty") == "EC" and jwk.get("crv") in _EC_CURVES:
                curve = _EC_CURVES[jwk["crv"]]
                public = ec.EllipticCurvePublicNumbers(
                    _b64_int(jwk["x"]), _b64_int(jwk["y"]), curve
                ).public_key()
            else:
                continue
        except (KeyError, ValueError, binascii.Error):
            log.warning("skipping JWK %r: not a valid public key", str(jwk.get("kid"))[:64])
            continue
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out[str(jwk["kid"])] = pem.decode()
    return out


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header is not a Bearer token")
    return token


def _key_id(token: str) -> str | None:
    """The `kid` of the token's (unverified) header; None when it has none."""
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise Unauthenticated("the token is not a JWT") from exc
    if not isinstance(header, dict):
        raise Unauthenticated("the token is not a JWT")
    kid = header.get("kid")
    return str(kid) if kid is not None else None


class OidcVerifier:
    """Checks `Authorization: Bearer <ID token>` against AuthSettings."""

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] = time.time) -> None:
        settings.check()
        if settings.audience is None:
            raise ValueError("the OIDC verifier needs an audience")
        self.settings = settings
        self.audience: str = settings.audience
        self._allowed = frozenset(e.lower() for e in settings.allowed_emails)
        self._issuers = frozenset(settings.issuers)
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self.certs = CertsCache(settings.certs_url, session=self._session)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def verify(self, authorization: str | None) -> Identity:
        token = bearer_token(authorization)
        kid = _key_id(token)
        certs = await self.certs.get()
        if kid is not None and kid not in certs.key_ids:
            certs = await self.certs.get(refetch=True)  # keys rotated since the last fetch?
        try:
            claims = id_token.verify_token(
                token,
                _ServedCerts(self.settings.certs_url, certs.body),
                audience=self.audience,
                certs_url=self.settings.certs_url,
                clock_skew_in_seconds=self.settings.clock_skew,
            )
        except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self._issuers:
            raise Unauthenticated(f"token issuer {str(issuer)[:100]!r} is not accepted")
        self._check_lifetime(claims)
        email = claims.get("email")
        if not isinstance(email, str) or not email or claims.get("email_verified") is not True:
            # Only the JSON boolean true: "true" (a string) is some issuer's bug or a forgery.
            raise PermissionDenied("the token carries no verified email")
        if email.lower() not in self._allowed:
            raise PermissionDenied(f"{email} may not push to this endpoint")
        return Identity(email=email, subject=str(claims.get("sub") or ""))

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """Unauthenticated for a token that lives longer than the bound."""
        iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
        if iat is None or exp is None:
            raise Unauthenticated("the token has no numeric iat and exp")
        bound = self.settings.max_token_lifetime + self.settings.clock_skew
        if exp - iat > bound:
            raise Unauthenticated(
                f"the token lives {exp - iat:.0f}s (exp - iat), more than the "
                f"{self.settings.max_token_lifetime}s accepted"
            )
        if exp - self._clock() > bound:
            raise Unauthenticated(
                f"the token expires more than {self.settings.max_token_lifetime}s from now"
            )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
