"""The sandbox plays Moodle's Event Trigger: the events of its writes, with Moodle's fields, posted in order from a
thread of their own, retried on anything but a 200, never failing nor delaying the Moodle call."""

import threading
from urllib.parse import parse_qs

import pytest

from lms_api.moodle.encoding import encode_params
from moodle_sandbox.events import EventPoster, EventsTarget, MoodleEvent
from moodle_sandbox.phpform import parse_php_form
from moodle_sandbox.site import SandboxSite

TOKEN = "events-test-token"
SECRET = "s" * 40
URL = "http://gateway.test/api/moodle/webhooks/moodle"
NOW = 1_800_000_000
ADMIN, STUDENT, DELETED = 2, 3, 7


class Webhook:
    """Records each post; answers the statuses queued in ``answers``, then 200."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.posts = []
        self.sleeps = []

    def __call__(self, url, body, headers):
        self.posts.append((url, parse_qs(body.decode(), keep_blank_values=True), headers))
        return self.answers.pop(0) if self.answers else 200

    @property
    def events(self):
        return [{name: values[0] for name, values in form.items()} for _, form, _ in self.posts]


@pytest.fixture
def webhook():
    return Webhook()


@pytest.fixture
def site(webhook):
    poster = EventPoster(EventsTarget(URL, SECRET), post=webhook, sleep=webhook.sleeps.append)
    site = SandboxSite(TOKEN, clock=lambda: NOW, events=poster)
    yield site
    poster.close()


def call(site, function, **params):
    form, _ = parse_php_form([("wstoken", TOKEN), ("wsfunction", function), *encode_params(params)], 5000)
    answer = site.rest(form)
    assert site.events.wait_idle(5)
    return answer


def event(eventname, objectid, courseid=0, relateduserid="", contextinstanceid=0):
    return {
        "eventname": f"\\core\\event\\{eventname}",
        "objectid": str(objectid),
        "courseid": str(courseid),
        "userid": str(ADMIN),
        "relateduserid": str(relateduserid),
        "contextinstanceid": str(contextinstanceid),
        "timecreated": str(NOW),
    }


def test_a_course_created_then_updated_is_posted_as_tool_trigger_posts_it(site, webhook):
    created = call(site, "core_course_create_courses", courses=[{"fullname": "A", "shortname": "A1", "categoryid": 1}])
    call(site, "core_course_update_courses", courses=[{"id": created[0]["id"], "fullname": "B"}])

    course = created[0]["id"]
    assert webhook.events == [
        event("course_created", course, courseid=course, contextinstanceid=course),
        event("course_updated", course, courseid=course, contextinstanceid=course),
    ]
    url, _, headers = webhook.posts[0]
    assert url == URL
    assert headers == {"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Bearer {SECRET}"}


def test_users_created_and_updated_are_their_own_object_and_related_user_in_their_context(site, webhook):
    user = {"username": "newbie", "password": "Passw0rd!", "firstname": "N", "lastname": "B", "email": "n@example.com"}
    created = call(site, "core_user_create_users", users=[user])[0]["id"]
    call(site, "core_user_update_users", users=[{"id": created, "city": "Paris"}, {"id": 99999, "city": "x"}])

    assert webhook.events == [
        event("user_created", created, relateduserid=created, contextinstanceid=created),
        event("user_updated", created, relateduserid=created, contextinstanceid=created),  # not the refused one
    ]


def test_an_enrolment_posts_the_enrolment_then_the_role_and_again_only_what_changed(site, webhook):
    call(site, "enrol_manual_enrol_users", enrolments=[{"roleid": 5, "userid": STUDENT, "courseid": 2}])
    call(site, "enrol_manual_enrol_users", enrolments=[{"roleid": 5, "userid": STUDENT, "courseid": 2}])
    call(site, "enrol_manual_enrol_users", enrolments=[{"roleid": 4, "userid": STUDENT, "courseid": 2, "suspend": 1}])

    enrolment = site.state.enrolments[(2, STUDENT)].id
    in_course = {"courseid": 2, "contextinstanceid": 2, "relateduserid": STUDENT}
    assert webhook.events == [
        event("user_enrolment_created", enrolment, **in_course),
        event("role_assigned", 5, **in_course),  # a role event's object is the role
        event("user_enrolment_updated", enrolment, **in_course),
        event("role_assigned", 4, **in_course),
    ]


def test_a_call_whose_transaction_rolls_back_posts_nothing(site, webhook):
    courses = [
        {"fullname": "A", "shortname": "A2", "categoryid": 1},
        {"fullname": "B", "shortname": "B2", "categoryid": 999},
    ]
    enrolments = [{"roleid": 5, "userid": STUDENT, "courseid": 2}, {"roleid": 5, "userid": DELETED, "courseid": 2}]

    with pytest.raises(Exception, match="category"):
        call(site, "core_course_create_courses", courses=courses)
    with pytest.raises(Exception, match="User ID does not exist"):
        call(site, "enrol_manual_enrol_users", enrolments=enrolments)
    assert site.events.wait_idle(5)

    assert webhook.posts == []


def test_a_message_sent_is_posted_with_the_sender_and_the_recipient(site, webhook):
    answer = call(site, "core_message_send_instant_messages", messages=[{"touserid": STUDENT, "text": "Hi"}])

    assert webhook.events == [event("message_sent", answer[0]["msgid"], relateduserid=STUDENT)]


def test_a_message_to_oneself_or_refused_posts_nothing(site, webhook):
    call(site, "core_message_send_instant_messages", messages=[{"touserid": ADMIN, "text": "note"}])
    call(site, "core_message_send_instant_messages", messages=[{"touserid": DELETED, "text": "Hi"}])

    assert webhook.posts == []


def test_a_webhook_that_does_not_answer_200_is_retried_then_given_up_and_later_events_still_go(webhook):
    webhook.answers = [500, 0, 503, 401, 200]  # the first event never gets a 200; the second does at once
    poster = EventPoster(EventsTarget(URL, SECRET), post=webhook, sleep=webhook.sleeps.append)
    first, second = (MoodleEvent("\\core\\event\\course_updated", n, ADMIN, NOW, n, n) for n in (2, 3))

    poster.send([first, second])
    assert poster.wait_idle(5)
    poster.close()

    assert [event["objectid"] for event in webhook.events] == ["2", "2", "2", "2", "3"]
    assert webhook.sleeps == [0.5, 1.0, 2.0]


def test_a_retried_event_is_posted_once_the_webhook_answers(webhook):
    webhook.answers = [502]
    poster = EventPoster(EventsTarget(URL, SECRET), post=webhook, sleep=webhook.sleeps.append)

    poster.send([MoodleEvent("\\core\\event\\user_created", 8, ADMIN, NOW, 0, 8, 8)])
    assert poster.wait_idle(5)
    poster.close()

    assert len(webhook.posts) == 2 and webhook.posts[0][1] == webhook.posts[1][1]


def test_the_moodle_call_neither_waits_for_nor_fails_with_the_webhook():
    release = threading.Event()

    def stuck(url, body, headers):
        release.wait(10)
        return 200

    poster = EventPoster(EventsTarget(URL, SECRET), post=stuck, sleep=lambda seconds: None)
    site = SandboxSite(TOKEN, events=poster)
    form, _ = parse_php_form([("wstoken", TOKEN), ("wsfunction", "core_message_send_instant_messages"),
                              *encode_params({"messages": [{"touserid": STUDENT, "text": "Hi"}]})], 5000)  # fmt: skip

    answer = site.rest(form)  # answered while the post is stuck

    assert answer[0]["msgid"] > 0 and not poster.wait_idle(0.05)
    release.set()


def test_without_a_target_nothing_is_posted(monkeypatch):
    import moodle_sandbox.events

    monkeypatch.setattr(moodle_sandbox.events, "post_form", lambda *args: pytest.fail("posted"))
    site = SandboxSite(TOKEN)
    form, _ = parse_php_form([("wstoken", TOKEN), ("wsfunction", "core_user_update_users"),
                              *encode_params({"users": [{"id": STUDENT, "city": "Oslo"}]})], 5000)  # fmt: skip

    assert site.rest(form) == {"warnings": []}
    assert site.events is None
