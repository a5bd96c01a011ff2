"""Popup notifications of one Moodle user: the caller's own, or anyone's with ``admin``."""

from __future__ import annotations

from typing import Any, TypedDict

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import Moodle
from lms_api.moodle.errors import MoodleError, MoodleRecord, expect_list, unexpected_answer
from lms_api.moodle.functions import MoodleFunction
from lms_api.security import Identity, Scope
from lms_api.services.users import user_not_found


class NotificationsPage(TypedDict):
    userid: int
    notifications: list[MoodleRecord]
    unreadcount: int
    limit: int
    offset: int


class UnreadCount(TypedDict):
    userid: int
    count: int


def notification_user(identity: Identity, userid: int | None) -> int:
    """Whose notifications: ``userid`` or the token's ``moodle_userid``; anyone else's needs ``admin``.

    Checked before Moodle is called: the gateway's Moodle token can read every user's notifications.
    """
    if userid is None:
        if identity.moodle_userid is None:
            raise ApiError(
                ErrorCode.VALIDATION_ERROR,
                "Invalid input: userid",
                {"fields": {"userid": ["Required: this token has no moodle_userid claim to default to"]}},
            )
        return identity.moodle_userid
    if userid != identity.moodle_userid and not identity.has_scope(Scope.ADMIN):
        raise ApiError(
            ErrorCode.FORBIDDEN,
            "Reading another user's notifications needs the admin scope",
            {"required_scope": Scope.ADMIN.value},
        )
    return userid


def notifications(moodle: Moodle, caller: Identity, asked: int | None, limit: int, offset: int) -> NotificationsPage:
    """One page of the popup notifications of the user ``asked`` (:func:`notification_user`), newest first; 404
    ``usernotfound`` for a user Moodle lacks."""
    userid = notification_user(caller, asked)
    params = {"useridto": userid, "newestfirst": True, "limit": limit, "offset": offset}
    answer = _for_user(moodle, MoodleFunction.GET_POPUP_NOTIFICATIONS, params)
    unread = answer.get("unreadcount")
    if not isinstance(unread, int):
        raise unexpected_answer(MoodleFunction.GET_POPUP_NOTIFICATIONS)
    found = expect_list(answer.get("notifications"), MoodleFunction.GET_POPUP_NOTIFICATIONS, key="id")
    return {"userid": userid, "notifications": found, "unreadcount": unread, "limit": limit, "offset": offset}


def unread_count(moodle: Moodle, caller: Identity, asked: int | None) -> UnreadCount:
    """How many popup notifications of the user ``asked`` (:func:`notification_user`) are unread; 404
    ``usernotfound`` for a user Moodle lacks."""
    userid = notification_user(caller, asked)
    count: int = _for_user(moodle, MoodleFunction.GET_UNREAD_COUNT, {"useridto": userid})  # a bare integer
    return {"userid": userid, "count": count}


def _for_user(moodle: Moodle, function: MoodleFunction, params: dict[str, Any]) -> Any:
    """``function`` on the notifications of ``params["useridto"]``: Moodle 5.0 reads that user with MUST_EXIST, the
    only record either function requires, so a missing record is a missing user."""
    try:
        return moodle.call(function, params)
    except MoodleError as error:
        if error.code in (ErrorCode.INVALID_RECORD_UNKNOWN, ErrorCode.INVALID_RECORD):
            raise user_not_found([params["useridto"]]) from error
        raise
