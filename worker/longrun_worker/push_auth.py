"""Who is pushing: verify the OIDC token Pub/Sub attaches to push requests.

A push subscription created with `--push-auth-service-account=SA` sends
`Authorization: Bearer <JWT>`, a Google-signed ID token whose claims name the
service account (`email`, `email_verified`), the audience (`aud`: the
subscription's `--push-auth-token-audience`, by default the endpoint URL) and
the issuer (`iss`: accounts.google.com). A request passes when

* the token's signature verifies against Google's public certificates
  (`certs_url`, cached for the Cache-Control max-age of their response and
  fetched again early when a token names a key id not in the cache: key
  rotation), it has not expired (`clock_skew` seconds of slack) and its
  audience is the configured one (else 401), its issuer is Google's (else 401);
* and its `email` is one of the allowed service accounts, verified (else 403).

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
from google.auth import exceptions as gauth_exceptions
from google.auth import transport
from google.oauth2 import id_token

from longrun_worker.push_config import GOOGLE_ISSUERS, AuthSettings

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
        if "keys" in doc:  # a JWK set
            key_ids = frozenset(
                str(k.get("kid")) for k in doc["keys"] if isinstance(k, dict) and k.get("kid")
            )
        else:
            key_ids = frozenset(doc)
        match = _MAX_AGE.search(cache_control)
        ttl = float(match.group(1)) if match else DEFAULT_CERTS_TTL
        return _Certs(body=body, key_ids=key_ids, expires=now + ttl, fetched=now)


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
    """Checks `Authorization: Bearer <Google ID token>` against AuthSettings."""

    def __init__(self, settings: AuthSettings) -> None:
        settings.check()
        self.settings = settings
        self._allowed = frozenset(e.lower() for e in settings.allowed_emails)
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

    async def verify(self, authorization: str | None, audience: str) -> Identity:
        token = bearer_token(authorization)
        kid = _key_id(token)
        certs = await self.certs.get()
        if kid is not None and kid not in certs.key_ids:
            certs = await self.certs.get(refetch=True)  # keys rotated since the last fetch?
        try:
            claims = id_token.verify_token(
                token,
                _ServedCerts(self.settings.certs_url, certs.body),
                audience=audience,
                certs_url=self.settings.certs_url,
                clock_skew_in_seconds=self.settings.clock_skew,
            )
        except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthenticated(f"token issuer {claims.get('iss')!r} is not Google")
        email = str(claims.get("email") or "")
        verified = claims.get("email_verified")
        if not email or verified not in (True, "true"):
            raise PermissionDenied("the token carries no verified email")
        if email.lower() not in self._allowed:
            raise PermissionDenied(f"{email} may not push to this endpoint")
        return Identity(email=email, subject=str(claims.get("sub") or ""))
