"""MetricsInterceptor on a bare grpc.aio server, outside the AuthInterceptor
(as server/app.py installs them): every call with a handler is timed once
under its method and final status code, rejected credentials included;
handlers still run as the caller; the WaitOperation gauge follows open calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from longrun_core.access import current_principal
from longrun_core.auth.api_keys import ApiKeyVerifier, mint
from longrun_core.auth.authenticator import Authenticator
from longrun_core.auth.roles import Role
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.db import Database
from longrun_server.auth_interceptor import AuthInterceptor
from longrun_server.metrics import WAIT_METHOD, MetricsInterceptor, ServerMetrics
from tests.support.waiting import wait_until

SERVICE = "test.Metered"


def _ident(b: bytes) -> bytes:
    return b


async def who(request: bytes, context: Any) -> bytes:
    return current_principal().id.encode()


async def missing(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("unreachable")


async def broken(request: bytes, context: Any) -> bytes:
    raise RuntimeError("a bug")


async def counted_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(3):
        yield str(i).encode()


@dataclass
class Rig:
    channel: grpc.aio.Channel
    registry: CollectorRegistry
    key: str
    release_wait: asyncio.Event

    def count(self, method: str, code: str) -> float:
        value = self.registry.get_sample_value(
            "longrun_rpc_duration_seconds_count", {"method": method, "code": code}
        )
        return value or 0.0

    def open_waits(self) -> float:
        return self.registry.get_sample_value("longrun_wait_operation_open") or 0.0

    async def unary(self, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
        reply: bytes = await self.channel.unary_unary(method)(b"", metadata=metadata)
        return reply


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    keys = SqliteKeyStore(Database(tmp_path / "keys.db"), owns=True)
    await keys.start()
    minted = mint("p1", Role.VIEWER, datetime.now(UTC))
    await keys.add(minted.key)
    release = asyncio.Event()

    async def wait(request: bytes, context: Any) -> bytes:
        await release.wait()
        return b"done"

    kw: dict[str, Any] = {"request_deserializer": _ident, "response_serializer": _ident}
    registry = CollectorRegistry()
    server = grpc.aio.server(
        interceptors=[
            MetricsInterceptor(ServerMetrics(registry)),
            AuthInterceptor(Authenticator(api_keys=ApiKeyVerifier(keys))),
        ]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Who": grpc.unary_unary_rpc_method_handler(who, **kw),
                    "Missing": grpc.unary_unary_rpc_method_handler(missing, **kw),
                    "Broken": grpc.unary_unary_rpc_method_handler(broken, **kw),
                    "Stream": grpc.unary_stream_rpc_method_handler(counted_stream, **kw),
                },
            ),
            grpc.method_handlers_generic_handler(
                "google.longrunning.Operations",
                {"WaitOperation": grpc.unary_unary_rpc_method_handler(wait, **kw)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Rig(channel, registry, minted.secret, release)
    finally:
        release.set()
        await channel.close()
        await server.stop(0)
        await keys.close()


async def test_calls_are_counted_by_method_and_final_code(rig: Rig) -> None:
    md = (("x-goog-api-key", rig.key),)
    who_method = f"/{SERVICE}/Who"
    assert await rig.unary(who_method, md) == f"key:{rig.key[4:20]}".encode()
    assert await rig.unary(who_method, md) == f"key:{rig.key[4:20]}".encode()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.unary(who_method)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.unary(f"/{SERVICE}/Missing", md)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.unary(f"/{SERVICE}/Broken", md)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    stream = rig.channel.unary_stream(f"/{SERVICE}/Stream")
    assert [r async for r in stream(b"", metadata=md)] == [b"0", b"1", b"2"]

    assert rig.count(who_method, "OK") == 2
    assert rig.count(who_method, "UNAUTHENTICATED") == 1
    assert rig.count(f"/{SERVICE}/Missing", "NOT_FOUND") == 1
    assert rig.count(f"/{SERVICE}/Missing", "OK") == 0
    assert rig.count(f"/{SERVICE}/Broken", "UNKNOWN") == 1
    assert rig.count(f"/{SERVICE}/Stream", "OK") == 1


async def test_unknown_methods_make_no_series(rig: Rig) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rig.unary(f"/{SERVICE}/Nope-{'x' * 20}")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    methods = {
        s.labels.get("method")
        for metric in rig.registry.collect()
        for s in metric.samples
        if s.name.startswith("longrun_rpc_duration_seconds")
    }
    assert methods == set()


async def test_open_wait_operation_calls_show_in_the_gauge(rig: Rig) -> None:
    md = (("x-goog-api-key", rig.key),)
    calls = [asyncio.ensure_future(rig.unary(WAIT_METHOD, md)) for _ in range(3)]
    await wait_until(lambda: rig.open_waits() == 3, description="three open waits")
    rig.release_wait.set()
    assert await asyncio.gather(*calls) == [b"done"] * 3
    assert rig.open_waits() == 0
    assert rig.count(WAIT_METHOD, "OK") == 3
    # A rejected wait leaves the gauge at 0 and is timed as UNAUTHENTICATED.
    with pytest.raises(grpc.aio.AioRpcError):
        await rig.unary(WAIT_METHOD)
    assert rig.open_waits() == 0
    assert rig.count(WAIT_METHOD, "UNAUTHENTICATED") == 1
