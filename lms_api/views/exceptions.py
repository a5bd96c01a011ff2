"""Exception views: the only place error envelopes are built, for every route, known or not. Each keeps the error it
answered with on the request (``request.api_error``), for the tweens that report on it: audit's outcome is its code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from marshmallow import ValidationError
from pyramid import view
from pyramid.httpexceptions import HTTPException, HTTPForbidden, HTTPNotFound
from pyramid.interfaces import ISecurityPolicy
from pyramid.request import Request
from pyramid.response import Response

from lms_api.errors import ApiError, ErrorCode, error_body
from lms_api.jsoncodec import dumps
from lms_api.routes import allowed_methods
from lms_api.security import ScopeDenied

log = structlog.get_logger("lms_api.errors")

ExceptionView = Callable[[Any, Request], Response]
# Pyramid ships no type information: these say what its decorators do, so the views below stay checked.
exception_view_config: Callable[..., Callable[[ExceptionView], ExceptionView]] = view.exception_view_config
forbidden_view_config: Callable[..., Callable[[ExceptionView], ExceptionView]] = view.forbidden_view_config
notfound_view_config: Callable[..., Callable[[ExceptionView], ExceptionView]] = view.notfound_view_config

# An error answer stays small whatever the input: 5,000 unknown parameters must not echo back as 5,000 names.
MAX_LISTED = 20
MAX_ECHOED_CHARS = 64


def _answered(request: Request, error: ApiError) -> Response:
    request.api_error = error
    response = Response(
        body=dumps(error_body(error, request.id)).encode(),
        status=error.status,
        content_type="application/json",
        charset="utf-8",
    )
    response.headers.update(error.headers)
    return response


@exception_view_config(ApiError)
def api_error(error: ApiError, request: Request) -> Response:
    if error.status >= 500:
        log.warning("api.error", status=error.status, code=error.code, error_message=error.message)
    return _answered(request, error)


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
    return _answered(request, ApiError(ErrorCode.VALIDATION_ERROR, f"Invalid input: {summary}", details))


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
    return _answered(request, _forbidden_error(error, request))


JWT_NEEDED = "an 'Authorization: Bearer <JWT>' header"


def _forbidden_error(error: HTTPForbidden, request: Request) -> ApiError:
    if request.identity is None:
        policy = request.registry.getUtility(ISecurityPolicy)
        problem = policy.token_problem(request)
        own = policy.own_credentials(request)  # a ticket, the webhook's secret: not a JWT
        if problem is None:
            return ApiError(
                ErrorCode.UNAUTHENTICATED,
                f"This route needs {own or JWT_NEEDED}",
                headers={"WWW-Authenticate": 'Bearer realm="lms_api"'},
            )
        return ApiError(
            ErrorCode.INVALID_TOKEN,
            f"The {'credentials were' if own else 'bearer token was'} refused: {problem}",
            headers={"WWW-Authenticate": 'Bearer realm="lms_api", error="invalid_token"'},
        )
    denied = getattr(error, "result", None)
    if isinstance(denied, ScopeDenied):
        return ApiError(ErrorCode.FORBIDDEN, str(denied), {"required_scope": denied.scope})
    return ApiError(ErrorCode.FORBIDDEN, "This token may not use this route")


@notfound_view_config()
def not_found(error: HTTPNotFound, request: Request) -> Response:
    """404 for an unknown path; 405 with ``Allow`` when the path exists but not for this method."""
    route = request.matched_route
    allowed = allowed_methods(request.registry, route.name) if route else None
    if allowed and request.method not in allowed:
        return _answered(
            request,
            ApiError(
                ErrorCode.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}",
                {"allowed": list(allowed)},
                headers={"Allow": ", ".join(allowed)},
            ),
        )
    return _answered(request, ApiError(ErrorCode.NOT_FOUND, f"No route matches {request.path}"))


# The gateway's own codes by what they say: an HTTP error's reason phrase, lower case without spaces, names its member.
GATEWAY_CODES = {code.value: code for code in ErrorCode if not code.from_moodle}


@exception_view_config(HTTPException)
def http_error(error: HTTPException, request: Request) -> Response:
    """Any other HTTP error Pyramid raises, with its status: the member its reason phrase names (a 405 is
    ``methodnotallowed``, a 415 ``unsupportedmediatype``), else the reason phrase itself, as Pyramid names it."""
    phrase = error.title.lower().replace(" ", "")
    code = GATEWAY_CODES.get(phrase, phrase)
    return _answered(request, ApiError(code, error.explanation or error.title, status=error.code))


@exception_view_config(Exception)
def unexpected_error(error: Exception, request: Request) -> Response:
    log.exception("unexpected.error", error_type=type(error).__name__)
    return _answered(
        request,
        ApiError(ErrorCode.INTERNAL_ERROR, "The gateway failed unexpectedly; the request id identifies the log lines"),
    )
