"""The Python clients' ChannelSecurity against a stub server that reports
the metadata and client certificate it saw: bearer tokens, API keys, Google
ID tokens from Application Default Credentials, TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.longrunning import operations_pb2

from longrun_client import AsyncClient, ChannelSecurity, Client, CredentialsError, Unavailable
from longrun_client.credentials import GoogleIdToken, is_loopback_target
from longrun_core.settings import TlsSettings
from longrun_server.tls import CertificateFiles, grpc_server_credentials, peer_sans
from tests.support.certs import CertificateAuthority

SANS = ["cli.example", "spiffe://longrun.test/cli"]


@dataclass
class Stub:
    ca: CertificateAuthority
    plain: int
    secure: int
    mtls: int
    seen: list[dict[str, Any]] = field(default_factory=list)

    def last(self) -> dict[str, Any]:
        return self.seen[-1]


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    ca = CertificateAuthority(tmp_path / "pki")
    pair = ca.server()
    files = CertificateFiles(TlsSettings(pair.cert, pair.key))
    mtls_files = CertificateFiles(TlsSettings(pair.cert, pair.key, ca.cert_file, "require"))
    seen: list[dict[str, Any]] = []

    async def get(
        request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> operations_pb2.Operation:
        metadata = context.invocation_metadata() or ()
        seen.append(
            {
                "authorization": [v for k, v in metadata if k == "authorization"],
                "api_key": [v for k, v in metadata if k == "x-goog-api-key"],
                "sans": peer_sans(context),
            }
        )
        return operations_pb2.Operation(name=request.name, done=True)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "google.longrunning.Operations",
                {
                    "GetOperation": grpc.unary_unary_rpc_method_handler(
                        get,
                        request_deserializer=operations_pb2.GetOperationRequest.FromString,
                        response_serializer=operations_pb2.Operation.SerializeToString,
                    )
                },
            ),
        )
    )
    plain = server.add_insecure_port("127.0.0.1:0")
    secure = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(files))
    mtls = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(mtls_files))
    running = Stub(ca, plain, secure, mtls, seen)
    await server.start()
    try:
        yield running
    finally:
        await server.stop(0)


def _sync_get(target: str, security: ChannelSecurity) -> str:
    with Client(target, security=security) as client:
        return str(client.get("operations/x").name)


async def _get(target: str, security: ChannelSecurity) -> str:
    """The sync client, off the loop that runs the stub server."""
    return await asyncio.to_thread(_sync_get, target, security)


async def test_plaintext_loopback_gets_token_and_api_key_by_interceptor(stub: Stub) -> None:
    security = ChannelSecurity(token="tok-1", api_key="key-1")
    assert await _get(f"127.0.0.1:{stub.plain}", security) == "operations/x"
    assert stub.last() == {"authorization": ["Bearer tok-1"], "api_key": ["key-1"], "sans": []}


async def test_the_async_client_sends_them_too(stub: Stub) -> None:
    async with AsyncClient(
        f"localhost:{stub.plain}", security=ChannelSecurity(api_key="key-2")
    ) as client:
        assert (await client.get("operations/y")).name == "operations/y"
    assert stub.last()["api_key"] == ["key-2"]
    async with AsyncClient(
        f"localhost:{stub.secure}",
        security=ChannelSecurity(ca_file=stub.ca.cert_file, token="tok-3"),
    ) as client:
        await client.get("operations/y")
    assert stub.last()["authorization"] == ["Bearer tok-3"]


async def test_tls_with_a_ca_file_carries_call_credentials(stub: Stub) -> None:
    security = ChannelSecurity(ca_file=stub.ca.cert_file, token="tok-2", api_key="key-2")
    assert await _get(f"localhost:{stub.secure}", security) == "operations/x"
    assert stub.last()["authorization"] == ["Bearer tok-2"]
    assert stub.last()["api_key"] == ["key-2"]


async def test_tls_with_system_roots_does_not_trust_a_private_ca(stub: Stub) -> None:
    def call() -> None:
        with Client(
            f"localhost:{stub.secure}", security=ChannelSecurity(tls=True), timeout=5, attempts=1
        ) as client:
            client.get("operations/x")

    with pytest.raises(Unavailable):
        await asyncio.to_thread(call)
    assert stub.seen == []


async def test_mutual_tls_presents_the_client_certificate(stub: Stub) -> None:
    mine = stub.ca.client("cli", *SANS)
    port = stub.mtls
    security = ChannelSecurity(
        ca_file=stub.ca.cert_file, client_cert=mine.cert, client_key=mine.key
    )
    assert await _get(f"localhost:{port}", security) == "operations/x"
    assert stub.last()["sans"] == SANS


def test_credentials_are_not_sent_in_plaintext_off_this_machine() -> None:
    with pytest.raises(CredentialsError, match="refusing to send credentials in plaintext"):
        Client("10.1.2.3:50051", security=ChannelSecurity(token="t"))
    # Without credentials a plaintext channel anywhere is the caller's business.
    Client("10.1.2.3:50051", security=ChannelSecurity()).close()


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("localhost:1", True),
        ("127.0.0.1:1", True),
        ("[::1]:1", True),
        ("unix:/tmp/s", True),
        ("example.com:443", False),
        ("192.168.0.2:1", False),
        ("[2001:db8::1]:1", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def test_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="needs its key"):
        ChannelSecurity(client_cert=tmp_path / "c.crt")
    with pytest.raises(CredentialsError, match="not both"):
        ChannelSecurity(token="t", id_token_audience="https://a")
    assert ChannelSecurity(ca_file=tmp_path / "ca.pem").secure
    assert "secret-token" not in repr(ChannelSecurity(token="secret-token", api_key="k"))


def test_from_env_reads_the_cli_variables(tmp_path: Path) -> None:
    security = ChannelSecurity.from_env(
        {
            "LONGRUN_TLS": "true",
            "LONGRUN_CA_FILE": str(tmp_path / "ca.pem"),
            "LONGRUN_TOKEN": "t",
            "LONGRUN_API_KEY": "k",
        }
    )
    assert security == ChannelSecurity(
        tls=True, ca_file=tmp_path / "ca.pem", token="t", api_key="k"
    )


# ---- Google ID tokens ----


class FakeCredentials:
    """Counts refreshes; `valid` until told otherwise."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.refreshes = 0
        self.is_valid = False

    @property
    def valid(self) -> bool:
        return self.is_valid and self.token is not None

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = f"id-token-{self.refreshes}"
        self.is_valid = True


