"""The docs page in a real browser (headless Chromium), reached from the gateway's root: every route is listed, and
"Try it out" on site info with a pasted token answers 200 from the sandbox, under the page's Content-Security-Policy
with no violation reported; a reload forgets the token. The screenshot is kept for a person to look at."""

import shutil
import subprocess

import pytest
from playwright.sync_api import sync_playwright

from lms_api.docs import CONTENT_SECURITY_POLICY
from tests.support.paths import ROOT
from tests.support.processes import BIN, clean_env, wait_for_port
from tests.support.servers import free_port

SCREENSHOT = ROOT / ".test-artifacts" / "docs-page.png"
SITE_INFO = "#operations-siteinfo-site_info"


@pytest.fixture
def chromium():
    path = shutil.which("chromium")
    assert path, "Chromium is needed for the docs page test: apt-get install chromium (.ci/run installs it)"
    return path


def authorize(page, token):
    page.click("button.authorize")
    page.fill(".auth-container input", token)
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.btn-done")


def try_site_info(page):
    """Open site info (a reload keeps it open: deep linking), "Try it out", "Execute": the status and body shown."""
    if not page.locator(f"{SITE_INFO}.is-open").count():
        page.click(f"{SITE_INFO} .opblock-summary")
    page.click(f"{SITE_INFO} button.try-out__btn")
    page.click(f"{SITE_INFO} button.execute")
    status = page.locator(f"{SITE_INFO} .live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=20_000)
    return status.inner_text().strip(), page.locator(
        f"{SITE_INFO} .live-responses-table .microlight"
    ).first.inner_text()


def test_the_docs_page_lists_every_route_and_tries_site_info_with_a_pasted_token(spawn, chromium, tmp_path):
    port = free_port()
    wait_for_port(port, spawn("pserve", "development.ini", f"http_port={port}", env=clean_env()))
    token = subprocess.run(
        [str(BIN / "lms-api"), "token", "--sub", "docs-reader", "--scope", "siteinfo:read"],
        env=clean_env(), capture_output=True, text=True, check=True, cwd=tmp_path,  # the gateway's folder: its .env
    ).stdout.strip()  # fmt: skip
    docs = f"http://127.0.0.1:{port}/api/moodle/docs"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            # A violation is reported to the page as an event and to the console; both are collected.
            page.add_init_script(
                "document.addEventListener('securitypolicyviolation', e => "
                "(window.violations = window.violations || []).push(e.violatedDirective + ' ' + e.blockedURI))"
            )
            console = []
            page.on("console", lambda message: console.append((message.type, message.text)))
            loaded = {}
            page.on("response", lambda response: loaded.setdefault(response.url, response))

            page.goto(f"http://127.0.0.1:{port}/")  # the gateway's address leads to the page
            page.wait_for_selector(".opblock", timeout=20_000)
            landed_on = page.url
            operations = page.locator(".opblock").count()
            authorize(page, token)
            answered, body = try_site_info(page)
            stored = page.evaluate("JSON.stringify(window.localStorage)")
            violations = page.evaluate("window.violations || []")
            errors = [text for kind, text in console if kind == "error"]
            served = {
                url: (response.status, response.all_headers())
                for url, response in loaded.items()
                if url == docs or "/api/moodle/docs/assets/" in url
            }
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=SCREENSHOT)

            page.reload()
            page.wait_for_selector(".opblock", timeout=20_000)
            stored_after_reload = page.evaluate("JSON.stringify(window.localStorage)")
            answered_after_reload, _ = try_site_info(page)
            violations += page.evaluate("window.violations || []")
        finally:
            browser.close()

    assert landed_on == docs
    assert operations == 20  # every route and method of the document
    assert answered == "200"
    assert '"sitename": "lms_api Moodle sandbox"' in body
    assert violations == []
    assert errors == []
    assert [text for _, text in console if "Content Security Policy" in text] == []
    assert len(served) == 6  # the page, its stylesheet, two Swagger UI scripts, its own, the icon
    for url, (status, headers) in served.items():
        assert (status, headers["content-security-policy"]) == (200, CONTENT_SECURITY_POLICY), url
        assert headers["x-frame-options"] == "DENY", url
    assert token not in stored and token not in stored_after_reload
    assert answered_after_reload == "401"  # the token was in the page's memory only
