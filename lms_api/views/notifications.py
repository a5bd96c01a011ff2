from pyramid.view import view_defaults

from lms_api.errors import ErrorCode
from lms_api.schemas.notifications import (
    NotificationsQuery,
    NotificationsSchema,
    UnreadCountQuery,
    UnreadCountSchema,
)
from lms_api.security import Scope
from lms_api.services import notifications
from lms_api.views import ApiViews, api_routes, api_view


@api_routes(
    {
        "api.moodle.notifications": "/api/moodle/notifications",
        "api.moodle.notifications.unread_count": "/api/moodle/notifications/unread-count",
    }
)
@view_defaults(route_name="api.moodle.notifications")
class NotificationViews(ApiViews):
    @api_view(
        request_method="GET",
        permission=Scope.NOTIFICATIONS_READ,
        query=NotificationsQuery(),
        answers=NotificationsSchema(),
        errors=(ErrorCode.USER_NOT_FOUND,),
        cached=True,
    )
    def list_notifications(self) -> object:
        """A user's popup notifications, newest first.

        The caller's own (`moodle_userid` of the token) unless `userid` is given, which needs the `admin` scope.
        """
        query = self.request.validated.query
        return notifications.notifications(
            self.moodle, self.caller, query.get("userid"), query["limit"], query["offset"]
        )

    @api_view(
        route_name="api.moodle.notifications.unread_count",
        request_method="GET",
        permission=Scope.NOTIFICATIONS_READ,
        query=UnreadCountQuery(),
        answers=UnreadCountSchema(),
        cached=True,
    )
    def unread_count(self) -> object:
        """How many popup notifications of a user are unread (the caller's own unless `userid`, with `admin`)."""
        return notifications.unread_count(self.moodle, self.caller, self.request.validated.query.get("userid"))
