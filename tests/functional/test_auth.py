"""Bearer JWT checks and scopes, through the whole WSGI stack."""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from pyramid.config import Configurator
from pyramid.security import NO_PERMISSION_REQUIRED

from lms_api.openapi import PUBLIC_ROUTES
from lms_api.security import Scope
from lms_api.views import api_view
from tests.support.credentials import JWT_TEST_SECRET, mint
from tests.support.sandbox import sandbox_calls

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


# -- what a refused token is told ------------------------------------------------------------------


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header, payload):
    """An HS256 token signed with the gateway's key whose header and payload are given as they are: objects (made
    JSON), or bytes (sent as such), so a test can send what PyJWT would refuse to write."""
    parts = [_b64(part if isinstance(part, bytes) else json.dumps(part).encode()) for part in (header, payload)]
    signature = hmac.new(JWT_TEST_SECRET.encode(), ".".join(parts).encode(), hashlib.sha256).digest()
    return ".".join([*parts, _b64(signature)])


HS256 = {"alg": "HS256", "typ": "JWT"}
CLAIMS = {"sub": "x", "scope": "siteinfo:read", "exp": NOW + 600}
GOOD_HEADER, GOOD_PAYLOAD, GOOD_SIGNATURE = signed(HS256, CLAIMS).split(".")


@pytest.mark.parametrize(
    ("token", "says"),
    [
        pytest.param("abc", "expected three base64url parts, header.payload.signature (found 1)", id="one-part"),
        pytest.param("a.b.c.d", "expected three base64url parts, header.payload.signature (found 4)", id="four-parts"),
        pytest.param(
            f"{GOOD_HEADER}.{GOOD_PAYLOAD}",
            "expected three base64url parts, header.payload.signature (found 2)",
            id="two-parts",
        ),
        # The issue's example: PyJWT answered "Invalid header string: 'utf-8' codec can't decode byte 0xb7 ..."
        pytest.param(f"t7e3.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}", "its header is not base64url-encoded JSON", id="binary"),
        pytest.param(f"{GOOD_HEADER[:-1]}!.{GOOD_PAYLOAD}.x", "its header is not base64url-encoded", id="bad-char"),
        pytest.param(f"eyJhbGc+.{GOOD_PAYLOAD}.x", "its header is not base64url-encoded", id="standard-base64"),
        pytest.param(f"{GOOD_HEADER}===.{GOOD_PAYLOAD}.x", "its header is not base64url-encoded", id="padding"),
        pytest.param(f"{GOOD_HEADER}x.{GOOD_PAYLOAD}.x", "its header is not base64url-encoded", id="length"),
        pytest.param(f"ab.{GOOD_PAYLOAD}.x", "its header is not base64url-encoded", id="leftover-bits"),
        pytest.param(f"{_b64(b'{alg')}.{GOOD_PAYLOAD}.x", "its header is not base64url-encoded JSON", id="hdr-json"),
        pytest.param(f".{GOOD_PAYLOAD}.x", "its header is not base64url-encoded JSON", id="empty-header"),
        pytest.param(signed([1], CLAIMS), "its header is JSON but not an object", id="header-array"),
        pytest.param(signed(HS256, b"\xff\xfe{}"), "its payload is not base64url-encoded JSON", id="payload-bytes"),
        pytest.param(f"{GOOD_HEADER}.%%%.x", "its payload is not base64url-encoded", id="payload-b64"),
        pytest.param(signed(HS256, "claims"), "its payload is JSON but not an object", id="payload-string"),
        pytest.param(f"{GOOD_HEADER}.{GOOD_PAYLOAD}.sig!", "its signature is not base64url-encoded", id="sig-b64"),
    ],
)
def test_a_token_that_is_no_jwt_is_told_what_is_wrong_in_its_own_terms(gateway, token, says):
    message = gateway.get(SITEINFO, token).json["error"]["message"]

    assert message == f"The bearer token was refused: it is not a JWT: {says}"
    assert_not_echoed(message, token)


