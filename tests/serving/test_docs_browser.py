"""/docs and /redoc offline, in a real browser: headless Debian chromium driven by selenium
(through /usr/bin/chromedriver, so Selenium Manager downloads nothing) against gunicorn,
with every host but 127.0.0.1 out of the browser's reach.

Swagger UI renders the operations from local assets only, its Authorize dialog logs in with
the password flow and "Try it out" then calls the API with the token; ReDoc renders, and
the one thing it asks of another host (cdn.redoc.ly's logo) is refused by the page's CSP.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.processes import GunicornFactory, GunicornProcess, RedisProcess, free_port
from tests.support.settings import ADMIN_PASSWORD, ADMIN_USERNAME, GENEROUS_RATES

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs chromium and chromedriver on PATH (Debian: apt-get install chromium "
        "chromium-driver)",
    ),
]

WAIT = 15.0  # seconds, for any one thing to appear


def _browser_args() -> list[str]:
    return [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1280,1000",
        # Nothing resolves but 127.0.0.1 (measured: IP literals fail too, ERR_NAME_NOT_RESOLVED)...
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        # ...and, should anything get past the resolver, it goes to a proxy that is not
        # there. Chromium never proxies loopback, so the server under test stays reachable.
        f"--proxy-server=http://127.0.0.1:{free_port()}",
    ]


@dataclass
class Browser:
    """A selenium driver plus what its pages asked the network for (from chromium's
    performance log, which hands each entry out once: it is accumulated here)."""

    driver: Any
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)

    def visit(self, url: str) -> None:
        self.driver.get_log("performance")  # forget the previous page's traffic
        self.driver.get_log("browser")
        self.requests.clear()
        self.driver.get(url)

    def seen(self) -> dict[str, dict[str, Any]]:
        """URL -> {"status": int} when answered, {"failed": reason} when not."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            request_id = params.get("requestId")
            if message["method"] == "Network.requestWillBeSent":
                self.requests[request_id] = {"url": params["request"]["url"]}
            elif request_id not in self.requests:
                continue
            elif message["method"] == "Network.responseReceived":
                self.requests[request_id]["status"] = params["response"]["status"]
            elif message["method"] == "Network.loadingFailed":
                reason = params.get("blockedReason") or params.get("errorText")
                self.requests[request_id]["failed"] = reason
        return {r["url"]: r for r in self.requests.values() if r["url"].startswith("http")}

    def console_errors(self) -> list[str]:
        return [e["message"] for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def wait(self, css: str, timeout: float = WAIT) -> WebElement:
        return WebDriverWait(self.driver, timeout).until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, css))
        )

    def click(self, css: str, within: WebElement | None = None) -> None:
        scope = within or self.driver
        WebDriverWait(self.driver, WAIT).until(
            lambda _: scope.find_element(By.CSS_SELECTOR, css).is_displayed()
        )
        scope.find_element(By.CSS_SELECTOR, css).click()

    def fill(self, css: str, text: str) -> None:
        element = self.wait(css)
        element.clear()
        element.send_keys(text)

    def operation(self, method: str, path: str) -> WebElement:
        """Swagger UI's block of one operation, found by method and path (not operationId)."""
        xpath = f"//div[contains(@class, 'opblock-{method}')][.//*[@data-path='{path}']]"
        element: WebElement = WebDriverWait(self.driver, WAIT).until(
            ec.visibility_of_element_located((By.XPATH, xpath))
        )
        return element


@pytest.fixture(scope="module")
def server(gunicorn_factory: GunicornFactory, module_redis: RedisProcess) -> GunicornProcess:
    rates = {name.upper(): rate for name, rate in GENEROUS_RATES.items()}
    return gunicorn_factory(module_redis.url, **rates)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    assert CHROMIUM is not None
    assert CHROMEDRIVER is not None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in _browser_args():
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield Browser(driver)
    finally:
        driver.quit()


def _foreign(seen: dict[str, dict[str, Any]], server: GunicornProcess) -> dict[str, Any]:
    return {url: r for url, r in seen.items() if not url.startswith(f"{server.url}/")}


