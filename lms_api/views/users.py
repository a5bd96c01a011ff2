from pyramid.view import view_defaults

from lms_api.schemas.users import UsersByFieldQuery, UsersByFieldSchema
from lms_api.security import Scope
from lms_api.services import users
from lms_api.views import ApiViews, api_routes, api_view


@api_routes({"api.moodle.users.by_field": "/api/moodle/users/by-field"})
@view_defaults(route_name="api.moodle.users.by_field")
class UserViews(ApiViews):
    @api_view(
        request_method="GET",
        permission=Scope.USERS_READ,
        query=UsersByFieldQuery(),
        answers=UsersByFieldSchema(),
        cached=True,
    )
    def users_by_field(self) -> object:
        """Users by id, idnumber, username or email.

        `missing` lists the values no user has; `unchecked` those the gateway could not check. Cached (`users`).
        """
        query = self.request.validated.query
        return users.users_by_field(self.moodle, query["field"], query["values"])
