"""Moodle's webhook: authenticated by WEBHOOK_SECRET (bearer, or a signature of the body within 300 s), 64 KiB bodies
refused before the secret is checked, both of the Event Trigger's encodings, each delivery done once, and each row of
the events table doing what it says: cache entries dropped, events published (to a recording engine)."""

import hashlib
import hmac
import itertools
import json
import time
from urllib.parse import urlencode

import pytest
import webtest

from lms_api.webhooks import EVENTS, MAX_BODY_BYTES, WEBHOOK_PATH
from tests.support.credentials import ALL_SCOPES, mint
from tests.support.sandbox import moodle_call, queue_fault, sandbox_calls
from tests.support.servers import free_port

SECRET = "webhook-test-secret-0123456789-abcdefghijklmnop"
READER = mint(ALL_SCOPES, sub="webhook-reader", moodle_userid=3)
ADMIN_READER = mint(f"{ALL_SCOPES} admin", sub="webhook-admin")
COURSE, STUDENT, ADMIN_USER, OTHER_STUDENT = 2, 3, 2, 4
MISS = "lms_api; fwd=uri-miss; stored"
GET_UNREAD_COUNT = "message_popup_get_unread_popup_notification_count"
EVENT_TIMES = itertools.count(1_700_000_000)  # a time of its own for each event: never a duplicate by chance


class RecordingEvents:
    """An events engine that keeps what is published (and, as nchan or a Redis away would, cannot take the first
    ``failures`` events)."""

    name = "recording"

    def __init__(self, failures=0):
        self.published = []
        self._failures = failures

    def publish(self, channel, event_type, data):
        if self._failures:
            self._failures -= 1
            return False
        self.published.append((channel, str(event_type), dict(data)))
        return True

    def open_streams(self):
        return 0


@pytest.fixture
def webhook(make_gateway):
    gateway = make_gateway(WEBHOOK_SECRET=SECRET, CACHE_TTLS="notifications=60")
    gateway.events = gateway.router.registry.events = RecordingEvents()
    return gateway


def event(name, **fields):
    """A delivery as a workflow's template sends it: every field as text, an unset one empty."""
    values = {
        "objectid": "",
        "courseid": "0",
        "userid": "2",
        "relateduserid": "",
        "timecreated": str(next(EVENT_TIMES)),
    }
    return {"eventname": f"\\core\\event\\{name}", **values, **{key: str(value) for key, value in fields.items()}}


def post_form(gateway, fields, headers=None, secret=SECRET):
    return post(gateway, urlencode(fields).encode(), "application/x-www-form-urlencoded", headers, secret)


def post(gateway, body, content_type, headers=None, secret=SECRET):
    sent = {"Content-Type": content_type} if content_type else {}
    if secret is not None:
        sent["Authorization"] = f"Bearer {secret}"
    sent.update(headers or {})
    return gateway.app.post(WEBHOOK_PATH, body, headers=sent, expect_errors=True)


def signed(body, stamp=None, secret=SECRET):
    stamp = str(int(time.time())) if stamp is None else str(stamp)
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Signature": f"sha256={digest}", "X-Webhook-Timestamp": stamp}


def deliveries(gateway, event_name, outcome):
    value = gateway.router.registry.metrics.registry.get_sample_value(
        "lms_api_webhook_deliveries_total", {"event": event_name, "outcome": outcome}
    )
    return value or 0


def refused(response, code="invalid_token"):
    assert response.status_int == 401, response.text
    assert response.json["error"]["code"] == code
    assert SECRET not in response.text
    return response.json["error"]["message"]


# -- authentication -------------------------------------------------------------------------------------------------


def test_the_bearer_secret_is_taken(webhook):
    response = post_form(webhook, event("course_updated", objectid=COURSE))

    assert response.status_int == 200, response.text
    assert response.json == {
        "ok": True,
        "data": {
            "event": "\\core\\event\\course_updated",
            "handled": True,
            "dropped": ["courses"],
            "published": [{"channel": f"course-{COURSE}", "type": "course.updated"}],
        },
    }


