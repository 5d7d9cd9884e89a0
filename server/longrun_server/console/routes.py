"""Routes of the operations console: its pages and static files.

    GET /console                                   -> 301 /console/
    GET /console/                                  the operations list
    GET /console/projects/{p}/operations/{id}      an operation's page
    GET /console/queues                            a project's queues (?project=)
    GET /console/dead-letters                      the dead letters (?project=)
    GET /console/static/{console.js,console.css}   the script and style sheet

Every answer carries the console's security headers (CSP without inline
script, nosniff, no framing, no referrer). The files are read once, at
construction, from this package; nothing else on disk is reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

PREFIX = "/console"
#: The path segments of an operation's page (core/names.py's rules, unanchored).
PROJECT_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}"

#: Sent on every console answer.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

#: Static files served, by name, with their content types.
STATIC_FILES: Mapping[str, str] = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
PAGES = ("list.html", "operation.html", "queues.html", "dead-letters.html")


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def _load(name: str, content_type: str) -> Asset:
    data = resources.files(__package__).joinpath(name).read_bytes()
    return Asset(data, content_type)


class Console:
    """The console's aiohttp routes; add them before the gateway's catch-all."""

    def __init__(self) -> None:
        self.pages = {name: _load(f"pages/{name}", "text/html") for name in PAGES}
        self.static = {name: _load(f"static/{name}", kind) for name, kind in STATIC_FILES.items()}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREFIX, self.redirect)
        app.router.add_get(PREFIX + "/", self.list_page)
        app.router.add_get(
            PREFIX
            + "/projects/{project:"
            + PROJECT_PATTERN
            + "}/operations/{operation:"
            + ID_PATTERN
            + "}",
            self.operation_page,
        )
        app.router.add_get(PREFIX + "/static/{file}", self.static_file)
        app.router.add_get(PREFIX + "/queues", self.queues_page)
        app.router.add_get(PREFIX + "/dead-letters", self.dead_letters_page)
        app.router.add_route("*", PREFIX + "/{tail:.*}", self.not_found)

    @staticmethod
    def answer(asset: Asset, status: int = 200) -> web.Response:
        return web.Response(
            body=asset.body,
            status=status,
            content_type=asset.content_type,
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )

    async def redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": PREFIX + "/", **SECURITY_HEADERS})

    async def list_page(self, request: web.Request) -> web.Response:
        return self.answer(self.pages["list.html"])

    async def operation_page(self, request: web.Request) -> web.Response:
        return self.answer(self.pages["operation.html"])

    async def queues_page(self, request: web.Request) -> web.Response:
        return self.answer(self.pages["queues.html"])

    async def dead_letters_page(self, request: web.Request) -> web.Response:
        return self.answer(self.pages["dead-letters.html"])

    async def static_file(self, request: web.Request) -> web.Response:
        asset = self.static.get(request.match_info["file"])
        if asset is None:
            return await self.not_found(request)
        return self.answer(asset)

    async def not_found(self, request: web.Request) -> web.Response:
        return web.Response(
            text="Not found. The console is at /console/.\n",
            status=404,
            content_type="text/plain",
            charset="utf-8",
            headers=SECURITY_HEADERS,
        )
