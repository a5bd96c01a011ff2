"""An audit event for every write attempt, refused ones included."""

import uuid

import pytest
from pyramid.request import Request, apply_request_extensions
from pyramid.response import Response

from lms_api.audit import audit_tween_factory
from lms_api.calllog import CallLog
from lms_api.errors import ApiError, ErrorCode
from tests.support.credentials import mint

WRITER = "courses:write enrol:write files:write"


def audit_events(gateway):
    return [line for line in gateway.log_lines if line["event"] == "audit"]


def test_a_successful_create_is_audited_with_who_what_and_the_new_id(gateway):
    shortname = f"AUD{uuid.uuid4().hex[:6]}"
    response = gateway.post(
        "/api/moodle/courses", {"fullname": "Audited", "shortname": shortname, "categoryid": 2}, mint(WRITER, sub="ada")
    )

    (event,) = audit_events(gateway)
    assert (event["sub"], event["route"], event["method"], event["status"], event["outcome"]) == (
        "ada", "api.moodle.courses", "POST", 201, "ok")  # fmt: skip
    assert event["moodle_functions"][-1] == "core_course_create_courses"
    assert event["targets"] == {"categoryid": 2, "shortname": shortname, "course_id": response.json["data"]["id"]}
    assert event["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("token", "body", "status", "outcome"),
    [
        (None, {"enrolments": []}, 401, "unauthenticated"),
        (mint("courses:write"), {"enrolments": []}, 403, "forbidden"),
        (mint(WRITER), {"enrolments": []}, 400, "validationerror"),
        (mint(WRITER), {"enrolments": [{"roleid": 5, "userid": 3, "courseid": 99999}]}, 404, "coursenotfound"),
    ],
)
def test_refused_writes_are_audited_too(gateway, token, body, status, outcome):
    gateway.post("/api/moodle/enrol", body, token)

    (event,) = audit_events(gateway)
    assert (event["route"], event["status"], event["outcome"]) == ("api.moodle.enrol", status, outcome)
    if status == 404:
        assert event["targets"] == {"course_ids": [99999], "user_ids": [3], "enrolments": 1}


def test_a_rate_limited_write_is_audited(make_gateway):
    gateway = make_gateway(RATE_LIMIT_WRITE="1/minute")
    token = mint(WRITER, sub=f"busy-{uuid.uuid4().hex[:6]}")

    gateway.patch("/api/moodle/courses/99999", {"fullname": "x"}, token)
    gateway.patch("/api/moodle/courses/99999", {"fullname": "x"}, token)

    assert [(event["status"], event["outcome"]) for event in audit_events(gateway)] == [
        (404, "coursenotfound"), (429, "ratelimited")]  # fmt: skip


def test_upload_and_attach_name_their_targets(gateway):
    token = mint(WRITER)
    itemid = gateway.upload("/api/moodle/files/upload", [("file", "a.txt", b"a")], token).json["data"]["itemid"]
    cmid = gateway.post("/api/moodle/files/attach", {"courseid": 2, "draftitemid": itemid, "name": "A"}, token)

    upload, attach = audit_events(gateway)
    assert upload["targets"] == {"filenames": ["a.txt"], "itemid": itemid}
    assert attach["targets"] == {"course_id": 2, "draftitemid": itemid, "cmid": cmid.json["data"]["cmid"]}


def test_reads_are_not_audited(gateway):
    gateway.get("/api/moodle/courses/2", mint("courses:read"))

    assert audit_events(gateway) == []


def test_a_refused_write_names_the_ids_in_its_path(gateway):
    gateway.patch("/api/moodle/courses/7", {"fullname": "x"}, mint("courses:read"))

    (event,) = audit_events(gateway)
    assert (event["status"], event["targets"]) == (403, {"course_id": "7"})


def test_the_outcome_is_the_code_of_the_error_the_request_was_answered_with_not_read_from_the_body(gateway):
    def answered(request):
        request.api_error = ApiError(ErrorCode.SHORTNAME_TAKEN, "The short name is taken")
        return Response(status=409)  # no envelope to read an outcome from

    request = Request.blank("/api/moodle/courses", method="POST")
    request.registry = gateway.router.registry
    apply_request_extensions(request)
    request.moodle_calls = CallLog()
    audit_tween_factory(answered, request.registry)(request)

    (event,) = audit_events(gateway)
    assert (event["status"], event["outcome"]) == (409, "shortnametaken")
