"""Composition of authentication and authorization for one server process:
from `AuthenticationSettings` to the `Authenticator`, the `Access` policy
the services consult, the interceptor and the ApiKeys service's store.

No authentication configured: `AllowAll`, no interceptor (nothing is added
to a call), no ApiKeys service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from longrun_core.access import Access, AllowAll
from longrun_core.auth.api_keys import ApiKeyVerifier, KeyStore
from longrun_core.auth.authenticator import Authenticator
from longrun_core.auth.oidc import OidcConfig, OidcVerifier
from longrun_core.auth.policy import Policy, PolicyAccess, PolicyFile
from longrun_core.clock import Clock, SystemClock
from longrun_core.settings import AuthenticationSettings
from longrun_server.auth_interceptor import AuthInterceptor, SansOf
from longrun_server.quotas import RateQuota


@dataclass
class AuthSetup:
    access: Access = field(default_factory=AllowAll)
    authenticator: Authenticator | None = None
    interceptor: AuthInterceptor | None = None
    key_store: KeyStore | None = None
    key_verifier: ApiKeyVerifier | None = None
    policy_file: PolicyFile | None = None

    @property
    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [self.interceptor] if self.interceptor is not None else []

    def reload_on_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.policy_file is not None:
            self.policy_file.reload_on_sighup(loop)

    async def start(self) -> None:
        if self.key_store is not None:
            await self.key_store.start()

    async def close(self) -> None:
        if self.authenticator is not None and self.authenticator.oidc is not None:
            await self.authenticator.oidc.close()
        if self.key_store is not None:
            await self.key_store.close()


def build_auth(
    settings: AuthenticationSettings,
    *,
    key_store: KeyStore | None = None,
    clock: Clock | None = None,
    transport_sans: SansOf | None = None,
) -> AuthSetup:
    """`key_store` is required with `settings.api_keys`. `transport_sans`
    (the TLS edge's): accept verified client certificates' SANs as principals
    `san:<value>`, which also makes authentication required."""
    settings.check()
    if not settings.configured and transport_sans is None:
        return AuthSetup()
    oidc = None
    if settings.oidc_audience:
        oidc = OidcVerifier(
            OidcConfig(
                audience=settings.oidc_audience,
                issuers=settings.oidc_issuer_keys(),
                max_token_lifetime=settings.max_token_lifetime,
                cache_entries=settings.token_cache_entries,
            )
        )
    verifier = None
    if settings.api_keys:
        if key_store is None:
            raise ValueError("API keys need a key store")
        verifier = ApiKeyVerifier(
            key_store, clock=clock or SystemClock(), cache_ttl=settings.api_key_cache_ttl
        )
    policy_file = PolicyFile(settings.policy_file) if settings.policy_file else None
    authenticator = Authenticator(
        oidc=oidc, api_keys=verifier, accept_sans=transport_sans is not None
    )

    def policy() -> Policy:
        return policy_file.policy if policy_file is not None else EMPTY_POLICY

    access = PolicyAccess(policy, key_grant=verifier.grant if verifier is not None else None)
    return AuthSetup(
        access=access,
        authenticator=authenticator,
        interceptor=AuthInterceptor(
            authenticator,
            transport_sans=transport_sans,
            rate_quota=RateQuota(settings.quota_requests_per_second, settings.quota_burst),
        ),
        key_store=key_store if settings.api_keys else None,
        key_verifier=verifier,
        policy_file=policy_file,
    )


EMPTY_POLICY = Policy()
