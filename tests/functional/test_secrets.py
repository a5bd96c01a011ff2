"""The Moodle token, the JWT key and the caller's JWT never appear in a response or a log line, under any fault."""

import json
import re

import pytest
import structlog

from moodle_sandbox.server import start_sandbox
from tests.support.credentials import ALL_SCOPES, mint
from tests.support.gateway import Gateway, settings_for
from tests.support.operations import api_operations
from tests.support.sandbox import queue_fault
from tests.support.timing import FakeTime

MOODLE_TOKEN = "MOODLETOKENCANARY0123456789abcdef"
JWT_SECRET = "JWT-SECRET-CANARY-" + "k" * 50
TIMEOUT_MS = 100  # of the gateway that meets the slow Moodle: each of its calls gives up this soon
CONSOLE_SUMMARY = re.compile(r"^\S+ \[\w+ *\] request +\[lms_api\.request\] .*request_id=(\w+)$", re.MULTILINE)

FAULTS = [
    None,
    {"kind": "reset", "times": 5},
    # Far past the timeout: on a loaded host the caller's thread may read only after a late answer has arrived.
    {"kind": "delay", "seconds": TIMEOUT_MS / 1000 + 1},
    {"kind": "http", "status": 500, "times": 5},
    {"kind": "http", "status": 502, "times": 5},
    {"kind": "http", "status": 503, "times": 5},
    {"kind": "maintenance"},
    {"kind": "notjson"},
]
# Every route's call reaches Moodle and meets its fault: nothing answered from the cache, the breaker never opens.
EVERY_CALL_SENT = {"CACHE_TTLS": "siteinfo=0,courses=0,users=0,notifications=0", "MOODLE_BREAKER_FAILURES": "1000"}


def requests_per_operation(marker, draftitemid):
    """What each API route and method is sent, as ``(label, query string, body)``: writes use fresh names so they can
    succeed, and the attach a draft item the caller uploaded through that gateway (any other is refused before Moodle
    is called); an upload's body is its files."""
    course = {"fullname": f"Leak {marker}", "shortname": f"LEAK{marker}", "categoryid": 1}
    enrolment = {"enrolments": [{"roleid": "student", "userid": 3, "courseid": 2}]}
    attach = {"courseid": 2, "draftitemid": draftitemid, "name": marker}
    upload = [("file", f"{marker}.txt", b"leak test")]
    username = f"leak{marker}".lower()
    new_user = {"username": username, "firstname": "Leak", "lastname": marker, "email": f"{username}@example.com",
                "password": f"Leak#{marker}1a"}  # fmt: skip
    return {
        ("api.moodle.siteinfo", "GET"): [("siteinfo", "", None)],
        ("api.moodle.courses", "GET"): [
            ("courses", "", None),
            ("search", "?search=python", None),
            ("category", "?category=2", None),
        ],
        ("api.moodle.course", "GET"): [("course", "", None)],
        ("api.moodle.courses", "POST"): [("create", "", course)],
        ("api.moodle.course", "PATCH"): [("update", "", {"summary": f"Leak {marker}"})],
        ("api.moodle.users.by_field", "GET"): [("users", "?field=email&values=student1@example.com", None)],
        ("api.moodle.users", "POST"): [("createusers", "", {"users": [new_user]})],
        ("api.moodle.users", "PATCH"): [("updateusers", "", {"users": [{"id": 3, "city": f"Leak {marker}"}]})],
        ("api.moodle.enrol", "POST"): [("enrol", "", enrolment)],
        ("api.moodle.notifications", "GET"): [("notifications", "", None)],
        ("api.moodle.notifications.unread_count", "GET"): [("unread", "", None)],
        ("api.moodle.files.upload", "POST"): [("upload", "", upload)],
        ("api.moodle.files.attach", "POST"): [("attach", "", attach)],
        # The job routes call no Moodle function: a job's calls are those of the write routes above.
        ("api.moodle.jobs", "GET"): [],
        ("api.moodle.job", "GET"): [],
        ("api.moodle.job", "DELETE"): [],
        ("api.moodle.messages", "POST"): [("message", "", {"messages": [{"touserid": 3, "text": f"Leak {marker}"}]})],
        ("api.moodle.events.tickets", "POST"): [("ticket", "?courses=2", None)],
        # These two take no JWT (a ticket, the webhook's secret): tests/functional/test_events.py and test_webhooks.py.
        ("api.moodle.events.stream", "GET"): [],
        ("api.moodle.webhooks.moodle", "POST"): [],
    }


def route_calls(registry, marker, draftitemid=1):
    """One call or more per API route and method the registry serves, as ``(label, call(gateway, bearer))``, on its
    path with placeholders filled with ``2``; the routes are the registry's, what each is sent is the table's."""
    sent = requests_per_operation(marker, draftitemid)
    operations = api_operations(registry)
    assert {(each.route_name, each.method) for each in operations} == set(sent)  # a new route needs its line
    return [
        (label, _call(each, each.path + query, body))
        for each in operations
        for label, query, body in sent[each.route_name, each.method]
    ]


def _call(api_operation, path, body):
    if api_operation.method == "GET":
        return lambda gateway, bearer: gateway.get(path, bearer)
    if api_operation.method == "PATCH":
        return lambda gateway, bearer: gateway.patch(path, body, bearer)
    if api_operation.operation.form is not None:  # a multipart form: the body is its files
        return lambda gateway, bearer: gateway.upload(path, body, bearer)
    return lambda gateway, bearer: gateway.post(path, body, bearer)


