"""HTTP/JSON transcoding for plain HTTP callers (curl), like grpc-gateway.

`longrun-server --http-address localhost:8080` serves the REST bindings of
google.longrunning.Operations and longrun.v1.Jobs next to gRPC, in the same
event loop. Each HTTP request becomes one gRPC call to this process's own
server over its private Unix socket (server/gateway_link.py), so every rule
and validation lives in the services. With TLS (server/tls.py) it serves HTTPS.

Routes are read from the `google.api.http` options of the service descriptors
plus `EXTRA_RULES`: the project-scoped bindings of the Operations methods
(operations.proto binds only `operations/**`), which are also what
google-api-core's REST OperationsClient sends with its default http_options,
and WaitOperation, which operations.proto leaves unbound:

    GET    /v1/projects/{p}/operations              ListOperations  (?filter=&pageSize=&pageToken=)
    GET    /v1/projects/{p}/operations/{id}         GetOperation
    DELETE /v1/projects/{p}/operations/{id}         DeleteOperation
    POST   /v1/projects/{p}/operations/{id}:cancel  CancelOperation  body {}
    POST   /v1/projects/{p}/operations/{id}:wait    WaitOperation    body {"timeout": "30s"}
    POST   /v1/projects/{p}/jobs                    CreateJob        body {"task": ...}

and the earlier routes without a project, which keep working: `GET
/v1/operations` (every project the caller may see), `GET|DELETE
/v1/operations/{id}`, `POST /v1/operations/{id}:cancel|:wait` (an operation
by id) and `POST /v1/jobs` (the caller's default project).

Requests: path variables and query parameters (proto or lowerCamelCase names,
dotted for nested fields) set request fields; the body is parsed with
`json_format` (unknown fields are an error). Responses are the proto3 JSON
form in lowerCamelCase with default values left out, as Google REST APIs send
them; errors are AIP-193 JSON (server/rest_errors.py). Connections are
bounded: idle, header and body timeouts and a connection cap
(server/rest_connections.py).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from google.api import annotations_pb2, http_pb2
from google.longrunning import operations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import code_pb2, status_pb2
from multidict import CIMultiDictProxy

from longrun.v1 import api_keys_pb2, jobs_pb2, queues_pb2
from longrun_core.observability.trace_context import valid_traceparent
from longrun_core.settings import DEFAULT_MESSAGE_BYTES
from longrun_server.console.routes import Console
from longrun_server.cors import CorsPolicy
from longrun_server.gateway_link import MetadataValue, forwarding_metadata
from longrun_server.rest_connections import ConnectionGuard, ConnectionLimits, GuardedSite
from longrun_server.rest_errors import (
    error_body,
    error_headers,
    make_status,
    status_from_rpc_error,
)
from longrun_server.rest_json import dumps, loads_strict, message_json
from longrun_server.rest_protocol import JsonErrorAppRunner
from longrun_server.rest_templates import PathTemplate
from longrun_server.tls import https_peer_sans

log = logging.getLogger("longrun.http")

WAIT_METHOD = "google.longrunning.Operations.WaitOperation"

_OPS = "google.longrunning.Operations."


def _rule(**kw: str) -> http_pb2.HttpRule:
    return http_pb2.HttpRule(**kw)


#: Bindings added to those a method's proto declares (or the only ones, for a
#: method that declares none). Cloud APIs bind WaitOperation as `POST
#: .../operations/*}:wait` with body `*`.
EXTRA_RULES: Mapping[str, http_pb2.HttpRule] = {
    _OPS + "ListOperations": _rule(get="/v1/{name=projects/*}/operations"),
    _OPS + "GetOperation": _rule(get="/v1/{name=projects/*/operations/*}"),
    _OPS + "DeleteOperation": _rule(delete="/v1/{name=projects/*/operations/*}"),
    _OPS + "CancelOperation": _rule(post="/v1/{name=projects/*/operations/*}:cancel", body="*"),
    WAIT_METHOD: http_pb2.HttpRule(
        post="/v1/{name=operations/**}:wait",
        body="*",
        additional_bindings=[_rule(post="/v1/{name=projects/*/operations/*}:wait", body="*")],
    ),
}

#: Content-Encodings of a request body the gateway decodes.
BODY_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
#: Seconds an unread request body is drained after the answer before the
#: connection closes (closing with unread input would reset it, losing the answer).
LINGER = 2.0

#: HTTP request headers passed on to the gRPC call as metadata: the caller's
#: credentials, and its W3C trace context (`trace_metadata`); no other header
#: reaches the services.
CREDENTIAL_HEADERS = ("authorization", "x-goog-api-key")
TRACE_HEADERS = ("traceparent", "tracestate")
FORWARDED_HEADERS = CREDENTIAL_HEADERS + TRACE_HEADERS
#: Longest `tracestate` forwarded (W3C: at most 32 members, 512 characters advised).
MAX_TRACESTATE_CHARS = 512

#: Query parameters that configure the response rather than set a field
#: (google-api-core REST transports send `$alt=json;enum-encoding=int`).
SYSTEM_PARAMS = frozenset({"$alt", "alt", "$.xgafv"})

# Message types whose JSON form is a string (or a number sent as a string),
# so a query parameter can set them.
_STRING_JSON_MESSAGES = frozenset(
    "google.protobuf." + name
    for name in (
        "Duration",
        "Timestamp",
        "FieldMask",
        "StringValue",
        "BytesValue",
        "Int32Value",
        "Int64Value",
        "UInt32Value",
        "UInt64Value",
        "FloatValue",
        "DoubleValue",
    )
)


# ---- routes ----


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    template: PathTemplate
    #: "" (no body), "*" (the whole request) or a top-level field name.
    body: str
    method: MethodDescriptor
    request_cls: type[Message] = field(compare=False)
    response_cls: type[Message] = field(compare=False)

    @property
    def rpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def __str__(self) -> str:
        return f"{self.http_method} {self.template.text} -> {self.method.full_name}"


def served_services(*, api_keys: bool = False) -> list[ServiceDescriptor]:
    """The services `longrun-server` serves (see server/app.py); `api_keys`:
    longrun.v1.ApiKeys too (served when API keys are enabled)."""
    services = [
        operations_pb2.DESCRIPTOR.services_by_name["Operations"],
        jobs_pb2.DESCRIPTOR.services_by_name["Jobs"],
        queues_pb2.DESCRIPTOR.services_by_name["Queues"],
    ]
    if api_keys:
        services.append(api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeys"])
    return services


def trace_metadata(headers: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...]:
    """The caller's W3C trace context as gRPC metadata, so that the server's
    span for the call (and so the job's CreateJob span) continues the caller's
    trace: a well-formed `traceparent` (the first one; anything else is
    dropped, and the call starts a new trace) and, with it, a printable
    `tracestate` of at most MAX_TRACESTATE_CHARS."""
    parent = valid_traceparent(headers.get("traceparent", "").strip().lower())
    if not parent:
        return ()
    metadata = [("traceparent", parent)]
    state = headers.get("tracestate", "").strip()
    if state and len(state) <= MAX_TRACESTATE_CHARS and state.isascii() and state.isprintable():
        metadata.append(("tracestate", state))
    return tuple(metadata)


#: Request headers forwarded to the gRPC call as metadata, so HTTP callers
#: are authenticated like gRPC ones.
#: Longest credential header forwarded (bytes).
MAX_CREDENTIAL_BYTES = 16 * 1024


def credential_metadata(headers: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...]:
    """The caller's credential headers as gRPC metadata. A value gRPC cannot
    carry (not printable ASCII, too long) is refused here as UNAUTHENTICATED."""
    metadata: list[tuple[str, str]] = []
    for name in CREDENTIAL_HEADERS:
        for value in headers.getall(name, ()):
            if len(value) > MAX_CREDENTIAL_BYTES or not value.isascii() or not value.isprintable():
                raise GatewayError(
                    make_status(
                        code_pb2.UNAUTHENTICATED,
                        f"the {name} header is not a credential this server can read",
                        "CREDENTIALS_MALFORMED",
                        {"header": name},
                    )
                )
            metadata.append((name, value))
    return tuple(metadata)


def http_rule(
    method: MethodDescriptor, extra_rules: Mapping[str, http_pb2.HttpRule] = EXTRA_RULES
) -> http_pb2.HttpRule | None:
    """The method's `google.api.http` option with its entry in `extra_rules`
    as further bindings (either alone when the other is absent)."""
    options = method.GetOptions()
    extra = extra_rules.get(method.full_name)
    if not options.HasExtension(annotations_pb2.http):
        return extra
    rule = http_pb2.HttpRule()
    rule.CopyFrom(options.Extensions[annotations_pb2.http])
    if extra is not None:
        rule.additional_bindings.append(extra)
    return rule


def rule_bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str, str]]:
    """(HTTP method, path template, body) of a rule and its additional_bindings."""
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        yield rule.custom.kind.upper(), rule.custom.path, rule.body
    elif kind is not None:
        yield kind.upper(), getattr(rule, kind), rule.body
    for extra in rule.additional_bindings:
        yield from rule_bindings(extra)


def build_routes(
    services: Iterable[ServiceDescriptor],
    extra_rules: Mapping[str, http_pb2.HttpRule] = EXTRA_RULES,
) -> list[Route]:
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            rule = http_rule(method, extra_rules)
            if rule is None:
                continue
            if rule.response_body:
                raise ValueError(f"{method.full_name}: response_body is not supported")
            request_cls = GetMessageClass(method.input_type)
            for http_method, path, body in rule_bindings(rule):
                if body not in ("", "*") and body not in method.input_type.fields_by_name:
                    raise ValueError(f"{method.full_name}: body field {body!r} does not exist")
                routes.append(
                    Route(
                        http_method,
                        PathTemplate.parse(path),
                        body,
                        method,
                        request_cls,
                        GetMessageClass(method.output_type),
                    )
                )
    return routes


# ---- errors raised before a call is made ----


class GatewayError(Exception):
    """An HTTP request that cannot become an RPC (no route, bad body, ...)."""

    def __init__(
        self,
        status: status_pb2.Status,
        http: int | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(status.message)
        self.status = status
        self.http = http
        self.headers = dict(headers or {})
        #: Close the connection after the answer (its input is in an unknown state).
        self.close = close


def invalid(message: str, reason: str, **metadata: str) -> GatewayError:
    return GatewayError(make_status(code_pb2.INVALID_ARGUMENT, message, reason, metadata))


# ---- routing ----


_VARIABLE_NAME = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.]*=")


def _shape(template: str) -> str:
    """A template without its variables' field names: `{name=projects/*/queues/*}`
    and `{queue.name=projects/*/queues/*}` match the same paths."""
    return _VARIABLE_NAME.sub("{=", template)


class Router:
    """Finds the route for (HTTP method, raw path). The most specific template
    matching the path decides (`/v1/{name=operations}` over
    `/v1/{name=operations/**}`, `...:cancel` over `...`): its route for the
    method, else 405 naming the methods it has; no template at all is 404."""

    def __init__(self, routes: Sequence[Route]) -> None:
        # sorted() is stable: equal templates keep their declaration order.
        self.routes = sorted(routes, key=lambda r: r.template.specificity, reverse=True)

    def resolve(self, http_method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        shown = raw_path[:200]
        for route in self.routes:
            values = route.template.match(raw_path)
            if values is None:
                continue
            shape = _shape(route.template.text)
            same = [r for r in self.routes if _shape(r.template.text) == shape]
            for candidate in same:
                if candidate.http_method == http_method:
                    # Its own variable names (the same shape matches the same paths).
                    return candidate, candidate.template.match(raw_path) or values
            allow = ", ".join(dict.fromkeys(r.http_method for r in same))
            raise GatewayError(
                make_status(
                    code_pb2.UNIMPLEMENTED,
                    f"{http_method} is not allowed on {shown}; use {allow}",
                    "METHOD_NOT_ALLOWED",
                    {"method": http_method, "allow": allow},
                ),
                http=405,
                headers={"Allow": allow},
            )
        raise GatewayError(
            make_status(
                code_pb2.NOT_FOUND,
                f"no API method at {http_method} {shown}; see docs/rest.md for the routes",
                "ROUTE_NOT_FOUND",
                {"method": http_method, "path": shown},
            )
        )


# ---- requests ----


@dataclass(frozen=True)
class JsonOptions:
    """How to print the response (from `$alt` / `alt`)."""

    use_integers_for_enums: bool = False


def system_params(
    query: Iterable[tuple[str, str]],
) -> tuple[JsonOptions, list[tuple[str, str]]]:
    """Split `$alt=json;enum-encoding=int` and friends from the field parameters."""
    options = JsonOptions()
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key not in SYSTEM_PARAMS:
            rest.append((key, value))
            continue
        if key == "$.xgafv":
            continue
        parts = [p.strip() for p in value.split(";")]
        if parts[0] != "json":
            raise invalid(f"{key}={value[:100]!r}: only json is served", "ALT_UNSUPPORTED")
        if "enum-encoding=int" in parts[1:]:
            options = JsonOptions(use_integers_for_enums=True)
    return options, rest


def _field(message: Descriptor, name: str) -> FieldDescriptor | None:
    found: FieldDescriptor | None = message.fields_by_name.get(name)
    if found is None:
        found = message.fields_by_camelcase_name.get(name)
    return found


def _leaf_value(fd: FieldDescriptor, raw: str, name: str) -> Any:
    """A query/path string as the JSON value json_format expects for `fd`."""
    if fd.type == FieldDescriptor.TYPE_BOOL:
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise invalid(f"{name} must be true or false, got {raw[:100]!r}", "PARAMETER_INVALID")
    message_type = fd.message_type
    if message_type is not None:
        if message_type.full_name == "google.protobuf.BoolValue":
            return _leaf_value(message_type.fields_by_name["value"], raw, name)
        if message_type.full_name not in _STRING_JSON_MESSAGES:
            raise invalid(
                f"{name} is a {message_type.full_name} and cannot be set from the URL",
                "PARAMETER_INVALID",
            )
    return raw


def _assign(
    target: dict[str, Any],
    message: Descriptor,
    dotted: str,
    raw: str,
    *,
    where: str,
    overwrite: bool,
) -> None:
    """Set `dotted` (proto or camelCase names) in the JSON-shaped dict `target`."""
    parts = dotted.split(".")
    node = target
    desc = message
    for i, part in enumerate(parts):
        fd = _field(desc, part)
        if fd is None:
            raise invalid(
                f"{where} {dotted[:100]!r}: {desc.full_name} has no field {part[:100]!r}",
                "PARAMETER_UNKNOWN",
                parameter=dotted[:100],
            )
        last = i == len(parts) - 1
        if not last:
            child_type = fd.message_type
            if child_type is None or fd.is_repeated:
                raise invalid(
                    f"{where} {dotted[:100]!r}: {part!r} is not a singular message field",
                    "PARAMETER_UNKNOWN",
                    parameter=dotted[:100],
                )
            child = node.setdefault(fd.name, {})
            if not isinstance(child, dict):  # pragma: no cover - names are unique
                raise invalid(f"{where} {dotted[:100]!r} conflicts", "PARAMETER_INVALID")
            node, desc = child, child_type
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            raise invalid(
                f"{where} {dotted[:100]!r} is a map and cannot be set from the URL",
                "PARAMETER_INVALID",
            )
        value = _leaf_value(fd, raw, dotted[:100])
        if fd.is_repeated:
            node.setdefault(fd.name, []).append(value)
        elif fd.name in node and not overwrite:
            raise invalid(f"{where} {dotted[:100]!r} is given more than once", "PARAMETER_REPEATED")
        else:
            node[fd.name] = value


def _parse_json_body(body: bytes, type_name: str) -> Any:
    if not body.strip():
        return {}
    try:
        return loads_strict(body)
    except (ValueError, RecursionError) as exc:
        raise invalid(
            f"request body is not valid JSON for {type_name}: {exc}", "BODY_MALFORMED"
        ) from exc


def _merge_json(value: Any, request: Message, what: str, reason: str) -> None:
    try:
        json_format.ParseDict(value, request, ignore_unknown_fields=False)
    except (
        json_format.ParseError,
        ValueError,
        TypeError,
        AttributeError,
        RecursionError,
        OverflowError,
    ) as exc:
        raise invalid(f"invalid {what}: {exc}", reason) from exc


def build_request(
    route: Route,
    path_values: Mapping[str, str],
    query: Sequence[tuple[str, str]],
    body: bytes,
) -> Message:
    """The gRPC request for an HTTP request: body first, then query parameters,
    then path variables (which win over a body field of the same name)."""
    request = route.request_cls()
    desc = route.method.input_type
    if route.body == "*" and query:
        raise invalid(
            f"query parameters are not accepted on {route.http_method} {route.template.text} "
            f"(got {query[0][0][:100]!r}): put every field in the JSON body",
            "PARAMETER_UNKNOWN",
        )
    if route.body:
        parsed = _parse_json_body(body, desc.full_name)
        if route.body == "*":
            if not isinstance(parsed, dict):
                raise invalid(
                    f"request body must be a JSON object ({desc.full_name}), "
                    f"got {type(parsed).__name__}",
                    "BODY_MALFORMED",
                )
            _merge_json(parsed, request, f"{desc.name} in the request body", "BODY_MALFORMED")
        else:
            _merge_json(
                {route.body: parsed}, request, f"{route.body} in the request body", "BODY_MALFORMED"
            )
    fields: dict[str, Any] = {}
    for key, value in query:
        if route.body and key.split(".")[0] in (route.body, _camel(route.body)):
            raise invalid(
                f"query parameter {key[:100]!r} is bound by the request body",
                "PARAMETER_UNKNOWN",
            )
        _assign(fields, desc, key, value, where="query parameter", overwrite=False)
    for path_field, value in path_values.items():
        _assign(fields, desc, path_field, value, where="path variable", overwrite=True)
    if fields:
        _merge_json(fields, request, "query parameters", "PARAMETER_INVALID")
    return request


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# ---- the gateway ----


def split_host_port(address: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or None), int(port_text)


class RestGateway:
    """aiohttp app forwarding each route to the gRPC server at `target`."""

    def __init__(
        self,
        target: str,
        routes: Sequence[Route],
        *,
        max_wait: float,
        call_timeout: float = 60.0,
        wait_margin: float = 2.0,
        grace: float = 5.0,
        max_request_bytes: int = DEFAULT_MESSAGE_BYTES,
        max_response_bytes: int = DEFAULT_MESSAGE_BYTES,
        limits: ConnectionLimits | None = None,
        forwarding_secret: bytes | None = None,
        cors: CorsPolicy | None = None,
        console: bool = True,
    ) -> None:
        self.target = target
        #: Cross-origin callers allowed (server/cors.py); default: none.
        self.cors = cors or CorsPolicy()
        #: Serve the operations console at /console/ (server/console/).
        self.console = Console() if console else None
        #: Signs the HTTPS caller's client certificate SANs passed on to the
        #: gRPC call (server/gateway_link.py); None: none are passed on.
        self.forwarding_secret = forwarding_secret
        #: The gRPC server's receive limit: also the largest HTTP body taken.
        self.max_request_bytes = max_request_bytes
        #: The gRPC server's send limit: the loopback channel receives that much.
        self.max_response_bytes = max_response_bytes
        self.limits = limits or ConnectionLimits()
        self.connections = ConnectionGuard(self.limits)
        self.router = Router(routes)
        self.max_wait = max_wait
        self.call_timeout = call_timeout
        self.wait_margin = wait_margin
        self.grace = grace
        self._channel: grpc.aio.Channel | None = None
        self._runner: web.AppRunner | None = None
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    def channel_options(self) -> list[tuple[str, int]]:
        """The loopback channel's limits mirror the server's: it sends what the
        server receives and receives what the server sends."""
        return [
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_send_message_length", self.max_request_bytes),
            ("grpc.max_receive_message_length", self.max_response_bytes),
        ]

    def app(self) -> web.Application:
        middlewares = [self.cors.middleware()] if self.cors.enabled else []
        app = web.Application(client_max_size=self.max_request_bytes, middlewares=middlewares)
        if self.console is not None:
            # Before the catch-all: the console's pages are static files (the
            # data comes from the API routes, fetched with the user's credentials).
            self.console.add_routes(app)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(
        self,
        host: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> int:
        """Listen on host:port (port 0: any), with TLS when `ssl_context` is
        given (server/tls.py https_context); returns the bound port.
        `reuse_port`: other processes may listen on the same port (SO_REUSEPORT)."""
        self._channel = grpc.aio.insecure_channel(self.target, options=self.channel_options())
        self._runner = JsonErrorAppRunner(
            self.app(),
            handler_cancellation=True,
            shutdown_timeout=self.grace,
            access_log=logging.getLogger("longrun.http.access"),
            # Idle connections (none sent anything yet, or between requests).
            keepalive_timeout=self.limits.idle_timeout,
            # After an answer to a request whose body was not read: drain it
            # this long, then close.
            lingering_time=LINGER,
        )
        await self._runner.setup()
        site = GuardedSite(
            self._runner,
            self.connections,
            host=host,
            port=port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            ssl_context=ssl_context,
        )
        await site.start()
        addresses = self._runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        log.info(
            "HTTP/JSON gateway on %s://%s:%d -> gRPC %s",
            "https" if ssl_context is not None else "http",
            host or "*",
            bound,
            self.target,
        )
        return bound

    async def stop(self) -> None:
        """Stop listening; in-flight requests get `grace` seconds."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.connections.request_started(request.transport)
        try:
            return await self._handle(request)
        finally:
            self.connections.request_finished(request.transport)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0].split("#", 1)[0]
        try:
            route, values = self.router.resolve(request.method, raw_path)
            options, query = system_params(request.query.items())
            body = await self._read_body(request) if route.body else b""
            message = build_request(route, values, query, body)
            self._check_request_size(message)
            response = await self._invoke(route, message, self.call_metadata(request))
        except GatewayError as exc:
            refusal = _error_response(exc.status, exc.http, exc.headers)
            if exc.close:
                refusal.force_close()
            return refusal
        except grpc.RpcError as exc:
            status = status_from_rpc_error(exc)
            if status.code in (code_pb2.INTERNAL, code_pb2.UNKNOWN, code_pb2.UNAVAILABLE):
                log.warning("%s %s: %s", request.method, raw_path[:200], status.message)
            return _error_response(status)
        # Never fails: what is not JSON-printable takes the fallback form (rest_json).
        payload = message_json(response, use_integers_for_enums=options.use_integers_for_enums)
        return _json_response(200, payload)

    async def _read_body(self, request: web.Request) -> bytes:
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in BODY_ENCODINGS:
            raise invalid(
                f"Content-Encoding {encoding[:50]!r} is not supported; send the body as "
                "identity, gzip or deflate",
                "CONTENT_ENCODING_UNSUPPORTED",
                encoding=encoding[:50],
            )
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise invalid(
                f"request body exceeds {self.max_request_bytes} bytes "
                "(the server's --max-receive-message-bytes)",
                "BODY_TOO_LARGE",
                limit=str(self.max_request_bytes),
            ) from exc
        except (HttpProcessingError, RequestPayloadError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
            text = getattr(cause, "message", "") or type(cause).__name__
            # The rest of the body cannot be read either: stop aiohttp from
            # draining it after the answer (it would log the same error again);
            # the answer closes the connection.
            request.content.feed_eof()
            error = invalid(
                f"request body cannot be read as sent ({text}); "
                "check its Content-Encoding and length",
                "BODY_ENCODING_INVALID",
                encoding=encoding or "identity",
            )
            error.close = True
            raise error from exc
        except TimeoutError as exc:
            raise GatewayError(
                make_status(
                    code_pb2.DEADLINE_EXCEEDED,
                    f"the request body did not arrive within {self.limits.body_timeout:g} s",
                    "BODY_TIMEOUT",
                    {"timeout": f"{self.limits.body_timeout:g}s"},
                ),
                http=408,
                close=True,
            ) from exc

    def _check_request_size(self, message: Message) -> None:
        """A body within the limit can still make a bigger protobuf (a JSON
        array of small numbers): refuse it here as INVALID_ARGUMENT, not as the
        RESOURCE_EXHAUSTED (429, "retry later") the channel would raise."""
        size = message.ByteSize()
        if size > self.max_request_bytes:
            raise invalid(
                f"the request is {size} bytes as protobuf, more than the "
                f"{self.max_request_bytes} the server accepts (--max-receive-message-bytes)",
                "REQUEST_TOO_LARGE",
                size=str(size),
                limit=str(self.max_request_bytes),
            )

    def _call(self, route: Route) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        call = self._calls.get(route.rpc_path)
        if call is None:
            if self._channel is None:
                raise RuntimeError("the gateway is not started")
            call = self._channel.unary_unary(
                route.rpc_path,
                request_serializer=route.request_cls.SerializeToString,
                response_deserializer=route.response_cls.FromString,
            )
            self._calls[route.rpc_path] = call
        return call

    def deadline(self, route: Route, message: Message) -> float:
        """Seconds the gRPC call may take. WaitOperation: the wait the caller
        asked for (capped by the server's max wait) plus a margin, so the
        server answers with the latest state rather than DEADLINE_EXCEEDED."""
        if route.method.full_name != WAIT_METHOD:
            return self.call_timeout
        budget = self.max_wait
        if message.HasField("timeout"):
            # Seconds and nanos as numbers: a Duration out of its valid range
            # (the server answers INVALID_ARGUMENT for it) must not overflow here.
            timeout = message.timeout  # type: ignore[attr-defined]
            asked = timeout.seconds + timeout.nanos / 1e9
            budget = min(budget, max(asked, 0.0))
        return budget + self.wait_margin

    def call_metadata(self, request: web.Request) -> list[tuple[str, MetadataValue]]:
        """The gRPC metadata of the call made for `request`: its credential
        headers, and the SANs of its verified client certificate (signed)."""
        metadata: list[tuple[str, MetadataValue]] = list(credential_metadata(request.headers))
        metadata += trace_metadata(request.headers)
        if self.forwarding_secret is not None and request.transport is not None:
            sans = https_peer_sans(request.transport.get_extra_info("ssl_object"))
            metadata += forwarding_metadata(sans, self.forwarding_secret)
        return metadata

    async def _invoke(
        self, route: Route, message: Message, metadata: Sequence[tuple[str, MetadataValue]] = ()
    ) -> Message:
        response: Message = await self._call(route)(
            message, timeout=self.deadline(route, message), metadata=tuple(metadata)
        )
        return response


def _json_response(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=dumps(payload),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _error_response(
    status: status_pb2.Status, http: int | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = error_body(status, http)
    return _json_response(body["error"]["code"], body, error_headers(status) | dict(headers or {}))
