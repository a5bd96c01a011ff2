"""MoodleClient against a mocked Moodle REST endpoint: encoding, error mapping, retries, deadline, function cache."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import ssl
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
import structlog
from structlog.testing import capture_logs
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError, SSLError

from lms_api.calllog import recording_calls
from lms_api.moodle import client as client_module
from lms_api.moodle import guard
from lms_api.moodle.client import MoodleClient
from lms_api.moodle.errors import MoodleError, scrub_paths
from lms_api.moodle.functions import AnswerShape, MoodleFunction
from lms_api.moodle.guard import CircuitBreaker
from lms_api.settings import MIB
from tests.support.credentials import self_signed_certificate
from tests.support.gateway import settings_for
from tests.support.paths import GOLDEN_DIR
from tests.unit.mocked_moodle import (
    BAD_TOKEN_BODY,
    BASE_URL,
    DEBUG_DUPLICATE_USERNAME_BODY,
    FUNCTION_NOT_IN_SERVICE_BODY,
    HTML_PAGE,
    INVALID_PARAMETER_BODY,
    KNOWN_FUNCTIONS,
    READ_FN,
    SITE_INFO,
    TOKEN,
    UNKNOWN_FUNCTION_BODY,
    URL,
    WRITE_FN,
    UploadFile,
    add,
    assert_token_absent,
    broken_off,
    form_of,
    golden,
    prime,
    raised,
    refused,
    reset,
    sent_functions,
    site_info_body,
    ws_function,
)


def test_test_functions_are_classified_as_assumed():
    assert READ_FN.retried and SITE_INFO.retried
    assert not WRITE_FN.retried


# -- the request -----------------------------------------------------------------------------------


def test_token_function_and_format_are_in_the_post_body_not_the_url(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, json=[])

    client.call(READ_FN, {"options": {"ids": [2, 3]}, "visible": True, "skipped": None})

    request = rsps.calls[-1].request
    assert request.method == "POST"
    assert request.url == URL
    assert urlsplit(request.url).query == ""
    assert TOKEN not in request.url
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form_of(request) == [
        ("wstoken", TOKEN),
        ("wsfunction", READ_FN),
        ("moodlewsrestformat", "json"),
        ("options[ids][0]", "2"),
        ("options[ids][1]", "3"),
        ("visible", "1"),
    ]


def test_trailing_slash_in_base_url_is_ignored(rsps):
    client = MoodleClient(BASE_URL + "/", TOKEN, timeout_s=2.0, max_retries=0, functions_ttl_s=300)
    add(rsps, SITE_INFO, json=site_info_body())

    client.call(SITE_INFO)

    assert rsps.calls[0].request.url == URL


def test_repr_does_not_contain_the_token(client):
    assert repr(client) == "MoodleClient(base_url='http://moodle.test')"
    assert TOKEN not in repr(client)


# -- success bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "body", "expected"),
    [
        (MoodleFunction.UPDATE_COURSES, '{"warnings":[]}', {"warnings": []}),
        (WRITE_FN, '[{"id":3,"shortname":"PY102"}]', [{"id": 3, "shortname": "PY102"}]),
        (MoodleFunction.GET_UNREAD_COUNT, "2", 2),
        (MoodleFunction.GET_UNREAD_COUNT, "0", 0),
        (MoodleFunction.ENROL_USERS, "null", None),
    ],
    ids=["object", "list", "integer", "zero", "null"],
)
def test_success_bodies_are_returned_as_is(client, rsps, function, body, expected):
    prime(client, rsps)
    add(rsps, function, body=body, content_type="application/json")

    result = client.call(function)

    assert result == expected
    assert type(result) is type(expected)
    assert sent_functions(rsps) == [SITE_INFO, function]


def test_site_info_returns_the_golden_body_and_caches_its_functions(client, rsps):
    body = (GOLDEN_DIR / "core_webservice_get_site_info.json").read_text()
    add(rsps, SITE_INFO, body=body, content_type="application/json")

    info = client.call(SITE_INFO)

    assert info == json.loads(body)
    assert info["sitename"] == "Real Moodle Test"
    functions = client.available_functions()
    assert len(functions) == len(info["functions"])  # site info itself is in the list
    assert {WRITE_FN, READ_FN, SITE_INFO} <= functions
    assert len(rsps.calls) == 1


def test_an_answer_longer_than_one_read_is_read_whole(client, rsps):
    prime(client, rsps)
    users = [{"id": number, "fullname": "x" * 100} for number in range(3 * client_module.READ_CHUNK_BYTES // 100)]
    add(rsps, READ_FN, json=users)

    assert client.call(READ_FN) == users


@pytest.mark.parametrize(
    "body",
    [
        {"sitename": "Moodle test"},
        {"sitename": "Moodle test", "functions": {}},
        {"sitename": "Moodle test", "functions": [5, "name"]},
        {"sitename": "Moodle test", "functions": [{"version": "5.0"}]},
        {"sitename": "Moodle test", "functions": [], "advancedfeatures": [5]},
        [],
        None,
    ],
    ids=[
        "no-functions",
        "functions-not-a-list",
        "functions-not-objects",
        "function-unnamed",
        "features",
        "list",
        "null",
    ],
)
def test_site_info_with_an_unexpected_shape_is_a_bad_response(client, rsps, body):
    add(rsps, SITE_INFO, body=json.dumps(body), content_type="application/json")

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": SITE_INFO}
    assert len(rsps.calls) == 1


# -- Moodle errors in the body ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errorcode", "status"),
    [
        ("invalidparameter", 400),
        ("errorinvalidparam", 400),
        ("missingparam", 400),
        ("codingerror", 400),
        ("accessexception", 403),
        ("nopermissions", 403),
        ("accessdenied", 403),
        ("requireloginerror", 403),
        ("restrictedcontextexception", 403),
        ("wsusercannotassign", 403),
        ("wsaccessusersuspended", 403),
        ("invalidrecord", 404),
        ("invalidrecordunknown", 404),
        ("invaliduser", 404),
        ("invalidcourseid", 404),
        ("filenotfound", 404),
        ("shortnametaken", 409),
        ("courseidnumbertaken", 409),
        ("filenameexist", 409),
        ("dmlwriteexception", 502),
    ],
)
def test_moodle_errorcode_maps_to_status(client, rsps, errorcode, status):
    prime(client, rsps)
    add(rsps, READ_FN, json={"exception": "moodle_exception", "errorcode": errorcode, "message": f"Said {errorcode}"})

    error = raised(client.call, READ_FN)

    assert error.status == status
    assert error.code == errorcode
    assert error.message == f"Said {errorcode}"
    assert error.details == {"function": READ_FN}
    assert error.headers == {}
    assert sent_functions(rsps) == [SITE_INFO, READ_FN]  # a read-only function, yet not retried


@pytest.mark.parametrize("errorcode", ["sitemaintenance", "upgraderunning"])
def test_maintenance_errorcodes_are_503_with_default_retry_after(client, rsps, sleeps, errorcode):
    prime(client, rsps)
    add(rsps, READ_FN, json={"exception": "moodle_exception", "errorcode": errorcode, "message": "Maintenance"})

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (503, errorcode)
    assert error.headers == {"Retry-After": "30"}
    assert error.details == {"function": READ_FN}
    assert sent_functions(rsps) == [SITE_INFO, READ_FN]
    assert sleeps == []


def test_maintenance_error_keeps_moodles_retry_after_header(client, rsps):
    prime(client, rsps)
    body = {"exception": "moodle_exception", "errorcode": "sitemaintenance", "message": "Maintenance"}
    add(rsps, READ_FN, json=body, headers={"Retry-After": "120"})

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (503, "sitemaintenance")
    assert error.headers == {"Retry-After": "120"}


def test_refused_token_is_502_invalidtoken_for_operators(client, rsps):
    add(rsps, SITE_INFO, body=BAD_TOKEN_BODY, content_type="application/json")

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (502, "invalidtoken")
    assert "MOODLE_TOKEN" in error.message
    assert "token not found" not in error.message
    assert error.details == {"function": SITE_INFO}
    assert error.headers == {}
    assert len(rsps.calls) == 1


def test_refused_token_during_the_function_check_stops_the_call(client, rsps):
    add(rsps, SITE_INFO, body=BAD_TOKEN_BODY, content_type="application/json")

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (502, "invalidtoken")
    assert sent_functions(rsps) == [SITE_INFO]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (FUNCTION_NOT_IN_SERVICE_BODY, 403, "accessexception", "Access control exception"),
        (UNKNOWN_FUNCTION_BODY, 404, "invalidrecordunknown", "Can't find data record in database."),
        (INVALID_PARAMETER_BODY, 400, "invalidparameter", "Invalid parameter value detected"),
    ],
    ids=["function-not-in-service", "unknown-function", "invalid-parameter"],
)
def test_golden_error_bodies(client, rsps, body, status, code, message):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=body, content_type="application/json")

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code, error.message) == (status, code, message)
    assert error.details == {"function": WRITE_FN}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]


def test_error_without_errorcode_is_a_502_moodleexception_saying_moodle_failed(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, json={"exception": "moodle_exception", "message": "Something broke"})

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (502, "moodleexception")
    assert error.message == f"Moodle failed internally in {READ_FN} (PHP moodle_exception): Something broke"


def test_debuginfo_is_never_passed_on(client, rsps):
    prime(client, rsps)
    debuginfo = "INSERT INTO mdl_user (password) VALUES ('Student-Pass-1')"
    body = {
        "exception": "dml_write_exception",
        "errorcode": "dmlwriteexception",
        "message": "Error writing to database",
        "debuginfo": debuginfo,
    }
    add(rsps, WRITE_FN, json=body)

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code, error.message) == (502, "dmlwriteexception", "Error writing to database")
    assert error.details == {"function": WRITE_FN}
    for text in (str(error), error.message, repr(error.details), repr(error.headers)):
        assert "Student-Pass-1" not in text
        assert "debuginfo" not in text


def test_debuginfo_repeated_in_a_debug_mode_message_is_not_passed_on(client, rsps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=DEBUG_DUPLICATE_USERNAME_BODY, content_type="application/json")

    error = raised(client.call, WRITE_FN)

    assert error.code == "invalidparameter"
    assert "Username already exists: student1" not in error.message


def test_token_in_a_moodle_message_is_redacted(client, rsps):
    prime(client, rsps)
    body = {
        "exception": "invalid_parameter_exception",
        "errorcode": "invalidparameter",
        "message": f"Invalid parameter value detected (wstoken={TOKEN})",
    }
    add(rsps, READ_FN, json=body)

    error = raised(client.call, READ_FN)

    assert error.message == "Invalid parameter value detected (wstoken=[redacted])"
    assert_token_absent(error)


# -- bodies that are not Moodle's ------------------------------------------------------------------


def test_non_json_body_with_200_is_a_bad_response(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, READ_FN, body="<html>Moodle login page</html>", content_type="text/html")

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": READ_FN, "moodle_status": 200}
    assert "not JSON" in error.message
    assert sent_functions(rsps) == [SITE_INFO, READ_FN]
    assert sleeps == []


def test_html_500_page_is_a_bad_response(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, body="<html>Internal Server Error</html>", status=500, content_type="text/html")

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": READ_FN, "moodle_status": 500}
    assert sent_functions(rsps) == [SITE_INFO, READ_FN]


def test_json_error_body_with_a_non_200_status_is_mapped_on_errorcode(client, rsps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=INVALID_PARAMETER_BODY, status=400, content_type="application/json")

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (400, "invalidparameter")
    assert error.details == {"function": WRITE_FN}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]


def test_json_success_body_with_a_non_200_status_is_a_bad_response(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, json=[{"id": 1}], status=400)

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": READ_FN, "moodle_status": 400}


def test_redirect_is_not_followed_and_is_a_bad_response(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, json=[], status=302, headers={"Location": "http://moodle.test/login/index.php"})

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": READ_FN, "moodle_status": 302}
    assert error.message == "Moodle answered with a redirect (HTTP 302); check MOODLE_BASE_URL"
    assert [call.request.url for call in rsps.calls] == [URL, URL]
    assert sent_functions(rsps) == [SITE_INFO, READ_FN]


# -- HTTP 502/503/504 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "headers"),
    [(502, "badgateway", {}), (503, "moodleunavailable", {"Retry-After": "30"}), (504, "moodletimeout", {})],
)
@pytest.mark.parametrize(
    "body",
    ['{"sitename":"Moodle test","functions":[]}', HTML_PAGE],
    ids=["json-success-body", "html-body"],
)
def test_gateway_statuses_win_over_the_body_and_are_retried_for_reads(
    client, rsps, sleeps, status, code, headers, body
):
    add(rsps, SITE_INFO, body=body, status=status)

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (status, code)
    assert error.message == f"Moodle answered HTTP {status}"
    assert error.details == {"function": SITE_INFO}
    assert error.headers == headers
    assert len(rsps.calls) == 3
    assert sleeps == [0.1, 0.2]


def test_503_keeps_moodles_retry_after(client, rsps):
    add(rsps, SITE_INFO, body=HTML_PAGE, status=503, headers={"Retry-After": "300"})

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.headers == {"Retry-After": "300"}
    assert len(rsps.calls) == 3


def test_503_then_success_on_a_read_returns_the_result(client, rsps, sleeps):
    add(rsps, SITE_INFO, body=HTML_PAGE, status=503)
    add(rsps, SITE_INFO, json=site_info_body())

    assert client.call(SITE_INFO) == site_info_body()
    assert len(rsps.calls) == 2
    assert sleeps == [0.1]


# -- retries of reads ------------------------------------------------------------------------------


def test_refused_then_success_is_retried_once(client, rsps, sleeps):
    add(rsps, SITE_INFO, body=refused())
    add(rsps, SITE_INFO, json=site_info_body())

    assert client.call(SITE_INFO) == site_info_body()
    assert len(rsps.calls) == 2
    assert sleeps == [0.1]


def test_read_function_call_is_retried_after_a_refused_connection(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, READ_FN, body=refused())
    add(rsps, READ_FN, json=[{"id": 1}])

    assert client.call(READ_FN) == [{"id": 1}]
    assert sent_functions(rsps) == [SITE_INFO, READ_FN, READ_FN]
    assert sleeps == [0.1]


def test_two_failures_back_off_exponentially(client, rsps, sleeps):
    add(rsps, SITE_INFO, body=refused())
    add(rsps, SITE_INFO, body=refused())
    add(rsps, SITE_INFO, json=site_info_body())

    assert client.call(SITE_INFO) == site_info_body()
    assert len(rsps.calls) == 3
    assert sleeps == [0.1, 0.2]


def test_backoff_is_multiplied_by_the_jitter(make_client, rsps, sleeps):
    client = make_client(jitter=lambda: 1.2)
    add(rsps, SITE_INFO, body=refused())
    add(rsps, SITE_INFO, body=refused())
    add(rsps, SITE_INFO, json=site_info_body())

    client.call(SITE_INFO)

    assert sleeps == pytest.approx([0.12, 0.24])


def test_refused_every_time_gives_up_after_max_retries(client, rsps, sleeps):
    add(rsps, SITE_INFO, body=refused())

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.message == "Moodle could not be reached"
    assert error.details == {"function": SITE_INFO}
    assert error.headers == {"Retry-After": "30"}
    assert len(rsps.calls) == 3
    assert sleeps == [0.1, 0.2]


def test_max_retries_zero_makes_one_attempt(make_client, rsps, sleeps):
    client = make_client(max_retries=0)
    add(rsps, SITE_INFO, body=refused())

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert len(rsps.calls) == 1
    assert sleeps == []


def test_read_timeout_on_a_read_is_retried_then_504(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, READ_FN, body=ReadTimeoutError(None, URL, "read timed out"))

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (504, "moodletimeout")
    assert error.message == "Moodle did not answer in time"
    assert error.details == {"function": READ_FN}
    assert error.headers == {}
    assert sent_functions(rsps) == [SITE_INFO, READ_FN, READ_FN, READ_FN]
    assert sleeps == [0.1, 0.2]


def test_connect_timeout_on_a_read_is_retried_then_504(client, rsps, sleeps):
    add(rsps, SITE_INFO, body=ConnectTimeoutError("connect timed out"))

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (504, "moodletimeout")
    assert error.message == "Moodle did not accept a connection in time"
    assert len(rsps.calls) == 3


def test_connection_reset_on_a_read_is_retried_then_503(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, READ_FN, body=reset())

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.message == "The connection to Moodle was reset"
    assert error.details == {"function": READ_FN}
    assert error.headers == {"Retry-After": "30"}
    assert sent_functions(rsps) == [SITE_INFO, READ_FN, READ_FN, READ_FN]
    assert sleeps == [0.1, 0.2]


def test_unreadable_answer_on_a_read_is_retried_then_502(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, body=broken_off())

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": READ_FN}
    assert sent_functions(rsps) == [SITE_INFO, READ_FN, READ_FN, READ_FN]


# -- writes ----------------------------------------------------------------------------------------


def test_reset_on_a_write_is_not_retried_and_the_outcome_is_unknown(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=reset())

    error = raised(client.call, WRITE_FN)

    assert error.status == 504
    assert error.code == "moodleunavailable"
    assert error.details == {"function": WRITE_FN, "outcome": "unknown"}
    assert error.message.endswith("the write may or may not have been applied")
    assert error.headers == {}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]
    assert sleeps == []


def test_read_timeout_on_a_write_is_not_retried_and_the_outcome_is_unknown(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=ReadTimeoutError(None, URL, "read timed out"))

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (504, "moodletimeout")
    assert error.details == {"function": WRITE_FN, "outcome": "unknown"}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]
    assert sleeps == []


def test_unreadable_answer_on_a_write_is_not_retried_and_the_outcome_is_unknown(client, rsps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=broken_off())

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": WRITE_FN, "outcome": "unknown"}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]


def test_http_503_on_a_write_is_not_retried(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=HTML_PAGE, status=503, headers={"Retry-After": "300"})

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.details == {"function": WRITE_FN}  # maintenance page: nothing was applied
    assert error.headers == {"Retry-After": "300"}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]
    assert sleeps == []


@pytest.mark.parametrize("status", [502, 504])
def test_http_502_and_504_on_a_write_are_not_retried_and_the_outcome_is_unknown(client, rsps, sleeps, status):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=HTML_PAGE, status=status)

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (status, {502: "badgateway", 504: "moodletimeout"}[status])
    assert error.details == {"function": WRITE_FN, "outcome": "unknown"}
    assert error.headers == {}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]
    assert sleeps == []


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, "<html>Moodle login page</html>"), (500, "<html>Fatal error in PHP</html>")],
    ids=["not-json", "php-fatal-page"],
)
def test_an_answer_not_moodle_s_after_a_write_is_an_unknown_outcome(client, rsps, status, body):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=body, status=status, content_type="text/html")

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.details == {"function": WRITE_FN, "moodle_status": status, "outcome": "unknown"}
    assert error.message.endswith("the write may or may not have been applied")


@pytest.mark.parametrize(
    ("answers", "sent"),
    [
        ([{"json": [{"id": 3}]}], True),
        ([{"body": INVALID_PARAMETER_BODY, "status": 400, "content_type": "application/json"}], True),
        ([{"body": "<html>Fatal error</html>", "status": 500}], True),
        ([{"body": ReadTimeoutError(None, URL, "read timed out")}], True),
        ([{"body": refused()}, {"body": reset()}], True),
        ([{"body": refused()}], False),
        ([{"body": HTML_PAGE, "status": 503}], False),
        (
            [{"json": {"exception": "moodle_exception", "errorcode": "sitemaintenance", "message": "Maintenance"}}],
            False,
        ),
    ],
    ids=[
        "answered",
        "refused-by-moodle",
        "php-fatal",
        "timed-out",
        "refused-then-reset",
        "refused-every-time",
        "maintenance-page",
        "sitemaintenance",
    ],
)
def test_a_write_s_call_record_says_whether_it_may_have_reached_the_function(client, rsps, answers, sent):
    prime(client, rsps)
    for answer in answers:
        add(rsps, WRITE_FN, **answer)

    with recording_calls() as call_log, contextlib.suppress(MoodleError):
        client.call(WRITE_FN)

    assert [(record.function, record.writes, record.sent) for record in call_log.calls] == [(WRITE_FN, True, sent)]


def test_reads_and_uploads_are_recorded_as_what_they_are(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, json=[])
    rsps.add(responses.POST, BASE_URL + "/webservice/upload.php", json=[{"filename": "a.txt", "itemid": 7}])

    with recording_calls() as call_log:
        client.call(READ_FN)
        client.upload([UploadFile("a.txt", io.BytesIO(b"x"))])

    assert [(record.function, record.writes) for record in call_log.calls] == [(READ_FN, False), ("upload.php", True)]


def test_refused_connection_on_a_write_is_retried(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=refused())
    add(rsps, WRITE_FN, json=[{"id": 3, "shortname": "PY102"}])

    assert client.call(WRITE_FN, {"courses": [{"shortname": "PY102"}]}) == [{"id": 3, "shortname": "PY102"}]
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN, WRITE_FN]
    assert sleeps == [0.1]


def test_connect_timeout_on_a_write_is_retried(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=ConnectTimeoutError("connect timed out"))
    add(rsps, WRITE_FN, json=[{"id": 3}])

    assert client.call(WRITE_FN) == [{"id": 3}]
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN, WRITE_FN]


def test_refused_every_time_on_a_write_is_503_without_unknown_outcome(client, rsps, sleeps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=refused())

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.details == {"function": WRITE_FN}
    assert error.headers == {"Retry-After": "30"}
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN, WRITE_FN, WRITE_FN]
    assert sleeps == [0.1, 0.2]


# -- one deadline per call -------------------------------------------------------------------------


def slow_failure(clock, seconds, exception_factory):
    """A responses callback: the attempt takes ``seconds`` of fake time, then fails."""

    def callback(request):
        clock.advance(seconds)
        return 200, {}, exception_factory()

    return callback


def test_backoff_past_the_deadline_is_not_slept(make_client, rsps, clock, sleeps):
    client = make_client(max_retries=5)  # timeout_s=2.0
    rsps.add_callback(
        responses.POST,
        URL,
        callback=slow_failure(clock, 0.9, lambda: ReadTimeoutError(None, URL, "read timed out")),
        match=[ws_function(SITE_INFO)],
    )

    error = raised(client.call, SITE_INFO)

    # t=0.9 fail, sleep 0.1, t=1.9 fail: sleeping 0.2 would end at 2.1 > 2.0, so it gives up.
    assert (error.status, error.code) == (504, "moodletimeout")
    assert len(rsps.calls) == 2
    assert len(rsps.calls) < 5 + 1
    assert sleeps == [0.1]


def test_timeout_given_to_requests_is_bounded_by_the_remaining_deadline(make_client, rsps, clock):
    client = make_client(max_retries=5)
    rsps.add_callback(
        responses.POST,
        URL,
        callback=slow_failure(clock, 0.9, refused),
        match=[ws_function(SITE_INFO)],
    )

    raised(client.call, SITE_INFO)

    timeouts = [call.request.req_kwargs["timeout"] for call in rsps.calls]
    assert timeouts == [pytest.approx((2.0, 2.0)), pytest.approx((1.0, 1.0))]


def test_connect_timeout_is_capped_at_three_seconds(make_client, rsps):
    client = make_client(timeout_s=10.0)
    add(rsps, SITE_INFO, json=site_info_body())

    client.call(SITE_INFO)

    assert rsps.calls[0].request.req_kwargs["timeout"] == pytest.approx((3.0, 10.0))


# -- the function cache ----------------------------------------------------------------------------


def test_call_fetches_site_info_first_and_reuses_the_cache(client, rsps):
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, WRITE_FN, json=[{"id": 3}])

    client.call(WRITE_FN)
    client.call(WRITE_FN)

    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN, WRITE_FN]
    assert client.available_functions() == frozenset(KNOWN_FUNCTIONS) | {SITE_INFO}
    assert len(rsps.calls) == 3


def test_missing_function_is_501_and_is_not_called(client, rsps):
    add(rsps, SITE_INFO, json=site_info_body([READ_FN]))

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (501, "functionnotavailable")
    assert WRITE_FN in error.message
    assert error.details == {"function": WRITE_FN}
    assert sent_functions(rsps) == [SITE_INFO]

    second = raised(client.call, WRITE_FN)

    assert second.code == "functionnotavailable"
    assert sent_functions(rsps) == [SITE_INFO]  # the cached list answered


def test_cache_is_refetched_after_the_ttl(client, rsps, clock):
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, READ_FN, json=[])

    client.call(READ_FN)
    clock.advance(299.0)
    client.call(READ_FN)
    assert sent_functions(rsps) == [SITE_INFO, READ_FN, READ_FN]

    clock.advance(2.0)
    client.call(READ_FN)
    assert sent_functions(rsps) == [SITE_INFO, READ_FN, READ_FN, SITE_INFO, READ_FN]


def test_function_removed_after_the_ttl_becomes_501(client, rsps, clock):
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, WRITE_FN, json=[])
    client.call(WRITE_FN)

    clock.advance(301.0)
    add(rsps, SITE_INFO, json=site_info_body([READ_FN]))
    error = raised(client.call, WRITE_FN)

    assert error.code == "functionnotavailable"
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN, SITE_INFO]


def test_accessexception_forgets_the_cache(client, rsps):
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, WRITE_FN, body=FUNCTION_NOT_IN_SERVICE_BODY, content_type="application/json")

    error = raised(client.call, WRITE_FN)
    assert (error.status, error.code) == (403, "accessexception")
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]

    add(rsps, SITE_INFO, json=site_info_body([READ_FN]))
    again = raised(client.call, WRITE_FN)

    assert again.code == "functionnotavailable"
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN, SITE_INFO]


def test_other_errors_keep_the_cache(client, rsps):
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, WRITE_FN, body=INVALID_PARAMETER_BODY, content_type="application/json")

    raised(client.call, WRITE_FN)
    raised(client.call, WRITE_FN)

    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN, WRITE_FN]


# -- call records and debug log ---------------------------------------------------------------------


def test_recording_calls_collects_functions_attempts_and_retries(client, rsps):
    add(rsps, SITE_INFO, body=refused())
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, READ_FN, body=refused())
    add(rsps, READ_FN, body=refused())
    add(rsps, READ_FN, json=[])
    add(rsps, WRITE_FN, json=[{"id": 3}])

    with recording_calls() as call_log:
        client.call(READ_FN)
        client.call(WRITE_FN)

    assert call_log.functions == [SITE_INFO, READ_FN, WRITE_FN]
    assert [record.attempts for record in call_log.calls] == [2, 3, 1]
    assert call_log.retries == 3
    # the fake sleep advances the fake clock: 0.1 s for site info, 0.1 + 0.2 s for the read.
    assert [record.ms for record in call_log.calls] == [100.0, 300.0, 0.0]
    assert call_log.ms == 400.0


def test_recording_calls_includes_failed_calls_and_stops_at_the_block_end(client, rsps):
    prime(client, rsps)
    add(rsps, READ_FN, body=reset())

    with recording_calls() as call_log:
        raised(client.call, READ_FN)
    raised(client.call, READ_FN)

    assert call_log.functions == [READ_FN]
    assert call_log.calls[0].attempts == 3
    assert call_log.retries == 2


@pytest.fixture
def captured_logs(monkeypatch):
    # A fresh proxy, so an earlier structlog.configure(cache_logger_on_first_use=True) cannot bypass the capture.
    monkeypatch.setattr(client_module, "log", structlog.get_logger("lms_api.moodle"))
    with capture_logs() as logs:
        yield logs


def test_debug_logs_one_line_per_call_without_values_or_token(make_client, rsps, captured_logs):
    client = make_client(debug=True)
    prime(client, rsps)
    add(rsps, WRITE_FN, json=[{"id": 5, "username": "student9"}])

    client.call(WRITE_FN, {"users": [{"username": "student9", "password": "Student-Pass-1"}]})

    calls = [entry for entry in captured_logs if entry["event"] == "moodle.call"]
    assert [entry["function"] for entry in calls] == [SITE_INFO, WRITE_FN]
    entry = calls[1]
    assert entry["param_names"] == ["users"]
    assert entry["attempts"] == 1
    assert entry["outcome"] == "ok"
    assert entry["fields"] == 2
    text = repr(captured_logs)
    for secret in ("student9", "Student-Pass-1", TOKEN):
        assert secret not in text


def test_debug_log_records_failed_calls(make_client, rsps, captured_logs):
    client = make_client(debug=True)
    add(rsps, SITE_INFO, body=refused())

    raised(client.call, SITE_INFO)

    calls = [entry for entry in captured_logs if entry["event"] == "moodle.call"]
    assert [(entry["function"], entry["attempts"], entry["outcome"]) for entry in calls] == [
        (SITE_INFO, 3, "moodleunavailable")
    ]
    assert calls[0]["reason"].startswith("no connection to moodle.test:80")


def test_a_moodle_errorcode_outside_the_table_is_one_word_in_the_call_outcome(make_client, rsps, captured_logs):
    client = make_client(debug=True)
    prime(client, rsps)
    add(rsps, READ_FN, json={"exception": "moodle_exception", "errorcode": "someplugin_oddity", "message": "Odd"})

    raised(client.call, READ_FN)

    assert captured_logs[-1]["outcome"] == "othermoodleerror"


def test_no_call_log_line_without_debug(client, rsps, captured_logs):
    prime(client, rsps)
    add(rsps, READ_FN, json=[])

    client.call(READ_FN, {"options": {"ids": [1]}})

    assert [entry for entry in captured_logs if entry["event"] == "moodle.call"] == []


# -- the token never leaks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"body": BAD_TOKEN_BODY, "content_type": "application/json"},
        {"body": HTML_PAGE, "status": 503},
        {"body": "not json"},
        {"body": reset()},
        {"body": refused()},
        {"body": ReadTimeoutError(None, URL, f"read timed out for wstoken={TOKEN}")},
    ],
    ids=["invalidtoken", "http-503", "not-json", "reset", "refused", "timeout-mentioning-token"],
)
def test_errors_never_contain_the_token(client, rsps, answer):
    add(rsps, SITE_INFO, **answer)

    error = raised(client.call, SITE_INFO)

    assert_token_absent(error)


def test_an_errorcode_that_is_not_a_moodle_code_becomes_moodleerror_without_its_text(client, rsps):
    prime(client, rsps)
    policy = "<div>Passwords must be at least 8 characters long.</div>"
    body = {"exception": "core\\exception\\moodle_exception", "errorcode": policy, "message": f"error/{policy}"}
    add(rsps, WRITE_FN, json=body)

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code) == (502, "moodleerror")
    assert "Passwords" not in error.message


@pytest.mark.parametrize(("header", "expected"), [("\u00b2", "30"), ("soon", "30"), ("0", "0"), ("7", "7")])
def test_only_a_plain_number_of_seconds_is_taken_from_retry_after(client, rsps, header, expected):
    add(rsps, SITE_INFO, body=HTML_PAGE, status=503, headers={"Retry-After": header})

    error = raised(client.call, SITE_INFO)

    assert error.status == 503
    assert error.headers == {"Retry-After": expected}


def test_a_backoff_sleep_that_overruns_the_deadline_is_a_timeout_not_a_crash(make_client, clock, rsps):
    client = make_client(sleep=lambda seconds: clock.advance(5))  # the thread woke up far too late
    prime(client, rsps)
    add(rsps, READ_FN, body=reset())

    error = raised(client.call, READ_FN)

    assert (error.status, error.code) == (504, "moodletimeout")
    assert sent_functions(rsps).count(READ_FN) == 1


# -- server paths never leave the gateway -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("called in /var/www/moodle/lib/enrollib.php on line 3674", "called in [path] on line 3674"),
        ("called in \\/var\\/www\\/moodle\\/lib\\/enrollib.php on line 3674", "called in [path] on line 3674"),
        ("in /var/www/moodle/lib/setup.php:12", "in [path]:12"),
        ("See /srv/moodle/config.php.", "See [path]."),
        ("(/var/moodledata/temp/phpAbC123)", "([path])"),
        ("'/var/moodledata/temp/phpAbC123'", "'[path]'"),
        ('"/opt/moodle/lib/dml/moodle_database.php"', '"[path]"'),
        ("file=/var/www/x.php,line=3", "file=[path],line=3"),
        ("Error:/var/www/moodle/index.php", "Error:[path]"),
        ("/var/www/moodle/../moodledata/x", "[path]"),
        ("/home/moodle-user/www.site~2/lib_v2+b@x/%41$1", "[path]"),
        ("/usr/share/php/Zend/Loader.php", "[path]"),
        ("in C:\\xampp\\htdocs\\moodle\\lib\\enrollib.php on line 12", "in [path] on line 12"),
        ("in C:\\\\xampp\\\\htdocs\\\\moodle\\\\lib.php.", "in [path]."),
        ("in C:/xampp/htdocs/moodle/lib.php.", "in [path]."),
        ("in d:\\moodle\\lib.php", "in [path]"),
        ("in C:\\Program Files (x86)\\Moodle\\server\\lib\\setup.php on line 3", "in [path] on line 3"),
        ("on \\\\fileserver\\moodledata\\temp\\phpAbC.tmp now", "on [path] now"),
        ("on \\\\\\\\fileserver\\\\moodledata\\\\temp now", "on [path] now"),
        ("open file:///var/moodledata/x.txt now", "open [path] now"),
        ("open FILE:///C:/moodledata/x.txt.", "open [path]."),
        ("in phar:///var/www/x.phar/y.php", "in [path]"),
        ("two: /var/www/a.php and /var/www/b.php", "two: [path] and [path]"),
        (
            "https://moodle.example/course/view.php?id=2&return=/var/www/x",
            "https://moodle.example/course/view.php?id=2&return=[path]",
        ),
    ],
)
def test_server_paths_are_replaced(text, expected):
    assert scrub_paths(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "3/4 of the class",
        "A/B testing and/or TCP/IP, w/o km/h",
        "due 2024/01/02 or 01/02/2024, 1/2/3",
        "see http://127.0.0.1:8088/pluginfile.php/1821/course/generated/course.svg.",
        "see https://moodle.example/webservice/pluginfile.php/12/user/draft/549014061/hello.py?forcedownload=1",
        "see http:\\/\\/127.0.0.1:8088\\/pluginfile.php\\/1821\\/course.svg",
        "see //cdn.example.com/lib/x.js",
        "core\\user::get_name_placeholders(): Argument #1 ($user) must be of type stdClass, bool given",
        "Class \\core\\exception\\moodle_exception not found",
        "<div>Passwords must be at least 8 characters long.</div><br/>",
        "a single /config.php, a lone / and ../relative/path or ./here/too",
        "Short name is already used for another course (PY101)",
        "Can't find data record in database table course.",
        "Note: 10:30 at C: drive, a:b",
    ],
)
def test_text_that_is_no_server_path_stays_as_it_is(text):
    assert scrub_paths(text) == text


def test_the_scrubber_stays_fast_on_long_texts():
    for text in ("a/" * 50000, "/a" * 50000, "C:\\" + "a b " * 30000, "\\\\" + "x\\" * 50000, "/" + "a" * 100000):
        started = time.perf_counter()
        scrub_paths(text)
        assert time.perf_counter() - started < 1.0


def test_a_php_type_error_is_a_502_saying_moodle_failed_without_the_path(client, rsps):
    prime(client, rsps)
    add(rsps, MoodleFunction.ENROL_USERS, body=golden("error_enrol_nonexistent_user"), content_type="application/json")

    error = raised(client.call, MoodleFunction.ENROL_USERS)

    assert (error.status, error.code) == (502, "moodleexception")
    assert error.message.startswith("Moodle failed internally in enrol_manual_enrol_users (PHP TypeError): ")
    assert "core\\user::get_name_placeholders()" in error.message
    assert error.message.endswith("called in [path] on line 3674")
    assert "/var/www" not in error.message and "enrollib" not in error.message
    assert error.details == {"function": MoodleFunction.ENROL_USERS}


def test_a_php_error_without_errorcode_names_its_class_and_the_function(client, rsps):
    prime(client, rsps, (*KNOWN_FUNCTIONS, MoodleFunction.GET_COURSES_BY_FIELD))
    body = golden("core_course_get_courses_by_field__ids_missing")
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, body=body, content_type="application/json")

    error = raised(client.call, MoodleFunction.GET_COURSES_BY_FIELD)

    assert (error.status, error.code) == (502, "moodleexception")
    assert error.message == (
        "Moodle failed internally in core_course_get_courses_by_field (PHP Error): "
        'Attempt to assign property "contextvalidated" on null'
    )


@pytest.mark.parametrize(
    ("exception", "named"),
    [
        ("ValueError", "PHP ValueError"),
        ("ArgumentCountError", "PHP ArgumentCountError"),
        ("core\\exception\\coding_exception", "PHP core\\exception\\coding_exception"),
        ("<b>odd</b>", "a PHP error"),
        (None, "a PHP error"),
    ],
)
def test_the_php_class_is_named_only_when_it_is_a_class_name(client, rsps, exception, named):
    prime(client, rsps)
    add(rsps, READ_FN, json={"exception": exception, "message": "in C:\\moodle\\lib\\x.php"})

    error = raised(client.call, READ_FN)

    assert error.message == f"Moodle failed internally in {READ_FN} ({named}): in [path]"


def test_a_moodle_error_message_loses_its_paths_and_the_token(client, rsps):
    prime(client, rsps)
    message = f"Error reading /var/moodledata/filedir/ab/cd for wstoken={TOKEN}"
    add(rsps, READ_FN, json={"exception": "file_exception", "errorcode": "storedfilecannotread", "message": message})

    error = raised(client.call, READ_FN)

    assert error.code == "storedfilecannotread"
    assert error.message == "Error reading [path] for wstoken=[redacted]"


def test_an_upload_php_error_loses_its_paths(client, rsps):
    body = {"error": "Cannot write to /var/moodledata/temp/upload", "errorcode": "cannotwrite", "stacktrace": None}
    rsps.add(responses.POST, BASE_URL + "/webservice/upload.php", json=body)
    stream = io.BytesIO(b"x")

    error = raised(client.upload, [UploadFile("x.txt", stream)])

    assert (error.code, error.message) == ("cannotwrite", "Cannot write to [path]")


def test_clean_drops_the_token_and_paths(client):
    assert client.clean(f"{TOKEN} at /var/www/moodle/x.php") == "[redacted] at [path]"


# -- uploads in the call record ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "outcome"),
    [
        ([{"filename": "a.txt", "itemid": 7}], "ok"),
        ([{"filename": "a.txt", "errortype": "filenameexist", "error": "exists"}], "filenameexist"),
        ([{"filename": "a.txt", "itemid": 7}, {"filename": "b", "errortype": "fileoversized"}], "fileoversized"),
        ([{"filename": "a.txt", "errortype": "someplugin_oddity", "error": "odd"}], "othermoodleerror"),
    ],
    ids=["stored", "name-taken", "one-of-two-refused", "unknown-errortype"],
)
def test_an_upload_with_a_refused_file_is_recorded_as_failed_under_its_errortype(client, rsps, entries, outcome):
    rsps.add(responses.POST, BASE_URL + "/webservice/upload.php", json=entries)

    with recording_calls() as call_log:
        answer = client.upload([UploadFile("a.txt", io.BytesIO(b"x"))])

    assert answer == entries  # the entries are the caller's to map; only the record says the call failed
    assert [(record.function, record.outcome) for record in call_log.calls] == [("upload.php", outcome)]


def test_an_upload_answer_of_the_wrong_shape_is_recorded_as_badresponse(client, rsps):
    rsps.add(responses.POST, BASE_URL + "/webservice/upload.php", json={"itemid": 7})

    with recording_calls() as call_log:
        error = raised(client.upload, [UploadFile("a.txt", io.BytesIO(b"x"))])

    assert error.code == "badresponse"
    assert call_log.calls[0].outcome == "badresponse"


# -- the answer's size: MOODLE_MAX_ANSWER_MB ---------------------------------------------------------


class LocalMoodle(ThreadingHTTPServer):
    """A web server on a free loopback port answering each POST with the next of ``answers``, counting the
    connections it accepted, the requests it read and the body bytes it managed to send.

    An answer is ``("json", body)``, ``("chunked", size)`` (chunked, no Content-Length) or ``("declared", size)``
    (a Content-Length of ``size``, the body sent as long as the client reads it); ``("silent", 0)`` reads the request
    and never answers, ``("stalled", size)`` sends the headers of a body of ``size`` and nothing more,
    ``("trickled", size)`` sends them and then the body a byte every 0.1 s, and
    ``("redirect", location)`` answers 302. ``seen`` holds each request's headers and body.
    """

    daemon_threads = True

    def __init__(self, *answers):
        super().__init__(("127.0.0.1", 0), _LocalMoodleHandler)
        self.answers = list(answers)
        self.connections = self.requests = self.served = 0
        self.seen = []
        self.streamed = threading.Event()  # a streamed body ended: sent whole, or cut off by the client
        self.stop = threading.Event()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.stop.set()
        self.shutdown()
        self.server_close()


class _LocalMoodleHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalMoodle

    def setup(self):
        super().setup()
        self.server.connections += 1

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.headers, body))
        self.server.requests += 1
        kind, value = self.server.answers.pop(0) if self.server.answers else ("json", b"[]")
        if kind == "silent":
            self.server.stop.wait(30)
            self.close_connection = True
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if kind == "stalled":
            self.send_header("Content-Length", str(value))
            self.end_headers()
            self.wfile.flush()
            self.server.stop.wait(30)
            self.close_connection = True
            return
        if kind == "trickled":
            self.send_header("Content-Length", str(value))
            self.end_headers()
            try:
                for _ in range(value):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    if self.server.stop.wait(0.1):
                        break
            except OSError:  # the client gave up
                pass
            self.close_connection = True
            return
        if kind == "json":
            self.send_header("Content-Length", str(len(value)))
            self.end_headers()
            self.wfile.write(value)
            return
        self.send_header(*(("Transfer-Encoding", "chunked") if kind == "chunked" else ("Content-Length", str(value))))
        self.end_headers()
        self._stream(value, chunked=kind == "chunked")

    def _stream(self, size, chunked):
        piece = b" " * (64 * 1024)
        try:
            while self.server.served < size:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                self.server.served += len(piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client closed the connection: what it had not read stays unsent
            self.close_connection = True
        finally:
            self.server.streamed.set()


@pytest.fixture
def local_moodle():
    servers = []

    def start(*answers):
        servers.append(LocalMoodle(*answers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def site_info_json(padded_to=0):
    return json.dumps(site_info_body()).encode().ljust(padded_to)  # JSON may end in white space


def peak_memory_of(function, *args):
    """What ``function`` raised, and the most memory Python held at once while it ran."""
    tracemalloc.start()
    try:
        error = raised(function, *args)
        return error, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_chunked_answer_over_the_limit_is_read_no_further_and_is_a_502(local_moodle):
    moodle = local_moodle(("chunked", 256 * MIB))
    client = MoodleClient(moodle.url, TOKEN, timeout_s=10, max_retries=2, functions_ttl_s=300, max_answer_bytes=MIB)

    error, peak = peak_memory_of(client.call, SITE_INFO)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.message == "Moodle's answer is larger than 1 MiB (MOODLE_MAX_ANSWER_MB); it was not read"
    assert moodle.streamed.wait(10)
    assert moodle.served < 32 * MIB  # the limit, and what the sockets' buffers held when the client let go
    assert peak < 8 * MIB
    assert moodle.requests == 1  # as large again on a retry: not retried


def test_a_declared_length_over_the_limit_is_refused_without_reading_the_body(local_moodle):
    moodle = local_moodle(("declared", 256 * MIB))
    client = MoodleClient(moodle.url, TOKEN, timeout_s=10, max_retries=2, functions_ttl_s=300, max_answer_bytes=MIB)

    error, peak = peak_memory_of(client.call, SITE_INFO)

    assert (error.status, error.code) == (502, "badresponse")
    assert moodle.streamed.wait(10)
    assert moodle.served < 32 * MIB
    assert peak < MIB
    assert moodle.requests == 1


def test_an_answer_of_exactly_the_limit_is_read(local_moodle):
    moodle = local_moodle(("json", site_info_json(padded_to=MIB)))
    client = MoodleClient(moodle.url, TOKEN, timeout_s=10, max_retries=0, functions_ttl_s=300, max_answer_bytes=MIB)

    assert client.call(SITE_INFO)["sitename"] == "Moodle test"


def test_the_connection_of_an_answer_over_the_limit_is_closed_not_pooled(local_moodle):
    moodle = local_moodle(("json", site_info_json()), ("json", b"[]"), ("chunked", 64 * MIB), ("json", b"[]"))
    client = MoodleClient(moodle.url, TOKEN, timeout_s=10, max_retries=0, functions_ttl_s=300, max_answer_bytes=MIB)
    client.call(WRITE_FN)  # site info, then the write, over one kept-alive connection
    assert moodle.connections == 1

    raised(client.call, WRITE_FN)
    answer = client.call(WRITE_FN)

    assert answer == []  # not the rest of the answer over the limit, left on the old connection
    assert moodle.connections == 2


def test_a_write_whose_answer_is_over_the_limit_may_have_been_applied(local_moodle):
    moodle = local_moodle(("json", site_info_json()), ("chunked", 64 * MIB))
    client = MoodleClient(moodle.url, TOKEN, timeout_s=10, max_retries=2, functions_ttl_s=300, max_answer_bytes=MIB)
    client.call(SITE_INFO)

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.code, error.details["outcome"]) == (502, "badresponse", "unknown")
    assert moodle.requests == 2


def test_the_limit_comes_from_moodle_max_answer_mb(local_moodle):
    over, under = (local_moodle(("json", site_info_json(padded_to=2 * MIB + 1))) for _ in range(2))
    settings = settings_for(over.url, TOKEN, MOODLE_MAX_ANSWER_MB="2")

    assert raised(MoodleClient.from_settings(settings, over.url, TOKEN).call, SITE_INFO).code == "badresponse"
    settings = settings_for(under.url, TOKEN, MOODLE_MAX_ANSWER_MB="3")
    assert MoodleClient.from_settings(settings, under.url, TOKEN).call(SITE_INFO)["sitename"] == "Moodle test"


# -- why Moodle could not be reached ----------------------------------------------------------------


def cause_of(base_url, debug=True, **options):
    """The error a site-info call to ``base_url`` ends in, with MOODLE_DEBUG on (causes in the details) or off."""
    options = {"timeout_s": 2.0, "max_retries": 0, "functions_ttl_s": 300, "debug": debug, **options}
    return raised(MoodleClient(base_url, TOKEN, **options).call, SITE_INFO)


def test_a_refused_connection_names_the_address(unused_port):
    error = cause_of(f"http://127.0.0.1:{unused_port}")

    assert (error.status, error.code, error.cause.kind) == (503, "moodleunavailable", "refused")
    assert error.cause.reason == f"nothing accepts connections on 127.0.0.1:{unused_port} (connection refused)"
    assert (error.details["cause"], error.details["reason"]) == ("refused", error.cause.reason)


def test_a_name_that_does_not_resolve_is_dns():
    # The system's real resolver. The call's 2 s deadline does not bound the lookup (nothing in the client does; only
    # the resolver's own timeouts): without a reachable name server this is slower, never another cause.
    error = cause_of("https://moodle.example.invalid")  # RFC 2606: .invalid never resolves

    assert (error.status, error.code, error.cause.kind) == (503, "moodleunavailable", "dns")
    assert error.cause.reason == "the name moodle.example.invalid does not resolve"
    assert error.message == "Moodle could not be reached"


def test_https_to_a_server_without_tls_is_tls(local_moodle):
    plain = local_moodle()

    error = cause_of(plain.url.replace("http://", "https://"))

    assert (error.status, error.code, error.cause.kind) == (503, "moodleunavailable", "tls")
    assert error.cause.reason.startswith(f"TLS with {plain.url[7:]} failed: ")
    assert plain.requests == 0


def test_a_self_signed_certificate_is_tls_and_says_so(tmp_path):
    server = tls_server(tmp_path)
    try:
        error = cause_of(f"https://localhost:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()

    assert error.cause.kind == "tls"
    assert error.cause.reason.endswith("failed: certificate verify failed: self-signed certificate")


def test_a_refused_certificate_on_a_write_is_sent_again_as_nothing_was_sent(make_client, rsps):
    prime(client := make_client(), rsps)
    refused_certificate = ssl.SSLCertVerificationError(1, "certificate verify failed")
    refused_certificate.verify_message = "self-signed certificate"
    add(rsps, WRITE_FN, body=SSLError(refused_certificate))
    add(rsps, WRITE_FN, json=[{"id": 3}])

    assert client.call(WRITE_FN) == [{"id": 3}]


def test_another_tls_failure_on_a_write_may_have_come_after_sending(client, rsps):
    prime(client, rsps)
    add(rsps, WRITE_FN, body=SSLError(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")))

    error = raised(client.call, WRITE_FN)

    assert (error.status, error.details["outcome"], error.cause.kind) == (504, "unknown", "tls")
    assert sent_functions(rsps) == [SITE_INFO, WRITE_FN]


def test_no_answer_in_time_is_a_timeout(local_moodle):
    silent = local_moodle(("silent", 0))

    error = cause_of(silent.url, timeout_s=0.3)

    assert (error.status, error.code, error.cause.kind) == (504, "moodletimeout", "timeout")
    assert error.cause.reason == f"no answer from {silent.url[7:]} within 0.3 s"


def test_no_connection_in_time_is_a_timeout(make_client, rsps):
    add(rsps, SITE_INFO, body=ConnectTimeoutError())

    error = raised(make_client(max_retries=0).call, SITE_INFO)

    assert (error.code, error.cause.kind, error.cause.reason) == (
        "moodletimeout", "timeout", "no connection to moodle.test:80 within 2 s"
    )  # fmt: skip


@pytest.mark.parametrize(("status", "code"), [(502, "badgateway"), (503, "moodleunavailable"), (504, "moodletimeout")])
def test_a_gateway_status_is_an_http_cause(make_client, rsps, status, code):
    add(rsps, SITE_INFO, status=status, body=HTML_PAGE)

    error = raised(make_client(max_retries=0, debug=True).call, SITE_INFO)

    assert (error.code, error.cause.kind) == (code, "http")
    assert error.details["reason"] == f"moodle.test:80 answered HTTP {status}, not Moodle's REST server"


@pytest.mark.parametrize("status", [404, 500, 301])
def test_another_status_without_moodles_answer_is_an_http_cause(make_client, rsps, status):
    add(rsps, SITE_INFO, status=status, body=HTML_PAGE)

    error = raised(make_client(debug=True).call, SITE_INFO)

    assert (error.status, error.code, error.cause.kind, error.details["cause"]) == (502, "badresponse", "http", "http")


def test_a_page_that_is_not_moodles_with_200_has_no_cause(make_client, rsps):
    add(rsps, SITE_INFO, body=HTML_PAGE)

    error = raised(make_client(debug=True).call, SITE_INFO)

    assert error.code == "badresponse"
    assert not hasattr(error, "cause")
    assert "cause" not in error.details


def test_a_cause_is_in_the_details_only_with_moodle_debug(unused_port):
    error = cause_of(f"http://127.0.0.1:{unused_port}", debug=False)

    assert error.cause.kind == "refused"  # known to the gateway, for its log and /readyz
    assert error.details == {"function": SITE_INFO}


def test_the_token_is_in_no_cause(unused_port):
    error = cause_of(f"http://127.0.0.1:{unused_port}")

    assert TOKEN not in repr(error.cause)
    assert TOKEN not in json.dumps(error.details)


def test_moodle_unreachable_is_logged_once_per_cause_and_its_return_once(make_client, rsps, captured_logs):
    client = make_client(max_retries=0)
    add(rsps, SITE_INFO, body=reset())
    add(rsps, SITE_INFO, body=reset())
    add(rsps, SITE_INFO, status=503, body=HTML_PAGE)
    add(rsps, SITE_INFO, json=site_info_body())

    for _ in range(3):
        raised(client.call, SITE_INFO)
    assert client.unreachable.kind == "http"
    client.call(SITE_INFO)

    lines = [(line["event"], line["log_level"]) for line in captured_logs]
    assert lines == [("moodle.unreachable", "warning"), ("moodle.unreachable", "warning"), ("moodle.reachable", "info")]
    first, second, back = captured_logs
    assert (first["cause"], first["function"], first["moodle_base_url"]) == ("reset", SITE_INFO, BASE_URL)
    assert first["reason"] == "the connection to moodle.test:80 was closed before an answer came"
    assert second["cause"] == "http"
    assert back["failed_calls"] == 3
    assert client.unreachable is None


def test_a_moodle_error_answer_means_moodle_is_reachable(make_client, rsps, captured_logs):
    client = make_client(max_retries=0)
    add(rsps, SITE_INFO, body=reset())
    add(rsps, SITE_INFO, body=BAD_TOKEN_BODY)

    raised(client.call, SITE_INFO)
    raised(client.call, SITE_INFO)

    assert [line["event"] for line in captured_logs] == ["moodle.unreachable", "moodle.reachable"]
    assert client.unreachable is None


def test_the_url_is_named_without_its_password(rsps, captured_logs):
    client = MoodleClient("https://gateway:pa55word@moodle.test", TOKEN, timeout_s=2, max_retries=0,
                          functions_ttl_s=300)  # fmt: skip
    rsps.add(responses.POST, "https://gateway:pa55word@moodle.test" + "/webservice/rest/server.php", body=reset())

    raised(client.call, SITE_INFO)

    assert client.public_url == "https://moodle.test"
    assert captured_logs[0]["moodle_base_url"] == "https://moodle.test"
    assert "pa55word" not in repr(captured_logs)


def test_the_breaker_names_the_cause_when_it_opens_and_a_failed_trial_is_no_new_warning(
    make_client, rsps, clock, unused_port, captured_logs, monkeypatch
):
    monkeypatch.setattr(guard, "log", structlog.get_logger("lms_api.moodle"))
    client = make_client(max_retries=0, breaker=CircuitBreaker(2, 10, clock))
    for _ in range(3):
        add(rsps, SITE_INFO, body=reset())

    for _ in range(2):
        raised(client.call, SITE_INFO)
    refused_by_breaker = raised(client.call, SITE_INFO)
    clock.advance(10)
    raised(client.call, SITE_INFO)  # the trial

    opened = [line for line in captured_logs if line["event"] == "moodle.breaker_opened"]
    assert [line["log_level"] for line in opened] == ["warning", "info"]
    assert (opened[0]["cause"], opened[0]["reason"]) == ("reset", client.unreachable.reason)
    assert refused_by_breaker.cause.kind == "reset"  # the pause says why, to the log and /readyz
    assert refused_by_breaker.details == {"function": SITE_INFO, "breaker": "open"}


def tls_server(folder):
    """An HTTPS server on a free loopback port with a self-signed certificate for localhost."""
    certificate, key = self_signed_certificate(folder, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


class _QuietHandler(BaseHTTPRequestHandler):
    """For a request that got past the TLS handshake, which the client refuses: the stdlib's own answer (501 to a
    POST), logged nowhere."""

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


# -- the function table: what a member declares is what the client does ------------------------------------------

REST_FUNCTIONS = [function for function in MoodleFunction if function is not MoodleFunction.UPLOAD]
# An answer of the declared shape, and one of another, for each shape.
SHAPED = {
    AnswerShape.OBJECT: ({"warnings": []}, [{"id": 1}]),
    AnswerShape.LIST: ([{"id": 1}], {"id": 1}),
    AnswerShape.INTEGER: (3, True),
    AnswerShape.NULL: (None, {}),
}


@pytest.mark.parametrize("function", [f for f in REST_FUNCTIONS if f is not SITE_INFO], ids=str)
def test_each_function_is_sent_again_after_a_reset_only_when_its_member_says_retried(client, rsps, function):
    prime(client, rsps, (function,))
    add(rsps, function, body=reset())
    if function.retried:
        add(rsps, function, body=json.dumps(SHAPED[function.answer][0]), content_type="application/json")

    if function.retried:
        assert client.call(function) == SHAPED[function.answer][0]
    else:
        assert raised(client.call, function).details["outcome"] == "unknown"
    assert sent_functions(rsps)[1:] == [function] * (2 if function.retried else 1)


def test_the_site_info_is_sent_again_after_a_reset_too(client, rsps):
    add(rsps, SITE_INFO, body=reset())
    add(rsps, SITE_INFO, json=site_info_body())

    assert client.call(SITE_INFO) == site_info_body()
    assert sent_functions(rsps) == [SITE_INFO, SITE_INFO]


@pytest.mark.parametrize("function", [f for f in REST_FUNCTIONS if f is not SITE_INFO], ids=str)
def test_an_answer_of_another_shape_than_the_member_declares_is_a_502(client, rsps, function):
    prime(client, rsps, (function,))
    add(rsps, function, body=json.dumps(SHAPED[function.answer][1]), content_type="application/json")

    error = raised(client.call, function)

    assert (error.status, error.code) == (502, "badresponse")
    assert error.message == f"Moodle's answer to {function} has an unexpected shape"
    # Moodle answered: a write may have been applied.
    assert error.details == {"function": function, **({"outcome": "unknown"} if function.writes else {})}


def test_every_answer_shape_is_checked_by_some_function():
    assert {function.answer for function in REST_FUNCTIONS} == set(AnswerShape) == set(SHAPED)


@pytest.mark.parametrize("shape", list(AnswerShape))
def test_an_answer_of_the_declared_shape_is_returned_as_it_is(client, rsps, shape):
    function = next(f for f in REST_FUNCTIONS if f.answer is shape and f is not SITE_INFO)
    prime(client, rsps, (function,))
    add(rsps, function, body=json.dumps(SHAPED[shape][0]), content_type="application/json")

    assert client.answer(function).value == SHAPED[shape][0]


def test_the_site_info_fetched_through_answer_is_checked_and_gives_the_function_list(client, rsps):
    add(rsps, SITE_INFO, json=site_info_body((READ_FN,)))
    add(rsps, READ_FN, json=[])

    answer = client.answer(SITE_INFO)
    client.call(READ_FN)  # no second site-info call: the function list came with the answer

    assert answer.value == site_info_body((READ_FN,))
    assert json.loads(answer.body) == answer.value
    assert client.available_functions() == {READ_FN, SITE_INFO}
    assert sent_functions(rsps) == [SITE_INFO, READ_FN]
    add(rsps, SITE_INFO, json={"sitename": "no function list"})
    client.forget_functions()
    assert raised(client.answer, SITE_INFO).code == "badresponse"


def test_the_site_info_is_called_without_asking_the_function_list_first(client, rsps):
    add(rsps, SITE_INFO, json=site_info_body(()))

    client.call(SITE_INFO)

    assert sent_functions(rsps) == [SITE_INFO]
    assert client.available_functions() == {SITE_INFO}


def test_the_attach_function_is_sent_and_required_under_moodle_attach_function(rsps):
    settings = settings_for("https://moodle.test", TOKEN, MOODLE_ATTACH_FUNCTION="local_site_attach")
    client = MoodleClient.from_settings(settings, BASE_URL, TOKEN)
    prime(client, rsps, ("local_site_attach",))
    add(rsps, "local_site_attach", json={"id": 17})

    assert client.call(MoodleFunction.ATTACH_FILE, {"courseid": 2}) == {"id": 17}
    assert client.name_of(MoodleFunction.ATTACH_FILE) == "local_site_attach"
    assert sent_functions(rsps) == [SITE_INFO, "local_site_attach"]


def test_the_attach_function_under_its_default_name_is_not_enough_when_the_setting_names_another(rsps):
    settings = settings_for("https://moodle.test", TOKEN, MOODLE_ATTACH_FUNCTION="local_site_attach")
    client = MoodleClient.from_settings(settings, BASE_URL, TOKEN)
    prime(client, rsps, (MoodleFunction.ATTACH_FILE,))

    error = raised(client.call, MoodleFunction.ATTACH_FILE)

    assert (error.status, error.code, error.details) == (501, "functionnotavailable", {"function": "local_site_attach"})
    assert sent_functions(rsps) == [SITE_INFO]


def test_without_the_setting_the_attach_function_is_the_plugins(client, rsps):
    prime(client, rsps, (MoodleFunction.ATTACH_FILE,))
    add(rsps, MoodleFunction.ATTACH_FILE, json={"id": 17})

    client.call(MoodleFunction.ATTACH_FILE)

    assert sent_functions(rsps)[-1] == "local_course_add_new_course_module_resource"


def test_an_upload_takes_any_object_with_a_filename_a_stream_and_a_content_type(client, rsps):
    rsps.add(responses.POST, BASE_URL + "/webservice/upload.php", json=[{"filename": "a.txt", "itemid": 7}])

    with recording_calls() as call_log:
        client.upload([UploadFile("a.txt", io.BytesIO(b"hello"), "text/plain")])  # the tests' own type

    body = rsps.calls[0].request.body
    body = body.read() if hasattr(body, "read") else body
    assert b'filename="a.txt"' in body and b"Content-Type: text/plain" in body and b"hello" in body
    assert [record.function for record in call_log.calls] == [MoodleFunction.UPLOAD]


# -- a shared read's answer derived once per distinct body -------------------------------------------


@pytest.fixture
def parses(monkeypatch):
    """The bodies the client parsed from here on."""
    parsed = []

    def counting_loads(body):
        parsed.append(body)
        return json.loads(body)

    monkeypatch.setattr(client_module, "loads", counting_loads)
    return parsed


def test_the_same_site_info_bytes_give_the_same_answer_without_parsing_them_again(client, rsps, parses):
    body = golden("core_webservice_get_site_info")
    add(rsps, SITE_INFO, body=body, content_type="application/json")

    first = client.answer(SITE_INFO)
    second = client.answer(SITE_INFO)

    assert second.value is first.value
    assert second.body == body.encode()
    assert len(parses) == 1
    assert len(rsps.calls) == 2  # each call still asks Moodle


def test_other_bytes_are_parsed_checked_and_replace_the_kept_answer(client, rsps, parses):
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, SITE_INFO, json=site_info_body((READ_FN,)))

    first = client.call(SITE_INFO)
    second = client.call(SITE_INFO)
    third = client.call(SITE_INFO)

    assert second is not first and third is second
    assert len(parses) == 2
    assert client.available_functions() == {READ_FN, SITE_INFO}


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        ({"body": '{"sitename": "x", "functions": "none"}'}, 502, "badresponse"),
        ({"body": HTML_PAGE}, 502, "badresponse"),
        ({"body": '{"exception": "moodle_exception", "errorcode": "sitemaintenance", "message": "m"}'}, 503,
         "sitemaintenance"),
    ],
)  # fmt: skip
def test_a_changed_answer_after_a_kept_one_is_checked_and_refused_like_any(client, rsps, answer, status, code):
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, SITE_INFO, **answer)
    kept = client.call(SITE_INFO)

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code) == (status, code)
    rsps.replace(responses.POST, URL, json=site_info_body())
    assert client.call(SITE_INFO) is kept  # what was refused was never kept


def test_the_same_bytes_with_another_status_than_200_are_not_taken_for_the_answer(client, rsps):
    body = json.dumps(site_info_body())
    add(rsps, SITE_INFO, body=body)
    add(rsps, SITE_INFO, body=body, status=500)
    client.call(SITE_INFO)

    error = raised(client.call, SITE_INFO)

    assert (error.status, error.code, error.details["moodle_status"]) == (502, "badresponse", 500)


def test_a_kept_site_info_keeps_the_function_list_for_another_ttl(client, rsps, clock):
    add(rsps, SITE_INFO, json=site_info_body())
    client.call(SITE_INFO)
    clock.advance(200)
    client.call(SITE_INFO)  # the same bytes: the list is kept from now
    clock.advance(200)

    client.require(READ_FN)

    assert sent_functions(rsps) == [SITE_INFO, SITE_INFO]


def test_a_kept_answer_says_moodle_answers_again_and_closes_the_breaker(make_client, rsps, clock, captured_logs):
    client = make_client(max_retries=0, breaker=CircuitBreaker(1, 10, clock))
    add(rsps, SITE_INFO, json=site_info_body())
    add(rsps, SITE_INFO, body=reset())
    add(rsps, SITE_INFO, json=site_info_body())
    kept = client.call(SITE_INFO)
    raised(client.call, SITE_INFO)
    assert client.breaker.state == guard.BreakerState.OPEN
    clock.advance(10)

    assert client.call(SITE_INFO) is kept  # the trial call

    reach = [line["event"] for line in captured_logs if "reachable" in line["event"]]
    assert reach == ["moodle.unreachable", "moodle.reachable"]
    assert client.unreachable is None
    assert client.breaker.state == guard.BreakerState.CLOSED


@pytest.mark.parametrize("function", [READ_FN, WRITE_FN, MoodleFunction.GET_UNREAD_COUNT], ids=str)
def test_reads_a_caller_can_vary_and_writes_are_derived_at_each_call(client, rsps, parses, function):
    prime(client, rsps)
    answer = 3 if function.answer is AnswerShape.INTEGER else [{"id": 1}]
    add(rsps, function, json=answer)

    first, second = client.call(function), client.call(function)

    assert first == second
    assert len(parses) == 3  # the site info, then both answers
    if function.answer is not AnswerShape.INTEGER:
        assert first is not second


def test_each_parameters_site_info_is_kept_apart(client, rsps):
    add(rsps, SITE_INFO, json=site_info_body())
    one = client.call(SITE_INFO, {"serviceshortnames": ["a"]})
    other = client.call(SITE_INFO, {"serviceshortnames": ["b"]})

    assert other is not one
    assert client.call(SITE_INFO, {"serviceshortnames": ["a"]}) is one
    assert client.call(SITE_INFO, {"serviceshortnames": ["b"]}) is other


def test_kept_answers_are_bounded_in_number_least_recently_used_out_first():
    kept = client_module.DerivedAnswers(max_count=2, max_bytes=100)
    kept.keep("a", b"1", {"a": 1})
    kept.keep("b", b"2", {"b": 2})
    assert kept.get("a", b"1") is not None  # "b" is now the least recently used
    kept.keep("c", b"3", {"c": 3})

    assert kept.get("b", b"2") is None
    assert kept.get("a", b"1") == (b"1", {"a": 1})
    assert kept.get("c", b"3") == (b"3", {"c": 3})


def test_kept_answers_are_bounded_in_bytes_and_one_over_the_budget_is_never_kept():
    kept = client_module.DerivedAnswers(max_count=10, max_bytes=10)
    kept.keep("a", b"123456", "a")
    kept.keep("b", b"123456", "b")  # 12 bytes in all: "a" goes
    kept.keep("c", b"12345678901", "c")  # alone over the budget

    assert kept.get("a", b"123456") is None
    assert kept.get("b", b"123456") == (b"123456", "b")
    assert kept.get("c", b"12345678901") is None
    assert kept.get("b", b"654321") is None  # other bytes for the key


def test_an_answer_replaced_by_one_over_the_budget_is_forgotten():
    kept = client_module.DerivedAnswers(max_count=10, max_bytes=10)
    kept.keep("a", b"1", "old")
    kept.keep("a", b"12345678901", "new")

    assert kept.get("a", b"1") is None


# -- the transport: urllib3's pool, over real HTTP ---------------------------------------------------


def test_calls_of_one_thread_share_one_kept_alive_connection(local_moodle):
    moodle = local_moodle(*[("json", site_info_json())] * 3)
    client = MoodleClient(moodle.url, TOKEN, timeout_s=2, max_retries=0, functions_ttl_s=300)

    for _ in range(3):
        client.call(SITE_INFO)

    assert (moodle.requests, moodle.connections) == (3, 1)


def test_the_form_is_url_encoded_and_a_password_in_the_url_is_sent_as_basic_auth(local_moodle):
    moodle = local_moodle(("json", site_info_json()), ("json", b"[]"))
    base_url = moodle.url.replace("http://", "http://gateway:pa%40ss@")
    client = MoodleClient(base_url, TOKEN, timeout_s=2, max_retries=0, functions_ttl_s=300)

    client.call(READ_FN, {"options": {"ids": [2]}, "name": "é & ü"})

    headers, body = moodle.seen[-1]
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"gateway:pa@ss").decode()
    assert parse_qsl(body.decode(), keep_blank_values=True) == [
        ("wstoken", TOKEN), ("wsfunction", READ_FN), ("moodlewsrestformat", "json"), ("options[ids][0]", "2"),
        ("name", "é & ü"),
    ]  # fmt: skip


def test_a_redirect_is_not_followed(local_moodle):
    moodle = local_moodle(("redirect", "/elsewhere/webservice/rest/server.php"))

    error = cause_of(moodle.url)

    assert (error.status, error.code, error.details["moodle_status"]) == (502, "badresponse", 302)
    assert moodle.requests == 1


def test_an_answer_sent_a_byte_at_a_time_past_the_deadline_is_a_timeout_at_the_deadline(local_moodle):
    trickled = local_moodle(("trickled", 100))  # 10 s in all, each byte well within the read timeout
    started = time.monotonic()

    error = cause_of(trickled.url, timeout_s=0.5)

    assert time.monotonic() - started < 1.5
    assert (error.status, error.code, error.cause.kind) == (504, "moodletimeout", "timeout")


def test_an_answer_that_stalls_after_its_headers_is_a_timeout(local_moodle):
    stalled = local_moodle(("stalled", 100))

    error = cause_of(stalled.url, timeout_s=0.3)

    assert (error.status, error.code, error.cause.kind) == (504, "moodletimeout", "timeout")
    assert error.cause.reason == f"no answer from {stalled.url[7:]} within 0.3 s"
