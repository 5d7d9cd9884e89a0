"""The console's routes on the gateway (server/console/): its pages and
files with the security headers, nothing else served, and static checks on
the pages and script that the browser tests rely on (no inline script, no
HTML built from data)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from importlib import resources

import aiohttp
import pytest

from longrun_server.console.routes import PAGES, SECURITY_HEADERS, STATIC_FILES
from longrun_server.rest import RestGateway, build_routes, served_services


async def _gateway(console: bool) -> AsyncIterator[str]:
    gateway = RestGateway(
        "127.0.0.1:9", build_routes(served_services()), max_wait=5.0, grace=0.1, console=console
    )
    port = await gateway.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await gateway.stop()


@pytest.fixture
async def base() -> AsyncIterator[str]:
    async for url in _gateway(True):
        yield url


@pytest.fixture
async def without_console() -> AsyncIterator[str]:
    async for url in _gateway(False):
        yield url


async def get(url: str) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.get(url, allow_redirects=False) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.text()


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/console/", "text/html", 'data-page="list"'),
        ("/console/projects/default/operations/abc-1.x_~", "text/html", 'data-page="operation"'),
        ("/console/queues", "text/html", 'data-page="queues"'),
        ("/console/dead-letters", "text/html", 'data-page="dead-letters"'),
        ("/console/static/console.js", "text/javascript", "WaitOperation"),
        ("/console/static/console.css", "text/css", ":focus-visible"),
    ],
)
async def test_pages_and_files_are_served_with_the_security_headers(
    base: str, path: str, content_type: str, marker: str
) -> None:
    status, headers, body = await get(base + path)
    assert status == 200
    assert headers["Content-Type"] == f"{content_type}; charset=utf-8"
    assert marker in body
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_console_without_slash_redirects(base: str) -> None:
    status, headers, _ = await get(base + "/console")
    assert (status, headers["Location"]) == (301, "/console/")


@pytest.mark.parametrize(
    "path",
    [
        "/console/static/../routes.py",
        "/console/static/%2e%2e%2froutes.py",
        "/console/static/routes.py",
        "/console/pages/list.html",
        "/console/projects/UPPER/operations/x",
        "/console/projects/p/operations/x/extra",
        "/console/queues/",
        "/console/queues/default",
        "/console/dead-letters/x",
    ],
)
async def test_nothing_else_is_served(base: str, path: str) -> None:
    status, headers, body = await get(base + path)
    assert status == 404
    assert "Content-Security-Policy" in headers
    assert "import" not in body and "<html" not in body


async def test_the_api_routes_still_answer_next_to_the_console(base: str) -> None:
    status, _, body = await get(base + "/v2/nothing")
    assert status == 404 and '"ROUTE_NOT_FOUND"' in body


async def test_no_console_when_turned_off(without_console: str) -> None:
    status, headers, body = await get(without_console + "/console/")
    assert status == 404 and "ROUTE_NOT_FOUND" in body  # the API's answer
    assert "Content-Security-Policy" not in headers


class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self.ids: set[str] = set()
        self.labels_for: set[str] = set()
        self.fields: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(str(found["id"]))
        if tag == "script":
            self.scripts.append(found)
        if tag == "label" and found.get("for"):
            self.labels_for.add(str(found["for"]))
        if tag in ("input", "select", "textarea"):
            self.fields.add(str(found.get("id")))
        self.inline += [name for name, _ in attrs if name.startswith("on") or name == "style"]


@pytest.mark.parametrize("page", PAGES)
def test_pages_have_no_inline_script_and_every_field_a_label(page: str) -> None:
    html = resources.files("longrun_server.console").joinpath(f"pages/{page}").read_text()
    scan = _Scan()
    scan.feed(html)
    assert scan.scripts == [{"src": "/console/static/console.js", "defer": None}]
    assert scan.inline == []  # no on* handlers or style attributes (the CSP blocks them)
    assert scan.fields and scan.fields <= scan.labels_for
    assert {"error", "live", "signin-form", "credential"} <= scan.ids
    assert 'aria-live="polite"' in html and 'role="alert"' in html
    # Every page links every page in its navigation, and marks its own.
    for href in ('href="/console/"', 'href="/console/queues"', 'href="/console/dead-letters"'):
        assert href in html, href
    assert html.count('aria-current="page"') == (0 if page == "operation.html" else 1)


def test_the_script_never_builds_html_from_strings() -> None:
    script = resources.files("longrun_server.console").joinpath("static/console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert re.search(r"credentials:\s*\"omit\"", script)  # never cookies
    assert set(STATIC_FILES) == {"console.js", "console.css"}