@pytest.mark.parametrize(
    ("authorization", "why"),
    [
        (f"Bearer {SECRET}x", "not the gateway's WEBHOOK_SECRET"),
        (f"Bearer {SECRET[:-1]}", "not the gateway's WEBHOOK_SECRET"),
        ("Bearer ", "must be 'Bearer <WEBHOOK_SECRET>'"),
        (f"Basic {SECRET}", "must be 'Bearer <WEBHOOK_SECRET>'"),
        (f"Bearer {mint('moodle:events admin')}", "not the gateway's WEBHOOK_SECRET"),  # no JWT on this path
    ],
)
def test_a_wrong_secret_is_refused_saying_why(webhook, authorization, why):
    response = post_form(webhook, event("course_updated", objectid=COURSE), {"Authorization": authorization}, None)

    assert why in refused(response)
    assert webhook.events.published == []


def test_no_credentials_is_unauthenticated(webhook):
    message = refused(post_form(webhook, event("course_updated", objectid=COURSE), secret=None), "unauthenticated")

    assert (
        message
        == "This route needs 'Authorization: Bearer <WEBHOOK_SECRET>', or 'X-Signature' and 'X-Webhook-Timestamp'"
    )


def test_moodles_deliveries_are_not_held_to_a_budget_but_unauthenticated_posts_are(make_gateway):
    gateway = make_gateway(WEBHOOK_SECRET=SECRET, RATE_LIMIT_WRITE="1/minute", RATE_LIMIT_UNAUTHENTICATED="1/minute")

    delivered = [post_form(gateway, event("course_updated", objectid=COURSE)) for _ in range(3)]
    unauthenticated = [post_form(gateway, event("course_updated", objectid=COURSE), secret=None) for _ in range(2)]

    assert [response.status_int for response in delivered] == [200, 200, 200]
    assert [response.status_int for response in unauthenticated] == [401, 429]


def test_a_signed_body_is_taken_without_the_secret(webhook):
    body = urlencode(event("course_updated", objectid=COURSE)).encode()

    response = post(webhook, body, "application/x-www-form-urlencoded", signed(body), secret=None)

    assert response.status_int == 200, response.text
    assert response.json["data"]["handled"] is True


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (lambda body: signed(body + b"&x=1"), "the signature does not match"),
        (lambda body: signed(body, secret=SECRET + "x"), "the signature does not match"),
        (lambda body: {**signed(body), "X-Signature": signed(body)["X-Signature"][7:]}, "must be 'sha256="),
        (lambda body: {"X-Signature": signed(body)["X-Signature"]}, "names its time in X-Webhook-Timestamp"),
        (lambda body: {**signed(body), "X-Webhook-Timestamp": "soon"}, "whole number of seconds"),
        (lambda body: signed(body, int(time.time()) - 400), "stale: X-Webhook-Timestamp is 400 s old"),
        (lambda body: signed(body, int(time.time()) + 400), "400 s in the future"),
    ],
    ids=["body changed", "other secret", "no sha256=", "no timestamp", "not a time", "stale", "future"],
)
def test_a_bad_signature_is_refused_saying_why(webhook, headers, why):
    body = urlencode(event("course_updated", objectid=COURSE)).encode()

    response = post(webhook, body, "application/x-www-form-urlencoded", headers(body), secret=None)

    assert why in refused(response)
    assert webhook.events.published == []


def test_a_signature_within_the_window_either_way_is_taken(webhook):
    for stamp in (int(time.time()) - 290, int(time.time()) + 290):
        body = urlencode(event("course_updated", objectid=COURSE)).encode()
        response = post(webhook, body, "application/x-www-form-urlencoded", signed(body, stamp), secret=None)
        assert response.status_int == 200, response.text


def test_a_bad_signature_is_refused_even_with_the_right_secret(webhook):
    body = urlencode(event("course_updated", objectid=COURSE)).encode()

    response = post(webhook, body, "application/x-www-form-urlencoded", signed(body, secret="another"))

    assert "the signature does not match" in refused(response)


def test_without_a_secret_the_route_is_not_found(gateway):
    response = post_form(gateway, event("course_updated", objectid=COURSE))

    assert response.status_int == 404
    assert response.json["error"]["code"] == "notfound"


# -- bodies ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [SECRET, None, "wrong"])
def test_a_body_over_64_kib_is_refused_before_the_secret_is_checked(webhook, secret):
    fields = {**event("course_updated", objectid=COURSE), "padding": "x" * MAX_BODY_BYTES}

    response = post_form(webhook, fields, secret=secret)

    assert response.status_int == 413
    assert response.json["error"]["code"] == "bodytoolarge"
    assert response.json["error"]["details"] == {"max_bytes": MAX_BODY_BYTES}