def assert_not_echoed(message, token):
    assert token not in message
    assert all(part not in message for part in token.split(".") if len(part) > 4)
    for pyjwt_words in ("Invalid", "codec", "padding", "segments", "Signature", "Token is"):
        assert pyjwt_words not in message


@pytest.mark.parametrize(
    ("token", "says"),
    [
        pytest.param(signed({**HS256, "alg": "HS512"}, CLAIMS), "its algorithm HS512 is not accepted", id="hs512"),
        pytest.param(_unsigned(CLAIMS), "its algorithm none is not accepted", id="none"),
        pytest.param(signed({"alg": "X" * 40}, CLAIMS), "its header names no algorithm ('alg')", id="made-up"),
        pytest.param(signed({"alg": ["HS256"]}, CLAIMS), "its header names no algorithm ('alg')", id="alg-list"),
        pytest.param(signed({"typ": "JWT"}, CLAIMS), "its header names no algorithm ('alg')", id="no-alg"),
        pytest.param(signed({**HS256, "kid": 5}, CLAIMS), "its key id ('kid') must be a string", id="kid"),
        pytest.param(
            signed({**HS256, "crit": ["exp"]}, CLAIMS), "its header lists critical extensions ('crit')", id="crit"
        ),
        pytest.param(signed({**HS256, "b64": False}, CLAIMS), "its payload is not base64url-encoded ('b64')", id="b64"),
        pytest.param(mint("siteinfo:read", secret=JWT_TEST_SECRET[::-1]), "its signature does not match", id="key"),
        pytest.param(mint("siteinfo:read", ttl=-120), "it has expired", id="expired"),
        pytest.param(mint("siteinfo:read", nbf=NOW + 600), "it is not valid yet", id="nbf"),
        pytest.param(mint("siteinfo:read", iat=NOW + 600), "it is not valid yet", id="iat"),
        pytest.param(signed(HS256, {"sub": "x"}), "it has no 'exp' claim", id="no-exp"),
        pytest.param(signed(HS256, {"exp": NOW + 600}), "it has no 'sub' claim", id="no-sub"),
        pytest.param(signed(HS256, {**CLAIMS, "sub": 7}), "'sub' must be a non-empty string", id="sub-int"),
        pytest.param(signed(HS256, {**CLAIMS, "sub": ""}), "'sub' must be a non-empty string", id="sub-empty"),
        pytest.param(signed(HS256, {**CLAIMS, "jti": 7}), "'jti' must be a string", id="jti"),
        pytest.param(signed(HS256, {**CLAIMS, "scope": ["admin"]}), "'scope' must be a string", id="scope-list"),
        pytest.param(signed(HS256, {**CLAIMS, "moodle_userid": 0}), "'moodle_userid' must be", id="userid"),
        pytest.param("x" * 9000, "token too large", id="oversized"),
    ],
)
def test_a_refused_jwt_is_told_why_in_its_own_terms(gateway, token, says):
    response = gateway.get(SITEINFO, token)

    assert_unauthorized(response, invalid_token=True)
    assert response.json["error"]["message"].startswith(f"The bearer token was refused: {says}")
    assert_not_echoed(response.json["error"]["message"], token)


def test_a_wrong_audience_or_issuer_is_told_which(make_gateway):
    gateway = make_gateway(JWT_AUDIENCE="lms-spa", JWT_ISSUER="https://idp.example")

    audience = gateway.get(SITEINFO, mint("siteinfo:read", aud="other", iss="https://idp.example"))
    issuer = gateway.get(SITEINFO, mint("siteinfo:read", aud="lms-spa", iss="https://evil.example"))

    assert (
        audience.json["error"]["message"] == "The bearer token was refused: its audience ('aud') is not this gateway's"
    )
    assert issuer.json["error"]["message"] == (
        "The bearer token was refused: its issuer ('iss') is not the one the gateway trusts"
    )


