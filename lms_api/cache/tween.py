"""What a request asks of the read cache (a fresh answer, and whether its token may have one), and what its answer
tells of it (``Cache-Status``)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response

from lms_api.cache.outcomes import request_outcome
from lms_api.calllog import CallLog
from lms_api.security import Scope

SAFE_METHODS = frozenset({"GET", "HEAD"})  # reads: any other method writes


class FreshAnswer(Enum):
    """Whether a request asked for a fresh answer (``Cache-Control: no-cache``, ``max-age=0``, ``Pragma: no-cache``),
    and whether its token may have one."""

    NOT_ASKED = "not asked"
    HONOURED = "honoured"
    IGNORED = "ignored"


def fresh_answer(request: Request) -> FreshAnswer:
    directives = {part.strip().lower() for part in request.headers.get("Cache-Control", "").split(",")}
    pragma = request.headers.get("Pragma", "").strip().lower()  # HTTP/1.0 clients
    if not ("no-cache" in directives or "max-age=0" in directives or pragma == "no-cache"):
        return FreshAnswer.NOT_ASKED
    # Any caller could otherwise turn each request, counted once by the rate limit, into a Moodle call.
    return FreshAnswer.HONOURED if request.has_permission(Scope.CACHE_REFRESH) else FreshAnswer.IGNORED


def cache_tween_factory(handler: Callable[[Request], Response], registry: Registry) -> Callable[[Request], Response]:
    """``Cache-Status`` on every answer to a read that a cached read took part in, error answers included. A write's
    answer has none: the cache forwards the write, and the reads it makes too."""

    def tween(request: Request) -> Response:
        response = handler(request)
        if request.method not in SAFE_METHODS:
            return response
        calls: CallLog = request.moodle_calls
        outcome = request_outcome(calls.cache)
        if outcome is not None:
            response.headers["Cache-Status"] = outcome.header(request.fresh_answer is FreshAnswer.IGNORED)
        return response

    return tween