def test_a_body_of_64_kib_is_taken(webhook):
    fields = event("course_updated", objectid=COURSE)
    fields["padding"] = "x" * (MAX_BODY_BYTES - len(urlencode(fields)) - len("&padding="))

    response = post_form(webhook, fields)

    assert len(response.request.body) == MAX_BODY_BYTES
    assert response.status_int == 200, response.text


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 10 * MAX_BODY_BYTES])
def test_a_body_without_a_length_is_held_to_64_kib(webhook, size):
    body = urlencode(event("course_updated", objectid=COURSE)).encode() + b"&padding=" + b"x" * size
    request = webtest.TestRequest.blank(WEBHOOK_PATH, method="POST", body=body)
    request.headers.update({"Content-Type": "application/x-www-form-urlencoded", **signed(body)})
    del request.environ["CONTENT_LENGTH"]

    response = webhook.app.do_request(request, status="*", expect_errors=True)

    assert response.status_int == 413
    assert response.json["error"]["code"] == "bodytoolarge"


def test_a_signed_body_without_a_length_is_read_whole(webhook):
    body = urlencode(event("course_updated", objectid=COURSE)).encode()
    request = webtest.TestRequest.blank(WEBHOOK_PATH, method="POST", body=body)
    request.headers.update({"Content-Type": "application/x-www-form-urlencoded", **signed(body)})
    del request.environ["CONTENT_LENGTH"]

    response = webhook.app.do_request(request, status="*", expect_errors=True)

    assert response.status_int == 200, response.text


def without_content_type(body):
    """A request as the Event Trigger sends it when its header lines give no Content-Type."""
    request = webtest.TestRequest.blank(WEBHOOK_PATH, method="POST", body=body)
    request.headers["Authorization"] = f"Bearer {SECRET}"
    request.environ.pop("CONTENT_TYPE", None)
    return request


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/jsonx", None])
def test_another_media_type_is_a_415(webhook, content_type):
    body = urlencode(event("course_updated", objectid=COURSE)).encode()
    if content_type is None:
        response = webhook.app.do_request(without_content_type(body), status="*", expect_errors=True)
    else:
        response = post(webhook, body, content_type)

    assert response.status_int == 415, response.text
    assert response.json["error"]["code"] == "unsupportedmediatype"
    assert "header lines" in response.json["error"]["message"]
    assert webhook.events.published == []


def test_the_json_encoded_delivery_is_taken_with_its_numbers_as_text(webhook):
    body = json.dumps(event("course_updated", objectid=COURSE)).encode()  # "JSON encode": PHP's parse_str strings

    response = post(webhook, body, "application/json; charset=utf-8")

    assert response.status_int == 200, response.text
    assert webhook.events.published == [(f"course-{COURSE}", "course.updated", {"courseid": COURSE})]


def test_a_json_delivery_with_json_numbers_is_taken(webhook):
    fields = {"eventname": "\\core\\event\\course_created", "objectid": COURSE, "timecreated": 1_700_000_000}

    response = post(webhook, json.dumps(fields).encode(), "application/json")

    assert response.status_int == 200, response.text
    assert webhook.events.published == [(f"course-{COURSE}", "course.created", {"courseid": COURSE})]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"objectid": "2"}, "eventname"),
        ({"eventname": ""}, "eventname"),
        ({"eventname": " "}, "eventname"),
        ({"eventname": "\\core\\event\\course_updated", "objectid": "two"}, "objectid"),
        ({"eventname": "\\core\\event\\course_updated", "objectid": "2", "timecreated": "1.5"}, "timecreated"),
        ({"eventname": "\\core\\event\\course_updated", "objectid": ""}, "objectid"),  # the table's row needs it
        ({"eventname": "\\core\\event\\notification_sent", "objectid": "9"}, "relateduserid"),
        ({"eventname": "\\core\\event\\user_enrolment_created", "relateduserid": "3"}, "courseid"),
    ],
)
def test_a_delivery_without_what_it_needs_is_a_400_naming_the_field(webhook, fields, field):
    for response in (post_form(webhook, fields), post(webhook, json.dumps(fields).encode(), "application/json")):
        assert response.status_int == 400, response.text
        assert response.json["error"]["code"] == "validationerror"
        assert field in response.json["error"]["details"]["fields"]
    assert webhook.events.published == []


def test_a_field_given_twice_is_a_400(webhook):
    body = urlencode(event("course_updated", objectid=COURSE)).encode() + b"&objectid=3"

    response = post(webhook, body, "application/x-www-form-urlencoded")

    assert response.status_int == 400
    assert "objectid" in response.json["error"]["details"]["fields"]