def test_the_browser_reaches_no_other_host(browser: Browser) -> None:
    """The isolation the other tests rely on: a name and an address elsewhere both fail
    inside the browser (no CSP involved: about:blank has none)."""
    browser.visit("about:blank")
    outcomes = {
        url: browser.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {mode: 'no-cors'})"
            ".then(() => done('reached'), () => done('failed'))",
            url,
        )
        for url in ("https://example.com/", "http://192.0.2.1/")
    }
    assert outcomes == {"https://example.com/": "failed", "http://192.0.2.1/": "failed"}
    reasons = {url: r.get("failed") for url, r in browser.seen().items()}
    assert reasons == {
        "https://example.com/": "net::ERR_PROXY_CONNECTION_FAILED",
        "http://192.0.2.1/": "net::ERR_PROXY_CONNECTION_FAILED",
    }


def test_swagger_ui_renders_from_local_assets(browser: Browser, server: GunicornProcess) -> None:
    browser.visit(f"{server.url}/docs")
    browser.operation("post", "/predict")
    browser.operation("get", "/users/me")
    seen = browser.seen()
    assert _foreign(seen, server) == {}
    assets = {url: r for url, r in seen.items() if "/static/docs/" in url}
    assert sorted(url.rsplit("/", 1)[1] for url in assets) == [
        "favicon.png",
        "swagger-ui-bundle.js",
        "swagger-ui.css",
    ]
    assert all(r.get("status") == 200 for r in assets.values()), assets
    assert seen[f"{server.url}/openapi.json"]["status"] == 200
    # The page's CSP allowed all it needed: no violation, no error of any kind.
    assert browser.console_errors() == []


def test_authorize_with_the_password_flow_then_try_it_out(
    browser: Browser, server: GunicornProcess
) -> None:
    browser.visit(f"{server.url}/docs")
    me = browser.operation("get", "/users/me")
    browser.click(".auth-wrapper button.authorize")
    browser.fill("#oauth_username", ADMIN_USERNAME)
    browser.fill("#oauth_password", ADMIN_PASSWORD)
    browser.click(".auth-btn-wrapper button.authorize")
    # The token request is asynchronous: success turns "Authorize" into "Logout".
    logout = browser.wait(".auth-btn-wrapper button[aria-label='Remove authorization']")
    assert logout.text == "Logout"
    token_calls = [r for url, r in browser.seen().items() if url == f"{server.url}/token"]
    assert [r.get("status") for r in token_calls] == [200]
    browser.click(".auth-btn-wrapper button.btn-done")
    browser.wait(".auth-wrapper button.authorize.locked")  # the padlock closed

    browser.click(".opblock-summary-control", within=me)
    browser.click("button.try-out__btn", within=me)
    browser.click("button.execute", within=me)
    status = WebDriverWait(browser.driver, WAIT).until(
        lambda _: me.find_element(
            By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status"
        )
    )
    assert status.text == "200"
    body = me.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description")
    assert f'"username": "{ADMIN_USERNAME}"' in body.text
    assert _foreign(browser.seen(), server) == {}
    assert browser.console_errors() == []


def test_redoc_renders_and_its_cdn_logo_is_refused(
    browser: Browser, server: GunicornProcess
) -> None:
    operations = sum(
        len(ops) for ops in httpx.get(f"{server.url}/openapi.json").json()["paths"].values()
    )
    browser.visit(f"{server.url}/redoc")
    try:
        WebDriverWait(browser.driver, WAIT).until(
            lambda d: (
                len(d.find_elements(By.CSS_SELECTOR, "[data-section-id*='/operation/']"))
                >= operations
            )
        )
    except TimeoutException:
        pytest.fail(f"ReDoc did not render; console: {browser.console_errors()}")
    assert "/users/me" in browser.driver.find_element(By.TAG_NAME, "body").text
    seen = browser.seen()
    assert seen[next(url for url in seen if url.endswith("/redoc.standalone.js"))]["status"] == 200
    # ReDoc 2 asks for https://cdn.redoc.ly/redoc/logo-mini.svg: the browser refuses it
    # because of the page's CSP, before any lookup (the request never leaves).
    foreign = _foreign(seen, server)
    assert {url: r.get("failed") for url, r in foreign.items()} == {
        "https://cdn.redoc.ly/redoc/logo-mini.svg": "csp"
    }
    errors = browser.console_errors()
    assert all("cdn.redoc.ly" in error for error in errors), errors
