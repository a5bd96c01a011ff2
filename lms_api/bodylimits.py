"""Body limits, judged before anything else runs: no token is checked, no budget counted and no byte read by the
gateway for a body that no route would take.

A route whose operation takes a multipart form (``form=``: the upload) takes MOODLE_MAX_UPLOAD_MB of files and their
multipart framing (413 ``filetoolarge``); Moodle's webhook 64 KiB (413 ``bodytoolarge``); every other API route
MAX_JSON_BODY_KB (413 ``bodytoolarge``). A declared Content-Length over the limit is refused at once. A body without one
(chunked) is held to the same limit while it is read: waitress de-chunks a body and declares its length before the app
runs, but another WSGI server may pass it on as it comes. The webhook's is read whole here instead, and kept: its
signature, which covers the body, is checked with the caller's credentials, where no exception view would render a
refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import IO

from pyramid.config import Configurator
from pyramid.interfaces import IRoutesMapper
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response

from lms_api.bodysizes import json_body_limit, upload_body_limit
from lms_api.errors import ApiError, ErrorCode, upload_too_large
from lms_api.operation import declared_views
from lms_api.routes import is_api_request
from lms_api.schemas.base import json_body_too_large
from lms_api.settings import Settings
from lms_api.webhooks import MAX_BODY_BYTES as WEBHOOK_BODY_BYTES
from lms_api.webhooks import WEBHOOK_PATH


def upload_paths(registry: Registry) -> frozenset[str]:
    """The paths of the routes whose operation takes a multipart form (``form=``): the routes that take files."""
    mapper = registry.getUtility(IRoutesMapper)
    paths = set()
    for declared in declared_views(registry):
        if declared.operation is not None and declared.operation.form is not None:
            pattern: str = mapper.get_route(declared.route_name).pattern
            if "{" in pattern:  # compared as they are, no route matching on every request
                raise ValueError(f"{pattern}: a route that takes uploads has no placeholder")
            paths.add(pattern)
    return frozenset(paths)


class BoundedInput:
    """A body stream that refuses, with the error ``refusal`` makes, to give more than ``max_bytes`` in all."""

    def __init__(self, stream: IO[bytes], max_bytes: int, refusal: Callable[[], ApiError]) -> None:
        self._stream = stream
        self._left = max_bytes
        self._refusal = refusal

    def read(self, size: int | None = -1) -> bytes:
        return self._counted(self._stream.read(self._allowed(size)))

    def readline(self, size: int | None = -1) -> bytes:
        return self._counted(self._stream.readline(self._allowed(size)))

    def _allowed(self, size: int | None) -> int:
        """One byte past the limit at most, enough to know the body goes past it."""
        return self._left + 1 if size is None or size < 0 else min(size, self._left + 1)

    def _counted(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise self._refusal()
        return data


def body_limit_tween_factory(
    handler: Callable[[Request], Response], registry: Registry
) -> Callable[[Request], Response]:
    settings: Settings = registry.settings["lms_api.settings"]
    uploads = upload_paths(registry)
    json_limit = json_body_limit(settings)
    upload = upload_body_limit(settings.moodle_max_upload_mb), partial(upload_too_large, settings.moodle_max_upload_mb)
    other = json_limit, partial(json_body_too_large, json_limit)
    webhook = WEBHOOK_BODY_BYTES, partial(webhook_body_too_large, WEBHOOK_BODY_BYTES)

    def tween(request: Request) -> Response:
        if not is_api_request(request):
            return handler(request)
        path = request.path_info
        max_bytes, refusal = upload if path in uploads else webhook if path == WEBHOOK_PATH else other
        length = request.content_length
        if path == WEBHOOK_PATH and (length is None or length <= max_bytes):
            request.body = request.environ["wsgi.input"].read(max_bytes + 1 if length is None else length)
            length = request.content_length
        if length is not None and length > max_bytes:
            error = refusal()
            # Over the exception view tween: its views are asked here, so the envelope is theirs as for any error.
            response: Response = request.invoke_exception_view((type(error), error, None))
            return response
        if length is None:
            request.environ["wsgi.input"] = BoundedInput(request.environ["wsgi.input"], max_bytes, refusal)
        return handler(request)

    return tween


def webhook_body_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        ErrorCode.BODY_TOO_LARGE, f"Webhook deliveries are limited to {max_bytes} bytes", {"max_bytes": max_bytes}
    )


def includeme(config: Configurator) -> None:
    # Inside the hygiene tween, whose headers every answer gets, and the audit one, which records the refused
    # write; outside the rate limits, whose check authenticates the caller.
    config.add_tween(
        "lms_api.bodylimits.body_limit_tween_factory",
        over="lms_api.ratelimit.rate_limit_tween_factory",
        under="lms_api.audit.audit_tween_factory",
    )