@pytest.mark.parametrize("body", [b"[1, 2]", b"{", b'{"eventname": NaN}'])
def test_a_json_body_that_is_not_an_object_is_a_400(webhook, body):
    response = post(webhook, body, "application/json")

    assert response.status_int == 400
    assert response.json["error"]["code"] == "invalidjson"


def test_a_form_that_is_not_utf8_is_a_400(webhook):
    response = post(webhook, b"eventname=%FF%FE", "application/x-www-form-urlencoded")

    assert response.status_int == 400
    assert response.json["error"]["code"] == "validationerror"


def test_the_event_name_is_taken_without_its_leading_backslash(webhook):
    fields = event("course_updated", objectid=COURSE)
    fields["eventname"] = "core\\event\\course_updated"

    response = post_form(webhook, fields)

    assert response.json["data"]["event"] == "\\core\\event\\course_updated"
    assert response.json["data"]["handled"] is True


# -- once -----------------------------------------------------------------------------------------------------------


def test_a_delivery_again_within_the_hour_does_nothing_again(webhook, sandbox):
    fields = event("notification_sent", objectid=7, relateduserid=STUDENT)
    post_form(webhook, fields)
    before = sandbox_calls(sandbox)

    again = post_form(webhook, fields)

    assert again.status_int == 200
    assert again.json["data"] == {"event": "\\core\\event\\notification_sent", "duplicate": True}
    assert len(webhook.events.published) == 1
    assert sandbox_calls(sandbox) == before
    assert deliveries(webhook, "\\core\\event\\notification_sent", "handled") == 1
    assert deliveries(webhook, "\\core\\event\\notification_sent", "duplicate") == 1


def test_another_time_object_or_user_is_another_delivery(webhook):
    fields = event("notification_sent", objectid=7, relateduserid=STUDENT, timecreated=1_700_000_000)
    for changed in ({}, {"timecreated": "1700000001"}, {"objectid": "8"}, {"relateduserid": str(OTHER_STUDENT)}):
        assert post_form(webhook, {**fields, **changed}).json["data"]["handled"] is True
    assert len(webhook.events.published) == 4


def test_a_delivery_whose_event_was_not_published_is_handled_when_retried(make_gateway):
    gateway = make_gateway(WEBHOOK_SECRET=SECRET)
    gateway.router.registry.events = events = RecordingEvents(failures=1)
    fields = event("course_updated", objectid=COURSE)

    unpublished = post_form(gateway, fields)
    retried = post_form(gateway, fields)

    assert unpublished.status_int == 503
    assert unpublished.headers["Retry-After"] == "30"
    assert unpublished.json["error"]["code"] == "eventsunpublished"
    assert unpublished.json["error"]["details"] == {"dropped": ["courses"]}
    assert retried.json["data"]["handled"] is True
    assert events.published == [(f"course-{COURSE}", "course.updated", {"courseid": COURSE})]


def test_an_event_nchan_does_not_take_is_sent_again_by_moodle(make_gateway):
    nchan = f"http://127.0.0.1:{free_port()}/lms_api/publish"  # nothing listens: nchan is down
    gateway = make_gateway(WEBHOOK_SECRET=SECRET, NCHAN_PUBLISH_URL=nchan)
    fields = event("course_updated", objectid=COURSE)

    answers = [post_form(gateway, fields) for _ in range(2)]

    assert [answer.status_int for answer in answers] == [503, 503]  # never taken for a duplicate while unpublished


def test_an_event_the_table_does_not_know_is_ignored_and_counted(webhook, sandbox):
    before = sandbox_calls(sandbox)

    response = post_form(webhook, event("course_viewed", objectid=COURSE))

    assert response.status_int == 200
    assert response.json["data"] == {"event": "\\core\\event\\course_viewed", "ignored": True}
    assert webhook.events.published == []
    assert sandbox_calls(sandbox) == before
    assert deliveries(webhook, "other", "ignored") == 1
    assert deliveries(webhook, "\\core\\event\\course_viewed", "ignored") == 0  # labels stay bounded


# -- the events table -----------------------------------------------------------------------------------------------


def cached_course_read(gateway):
    return gateway.get(f"/api/moodle/courses/{COURSE}", READER)


