"""Idempotency-Key through the whole app: the real write routes against the sandbox, and views of this module's own
(scanned into a gateway) that fake what Moodle cannot be made to do on cue: a write whose outcome is unknown or
partial, a write held while a retry comes in, a gateway failure after a write reached Moodle."""

import threading
import time
import uuid

import pytest
import redis
from marshmallow import fields
from pyramid.config import Configurator

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.errors import OUTCOME_PARTIAL, OUTCOME_UNKNOWN
from lms_api.moodle.functions import MoodleFunction
from lms_api.schemas.base import RequestSchema, ResponseSchema
from lms_api.security import Scope
from lms_api.views import ApiViews, api_routes, api_view
from tests.support.credentials import mint
from tests.support.sandbox import queue_fault, sandbox_calls
from tests.support.timing import eventually, join

COURSES = "/api/moodle/courses"
UPLOAD = "/api/moodle/files/upload"
CREATE = "core_course_create_courses"
UPDATE = "core_course_update_courses"
TOKEN = mint("courses:read courses:write files:write")
APP = "https://app.example.edu"
FLAKY = "/api/moodle/test/flaky"


def key():
    return uuid.uuid4().hex


def keyed(value, **headers):
    return {"headers": {"Idempotency-Key": value, **headers}}


def new_course():
    shortname = f"IDEM{uuid.uuid4().hex[:10]}"
    return {"fullname": f"Course {shortname}", "shortname": shortname, "categoryid": 1}


def created(sandbox, shortname):
    with sandbox.site.lock:
        return next(
            (course.id for course in sandbox.site.state.courses.values() if course.shortname == shortname), None
        )


def calls(sandbox, function):
    return sandbox_calls(sandbox).get(function, 0)


# -- views of this module's own -------------------------------------------------------------------------------------


class Plan:
    """What each attempt of the test views' write does, in order ("ok" once the plan is done), and what they did. A
    step "moodle+<step>" first updates a course in the sandbox (a write call to Moodle), then does <step>."""

    def __init__(self):
        self.steps = []
        self.writes = []
        self.looks = 0
        self.settled_answers = []  # what settled_by answers, in order (None: the write is not there)
        self.entered = threading.Event()
        self.let_go = threading.Event()


class WriteBody(RequestSchema):
    n = fields.Integer(required=True)


class Written(ResponseSchema):
    n = fields.Integer()
    how = fields.String()


@api_routes(
    {
        "api.moodle.test.flaky": FLAKY,
        "api.moodle.test.settled": "/api/moodle/test/settled",
        "api.moodle.test.resent": "/api/moodle/test/resent",
    }
)
class FlakyViews(ApiViews):
    def write(self):
        plan = self.request.registry.plan
        step = plan.steps.pop(0) if plan.steps else "ok"
        plan.writes.append(self.request.validated.body["n"])
        if step.startswith("moodle+"):
            step = step.removeprefix("moodle+")
            self.moodle.call(
                MoodleFunction.UPDATE_COURSES, {"courses": [{"id": 2, "summary": f"n={len(plan.writes)}"}]}
            )
        self.request.response.location = f"https://gateway.example/written/{len(plan.writes)}"
        if step == "block":
            plan.entered.set()
            assert plan.let_go.wait(10)
        if step == "unknown":
            raise ApiError(ErrorCode.MOODLE_TIMEOUT, "No answer", {"outcome": OUTCOME_UNKNOWN})
        if step == "partial":
            raise ApiError(ErrorCode.MOODLE_ERROR, "Half done", {"outcome": OUTCOME_PARTIAL, "applied": [1]})
        if step == "busy":
            raise ApiError(ErrorCode.MOODLE_BUSY, "Too many calls", headers={"Retry-After": "2"})
        if step == "refused":
            raise ApiError(ErrorCode.COURSE_NOT_FOUND, "No such course", {"course_id": 9})
        if step == "crash":
            raise RuntimeError("a gateway bug")
        return {"n": len(plan.writes), "how": "written"}

    @api_view(
        route_name="api.moodle.test.flaky",
        request_method="POST",
        permission=Scope.COURSES_WRITE,
        body=WriteBody(),
        answers=Written(),
        status=201,
    )
    def flaky(self):
        """A write that fails as planned."""
        return self.write()

    @api_view(
        route_name="api.moodle.test.settled",
        request_method="POST",
        permission=Scope.COURSES_WRITE,
        body=WriteBody(),
        answers=Written(),
        status=201,
        settled_by="look",
    )
    def settled(self):
        """A write that can tell whether it was done."""
        return self.write()

    def look(self):
        plan = self.request.registry.plan
        plan.looks += 1
        answer = plan.settled_answers.pop(0) if plan.settled_answers else None
        if isinstance(answer, ApiError):
            raise answer
        return None if answer is None else {**answer, "n": self.request.validated.body["n"]}

    @api_view(
        route_name="api.moodle.test.resent",
        request_method="POST",
        permission=Scope.COURSES_WRITE,
        body=WriteBody(),
        answers=Written(),
        status=201,
        resend_when_unknown=True,
    )
    def resent(self):
        """A write that is harmless to send twice."""
        return self.write()


