"""Requests the gateway's handler never sees (refused by the HTTP parser) or
that break it: every answer is AIP-193 JSON, not aiohttp's plain text."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from google.rpc import code_pb2

from longrun_server.rest import RestGateway, build_routes, served_services
from longrun_server.rest_protocol import protocol_error

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[RestGateway, int]]:
    # Nothing listens at the target: these requests must not get that far.
    gw = RestGateway("127.0.0.1:9", build_routes(served_services()), max_wait=600.0, grace=0.5)
    port = await gw.start("127.0.0.1", 0)
    try:
        yield gw, port
    finally:
        await gw.stop()


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes; read the one response (the server closes after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, json.loads(body)


def reason_of(http: int, body: Any, expected_http: int, status: str) -> str:
    assert http == expected_http, body
    error = body["error"]
    assert (error["code"], error["status"]) == (expected_http, status)
    assert error["message"]
    (info,) = [d for d in error["details"] if d["@type"] == ERROR_INFO]
    assert info["domain"] == "longrun.dev"
    return str(info["reason"])


async def test_an_unknown_method_is_501_json(gateway: tuple[RestGateway, int]) -> None:
    http, headers, body = await exchange(
        gateway[1], b"FOO /v1/operations HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert headers["content-type"].startswith("application/json")
    assert reason_of(http, body, 501, "UNIMPLEMENTED") == "METHOD_UNKNOWN"


async def test_an_over_long_url_is_414_json(gateway: tuple[RestGateway, int]) -> None:
    path = b"/v1/operations/" + b"a" * 20_000
    http, headers, body = await exchange(
        gateway[1], b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert headers["content-type"].startswith("application/json")
    assert reason_of(http, body, 414, "INVALID_ARGUMENT") == "URL_TOO_LONG"


async def test_an_over_long_header_is_431_json(gateway: tuple[RestGateway, int]) -> None:
    raw = b"GET /v1/operations HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n"
    http, _, body = await exchange(gateway[1], raw)
    assert reason_of(http, body, 431, "INVALID_ARGUMENT") == "HEADER_TOO_LONG"


async def test_a_malformed_request_is_400_json(gateway: tuple[RestGateway, int]) -> None:
    raw = b"GET /v1/operations HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"
    http, _, body = await exchange(gateway[1], raw)
    assert reason_of(http, body, 400, "INVALID_ARGUMENT") == "HTTP_REQUEST_MALFORMED"


def _post(body: bytes, encoding: str) -> bytes:
    return (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: "
        + encoding.encode()
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def test_a_body_that_is_not_what_its_content_encoding_says_is_400_json(
    gateway: tuple[RestGateway, int],
) -> None:
    http, _, body = await exchange(gateway[1], _post(b"this is not gzip", "gzip"))
    assert reason_of(http, body, 400, "INVALID_ARGUMENT") == "BODY_ENCODING_INVALID"
    assert "gzip" in json.dumps(body)


async def test_an_unsupported_content_encoding_is_400_json(
    gateway: tuple[RestGateway, int],
) -> None:
    http, _, body = await exchange(gateway[1], _post(b"{}", "x-custom"))
    assert reason_of(http, body, 400, "INVALID_ARGUMENT") == "CONTENT_ENCODING_UNSUPPORTED"
    assert "'x-custom' is not supported" in body["error"]["message"]


async def test_a_gzip_body_is_read(gateway: tuple[RestGateway, int]) -> None:
    """Decoded, parsed, validated: here it fails as NaN, proving it was read."""
    http, _, body = await exchange(gateway[1], _post(gzip.compress(b'{"a": NaN}'), "gzip"))
    assert reason_of(http, body, 400, "INVALID_ARGUMENT") == "BODY_MALFORMED"
    assert "NaN is not a JSON number" in body["error"]["message"]


async def test_an_exception_escaping_the_handler_is_500_json(
    gateway: tuple[RestGateway, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, port = gateway

    async def broken(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(gw, "_invoke", broken)
    http, _, body = await exchange(
        port, b"GET /v1/operations/abc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reason_of(http, body, 500, "INTERNAL") == "INTERNAL"
    assert "bug" not in body["error"]["message"]  # internals stay in the log


@pytest.mark.parametrize(
    ("status", "exc", "http", "code", "reason"),
    [
        (400, BadHttpMethod("FOO"), 501, code_pb2.UNIMPLEMENTED, "METHOD_UNKNOWN"),
        (400, LineTooLong(b"/v1/x", 8190), 414, code_pb2.INVALID_ARGUMENT, "URL_TOO_LONG"),
        (400, LineTooLong(b"X-A: b", 8190), 431, code_pb2.INVALID_ARGUMENT, "HEADER_TOO_LONG"),
        (400, BadHttpMessage("bad"), 400, code_pb2.INVALID_ARGUMENT, "HTTP_REQUEST_MALFORMED"),
        (413, None, 413, code_pb2.INVALID_ARGUMENT, "BODY_TOO_LARGE"),
        (500, RuntimeError("x"), 500, code_pb2.INTERNAL, "INTERNAL"),
        (504, None, 504, code_pb2.DEADLINE_EXCEEDED, "TIMEOUT"),
    ],
)
def test_protocol_errors_map_to_canonical_codes(
    status: int, exc: BaseException | None, http: int, code: int, reason: str
) -> None:
    rpc_status, mapped = protocol_error(status, exc)
    assert (mapped, rpc_status.code) == (http, code)
    assert reason in rpc_status.details[0].value.decode("latin-1")
