"""Exception views: the only place error envelopes are built, for every route, known or not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from marshmallow import ValidationError
from pyramid.httpexceptions import HTTPException, HTTPForbidden, HTTPNotFound
from pyramid.interfaces import ISecurityPolicy
from pyramid.request import Request
from pyramid.response import Response
from pyramid.view import exception_view_config, forbidden_view_config, notfound_view_config

from lms_api.errors import ApiError, error_body
from lms_api.security import ScopeDenied
from lms_api.views import dumps

log = structlog.get_logger("lms_api.errors")

# An error answer stays small whatever the input: 5,000 unknown parameters must not echo back as 5,000 names.
MAX_LISTED = 20
MAX_ECHOED_CHARS = 64


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    response = Response(
        body=dumps(error_body(code, message, details, request.id)).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )
    response.headers.update(headers or {})
    return response


@exception_view_config(ApiError)
def api_error(error: ApiError, request: Request) -> Response:
    if error.status >= 500:
        log.warning("api.error", status=error.status, code=error.code, error_message=error.message)
    return error_response(request, error.status, error.code, error.message, error.details, error.headers)


@exception_view_config(ValidationError)
def validation_error(error: ValidationError, request: Request) -> Response:
    """``details.fields`` maps each field to its messages; past MAX_LISTED fields, ``details.more_fields`` counts
    the rest. Nested lists and maps are cut the same way, with a ``"..."`` entry saying how many were left out."""
    messages = error.messages if isinstance(error.messages, dict) else {"input": error.messages}
    names = sorted(messages, key=str)
    listed = {_echoed(name): _capped(messages[name]) for name in names[:MAX_LISTED]}
    details: dict[str, Any] = {"fields": listed}
    summary = ", ".join(listed)
    if len(names) > MAX_LISTED:
        details["more_fields"] = len(names) - MAX_LISTED
        summary += f" and {len(names) - MAX_LISTED} more"
    return error_response(request, 400, "validationerror", f"Invalid input: {summary}", details)


def _echoed(name: Any) -> str:
    """A field name as the caller wrote it, cut short; marshmallow's ``_schema`` (the input as a whole) as ``input``."""
    text = "input" if name == "_schema" else str(name)
    return text if len(text) <= MAX_ECHOED_CHARS else text[:MAX_ECHOED_CHARS] + "..."


def _capped(messages: Any) -> Any:
    if isinstance(messages, dict):
        capped = {_echoed(key): _capped(value) for key, value in list(messages.items())[:MAX_LISTED]}
        if len(messages) > MAX_LISTED:
            capped["..."] = f"{len(messages) - MAX_LISTED} more"
        return capped
    if isinstance(messages, list):
        capped_list = [_capped(value) for value in messages[:MAX_LISTED]]
        if len(messages) > MAX_LISTED:
            capped_list.append(f"... {len(messages) - MAX_LISTED} more")
        return capped_list
    return messages


@forbidden_view_config()
def forbidden(error: HTTPForbidden, request: Request) -> Response:
    """401 when the caller is not authenticated (RFC 6750 challenge), 403 when the token lacks the scope."""
    if request.identity is None:
        problem = request.registry.getUtility(ISecurityPolicy).token_problem(request)
        if problem is None:
            return error_response(
                request,
                401,
                "unauthenticated",
                "This route needs an 'Authorization: Bearer <JWT>' header",
                headers={"WWW-Authenticate": 'Bearer realm="lms_api"'},
            )
        return error_response(
            request,
            401,
            "invalid_token",
            f"The bearer token was refused: {problem}",
            headers={"WWW-Authenticate": 'Bearer realm="lms_api", error="invalid_token"'},
        )
    denied = getattr(error, "result", None)
    if isinstance(denied, ScopeDenied):
        return error_response(request, 403, "forbidden", str(denied), {"required_scope": denied.scope})
    return error_response(request, 403, "forbidden", "This token may not use this route")


@notfound_view_config()
def not_found(error: HTTPNotFound, request: Request) -> Response:
    """404 for an unknown path; 405 with ``Allow`` when the path exists but not for this method."""
    route = request.matched_route
    allowed = request.registry.allowed_methods.get(route.name) if route else None
    if allowed and request.method not in allowed:
        return error_response(
            request,
            405,
            "methodnotallowed",
            f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}",
            {"allowed": list(allowed)},
            {"Allow": ", ".join(allowed)},
        )
    return error_response(request, 404, "notfound", f"No route matches {request.path}")


@exception_view_config(HTTPException)
def http_error(error: HTTPException, request: Request) -> Response:
    code = error.title.lower().replace(" ", "")
    return error_response(request, error.code, code, error.explanation or error.title)


@exception_view_config(Exception)
def unexpected_error(error: Exception, request: Request) -> Response:
    log.exception("unexpected.error", error_type=type(error).__name__)
    return error_response(
        request, 500, "internalerror", "The gateway failed unexpectedly; the request id identifies the log lines"
    )
