"""The API's operations as the app's registry holds them, declared by the views: tests read the routes from there
rather than typing them again, so a new route cannot be left out of a test that means every route."""

import re
from typing import NamedTuple

from lms_api.operation import Operation, declared_views


class ApiOperation(NamedTuple):
    route_name: str
    method: str
    pattern: str
    path: str  # the pattern with each placeholder filled with 2
    operation: Operation


def api_operations(registry):
    """Every API route and method the registry serves, with its declared :class:`Operation`, sorted."""
    operations = []
    for view in declared_views(registry):
        if view.operation is None:
            continue
        pattern = registry.introspector.get("routes", view.route_name)["pattern"]
        path = re.sub(r"\{[^}]+\}", "2", pattern)
        operations += [ApiOperation(view.route_name, method, pattern, path, view.operation) for method in view.methods]
    return sorted(operations, key=lambda each: (each.route_name, each.method))