def with_test_views(gateway):
    config = Configurator(registry=gateway.router.registry)
    config.scan(__name__)
    config.commit()
    gateway.router.registry.plan = Plan()
    return gateway


@pytest.fixture
def flaky(make_gateway):
    return with_test_views(make_gateway())


def post(gateway, path, n, idempotency_key, token=TOKEN):
    return gateway.post(path, {"n": n}, token, **keyed(idempotency_key))


# -- the real routes ------------------------------------------------------------------------------------------------


def test_a_course_created_with_a_key_is_replayed_with_no_second_call_to_moodle(gateway, sandbox):
    body, idempotency_key = new_course(), key()
    sent = calls(sandbox, CREATE)
    first = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key, **{"X-Request-ID": "first-try"}))
    again = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key, **{"X-Request-ID": "second-try"}))

    assert first.status_int == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    assert (again.status_int, again.headers["Idempotent-Replayed"]) == (201, "true")
    assert again.body == first.body
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert again.headers["X-Request-ID"] == "second-try"
    assert calls(sandbox, CREATE) == sent + 1
    assert gateway.post(COURSES, body, TOKEN).status_int == 409, "without the key, the write is sent (shortnametaken)"


def test_the_same_key_on_another_request_is_a_422_and_nothing_is_sent(gateway, sandbox):
    body, idempotency_key = new_course(), key()
    assert gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key)).status_int == 201
    sent = calls(sandbox, CREATE)

    other_body = gateway.post(COURSES, {**body, "fullname": "Another name"}, TOKEN, **keyed(idempotency_key))
    other_query = gateway.post(f"{COURSES}?x=1", body, TOKEN, **keyed(idempotency_key))
    patched = gateway.patch(f"{COURSES}/2", {"summary": "a"}, TOKEN, **keyed(idempotency_key))
    patched_again = gateway.patch(f"{COURSES}/3", {"summary": "a"}, TOKEN, **keyed(idempotency_key))

    assert (other_body.status_int, other_body.json["error"]["code"]) == (422, "idempotencykeyreused")
    assert (other_query.status_int, other_query.json["error"]["code"]) == (422, "idempotencykeyreused")
    assert calls(sandbox, CREATE) == sent
    assert patched.status_int == 200, "another route: the key is a new one there"
    assert (patched_again.status_int, patched_again.json["error"]["code"]) == (422, "idempotencykeyreused")


def test_callers_and_routes_have_keys_of_their_own(gateway, sandbox):
    idempotency_key, change = key(), {"summary": f"Changed {uuid.uuid4().hex}"}
    updates = calls(sandbox, UPDATE)
    for sub in ("alice", "bob"):
        token = mint("courses:read courses:write", sub=sub)
        response = gateway.patch(f"{COURSES}/2", change, token, **keyed(idempotency_key))
        assert response.status_int == 200, response.text
        assert "Idempotent-Replayed" not in response.headers, sub
    alice = mint("courses:read courses:write", sub="alice")
    created = gateway.post(COURSES, new_course(), alice, **keyed(idempotency_key))
    replayed = gateway.patch(f"{COURSES}/2", change, alice, **keyed(idempotency_key))

    assert created.status_int == 201 and "Idempotent-Replayed" not in created.headers
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert calls(sandbox, UPDATE) == updates + 2


