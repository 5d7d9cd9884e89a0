"""AuthInterceptor on a bare grpc.aio server: every behaviour kind runs as
the caller (the contextvar is set in the handler's own task, across awaits
and yields), transport SANs make `san:` principals, open services stay open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from longrun_core.access import current_principal
from longrun_core.auth.api_keys import ApiKeyVerifier, mint
from longrun_core.auth.authenticator import Authenticator
from longrun_core.auth.roles import Role
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.db import Database
from longrun_server.auth_interceptor import AuthInterceptor

SERVICE = "test.Who"


def _ident(b: bytes) -> bytes:
    return b


async def who(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(0)
    return current_principal().id.encode()


async def who_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(3):
        await asyncio.sleep(0)
        yield current_principal().id.encode()


async def who_writes(request: bytes, context: Any) -> None:
    for _ in range(2):
        await context.write(current_principal().id.encode())


async def who_client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    async for _ in requests:
        pass
    return current_principal().id.encode()


def handlers() -> grpc.GenericRpcHandler:
    kw: dict[str, Any] = {"request_deserializer": _ident, "response_serializer": _ident}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(who, **kw),
            "Stream": grpc.unary_stream_rpc_method_handler(who_stream, **kw),
            "Writes": grpc.unary_stream_rpc_method_handler(who_writes, **kw),
            "ClientStream": grpc.stream_unary_rpc_method_handler(who_client_stream, **kw),
        },
    )


@dataclass
class Bare:
    channel: grpc.aio.Channel
    key: str
    sans: list[str]

    async def unary(self, metadata: Sequence[tuple[str, str]] = ()) -> str:
        call = self.channel.unary_unary(f"/{SERVICE}/Unary")
        reply: bytes = await call(b"", metadata=metadata)
        return reply.decode()

    async def stream(self, method: str, metadata: Sequence[tuple[str, str]] = ()) -> list[str]:
        call = self.channel.unary_stream(f"/{SERVICE}/{method}")
        return [r.decode() async for r in call(b"", metadata=metadata)]


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[Bare]:
    keys = SqliteKeyStore(Database(tmp_path / "keys.db"), owns=True)
    await keys.start()
    minted = mint("p1", Role.VIEWER, datetime.now(UTC))
    await keys.add(minted.key)
    sans: list[str] = []
    authenticator = Authenticator(api_keys=ApiKeyVerifier(keys), accept_sans=True)
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(authenticator, transport_sans=lambda ctx: sans)]
    )
    server.add_generic_rpc_handlers((handlers(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Bare(channel, minted.secret, sans)
    finally:
        await channel.close()
        await server.stop(0)
        await keys.close()


async def test_every_behaviour_runs_as_the_caller(bare: Bare) -> None:
    principal = f"key:{bare.key[4:20]}"
    md = (("x-goog-api-key", bare.key),)
    assert await bare.unary(md) == principal
    assert await bare.stream("Stream", md) == [principal] * 3
    assert await bare.stream("Writes", md) == [principal] * 2
    call = bare.channel.stream_unary(f"/{SERVICE}/ClientStream")
    assert (await call(iter([b"a", b"b"]), metadata=md)).decode() == principal


async def test_concurrent_callers_do_not_see_each_other(bare: Bare) -> None:
    bare.sans.append("spiffe://example.test/peer")
    md = (("x-goog-api-key", bare.key),)
    results = await asyncio.gather(*(bare.unary(md if i % 2 else ()) for i in range(20)))
    assert results == [
        f"key:{bare.key[4:20]}" if i % 2 else "san:spiffe://example.test/peer" for i in range(20)
    ]


async def test_without_credentials_every_kind_is_unauthenticated(bare: Bare) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bare.unary()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await bare.stream("Stream")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_metadata_credentials_win_over_the_transport_identity(bare: Bare) -> None:
    bare.sans.extend(["spiffe://example.test/peer", "dns:peer.example.test"])
    assert await bare.unary() == "san:spiffe://example.test/peer"
    assert await bare.unary((("x-goog-api-key", bare.key),)) == f"key:{bare.key[4:20]}"


async def test_health_needs_no_credentials(bare: Bare) -> None:
    stub = health_pb2_grpc.HealthStub(bare.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_sans_count_only_when_accepted() -> None:
    plain = Authenticator()
    with pytest.raises(Exception, match="requires credentials"):
        await plain.authenticate([], sans=["spiffe://x"])
    accepting = Authenticator(accept_sans=True)
    assert (await accepting.authenticate([], sans=["spiffe://x"])).id == "san:spiffe://x"
