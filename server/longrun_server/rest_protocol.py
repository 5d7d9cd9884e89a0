"""AIP-193 JSON for the errors aiohttp answers itself.

Some requests never reach the gateway's handler: the HTTP parser refuses an
unknown method, an over-long request line or header, a malformed message;
and an exception escaping the handler becomes a 500. aiohttp answers those
with plain text (`RequestHandler.handle_error`). `JsonErrorAppRunner` serves
the app through a request handler whose `handle_error` answers with the same
`{"error": {...}}` body as every other gateway error, with an ErrorInfo
naming the case.
"""

from __future__ import annotations

import logging

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_request import BaseRequest
from google.rpc import code_pb2, status_pb2

from longrun_server.rest_errors import error_body, make_status
from longrun_server.rest_json import dumps

log = logging.getLogger("longrun.http")


def protocol_error(status: int, exc: BaseException | None) -> tuple[status_pb2.Status, int]:
    """The google.rpc.Status and HTTP status for an error aiohttp raised with
    HTTP `status`."""
    text = getattr(exc, "message", "") or (str(exc) if exc is not None else "")
    text = str(text)[:300]
    if isinstance(exc, BadHttpMethod):
        return (
            make_status(
                code_pb2.UNIMPLEMENTED,
                f"unknown HTTP method ({text}); use GET, POST or DELETE (see docs/rest.md)",
                "METHOD_UNKNOWN",
            ),
            501,
        )
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        limit = str(exc.args[1]) if len(exc.args) > 1 else "the limit"
        if isinstance(line, (bytes, bytearray)) and line.startswith(b"/"):
            return (
                make_status(
                    code_pb2.INVALID_ARGUMENT,
                    f"the URL is longer than {limit} bytes",
                    "URL_TOO_LONG",
                    {"limit": limit},
                ),
                414,
            )
        return (
            make_status(
                code_pb2.INVALID_ARGUMENT,
                f"a request header is longer than {limit} bytes",
                "HEADER_TOO_LONG",
                {"limit": limit},
            ),
            431,
        )
    if status == 504:
        return make_status(code_pb2.DEADLINE_EXCEEDED, "the request timed out", "TIMEOUT"), 504
    if status >= 500:
        return (
            make_status(
                code_pb2.INTERNAL,
                "internal error in the HTTP gateway; see the server log",
                "INTERNAL",
            ),
            500,
        )
    if status == 413:
        return (
            make_status(code_pb2.INVALID_ARGUMENT, text or "request too large", "BODY_TOO_LARGE"),
            413,
        )
    return (
        make_status(
            code_pb2.INVALID_ARGUMENT,
            f"malformed HTTP request: {text or 'cannot parse it'}",
            "HTTP_REQUEST_MALFORMED",
        ),
        400,
    )


class JsonErrorRequestHandler(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response went out: aiohttp can only drop the connection.
            return super().handle_error(request, status, exc, message)
        if status >= 500 and status != 504:
            log.error("error handling %s %s", request.method, request.path[:200], exc_info=exc)
        else:
            log.debug("refused a malformed HTTP request: %r", exc)
        rpc_status, http = protocol_error(status, exc)
        body = error_body(rpc_status, http)
        response = web.Response(
            text=dumps(body), status=http, content_type="application/json", charset="utf-8"
        )
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors in AIP-193 JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same state, one method more: the server aiohttp built, now making
        # JsonErrorRequestHandlers.
        server.__class__ = JsonErrorServer
        return server
