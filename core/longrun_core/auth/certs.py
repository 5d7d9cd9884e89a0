"""An issuer's public keys for verifying ID tokens: Google's `{key id: PEM
certificate}` document or any OIDC issuer's JWK set (converted to PEM),
fetched with aiohttp (no blocking I/O on the loop) and cached for the
Cache-Control max-age of their response. A token naming a key id not in the
cache makes one early refetch (key rotation), at most every `min_refetch`
seconds. A failed refresh keeps using the stale keys."""

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

from longrun_core.errors import Unavailable

log = logging.getLogger("longrun.auth")

#: Certificates are kept this long when their response has no max-age.
DEFAULT_CERTS_TTL = 300.0
#: At most one early refetch (unknown key id) per this many seconds.
MIN_REFETCH_INTERVAL = 30.0
CERTS_FETCH_TIMEOUT = 10.0

_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


class CertsUnavailable(Unavailable):
    """The issuer's keys could not be fetched (our side, retryable)."""

    default_reason = "CERTS_UNAVAILABLE"


@dataclass
class Certs:
    #: `{key id: PEM}` as JSON (what google-auth's verify_token reads).
    body: bytes
    key_ids: frozenset[str]
    expires: float
    fetched: float


class CertsCache:
    """One issuer's keys, fetched with aiohttp and cached."""

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
        self._certs: Certs | None = None
        self._lock = asyncio.Lock()
        self.min_refetch = MIN_REFETCH_INTERVAL
        #: How many times the certificates were fetched (observability, tests).
        self.fetches = 0

    async def get(self, *, refetch: bool = False) -> Certs:
        """The cached certificates; fetched when missing or expired, or with
        `refetch` unless they were fetched within `min_refetch` seconds."""
        certs = self._certs
        now = self._clock()
        if certs is not None and now < certs.expires and not refetch:
            return certs  # the common case: no lock
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
                    raise CertsUnavailable(
                        f"cannot fetch the token issuer's keys from {self.url}: {exc}"
                    ) from exc
                log.warning("cannot refresh %s (%s); using the cached certificates", self.url, exc)
                # Keep them a little longer rather than fail every call; retry later.
                certs.fetched, certs.expires = now, now + max(self.min_refetch, 1.0)
                return certs
            return self._certs

    async def _fetch(self, now: float) -> Certs:
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
        return Certs(body=body, key_ids=key_ids, expires=now + ttl, fetched=now)


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
