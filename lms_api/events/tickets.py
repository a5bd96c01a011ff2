"""Tickets for event streams: a browser's EventSource or WebSocket cannot send ``Authorization``, and a JWT in a URL
would end up in access logs. A caller trades its JWT for a ticket (``POST /api/moodle/events/tickets``), then opens
the stream with it in the query string: single use, valid :data:`TICKET_TTL_S`, naming the channels the stream carries.

Kept in Redis with ``REDIS_URL`` (a ticket issued by one replica opens a stream on any), else in the process; only
a digest of the ticket is kept, so what is stored cannot open a stream. While Redis does not answer, tickets are
issued and redeemed in the process that holds them.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis
from pyramid.config import Configurator
from pyramid.request import Request

from lms_api.events import STREAM_PATH
from lms_api.redisstate import ExpiringKeys, RedisLink, digest, redis_client
from lms_api.security import Identity, InvalidToken, Scope, add_path_credentials
from lms_api.settings import Settings

TICKET_TTL_S = 60
TICKET_PARAMETER = "ticket"
MAX_TICKETS_IN_PROCESS = 100_000
_REDIS_PREFIX = "lms_api:events:ticket:"
_REDEEMED = "lms_api.events.ticket"  # the environ key of the ticket a stream request redeemed
_REFUSED = "the ticket is unknown, used or expired: ask POST /api/moodle/events/tickets for a new one"


@dataclass(frozen=True)
class Ticket:
    """Who a ticket was issued to and the channels its stream carries."""

    sub: str
    moodle_userid: int | None
    channels: tuple[str, ...]

    def identity(self) -> Identity:
        """Who opens the stream: the caller, with no scope but the stream's."""
        return Identity(self.sub, frozenset({Scope.EVENTS_READ.value}), self.moodle_userid)


class TicketStore:
    """Tickets issued and not yet redeemed."""

    def __init__(self, link: RedisLink | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._link = link
        self._local: ExpiringKeys[Ticket] = ExpiringKeys(MAX_TICKETS_IN_PROCESS, clock)  # by digest

    @classmethod
    def from_settings(cls, settings: Settings) -> TicketStore:
        if not settings.redis_url:
            return cls()
        note = "event stream tickets are kept in the process that issued them until Redis answers again"
        return cls(RedisLink(redis_client(settings.redis_url), "events.tickets", note))

    def issue(self, ticket: Ticket) -> str:
        """A new ticket's text, for :data:`TICKET_TTL_S`."""
        text = secrets.token_urlsafe(32)
        key = digest(text)
        if self._link is not None and self._link.usable:
            try:
                self._link.client.set(_REDIS_PREFIX + key, json.dumps(asdict(ticket)), ex=TICKET_TTL_S)
                self._link.answered()
                return text
            except redis.RedisError as error:
                self._link.went_down(error)
        self._local.add(key, ticket, TICKET_TTL_S)
        return text

    def redeem(self, text: str) -> Ticket | None:
        """The ticket ``text`` names, used up; None when it is unknown, used or expired.

        Both places are emptied: a ticket whose ``SET`` reached Redis though its answer did not is kept in both."""
        key = digest(text)
        kept = self._local.pop(key)
        stored = self._take_from_redis(key)
        if kept is not None:
            return kept
        if stored is None:
            return None
        fields = json.loads(stored)
        return Ticket(fields["sub"], fields["moodle_userid"], tuple(fields["channels"]))

    def _take_from_redis(self, key: str) -> bytes | None:
        if self._link is None or not self._link.usable:
            return None
        try:
            stored: bytes | None = self._link.client.getdel(_REDIS_PREFIX + key)  # type: ignore[assignment]
        except redis.RedisError as error:
            self._link.went_down(error)
            return None
        self._link.answered()
        return stored


def redeemed_ticket(request: Request) -> Ticket:
    """The ticket the stream request was authenticated by (the view runs only once it was)."""
    ticket: Ticket = request.environ[_REDEEMED]
    return ticket


def _stream_credentials(store: TicketStore) -> Callable[[Request], Identity | None]:
    def check(request: Request) -> Identity | None:
        # Only a stream's GET uses its ticket up: a HEAD or a wrong method (405) leaves it for the stream.
        given = request.GET.getall(TICKET_PARAMETER) if request.method == "GET" else []
        if not given or not given[0]:
            return None
        if len(given) > 1:
            raise InvalidToken("give the ticket once")
        text = given[0]
        ticket = store.redeem(text)
        if ticket is None:
            raise InvalidToken(_REFUSED)
        request.environ[_REDEEMED] = ticket
        return ticket.identity()

    return check


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    store = TicketStore.from_settings(settings)
    config.registry.event_tickets = store
    needs = "a ticket from POST /api/moodle/events/tickets: ?ticket=<ticket>"
    add_path_credentials(config, STREAM_PATH, _stream_credentials(store), needs=needs)