@pytest.mark.parametrize("name", ["course_created", "course_updated", "course_deleted"])
def test_a_course_event_drops_the_courses_and_publishes_to_the_course(webhook, name):
    cached_course_read(webhook)
    assert cached_course_read(webhook).headers["Cache-Status"].startswith("lms_api; hit")

    response = post_form(webhook, event(name, objectid=COURSE, courseid=COURSE))

    assert response.json["data"]["dropped"] == ["courses"]
    assert cached_course_read(webhook).headers["Cache-Status"] == MISS
    kind = name.removeprefix("course_")
    assert webhook.events.published == [(f"course-{COURSE}", f"course.{kind}", {"courseid": COURSE})]
    assert deliveries(webhook, f"\\core\\event\\{name}", "handled") == 1


def test_a_course_changed_in_moodle_is_read_again_after_its_event(webhook, sandbox):
    assert cached_course_read(webhook).json["data"]["fullname"] != "Renamed in Moodle"
    moodle_call(sandbox, "core_course_update_courses", courses=[{"id": COURSE, "fullname": "Renamed in Moodle"}])
    assert cached_course_read(webhook).json["data"]["fullname"] != "Renamed in Moodle"  # the cache has the old one

    post_form(webhook, event("course_updated", objectid=COURSE, courseid=COURSE))

    assert cached_course_read(webhook).json["data"]["fullname"] == "Renamed in Moodle"


def test_a_category_update_drops_the_courses_and_publishes_nothing(webhook):
    cached_course_read(webhook)

    response = post_form(webhook, event("course_category_updated", objectid=1))

    assert response.json["data"] == {
        "event": "\\core\\event\\course_category_updated",
        "handled": True,
        "dropped": ["courses"],
        "published": [],
    }
    assert cached_course_read(webhook).headers["Cache-Status"] == MISS
    assert webhook.events.published == []


@pytest.mark.parametrize("name", ["user_created", "user_updated", "user_deleted"])
def test_a_user_event_drops_the_users_and_leaves_the_courses(webhook, name):
    users = "/api/moodle/users/by-field?field=username&values=student1"
    webhook.get(users, READER)
    cached_course_read(webhook)

    response = post_form(webhook, event(name, objectid=STUDENT, relateduserid=STUDENT))

    assert response.json["data"]["dropped"] == ["users"]
    assert webhook.get(users, READER).headers["Cache-Status"] == MISS
    assert cached_course_read(webhook).headers["Cache-Status"].startswith("lms_api; hit")
    assert webhook.events.published == []


@pytest.mark.parametrize(
    ("name", "fields", "published"),
    [
        (
            "user_enrolment_created",
            {"objectid": 41, "courseid": COURSE, "relateduserid": STUDENT},
            ("enrolment.created", {"courseid": COURSE, "userid": STUDENT}),
        ),
        (
            "user_enrolment_deleted",
            {"objectid": 41, "courseid": COURSE, "relateduserid": STUDENT},
            ("enrolment.deleted", {"courseid": COURSE, "userid": STUDENT}),
        ),
        (
            "role_assigned",
            {"objectid": 5, "courseid": COURSE, "relateduserid": STUDENT, "contextinstanceid": COURSE},
            ("enrolment.role_assigned", {"courseid": COURSE, "userid": STUDENT, "roleid": 5}),
        ),
        (
            "role_unassigned",
            {"objectid": 5, "courseid": 0, "relateduserid": STUDENT},
            ("enrolment.role_unassigned", {"courseid": 0, "userid": STUDENT, "roleid": 5}),
        ),
    ],
)
def test_an_enrolment_event_drops_nothing_and_publishes_to_the_user(webhook, name, fields, published):
    cached_course_read(webhook)

    response = post_form(webhook, event(name, **fields))

    assert response.json["data"]["dropped"] == []
    assert response.json["data"]["published"] == [{"channel": f"user-{STUDENT}", "type": published[0]}]
    assert webhook.events.published == [(f"user-{STUDENT}", *published)]
    assert cached_course_read(webhook).headers["Cache-Status"].startswith("lms_api; hit")


