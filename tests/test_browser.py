"""The API docs in a real headless Chromium, against `social-api serve`, with no internet.

Swagger UI: Authorize with the OAuth2 password form, then "Try it out" on `GET /posts/` gives
200 and the posts. ReDoc renders the operations. Every request the browser makes must stay on
loopback; any other is aborted (as on a network without internet access) and fails the test.

Needs Debian's `chromium` (`.ci/install-browser`) and the `playwright` package; Playwright's
own browser download is not used. Without them the browser test is skipped, unless
REQUIRE_BROWSER is set (as `make test-browser` does), when it fails instead.
"""

import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import running_server
from tests.factories import DEFAULT_PASSWORD, unique_email

try:
    from playwright.sync_api import Browser, Page, Response, Route, expect, sync_playwright
except ImportError:
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # as root Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
POST_TITLE = "Seen through Swagger UI"

MISSING = [
    reason
    for reason, missing in [
        (f"{CHROMIUM} is missing (run .ci/install-browser)", not CHROMIUM.exists()),
        ("the playwright package is missing (pip install -e '.[test]')", not HAVE_PLAYWRIGHT),
    ]
    if missing
]
if MISSING:
    if os.environ.get("REQUIRE_BROWSER"):
        pytest.fail(f"REQUIRE_BROWSER is set, but {'; '.join(MISSING)}", pytrace=False)
    pytest.skip("; ".join(MISSING), allow_module_level=True)


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in {"data", "blob", "about"}:
        return True
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Replaces the suite's: this test has a server and store of its own, and no async fixture
    may run while Playwright's sync API holds the thread's event loop."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def sign_up_with_a_post(base: str) -> str:
    """Register a user who has one post; return the email."""
    email = unique_email()
    with httpx.Client(base_url=base, timeout=30) as http:
        created = http.post("/users/", json={"email": email, "password": DEFAULT_PASSWORD})
        assert created.status_code == 201, created.text
        login = http.post("/login", data={"username": email, "password": DEFAULT_PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        post = http.post("/posts/", json={"title": POST_TITLE, "content": "hi"}, headers=headers)
        assert post.status_code == 201, post.text
    return email


def authorize(page: Page, email: str) -> None:
    page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".dialog-ux .modal-ux")
    expect(dialog.get_by_text("OAuth2PasswordBearer")).to_be_visible()
    dialog.locator("#oauth_username").fill(email)
    dialog.locator("#oauth_password").fill(DEFAULT_PASSWORD)
    with page.expect_response(lambda r: urlsplit(r.url).path == "/login") as login:
        dialog.locator("button.authorize").click()
    assert login.value.status == 200
    expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    expect(dialog.get_by_role("button", name="Remove authorization")).to_be_visible()


def try_out_read_posts(page: Page) -> list[dict[str, Any]]:
    """Expand GET /posts/, "Try it out", "Execute"; return the JSON body Swagger UI shows."""
    operation = page.locator("#operations-Posts-read_posts")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    with page.expect_response(lambda r: urlsplit(r.url).path == "/posts/") as answer:
        operation.locator("button.execute").click()
    assert answer.value.status == 200
    assert answer.value.request.headers["authorization"].startswith("Bearer ")
    live = operation.locator(".live-responses-table tr.response")
    expect(live.locator(".response-col_status")).to_have_text("200")
    body = live.locator(".response-col_description pre").first
    expect(body).to_contain_text(POST_TITLE)
    shown = json.loads(body.inner_text())
    assert isinstance(shown, list)
    return shown


def test_docs_in_a_browser_without_internet(browser: Browser, tmp_path: Path) -> None:
    with running_server(tmp_path) as (base, _):
        email = sign_up_with_a_post(base)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        requests: list[str] = []
        failures: list[str] = []
        context.on("request", lambda request: requests.append(request.url))
        context.on("requestfailed", lambda request: failures.append(request.url))

        def record_error(response: Response) -> None:
            if response.status >= 400:
                failures.append(f"{response.status} {response.url}")

        context.on("response", record_error)

        def offline(route: Route) -> None:
            if is_loopback(route.request.url):
                route.continue_()
            else:
                route.abort("internetdisconnected")

        context.route("**/*", offline)
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            page.goto(f"{base}/docs")
            expect(page.locator(".info .title")).to_contain_text("Social API")
            expect(page.locator(".opblock").first).to_be_visible()
            version = page.evaluate("window.versions.swaggerUI.version")
            assert version.startswith("5."), version
            assert "OAS 3.1" in page.locator(".info .title").inner_text()
            redirect_url = page.evaluate("ui.getConfigs().oauth2RedirectUrl")

            authorize(page, email)
            page.screenshot(path=tmp_path / "docs-authorized.png")
            page.locator(".dialog-ux .modal-ux").get_by_role("button", name="Close").click()
            expect(page.locator(".dialog-ux")).to_have_count(0)

            posts = try_out_read_posts(page)
            assert [item["Post"]["title"] for item in posts] == [POST_TITLE]
            page.locator("#operations-Posts-read_posts").screenshot(
                path=tmp_path / "docs-executed.png"
            )

            page.goto(f"{base}/redoc")
            expect(page.locator("h1")).to_contain_text("Social API")
            expect(page.locator("h2", has_text="Read Posts")).to_be_visible()
            expect(page.get_by_role("menuitem", name="Posts")).to_be_visible()
            # ReDoc hides its sidebar logo when the image fails to load; upstream's bundle
            # loads it from a CDN, the package's from /redoc/logo-mini.svg.
            expect(page.get_by_role("img", name="redocly logo")).to_be_visible()
            page.screenshot(path=tmp_path / "redoc.png")
        finally:
            context.close()
        # Used by the authorization code and implicit flows (not by the password flow).
        redirect_page = httpx.get(redirect_url).raise_for_status().text

    assert redirect_url == f"{base}/docs/oauth2-redirect"
    assert "swaggerUIRedirectOauth2" in redirect_page
    foreign = [url for url in requests if not is_loopback(url)]
    assert not foreign, f"the docs reached beyond loopback: {foreign}"
    assert not failures, f"requests that failed: {failures}"
