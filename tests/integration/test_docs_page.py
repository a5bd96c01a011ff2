"""The docs page in a real browser (headless Chromium): every route is listed, and "Try it out" on site info with a
pasted token answers 200 from the sandbox. The screenshot is kept for a person to look at."""

import shutil
import subprocess

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import ROOT, free_port
from tests.integration.conftest import BIN, clean_env, wait_for_port

SCREENSHOT = ROOT / ".test-artifacts" / "docs-page.png"
SITE_INFO = "#operations-siteinfo-site_info"


@pytest.fixture
def chromium():
    path = shutil.which("chromium")
    assert path, "Chromium is needed for the docs page test: apt-get install chromium (.ci/run installs it)"
    return path


def test_the_docs_page_lists_every_route_and_tries_site_info_with_a_pasted_token(spawn, chromium):
    port = free_port()
    wait_for_port(port, spawn("pserve", "development.ini", f"http_port={port}", env=clean_env()))
    token = subprocess.run(
        [str(BIN / "lms-api"), "token", "--sub", "docs-reader", "--scope", "siteinfo:read"],
        env=clean_env(), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/api/moodle/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            operations = page.locator(".opblock").count()

            page.click("button.authorize")
            page.fill(".auth-container input", token)
            page.click(".auth-btn-wrapper button.authorize")
            page.click("button.btn-done")
            page.click(f"{SITE_INFO} .opblock-summary")
            page.click(f"{SITE_INFO} button.try-out__btn")
            page.click(f"{SITE_INFO} button.execute")
            status = page.locator(f"{SITE_INFO} .live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=20_000)
            answered = status.inner_text().strip()
            body = page.locator(f"{SITE_INFO} .live-responses-table .microlight").first.inner_text()

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=SCREENSHOT)
        finally:
            browser.close()

    assert operations == 11  # every route and method of the document
    assert answered == "200"
    assert '"sitename": "lms_api Moodle sandbox"' in body
