"""The API's operations as the app's registry holds them, declared by the views: tests read the routes from there
rather than typing them again, so a new route cannot be left out of a test that means every route."""

import re
from typing import NamedTuple

from lms_api.views import OPERATION, Operation


class ApiOperation(NamedTuple):
    route_name: str
    method: str
    pattern: str
    path: str  # the pattern with each placeholder filled with 2
    operation: Operation


def api_operations(registry):
    """Every API route and method the registry serves, with its declared :class:`Operation`, sorted."""
    operations = []
    for view in registry.introspector.get_category("views"):
        introspectable = view["introspectable"]
        operation = introspectable.get(OPERATION)
        if operation is None:
            continue
        route_name = introspectable["route_name"]
        pattern = registry.introspector.get("routes", route_name)["pattern"]
        path = re.sub(r"\{[^}]+\}", "2", pattern)
        operations.append(ApiOperation(route_name, introspectable["request_methods"], pattern, path, operation))
    return sorted(operations, key=lambda each: (each.route_name, each.method))
