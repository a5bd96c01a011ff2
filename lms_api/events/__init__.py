"""Events out: what Moodle (through the webhook) and the gateway's own writes tell single-page apps, on a stream per
caller.

An event goes to a channel: a Moodle user's (``user-<id>``: notifications, enrolments), a caller's (``caller-<hash of
sub>``: its background jobs) or a course's (``course-<id>``, for the callers that asked for it). A stream carries the
channels its ticket names (:mod:`lms_api.events.tickets`), never any other.

Two engines deliver them, one per process, chosen by the settings:

- :class:`~lms_api.events.embedded.EmbeddedEvents` (no ``NCHAN_PUBLISH_URL``): the gateway serves each stream itself as
  server-sent events, up to ``EVENTS_MAX_STREAMS``, fanned out to every replica through Redis pub/sub when
  ``REDIS_URL`` is set;
- :class:`~lms_api.events.nchan.NchanEvents`: nginx with nchan holds every subscriber (EventSource and WebSocket);
  the gateway publishes to nchan's publisher location and answers a stream request with an ``X-Accel-Redirect`` to
  nginx's internal subscriber location for the ticket's channels.

On the wire an event is its id (the engine's: ``Last-Event-ID`` resumes after it), its type (the ``event`` line) and
a JSON object, its data, which names its type again (``{"type": "notification", ...}``): a WebSocket message has only
the data. Publishing never fails the request or job that publishes: a lost event is logged and counted (the webhook
alone answers it, so that Moodle sends it again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Protocol

from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response

from lms_api.jsoncodec import dumps
from lms_api.settings import Settings

STREAM_PATH = "/api/moodle/events/stream"


class EventType(StrEnum):
    """The ``type`` of an event, as a stream names it."""

    NOTIFICATION = "notification"  # a user's popup notifications changed: its new unread count
    COURSE_CREATED = "course.created"
    COURSE_UPDATED = "course.updated"
    COURSE_DELETED = "course.deleted"
    ENROLMENT_CREATED = "enrolment.created"
    ENROLMENT_DELETED = "enrolment.deleted"
    ROLE_ASSIGNED = "enrolment.role_assigned"
    ROLE_UNASSIGNED = "enrolment.role_unassigned"
    JOB_PROGRESS = "job.progress"  # a background job of the caller's started, advanced or ended


def user_channel(userid: int) -> str:
    """A Moodle user's channel: its notifications and enrolments."""
    return f"user-{int(userid)}"


def course_channel(courseid: int) -> str:
    return f"course-{int(courseid)}"


def caller_channel(sub: str) -> str:
    """A caller's channel, by its token's ``sub`` (hashed: a channel name appears in nginx's paths and logs)."""
    return "caller-" + hashlib.sha256(sub.encode()).hexdigest()[:32]


def event_data(event_type: str, data: Mapping[str, Any]) -> str:
    """An event's data as sent: a JSON object that names its type."""
    return dumps({"type": event_type, **data})


class EventEngine(Protocol):
    """How events reach the streams of one gateway process."""

    name: str  # "embedded" or "nchan", as /readyz shows it

    def publish(self, channel: str, event_type: EventType, data: Mapping[str, Any]) -> bool:
        """Send an event to ``channel``'s subscribers, wherever they are connected: whether every one of them can
        receive it. Never raises: an event that cannot be sent is logged and counted
        (``lms_api_events_published{outcome="failed"}``)."""

    def stream(self, request: Request, channels: Sequence[str]) -> Response:
        """The answer to a stream request whose ticket names ``channels`` (``Last-Event-ID`` is read from
        ``request``); may raise :class:`~lms_api.errors.ApiError` (``eventsfull``)."""

    def open_streams(self) -> int:
        """Streams this process holds now (0 when nginx holds them)."""

    def readiness(self) -> dict[str, Any]:
        """What /readyz says of the events: the engine and, where it has one, whether its Redis answers."""

    def close(self) -> None:
        """Stop: end the streams held, stop listening to Redis."""


def engine_from_settings(settings: Settings, registry: Registry | None = None) -> EventEngine:
    """The engine ``settings`` describe; ``registry`` counts its events in the gateway's metrics (a worker has none)."""
    metrics = getattr(registry, "metrics", None) if registry is not None else None
    if settings.nchan_publish_url:
        from lms_api.events.nchan import NchanEvents

        return NchanEvents.from_settings(settings, metrics)
    from lms_api.events.embedded import EmbeddedEvents

    return EmbeddedEvents.from_settings(settings, metrics)


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    config.registry.events = engine_from_settings(settings, config.registry)
    config.include("lms_api.events.tickets")
