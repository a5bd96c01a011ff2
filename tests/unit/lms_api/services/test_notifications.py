"""The notifications service against a mocked Moodle."""

from __future__ import annotations

import pytest

from lms_api.errors import ApiError
from lms_api.moodle.functions import MoodleFunction
from lms_api.security import Identity
from lms_api.services import notifications
from tests.unit.mocked_moodle import add, api_raised, golden, raised, sent


def identity(moodle_userid=None, scopes=("notifications:read",)):
    return Identity("someone", frozenset(scopes), moodle_userid)


READER = identity(3)
ADMIN = identity(None, ("notifications:read", "admin"))


def test_the_user_defaults_to_the_tokens_moodle_userid():
    assert notifications.notification_user(identity(3), None) == 3
    assert notifications.notification_user(identity(3), 3) == 3


@pytest.mark.parametrize("moodle_userid", [3, None])
def test_another_user_needs_admin(moodle_userid):
    with pytest.raises(ApiError) as info:
        notifications.notification_user(identity(moodle_userid), 4)

    assert (info.value.status, info.value.details) == (403, {"required_scope": "admin"})
    assert notifications.notification_user(identity(moodle_userid, ("notifications:read", "admin")), 4) == 4


def test_no_userid_and_no_claim_is_a_400():
    with pytest.raises(ApiError) as info:
        notifications.notification_user(identity(None), None)

    assert info.value.status == 400
    assert "userid" in info.value.details["fields"]


def test_notifications_are_asked_newest_first_with_limit_and_offset(moodle, rsps):
    add(rsps, MoodleFunction.GET_POPUP_NOTIFICATIONS, json={"notifications": [{"id": 2}], "unreadcount": 2})

    answer = notifications.notifications(moodle, READER, None, 5, 10)

    form = sent(rsps)
    assert (form["useridto"], form["limit"], form["offset"], form["newestfirst"]) == ("3", "5", "10", "1")
    assert answer == {"userid": 3, "notifications": [{"id": 2}], "unreadcount": 2, "limit": 5, "offset": 10}


def test_notifications_of_a_user_moodle_does_not_have_are_a_404_naming_the_user(moodle, rsps):
    add(rsps, MoodleFunction.GET_POPUP_NOTIFICATIONS, body=golden("error_popup_notifications_nonexistent_user"))

    error = api_raised(notifications.notifications, moodle, ADMIN, 999999, 20, 0)

    assert (error.status, error.code, error.details) == (404, "usernotfound", {"missing_users": [999999]})
    assert error.message == "No user with id 999999 in Moodle"


def test_other_notification_errors_pass_as_they_are(moodle, rsps):
    add(rsps, MoodleFunction.GET_POPUP_NOTIFICATIONS, json={"exception": "moodle_exception", "errorcode": "invaliduser",
                                                           "message": "Invalid user"})  # fmt: skip

    assert raised(notifications.notifications, moodle, ADMIN, -5, 20, 0).code == "invaliduser"


@pytest.mark.parametrize("body", ["2", "0"])
def test_the_bare_integer_count_becomes_an_object(moodle, rsps, body):
    add(rsps, MoodleFunction.GET_UNREAD_COUNT, body=body)

    assert notifications.unread_count(moodle, READER, None) == {"userid": 3, "count": int(body)}


@pytest.mark.parametrize("body", ["true", '"2"', "null", '{"count": 2}'])
def test_a_count_that_is_not_an_integer_is_a_502(moodle, rsps, body):
    add(rsps, MoodleFunction.GET_UNREAD_COUNT, body=body)

    assert raised(notifications.unread_count, moodle, READER, 3).status == 502


@pytest.mark.parametrize(
    "read",
    [
        lambda moodle, caller, asked: notifications.notifications(moodle, caller, asked, 20, 0),
        lambda moodle, caller, asked: notifications.unread_count(moodle, caller, asked),
    ],
    ids=["notifications", "unread-count"],
)
def test_whose_notifications_is_decided_before_moodle_is_asked(moodle, rsps, read):
    calls_before = len(rsps.calls)

    another_users = api_raised(read, moodle, READER, 4)
    nobodys = api_raised(read, moodle, identity(None), None)

    assert (another_users.status, another_users.code) == (403, "forbidden")
    assert (nobodys.status, nobodys.code) == (400, "validationerror")
    assert len(rsps.calls) == calls_before
