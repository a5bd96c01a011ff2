"""The methods each route answers (for ``405`` answers, their ``Allow`` header and CORS preflights), and which paths
are the API's. Each resource's view class declares its own routes (``lms_api.views.api_routes``)."""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request

from lms_api.operation import declared_views

API_PREFIX = "/api/"
# After the views are registered (the default order), so that every view is known.
_AFTER_VIEWS = 10


def includeme(config: Configurator) -> None:
    config.action(None, lambda: _remember_allowed_methods(config.registry), order=_AFTER_VIEWS)


def is_api_request(request: Request) -> bool:
    """On ``path_info``, not ``path``: a mount prefix (SCRIPT_NAME) must not switch the API's hardening off."""
    path: str = request.path_info
    return path.startswith(API_PREFIX)


def allowed_methods(registry: Registry, route_name: str | None = None) -> tuple[str, ...]:
    """The methods ``route_name`` answers; with no route, those of any route."""
    methods: dict[str, tuple[str, ...]] = registry.allowed_methods
    if route_name is None:
        return tuple(sorted({method for names in methods.values() for method in names}))
    return methods.get(route_name, ())


def _remember_allowed_methods(registry: Registry) -> None:
    methods: dict[str, set[str]] = {}
    for declared in declared_views(registry):
        if declared.methods:
            methods.setdefault(declared.route_name, set()).update(declared.methods)
    for names in methods.values():
        if "GET" in names:
            names.add("HEAD")
    registry.allowed_methods = {route: tuple(sorted(names)) for route, names in methods.items()}
