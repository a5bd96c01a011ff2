"""HTTP and browser hygiene: requests whose path or query is not UTF-8 are refused cleanly, and every API answer
gets CORS for the configured origins only, nosniff and no-store."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from pyramid.config import Configurator
from pyramid.events import ContextFound
from pyramid.interfaces import IRoutesMapper
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import EXCVIEW, INGRESS

from lms_api.errors import ApiError, ErrorCode
from lms_api.routes import allowed_methods, is_api_request
from lms_api.settings import Settings

# What browsers' fetch, axios, Angular's HttpClient and jQuery send by default, and the gateway's own headers.
ALLOWED_REQUEST_HEADERS = (
    "Accept, Accept-Language, Authorization, Cache-Control, Content-Language, Content-Type, Idempotency-Key, "
    "Pragma, X-Request-ID, X-Requested-With"
)
EXPOSED_HEADERS = (
    "Cache-Status, Idempotent-Replayed, Location, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, "
    "WWW-Authenticate, X-Request-ID"
)
PREFLIGHT_MAX_AGE_S = 600
UNDECODABLE_PART = "lms_api.undecodable_part"


def encoding_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    """Outermost: a path or query string that is not UTF-8 once percent-decoded is made readable (the path
    percent-escaped, the query dropped), so every tween can log, count and answer the request; it is then refused
    with a 400 by :func:`refuse_undecodable`, inside the exception views."""

    def tween(request: Request) -> Response:
        undecodable = _make_decodable(request.environ)
        if undecodable:
            request.environ[UNDECODABLE_PART] = undecodable
        return handler(request)

    return tween


def refuse_undecodable(event: ContextFound) -> None:
    undecodable = event.request.environ.get(UNDECODABLE_PART)
    if undecodable:
        raise ApiError(
            ErrorCode.INVALID_ENCODING, f"The request's {undecodable} is not UTF-8 text once percent-decoded"
        )


def _make_decodable(environ: MutableMapping[str, Any]) -> str | None:
    path = _wsgi_bytes(environ.get("PATH_INFO", ""))
    query = _wsgi_bytes(environ.get("QUERY_STRING", ""))
    undecodable = []
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        environ["PATH_INFO"] = quote(path, safe="/")
        undecodable.append("path")
    try:
        unquote_to_bytes(query).decode("utf-8")
    except UnicodeDecodeError:
        environ["QUERY_STRING"] = ""
        undecodable.append("query string")
    return " and ".join(undecodable) or None


def _wsgi_bytes(text: str) -> bytes:
    """WSGI gives the raw bytes as latin-1 text; anything else came from a non-conforming server."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def hygiene_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    """Set here, after exception views ran, so error answers carry the same headers as successes."""
    settings: Settings = registry.settings["lms_api.settings"]
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
        refusal = ApiError(ErrorCode.CORS_REFUSED, f"Cross-origin requests from {origin} are not allowed")
        # Over the exception view tween: its views are asked here, so the envelope is theirs as for any error.
        refused: Response = request.invoke_exception_view((type(refusal), refusal, None))
        return refused
    # An unknown path is answered like any other, so the real request's 404 reaches the page instead of
    # looking like a CORS failure.
    route = registry.getUtility(IRoutesMapper)(request)["route"]
    methods = allowed_methods(registry, route.name if route else None)
    response = Response(status=204)
    response.headers.update(
        {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": ALLOWED_REQUEST_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        }
    )
    return response


def includeme(config: Configurator) -> None:
    config.add_tween("lms_api.hygiene.encoding_tween_factory", under=INGRESS)
    config.add_subscriber(refuse_undecodable, ContextFound)
    config.add_tween(
        "lms_api.hygiene.hygiene_tween_factory", over=EXCVIEW, under="lms_api.logging.request_tween_factory"
    )