def test_an_upload_retried_with_another_boundary_is_replayed_and_other_content_is_a_422(gateway, sandbox):
    def multipart(boundary, content):
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="notes.txt"\r\n'
            f"Content-Type: text/plain\r\n\r\n{content}\r\n--{boundary}--\r\n"
        ).encode()
        return gateway.app.post(
            UPLOAD,
            body,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Idempotency-Key": idempotency_key,
            },
            expect_errors=True,
        )

    idempotency_key, uploaded = key(), calls(sandbox, "upload.php")
    first = multipart("----firstTry1234", "hello")
    again = multipart("----browserRetry9876", "hello")
    changed = multipart("----browserRetry9876", "hello, changed")

    assert first.status_int == 201, first.text
    assert again.status_int == 201, again.text
    assert (again.headers["Idempotent-Replayed"], again.body) == ("true", first.body)
    assert (changed.status_int, changed.json["error"]["code"]) == (422, "idempotencykeyreused")
    assert calls(sandbox, "upload.php") == uploaded + 1


def test_a_5xx_after_which_nothing_was_done_is_not_kept_and_the_retry_runs(gateway, sandbox):
    body, idempotency_key = new_course(), key()
    queue_fault(sandbox, kind="maintenance", function=CREATE)
    refused = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))
    retried = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))
    replayed = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))

    assert refused.status_int == 503, refused.text
    assert (retried.status_int, "Idempotent-Replayed" in retried.headers) == (201, False)
    assert (replayed.headers["Idempotent-Replayed"], replayed.body) == ("true", retried.body)


def test_a_course_create_applied_whose_answer_was_lost_is_found_not_created_again(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_TIMEOUT_MS="300")
    body, idempotency_key = new_course(), key()
    queue_fault(sandbox, kind="delay", seconds=0.6, function=CREATE)  # applied once the gateway has given up
    lost = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))
    eventually(lambda: calls(sandbox, CREATE) and created(sandbox, body["shortname"]), "the late create applied")
    sent = calls(sandbox, CREATE)
    found = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))
    replayed = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))

    assert lost.status_int == 504 and lost.json["error"]["details"]["outcome"] == "unknown", lost.text
    assert found.status_int == 201, found.text
    assert "Idempotent-Replayed" not in found.headers
    assert found.json["data"]["id"] == created(sandbox, body["shortname"])
    assert found.headers["Location"].endswith(f"/courses/{found.json['data']['id']}")
    assert (replayed.headers["Idempotent-Replayed"], replayed.body) == ("true", found.body)
    assert calls(sandbox, CREATE) == sent, "found in Moodle, not created twice"


def test_a_course_create_dropped_before_moodle_applied_it_is_sent_again_once(gateway, sandbox):
    body, idempotency_key = new_course(), key()
    queue_fault(sandbox, kind="reset", function=CREATE)  # the connection dropped, the course not created
    lost = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))
    sent = calls(sandbox, CREATE)
    retried = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))
    replayed = gateway.post(COURSES, body, TOKEN, **keyed(idempotency_key))

    assert lost.status_int == 504 and lost.json["error"]["details"]["outcome"] == "unknown"
    assert (retried.status_int, "Idempotent-Replayed" in retried.headers) == (201, False)
    assert retried.json["data"]["id"] == created(sandbox, body["shortname"])
    assert (replayed.headers["Idempotent-Replayed"], replayed.body) == ("true", retried.body)
    assert calls(sandbox, CREATE) == sent + 1


def test_an_error_answer_below_500_is_kept_and_replayed(gateway, sandbox):
    idempotency_key = key()
    missing = gateway.patch(f"{COURSES}/999999", {"summary": "x"}, TOKEN, **keyed(idempotency_key))
    updates = calls(sandbox, UPDATE)
    again = gateway.patch(f"{COURSES}/999999", {"summary": "x"}, TOKEN, **keyed(idempotency_key))

    assert missing.status_int == 404, missing.text
    assert (again.status_int, again.headers["Idempotent-Replayed"], again.body) == (404, "true", missing.body)
    assert calls(sandbox, UPDATE) == updates


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("k" * 256, "too long"),
        ("bad\x01key", "a control character"),
        ("caf\xe9", "not ASCII"),
        ("first, second", "given twice, as a server hands it on"),
    ],
)
def test_a_malformed_key_is_a_400_and_nothing_is_sent(gateway, sandbox, value, why):
    sent = calls(sandbox, CREATE)
    response = gateway.post(COURSES, new_course(), TOKEN, **keyed(value))

    assert (response.status_int, response.json["error"]["code"]) == (400, "invalididempotencykey"), why
    assert calls(sandbox, CREATE) == sent


