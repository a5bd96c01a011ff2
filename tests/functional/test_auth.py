"""Bearer JWT checks and scopes, through the whole WSGI stack."""

import base64
import json
import time

import jwt
import pytest
from pyramid.config import Configurator
from pyramid.security import NO_PERMISSION_REQUIRED

from lms_api.openapi import PUBLIC_ROUTES
from lms_api.security import Scope
from lms_api.views import api_view
from tests.conftest import JWT_TEST_SECRET, mint, sandbox_calls

SITEINFO = "/api/moodle/siteinfo"


def assert_unauthorized(response, invalid_token):
    assert response.status_int == 401
    assert response.json["ok"] is False
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) is invalid_token
    assert response.json["error"]["code"] == ("invalid_token" if invalid_token else "unauthenticated")


def test_no_token_is_a_401_bearer_challenge(gateway, sandbox):
    before = sandbox_calls(sandbox)

    assert_unauthorized(gateway.get(SITEINFO), invalid_token=False)
    assert sandbox_calls(sandbox) == before


def _unsigned(claims):
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


NOW = int(time.time())


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(mint("siteinfo:read", ttl=-120), id="expired"),
        pytest.param(mint("siteinfo:read", secret=JWT_TEST_SECRET[::-1]), id="wrong-key"),
        pytest.param(_unsigned({"sub": "x", "scope": "admin", "exp": NOW + 600}), id="alg-none"),
        pytest.param(mint("siteinfo:read", algorithm="HS512"), id="algorithm-not-allowed"),
        pytest.param(mint("siteinfo:read", nbf=NOW + 600), id="not-yet-valid"),
        pytest.param(jwt.encode({"sub": "x", "scope": "admin"}, JWT_TEST_SECRET), id="no-exp"),
        pytest.param(mint("siteinfo:read", sub=None), id="no-sub"),
        pytest.param(mint("siteinfo:read", moodle_userid="3"), id="moodle-userid-not-int"),
        pytest.param(mint("siteinfo:read", moodle_userid=True), id="moodle-userid-bool"),
        pytest.param("not.a.jwt", id="malformed"),
        pytest.param("x" * 9000, id="oversized"),
        pytest.param("", id="empty"),
    ],
)
def test_tokens_that_fail_verification_are_a_401_invalid_token(gateway, sandbox, token):
    before = sandbox_calls(sandbox)

    response = gateway.app.get(SITEINFO, headers={"Authorization": f"Bearer {token}"}, expect_errors=True)

    assert_unauthorized(response, invalid_token=True)
    assert sandbox_calls(sandbox) == before


def test_a_non_bearer_scheme_is_refused(gateway):
    response = gateway.app.get(SITEINFO, headers={"Authorization": "Basic dXNlcjpwYXNz"}, expect_errors=True)

    assert_unauthorized(response, invalid_token=True)


def test_a_token_in_the_query_string_is_not_accepted(gateway):
    valid = mint("siteinfo:read")

    alone = gateway.get(f"{SITEINFO}?access_token={valid}")
    with_header = gateway.get(f"{SITEINFO}?access_token={valid}", valid)

    assert_unauthorized(alone, invalid_token=True)
    assert_unauthorized(with_header, invalid_token=True)
    assert "query string" in alone.json["error"]["message"]


def test_a_valid_token_without_the_scope_is_a_403(gateway, sandbox):
    before = sandbox_calls(sandbox)

    response = gateway.get(SITEINFO, mint("courses:read users:read"))

    assert response.status_int == 403
    assert response.json["error"]["code"] == "forbidden"
    assert response.json["error"]["details"] == {"required_scope": "siteinfo:read"}
    assert "WWW-Authenticate" not in response.headers
    assert sandbox_calls(sandbox) == before


def test_admin_implies_every_scope(gateway):
    assert gateway.get(SITEINFO, mint("admin")).status_int == 200


def test_a_scope_must_match_exactly(gateway):
    assert gateway.get(SITEINFO, mint("siteinfo:readx siteinfo")).status_int == 403


def test_audience_and_issuer_are_checked_when_configured(make_gateway):
    gateway = make_gateway(JWT_AUDIENCE="lms-spa", JWT_ISSUER="https://idp.example")

    good = mint("siteinfo:read", aud="lms-spa", iss="https://idp.example")
    assert gateway.get(SITEINFO, good).status_int == 200
    for bad in (
        mint("siteinfo:read", aud="other", iss="https://idp.example"),
        mint("siteinfo:read", aud="lms-spa", iss="https://evil.example"),
        mint("siteinfo:read"),
    ):
        assert_unauthorized(gateway.get(SITEINFO, bad), invalid_token=True)


def test_the_caller_identity_is_in_the_summary_line(gateway):
    gateway.get(SITEINFO, mint("siteinfo:read", sub="alice"))

    summary = [line for line in gateway.log_lines if line["event"] == "request"][-1]
    assert summary["sub"] == "alice"
    assert summary["status"] == 200
    assert summary["route"] == "api.moodle.siteinfo"
    assert summary["moodle_functions"] == ["core_webservice_get_site_info"]
    assert summary["moodle_ms"] > 0


def test_api_view_requires_a_scope_permission():
    with pytest.raises(TypeError):
        api_view(route_name="x", request_method="GET")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        api_view(route_name="x", request_method="GET", permission="siteinfo:read")


def test_a_view_registered_without_a_permission_is_closed_even_to_admin(gateway):
    config = Configurator(registry=gateway.router.registry)
    config.add_route("forgotten", "/api/moodle/forgotten")
    config.add_view(lambda request: {"secret": True}, route_name="forgotten", renderer="json")
    config.commit()

    response = gateway.get("/api/moodle/forgotten", mint("admin"))

    assert response.status_int == 403
    assert "secret" not in response.text


def test_every_api_view_declares_a_scope(gateway):
    views = gateway.router.registry.introspector.get_category("views")
    api_views = [view for view in views if (view["introspectable"]["route_name"] or "").startswith("api.")]
    assert api_views
    scopes = {scope.value for scope in Scope}
    for view in api_views:
        permissions = [related["value"] for related in view["related"] if related.category_name == "permissions"]
        if view["introspectable"]["route_name"] in PUBLIC_ROUTES:  # the API's description is public
            assert permissions == [NO_PERMISSION_REQUIRED]
            continue
        assert len(permissions) == 1 and permissions[0] in scopes, view["introspectable"]["route_name"]
