"""View registration for the API: every view goes through :func:`api_view`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from marshmallow import Schema
from pyramid.config import Configurator
from pyramid.view import view_config

from lms_api.errors import ErrorCode, success_body, success_json
from lms_api.jsoncodec import dumps
from lms_api.security import Scope

ENVELOPE_RENDERER = "lms_api:envelope"

View = TypeVar("View", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    """What a route and method (its key in :data:`OPERATIONS`) take and answer: the OpenAPI document is made of
    these."""

    scope: Scope
    view: Callable[..., Any]
    answers: Schema
    status: int = 200
    query: Schema | None = None
    path: Schema | None = None
    body: Schema | None = None
    form: Schema | None = None
    errors: tuple[ErrorCode, ...] = ()
    cached: bool = False  # answered through the read cache: Cache-Status


OPERATIONS: dict[tuple[str, str], Operation] = {}


def api_view(
    *,
    route_name: str,
    request_method: str,
    permission: Scope,
    answers: Schema,
    status: int = 200,
    query: Schema | None = None,
    path: Schema | None = None,
    body: Schema | None = None,
    form: Schema | None = None,
    errors: tuple[ErrorCode, ...] = (),
    cached: bool = False,
    **settings: Any,
) -> Callable[[View], View]:
    """``view_config`` for an API view, and its :class:`Operation`: the permission is a required argument, never a
    default, and the schemas given here are the ones the view loads and dumps with; a success is answered with
    ``status``, as documented."""
    if not isinstance(permission, Scope):
        raise TypeError(f"permission must be a Scope, got {permission!r}")
    if status != 200:
        settings["decorator"] = _answering(status)
    register: Callable[[View], View] = view_config(
        route_name=route_name,
        request_method=request_method,
        permission=permission.value,
        renderer=ENVELOPE_RENDERER,
        _depth=1,  # venusian looks one frame further up, past ``described``, for the view's module
        **settings,
    )

    def described(view: View) -> View:
        OPERATIONS[route_name, request_method] = Operation(
            permission, view, answers, status, query, path, body, form, errors, cached
        )
        return register(view)

    return described


def _answering(status: int) -> Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]:
    def decorate(view: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def answered_with_status(context: Any, request: Any) -> Any:
            request.response.status_int = status
            return view(context, request)

        return answered_with_status

    return decorate


@dataclass(frozen=True)
class SerializedData:
    """A view's ``data`` already serialised to JSON, as the read cache keeps it beside the answer it came from."""

    json: str


class EnvelopeRenderer:
    """Renders what a view returns as ``{"ok": true, "data": ...}``."""

    def __init__(self, info: Any) -> None:
        pass

    def __call__(self, value: Any, system: dict[str, Any]) -> str:
        system["request"].response.content_type = "application/json"
        if isinstance(value, SerializedData):
            return success_json(value.json)
        return dumps(success_body(value))


def includeme(config: Configurator) -> None:
    config.add_renderer(ENVELOPE_RENDERER, EnvelopeRenderer)
    config.scan("lms_api.views")
