"""CORS on the gateway in front of a real in-process server with API keys
on: a browser app on an allowed origin can preflight, then call with its
key and read both the answer and the refusal; another origin cannot read
either. The preflight itself carries no credentials and needs none."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from longrun_core.auth.api_keys import mint
from longrun_core.auth.roles import Role
from longrun_core.settings import AuthenticationSettings, ServerSettings
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import load_tasks
from longrun_server.app import create_server
from longrun_server.auth_setup import build_auth
from longrun_server.cors import CorsPolicy, parse_origins
from longrun_server.rest import RestGateway, build_routes, served_services

APP = "https://app.example.com"
EVIL = "https://evil.example.com"


@dataclass
class Gateway:
    base: str
    key: str


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    backend = SqliteBackend(tmp_path / "ops.db")
    store = SqliteOperationStore(backend)
    queue = SqliteTaskQueue(backend)
    await store.start()
    await queue.start()
    keys = SqliteKeyStore(backend.db)
    minted = mint("web", Role.EDITOR, datetime.now(UTC))
    settings = ServerSettings(
        address="127.0.0.1:0",
        auth=AuthenticationSettings(api_keys=True),
        cors_allowed_origins=parse_origins(APP),
    )
    auth = build_auth(settings.auth, key_store=keys)
    await auth.start()
    await keys.add(minted.key)
    server, port, _ = await create_server(
        store=store,
        queue=queue,
        registry=load_tasks(["longrun_worker.builtin_tasks"]),
        settings=settings,
        auth=auth,
    )
    await server.start()
    rest = RestGateway(
        f"127.0.0.1:{port}",
        build_routes(served_services(api_keys=True)),
        max_wait=5.0,
        cors=CorsPolicy(settings.cors_allowed_origins),
    )
    http_port = await rest.start("127.0.0.1", 0)
    try:
        yield Gateway(f"http://127.0.0.1:{http_port}", minted.secret)
    finally:
        await rest.stop()
        await server.stop(0)
        await auth.close()
        await queue.close()
        await store.close()


async def call(
    method: str, url: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.request(method, url, headers=headers, json=body) as resp,
    ):
        text = await resp.text()
        return resp.status, dict(resp.headers), json.loads(text) if text else None


async def test_an_allowed_origin_preflights_then_calls_with_its_key(gateway: Gateway) -> None:
    status, headers, _ = await call(
        "OPTIONS",
        gateway.base + "/v1/projects/web/jobs",
        {
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-goog-api-key",
        },
    )
    assert status == 204  # no credentials on a preflight, and none needed
    assert headers["Access-Control-Allow-Origin"] == APP
    assert "x-goog-api-key" in headers["Access-Control-Allow-Headers"]
    assert "POST" in headers["Access-Control-Allow-Methods"]

    status, headers, op = await call(
        "POST",
        gateway.base + "/v1/projects/web/jobs",
        {"Origin": APP, "x-goog-api-key": gateway.key},
        {"task": "noop", "params": {}},
    )
    assert status == 200 and op["name"].startswith("projects/web/operations/")
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Vary"] == "Origin"

    status, headers, listed = await call(
        "GET",
        gateway.base + "/v1/projects/web/operations",
        {"Origin": APP, "x-goog-api-key": gateway.key},
    )
    assert status == 200 and [o["name"] for o in listed["operations"]] == [op["name"]]
    assert headers["Access-Control-Allow-Origin"] == APP


async def test_refusals_are_readable_by_the_allowed_origin_only(gateway: Gateway) -> None:
    for origin, readable in ((APP, True), (EVIL, False)):
        status, headers, body = await call(
            "GET", gateway.base + "/v1/projects/web/operations", {"Origin": origin}
        )
        assert (status, body["error"]["status"]) == (401, "UNAUTHENTICATED")
        assert headers.get("Access-Control-Allow-Origin") == (origin if readable else None)
        assert headers["Vary"] == "Origin"
    status, headers, _ = await call(
        "OPTIONS",
        gateway.base + "/v1/projects/web/operations",
        {"Origin": EVIL, "Access-Control-Request-Method": "GET"},
    )
    assert status == 405
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    # The key still works from anywhere outside a browser: CORS is no access control.
    status, headers, _ = await call(
        "GET", gateway.base + "/v1/projects/web/operations", {"x-goog-api-key": gateway.key}
    )
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
