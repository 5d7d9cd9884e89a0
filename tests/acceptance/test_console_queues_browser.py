"""The console's queues and dead letters pages in a real headless Chromium,
against the real server (HTTP gateway) and a worker on the embedded backend:
a paused queue with its waiting jobs, Resume and Pause from the page behind a
confirmation (the state changes without a reload), the keyboard, a viewer's
disabled buttons and an admin's working ones (API keys), a forged message's
dead letter appearing without a reload and linking to its operation, and
axe-core on each page."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from longrun_core.queue import TaskMessage
from tests.acceptance.browser import (
    Http,
    axe_source,
    axe_violations,
    chromium,
    chromium_paths,
    screenshot,
    wait_until,
)
from tests.acceptance.forgery import Queue
from tests.acceptance.harness import ROOT, Service, backend_env, wait_for

pytestmark = pytest.mark.slow


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
    workdir = tmp_path_factory.mktemp("console-queues")
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
    return f"q-{uuid.uuid4().hex[:10]}"


def queue_rows(driver: Any) -> dict[str, list[str]]:
    """Each queue row's cells' text, by queue id."""
    found = {}
    for tr in driver.find_elements("css selector", "#rows tr"):
        cells = tr.find_elements("css selector", "th, td")
        found[cells[0].text] = [c.text for c in cells]
    return found


def state_of(driver: Any, queue_id: str) -> str:
    row = queue_rows(driver).get(queue_id)
    return row[1] if row else ""


def button_of(driver: Any, queue_id: str) -> Any:
    return driver.find_element("css selector", f'#rows tr[data-name$="/queues/{queue_id}"] button')


def mark_page(driver: Any) -> None:
    driver.execute_script("window.__noReload = 'kept';")


def not_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__noReload === 'kept';"))


def paused_queue_with_jobs(http: Http, p: str, jobs: int) -> list[str]:
    """Queue `work` of `p` (limits and retry set), paused, holding `jobs` jobs."""
    http.ok(
        "POST",
        f"/v1/projects/{p}/queues?queueId=work",
        {
            "rateLimits": {"maxConcurrentDispatches": 2, "maxConcurrentPerKey": 1},
            "retryConfig": {"maxAttempts": 4, "minBackoff": "1s", "maxBackoff": "10s"},
        },
    )
    assert http.ok("POST", f"/v1/projects/{p}/queues/work:pause", {})["state"] == "PAUSED"

    def job() -> str:
        return str(
            http.ok("POST", f"/v1/projects/{p}/jobs", {"task": "noop", "queue": "work"})["name"]
        )

    # A job published before the worker's view has the pause (it refreshes
    # every 0.5 s) still runs: probe until the worker holds one.
    first = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        first = job()
        metadata: dict[str, Any] = {}

        def settled(name: str = first) -> bool:
            nonlocal metadata
            op = http.ok("GET", f"/v1/{name}")
            metadata = op["metadata"]
            return bool(op.get("done")) or metadata.get("waitReason") == "QUEUE_PAUSED"

        wait_for(settled, 30, "the probe job to run or be held")
        if metadata.get("waitReason") == "QUEUE_PAUSED" and metadata["state"] == "QUEUED":
            break
    else:
        raise AssertionError(f"the worker never held a job of the paused queue: {metadata}")
    rest = [job() for _ in range(jobs - 1)]
    return [first, *rest]


def confirm(driver: Any, yes: bool) -> None:
    dialog = driver.find_element("id", "confirm")
    wait_until(driver, lambda d: dialog.is_displayed(), "the confirmation")
    driver.find_element("id", "confirm-yes" if yes else "confirm-no").click()
    wait_until(driver, lambda d: not dialog.is_displayed(), "the dialog to close")


# ---- the queues page ----


def test_a_paused_queue_is_shown_and_resumed_and_paused_from_the_page(
    deployment: Deployment, browser: Any
) -> None:
    http, p = deployment.http(), project()
    held = paused_queue_with_jobs(http, p, 3)
    browser.get(f"{deployment.base}/console/queues?project={p}")
    wait_until(browser, lambda d: state_of(d, "work") == "PAUSED", "the paused queue")
    row = queue_rows(browser)["work"]
    assert row[2:4] == ["3", "0"]  # waiting, running
    assert row[4] == "at most 2 running, 1 per key"
    assert row[5] == "4 attempts, backoff 1s to 10s"
    assert row[6] == "Resume"
    assert state_of(browser, "default") == "RUNNING"
    screenshot(browser, "console-queues")
    mark_page(browser)

    # Resume asks first: "No" leaves it paused.
    button_of(browser, "work").click()
    confirm(browser, yes=False)
    assert http.ok("GET", f"/v1/projects/{p}/queues/work")["state"] == "PAUSED"
    button_of(browser, "work").click()
    assert "Resume projects/" in browser.find_element("id", "confirm-text").text
    confirm(browser, yes=True)
    wait_until(browser, lambda d: state_of(d, "work") == "RUNNING", "RUNNING on the page")
    assert http.ok("GET", f"/v1/projects/{p}/queues/work")["state"] == "RUNNING"
    assert "Queue work is now RUNNING" in browser.find_element("id", "live").text
    # The held jobs run; the count follows without a reload.
    for name in held:
        http.ok("POST", f"/v1/{name}:wait", {"timeout": "30s"})
    wait_until(browser, lambda d: queue_rows(d)["work"][2] == "0", "no job waiting")

    button_of(browser, "work").click()
    confirm(browser, yes=True)
    wait_until(browser, lambda d: state_of(d, "work") == "PAUSED", "PAUSED on the page")
    assert http.ok("GET", f"/v1/projects/{p}/queues/work")["state"] == "PAUSED"
    assert not_reloaded(browser)


def test_a_queue_paused_elsewhere_shows_paused_without_a_reload(
    deployment: Deployment, browser: Any
) -> None:
    http, p = deployment.http(), project()
    browser.get(f"{deployment.base}/console/queues?project={p}")
    wait_until(browser, lambda d: state_of(d, "default") == "RUNNING", "the default queue")
    mark_page(browser)
    http.ok("POST", f"/v1/projects/{p}/queues/default:pause", {})
    wait_until(browser, lambda d: state_of(d, "default") == "PAUSED", "PAUSED by polling")
    assert not_reloaded(browser)
    http.ok("POST", f"/v1/projects/{p}/queues/default:resume", {})


def test_a_pause_that_fails_shows_the_servers_error(deployment: Deployment, browser: Any) -> None:
    http, p = deployment.http(), project()
    http.ok("POST", f"/v1/projects/{p}/queues?queueId=brief", {})
    browser.get(f"{deployment.base}/console/queues?project={p}")
    wait_until(browser, lambda d: state_of(d, "brief") == "RUNNING", "the queue")
    button_of(browser, "brief").click()
    dialog = browser.find_element("id", "confirm")
    wait_until(browser, lambda d: dialog.is_displayed(), "the confirmation")
    # Deleted while the user reads the question.
    assert http.call("DELETE", f"/v1/projects/{p}/queues/brief").status == 200
    browser.find_element("id", "confirm-yes").click()
    text = wait_until(
        browser,
        lambda d: (
            d.find_element("id", "error").text
            if d.find_element("id", "error").is_displayed()
            else ""
        ),
        "the error",
    )
    assert text.startswith("404 NOT_FOUND")
    assert f"projects/{p}/queues/brief does not exist" in text
    # The page's polls go on (the row leaves) and do not hide the error.
    refreshes = int(browser.find_element("id", "queues").get_attribute("data-refreshes") or 0)
    wait_until(
        browser,
        lambda d: (
            int(d.find_element("id", "queues").get_attribute("data-refreshes") or 0)
            >= refreshes + 2
        ),
        "two more polls",
    )
    assert "brief" not in queue_rows(browser)
    assert browser.find_element("id", "error").text.startswith("404 NOT_FOUND")
    assert http.call("GET", f"/v1/projects/{p}/queues/brief").status == 404


def test_the_keyboard_reaches_pause_and_the_confirmation(
    deployment: Deployment, browser: Any
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    http, p = deployment.http(), project()
    browser.get(f"{deployment.base}/console/queues?project={p}")
    wait_until(browser, lambda d: state_of(d, "default") == "RUNNING", "the default queue")
    browser.execute_script("document.activeElement && document.activeElement.blur();")
    focused = []
    for _ in range(16):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        active = browser.switch_to.active_element
        focused.append(str(active.get_attribute("id") or active.get_attribute("aria-label")))
    for control in ("credential", "signin-button", "project", "apply", "Pause queue default"):
        assert control in focused, focused
    button_of(browser, "default").send_keys(Keys.ENTER)
    dialog = browser.find_element("id", "confirm")
    wait_until(browser, lambda d: dialog.is_displayed(), "the confirmation")
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-no"  # the safe choice
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    wait_until(browser, lambda d: not dialog.is_displayed(), "Escape to close the dialog")
    assert http.ok("GET", f"/v1/projects/{p}/queues/default").get("state") == "RUNNING"
    # Focus returns to the button.
    assert browser.switch_to.active_element.get_attribute("aria-label") == "Pause queue default"


# ---- dead letters ----


def test_a_forged_messages_dead_letter_appears_and_links_to_its_operation(
    deployment: Deployment, browser: Any
) -> None:
    http, p = deployment.http(), project()
    name = http.create(p, "noop", {})
    http.ok("POST", f"/v1/{name}:wait", {"timeout": "30s"})
    browser.get(f"{deployment.base}/console/dead-letters?project={p}")
    wait_until(
        browser, lambda d: d.find_element("id", "summary").text.startswith("0 dead"), "empty"
    )
    mark_page(browser)
    # Put an unsigned message for the operation straight on the queue.
    Queue(deployment.service, "embedded").put(TaskMessage(name, "noop", 7))

    def row(driver: Any) -> list[str]:
        """The first row's cells' text ([]: no row yet, and wait_until waits on)."""
        trs = driver.find_elements("css selector", "#rows tr")
        return [c.text for c in trs[0].find_elements("css selector", "th, td")] if trs else []

    cells = wait_until(browser, row, "the dead letter, without a reload")
    assert not_reloaded(browser)
    op_id = name.rsplit("/", 1)[1]
    assert cells[0] == op_id and cells[1] == "noop" and cells[2] == "7"
    assert cells[4].startswith("rejected"), cells
    assert cells[5].startswith("20") and cells[5].endswith("Z")  # when, in UTC
    assert cells[6] == "default"
    api = http.ok("GET", f"/v1/projects/{p}/deadLetters")["deadLetters"]
    assert [d["operation"] for d in api] == [name]
    assert api[0]["reason"] == cells[4]
    screenshot(browser, "console-dead-letters")
    # Without a project: every project the caller may see (projects/-).
    everywhere = http.ok("GET", "/v1/projects/-/deadLetters?pageSize=200")["deadLetters"]
    assert name in [d["operation"] for d in everywhere]
    browser.get(f"{deployment.base}/console/dead-letters?pageSize=50")
    wait_until(browser, lambda d: d.find_elements("link text", op_id), "it among all projects'")
    # Its operation is one click (or Enter) away.
    browser.find_element("link text", op_id).click()
    wait_until(browser, lambda d: d.current_url.endswith(name), "the operation's page")
    wait_until(browser, lambda d: d.find_element("id", "state").text == "SUCCEEDED", "SUCCEEDED")
    # Another project's list does not show it.
    other = http.ok("GET", f"/v1/projects/{project()}/deadLetters")
    assert other.get("deadLetters", []) == []


def test_axe_finds_no_serious_or_critical_violations_on_the_new_pages(
    deployment: Deployment, browser: Any
) -> None:
    source = axe_source()
    http, p = deployment.http(), project()
    paused_queue_with_jobs(http, p, 1)
    name = http.create(p, "noop", {})
    http.ok("POST", f"/v1/{name}:wait", {"timeout": "30s"})
    Queue(deployment.service, "embedded").put(TaskMessage(name, "noop", 1))
    wait_for(
        lambda: bool(http.ok("GET", f"/v1/projects/{p}/deadLetters").get("deadLetters")),
        30,
        "the dead letter",
    )
    report: dict[str, list[dict[str, Any]]] = {}

    def serious() -> list[dict[str, Any]]:
        return [
            v for v in axe_violations(browser, source) if v["impact"] in ("serious", "critical")
        ]

    browser.get(f"{deployment.base}/console/queues?project={p}")
    wait_until(browser, lambda d: state_of(d, "work") == "PAUSED", "the paused queue")
    report["the queues"] = serious()
    button_of(browser, "work").click()
    wait_until(browser, lambda d: d.find_element("id", "confirm").is_displayed(), "the dialog")
    report["the confirmation"] = serious()
    browser.get(f"{deployment.base}/console/dead-letters?project={p}")
    wait_until(browser, lambda d: d.find_elements("css selector", "#rows tr"), "the row")
    report["the dead letters"] = serious()
    browser.get(f"{deployment.base}/console/dead-letters?project=BAD")
    wait_until(browser, lambda d: d.find_element("id", "error").is_displayed(), "the error")
    report["an error"] = serious()
    assert report == {what: [] for what in report}


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
    admin: str
    viewer: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    chromium_paths()
    workdir = tmp_path_factory.mktemp("console-queues-auth")
    env = backend_env("embedded", workdir)
    p = "team"
    admin = _keys(env, "create", "--project", p, "--role", "admin")
    viewer = _keys(env, "create", "--project", p, "--role", "viewer")
    port_file = workdir / "http-port"
    svc = Service(workdir, env)
    with svc.kept():
        svc.start_server(
            "--api-keys", "--http-address", "127.0.0.1:0", "--http-port-file", str(port_file)
        )
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        yield Secured(Deployment(svc, base, env), p, admin, viewer)


def sign_in(driver: Any, key: str) -> None:
    driver.find_element("id", "credential").send_keys(key)
    driver.find_element("id", "signin-button").click()
    wait_until(
        driver, lambda d: "Signed in" in d.find_element("id", "signin-state").text, "signed in"
    )


def test_pause_is_enabled_only_for_a_principal_who_may(secured: Secured, browser: Any) -> None:
    base, p = secured.deployment.base, secured.project
    browser.get(f"{base}/console/queues?project={p}")
    wait_until(
        browser, lambda d: "401 UNAUTHENTICATED" in d.find_element("id", "error").text, "the 401"
    )
    assert queue_rows(browser) == {}

    sign_in(browser, secured.viewer)
    wait_until(browser, lambda d: state_of(d, "default") == "RUNNING", "the queue for a viewer")
    assert not button_of(browser, "default").is_enabled()
    assert "longrun.queues.update" in str(button_of(browser, "default").get_attribute("title"))
    # A viewer also sees the project's dead letters (none), not another's.
    browser.get(f"{base}/console/dead-letters?project=elsewhere")
    wait_until(
        browser, lambda d: "403 PERMISSION_DENIED" in d.find_element("id", "error").text, "403"
    )

    browser.get(f"{base}/console/queues?project={p}")
    browser.find_element("id", "signout-button").click()
    sign_in(browser, secured.admin)
    wait_until(browser, lambda d: button_of(d, "default").is_enabled(), "Pause enabled")
    button_of(browser, "default").click()
    confirm(browser, yes=True)
    wait_until(browser, lambda d: state_of(d, "default") == "PAUSED", "PAUSED")
    admin = secured.deployment.http(**{"x-goog-api-key": secured.admin})
    assert admin.ok("GET", f"/v1/projects/{p}/queues/default")["state"] == "PAUSED"
    button_of(browser, "default").click()
    confirm(browser, yes=True)
    wait_until(browser, lambda d: state_of(d, "default") == "RUNNING", "RUNNING again")
