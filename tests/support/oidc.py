"""Local stand-ins for an OIDC issuer: RSA signing keys with certificates,
ID tokens signed with them, and an HTTP server for the certificates
(Google's `{kid: PEM}` form) or a JWK set."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

GOOGLE_ISSUER = "https://accounts.google.com"
AUDIENCE = "https://longrun.example.test"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: bytes
    cert_pem: str
    public: rsa.RSAPublicKey


def make_key(kid: str) -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "longrun test issuer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return SigningKey(
        kid, private_pem, cert.public_bytes(serialization.Encoding.PEM).decode(), key.public_key()
    )


def id_token(
    key: SigningKey,
    *,
    kid: str | None = None,
    email: str = "alice@example.com",
    **overrides: Any,
) -> str:
    """A Google-style ID token signed by `key` (claims overridable; None drops one)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": GOOGLE_ISSUER,
        "aud": AUDIENCE,
        "sub": "1234567890",
        "email": email,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    signer = crypt.RSASigner.from_string(key.private_pem, key_id=kid or key.kid)
    encoded: bytes = jwt.encode(signer, claims)
    return encoded.decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_jwk(key: SigningKey) -> dict[str, str]:
    numbers = key.public.public_numbers()
    return {
        "kty": "RSA",
        "kid": key.kid,
        "use": "sig",
        "alg": "RS256",
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes(3, "big")),
    }


@dataclass
class KeyServer:
    """Serves `certs` at /certs ({kid: PEM}) and `jwks` at /jwks; counts hits."""

    base: str = ""
    certs: dict[str, str] = field(default_factory=dict)
    jwks: list[SigningKey] = field(default_factory=list)
    hits: int = 0

    @property
    def certs_url(self) -> str:
        return f"{self.base}/certs"

    @property
    def jwks_url(self) -> str:
        return f"{self.base}/jwks"


async def serve_keys(state: KeyServer) -> AsyncIterator[KeyServer]:
    async def certs(request: web.Request) -> web.Response:
        state.hits += 1
        return web.json_response(state.certs, headers={"Cache-Control": "max-age=3600"})

    async def jwks(request: web.Request) -> web.Response:
        state.hits += 1
        return web.json_response({"keys": [rsa_jwk(k) for k in state.jwks]})

    app = web.Application()
    app.router.add_get("/certs", certs)
    app.router.add_get("/jwks", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.base = str(server.make_url("")).rstrip("/")
    try:
        yield state
    finally:
        await server.close()


@contextmanager
def certs_served_in_thread(keys: Sequence[SigningKey]) -> Iterator[str]:
    """Serves `keys` as Google's `{kid: PEM}` certificates from a thread (for
    tests whose server is another process and whose test code is
    synchronous); yields the certificates URL."""
    body = json.dumps({k.kid: k.cert_pem for k in keys}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/certs":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no request log on the test's stderr

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    thread = threading.Thread(target=server.serve_forever, name="oidc-certs", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/certs"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
