"""The operations console in a real headless Chromium, against the real
server (with the HTTP gateway) and a worker on the embedded backend: the
list, its filter and pages, live state without a reload, cancel and delete
behind a confirmation, the keyboard, XSS payloads shown as text, and
authentication (API keys) with the same roles as the API."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.rpc import code_pb2

from tests.acceptance.browser import (
    Http,
    axe_source,
    axe_violations,
    chromium,
    chromium_paths,
    screenshot,
    wait_until,
)
from tests.acceptance.harness import ROOT, Service, backend_env

pytestmark = pytest.mark.slow

XSS_LABEL = '<img src=x onerror="window.__xss=1">'
XSS_ERROR = "<script>window.__xss=2</script><img src=y onerror=window.__xss=3>"


@dataclass
class Deployment:
    service: Service
    base: str
    env: dict[str, str]

    def http(self, **headers: str) -> Http:
        return Http(self.base, headers)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One server with the HTTP gateway (no authentication) and one worker."""
    chromium_paths()
    workdir = tmp_path_factory.mktemp("console")
    env = backend_env("embedded", workdir)
    port_file = workdir / "http-port"
    svc = Service(workdir, env)
    with svc.kept():
        svc.start_server("--http-address", "127.0.0.1:0", "--http-port-file", str(port_file))
        svc.start_worker("--concurrency", "4")
        yield Deployment(svc, f"http://127.0.0.1:{int(port_file.read_text())}", env)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def project() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def rows(driver: Any) -> list[tuple[str, str]]:
    """(operation name, state) of each row of the list."""
    return [
        (str(tr.get_attribute("data-name")), str(tr.find_elements("tag name", "td")[1].text))
        for tr in driver.find_elements("css selector", "#rows tr")
    ]


def names(driver: Any) -> list[str]:
    return [name for name, _ in rows(driver)]


def shown_error(driver: Any) -> Any:
    """The error box once it is shown, else None."""
    box = driver.find_element("id", "error")
    return box if box.is_displayed() else None


def mark_page(driver: Any) -> None:
    """A marker on the window that a reload would remove."""
    driver.execute_script("window.__noReload = 'kept';")


def not_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__noReload === 'kept';"))


