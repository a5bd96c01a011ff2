"""An ``audit`` event for every write attempt, refused ones included: who, what, which ids, what outcome."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import EXCVIEW

from lms_api.calllog import CallLog
from lms_api.errors import ApiError
from lms_api.routes import is_api_request
from lms_api.security import checked_identity

log = structlog.get_logger("lms_api.audit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def audit_targets(request: Request) -> dict[str, Any]:
    """Views add the ids a write touches here (``request.audit_targets["course_id"] = 7``)."""
    return {}


def api_error(request: Request) -> ApiError | None:
    """The error the request was answered with, kept by the exception view that answered (None when none did)."""
    return None


def audit_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    def tween(request: Request) -> Response:
        if request.method not in WRITE_METHODS or not is_api_request(request):
            return handler(request)
        response = handler(request)
        _log(request, response, request.moodle_calls)
        return response

    return tween


def _log(request: Request, response: Response, calls: CallLog) -> None:
    identity = checked_identity(request)
    error: ApiError | None = request.api_error
    log.info(
        "audit",
        sub=identity.sub if identity else None,
        method=request.method,
        route=request.matched_route.name if request.matched_route else None,
        path=request.path,
        status=response.status_code,
        outcome="ok" if error is None else str(error.code),
        moodle_functions=calls.functions,
        targets=request.audit_targets or dict(request.matchdict or {}),
    )


def includeme(config: Configurator) -> None:
    config.add_request_method(audit_targets, "audit_targets", reify=True)
    config.add_request_method(api_error, "api_error", reify=True)
    config.add_tween("lms_api.audit.audit_tween_factory", over=EXCVIEW, under="lms_api.hygiene.hygiene_tween_factory")