def test_a_key_is_required_on_writes_when_the_settings_say_so(make_gateway, sandbox):
    gateway = make_gateway(IDEMPOTENCY_REQUIRED="true")
    sent = calls(sandbox, CREATE)
    refused = gateway.post(COURSES, new_course(), TOKEN)
    upload = gateway.upload(UPLOAD, [("file", "a.txt", b"a")], TOKEN)

    assert (refused.status_int, refused.json["error"]["code"]) == (428, "idempotencykeyrequired")
    assert (upload.status_int, upload.json["error"]["code"]) == (428, "idempotencykeyrequired")
    assert calls(sandbox, CREATE) == sent
    assert gateway.get(f"{COURSES}/2", TOKEN).status_int == 200, "reads need none"
    assert gateway.post(COURSES, new_course(), TOKEN, **keyed(key())).status_int == 201


# -- unknown and partial outcomes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("step", "status"), [("unknown", 504), ("partial", 502)])
def test_an_unsettled_write_without_a_declaration_is_answered_its_first_answer_again(flaky, step, status):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = [step]
    first = post(flaky, FLAKY, 1, idempotency_key)
    again = post(flaky, FLAKY, 1, idempotency_key)

    assert first.status_int == status and first.json["error"]["details"]["outcome"] == step
    assert (again.status_int, again.headers["Idempotent-Replayed"], again.body) == (status, "true", first.body)
    assert plan.writes == [1]


def test_settled_by_answers_an_unsettled_write_as_done_and_that_answer_is_kept(flaky):
    plan, idempotency_key, path = flaky.router.registry.plan, key(), "/api/moodle/test/settled"
    plan.steps, plan.settled_answers = ["unknown"], [{"how": "found in Moodle"}]
    lost = post(flaky, path, 5, idempotency_key)
    settled = post(flaky, path, 5, idempotency_key)
    replayed = post(flaky, path, 5, idempotency_key)

    assert lost.status_int == 504
    assert (settled.status_int, settled.json["data"]) == (201, {"n": 5, "how": "found in Moodle"})
    assert "Idempotent-Replayed" not in settled.headers
    assert (replayed.headers["Idempotent-Replayed"], replayed.body) == ("true", settled.body)
    assert (plan.writes, plan.looks) == ([5], 1)


def test_settled_by_answering_none_lets_the_write_run_again(flaky):
    plan, idempotency_key, path = flaky.router.registry.plan, key(), "/api/moodle/test/settled"
    plan.steps = ["partial"]
    post(flaky, path, 3, idempotency_key)
    retried = post(flaky, path, 3, idempotency_key)
    replayed = post(flaky, path, 3, idempotency_key)

    assert (retried.status_int, retried.json["data"]) == (201, {"n": 2, "how": "written"})
    assert retried.headers["Location"] == "https://gateway.example/written/2"
    assert (replayed.headers["Idempotent-Replayed"], replayed.headers["Location"]) == (
        "true",
        retried.headers["Location"],
    )
    assert (plan.writes, plan.looks) == ([3, 3], 1)


def test_settled_by_failing_before_anything_is_done_keeps_the_write_unsettled(flaky):
    plan, idempotency_key, path = flaky.router.registry.plan, key(), "/api/moodle/test/settled"
    plan.steps = ["unknown"]
    plan.settled_answers = [ApiError(ErrorCode.MOODLE_BUSY, "Busy"), {"how": "found later"}]
    post(flaky, path, 4, idempotency_key)
    busy = post(flaky, path, 4, idempotency_key)
    settled = post(flaky, path, 4, idempotency_key)

    assert (busy.status_int, "Idempotent-Replayed" in busy.headers) == (503, False)
    assert settled.json["data"] == {"n": 4, "how": "found later"}
    assert (plan.writes, plan.looks) == ([4], 2)


