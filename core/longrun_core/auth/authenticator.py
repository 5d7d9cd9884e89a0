"""Credentials of a call -> its Principal, once per call, at the edge.

`Authenticator.authenticate(metadata, sans=())` looks at

* `authorization: Bearer <token>`: an API key when the token starts with
  `lrk_`, else an OIDC ID token (principal `user:<email>`; the email must be
  verified);
* `x-goog-api-key: lrk_...` (Google's spelling for API keys; principal
  `key:<id>`);
* else the transport identities in `sans` (the subject alternative names of
  a verified mTLS client certificate, passed in by the TLS edge): principal
  `san:<first SAN>`.

Metadata credentials win over the transport identity; both an
`authorization` and an `x-goog-api-key` is refused (which one was meant?).
No credentials at all is UNAUTHENTICATED with reason CREDENTIALS_MISSING;
others: TOKEN_INVALID, TOKEN_EXPIRED, EMAIL_NOT_VERIFIED, API_KEY_INVALID,
API_KEY_REVOKED, API_KEY_EXPIRED, CREDENTIALS_CONFLICT, and the method that
is not configured: OIDC_NOT_CONFIGURED, API_KEYS_NOT_CONFIGURED.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from longrun_core.access import Principal
from longrun_core.auth.api_keys import ApiKeyVerifier, looks_like_key
from longrun_core.auth.oidc import OidcVerifier, bearer_token
from longrun_core.auth.policy import principal_for_email
from longrun_core.errors import Unauthenticated

AUTHORIZATION = "authorization"
API_KEY_HEADER = "x-goog-api-key"


def _text(value: str | bytes) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


class Authenticator:
    def __init__(
        self,
        *,
        oidc: OidcVerifier | None = None,
        api_keys: ApiKeyVerifier | None = None,
        accept_sans: bool = False,
    ) -> None:
        self.oidc = oidc
        self.api_keys = api_keys
        #: Whether transport identities (mTLS SANs) may authenticate a call.
        self.accept_sans = accept_sans

    @property
    def configured(self) -> bool:
        return self.oidc is not None or self.api_keys is not None or self.accept_sans

    async def authenticate(
        self, metadata: Iterable[tuple[str, str | bytes]], sans: Sequence[str] = ()
    ) -> Principal:
        authorization: str | None = None
        api_key: str | None = None
        for key, value in metadata:
            name = key.lower()
            if name == AUTHORIZATION:
                if authorization is not None:
                    raise _conflict()
                authorization = _text(value)
            elif name == API_KEY_HEADER:
                if api_key is not None:
                    raise _conflict()
                api_key = _text(value)
        if authorization is not None and api_key is not None:
            raise _conflict()
        if api_key is not None:
            return await self._api_key(api_key.strip())
        if authorization is not None:
            token = bearer_token(authorization)
            if looks_like_key(token):
                return await self._api_key(token)
            return await self._id_token(token)
        if sans and self.accept_sans:
            return Principal(f"san:{sans[0]}")
        raise Unauthenticated(
            "this server requires credentials: `authorization: Bearer <ID token or API key>` "
            "or `x-goog-api-key: <API key>`",
            reason="CREDENTIALS_MISSING",
        )

    async def _api_key(self, text: str) -> Principal:
        if self.api_keys is None:
            raise Unauthenticated(
                "API keys are not enabled on this server", reason="API_KEYS_NOT_CONFIGURED"
            )
        key = await self.api_keys.verify(text)
        return Principal(key.principal_id)

    async def _id_token(self, token: str) -> Principal:
        if self.oidc is None:
            raise Unauthenticated(
                "ID tokens are not accepted by this server (no --oidc-audience)",
                reason="OIDC_NOT_CONFIGURED",
            )
        verified = await self.oidc.verify_token(token)
        if not verified.email or not verified.email_verified:
            raise Unauthenticated(
                "the token carries no verified email (email_verified must be true)",
                reason="EMAIL_NOT_VERIFIED",
            )
        return Principal(principal_for_email(verified.email))


def _conflict() -> Unauthenticated:
    return Unauthenticated(
        "send one credential: an `authorization` header or an `x-goog-api-key`, not several",
        reason="CREDENTIALS_CONFLICT",
    )