# -- the time claims are JSON numbers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "value", "kind"),
    [
        # PyJWT alone reads these with int(): a string of digits was a valid expiry, and true was 1970's second one
        ("exp", "9999999999", "a string"),
        pytest.param("exp", str(NOW + 600), "a string", id="exp-digits-in-ten-minutes"),
        ("exp", True, "true or false"),
        ("exp", None, "null"),
        ("exp", [NOW + 600], "an array"),
        ("exp", {"t": NOW + 600}, "an object"),
        ("nbf", "0", "a string"),
        ("nbf", False, "true or false"),
        ("iat", "1", "a string"),
        ("iat", True, "true or false"),
    ],
)
def test_time_claims_that_are_not_json_numbers_are_refused_saying_so(gateway, sandbox, claim, value, kind):
    before = sandbox_calls(sandbox)

    response = gateway.get(SITEINFO, signed(HS256, {**CLAIMS, claim: value}))

    assert_unauthorized(response, invalid_token=True)
    assert response.json["error"]["message"] == (
        f"The bearer token was refused: '{claim}' must be a JSON number of seconds since 1970-01-01 UTC, not {kind}"
    )
    assert sandbox_calls(sandbox) == before


@pytest.mark.parametrize(
    "exp",
    [
        pytest.param(b"1e400", id="infinite"),  # Python reads it as inf
        pytest.param(b"NaN", id="nan"),  # not JSON, though Python's parser takes it
        pytest.param(b"-Infinity", id="minus-infinity"),
    ],
)
def test_an_exp_no_double_can_hold_is_refused(gateway, exp):
    payload = b'{"sub": "x", "scope": "siteinfo:read", "exp": ' + exp + b"}"

    response = gateway.get(SITEINFO, signed(HS256, payload))

    assert_unauthorized(response, invalid_token=True)
    assert response.json["error"]["message"].endswith("not a number out of range")


@pytest.mark.parametrize(
    "exp",
    [
        pytest.param(str(NOW + 600.5).encode(), id="fraction"),
        pytest.param(b"1" + b"0" * 400, id="past-a-doubles-range"),  # a valid, if distant, expiry: never a 500
    ],
)
def test_time_claims_that_are_numbers_are_accepted(gateway, exp):
    payload = b'{"sub": "x", "scope": "siteinfo:read", "iat": ' + str(NOW).encode() + b', "exp": ' + exp + b"}"

    assert gateway.get(SITEINFO, signed(HS256, payload)).status_int == 200


# -- scopes are separated by ASCII spaces only -----------------------------------------------------


@pytest.mark.parametrize(
    "separator",
    ["\u2003", "\u00a0", "\u3000", "\u2028", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85"],
    ids=lambda separator: f"U+{ord(separator):04X}",
)
def test_only_an_ascii_space_separates_scopes(gateway, sandbox, separator):
    before = sandbox_calls(sandbox)

    admin_after_another_space = gateway.get(SITEINFO, mint(f"courses:read{separator}admin"))
    scope_before_another_space = gateway.get(SITEINFO, mint(f"siteinfo:read{separator}courses:read"))

    assert admin_after_another_space.status_int == 403
    assert scope_before_another_space.status_int == 403
    assert sandbox_calls(sandbox) == before


def test_scopes_separated_by_several_spaces_are_each_granted(gateway):
    assert gateway.get(SITEINFO, mint("  courses:read   siteinfo:read ")).status_int == 200


def test_a_token_whose_issuer_pads_its_parts_with_equals_signs_is_accepted(gateway):
    def part(data):
        encoded = base64.urlsafe_b64encode(json.dumps(data).encode()).decode()
        assert encoded.endswith("="), "the test needs parts that take padding"
        return encoded

    header = part({"alg": "HS256", "typ": "JWT", "x": "a"})
    payload = part({"sub": "padded", "scope": "siteinfo:read", "exp": int(time.time()) + 600, "x": "ab"})
    signature = hmac.new(JWT_TEST_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{base64.urlsafe_b64encode(signature).decode()}"

    response = gateway.get(SITEINFO, token)

    assert response.status_int == 200, response.text