def test_resend_when_unknown_sends_the_write_again(flaky):
    plan, idempotency_key, path = flaky.router.registry.plan, key(), "/api/moodle/test/resent"
    plan.steps = ["unknown", "unknown"]
    post(flaky, path, 8, idempotency_key)
    still_unknown = post(flaky, path, 8, idempotency_key)
    resent = post(flaky, path, 8, idempotency_key)
    replayed = post(flaky, path, 8, idempotency_key)

    assert (still_unknown.status_int, "Idempotent-Replayed" in still_unknown.headers) == (504, False)
    assert (resent.status_int, resent.json["data"]["how"]) == (201, "written")
    assert (replayed.headers["Idempotent-Replayed"], replayed.body) == ("true", resent.body)
    assert plan.writes == [8, 8, 8]


@pytest.mark.parametrize("step", ["busy", "crash"])
def test_a_5xx_with_nothing_done_lets_the_key_go(flaky, step):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = [step]
    failed = post(flaky, FLAKY, 1, idempotency_key)
    retried = post(flaky, FLAKY, 1, idempotency_key)

    assert failed.status_int in (500, 503)
    assert (retried.status_int, "Idempotent-Replayed" in retried.headers) == (201, False)
    assert post(flaky, FLAKY, 1, idempotency_key).headers["Idempotent-Replayed"] == "true"
    assert plan.writes == [1, 1]


def test_a_key_being_answered_is_a_409_with_retry_after_then_its_answer(flaky):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = ["block"]
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", post(flaky, FLAKY, 1, idempotency_key)))
    first.start()
    assert plan.entered.wait(10)
    busy = post(flaky, FLAKY, 1, idempotency_key)
    other = post(flaky, FLAKY, 2, idempotency_key)
    plan.let_go.set()
    join([first])
    after = post(flaky, FLAKY, 1, idempotency_key)

    assert (busy.status_int, busy.json["error"]["code"], busy.headers["Retry-After"]) == (
        409,
        "idempotencyinprogress",
        "1",
    )
    assert (other.status_int, other.json["error"]["code"]) == (422, "idempotencykeyreused")
    assert (after.status_int, after.headers["Idempotent-Replayed"], after.body) == (201, "true", answers["first"].body)
    assert plan.writes == [1]


def test_the_log_lines_say_how_a_keyed_write_was_answered(flaky):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = ["unknown"]
    post(flaky, "/api/moodle/test/resent", 1, idempotency_key)
    post(flaky, "/api/moodle/test/resent", 1, idempotency_key)
    post(flaky, "/api/moodle/test/resent", 1, idempotency_key)
    plan.steps, plan.settled_answers = ["unknown"], [{"how": "found"}]
    post(flaky, "/api/moodle/test/settled", 1, idempotency_key)
    post(flaky, "/api/moodle/test/settled", 1, idempotency_key)
    flaky.post(FLAKY, {"n": 1}, TOKEN)

    for event in ("audit", "request"):
        said = [line.get("idempotency") for line in flaky.log_lines if line["event"] == event]
        assert said == ["new", "resent", "replayed", "new", "settled", None], event


def test_a_replayed_error_is_audited_with_its_code(flaky):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = ["refused"]
    post(flaky, FLAKY, 1, idempotency_key)
    post(flaky, FLAKY, 1, idempotency_key)

    audits = [(line["status"], line["outcome"]) for line in flaky.log_lines if line["event"] == "audit"]
    assert audits == [(404, "coursenotfound")] * 2


# -- a 5xx after a write reached Moodle, and a key whose lock ran out --------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [{"kind": "notjson"}, {"kind": "http", "status": 500}],
    ids=["200-not-json", "php-fatal-500"],
)
def test_an_answer_not_moodle_s_after_a_write_is_an_unknown_outcome_kept_unsettled(flaky, sandbox, fault):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = ["moodle+ok"]
    queue_fault(sandbox, function=UPDATE, **fault)
    first = post(flaky, FLAKY, 1, idempotency_key)
    updates = calls(sandbox, UPDATE)
    again = post(flaky, FLAKY, 1, idempotency_key)

    assert (first.status_int, first.json["error"]["code"]) == (502, "badresponse"), first.text
    assert first.json["error"]["details"]["outcome"] == "unknown"
    assert (again.status_int, again.headers["Idempotent-Replayed"], again.body) == (502, "true", first.body)
    assert (plan.writes, calls(sandbox, UPDATE)) == ([1], updates)