def test_an_id_token_is_fetched_once_and_refreshed_when_no_longer_valid() -> None:
    credentials = FakeCredentials()
    source = GoogleIdToken("https://aud", credentials=credentials, request=object())
    assert source() == [("authorization", "Bearer id-token-1")]
    assert source() == [("authorization", "Bearer id-token-1")]
    assert credentials.refreshes == 1
    credentials.is_valid = False  # google-auth: within its refresh margin of expiry
    assert source() == [("authorization", "Bearer id-token-2")]


def test_without_google_auth_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "google.oauth2.id_token", None)
    with pytest.raises(CredentialsError, match=r"longrun-client\[google\]"):
        ChannelSecurity(id_token_audience="https://aud").metadata_source()


def _jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


@dataclass
class TokenEndpoint:
    url: str
    #: Lifetime in seconds of the next tokens issued.
    lifetime: float = 3600.0
    issued: list[str] = field(default_factory=list)


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    """A stand-in for oauth2.googleapis.com/token: answers a service account's
    JWT-bearer grant with an ID token."""
    endpoint = TokenEndpoint("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            now = int(time.time())
            token = _jwt(
                {"aud": "https://aud", "iat": now, "exp": now + int(endpoint.lifetime), "n": now}
            )
            endpoint.issued.append(token)
            body = json.dumps({"id_token": token}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/token"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


async def test_id_tokens_from_application_default_credentials(
    stub: Stub, token_endpoint: TokenEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "sa.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "demo",
                "private_key_id": "k1",
                "private_key": key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
                "client_email": "caller@demo.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_endpoint.url,
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    security = ChannelSecurity(ca_file=stub.ca.cert_file, id_token_audience="https://aud")

    def two_calls(target: str, security: ChannelSecurity) -> None:
        with Client(target, security=security) as client:
            client.get("operations/a")
            client.get("operations/b")

    await asyncio.to_thread(two_calls, f"localhost:{stub.secure}", security)
    assert len(token_endpoint.issued) == 1  # cached while valid
    assert [c["authorization"] for c in stub.seen] == [[f"Bearer {token_endpoint.issued[0]}"]] * 2
    # A token that lives less than google-auth's refresh margin is renewed
    # before every call: never sent once it is about to lapse.
    token_endpoint.lifetime = 60
    plaintext = ChannelSecurity(id_token_audience="https://aud")
    await asyncio.to_thread(two_calls, f"127.0.0.1:{stub.plain}", plaintext)
    assert len(token_endpoint.issued) == 3
    assert stub.seen[-1]["authorization"] == [f"Bearer {token_endpoint.issued[-1]}"]
    assert stub.seen[-2]["authorization"] == [f"Bearer {token_endpoint.issued[-2]}"]
