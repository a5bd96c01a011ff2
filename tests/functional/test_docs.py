"""The docs page and its assets through the whole WSGI stack: its Content-Security-Policy and X-Frame-Options, no
inline script, no token kept in the browser, only the files the page loads, and the redirects to it. The page in a
real browser is tests/integration/test_docs_page.py."""

import base64
import hashlib
import re
from importlib.resources import files

import pytest

from lms_api.docs import CONTENT_SECURITY_POLICY, LOGO_STYLE, LOGO_STYLE_HASH
from tests.support.credentials import mint

DOCS = "/api/moodle/docs"
ASSETS = f"{DOCS}/assets"
STATIC = files("swagger_ui") / "static"
SERVED = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}


def assert_secured(response):
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Frame-Options"] == "DENY"


def directives(policy):
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def test_the_policy_allows_scripts_and_connections_to_the_gateway_alone():
    policy = directives(CONTENT_SECURITY_POLICY)

    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["style-src"] == ["'self'", f"'{LOGO_STYLE_HASH}'"]
    assert (policy["frame-ancestors"], policy["base-uri"], policy["form-action"]) == (["'none'"],) * 3


def test_the_one_inline_style_allowed_is_the_one_swagger_ui_writes():
    """The hash is of the top bar logo's <style>: a newer swagger-ui-py with another logo fails here, not silently."""
    digest = base64.b64encode(hashlib.sha256(LOGO_STYLE.encode()).digest()).decode()

    assert f"sha256-{digest}" == LOGO_STYLE_HASH
    assert LOGO_STYLE in STATIC.joinpath("swagger-ui-standalone-preset.js").read_text()


def test_the_page_runs_no_inline_script_and_keeps_no_token(gateway):
    page = gateway.get(DOCS)

    assert page.status_int == 200 and page.content_type == "text/html"
    assert_secured(page)
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page.text, re.S)
    assert len(scripts) == 3 and all(body.strip() == "" for body in scripts)  # each one a src, none inline
    sources = re.findall(r'<script src="([^"]+)"', page.text)
    assert sources == [f"docs/assets/{name}" for name in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                                                           "lms-api-docs.js")]  # fmt: skip
    init = gateway.get(f"{ASSETS}/lms-api-docs.js")
    assert "SwaggerUIBundle(" in init.text and 'url: "openapi.json"' in init.text
    assert "persistAuthorization" not in init.text + page.text  # Swagger UI would keep the token in localStorage
    assert "validatorUrl: null" in init.text  # the default sends the document's URL to validator.swagger.io


@pytest.mark.parametrize(("name", "kind"), SERVED.items())
def test_each_file_the_page_loads_is_served_as_the_package_ships_it(gateway, name, kind):
    response = gateway.get(f"{ASSETS}/{name}")

    assert response.status_int == 200 and response.content_type == kind
    assert response.body == STATIC.joinpath(name).read_bytes()
    assert_secured(response)
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_pages_own_script_is_served_with_the_same_headers(gateway):
    response = gateway.get(f"{ASSETS}/lms-api-docs.js")

    assert response.status_int == 200 and response.content_type == "text/javascript"
    assert_secured(response)


def test_every_link_of_the_page_is_served(gateway):
    page = gateway.get(DOCS)
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)

    assert links and all(gateway.get(f"/api/moodle/{link}").status_int == 200 for link in links)


@pytest.mark.parametrize(
    "name",
    [
        *sorted(entry.name for entry in STATIC.iterdir() if entry.name not in SERVED),
        *("..%2F..%2Fsecurity.py", "%2e%2e", "swagger-ui.css.map", "index.html", ".", "a/b", "Swagger-UI.css"),
    ],
)
def test_nothing_else_of_the_package_is_served(gateway, name):
    """The package ships 25 MB: editor bundles, source maps, an OAuth redirect page, a petstore initializer."""
    response = gateway.get(f"{ASSETS}/{name}")

    assert response.status_int == 404
    assert response.json["error"]["code"] == "notfound"


# -- redirects to the page -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", f"{DOCS}/"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_root_and_the_docs_with_a_slash_redirect_to_the_page(gateway, path, method):
    response = gateway.app.request(path, method=method, expect_errors=True)

    assert response.status_int == 302
    assert response.headers["Location"] == DOCS  # a path: the browser keeps the address it asked for
    assert gateway.app.get(response.location).status_int == 200


def test_a_redirect_keeps_the_gateways_mount_point_and_never_names_the_callers_host(gateway):
    mounted = gateway.app.get("/", extra_environ={"SCRIPT_NAME": "/lms"})
    forged = gateway.app.get("/", headers={"Host": "evil.example"})

    assert mounted.headers["Location"] == f"/lms{DOCS}"
    assert forged.headers["Location"] == DOCS


def test_with_a_public_url_the_redirect_names_it(make_gateway):
    gateway = make_gateway(PUBLIC_URL="https://lms.example.edu")

    response = gateway.app.get("/", headers={"Host": "evil.example"})

    assert response.headers["Location"] == f"https://lms.example.edu{DOCS}"


def test_the_root_needs_no_token_and_counts_against_no_rate_limit(make_gateway):
    gateway = make_gateway(RATE_LIMIT_UNAUTHENTICATED="2/minute")

    answers = [gateway.get("/") for _ in range(5)] + [gateway.get("/", "not-a-token"), gateway.get("/", mint())]

    assert [answer.status_int for answer in answers] == [302] * 7
    assert all("RateLimit-Limit" not in answer.headers for answer in answers)
    under_api = [gateway.get(f"{DOCS}/").status_int for _ in range(3)]
    assert under_api == [302, 302, 429]  # under /api/: counted, as the page is


def test_other_methods_on_the_root_are_a_405(gateway):
    response = gateway.app.post("/", expect_errors=True)

    assert response.status_int == 405
    assert response.headers["Allow"] == "GET, HEAD"
