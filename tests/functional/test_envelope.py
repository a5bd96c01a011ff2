"""Envelopes, request ids and the error views for every kind of failure."""

import pytest
from marshmallow import fields
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPConflict
from pyramid.request import Request

from lms_api.errors import ApiError
from lms_api.schemas.base import RequestSchema, load_json_body
from lms_api.settings import load_settings
from tests.support.credentials import mint


def json_request(body):
    """A JSON POST as a view sees it: the settings are where the body's limit comes from."""
    request = Request.blank("/", method="POST", body=body, content_type="application/json")
    request.lms_settings = load_settings({"lms_api.environment": "development"}, {})
    return request


def assert_error_envelope(response, status, code):
    assert response.status_int == status
    assert response.content_type == "application/json"
    body = response.json
    assert body["ok"] is False
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]


def test_unknown_paths_are_a_404_envelope(gateway):
    assert_error_envelope(gateway.get("/api/moodle/nothing-here", mint()), 404, "notfound")
    assert_error_envelope(gateway.get("/nothing-here"), 404, "notfound")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_a_wrong_method_is_a_405_with_allow(gateway, method):
    response = gateway.app.request(
        "/api/moodle/siteinfo", method=method, headers={"Authorization": f"Bearer {mint()}"}, expect_errors=True
    )

    assert_error_envelope(response, 405, "methodnotallowed")
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("request_id", ["abc-123", "A.b_c-9", "x" * 128])
def test_a_well_formed_request_id_is_echoed(gateway, request_id):
    response = gateway.get("/api/moodle/siteinfo", mint(), headers={"X-Request-ID": request_id})

    assert response.headers["X-Request-ID"] == request_id
    summary = [line for line in gateway.log_lines if line["event"] == "request"][-1]
    assert summary["request_id"] == request_id


@pytest.mark.parametrize("request_id", ["", "x" * 129, "has space", "semi;colon", "new\u00e9line"])
def test_a_malformed_request_id_is_replaced(gateway, request_id):
    response = gateway.get("/api/moodle/nope", headers={"X-Request-ID": request_id})

    assert response.headers["X-Request-ID"] != request_id
    assert 1 <= len(response.headers["X-Request-ID"]) <= 128
    assert response.json["error"]["request_id"] == response.headers["X-Request-ID"]


def test_every_log_line_of_a_request_carries_its_request_id(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_DEBUG="true")

    gateway.get("/api/moodle/siteinfo", mint(), headers={"X-Request-ID": "trace-me-1"})

    lines = [line for line in gateway.log_lines if line.get("request_id") == "trace-me-1"]
    assert {line["event"] for line in lines} == {"moodle.call", "request"}
    call = next(line for line in lines if line["event"] == "moodle.call")
    assert call["function"] == "core_webservice_get_site_info"
    assert call["attempts"] == 1


def test_an_unexpected_exception_is_a_500_envelope_and_logged(gateway):
    config = Configurator(registry=gateway.router.registry)
    config.add_route("boom", "/api/moodle/boom")

    def boom(request):
        raise RuntimeError("kaboom")

    config.add_view(boom, route_name="boom", permission="siteinfo:read")
    config.commit()

    response = gateway.get("/api/moodle/boom", mint())

    assert_error_envelope(response, 500, "internalerror")
    assert "kaboom" not in response.text
    logged = [line for line in gateway.log_lines if line["event"] == "unexpected.error"]
    assert logged and "kaboom" in logged[0]["exception"]
    assert logged[0]["request_id"] == response.headers["X-Request-ID"]


def test_any_other_http_exception_keeps_its_status_in_the_envelope(gateway):
    config = Configurator(registry=gateway.router.registry)
    config.add_route("conflict", "/api/moodle/conflict")

    def conflict(request):
        raise HTTPConflict()

    config.add_view(conflict, route_name="conflict", permission="siteinfo:read")
    config.commit()

    response = gateway.get("/api/moodle/conflict", mint())

    assert_error_envelope(response, 409, "conflict")


class _Body(RequestSchema):
    name = fields.String(required=True)


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe"])
def test_a_body_that_is_not_json_is_a_400(body):
    request = json_request(body)

    with pytest.raises(ApiError) as caught:
        load_json_body(request, _Body())

    assert (caught.value.status, caught.value.code) == (400, "invalidjson")


def test_a_json_body_that_is_not_an_object_is_a_400():
    request = json_request(b"[1, 2]")

    with pytest.raises(ApiError) as caught:
        load_json_body(request, _Body())

    assert caught.value.status == 400


def test_a_json_body_is_validated_by_its_schema():
    request = json_request(b'{"name": "x"}')

    assert load_json_body(request, _Body()) == {"name": "x"}
