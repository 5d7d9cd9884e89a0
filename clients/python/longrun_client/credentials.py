"""How a client reaches the server and who it says it is.

    from longrun_client import Client, ChannelSecurity

    Client("longrun.example.com:443", security=ChannelSecurity(tls=True, token="..."))
    Client("localhost:50051", security=ChannelSecurity(ca_file=Path("ca.pem"),
           client_cert=Path("me.crt"), client_key=Path("me.key")))      # mutual TLS
    Client("run-app.a.run.app:443", security=ChannelSecurity(
           tls=True, id_token_audience="https://run-app.a.run.app"))     # Google ID token

On a TLS channel the credentials travel as gRPC call credentials
(`grpc.composite_channel_credentials`). gRPC sends call credentials over
secure channels only; on a plaintext channel a client interceptor adds the
same metadata, and only to a loopback target (a token sent in plaintext
across a network is a token given away).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import grpc
import grpc.aio

#: The header API keys travel in (the Google convention).
API_KEY_HEADER = "x-goog-api-key"

Metadata = list[tuple[str, str]]


class CredentialsError(ValueError):
    """Client security settings that cannot work (one line to show)."""


class MetadataSource(Protocol):
    """Metadata for the next call. `may_block`: it may do network I/O."""

    @property
    def may_block(self) -> bool: ...

    def __call__(self) -> Metadata: ...


@dataclass(frozen=True)
class StaticMetadata:
    """The same metadata on every call (a bearer token, an API key)."""

    pairs: tuple[tuple[str, str], ...] = field(repr=False)
    may_block: bool = False

    def __call__(self) -> Metadata:
        return list(self.pairs)


class IdTokenCredentials(Protocol):
    """The part of google.auth.credentials.Credentials used here."""

    token: str | None

    @property
    def valid(self) -> bool: ...

    def refresh(self, request: Any) -> None: ...


class GoogleIdToken:
    """`authorization: Bearer <ID token>` for `audience`, from Application
    Default Credentials (a service account key file, the metadata server,
    an impersonated service account). google-auth refreshes the token when
    it is within a few minutes of expiry (Credentials.valid), before it is
    sent, never after it has lapsed."""

    may_block = True

    def __init__(
        self,
        audience: str,
        *,
        credentials: IdTokenCredentials | None = None,
        request: Any = None,
    ) -> None:
        self.audience = audience
        self._lock = threading.Lock()
        if credentials is not None and request is not None:
            self._credentials, self._request = credentials, request
            return
        try:
            import google.auth.exceptions
            import google.auth.transport.requests
            import google.oauth2.id_token
        except ImportError as exc:
            raise CredentialsError(
                "an ID token audience needs google-auth: pip install 'longrun-client[google]'"
            ) from exc
        self._request = request or google.auth.transport.requests.Request()
        try:
            self._credentials = credentials or google.oauth2.id_token.fetch_id_token_credentials(
                audience, request=self._request
            )
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise CredentialsError(
                f"cannot mint ID tokens from Application Default Credentials: {exc}"
            ) from exc

    def token(self) -> str:
        with self._lock:
            if not self._credentials.valid:
                self._credentials.refresh(self._request)
            if not self._credentials.token:
                raise CredentialsError(f"no ID token for audience {self.audience}")
            return self._credentials.token

    def __call__(self) -> Metadata:
        return [("authorization", f"Bearer {self.token()}")]


@dataclass(frozen=True)
class CombinedMetadata:
    sources: tuple[MetadataSource, ...]

    @property
    def may_block(self) -> bool:
        return any(s.may_block for s in self.sources)

    def __call__(self) -> Metadata:
        return [pair for source in self.sources for pair in source()]


class _Plugin(grpc.AuthMetadataPlugin):
    """Call credentials from a MetadataSource (gRPC runs it off the caller's thread)."""

    def __init__(self, source: MetadataSource) -> None:
        self.source = source

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            metadata = self.source()
        except Exception as exc:  # reported to the caller as the call's error
            callback((), exc)
        else:
            callback(tuple(metadata), None)


def is_loopback_target(target: str) -> bool:
    """Whether `target` (host:port, [v6]:port, unix:..., or an `ipv4:`/`ipv6:`
    list of several addresses) stays on this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    target = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if "," in target:
        return all(is_loopback_target(one) for one in target.split(","))
    host = target.rpartition(":")[0] if ":" in target else target
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Target schemes that may name several servers (`ipv4:10.0.0.1:50051,10.0.0.2:50051`,
#: `dns:///longrun.internal:50051` resolving to several addresses).
MULTI_ADDRESS_SCHEMES = ("ipv4:", "ipv6:", "dns:")


def balancing_options(target: str) -> list[tuple[str, Any]]:
    """Channel options spreading calls over every server a target names
    (round_robin; gRPC's default, pick_first, sends everything to one)."""
    if target.startswith(MULTI_ADDRESS_SCHEMES):
        return [("grpc.lb_policy_name", "round_robin")]
    return []


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS settings and caller credentials of a client channel.

    TLS is on with `tls`, or implied by `ca_file` or a client certificate.
    `ca_file`: PEM roots to trust instead of the system's. `client_cert` /
    `client_key`: PEM certificate and key for mutual TLS. `token`: sent as
    `authorization: Bearer TOKEN`. `api_key`: sent as `x-goog-api-key`.
    `id_token_audience`: a Google ID token for this audience from
    Application Default Credentials (needs the `[google]` extra)."""

    tls: bool = False
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    id_token_audience: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise CredentialsError("a client certificate needs its key: give both or neither")
        if self.token and self.id_token_audience:
            raise CredentialsError("give a token or an ID token audience, not both")

    @property
    def secure(self) -> bool:
        return self.tls or self.ca_file is not None or self.client_cert is not None

    @property
    def has_call_credentials(self) -> bool:
        return bool(self.token or self.api_key or self.id_token_audience)

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> ChannelSecurity:
        """From LONGRUN_TLS, LONGRUN_CA_FILE, LONGRUN_CLIENT_CERT,
        LONGRUN_CLIENT_KEY, LONGRUN_TOKEN, LONGRUN_API_KEY and
        LONGRUN_ID_TOKEN_AUDIENCE (the CLI's variables)."""
        e = os.environ if env is None else env

        def path(name: str) -> Path | None:
            return Path(e[name]) if e.get(name) else None

        return ChannelSecurity(
            tls=e.get("LONGRUN_TLS", "").lower() in ("1", "true", "yes", "on"),
            ca_file=path("LONGRUN_CA_FILE"),
            client_cert=path("LONGRUN_CLIENT_CERT"),
            client_key=path("LONGRUN_CLIENT_KEY"),
            token=e.get("LONGRUN_TOKEN") or None,
            api_key=e.get("LONGRUN_API_KEY") or None,
            id_token_audience=e.get("LONGRUN_ID_TOKEN_AUDIENCE") or None,
        )

    def metadata_source(self) -> MetadataSource | None:
        """Where each call's credential metadata comes from (None: no credentials)."""
        sources: list[MetadataSource] = []
        if self.token:
            sources.append(StaticMetadata((("authorization", f"Bearer {self.token}"),)))
        if self.id_token_audience:
            sources.append(GoogleIdToken(self.id_token_audience))
        if self.api_key:
            sources.append(StaticMetadata(((API_KEY_HEADER, self.api_key),)))
        if not sources:
            return None
        return sources[0] if len(sources) == 1 else CombinedMetadata(tuple(sources))

    def ssl_credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_cert),
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, composed with the call credentials; None for plaintext."""
        if not self.secure:
            return None
        credentials = self.ssl_credentials()
        source = self.metadata_source()
        if source is None:
            return credentials
        return grpc.composite_channel_credentials(
            credentials, grpc.metadata_call_credentials(_Plugin(source))
        )

    def _plaintext_source(self, target: str) -> MetadataSource | None:
        source = self.metadata_source()
        if source is not None and not is_loopback_target(target):
            raise CredentialsError(
                f"refusing to send credentials in plaintext to {target}: connect with TLS "
                "(--tls, --ca-file) or to a loopback address"
            )
        return source

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        options = [*balancing_options(target), *options]
        credentials = self.channel_credentials()
        if credentials is not None:
            return grpc.secure_channel(target, credentials, options=list(options))
        channel = grpc.insecure_channel(target, options=list(options))
        source = self._plaintext_source(target)
        if source is None:
            return channel
        return grpc.intercept_channel(channel, MetadataInterceptor(source))

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        options = [*balancing_options(target), *options]
        credentials = self.channel_credentials()
        if credentials is not None:
            return grpc.aio.secure_channel(target, credentials, options=list(options))
        source = self._plaintext_source(target)
        interceptors = [AioMetadataInterceptor(source)] if source is not None else None
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _CallDetails(_Details, grpc.ClientCallDetails):
    pass


class MetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds a MetadataSource's metadata to each call of a plaintext channel."""

    def __init__(self, source: MetadataSource) -> None:
        self.source = source

    def _details(self, details: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(details.metadata or ()), *self.source()]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)


class AioMetadataInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """The asyncio twin of MetadataInterceptor (unary calls: all the client makes)."""

    def __init__(self, source: MetadataSource) -> None:
        self.source = source

    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        extra = await asyncio.to_thread(self.source) if self.source.may_block else self.source()
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), *extra)
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)
