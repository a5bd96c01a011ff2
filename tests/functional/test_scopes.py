"""Each scope opens exactly its routes; admin opens all of them."""

import pytest

from lms_api.openapi import PUBLIC_ROUTES
from lms_api.security import Scope
from tests.conftest import mint

ROUTES = [
    ("GET", "/api/moodle/siteinfo", Scope.SITEINFO_READ),
    ("GET", "/api/moodle/courses", Scope.COURSES_READ),
    ("GET", "/api/moodle/courses/2", Scope.COURSES_READ),
    ("POST", "/api/moodle/courses", Scope.COURSES_WRITE),
    ("PATCH", "/api/moodle/courses/2", Scope.COURSES_WRITE),
    ("GET", "/api/moodle/users/by-field?field=id&values=3", Scope.USERS_READ),
    ("POST", "/api/moodle/enrol", Scope.ENROL_WRITE),
    ("GET", "/api/moodle/notifications?userid=3", Scope.NOTIFICATIONS_READ),
    ("GET", "/api/moodle/notifications/unread-count?userid=3", Scope.NOTIFICATIONS_READ),
    ("POST", "/api/moodle/files/upload", Scope.FILES_WRITE),
    ("POST", "/api/moodle/files/attach", Scope.FILES_WRITE),
]


def send(gateway, method, path, token):
    if method == "GET":
        return gateway.get(path, token)
    if method == "PATCH":
        return gateway.patch(path, {}, token)
    return gateway.post(path, {}, token)


@pytest.mark.parametrize("scope", [scope for scope in Scope if scope is not Scope.ADMIN])
def test_a_scope_opens_only_its_own_routes(gateway, scope):
    token = mint(scope.value, moodle_userid=3)

    for method, path, needed in ROUTES:
        response = send(gateway, method, path, token)
        if needed is scope:
            assert response.status_int != 403, (method, path)
        else:
            assert response.status_int == 403, (method, path)
            assert response.json["error"]["details"]["required_scope"] == needed.value


def test_every_route_and_method_is_in_the_table(gateway):
    served = {
        (method, route)
        for route, methods in gateway.router.registry.allowed_methods.items()
        for method in methods
        # /healthz, /readyz and the OpenAPI document need no token
        if method != "HEAD" and route.startswith("api.") and route not in PUBLIC_ROUTES
    }

    assert len(served) == len(ROUTES)


def test_admin_opens_every_route(gateway):
    token = mint("admin")

    assert all(send(gateway, method, path, token).status_int != 403 for method, path, _ in ROUTES)


def test_the_openapi_document_lists_every_scope_cache_refresh_included(gateway):
    scheme = gateway.get("/api/moodle/openapi.json").json["components"]["securitySchemes"]["bearer"]

    assert all(f"`{scope.value}`" in scheme["description"] for scope in Scope)
    assert "`cache:refresh`" in scheme["description"]