def tab_through(driver: Any, presses: int = 25) -> list[str]:
    """The ids (or text) of the elements focused by pressing Tab from the top."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.activeElement && document.activeElement.blur();")
    seen: list[str] = []
    for _ in range(presses):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        active = driver.switch_to.active_element
        seen.append(str(active.get_attribute("id") or active.text))
    return seen


# ---- the list ----


def test_the_list_shows_jobs_newest_first_and_the_filter_narrows_it(
    deployment: Deployment, browser: Any
) -> None:
    http, p = deployment.http(), project()
    created = [
        http.create(p, "noop", {"n": i}, {"team": "ml" if i % 2 else "web"}) for i in range(4)
    ]
    browser.get(f"{deployment.base}/console/?project={p}")
    wait_until(browser, lambda d: len(names(d)) == 4, "four rows")
    assert names(browser) == created[::-1]  # newest first
    listed = http.ok("GET", f"/v1/projects/{p}/operations")["operations"]
    assert names(browser) == [op["name"] for op in listed]

    box = browser.find_element("id", "filter")
    box.send_keys('labels.team = "ml"\n')
    wait_until(browser, lambda d: names(d) == [created[3], created[1]], "the filtered rows")
    assert "filter=" in browser.current_url
    caption = browser.find_element("id", "summary").text
    assert caption.startswith("2 operations") and "matching the filter" in caption
    screenshot(browser, "console-list")


def test_pages_through_the_list_with_page_tokens(deployment: Deployment, browser: Any) -> None:
    http, p = deployment.http(), project()
    created = [http.create(p, "noop", {"n": i}) for i in range(120)]
    browser.get(f"{deployment.base}/console/?project={p}&pageSize=50")
    seen: list[str] = []

    def new_page_of(size: int) -> Callable[[Any], bool]:
        def check(driver: Any) -> bool:
            shown = names(driver)
            return len(shown) == size and shown[0] not in seen

        return check

    for expected in (50, 50, 20):
        wait_until(browser, new_page_of(expected), f"a page of {expected}")
        seen += names(browser)
        button = browser.find_element("id", "next-page")
        if expected == 20:
            assert not button.is_enabled()  # the last page has no next token
        else:
            button.click()
    assert seen == created[::-1]
    browser.back()  # the previous page is in the history
    wait_until(browser, lambda d: names(d) == seen[50:100], "the second page again")


def test_an_invalid_filter_shows_the_error(deployment: Deployment, browser: Any) -> None:
    browser.get(f"{deployment.base}/console/?project={project()}&filter=state%20%3D%3D")
    alert = wait_until(
        browser,
        shown_error,
        "the error",
    )
    assert "400 INVALID_ARGUMENT" in alert.text


# ---- live updates ----


def test_a_running_job_changes_state_on_the_page_without_a_reload(
    deployment: Deployment, browser: Any
) -> None:
    http, p = deployment.http(), project()
    # Long enough that the page shows it unfinished first, even on a loaded machine.
    name = http.create(p, "sleep", {"worktime": 8})
    browser.get(f"{deployment.base}/console/?project={p}")
    wait_until(browser, lambda d: names(d) == [name], "the row")
    assert rows(browser)[0][1] != "SUCCEEDED", "the page must first show it unfinished"
    mark_page(browser)
    wait_until(browser, lambda d: rows(d)[0][1] == "SUCCEEDED", "SUCCEEDED in the list")
    assert not_reloaded(browser)
    assert "is now SUCCEEDED" in browser.find_element("id", "live").text
    assert browser.find_element("id", "live").get_attribute("aria-live") == "polite"

    # The operation's page follows progress too.
    second = http.create(p, "sleep", {"worktime": 8})
    browser.get(f"{deployment.base}/console/{second}")
    mark_page(browser)
    progress = lambda d: int(d.find_element("id", "progress").get_attribute("value") or 0)  # noqa: E731
    wait_until(browser, lambda d: 0 < progress(d) < 100, "progress between 0 and 100")
    screenshot(browser, "console-operation-running")
    wait_until(browser, lambda d: d.find_element("id", "state").text == "SUCCEEDED", "SUCCEEDED")
    assert progress(browser) == 100 and not_reloaded(browser)
    assert '"slept_seconds": 8' in browser.find_element("id", "result").text


# ---- an operation's page ----


def test_cancel_asks_first_and_then_the_job_ends_cancelled(
    deployment: Deployment, browser: Any
) -> None:
    http, p = deployment.http(), project()
    name = http.create(p, "sleep", {"worktime": 60})
    wait_until_running(http, name)
    browser.get(f"{deployment.base}/console/{name}")
    wait_until(browser, lambda d: d.find_element("id", "state").text == "RUNNING", "RUNNING")
    mark_page(browser)

    browser.find_element("id", "cancel").click()
    dialog = browser.find_element("id", "confirm")
    wait_until(browser, lambda d: dialog.is_displayed(), "the confirmation")
    assert name in browser.find_element("id", "confirm-text").text
    browser.find_element("id", "confirm-no").click()
    wait_until(browser, lambda d: not dialog.is_displayed(), "the dialog to close")
    assert "cancelRequested" not in http.ok("GET", f"/v1/{name}")["metadata"]

    browser.find_element("id", "cancel").click()
    wait_until(browser, lambda d: dialog.is_displayed(), "the confirmation")
    browser.find_element("id", "confirm-yes").click()
    wait_until(browser, lambda d: d.find_element("id", "state").text == "CANCELLED", "CANCELLED")
    assert not_reloaded(browser)
    op = http.ok("GET", f"/v1/{name}")
    assert op["metadata"]["state"] == "CANCELLED" and op["error"]["code"] == 1
    assert not browser.find_element("id", "cancel").is_enabled()
    assert '"code": 1' in browser.find_element("id", "result").text
    screenshot(browser, "console-operation-cancelled")


def test_the_attempts_timeline_shows_each_attempt_and_how_it_ended(
    deployment: Deployment, browser: Any
) -> None:
    http, p = deployment.http(), project()
    message = f"boom-{uuid.uuid4().hex[:6]}"
    name = http.create(p, "fail", {"message": message})  # transient: 3 attempts
    browser.get(f"{deployment.base}/console/{name}")
    wait_until(browser, lambda d: d.find_element("id", "state").text == "FAILED", "FAILED")
    stored = http.ok("GET", f"/v1/{name}")["metadata"]["attempts"]
    assert [a["attempt"] for a in stored] == [1, 2, 3]

    assert all(a["code"] not in (0, None) and message in a["message"] for a in stored)
    items = browser.find_elements("css selector", "#attempt-timeline li")
    outcomes = [code_pb2.Code.Name(a["code"]) for a in stored]
    assert [i.get_attribute("data-outcome") for i in items] == outcomes
    for number, (item, attempt) in enumerate(zip(items, stored, strict=True), start=1):
        text = item.text
        assert text.startswith(f"Attempt {number} on {attempt['worker']}: "), text
        assert f"{code_pb2.Code.Name(attempt['code'])}: {attempt['message']}" in text
        times = item.find_elements("tag name", "time")
        assert [t.get_attribute("datetime") for t in times] == [
            attempt["startTime"],
            attempt["endTime"],
        ]
    assert browser.find_element("id", "attempts-note").text == ""
    screenshot(browser, "console-operation-attempts")


def test_delete_asks_first_and_removes_the_operation(deployment: Deployment, browser: Any) -> None:
    http, p = deployment.http(), project()
    name = http.create(p, "noop", {})
    http.ok("POST", f"/v1/{name}:wait", {"timeout": "20s"})
    browser.get(f"{deployment.base}/console/{name}")
    wait_until(browser, lambda d: d.find_element("id", "state").text == "SUCCEEDED", "SUCCEEDED")
    browser.find_element("id", "delete").click()
    wait_until(
        browser, lambda d: d.find_element("id", "confirm").is_displayed(), "the confirmation"
    )
    browser.find_element("id", "confirm-yes").click()
    wait_until(browser, lambda d: d.find_element("id", "state").text == "DELETED", "DELETED")
    assert http.call("GET", f"/v1/{name}").status == 404


def wait_until_running(http: Http, name: str) -> None:
    from tests.acceptance.harness import wait_for

    wait_for(lambda: http.ok("GET", f"/v1/{name}")["metadata"]["state"] == "RUNNING", 30, "RUNNING")


def test_the_keyboard_reaches_the_filter_the_buttons_and_the_confirmation(
    deployment: Deployment, browser: Any
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    http, p = deployment.http(), project()
    name = http.create(p, "sleep", {"worktime": 60})
    browser.get(f"{deployment.base}/console/?project={p}")
    wait_until(browser, lambda d: names(d) == [name], "the row")
    focused = tab_through(browser, 14)
    for control in ("credential", "signin-button", "project", "filter", "page-size", "apply"):
        assert control in focused, focused
    assert name.rsplit("/", 1)[1] in focused  # the row's link
    # The link opens the operation's page from the keyboard.
    link = browser.find_element("link text", name.rsplit("/", 1)[1])
    link.send_keys(Keys.ENTER)
    wait_until(browser, lambda d: d.current_url.endswith(name), "the operation's page")
    wait_until(
        browser, lambda d: d.find_element("id", "state").text in ("QUEUED", "RUNNING"), "state"
    )
    focused = tab_through(browser, 14)
    assert "cancel" in focused and "delete" in focused, focused
    browser.find_element("id", "cancel").send_keys(Keys.ENTER)
    dialog = browser.find_element("id", "confirm")
    wait_until(browser, lambda d: dialog.is_displayed(), "the confirmation")
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-no"  # the safe choice
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    wait_until(browser, lambda d: not dialog.is_displayed(), "Escape to close the dialog")
    assert "cancelRequested" not in http.ok("GET", f"/v1/{name}")["metadata"]
    http.ok("POST", f"/v1/{name}:cancel", {})


def test_xss_payloads_render_as_text(deployment: Deployment, browser: Any) -> None:
    http, p = deployment.http(), project()
    labelled = http.create(p, "noop", {"html": XSS_ERROR}, {"evil": XSS_LABEL})
    failed = http.create(p, "fail", {"message": XSS_ERROR, "permanent": True})
    http.ok("POST", f"/v1/{failed}:wait", {"timeout": "20s"})
    browser.get(f"{deployment.base}/console/?project={p}")
    wait_until(browser, lambda d: len(names(d)) == 2, "the rows")
    assert f"evil={XSS_LABEL}" in browser.find_element("id", "rows").text
    for page, text_id, payload in (
        (labelled, "labels", f"evil={XSS_LABEL}"),
        (failed, "result", XSS_ERROR),
    ):
        browser.get(f"{deployment.base}/console/{page}")
        wait_until(
            browser, lambda d: d.find_element("id", "state").text in ("SUCCEEDED", "FAILED"), "done"
        )
        assert payload in browser.find_element("id", text_id).text
        # Had any of it been parsed as HTML, these elements would exist.
        assert browser.find_elements("css selector", "main img, main script") == []
        assert browser.execute_script("return window.__xss === undefined;")


def test_axe_finds_no_serious_or_critical_violations_on_any_page(
    deployment: Deployment, browser: Any
) -> None:
    source = axe_source()
    http, p = deployment.http(), project()
    running = http.create(p, "sleep", {"worktime": 60}, {"team": "ml"})
    failed = http.create(p, "fail", {"message": "no", "permanent": True})
    http.ok("POST", f"/v1/{failed}:wait", {"timeout": "20s"})
    pages: dict[str, Callable[[], object]] = {
        "the list": lambda: wait_until(browser, lambda d: len(names(d)) == 2, "the rows"),
        "a running operation": lambda: wait_until(
            browser, lambda d: d.find_element("id", "state").text in ("QUEUED", "RUNNING"), "state"
        ),
        "a failed operation": lambda: wait_until(
            browser, lambda d: d.find_element("id", "state").text == "FAILED", "FAILED"
        ),
        "an error": lambda: wait_until(browser, shown_error, "the error"),
    }
    urls = {
        "the list": f"/console/?project={p}",
        "a running operation": f"/console/{running}",
        "a failed operation": f"/console/{failed}",
        "an error": f"/console/?project={p}&filter=%3D%3D",
    }
    report: dict[str, list[dict[str, Any]]] = {}
    for what, ready in pages.items():
        browser.get(deployment.base + urls[what])
        ready()
        violations = axe_violations(browser, source)
        report[what] = [v for v in violations if v["impact"] in ("serious", "critical")]
    # The confirmation dialog, open.
    browser.get(f"{deployment.base}/console/{running}")
    pages["a running operation"]()
    browser.find_element("id", "cancel").click()
    wait_until(browser, lambda d: d.find_element("id", "confirm").is_displayed(), "the dialog")
    report["the confirmation"] = [
        v for v in axe_violations(browser, source) if v["impact"] in ("serious", "critical")
    ]
    assert report == {what: [] for what in report}
    http.ok("POST", f"/v1/{running}:cancel", {})


def test_console_answers_carry_the_security_headers(deployment: Deployment) -> None:
    http = deployment.http()
    for path in (
        "/console/",
        "/console/projects/default/operations/x1",
        "/console/static/console.js",
    ):
        reply = http.call("GET", path)
        assert reply.status == 200
        csp = reply.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Referrer-Policy"] == "no-referrer"


# ---- with authentication ----


def _keys(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "longrun_server", "keys", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class Secured:
    deployment: Deployment
    project: str
    editor: str
    viewer: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A server with API keys on (keys minted with `keys create`) and a worker."""
    chromium_paths()
    workdir = tmp_path_factory.mktemp("console-auth")
    env = backend_env("embedded", workdir)
    p = "team"
    editor = _keys(env, "create", "--project", p, "--role", "editor")
    viewer = _keys(env, "create", "--project", p, "--role", "viewer")
    port_file = workdir / "http-port"
    svc = Service(workdir, env)
    with svc.kept():
        svc.start_server(
            "--api-keys", "--http-address", "127.0.0.1:0", "--http-port-file", str(port_file)
        )
        svc.start_worker()
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        yield Secured(Deployment(svc, base, env), p, editor, viewer)


