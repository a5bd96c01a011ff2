"""The one walk over the views Pyramid registered: each route's view with its methods as a tuple, its operation and the
callable that answers; what reads the declarations (the OpenAPI document, the routes' methods, the body limits) reads
them through it, not through a walk of its own."""

import subprocess

from marshmallow import Schema
from pyramid.config import Configurator

from lms_api.operation import OPERATION, DeclaredView, Operation, declared_views
from lms_api.security import Scope
from tests.support.paths import ROOT


class Things:
    def __init__(self, request):
        self.request = request

    def listed(self):
        return {}


def listed_any_way(request):
    return {}


def declares(view, info):
    """A deriver that takes the option as the views' own does, and leaves the view as it is."""
    return view


declares.options = (OPERATION,)


def test_each_routes_view_comes_with_its_methods_as_a_tuple_its_operation_and_what_answers():
    operation = Operation(Scope.SITEINFO_READ, Schema())
    config = Configurator()
    config.add_view_deriver(declares)
    config.add_route("things", "/things")
    config.add_route("any", "/any")
    config.add_view(Things, attr="listed", route_name="things", request_method="GET", **{OPERATION: operation})
    config.add_view(listed_any_way, route_name="things", request_method=("POST", "PUT"))
    config.add_view(listed_any_way, route_name="any")
    config.add_exception_view(listed_any_way, context=ValueError)
    config.commit()

    assert sorted(declared_views(config.registry), key=lambda each: each.methods) == [
        DeclaredView("any", (), None, listed_any_way),
        DeclaredView("things", ("GET",), operation, Things.listed),
        DeclaredView("things", ("POST", "PUT"), None, listed_any_way),
    ]


def test_no_module_but_the_operations_walks_the_views_itself():
    walks = subprocess.run(
        ["git", "grep", "-l", 'get_category("views")', "--", "lms_api"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()

    assert walks == ["lms_api/operation.py"]
