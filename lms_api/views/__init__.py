"""View registration for the API: every view goes through :func:`api_view`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyramid.config import Configurator
from pyramid.view import view_config

from lms_api.errors import dumps, success_body, success_json
from lms_api.security import Scope

ENVELOPE_RENDERER = "lms_api:envelope"

View = TypeVar("View", bound=Callable[..., Any])


def api_view(*, route_name: str, request_method: str, permission: Scope, **settings: Any) -> Callable[[View], View]:
    """``view_config`` for an API view: the permission is a required argument, never a default."""
    if not isinstance(permission, Scope):
        raise TypeError(f"permission must be a Scope, got {permission!r}")
    register: Callable[[View], View] = view_config(
        route_name=route_name,
        request_method=request_method,
        permission=permission.value,
        renderer=ENVELOPE_RENDERER,
        **settings,
    )
    return register


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
