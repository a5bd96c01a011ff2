"""Each scope opens exactly its routes; admin opens all of them. The routes and their methods are read from the
registry, as the views declared them; which scope each one needs is this module's table."""

import pytest

from lms_api.security import Scope
from tests.support.credentials import mint
from tests.support.operations import api_operations

# The scope each route and method needs. A route added without a line here fails the comparison, naming it.
SCOPES = {
    ("api.moodle.siteinfo", "GET"): Scope.SITEINFO_READ,
    ("api.moodle.courses", "GET"): Scope.COURSES_READ,
    ("api.moodle.course", "GET"): Scope.COURSES_READ,
    ("api.moodle.courses", "POST"): Scope.COURSES_WRITE,
    ("api.moodle.course", "PATCH"): Scope.COURSES_WRITE,
    ("api.moodle.users.by_field", "GET"): Scope.USERS_READ,
    ("api.moodle.users", "POST"): Scope.USERS_WRITE,
    ("api.moodle.users", "PATCH"): Scope.USERS_WRITE,
    ("api.moodle.enrol", "POST"): Scope.ENROL_WRITE,
    ("api.moodle.notifications", "GET"): Scope.NOTIFICATIONS_READ,
    ("api.moodle.notifications.unread_count", "GET"): Scope.NOTIFICATIONS_READ,
    ("api.moodle.files.upload", "POST"): Scope.FILES_WRITE,
    ("api.moodle.files.attach", "POST"): Scope.FILES_WRITE,
    ("api.moodle.jobs", "GET"): Scope.JOBS_READ,
    ("api.moodle.job", "GET"): Scope.JOBS_READ,
    ("api.moodle.job", "DELETE"): Scope.JOBS_READ,
    ("api.moodle.messages", "POST"): Scope.MESSAGES_WRITE,
    ("api.moodle.events.tickets", "POST"): Scope.EVENTS_READ,
    # These two take credentials of their own (a ticket, the webhook secret), never a JWT.
    ("api.moodle.events.stream", "GET"): Scope.EVENTS_READ,
    ("api.moodle.webhooks.moodle", "POST"): Scope.MOODLE_EVENTS,
}


@pytest.fixture
def operations(gateway):
    """Every API operation, called on its path with placeholders filled with ``2``: the scope is checked before any
    input is read, so a request that would be refused as invalid still tells whether its token may use the route."""
    operations = api_operations(gateway.router.registry)
    assert {(each.route_name, each.method) for each in operations} == set(SCOPES)  # none left out of the loops
    return [each for each in operations if each.operation.credentials is None]


def send(gateway, method, path, token):
    if method == "GET":
        return gateway.get(path, token)
    if method == "PATCH":
        return gateway.patch(path, {}, token)
    if method == "DELETE":
        return gateway.delete(path, token)
    return gateway.post(path, {}, token)


def test_the_routes_and_the_scopes_they_need_are_the_table(gateway):
    served = {(each.route_name, each.method): each.operation.scope for each in api_operations(gateway.router.registry)}

    assert served == SCOPES


def test_every_api_route_with_a_view_is_an_operation(gateway):
    allowed = {
        (route, method)
        for route, methods in gateway.router.registry.allowed_methods.items()
        for method in methods
        if route.startswith("api.moodle.") and method != "HEAD"
    }
    public = {("api.moodle.openapi", "GET"), ("api.moodle.docs", "GET")}  # the API's description needs no token

    assert allowed - public == set(SCOPES)


@pytest.mark.parametrize("scope", [scope for scope in Scope if scope is not Scope.ADMIN])
def test_a_scope_opens_only_its_own_routes(gateway, operations, scope):
    token = mint(scope.value, moodle_userid=3)

    for each in operations:
        response = send(gateway, each.method, each.path, token)
        if each.operation.scope is scope:
            assert response.status_int != 403, (each.method, each.path)
        else:
            assert response.status_int == 403, (each.method, each.path)
            assert response.json["error"]["details"]["required_scope"] == each.operation.scope.value


@pytest.mark.parametrize("scope", ["admin", "events:read moodle:events"])
def test_no_jwt_opens_the_routes_that_take_credentials_of_their_own(make_gateway, scope):
    gateway = make_gateway(WEBHOOK_SECRET="w" * 32)
    own = [each for each in api_operations(gateway.router.registry) if each.operation.credentials is not None]
    assert {each.route_name for each in own} == {"api.moodle.events.stream", "api.moodle.webhooks.moodle"}

    for each in own:
        response = send(gateway, each.method, each.path, mint(scope, moodle_userid=3))
        assert response.status_int == 401, (each.method, each.path)


def test_admin_opens_every_route(gateway, operations):
    token = mint("admin")

    assert all(send(gateway, each.method, each.path, token).status_int != 403 for each in operations)


def test_the_openapi_document_lists_every_scope_cache_refresh_included(gateway):
    scheme = gateway.get("/api/moodle/openapi.json").json["components"]["securitySchemes"]["bearer"]

    assert all(f"`{scope.value}`" in scheme["description"] for scope in Scope)
    assert "`cache:refresh`" in scheme["description"]
