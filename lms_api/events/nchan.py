"""Events through nginx with nchan: nginx holds every stream, EventSource and WebSocket alike, so no waitress thread
ever does; the gateway only publishes and says who may subscribe to what.

- Publishing is a ``POST {NCHAN_PUBLISH_URL}/<channel>`` to nchan's publisher location, on a server of nginx's that
  listens on loopback only (``deploy/nginx/lms_api.conf``): the event's data as the body, its type in
  ``X-EventSource-Event`` (nchan's ``event:`` line), nchan's own message id as the event's id.
- A stream request reaches the gateway through nginx; once its ticket is redeemed, the answer is an empty ``200``
  with ``X-Accel-Redirect`` to nginx's internal subscriber location for the ticket's channels. nginx then serves the
  same request from there, with the client's headers (``Upgrade`` for a WebSocket, ``Last-Event-ID``), never passing
  it to the gateway again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import requests
import structlog
from pyramid.request import Request
from pyramid.response import Response
from requests.adapters import HTTPAdapter

from lms_api.events import EventType, event_data
from lms_api.metrics import GatewayMetrics
from lms_api.settings import Settings

log = structlog.get_logger("lms_api.events")

# nginx's internal subscriber location (``internal``: only an X-Accel-Redirect reaches it); its channel ids are the
# path's last segment, split on commas (nchan_channel_id_split_delimiter).
SUBSCRIBE_PATH = "/lms_api/events/subscribe/"
CHANNEL_DELIMITER = ","
LAST_EVENT_ID_PARAMETER = (
    "last_event_id"  # nchan reads it, as it reads Last-Event-ID (nchan_subscriber_last_message_id)
)
# nchan is on this host or next to it: a publish that takes longer than this is lost rather than left to hold the
# request or job that publishes.
PUBLISH_TIMEOUT_S = 1.0
# Connections kept to nchan: one per waitress thread publishing at the same time, at most.
POOL_SIZE = 16
# nchan answers a publish 201 when the channel had subscribers, 202 when it had none: either way the message is kept
# for a stream that resumes.
PUBLISHED = frozenset({201, 202})
# A channel asked about for readiness: nchan's publisher location answers a GET with the channel's info, or 404 when
# the channel does not exist (as this one never does). Either says nchan is there, and neither creates the channel.
PROBE_CHANNEL = "user-0"


class NchanEvents:
    """Publishes to nchan; streams are held by nginx (:data:`SUBSCRIBE_PATH`)."""

    name = "nchan"

    def __init__(self, publish_url: str, metrics: GatewayMetrics | None = None) -> None:
        self._publish_url = publish_url.rstrip("/")
        self._metrics = metrics
        self._session = requests.Session()
        self._session.trust_env = False  # nchan is reached directly, never through a proxy from the environment
        self._session.mount(self._publish_url, HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE))

    @classmethod
    def from_settings(cls, settings: Settings, metrics: GatewayMetrics | None = None) -> NchanEvents:
        """The engine publishing to ``NCHAN_PUBLISH_URL``."""
        assert settings.nchan_publish_url, "the nchan engine needs NCHAN_PUBLISH_URL"
        return cls(settings.nchan_publish_url, metrics)

    def publish(self, channel: str, event_type: EventType, data: Mapping[str, Any]) -> bool:
        """POST the event to nchan's publisher location for ``channel``; a failure is logged and counted."""
        headers = {"Content-Type": "application/json", "X-EventSource-Event": event_type.value}
        failure: dict[str, Any] = {}
        try:
            answer = self._session.post(
                f"{self._publish_url}/{channel}",
                data=event_data(event_type, data).encode(),
                headers=headers,
                timeout=PUBLISH_TIMEOUT_S,
            )
            if answer.status_code not in PUBLISHED:
                failure = {"status": answer.status_code}
        except Exception as error:
            failure = {"error": type(error).__name__}
        if failure:
            log.warning("events.publish_failed", engine=self.name, channel=channel, type=event_type.value, **failure)
        if self._metrics is not None:
            self._metrics.events_published.labels(event_type.value, "failed" if failure else "sent").inc()
        return not failure

    def stream(self, request: Request, channels: Sequence[str]) -> Response:
        """An empty answer that sends nginx to its subscriber location for ``channels``; nginx keeps the client's
        headers (``Last-Event-ID``, a WebSocket's ``Upgrade``) and this ``last_event_id`` across the redirect."""
        target = SUBSCRIBE_PATH + CHANNEL_DELIMITER.join(channels)
        last_event_id = request.GET.get(LAST_EVENT_ID_PARAMETER)
        if last_event_id:
            target += "?" + urlencode({LAST_EVENT_ID_PARAMETER: last_event_id})
        response = Response(status=200)
        response.headers["X-Accel-Redirect"] = target
        response.headers["X-Accel-Buffering"] = "no"
        response.headers["Cache-Control"] = "no-store"
        return response

    def open_streams(self) -> int:
        """None here: nginx holds every stream."""
        return 0

    def readiness(self) -> dict[str, Any]:
        """The engine, and whether nchan's publisher location answers."""
        try:
            answer = self._session.get(
                f"{self._publish_url}/{PROBE_CHANNEL}", headers={"Accept": "text/json"}, timeout=PUBLISH_TIMEOUT_S
            )
        except requests.RequestException as error:
            return {"engine": self.name, "publisher": f"unreachable ({type(error).__name__})"}
        if answer.status_code in (200, 404):
            return {"engine": self.name, "publisher": "answers"}
        return {"engine": self.name, "publisher": f"answers {answer.status_code}, not as nchan would"}

    def close(self) -> None:
        """Let the connections to nchan go; the streams stay with nginx."""
        self._session.close()
