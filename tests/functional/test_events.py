"""Event stream tickets and the stream route as the gateway answers them (the engines have tests of their own), and
the events the gateway's own writes publish."""

import uuid

import pytest

from lms_api.cache import ReadCache
from lms_api.events import caller_channel
from lms_api.moodle.functions import CacheGroup
from tests.support.credentials import mint
from tests.support.events import RecordingEvents
from tests.support.gateway import service
from tests.support.sandbox import moodle_call, sandbox_calls

TICKETS = "/api/moodle/events/tickets"
STREAM = "/api/moodle/events/stream"
STUDENT = 3


def events_token(moodle_userid=STUDENT, scope="events:read", sub="user-1"):
    return mint(scope, sub=sub, moodle_userid=moodle_userid)


@pytest.fixture
def recorded(gateway):
    events = RecordingEvents()
    gateway.router.registry.events = events
    return events


def ticket_of(gateway, token, query=""):
    response = gateway.post(TICKETS + query, None, token)
    assert response.status_int == 201, response.text
    return response.json["data"]


def test_a_ticket_names_its_stream_and_lasts_a_minute(gateway):
    data = ticket_of(gateway, events_token())

    assert data["expires_in"] == 60
    assert data["userid"] == STUDENT and data["courses"] == []
    assert data["stream_url"] == f"{STREAM}?ticket={data['ticket']}"
    assert data["websocket_url"] is None  # the gateway serves EventSource only; WebSocket needs nginx with nchan
    assert len(data["ticket"]) >= 40


def test_a_ticket_needs_the_events_scope(gateway):
    response = gateway.post(TICKETS, None, mint("notifications:read", moodle_userid=STUDENT))

    assert response.status_int == 403
    assert response.json["error"]["details"]["required_scope"] == "events:read"


def test_the_stream_carries_the_callers_user_and_own_channels_and_the_courses_asked_for(gateway, recorded):
    data = ticket_of(gateway, events_token(scope="events:read courses:read"), "?courses=2,4,2")

    response = gateway.get(data["stream_url"])

    assert response.status_int == 200
    assert data["courses"] == [2, 4]
    assert recorded.streams == [("user-3", caller_channel("user-1"), "course-2", "course-4")]


def test_a_caller_without_a_moodle_user_gets_its_own_channel_only(gateway, recorded):
    data = ticket_of(gateway, events_token(moodle_userid=None))

    gateway.get(data["stream_url"])

    assert data["userid"] is None
    assert recorded.streams == [(caller_channel("user-1"),)]


def test_course_events_need_courses_read(gateway):
    response = gateway.post(TICKETS + "?courses=2", None, events_token())

    assert response.status_int == 403
    assert response.json["error"]["details"]["required_scope"] == "courses:read"


def test_course_events_of_a_course_that_does_not_exist_are_refused(gateway):
    response = gateway.post(TICKETS + "?courses=2,999", None, events_token(scope="events:read courses:read"))

    assert response.status_int == 404
    assert response.json["error"]["code"] == "coursenotfound"
    assert response.json["error"]["details"]["missing_courses"] == [999]


@pytest.mark.parametrize("courses", ["0", "two", "2,,3", ",".join(str(n) for n in range(2, 53))])
def test_courses_must_be_up_to_fifty_ids(gateway, courses):
    response = gateway.post(f"{TICKETS}?courses={courses}", None, events_token(scope="events:read courses:read"))

    assert response.status_int == 400
    assert "courses" in response.json["error"]["details"]["fields"]


def test_a_ticket_opens_one_stream_only(gateway, recorded):
    data = ticket_of(gateway, events_token())

    assert gateway.get(data["stream_url"]).status_int == 200
    again = gateway.get(data["stream_url"])

    assert again.status_int == 401
    assert again.json["error"]["code"] == "invalid_token"
    assert again.json["error"]["message"] == (
        "The credentials were refused: the ticket is unknown, used or expired: ask POST /api/moodle/events/tickets "
        "for a new one"
    )
    assert len(recorded.streams) == 1


def test_an_unknown_ticket_is_refused(gateway, recorded):
    response = gateway.get(STREAM + "?ticket=made-up")

    assert response.status_int == 401
    assert response.json["error"]["code"] == "invalid_token"
    assert recorded.streams == []


