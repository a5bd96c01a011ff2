"""Each scope opens exactly its routes; admin opens all of them. The routes and their methods are read from the
registry, as the views declared them; which scope each one needs is this module's table."""

import re

import pytest

from lms_api.security import Scope
from lms_api.views import OPERATION
from tests.support.credentials import mint

# The scope each route and method needs. A route added without a line here fails the comparison, naming it.
SCOPES = {
    ("api.moodle.siteinfo", "GET"): Scope.SITEINFO_READ,
    ("api.moodle.courses", "GET"): Scope.COURSES_READ,
    ("api.moodle.course", "GET"): Scope.COURSES_READ,
    ("api.moodle.courses", "POST"): Scope.COURSES_WRITE,
    ("api.moodle.course", "PATCH"): Scope.COURSES_WRITE,
    ("api.moodle.users.by_field", "GET"): Scope.USERS_READ,
    ("api.moodle.enrol", "POST"): Scope.ENROL_WRITE,
    ("api.moodle.notifications", "GET"): Scope.NOTIFICATIONS_READ,
    ("api.moodle.notifications.unread_count", "GET"): Scope.NOTIFICATIONS_READ,
    ("api.moodle.files.upload", "POST"): Scope.FILES_WRITE,
    ("api.moodle.files.attach", "POST"): Scope.FILES_WRITE,
}


def api_operations(registry):
    """Every API route and method the registry serves: ``(route name, method, a path of it, the declared scope)``.

    A path's placeholders are filled with ``2``; the scope is checked before any input is read, so a request that
    would be refused as invalid still tells whether its token may use the route.
    """
    operations = []
    for view in registry.introspector.get_category("views"):
        introspectable = view["introspectable"]
        operation = introspectable.get(OPERATION)
        if operation is None:
            continue
        route_name = introspectable["route_name"]
        pattern = registry.introspector.get("routes", route_name)["pattern"]
        path = re.sub(r"\{[^}]+\}", "2", pattern)
        operations.append((route_name, introspectable["request_methods"], path, operation.scope))
    return sorted(operations)


@pytest.fixture
def operations(gateway):
    return api_operations(gateway.router.registry)


def send(gateway, method, path, token):
    if method == "GET":
        return gateway.get(path, token)
    if method == "PATCH":
        return gateway.patch(path, {}, token)
    return gateway.post(path, {}, token)


def test_the_routes_and_the_scopes_they_need_are_the_table(gateway):
    served = {(route_name, method): scope for route_name, method, _, scope in api_operations(gateway.router.registry)}

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

    for _, method, path, needed in operations:
        response = send(gateway, method, path, token)
        if needed is scope:
            assert response.status_int != 403, (method, path)
        else:
            assert response.status_int == 403, (method, path)
            assert response.json["error"]["details"]["required_scope"] == needed.value


def test_admin_opens_every_route(gateway, operations):
    token = mint("admin")

    assert all(send(gateway, method, path, token).status_int != 403 for _, method, path, _ in operations)


def test_the_openapi_document_lists_every_scope_cache_refresh_included(gateway):
    scheme = gateway.get("/api/moodle/openapi.json").json["components"]["securitySchemes"]["bearer"]

    assert all(f"`{scope.value}`" in scheme["description"] for scope in Scope)
    assert "`cache:refresh`" in scheme["description"]
