"""Browser and HTTP hygiene for every API answer: CORS for the configured origins only, nosniff, no-store."""

from __future__ import annotations

from collections.abc import Callable

from pyramid.interfaces import IRoutesMapper
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response

from lms_api.settings import Settings
from lms_api.views import is_api_request
from lms_api.views.exceptions import error_response

ALLOWED_REQUEST_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSED_HEADERS = "Location, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, X-Request-ID"
PREFLIGHT_MAX_AGE_S = 600


def hygiene_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    """Set here, after exception views ran, so error answers carry the same headers as successes."""
    settings: Settings = registry.lms_settings
    allowed_origins = frozenset(settings.cors_allowed_origins)

    def tween(request: Request) -> Response:
        if not is_api_request(request):
            return handler(request)
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            response = _preflight(request, origin, origin in allowed_origins, registry)
        else:
            response = handler(request)
            if origin in allowed_origins:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.vary = tuple(dict.fromkeys((*(response.vary or ()), "Origin")))
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    return tween


def _preflight(request: Request, origin: str, allowed: bool, registry: Registry) -> Response:
    if not allowed:
        return error_response(request, 403, "corsrefused", f"Cross-origin requests from {origin} are not allowed")
    route = registry.getUtility(IRoutesMapper)(request)["route"]
    if route is None:
        return error_response(request, 404, "notfound", f"No route matches {request.path}")
    response = Response(status=204)
    response.headers.update(
        {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(registry.allowed_methods.get(route.name, ())),
            "Access-Control-Allow-Headers": ALLOWED_REQUEST_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        }
    )
    return response
