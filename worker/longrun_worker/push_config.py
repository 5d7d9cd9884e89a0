"""Settings of the push endpoint (longrun_worker.push); no heavy imports, so the pull
worker's CLI can declare the push options without loading aiohttp."""

from __future__ import annotations

from dataclasses import dataclass, field

from longrun_core.auth.oidc_limits import (
    DEFAULT_MAX_TOKEN_LIFETIME,
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
    MAX_CLOCK_SKEW,
    MAX_TOKEN_LIFETIME_LIMIT,
)

__all__ = [
    "AUTH_MODES",
    "DEFAULT_MAX_TOKEN_LIFETIME",
    "GOOGLE_CERTS_URL",
    "GOOGLE_ISSUERS",
    "MAX_CLOCK_SKEW",
    "MAX_TOKEN_LIFETIME_LIMIT",
    "AuthSettings",
    "PushSettings",
]

AUTH_MODES = ("oidc", "none")
#: Message ids of settled pushes remembered (per process) to ack replays at once.
DEFAULT_REPLAY_CACHE = 10_000
MAX_REPLAY_CACHE = 1_000_000


@dataclass(frozen=True)
class AuthSettings:
    mode: str = "oidc"  # oidc | none
    #: Expected `aud` claim: required in oidc mode (the push subscription's
    #: --push-auth-token-audience, by default its endpoint URL). Never derived
    #: from the request: Host and X-Forwarded-Proto are the caller's to choose.
    audience: str | None = None
    #: Service-account emails allowed to push (compared case-insensitively).
    allowed_emails: tuple[str, ...] = ()
    certs_url: str = GOOGLE_CERTS_URL
    #: Accepted `iss` claims (Google's two spellings unless another OIDC
    #: issuer is configured together with its certs / JWKS URL).
    issuers: tuple[str, ...] = GOOGLE_ISSUERS
    #: Seconds of slack on the token's iat / exp and on its lifetime.
    clock_skew: int = 10
    #: Longest `exp - iat` accepted, in seconds; a token that claims to live
    #: longer (or expires later than that from now) is refused.
    max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME

    def check(self) -> None:
        """Raise ValueError for a configuration that cannot work or is unsafe."""
        if self.mode not in AUTH_MODES:
            raise ValueError(f"push auth must be one of {', '.join(AUTH_MODES)}, not {self.mode!r}")
        if not 0 <= self.clock_skew <= MAX_CLOCK_SKEW:
            raise ValueError(f"push clock skew must be 0..{MAX_CLOCK_SKEW} seconds")
        if not 60 <= self.max_token_lifetime <= MAX_TOKEN_LIFETIME_LIMIT:
            raise ValueError(f"push max token lifetime must be 60..{MAX_TOKEN_LIFETIME_LIMIT} s")
        if self.mode != "oidc":
            return
        if not self.audience:
            raise ValueError(
                "push auth oidc needs the expected token audience (--push-audience): the "
                "push subscription's --push-auth-token-audience, by default its push "
                "endpoint URL, e.g. https://worker-abc123-uc.a.run.app/push"
            )
        if not self.allowed_emails:
            raise ValueError(
                "push auth oidc needs at least one allowed service account "
                "(--push-allowed-sa): any Google account can mint a token for any audience; "
                "use --push-auth none only where nothing but Pub/Sub can reach the endpoint"
            )
        if not self.issuers or not all(self.issuers):
            raise ValueError("push auth oidc needs at least one token issuer (--push-issuer)")


@dataclass(frozen=True)
class PushSettings:
    path: str = "/push"
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: Status for a nack: any non-2xx makes Pub/Sub redeliver.
    nack_status: int = 503
    #: How many settled message ids this process remembers (0: none); a push
    #: of one of them is acked without touching the store.
    replay_cache: int = DEFAULT_REPLAY_CACHE

    def check(self) -> None:
        self.auth.check()
        if not 0 <= self.replay_cache <= MAX_REPLAY_CACHE:
            raise ValueError(f"push replay cache must be 0..{MAX_REPLAY_CACHE} message ids")