def test_a_gateway_failure_after_a_write_reached_moodle_keeps_the_key_unsettled(flaky, sandbox):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = ["moodle+crash", "moodle+crash"]
    failed = post(flaky, FLAKY, 1, idempotency_key)
    again = post(flaky, FLAKY, 1, idempotency_key)
    post(flaky, "/api/moodle/test/resent", 1, idempotency_key)
    resent = post(flaky, "/api/moodle/test/resent", 1, idempotency_key)

    assert (failed.status_int, failed.json["error"]["code"]) == (500, "internalerror")
    assert (again.status_int, again.headers["Idempotent-Replayed"], again.body) == (500, "true", failed.body)
    assert (resent.status_int, "Idempotent-Replayed" in resent.headers) == (201, False), "resend_when_unknown"
    assert plan.writes == [1, 1, 1]


@pytest.mark.parametrize(
    "fault",
    [{"kind": "maintenance"}, {"kind": "http", "status": 503}],
    ids=["sitemaintenance", "http-503-page"],
)
def test_a_write_moodle_refused_before_its_function_ran_lets_the_key_go(flaky, sandbox, fault):
    plan, idempotency_key = flaky.router.registry.plan, key()
    plan.steps = ["moodle+ok"]
    queue_fault(sandbox, function=UPDATE, **fault)
    refused = post(flaky, FLAKY, 1, idempotency_key)
    retried = post(flaky, FLAKY, 1, idempotency_key)

    assert refused.status_int == 503, refused.text
    assert (retried.status_int, "Idempotent-Replayed" in retried.headers) == (201, False)
    assert plan.writes == [1, 1]


@pytest.mark.parametrize(
    ("path", "answered"),
    [
        (FLAKY, (409, "idempotencyabandoned")),
        ("/api/moodle/test/settled", (201, "found")),
        ("/api/moodle/test/resent", (201, "written")),
    ],
)
def test_a_write_that_outlasted_its_lock_leaves_the_key_abandoned_not_free(make_gateway, path, answered):
    gateway = with_test_views(make_gateway(IDEMPOTENCY_LOCK_S="1"))
    plan, idempotency_key = gateway.router.registry.plan, key()
    plan.steps, plan.settled_answers = ["block"], [{"how": "found"}]
    first = threading.Thread(target=lambda: post(gateway, path, 1, idempotency_key))
    first.start()
    assert plan.entered.wait(10)
    time.sleep(1.3)
    retried = post(gateway, path, 1, idempotency_key)
    plan.let_go.set()
    join([first])

    said = retried.json["error"]["code"] if retried.status_int >= 400 else retried.json["data"]["how"]
    assert (retried.status_int, said) == answered, retried.text
    assert plan.writes == ([1, 1] if answered[1] == "written" else [1])


# -- in Redis -------------------------------------------------------------------------------------------------------


def test_gateways_on_one_redis_share_keys(make_gateway, empty_redis):
    first, second = (with_test_views(make_gateway(REDIS_URL=empty_redis)) for _ in range(2))
    idempotency_key = key()
    written = post(first, FLAKY, 1, idempotency_key)
    replayed = post(second, FLAKY, 1, idempotency_key)

    assert (replayed.headers["Idempotent-Replayed"], replayed.body) == ("true", written.body)
    assert second.router.registry.plan.writes == []
    assert redis.Redis.from_url(empty_redis).keys("lms_api:idempotency:*")


def test_a_redis_that_does_not_answer_refuses_keyed_writes_with_a_503_and_lets_others_through(make_gateway, own_redis):
    process, url = own_redis
    gateway = with_test_views(make_gateway(REDIS_URL=url))
    process.terminate()
    process.wait(10)
    refused = post(gateway, FLAKY, 1, key())
    unkeyed = gateway.post(FLAKY, {"n": 1}, TOKEN)

    assert (refused.status_int, refused.json["error"]["code"], refused.headers["Retry-After"]) == (
        503,
        "idempotencyunavailable",
        "5",
    )
    assert unkeyed.status_int == 201
    assert gateway.router.registry.plan.writes == [1]


