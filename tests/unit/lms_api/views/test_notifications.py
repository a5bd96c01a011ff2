import pytest

from lms_api.errors import ApiError
from lms_api.security import Identity
from tests.unit.lms_api.views.support import answering, view_answer

UNREAD_COUNT = "api.moodle.notifications.unread_count"


def test_the_callers_own_notifications_by_default(make_request, moodle):
    answering(
        moodle,
        message_popup_get_popup_notifications={"notifications": [{"id": 4, "subject": "Due"}], "unreadcount": 1},
    )

    data = view_answer(make_request("/api/moodle/notifications?limit=5", route="api.moodle.notifications"))

    assert data == {
        "userid": 3,
        "notifications": [{"id": 4, "subject": "Due"}],
        "unreadcount": 1,
        "limit": 5,
        "offset": 0,
    }
    moodle.call.assert_called_once_with(  # notifications are not kept by default (CACHE_TTLS): straight to Moodle
        "message_popup_get_popup_notifications", {"useridto": 3, "newestfirst": True, "limit": 5, "offset": 0}
    )
    moodle.answer.assert_not_called()


@pytest.mark.parametrize("identity", [Identity("bob", frozenset({"notifications:read"}), 4)])
def test_another_users_count_needs_admin_and_moodle_is_not_asked(make_request, moodle, identity):
    with pytest.raises(ApiError) as refused:
        view_answer(make_request("/api/moodle/notifications/unread-count?userid=3", route=UNREAD_COUNT))

    assert (refused.value.status, refused.value.details) == (403, {"required_scope": "admin"})
    moodle.answer.assert_not_called()
    moodle.call.assert_not_called()


def test_the_unread_count_of_a_user(make_request, moodle):
    answering(moodle, message_popup_get_unread_popup_notification_count=2)

    data = view_answer(make_request("/api/moodle/notifications/unread-count?userid=6", route=UNREAD_COUNT))

    assert data == {"userid": 6, "count": 2}
    moodle.call.assert_called_once_with("message_popup_get_unread_popup_notification_count", {"useridto": 6})
