"""TLS in process: a gRPC server on the credentials of server/tls.py, the
HTTPS gateway in front of it over its private Unix socket
(server/gateway_link.py), and a handler that reports what it sees of the
caller: `peer_sans(context)` and `forwarded_sans(metadata, secret)`."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from cryptography import x509
from google.longrunning import operations_pb2, operations_pb2_grpc

from longrun_core.settings import TlsSettings
from longrun_server.gateway_link import (
    MAC_KEY,
    SANS_KEY,
    GatewayLink,
    forwarded_sans,
    forwarding_metadata,
)
from longrun_server.rest import RestGateway, build_routes, served_services
from longrun_server.rest_connections import ConnectionLimits
from longrun_server.tls import (
    CertificateFiles,
    grpc_server_credentials,
    https_context,
    peer_sans,
)
from tests.support.certs import CertificateAuthority, Pair

CLIENT_SANS = ["client-1.example", "spiffe://longrun.test/client-1"]


@dataclass
class Seen:
    """What the handler saw of its callers, last call last."""

    calls: list[dict[str, Any]]


@dataclass
class Running:
    ca: CertificateAuthority
    files: CertificateFiles
    served: Pair
    link: GatewayLink
    port: int
    https: str
    seen: Seen
    client: Pair

    @property
    def target(self) -> str:
        return f"localhost:{self.port}"

    def channel(self, *, cert: Pair | None = None, roots: bytes | None = None) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(
            roots if roots is not None else self.ca.cert_file.read_bytes(),
            cert.key_pem if cert else None,
            cert.cert_pem if cert else None,
        )
        return grpc.aio.secure_channel(self.target, credentials)

    def https_client_context(self, cert: Pair | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert_file))
        if cert is not None:
            context.load_cert_chain(cert.cert, cert.key)
        return context


async def _report(
    request: operations_pb2.GetOperationRequest,
    context: grpc.aio.ServicerContext[Any, Any],
    seen: Seen,
    secret: bytes,
) -> operations_pb2.Operation:
    metadata = context.invocation_metadata() or ()
    call = {
        "peer": peer_sans(context),
        "forwarded": forwarded_sans(metadata, secret),
        "forwarded_here": forwarded_sans(metadata, secret, peer=context.peer()),
        "authorization": [v for k, v in metadata if k == "authorization"],
    }
    seen.calls.append(call)
    return operations_pb2.Operation(name=request.name, done=True)


@asynccontextmanager
async def _start(
    tmp_path: Path, client_auth: str, limits: ConnectionLimits | None = None
) -> AsyncIterator[Running]:
    ca = CertificateAuthority(tmp_path / "pki")
    served = ca.server()
    client = ca.client("client-1", *CLIENT_SANS)
    files = CertificateFiles(
        TlsSettings(
            served.cert,
            served.key,
            ca.cert_file if client_auth != "none" else None,
            client_auth,
        )
    )
    link = GatewayLink.create()
    seen = Seen([])
    server = grpc.aio.server()

    async def get(
        request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> operations_pb2.Operation:
        return await _report(request, context, seen, link.secret)

    handler = grpc.unary_unary_rpc_method_handler(
        get,
        request_deserializer=operations_pb2.GetOperationRequest.FromString,
        response_serializer=operations_pb2.Operation.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "google.longrunning.Operations", {"GetOperation": handler}
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(files))
    assert server.add_insecure_port(link.target)
    await server.start()
    gateway = RestGateway(
        link.target,
        build_routes(served_services()),
        max_wait=60.0,
        grace=0.5,
        forwarding_secret=link.secret,
        limits=limits,
    )
    http_port = await gateway.start("127.0.0.1", 0, https_context(files))
    try:
        yield Running(ca, files, served, link, port, f"https://localhost:{http_port}", seen, client)
    finally:
        await gateway.stop()
        await server.stop(0)
        link.close()


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[Running]:
    async with _start(tmp_path, "none") as running:
        yield running


@pytest.fixture
async def mtls(tmp_path: Path) -> AsyncIterator[Running]:
    async with _start(tmp_path, "require") as running:
        yield running


@pytest.fixture
async def optional_mtls(tmp_path: Path) -> AsyncIterator[Running]:
    async with _start(tmp_path, "optional") as running:
        yield running


async def _get(channel: grpc.aio.Channel, **kw: Any) -> operations_pb2.Operation:
    async with channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        result: operations_pb2.Operation = await stub.GetOperation(
            operations_pb2.GetOperationRequest(name="operations/x"), timeout=10, **kw
        )
        return result


async def _https_get(
    running: Running, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{running.https}/v1/operations/x", ssl=context, headers=headers or {}
        ) as response,
    ):
        return response.status, await response.json()


# ---- gRPC over TLS ----


async def test_a_tls_client_is_served_and_a_plaintext_one_is_not(tls: Running) -> None:
    assert (await _get(tls.channel())).name == "operations/x"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _get(grpc.aio.insecure_channel(tls.target))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(tls.seen.calls) == 1
    assert tls.seen.calls[0]["peer"] == []  # no client certificate asked for


async def test_a_client_that_does_not_trust_the_ca_is_refused(tls: Running, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other", "another CA")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _get(tls.channel(roots=other.cert_file.read_bytes()))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert tls.seen.calls == []


async def test_mtls_required_refuses_a_client_without_a_certificate(mtls: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _get(mtls.channel())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls.seen.calls == []


async def test_mtls_required_refuses_a_certificate_of_another_ca(
    mtls: Running, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path / "other", "another CA").client(
        "stranger", *CLIENT_SANS
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await _get(mtls.channel(cert=stranger))
    assert mtls.seen.calls == []


async def test_mtls_gives_the_handler_the_client_certificate_sans(mtls: Running) -> None:
    await _get(mtls.channel(cert=mtls.client))
    assert mtls.seen.calls[-1]["peer"] == CLIENT_SANS
    other = mtls.ca.client("client-2", "ops@example.com", "client-2.example")
    await _get(mtls.channel(cert=other))
    assert sorted(mtls.seen.calls[-1]["peer"]) == ["client-2.example", "ops@example.com"]


# ---- the HTTPS gateway ----


async def test_https_through_the_gateway(tls: Running) -> None:
    status, body = await _https_get(tls, tls.https_client_context())
    assert (status, body["name"]) == (200, "operations/x")
    # The gateway reached the handler over its private socket: no TLS peer there.
    assert tls.seen.calls[-1] == {
        "peer": [],
        "forwarded": [],
        "forwarded_here": [],
        "authorization": [],
    }


async def test_https_forwards_credentials_headers_only(tls: Running) -> None:
    status, _ = await _https_get(
        tls,
        tls.https_client_context(),
        {"Authorization": "Bearer abc", "X-Other": "not forwarded"},
    )
    assert status == 200
    assert tls.seen.calls[-1]["authorization"] == ["Bearer abc"]


async def test_https_mtls_required_refuses_a_client_without_a_certificate(mtls: Running) -> None:
    with pytest.raises(aiohttp.ClientError):
        await _https_get(mtls, mtls.https_client_context())
    assert mtls.seen.calls == []


async def test_https_mtls_forwards_the_verified_sans(mtls: Running) -> None:
    status, _ = await _https_get(mtls, mtls.https_client_context(mtls.client))
    assert status == 200
    assert mtls.seen.calls[-1]["forwarded"] == CLIENT_SANS
    assert mtls.seen.calls[-1]["forwarded_here"] == CLIENT_SANS  # it came over the socket
    assert mtls.seen.calls[-1]["peer"] == []


async def test_https_optional_mtls_serves_both_and_forwards_only_a_sent_certificate(
    optional_mtls: Running,
) -> None:
    running = optional_mtls
    assert (await _https_get(running, running.https_client_context()))[0] == 200
    assert running.seen.calls[-1]["forwarded"] == []
    assert (await _https_get(running, running.https_client_context(running.client)))[0] == 200
    assert running.seen.calls[-1]["forwarded"] == CLIENT_SANS


# ---- forged forwarded SANs ----


async def test_forwarded_sans_sent_to_the_public_port_name_nobody(mtls: Running) -> None:
    payload = json.dumps(["admin.example"]).encode()
    forged_with_other_key = forwarding_metadata(["admin.example"], b"k" * 32)
    for metadata in (
        ((SANS_KEY, payload),),  # no MAC
        ((SANS_KEY, payload), (MAC_KEY, "0" * 64)),  # a made-up MAC
        tuple(forged_with_other_key),  # signed with another key
    ):
        await _get(mtls.channel(cert=mtls.client), metadata=metadata)
        assert mtls.seen.calls[-1]["forwarded"] == []
        assert mtls.seen.calls[-1]["forwarded_here"] == []
        assert mtls.seen.calls[-1]["peer"] == CLIENT_SANS


async def test_the_san_header_sent_over_https_names_nobody(tls: Running) -> None:
    payload = json.dumps(["admin.example"])
    status, _ = await _https_get(
        tls,
        tls.https_client_context(),
        {SANS_KEY: payload, MAC_KEY: "0" * 64, "x-longrun-forwarded-sans": payload},
    )
    assert status == 200
    assert tls.seen.calls[-1]["forwarded"] == []


async def test_the_private_socket_folder_is_private(tls: Running) -> None:
    assert (tls.link.folder.stat().st_mode & 0o777) == 0o700
    assert tls.link.socket_path.exists()


# ---- certificates replaced on disk ----


def _served_serial(port: int, ca: CertificateAuthority) -> int:
    pem = ssl.get_server_certificate(("127.0.0.1", port), ca_certs=str(ca.cert_file), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def _replace(target: Pair, source: Pair, *, key: bool = True) -> None:
    target.cert.write_bytes(source.cert_pem)
    if key:
        target.key.write_bytes(source.key_pem)


@pytest.mark.parametrize("listener", ["grpc", "https"])
async def test_a_replaced_certificate_is_served_to_the_next_connection(
    tls: Running, listener: str
) -> None:
    port = tls.port if listener == "grpc" else int(tls.https.rsplit(":", 1)[1])
    first = tls.served.serial()
    assert await asyncio.to_thread(_served_serial, port, tls.ca) == first
    renewed = tls.ca.issue("renewed", dns=("localhost",), ips=("127.0.0.1",))
    started = time.monotonic()
    _replace(tls.served, renewed)
    # The very next handshake gets it: no restart, no reload interval.
    assert await asyncio.to_thread(_served_serial, port, tls.ca) == renewed.serial()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed
    if listener == "grpc":
        assert (await _get(tls.channel())).name == "operations/x"
    else:
        assert (await _https_get(tls, tls.https_client_context()))[0] == 200


async def test_a_half_replaced_pair_keeps_the_old_certificate(tls: Running) -> None:
    first = tls.served.serial()
    renewed = tls.ca.issue("renewed", dns=("localhost",), ips=("127.0.0.1",))
    _replace(tls.served, renewed, key=False)  # the new certificate, the old key
    assert await asyncio.to_thread(_served_serial, tls.port, tls.ca) == first
    assert tls.files.failed_reloads == 1
    assert (await _get(tls.channel())).name == "operations/x"
    tls.served.key.write_bytes(renewed.key_pem)  # now the pair is whole
    assert await asyncio.to_thread(_served_serial, tls.port, tls.ca) == renewed.serial()


async def test_a_truncated_certificate_file_keeps_the_old_certificate(tls: Running) -> None:
    first = tls.served.serial()
    tls.served.cert.write_bytes(tls.served.cert_pem[:100])
    assert await asyncio.to_thread(_served_serial, tls.port, tls.ca) == first
    assert tls.files.failed_reloads == 1


async def test_a_tls_handshake_that_never_comes_is_cut_off(tmp_path: Path) -> None:
    """A client that connects to HTTPS and sends nothing is closed after the
    header timeout (the TLS handshake is held to it), and counted no longer."""
    limits = ConnectionLimits(header_timeout=0.3, idle_timeout=30)
    async with _start(tmp_path, "none", limits) as running:
        port = int(running.https.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        async with asyncio.timeout(10):
            assert await reader.read() == b""
        elapsed = time.monotonic() - started
        writer.close()
        assert 0.25 <= elapsed < 5, elapsed


async def test_a_genuine_signed_set_replayed_on_the_public_port_is_refused_with_the_peer(
    mtls: Running,
) -> None:
    """A MAC'd set copied from the gateway (say, from a log) and replayed to
    the public port: the peer check refuses it."""
    copied = tuple(forwarding_metadata(["admin.example"], mtls.link.secret))
    await _get(mtls.channel(cert=mtls.client), metadata=copied)
    assert mtls.seen.calls[-1]["forwarded_here"] == []
    assert mtls.seen.calls[-1]["forwarded"] == ["admin.example"]  # why callers pass peer=
