"""The CORS allow-list (server/cors.py): origin parsing, and the headers the
gateway's aiohttp app answers with, without a gRPC server behind it (a
preflight never reaches one; other requests end at the router's 404)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from multidict import CIMultiDictProxy

from longrun_server.__main__ import main as server_main
from longrun_server.cors import (
    ALLOWED_HEADERS,
    ALLOWED_METHODS,
    CorsPolicy,
    parse_origin,
    parse_origins,
)
from longrun_server.rest import RestGateway, build_routes, served_services

APP = "https://app.example.com"
DEV = "http://localhost:5173"


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://app.example.com", APP),
        (" HTTPS://App.Example.com/ ", APP),
        ("https://app.example.com:443", APP),
        ("http://localhost:5173", DEV),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_origins_are_normalized(text: str, origin: str) -> None:
    assert parse_origin(text) == origin


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("*", "wildcard"),
        ("null", "wildcard"),
        ("app.example.com", "http:// or https://"),
        ("ftp://app.example.com", "http:// or https://"),
        ("https://*.example.com", "one host"),
        ("https://app.example.com/path", "no path"),
        ("https://app.example.com?x=1", "no path"),
        ("https://user@app.example.com", "no path"),
        ("https://app.example.com:99999", "99999"),
    ],
)
def test_anything_but_an_exact_origin_is_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_origin(text)


def test_a_list_is_comma_separated_and_deduplicated() -> None:
    assert parse_origins(f"{APP}, {DEV},,https://APP.example.com") == (APP, DEV)
    assert parse_origins("") == ()
    assert not CorsPolicy(parse_origins("")).enabled


async def _gateway(cors: CorsPolicy | None) -> AsyncIterator[str]:
    # Nothing listens at the target: these requests never make a gRPC call.
    gateway = RestGateway(
        "127.0.0.1:9", build_routes(served_services()), max_wait=5.0, grace=0.1, cors=cors
    )
    port = await gateway.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await gateway.stop()


@pytest.fixture
async def allowing() -> AsyncIterator[str]:
    async for base in _gateway(CorsPolicy((APP, DEV))):
        yield base


@pytest.fixture
async def default() -> AsyncIterator[str]:
    async for base in _gateway(None):
        yield base


async def request(
    method: str, url: str, headers: dict[str, str]
) -> tuple[int, CIMultiDictProxy[str]]:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.request(method, url, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers


PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_a_preflight_from_an_allowed_origin_is_answered(allowing: str) -> None:
    status, headers = await request(
        "OPTIONS",
        allowing + "/v1/projects/p/operations/x:cancel",
        {"Origin": DEV, **PREFLIGHT},
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == DEV
    assert headers["Access-Control-Allow-Methods"].split(", ") == list(ALLOWED_METHODS)
    allowed = headers["Access-Control-Allow-Headers"].split(", ")
    assert {"authorization", "x-goog-api-key", "content-type"} <= set(allowed)
    assert allowed == list(ALLOWED_HEADERS)
    assert headers["Vary"] == "Origin"
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in headers


async def test_another_origin_gets_no_cors_headers(allowing: str) -> None:
    status, headers = await request(
        "OPTIONS", allowing + "/v1/operations", {"Origin": "https://evil.example", **PREFLIGHT}
    )
    assert status == 405  # fell through to the router: OPTIONS is no API method
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    assert headers["Vary"] == "Origin"
    status, headers = await request(
        "GET", allowing + "/v2/nothing", {"Origin": "https://app.example.com.evil.example"}
    )
    assert status == 404
    assert "Access-Control-Allow-Origin" not in headers


async def test_an_actual_answer_to_an_allowed_origin_names_it(allowing: str) -> None:
    status, headers = await request("GET", allowing + "/v2/nothing", {"Origin": APP})
    assert status == 404  # an error answer is readable by the page too
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Vary"] == "Origin"
    assert "retry-after" in headers["Access-Control-Expose-Headers"]


async def test_off_by_default(default: str) -> None:
    status, headers = await request(
        "OPTIONS", default + "/v1/operations", {"Origin": APP, **PREFLIGHT}
    )
    assert status == 405
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    assert "Vary" not in headers
    _, headers = await request("GET", default + "/v2/nothing", {"Origin": APP})
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("flag", ["https://a.example,*", "https://a.example/app"])
def test_the_server_refuses_a_bad_origin_at_startup(flag: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        server_main,
        ["--cors-allowed-origins", flag, "--sqlite-path", str(tmp_path / "x.db")],
    )
    assert result.exit_code == 2
    assert "--cors-allowed-origins" in result.output
    assert not (tmp_path / "x.db").exists()  # refused before anything started


def test_the_origins_also_come_from_the_environment(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        server_main,
        ["--sqlite-path", str(tmp_path / "x.db")],
        env={"LONGRUN_CORS_ALLOWED_ORIGINS": "ftp://a.example"},
    )
    assert result.exit_code == 2 and "http:// or https://" in result.output
