"""GET /api/moodle/siteinfo through the whole WSGI stack, against the sandbox over real HTTP."""

import pytest

from tests.support.credentials import mint
from tests.support.sandbox import queue_fault, sandbox_calls


def test_site_info_in_the_success_envelope(gateway, sandbox):
    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert response.status_int == 200
    assert response.content_type == "application/json"
    assert response.json["ok"] is True
    data = response.json["data"]
    assert data["sitename"] == "lms_api Moodle sandbox"
    assert data["userid"] == 2
    assert data["release"].startswith("5.0")
    assert {"name": "core_webservice_get_site_info", "version": "2025041400"} in data["functions"]


def test_the_private_access_key_never_leaves_the_gateway(gateway, sandbox):
    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert "userprivateaccesskey" not in response.json["data"]
    assert sandbox.site.private_access_key not in response.text


def test_unknown_query_parameters_are_refused_before_moodle_is_called(gateway, sandbox):
    before = sandbox_calls(sandbox)

    response = gateway.get("/api/moodle/siteinfo?verbose=1&x=2", mint("siteinfo:read"))

    assert response.status_int == 400
    error = response.json["error"]
    assert error["code"] == "validationerror"
    assert "verbose" in error["message"] and "x" in error["message"]
    assert set(error["details"]["fields"]) == {"verbose", "x"}
    assert sandbox_calls(sandbox) == before


def test_maintenance_is_a_503_with_retry_after_and_is_not_retried(gateway, sandbox):
    queue_fault(sandbox, kind="maintenance", times=5)
    before = sandbox_calls(sandbox).get("core_webservice_get_site_info", 0)

    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert response.status_int == 503
    assert response.json["error"]["code"] == "sitemaintenance"
    assert int(response.headers["Retry-After"]) > 0
    assert sandbox_calls(sandbox)["core_webservice_get_site_info"] == before + 1


def test_a_reset_connection_on_a_read_is_retried(gateway, sandbox):
    queue_fault(sandbox, kind="reset", times=1)
    before = sandbox_calls(sandbox).get("core_webservice_get_site_info", 0)

    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert response.status_int == 200
    assert sandbox_calls(sandbox)["core_webservice_get_site_info"] == before + 2
    summary = [line for line in gateway.log_lines if line["event"] == "request"][-1]
    assert summary["retries"] == 1


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"kind": "http", "status": 503}, 503, "moodleunavailable"),
        ({"kind": "http", "status": 502}, 502, "badgateway"),
        ({"kind": "http", "status": 500}, 502, "badresponse"),
        ({"kind": "notjson"}, 502, "badresponse"),
        ({"kind": "reset"}, 503, "moodleunavailable"),
    ],
)
def test_moodle_faults_become_clear_gateway_errors(gateway, sandbox, fault, status, code):
    queue_fault(sandbox, times=10, **fault)

    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert response.status_int == status
    assert response.json["ok"] is False
    assert response.json["error"]["code"] == code
    assert response.json["error"]["details"]["function"] == "core_webservice_get_site_info"


def test_a_read_that_outlives_the_deadline_is_a_504(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_TIMEOUT_MS="300", MOODLE_MAX_RETRIES="0")
    queue_fault(sandbox, kind="delay", seconds=1.0)

    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert response.status_int == 504
    assert response.json["error"]["code"] == "moodletimeout"


def test_a_refused_gateway_token_is_an_operator_error_not_a_401(make_gateway):
    gateway = make_gateway(token="not-the-sandbox-token")

    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert response.status_int == 502
    assert response.json["error"]["code"] == "invalidtoken"
    assert "MOODLE_TOKEN" in response.json["error"]["message"]
    assert "WWW-Authenticate" not in response.headers


def test_moodle_down_is_a_503(make_gateway, unused_port):
    gateway = make_gateway(base_url=f"http://127.0.0.1:{unused_port}", MOODLE_MAX_RETRIES="1")

    response = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert response.status_int == 503
    assert response.json["error"]["code"] == "moodleunavailable"
    assert "Retry-After" in response.headers
