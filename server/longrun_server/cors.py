"""CORS for browser apps on other origins: an allow-list, off by default.

`--cors-allowed-origins https://app.example.com,http://localhost:5173`
(LONGRUN_CORS_ALLOWED_ORIGINS) names the exact origins (scheme, host and
port; no wildcards, no paths) whose pages may call the HTTP/JSON gateway
with `fetch`. For them:

- a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
  is answered 204 with the methods the routes use (GET, POST, DELETE) and
  the headers they read (authorization, x-goog-api-key, content-type,
  traceparent, tracestate);
- every other answer carries `Access-Control-Allow-Origin: <the origin>`
  and exposes the headers a client may read (Retry-After for 429s).

No credentials mode: the gateway reads credentials from headers only (never
cookies), so `Access-Control-Allow-Credentials` is never sent. Any other
origin gets no CORS headers at all (the browser then refuses the page
access), and its preflight falls through to the router as when CORS is off.
Whenever the list is non-empty every answer says `Vary: Origin`, since the
headers depend on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

#: Methods the gateway's routes use.
ALLOWED_METHODS = ("GET", "POST", "DELETE")
#: Request headers the gateway reads (credentials, the JSON body's type, and
#: the W3C trace context an instrumented browser app sends).
ALLOWED_HEADERS = ("authorization", "x-goog-api-key", "content-type", "traceparent", "tracestate")
#: Response headers a cross-origin caller may read besides the safelisted ones.
EXPOSED_HEADERS = ("retry-after",)
#: Seconds a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE = 600


def parse_origin(text: str) -> str:
    """`text` as a serialized origin (`scheme://host[:port]`, lowercase), or
    ValueError saying why it is not one."""
    raw = text.strip()
    if raw in ("*", "null"):
        raise ValueError(f"{raw!r}: list exact origins, not a wildcard")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{raw!r}: an origin starts with http:// or https://")
    if not parts.hostname or "*" in parts.netloc:
        raise ValueError(f"{raw!r}: an origin names one host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{raw!r}: an origin has no path, query, fragment or user")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{raw!r}: {exc}") from exc
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def parse_origins(value: str | Iterable[str]) -> tuple[str, ...]:
    """A comma-separated list (or iterable) of origins, each checked; empty: off."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(dict.fromkeys(parse_origin(item) for item in items if item.strip()))


@dataclass(frozen=True)
class CorsPolicy:
    allowed_origins: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.allowed_origins)

    def allows(self, origin: str | None) -> bool:
        return origin is not None and origin in self.allowed_origins

    def preflight(self, request: web.Request) -> web.Response | None:
        """The answer to a CORS preflight from an allowed origin, else None."""
        origin = request.headers.get("Origin")
        if (
            request.method != "OPTIONS"
            or "Access-Control-Request-Method" not in request.headers
            or not self.allows(origin)
        ):
            return None
        assert origin is not None
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
                "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
                "Vary": "Origin",
            },
        )

    def decorate(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add the CORS headers of an actual (non-preflight) answer."""
        if not self.enabled:
            return
        vary = response.headers.get("Vary", "")
        if "origin" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        origin = request.headers.get("Origin")
        if self.allows(origin):
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)

    def middleware(self) -> Middleware:
        @web.middleware
        async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
            answer = self.preflight(request)
            if answer is not None:
                return answer
            response = await handler(request)
            self.decorate(request, response)
            return response

        return cors