@pytest.mark.parametrize(
    ("step", "retried"), [("moodle+block", (409, "idempotencyinprogress")), ("block", (201, None))]
)
def test_an_answer_redis_cannot_keep_leaves_the_key_held_only_after_a_write(make_gateway, own_redis, step, retried):
    _, url = own_redis
    gateway, other = (with_test_views(make_gateway(REDIS_URL=url)) for _ in range(2))
    plan, idempotency_key = gateway.router.registry.plan, key()
    plan.steps = [step]
    answers = {}
    first = threading.Thread(target=lambda: answers.setdefault("first", post(gateway, FLAKY, 1, idempotency_key)))
    first.start()
    assert plan.entered.wait(10)
    store = redis.Redis.from_url(url)
    store.config_set("maxmemory", "1")  # no new field is stored: the answer is not kept, a delete still works
    plan.let_go.set()
    join([first])
    store.config_set("maxmemory", "0")
    again = post(other, FLAKY, 1, idempotency_key)

    assert answers["first"].status_int == 201, "the caller still gets its answer"
    failed = [line for line in gateway.log_lines if line["event"] == "idempotency.keep_failed"]
    assert [(line["level"], line["status"], line["write_sent"]) for line in failed] == [("error", 201, step != "block")]
    assert (again.status_int, again.json["error"]["code"] if again.status_int >= 400 else None) == retried


# -- CORS and OpenAPI -----------------------------------------------------------------------------------------------


def test_browsers_may_send_the_key_and_read_the_replayed_header(make_gateway):
    gateway = make_gateway(CORS_ALLOWED_ORIGINS=APP)
    preflight = gateway.app.options(
        COURSES,
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    answer = gateway.patch(f"{COURSES}/2", {"summary": "cors"}, TOKEN, **keyed(key(), Origin=APP))

    allowed = {name.strip().lower() for name in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert "idempotency-key" in allowed
    exposed = {name.strip() for name in answer.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Idempotent-Replayed", "Retry-After"} <= exposed


def test_every_write_documents_the_key_its_replayed_header_and_its_refusals(gateway):
    document = gateway.get("/api/moodle/openapi.json").json
    writes, abandoned = 0, []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            named = {parameter.get("name") for parameter in operation["parameters"]}
            # A stream's ticket and Moodle's deliveries write nothing a key would guard: neither takes one.
            if method in ("get", "head") or path in ("/api/moodle/events/tickets", "/api/moodle/webhooks/moodle"):
                assert "Idempotency-Key" not in named, path
                continue
            writes += 1
            assert "Idempotency-Key" in named, (method, path)
            success = next(status for status in operation["responses"] if status.startswith("2"))
            assert "Idempotent-Replayed" in operation["responses"][success]["headers"], (method, path)
            for status, code in [
                ("400", "invalididempotencykey"),
                ("409", "idempotencyinprogress"),
                ("422", "idempotencykeyreused"),
                ("428", "idempotencykeyrequired"),
                ("503", "idempotencyunavailable"),
            ]:
                assert f"`{code}`" in operation["responses"][status]["description"], (method, path, code)
            assert "Retry-After" in operation["responses"]["409"]["headers"]
            abandoned.append(("`idempotencyabandoned`" in operation["responses"]["409"]["description"], method, path))
    assert writes >= 4
    # Only a write that can neither look in Moodle nor be sent again is refused for a key abandoned.
    assert (True, "post", "/api/moodle/files/attach") in abandoned
    assert (False, "post", "/api/moodle/courses") in abandoned
    assert (False, "patch", "/api/moodle/courses/{course_id}") in abandoned
    assert "Idempotent-Replayed" in document["components"]["headers"]


@pytest.mark.parametrize("required", ["false", "true"])
def test_a_ticket_post_takes_no_key_and_is_never_replayed(make_gateway, required):
    gateway = make_gateway(IDEMPOTENCY_REQUIRED=required)
    token = mint("events:read", moodle_userid=3)
    headers = {"Idempotency-Key": "ticket-1"}

    first = gateway.post("/api/moodle/events/tickets", None, token, headers=dict(headers))
    second = gateway.post("/api/moodle/events/tickets", None, token, headers=dict(headers))
    without = gateway.post("/api/moodle/events/tickets", None, token)

    assert [first.status_int, second.status_int, without.status_int] == [201, 201, 201]
    assert first.json["data"]["ticket"] != second.json["data"]["ticket"]
    assert "Idempotent-Replayed" not in second.headers