def sign_in(driver: Any, key: str) -> None:
    driver.find_element("id", "credential").send_keys(key)
    driver.find_element("id", "signin-button").click()
    wait_until(
        driver, lambda d: "Signed in" in d.find_element("id", "signin-state").text, "signed in"
    )


def test_without_a_key_the_console_shows_401_and_how_to_sign_in(
    secured: Secured, browser: Any
) -> None:
    base = secured.deployment.base
    name = secured.deployment.http(**{"x-goog-api-key": secured.editor}).create(
        secured.project, "noop", {}
    )
    browser.get(f"{base}/console/?project={secured.project}")
    alert = wait_until(
        browser,
        shown_error,
        "the 401",
    )
    assert "401 UNAUTHENTICATED" in alert.text and "Sign in" in alert.text
    assert names(browser) == []

    sign_in(browser, secured.editor)
    wait_until(browser, lambda d: names(d) == [name], "the row once signed in")
    assert not browser.find_element("id", "error").is_displayed()
    # The key stays in this tab's sessionStorage, not in a cookie.
    assert browser.get_cookies() == []
    assert secured.editor in str(
        browser.execute_script("return sessionStorage.getItem('longrun.console.credential');")
    )

    browser.find_element("id", "signout-button").click()
    browser.refresh()
    wait_until(
        browser, lambda d: "401 UNAUTHENTICATED" in d.find_element("id", "error").text, "401 again"
    )


def test_a_viewer_may_look_but_cancel_is_permission_denied(secured: Secured, browser: Any) -> None:
    editor = secured.deployment.http(**{"x-goog-api-key": secured.editor})
    name = editor.create(secured.project, "sleep", {"worktime": 60})
    browser.get(f"{secured.deployment.base}/console/{name}")
    sign_in(browser, secured.viewer)
    wait_until(
        browser, lambda d: d.find_element("id", "state").text in ("QUEUED", "RUNNING"), "the state"
    )
    browser.find_element("id", "cancel").click()
    wait_until(
        browser, lambda d: d.find_element("id", "confirm").is_displayed(), "the confirmation"
    )
    browser.find_element("id", "confirm-yes").click()
    wait_until(
        browser, lambda d: "PERMISSION_DENIED" in d.find_element("id", "error").text, "the 403"
    )
    alert = browser.find_element("id", "error")
    assert alert.text.startswith("403 PERMISSION_DENIED")
    assert "cancelRequested" not in editor.ok("GET", f"/v1/{name}")["metadata"]
    editor.ok("POST", f"/v1/{name}:cancel", {})
