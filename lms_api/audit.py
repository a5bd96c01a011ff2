"""An ``audit`` event for every write attempt, refused ones included: who, what, which ids, what outcome; and one for
every background job when it ends (:func:`audit_job`), as its writes are made after its request's event."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from lms_api.jobs import Job, JobState

log = structlog.get_logger("lms_api.audit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OUTCOME_OK = "ok"
OUTCOME_QUEUED = "queued"  # a write answered 202: its job's own event says what it did


def audit_targets(request: Request) -> dict[str, Any]:
    """Views add the ids a write touches here (``request.audit_targets["course_id"] = 7``)."""
    return {}


def api_error(request: Request) -> ApiError | None:
    """The error the request was answered with, kept by the exception view that answered (None when none did)."""
    return None


def audit_job_id(request: Request) -> str | None:
    """The background job a write was queued as (set by the view deriver that answered 202), else None."""
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
    job_id: str | None = request.audit_job_id
    queued = {} if job_id is None else {"job_id": job_id}
    _event(
        sub=identity.sub if identity else None,
        outcome=str(error.code) if error is not None else OUTCOME_QUEUED if job_id is not None else OUTCOME_OK,
        moodle_functions=calls.functions,
        method=request.method,
        route=request.matched_route.name if request.matched_route else None,
        path=request.path,
        status=response.status_code,
        targets=request.audit_targets or dict(request.matchdict or {}),
        **queued,
    )


def audit_job(job: Job, state: JobState, error: Mapping[str, Any] | None, moodle_functions: Sequence[str]) -> None:
    """The ``audit`` event of a background job that has ended, whichever engine ran it: its submitter (``sub``),
    ``kind``, ``job_id``, the submission's ``request_id``, its ``items``, the Moodle functions it called, its final
    ``state``, and its ``outcome``: ``ok``, or the code of its ``error`` (the ``error`` object the job keeps, None when
    it succeeded). A job cancelled before it started is audited too, with no function called."""
    _event(
        sub=job.sub,
        outcome=OUTCOME_OK if error is None else str(error["code"]),
        moodle_functions=list(moodle_functions),
        kind=job.kind.value,
        job_id=job.id,
        request_id=job.request_id,
        items=job.total,
        state=state.value,
    )


def _event(*, sub: str | None, outcome: str, moodle_functions: list[str], **fields: Any) -> None:
    """One ``audit`` event: who, what came of it, the Moodle functions called, and what else names the write."""
    log.info("audit", sub=sub, outcome=outcome, moodle_functions=moodle_functions, **fields)


def includeme(config: Configurator) -> None:
    config.add_request_method(audit_targets, "audit_targets", reify=True)
    config.add_request_method(api_error, "api_error", reify=True)
    config.add_request_method(audit_job_id, "audit_job_id", reify=True)
    config.add_tween("lms_api.audit.audit_tween_factory", over=EXCVIEW, under="lms_api.hygiene.hygiene_tween_factory")
