"""CORS for the SPA's exact origins, and the headers every API answer carries, errors included."""

import pytest
from pyramid.config import Configurator

from lms_api.errors import ApiError
from lms_api.views.exceptions import api_error
from tests.support.credentials import mint

APP = "https://app.example.edu"
COURSES = "/api/moodle/courses"


@pytest.fixture
def gateway(make_gateway):
    return make_gateway(CORS_ALLOWED_ORIGINS=f"{APP}, http://localhost:5173")


def preflight(gateway, origin, method="POST", path=COURSES):
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization",
    }
    return gateway.app.options(path, headers=headers, expect_errors=True)


def test_a_preflight_from_an_allowed_origin_is_204_with_the_routes_methods(gateway):
    response = preflight(gateway, APP)

    assert response.status_int == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST"
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Origin" in response.headers["Vary"]


def test_a_preflight_from_another_origin_is_403_without_any_allow_header(gateway):
    response = preflight(gateway, "https://evil.example")

    assert response.status_int == 403
    assert response.json["error"]["code"] == "corsrefused"
    assert not [name for name in response.headers if name.lower().startswith("access-control-allow")]


def test_no_origin_is_allowed_when_none_is_configured(make_gateway):
    response = preflight(make_gateway(), APP)

    assert response.status_int == 403


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        ("/api/moodle/siteinfo", mint("siteinfo:read"), 200),
        ("/api/moodle/siteinfo", None, 401),
        ("/api/moodle/siteinfo", mint("courses:read"), 403),
        ("/api/moodle/nowhere", mint("siteinfo:read"), 404),
        ("/api/moodle/courses?perpage=0", mint("courses:read"), 400),
    ],
)
def test_cors_and_hygiene_headers_are_on_successes_and_errors(gateway, path, token, status):
    response = gateway.get(path, token, headers={"Origin": APP})

    assert response.status_int == status
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_a_request_from_another_origin_gets_no_cors_header_and_never_a_wildcard(gateway):
    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"), headers={"Origin": "https://evil.example"})

    assert response.status_int == 200  # the browser, not the gateway, withholds the answer
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_429_carries_cors_headers_so_the_spa_can_read_retry_after(make_gateway):
    gateway = make_gateway(CORS_ALLOWED_ORIGINS=APP, RATE_LIMIT_UNAUTHENTICATED="1/minute")

    gateway.get("/api/moodle/siteinfo", headers={"Origin": APP})
    response = gateway.get("/api/moodle/siteinfo", headers={"Origin": APP})

    assert response.status_int == 429
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert "Retry-After" in response.headers["Access-Control-Expose-Headers"]


def test_a_preflight_for_a_path_without_a_route_is_answered_so_the_real_404_is_readable(gateway):
    response = preflight(gateway, APP, path="/api/moodle/nowhere")

    assert response.status_int == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Methods"] == "DELETE, GET, HEAD, PATCH, POST"
    real = gateway.get("/api/moodle/nowhere", mint("siteinfo:read"), headers={"Origin": APP})
    assert real.status_int == 404
    assert real.headers["Access-Control-Allow-Origin"] == APP


@pytest.mark.parametrize(
    "headers",
    [
        "authorization, content-type",
        "accept, accept-language, content-language",
        "x-request-id, x-requested-with",
        "cache-control, pragma",
    ],
)
def test_the_headers_common_spa_libraries_send_are_allowed(gateway, headers):
    response = gateway.app.options(
        COURSES,
        headers={"Origin": APP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers},
        expect_errors=True,
    )

    allowed = {name.strip().lower() for name in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {name.strip() for name in headers.split(",")} <= allowed


def test_why_a_token_failed_is_readable_by_the_page(gateway):
    response = gateway.get("/api/moodle/siteinfo", "not-a-jwt", headers={"Origin": APP})

    assert response.status_int == 401
    assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def answered_by_the_exception_views(gateway):
    """The codes of the ApiErrors the exception views answer from now on, in order."""
    codes = []

    def recording(error, request):
        codes.append(str(error.code))
        return api_error(error, request)

    config = Configurator(registry=gateway.router.registry)
    config.add_exception_view(recording, context=ApiError)
    config.commit()
    return codes


@pytest.mark.parametrize(
    ("environ", "refused", "code"),
    [
        ({}, lambda gateway: preflight(gateway, "https://evil.example"), "corsrefused"),
        (
            {"RATE_LIMIT_UNAUTHENTICATED": "1/minute"},
            lambda gateway: [gateway.get(COURSES) for _ in range(2)][-1],
            "ratelimited",
        ),
        (
            {"MAX_JSON_BODY_KB": "1"},
            lambda gateway: gateway.app.post(COURSES, b"{}" + b" " * 2048, expect_errors=True),
            "bodytoolarge",
        ),
    ],
    ids=["cors", "rate-limit", "body-limit"],
)
def test_what_a_tween_refuses_is_answered_by_the_exception_views(make_gateway, environ, refused, code):
    gateway = make_gateway(CORS_ALLOWED_ORIGINS=APP, **environ)
    answered = answered_by_the_exception_views(gateway)

    response = refused(gateway)

    assert response.json["error"]["code"] == code
    assert answered[-1] == code
