from pyramid.request import Request

from lms_api.cache import CachedMoodle
from lms_api.errors import ErrorCode
from lms_api.schemas.base import load_query
from lms_api.schemas.notifications import (
    NotificationsQuery,
    NotificationsSchema,
    UnreadCountQuery,
    UnreadCountSchema,
)
from lms_api.security import Scope
from lms_api.services import notifications
from lms_api.views import api_view

_list_query, _count_query = NotificationsQuery(), UnreadCountQuery()
_listing, _count = NotificationsSchema(), UnreadCountSchema()


@api_view(
    route_name="api.moodle.notifications",
    request_method="GET",
    permission=Scope.NOTIFICATIONS_READ,
    query=_list_query,
    answers=_listing,
    errors=(ErrorCode.USER_NOT_FOUND,),
    cached=True,
)
def list_notifications(request: Request) -> object:
    """A user's popup notifications, newest first.

    The caller's own (`moodle_userid` of the token) unless `userid` is given, which needs the `admin` scope.
    """
    query = load_query(request, _list_query)
    userid = notifications.notification_user(request.identity, query.get("userid"))
    return _listing.dump(
        notifications.notifications(request.find_service(CachedMoodle), userid, query["limit"], query["offset"])
    )


@api_view(
    route_name="api.moodle.notifications.unread_count",
    request_method="GET",
    permission=Scope.NOTIFICATIONS_READ,
    query=_count_query,
    answers=_count,
    cached=True,
)
def unread_count(request: Request) -> object:
    """How many popup notifications of a user are unread (the caller's own unless `userid`, with `admin`)."""
    userid = notifications.notification_user(request.identity, load_query(request, _count_query).get("userid"))
    return _count.dump(notifications.unread_count(request.find_service(CachedMoodle), userid))
