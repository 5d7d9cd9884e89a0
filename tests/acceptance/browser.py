"""A real headless Chromium driven by Selenium, for the console's tests.

Debian's `chromium` and `chromium-driver` packages (.ci/run installs them);
the tests skip, saying so, where they are missing. Each browser gets its own
profile directory and ignores any proxy (the console is on 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: Seconds a wait for a condition on the page may take.
PAGE_TIMEOUT = 20.0

# urllib must reach 127.0.0.1 directly, whatever proxy the machine has.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    return browser, driver


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium WebDriver with `profile` as its user data dir."""
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    browser, driver_path = chromium_paths()
    options = Options()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-proxy-server",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    service = DriverService(executable_path=driver_path, env=env)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver: Any, condition: Callable[[Any], T], what: str) -> T:
    """The first truthy value of `condition(driver)`, polled by WebDriverWait."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        result: T = WebDriverWait(
            driver, PAGE_TIMEOUT, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException as exc:
        raise AssertionError(
            f"timed out after {PAGE_TIMEOUT}s waiting for {what}; page text:\n"
            + driver.find_element("tag name", "body").text
        ) from exc
    return result


#: A folder the console tests save their screenshots in (docs/images/ holds
#: the ones the README shows: `LONGRUN_CONSOLE_SCREENSHOTS=docs/images`).
SCREENSHOTS_ENV = "LONGRUN_CONSOLE_SCREENSHOTS"


def screenshot(driver: Any, name: str) -> Path | None:
    """Save the page as `<name>.png` in $LONGRUN_CONSOLE_SCREENSHOTS, if set."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
    return path


AXE_DIR = Path(__file__).parent / "axe"


def axe_source() -> str:
    """axe-core's script, from tests/acceptance/axe (pinned; `npm ci` installs it)."""
    script = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        npm = shutil.which("npm")
        if not npm:
            pytest.skip("npm is not installed: axe-core cannot be installed")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=AXE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return script.read_text()


def axe_violations(driver: Any, source: str) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (WCAG 2.x A and AA rules)."""
    driver.execute_script(source)
    found: list[dict[str, Any]] = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const tags = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"];
        axe.run(document, {runOnly: {type: "tag", values: tags}})
          .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map(n => n.target.join(" "))}))))
          .catch(e => done([{id: "axe-error", impact: "critical", help: String(e), nodes: []}]));
        """
    )
    return found


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


@dataclass
class Http:
    """Plain HTTP calls to the gateway (to set up and check what the page shows)."""

    base: str
    headers: Mapping[str, str]

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=dict(self.headers)
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _DIRECT.open(request, timeout=60) as response:
                text = response.read().decode()
                return Reply(response.status, dict(response.headers), _json(text))
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            return Reply(exc.code, dict(exc.headers), _json(text))

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.call(method, path, body)
        assert reply.status == 200, f"{method} {path}: {reply.status} {reply.body}"
        return reply.body

    def create(
        self,
        project: str,
        task: str,
        params: Mapping[str, Any],
        labels: Mapping[str, str] | None = None,
    ) -> str:
        op = self.ok(
            "POST",
            f"/v1/projects/{project}/jobs",
            {"task": task, "params": dict(params), "labels": dict(labels or {})},
        )
        return str(op["name"])


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return text
