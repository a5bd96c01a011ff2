"""The composition root: the application is its concerns, included in this order.

Each concern's ``includeme`` registers what it owns (request methods, tweens, services, routes, views). Tween order
is set by each tween's own ``over``/``under``, not by the order below: outermost, the UTF-8 guard (hygiene); then the
call log, over every tween that reads it; then the request summary line (logging); under it, the metrics, the CORS
and hygiene headers, audit, body limits and rate limits, in that order, and Cache-Status (the cache); all over the
exception views, so error answers pass through each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyramid.config import Configurator
from pyramid.router import Router

from lms_api.requestclass import serve_one_request_class
from lms_api.settings import Settings


def make_app(settings: Settings, pyramid_settings: Mapping[str, Any] | None = None) -> Router:
    """Build the WSGI app. With no ``MOODLE_BASE_URL`` (development only) a sandbox starts alongside it."""
    config = Configurator(settings={**(pyramid_settings or {}), "lms_api.settings": settings})
    config.include("lms_api.settings")  # request.lms_settings
    config.include("lms_api.calllog")  # request.moodle_calls: the Moodle calls of each request, for the tweens below
    config.include("lms_api.logging")  # structlog, request.id, the summary line
    config.include("lms_api.caller")  # request.public_url: Location from PUBLIC_URL or a trusted proxy, never Host
    config.include("lms_api.security")  # the JWT policy; a view without a permission is closed
    config.include("lms_api.moodle.client")  # the Moodle client service, on a real Moodle or the sandbox
    config.include("lms_api.cache")  # the read cache in front of it; Cache-Status; writes drop what they change
    config.include("lms_api.drafts")  # request.draft_owners: which caller received each draft item
    config.include("lms_api.idempotency")  # the store of Idempotency-Keys and the answers kept for them
    config.include("lms_api.hygiene")  # UTF-8 paths and queries, CORS, nosniff, no-store
    config.include("lms_api.audit")  # an audit event per write attempt
    config.include("lms_api.ratelimit")  # budgets per caller and per address
    config.include("lms_api.bodylimits")  # bodies over the route's limit refused before a token is checked
    config.include("lms_api.routes")
    config.include("lms_api.health")  # /healthz and /readyz, outside the API: no token, no rate limit
    config.include("lms_api.metrics")  # GET /metrics for Prometheus, from loopback by default
    config.include("lms_api.events")  # events out: tickets, and the engine that serves or hands over the streams
    config.include("lms_api.webhooks")  # events in: Moodle's webhook, its secret and the deliveries done
    config.include("lms_api.jobs")  # background jobs: a pool of threads of its own, counted in the metrics
    config.include("lms_api.openapi")  # the OpenAPI document, from the views' operations and the error table
    config.include("lms_api.docs")  # Swagger UI on that document, from a package's assets
    config.include("lms_api.views")  # the envelope renderer, the API views and the exception views
    config.commit()
    app = config.make_wsgi_app()
    serve_one_request_class(app)
    return app
