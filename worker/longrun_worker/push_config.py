"""Settings of the push endpoint (longrun_worker.push); no heavy imports, so the pull
worker's CLI can declare the push options without loading aiohttp."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Google's OAuth2 certificates in `{"key id": "PEM certificate"}` form.
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
AUTH_MODES = ("oidc", "none")


@dataclass(frozen=True)
class AuthSettings:
    mode: str = "oidc"  # oidc | none
    #: Expected `aud` claim; None: the URL the request was sent to
    #: (X-Forwarded-Proto aware), which is Pub/Sub's default audience.
    audience: str | None = None
    #: Service-account emails allowed to push (compared case-insensitively).
    allowed_emails: tuple[str, ...] = ()
    certs_url: str = GOOGLE_CERTS_URL
    #: Seconds of slack on the token's iat / exp.
    clock_skew: int = 10

    def check(self) -> None:
        """Raise ValueError for a configuration that cannot work or is unsafe."""
        if self.mode not in AUTH_MODES:
            raise ValueError(f"push auth must be one of {', '.join(AUTH_MODES)}, not {self.mode!r}")
        if self.mode == "oidc" and not self.allowed_emails:
            raise ValueError(
                "push auth oidc needs at least one allowed service account "
                "(--push-allowed-sa): any Google account can mint a token for any audience; "
                "use --push-auth none only where nothing but Pub/Sub can reach the endpoint"
            )


@dataclass(frozen=True)
class PushSettings:
    path: str = "/push"
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: Status for a nack: any non-2xx makes Pub/Sub redeliver.
    nack_status: int = 503
