"""The composition root: the one place the application is wired together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from pyramid.config import Configurator
from pyramid.events import ContextFound
from pyramid.router import Router
from pyramid.tweens import EXCVIEW, INGRESS

from lms_api.audit import audit_targets
from lms_api.logging import configure_logging, request_id
from lms_api.moodle.client import MoodleService
from lms_api.ratelimit import counter_from_settings
from lms_api.security import UNDECLARED_PERMISSION, JWTSecurityPolicy, TokenVerifier
from lms_api.settings import Settings
from lms_api.views import ENVELOPE_RENDERER, EnvelopeRenderer

if TYPE_CHECKING:
    from moodle_sandbox.server import SandboxServer

log = structlog.get_logger("lms_api")


def add_routes(config: Configurator) -> None:
    config.add_route("api.moodle.siteinfo", "/api/moodle/siteinfo")
    config.add_route("api.moodle.courses", "/api/moodle/courses")
    config.add_route("api.moodle.course", "/api/moodle/courses/{course_id}")
    config.add_route("api.moodle.users.by_field", "/api/moodle/users/by-field")
    config.add_route("api.moodle.enrol", "/api/moodle/enrol")
    config.add_route("api.moodle.notifications", "/api/moodle/notifications")
    config.add_route("api.moodle.notifications.unread_count", "/api/moodle/notifications/unread-count")
    config.add_route("api.moodle.files.upload", "/api/moodle/files/upload")
    config.add_route("api.moodle.files.attach", "/api/moodle/files/attach")


def moodle_service(settings: Settings, base_url: str, token: str) -> MoodleService:
    return MoodleService(
        base_url,
        token,
        timeout_s=settings.moodle_timeout_ms / 1000,
        max_retries=settings.moodle_max_retries,
        functions_ttl_s=settings.moodle_functions_ttl_s,
        max_input_vars=settings.moodle_max_input_vars,
        debug=settings.moodle_debug,
    )


def make_app(
    settings: Settings, pyramid_settings: Mapping[str, Any] | None = None, log_stream: TextIO | None = None
) -> Router:
    """Build the WSGI app. With no ``MOODLE_BASE_URL`` (development only) a sandbox starts alongside it."""
    sandbox: SandboxServer | None = None
    if settings.uses_sandbox:
        # Imported here so a gateway pointed at a real Moodle never loads the emulator.
        from moodle_sandbox.server import start_sandbox

        sandbox = start_sandbox()
        base_url, token = sandbox.url, sandbox.site.token
    else:
        assert settings.moodle_base_url and settings.moodle_token
        base_url, token = settings.moodle_base_url, settings.moodle_token
    configure_logging(settings.log_format, (*settings.secrets, token), log_stream)
    if sandbox is not None:
        log.info(
            "sandbox.started",
            moodle_base_url=base_url,
            note="MOODLE_BASE_URL is unset: using the built-in Moodle sandbox",
        )
    if settings.uses_development_jwt_secret:
        log.warning("jwt.development_secret", note="JWT_SECRET is unset: tokens are signed with the development secret")

    config = Configurator(settings=dict(pyramid_settings or {}))
    config.registry.moodle = moodle_service(settings, base_url, token)
    config.registry.lms_settings = settings
    config.add_request_method(lambda request: request.registry.moodle, "moodle", reify=True)
    config.add_request_method(lambda request: request.registry.lms_settings, "lms_settings", reify=True)
    config.add_request_method(request_id, "id", reify=True)

    config.set_security_policy(JWTSecurityPolicy(TokenVerifier.from_settings(settings)))
    config.set_default_permission(UNDECLARED_PERMISSION)  # a view that forgets its permission is closed
    config.add_renderer(ENVELOPE_RENDERER, EnvelopeRenderer)
    config.registry.rate_counter = counter_from_settings(settings)
    config.add_request_method(audit_targets, "audit_targets", reify=True)
    # Outermost first; all sit over the exception views, so error answers pass through each of them.
    config.add_tween("lms_api.hygiene.encoding_tween_factory", under=INGRESS)
    config.add_subscriber("lms_api.hygiene.refuse_undecodable", ContextFound)
    config.add_tween(
        "lms_api.logging.request_tween_factory", over=EXCVIEW, under="lms_api.hygiene.encoding_tween_factory"
    )
    config.add_tween(
        "lms_api.hygiene.hygiene_tween_factory", over=EXCVIEW, under="lms_api.logging.request_tween_factory"
    )
    config.add_tween("lms_api.audit.audit_tween_factory", over=EXCVIEW, under="lms_api.hygiene.hygiene_tween_factory")
    config.add_tween(
        "lms_api.ratelimit.rate_limit_tween_factory", over=EXCVIEW, under="lms_api.audit.audit_tween_factory"
    )

    add_routes(config)
    config.scan("lms_api.views")
    config.commit()
    config.registry.allowed_methods = _allowed_methods(config)
    return config.make_wsgi_app()


def _allowed_methods(config: Configurator) -> dict[str, tuple[str, ...]]:
    """The methods each route answers, for 405 responses and their ``Allow`` header."""
    methods: dict[str, set[str]] = {}
    for view in config.registry.introspector.get_category("views"):
        introspectable = view["introspectable"]
        route_name, request_methods = introspectable["route_name"], introspectable["request_methods"]
        if route_name and request_methods:
            if isinstance(request_methods, str):
                request_methods = (request_methods,)
            methods.setdefault(route_name, set()).update(request_methods)
    for names in methods.values():
        if "GET" in names:
            names.add("HEAD")
    return {route: tuple(sorted(names)) for route, names in methods.items()}
