"""The Moodle token, the JWT key and the caller's JWT never appear in a response or a log line, under any fault."""

import pytest
import structlog

from lms_api.sandbox.server import start_sandbox
from tests.conftest import Gateway, mint, queue_fault, settings_for

MOODLE_TOKEN = "MOODLETOKENCANARY0123456789abcdef"
JWT_SECRET = "JWT-SECRET-CANARY-" + "k" * 50

FAULTS = [
    None,
    {"kind": "reset", "times": 5},
    {"kind": "delay", "seconds": 1.0},
    {"kind": "http", "status": 500, "times": 5},
    {"kind": "http", "status": 502, "times": 5},
    {"kind": "http", "status": 503, "times": 5},
    {"kind": "maintenance"},
    {"kind": "notjson"},
]


@pytest.fixture(scope="module")
def debug_sandbox():
    server = start_sandbox(token=MOODLE_TOKEN, debug=True)
    yield server
    server.stop()


@pytest.mark.parametrize("moodle_debug", ["true", "false"])
@pytest.mark.parametrize("log_format", ["json", "console"])
def test_no_secret_in_any_response_or_log_line(debug_sandbox, unused_port, moodle_debug, log_format):
    options = {"MOODLE_DEBUG": moodle_debug, "LOG_FORMAT": log_format, "JWT_SECRET": JWT_SECRET}
    gateway = Gateway(settings_for(debug_sandbox.url, MOODLE_TOKEN, MOODLE_TIMEOUT_MS="400", **options))
    wrong_token = Gateway(settings_for(debug_sandbox.url, MOODLE_TOKEN[::-1], **options))
    unreachable = Gateway(settings_for(f"http://127.0.0.1:{unused_port}", MOODLE_TOKEN, **options))
    bearer = mint("siteinfo:read", secret=JWT_SECRET)
    responses = []

    for fault in FAULTS:
        if fault:
            queue_fault(debug_sandbox, **fault)
        responses.append(gateway.get("/api/moodle/siteinfo", bearer))
        with debug_sandbox.state_lock:
            debug_sandbox.faults.clear()
    responses.append(gateway.get("/api/moodle/siteinfo?bad=1", bearer))
    responses.append(gateway.get("/api/moodle/siteinfo", mint("courses:read", secret=JWT_SECRET)))
    responses.append(gateway.get("/api/moodle/siteinfo", bearer + "x"))
    responses.append(gateway.get("/api/moodle/nowhere", bearer))
    responses.append(wrong_token.get("/api/moodle/siteinfo", bearer))
    responses.append(unreachable.get("/api/moodle/siteinfo", bearer))

    statuses = sorted({response.status_int for response in responses})
    assert statuses == [200, 400, 401, 403, 404, 502, 503, 504]
    logs = gateway.log_stream.getvalue() + wrong_token.log_stream.getvalue() + unreachable.log_stream.getvalue()
    assert logs.count("request") >= len(responses)
    for secret in (MOODLE_TOKEN, JWT_SECRET, bearer):
        assert secret not in logs
        for response in responses:
            assert secret not in response.text
            assert all(secret not in value for value in response.headers.values())


def test_a_secret_that_reaches_the_logger_is_scrubbed(debug_sandbox):
    gateway = Gateway(settings_for(debug_sandbox.url, MOODLE_TOKEN, JWT_SECRET=JWT_SECRET))
    structlog.get_logger("test").warning("oops", leaked=MOODLE_TOKEN, other=JWT_SECRET)

    logs = gateway.log_stream.getvalue()
    assert "oops" in logs
    assert MOODLE_TOKEN not in logs and JWT_SECRET not in logs
    assert "[redacted]" in logs
