from pyramid.request import Request

from lms_api.cache import CachedMoodle
from lms_api.schemas.base import load_query
from lms_api.schemas.users import UsersByFieldQuery, UsersByFieldSchema
from lms_api.security import Scope
from lms_api.services import users
from lms_api.views import api_view

_query, _found = UsersByFieldQuery(), UsersByFieldSchema()


@api_view(
    route_name="api.moodle.users.by_field",
    request_method="GET",
    permission=Scope.USERS_READ,
    query=_query,
    answers=_found,
    cached=True,
)
def users_by_field(request: Request) -> object:
    """Users by id, idnumber, username or email.

    `missing` lists the values no user has; `unchecked` those the gateway could not check. Cached (`users`).
    """
    query = load_query(request, _query)
    return _found.dump(users.users_by_field(request.find_service(CachedMoodle), query["field"], query["values"]))