@pytest.fixture(scope="module")
def debug_sandbox():
    server = start_sandbox(token=MOODLE_TOKEN, debug=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_upload_sandbox():
    server = start_sandbox(token=MOODLE_TOKEN, debug=True, max_bytes=4)
    yield server
    server.stop()


# Each format and each debug setting once: the renderer is one pipeline whatever Moodle said.
@pytest.mark.parametrize(("log_format", "moodle_debug"), [("console", "true"), ("json", "false")])
def test_no_secret_in_any_response_or_log_line(
    debug_sandbox, tiny_upload_sandbox, unused_port, moodle_debug, log_format
):
    options = {"MOODLE_DEBUG": moodle_debug, "LOG_FORMAT": log_format, "JWT_SECRET": JWT_SECRET, **EVERY_CALL_SENT}
    gateway = Gateway(settings_for(debug_sandbox.url, MOODLE_TOKEN, MOODLE_MAX_RETRIES="1", **options))
    impatient = Gateway(
        settings_for(
            debug_sandbox.url, MOODLE_TOKEN, MOODLE_TIMEOUT_MS=str(TIMEOUT_MS), MOODLE_MAX_RETRIES="1", **options
        )
    )
    wrong_token = Gateway(settings_for(debug_sandbox.url, MOODLE_TOKEN[::-1], **options))
    unreachable = Gateway(settings_for(f"http://127.0.0.1:{unused_port}", MOODLE_TOKEN, **options))
    tiny = Gateway(settings_for(tiny_upload_sandbox.url, MOODLE_TOKEN, **options))
    gateways = (gateway, impatient, wrong_token, unreachable, tiny)
    time = FakeTime()  # backoff sleeps return at once; deadlines still hold
    for each in gateways:
        each.use_moodle_client(sleep=time.sleep, clock=time.clock)
    bearer = mint(ALL_SCOPES, secret=JWT_SECRET, moodle_userid=3)
    responses = [each.get("/api/moodle/siteinfo", bearer) for each in (gateway, impatient)]

    assert [response.status_int for response in responses] == [200, 200]  # function lists read, unfaulted
    uploads = {
        each: each.upload("/api/moodle/files/upload", [("file", "draft.txt", b"d")], bearer)
        for each in (gateway, impatient)
    }
    responses += uploads.values()
    for number, fault in enumerate(FAULTS):
        target = impatient if fault and fault["kind"] == "delay" else gateway
        draft = uploads[target].json["data"]["itemid"]
        for label, call in route_calls(target.router.registry, f"{log_format}{moodle_debug}{number}", draft):
            if fault:  # on the route's own first Moodle call, and on every retry of it
                queue_fault(debug_sandbox, **{**fault, "times": 5})
            response = call(target, bearer)
            with debug_sandbox.state_lock:
                debug_sandbox.faults.clear()
            if fault:
                assert response.status_int in (502, 503, 504), (fault["kind"], label, response.text)
            responses.append(response)
    for other in (wrong_token, unreachable, tiny):
        responses += [
            call(other, bearer) for _, call in route_calls(other.router.registry, f"{log_format}{moodle_debug}other")
        ]
    responses.append(gateway.get("/api/moodle/siteinfo?bad=1", bearer))
    responses.append(gateway.get("/api/moodle/siteinfo", mint("courses:read", secret=JWT_SECRET)))
    responses.append(gateway.get("/api/moodle/siteinfo", bearer + "x"))
    responses.append(gateway.get(f"/api/moodle/siteinfo?access_token={bearer}"))
    responses.append(gateway.get("/api/moodle/nowhere", bearer))

    statuses = {response.status_int for response in responses}
    assert {200, 201, 400, 401, 403, 404, 413, 502, 503, 504} <= statuses
    assert time.slept, "no backoff was taken: the faults did not reach the retry path"
    logs = gateway.log_stream.getvalue()  # made first, so it holds every gateway's lines
    logged = summary_request_ids(logs, log_format)
    assert sorted(logged) == sorted(response.headers["X-Request-ID"] for response in responses)
    for secret in (MOODLE_TOKEN, JWT_SECRET, bearer):
        assert secret not in logs
        for response in responses:
            assert secret not in response.text
            assert all(secret not in value for value in response.headers.values())


def summary_request_ids(logs, log_format):
    """The request id of every request summary line (one per request answered)."""
    if log_format == "json":
        lines = [json.loads(line) for line in logs.splitlines()]
        return [line["request_id"] for line in lines if line["event"] == "request"]
    return CONSOLE_SUMMARY.findall(logs)


def test_a_secret_that_reaches_the_logger_is_scrubbed(debug_sandbox):
    gateway = Gateway(settings_for(debug_sandbox.url, MOODLE_TOKEN, JWT_SECRET=JWT_SECRET))
    structlog.get_logger("test").warning("oops", leaked=MOODLE_TOKEN, other=JWT_SECRET)

    logs = gateway.log_stream.getvalue()
    assert "oops" in logs
    assert MOODLE_TOKEN not in logs and JWT_SECRET not in logs
    assert "[redacted]" in logs