def test_the_stream_takes_a_ticket_not_a_jwt(gateway, recorded):
    response = gateway.get(STREAM, events_token())

    assert response.status_int == 401
    assert response.json["error"]["code"] == "unauthenticated"
    assert response.json["error"]["message"] == (
        "This route needs a ticket from POST /api/moodle/events/tickets: ?ticket=<ticket>"
    )
    assert recorded.streams == []


def test_a_ticket_is_redeemed_by_any_replica_once(make_gateway, empty_redis):
    issuing, streaming = make_gateway(REDIS_URL=empty_redis), make_gateway(REDIS_URL=empty_redis)
    streaming.router.registry.events = recorded = RecordingEvents()
    data = ticket_of(issuing, events_token())

    assert streaming.get(data["stream_url"]).status_int == 200
    assert issuing.get(data["stream_url"]).status_int == 401
    assert recorded.streams == [("user-3", caller_channel("user-1"))]


def new_course(sandbox):
    shortname = f"EV{uuid.uuid4().hex[:8]}"
    created = moodle_call(
        sandbox, "core_course_create_courses", courses=[{"fullname": "Events", "shortname": shortname, "categoryid": 1}]
    )
    return created[0]["id"]


def test_an_enrolment_through_the_gateway_is_published_to_the_enrolled_user(gateway, sandbox, recorded):
    course_id = new_course(sandbox)
    body = {"enrolments": [{"roleid": "student", "userid": 4, "courseid": course_id}]}

    assert gateway.post("/api/moodle/enrol", body, mint("enrol:write")).status_int == 200

    assert recorded.of_type("enrolment.created") == [
        ("user-4", {"userid": 4, "courseid": course_id, "roleid": 5}),
    ]


def test_a_course_updated_through_the_gateway_is_published_to_its_channel(gateway, sandbox, recorded):
    course_id = new_course(sandbox)

    response = gateway.patch(f"/api/moodle/courses/{course_id}", {"fullname": "Updated"}, mint("courses:write"))

    assert response.status_int == 200, response.text
    assert recorded.of_type("course.updated") == [(f"course-{course_id}", {"courseid": course_id})]


def test_a_write_moodle_refused_publishes_nothing(gateway, recorded):
    body = {"enrolments": [{"roleid": "student", "userid": 4, "courseid": 1}]}  # the front page: no manual enrolment

    assert gateway.post("/api/moodle/enrol", body, mint("enrol:write")).status_int >= 400
    assert recorded.published == []


def test_one_users_notification_entries_are_dropped_without_the_others(make_gateway, sandbox):
    gateway = make_gateway(CACHE_TTLS="notifications=60")
    for userid in (2, 3):
        assert gateway.get(f"/api/moodle/notifications/unread-count?userid={userid}", mint("admin")).status_int == 200
    before = sandbox_calls(sandbox).get("message_popup_get_unread_popup_notification_count", 0)

    service(gateway, ReadCache).invalidate(CacheGroup.NOTIFICATIONS, 3, cause="test")
    for userid in (2, 3):
        gateway.get(f"/api/moodle/notifications/unread-count?userid={userid}", mint("admin"))

    assert sandbox_calls(sandbox)["message_popup_get_unread_popup_notification_count"] == before + 1


def test_a_partitioned_group_is_dropped_by_its_part_only(gateway):
    cache = service(gateway, ReadCache)

    with pytest.raises(ValueError, match="kept apart"):
        cache.invalidate(CacheGroup.NOTIFICATIONS, cause="test")
    with pytest.raises(ValueError, match="not kept apart"):
        cache.invalidate(CacheGroup.COURSES, 2, cause="test")


@pytest.mark.parametrize("method", ["HEAD", "POST", "DELETE"])
def test_only_a_streams_get_uses_its_ticket_up(gateway, recorded, method):
    data = ticket_of(gateway, events_token())

    other = gateway.app.request(data["stream_url"], method=method, expect_errors=True)
    stream = gateway.get(data["stream_url"])

    assert other.status_int in (401, 405)
    assert stream.status_int == 200
    assert len(recorded.streams) == 1


def test_a_ticket_given_twice_is_refused(gateway, recorded):
    data = ticket_of(gateway, events_token())

    response = gateway.get(f"{data['stream_url']}&ticket={data['ticket']}")

    assert response.status_int == 401
    assert response.json["error"]["message"] == "The credentials were refused: give the ticket once"
    assert recorded.streams == []