@pytest.mark.parametrize("name", ["notification_sent", "message_sent"])
def test_a_notification_drops_the_recipients_entries_and_publishes_its_new_count(webhook, sandbox, name):
    unread = "/api/moodle/notifications/unread-count"
    webhook.get(unread, READER)  # the student's count, cached
    webhook.get(f"{unread}?userid={ADMIN_USER}", ADMIN_READER)  # another user's
    count = moodle_call(sandbox, GET_UNREAD_COUNT, useridto=STUDENT)

    response = post_form(webhook, event(name, objectid=9, userid=ADMIN_USER, relateduserid=STUDENT))

    assert response.json["data"]["dropped"] == [f"notifications/{STUDENT}"]
    assert response.json["data"]["unreadcount"] == count
    assert webhook.events.published == [(f"user-{STUDENT}", "notification", {"userid": STUDENT, "unreadcount": count})]
    # the count was read from Moodle and kept: the student's next read is the fresh entry; the admin's is untouched
    assert webhook.get(unread, READER).headers["Cache-Status"].startswith("lms_api; hit")
    assert webhook.get(f"{unread}?userid={ADMIN_USER}", ADMIN_READER).headers["Cache-Status"].startswith("lms_api; hit")


def test_a_notification_reads_the_count_from_moodle_not_the_cache(webhook, sandbox):
    unread = "/api/moodle/notifications/unread-count"
    webhook.get(unread, READER)
    before = sandbox_calls(sandbox).get(GET_UNREAD_COUNT, 0)

    post_form(webhook, event("notification_sent", objectid=9, relateduserid=STUDENT))

    assert sandbox_calls(sandbox).get(GET_UNREAD_COUNT, 0) == before + 1


def test_a_notification_while_moodle_is_down_is_published_without_a_count(webhook, sandbox):
    webhook.get("/api/moodle/notifications/unread-count", READER)
    queue_fault(sandbox, kind="http", status=503, times=10, function=GET_UNREAD_COUNT)

    response = post_form(webhook, event("notification_sent", objectid=9, relateduserid=STUDENT))

    assert response.status_int == 200, response.text
    assert response.json["data"]["dropped"] == [f"notifications/{STUDENT}"]
    assert response.json["data"]["unreadcount"] is None
    assert webhook.events.published == [(f"user-{STUDENT}", "notification", {"userid": STUDENT})]
    assert deliveries(webhook, "\\core\\event\\notification_sent", "handled") == 1


def test_every_row_of_the_table_is_handled(webhook):
    for number, name in enumerate(EVENTS, start=1):
        fields = {"objectid": number, "courseid": COURSE, "relateduserid": STUDENT}
        response = post_form(webhook, {**event("x", **fields), "eventname": name})
        assert response.json["data"]["handled"] is True, (name, response.text)
        assert deliveries(webhook, name, "handled") == 1


def test_two_role_assignments_of_one_user_in_one_second_are_two_events(webhook):
    stamp = next(EVENT_TIMES)
    first = event("role_assigned", objectid=5, relateduserid=STUDENT, courseid=COURSE, timecreated=stamp)
    second = {**first, "courseid": "4", "contextinstanceid": "4"}

    answers = [post_form(webhook, fields).json["data"] for fields in (first, second)]

    assert [answer.get("handled") for answer in answers] == [True, True]
    assert [data["courseid"] for _, kind, data in webhook.events.published if kind == "enrolment.role_assigned"] == [
        COURSE,
        4,
    ]


def test_a_delivery_without_its_time_is_handled_each_time(webhook):
    fields = event("course_updated", objectid=COURSE, timecreated="")

    answers = [post_form(webhook, fields).json["data"] for _ in range(2)]

    assert [answer.get("handled") for answer in answers] == [True, True]


@pytest.mark.parametrize(("name", "field"), [("notification_sent", "relateduserid"), ("course_updated", "objectid")])
def test_an_id_the_event_needs_must_be_a_moodle_id(webhook, name, field):
    response = post_form(webhook, event(name, **{"objectid": COURSE, "relateduserid": STUDENT, field: 0}))

    assert response.status_int == 400
    assert response.json["error"]["details"]["fields"][field] == [
        f"Must be a Moodle id (1 or more) for \\core\\event\\{name}"
    ]
    assert webhook.events.published == []


@pytest.mark.parametrize("required", ["false", "true"])
def test_a_delivery_takes_no_idempotency_key(make_gateway, required):
    gateway = make_gateway(WEBHOOK_SECRET=SECRET, IDEMPOTENCY_REQUIRED=required)
    gateway.router.registry.events = RecordingEvents()

    response = post_form(gateway, event("course_updated", objectid=COURSE), headers={"Idempotency-Key": "k-1"})

    assert response.status_int == 200, response.text
    assert response.json["data"]["handled"] is True
