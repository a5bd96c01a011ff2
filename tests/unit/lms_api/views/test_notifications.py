import pytest

from lms_api.errors import ApiError
from lms_api.security import Identity
from lms_api.views.notifications import list_notifications, unread_count
from tests.unit.mocked_moodle import answering


def test_the_callers_own_notifications_by_default(make_request, moodle):
    moodle.call.side_effect = answering(
        message_popup_get_popup_notifications={"notifications": [{"id": 4, "subject": "Due"}], "unreadcount": 1}
    )

    data = list_notifications(make_request("/api/moodle/notifications?limit=5"))

    assert data == {
        "userid": 3,
        "notifications": [{"id": 4, "subject": "Due"}],
        "unreadcount": 1,
        "limit": 5,
        "offset": 0,
    }
    moodle.call.assert_called_once_with(
        "message_popup_get_popup_notifications", {"useridto": 3, "newestfirst": True, "limit": 5, "offset": 0}
    )


@pytest.mark.parametrize("identity", [Identity("bob", frozenset({"notifications:read"}), 4)])
def test_another_users_count_needs_admin_and_moodle_is_not_asked(make_request, moodle, identity):
    with pytest.raises(ApiError) as refused:
        unread_count(make_request("/api/moodle/notifications/unread-count?userid=3"))

    assert (refused.value.status, refused.value.details) == (403, {"required_scope": "admin"})
    moodle.call.assert_not_called()


def test_the_unread_count_of_a_user(make_request, moodle):
    moodle.call.side_effect = answering(message_popup_get_unread_popup_notification_count=2)

    assert unread_count(make_request("/api/moodle/notifications/unread-count?userid=6")) == {"userid": 6, "count": 2}
