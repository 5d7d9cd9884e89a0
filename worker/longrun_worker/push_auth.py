"""Who is pushing: the OIDC token Pub/Sub attaches to push requests, checked
with the same verifier as the API's (longrun_core.auth.oidc).

A push subscription created with `--push-auth-service-account=SA` sends
`Authorization: Bearer <JWT>`, a Google-signed ID token whose claims name the
service account (`email`, `email_verified`), the audience (`aud`: the
subscription's `--push-auth-token-audience`, by default the endpoint URL) and
the issuer (`iss`: accounts.google.com). A request passes when the token
verifies (signature, expiry, exact audience, issuer, longest lifetime: see
longrun_core.auth.oidc; else 401) and its `email` is one of the allowed
service accounts with `email_verified` the JSON boolean true (else 403).

The audience is always configured: never derived from the request's Host or
X-Forwarded-Proto, which whoever sends the request chooses. Anyone can mint a
Google-signed token for any audience, so the audience alone proves nothing:
oidc mode refuses to start without allowed service accounts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from longrun_core.auth.certs import CertsCache, CertsUnavailable, jwks_to_pem
from longrun_core.auth.oidc import OidcConfig, OidcVerifier
from longrun_core.errors import Unauthenticated
from longrun_worker.push_config import AuthSettings

__all__ = [
    "CertsUnavailable",
    "Identity",
    "PermissionDenied",
    "PushVerifier",
    "Unauthenticated",
    "jwks_to_pem",
]


class PermissionDenied(Exception):
    """A valid token from an identity that may not push here: HTTP 403."""


@dataclass(frozen=True)
class Identity:
    email: str
    subject: str


class PushVerifier:
    """Checks `Authorization: Bearer <ID token>` against AuthSettings."""

    def __init__(self, settings: AuthSettings, *, clock: Callable[[], float] = time.time) -> None:
        settings.check()
        if settings.audience is None:
            raise ValueError("the OIDC verifier needs an audience")
        self.settings = settings
        self.audience: str = settings.audience
        self._allowed = frozenset(e.lower() for e in settings.allowed_emails)
        self.oidc = OidcVerifier(
            OidcConfig(
                audience=settings.audience,
                issuers=dict.fromkeys(settings.issuers, settings.certs_url),
                clock_skew=settings.clock_skew,
                max_token_lifetime=settings.max_token_lifetime,
            ),
            clock=clock,
        )

    @property
    def certs(self) -> CertsCache:
        """The keys every configured issuer's tokens are checked with."""
        return self.oidc.certs_for(self.settings.issuers[0])

    async def close(self) -> None:
        await self.oidc.close()

    async def verify(self, authorization: str | None) -> Identity:
        token = await self.oidc.verify(authorization)
        if not token.email or not token.email_verified:
            raise PermissionDenied("the token carries no verified email")
        if token.email.lower() not in self._allowed:
            raise PermissionDenied(f"{token.email} may not push to this endpoint")
        return Identity(email=token.email, subject=token.subject)
