"""Events in: Moodle tells the gateway what happened, at ``POST /api/moodle/webhooks/moodle``.

Moodle core sends no webhooks; its Event Trigger plugin (``tool_trigger``) does: a workflow on an event runs an "HTTP
post" step that POSTs the event's fields with the header lines an admin typed, and expects a 200 (any other status is
retried on a later run of its scheduled task). It cannot sign a body, so it sends ``Authorization: Bearer
<WEBHOOK_SECRET>``; a sender that can sign sends ``X-Signature: sha256=<hex>`` instead, the HMAC-SHA256 with the secret
of ``<X-Webhook-Timestamp>.<body>``, within :data:`SIGNATURE_WINDOW_S` of the gateway's clock.

What each event does is one table, :data:`EVENTS` (README prints it from :func:`readme_rows`): the read-cache groups
it drops on every replica, and the event it publishes to the streams. An event the table does not know is answered
200 ``{"ignored": true}``, so that the sender does not retry it forever. A delivery is done once: the same event
(name, object, related user, time) delivered again within :data:`DEDUPE_S` is answered 200 ``{"duplicate": true}``
and does nothing (in Redis with ``REDIS_URL``, shared by the replicas; else, and while Redis does not answer, in the
process).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, NotRequired, TypedDict
from urllib.parse import parse_qsl

import redis
import structlog
from marshmallow import ValidationError
from pyramid.config import Configurator
from pyramid.request import Request

from lms_api.cache import CachedMoodle, ReadCache
from lms_api.errors import ApiError, ErrorCode
from lms_api.events import EventEngine, EventType, course_channel, user_channel
from lms_api.metrics import GatewayMetrics
from lms_api.moodle.functions import CacheGroup, MoodleFunction
from lms_api.redisstate import ExpiringKeys, RedisLink, digest, redis_client
from lms_api.schemas.base import parse_json
from lms_api.schemas.webhooks import MoodleEventDelivery
from lms_api.security import Identity, InvalidToken, Scope, add_path_credentials
from lms_api.settings import Settings

log = structlog.get_logger("lms_api.webhooks")

WEBHOOK_PATH = "/api/moodle/webhooks/moodle"
MAX_BODY_BYTES = 64 * 1024  # a Moodle event's fields, with room to spare: tool_trigger posts a few hundred bytes
SIGNATURE_WINDOW_S = 300
SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
DEDUPE_S = 3600
UNPUBLISHED_RETRY_AFTER_S = 30
MAX_DELIVERIES_IN_PROCESS = 100_000  # a digest and a time each: a few MiB at most
WEBHOOK_IDENTITY = Identity("moodle-webhook", frozenset({Scope.MOODLE_EVENTS.value}))
OTHER_EVENT = "other"  # the metrics' label of an event the table does not know: the labels stay bounded
_REDIS_PREFIX = "lms_api:webhook:delivery:"
_SIGNATURE_PREFIX = "sha256="
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"
_DELIVERY = MoodleEventDelivery()


# -- authentication -------------------------------------------------------------------------------------------------


class WebhookCredentials:
    """Who posts to the webhook: the holder of ``WEBHOOK_SECRET``, by the secret itself (``Authorization: Bearer``,
    compared in constant time) or by a signature of the body made with it. Both may be sent: each one sent must hold.
    Refusals say why, never repeating what was sent."""

    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret.encode()
        self._clock = clock

    def __call__(self, request: Request) -> Identity | None:
        signature = request.headers.get(SIGNATURE_HEADER)
        authorization = request.headers.get("Authorization")
        if signature is None and not authorization:
            return None
        if authorization:
            self._check_bearer(authorization)
        if signature is not None:
            self._check_signature(request, signature)
        return WEBHOOK_IDENTITY

    def _check_bearer(self, authorization: str) -> None:
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise InvalidToken("the Authorization header must be 'Bearer <WEBHOOK_SECRET>'")
        if not hmac.compare_digest(secret.strip().encode(errors="surrogatepass"), self._secret):
            raise InvalidToken("the bearer secret is not the gateway's WEBHOOK_SECRET")

    def _check_signature(self, request: Request, signature: str) -> None:
        if not signature.startswith(_SIGNATURE_PREFIX):
            raise InvalidToken(f"{SIGNATURE_HEADER} must be 'sha256=<hex of HMAC-SHA256>'")
        stamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
        if not stamp:
            raise InvalidToken(f"a signed delivery names its time in {TIMESTAMP_HEADER} (seconds since 1970)")
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise InvalidToken(f"{TIMESTAMP_HEADER} must be a whole number of seconds since 1970")
        signed = stamp.encode() + b"." + request.body
        expected = hmac.new(self._secret, signed, hashlib.sha256).hexdigest()
        given = signature[len(_SIGNATURE_PREFIX) :].strip().lower()
        if not hmac.compare_digest(given.encode(errors="surrogatepass"), expected.encode()):
            raise InvalidToken(
                f"the signature does not match: {SIGNATURE_HEADER} must be the HMAC-SHA256 with WEBHOOK_SECRET of "
                f"'<{TIMESTAMP_HEADER}>.<body>', in hex"
            )
        age = int(self._clock()) - int(stamp)
        if age > SIGNATURE_WINDOW_S:
            raise InvalidToken(
                f"the signature is stale: {TIMESTAMP_HEADER} is {age} s old, and signatures are accepted for "
                f"{SIGNATURE_WINDOW_S} s"
            )
        if age < -SIGNATURE_WINDOW_S:
            raise InvalidToken(
                f"{TIMESTAMP_HEADER} is {-age} s in the future (more than {SIGNATURE_WINDOW_S} s): check the "
                "sender's clock"
            )


# -- deliveries done ------------------------------------------------------------------------------------------------


class DeliveriesDone:
    """The deliveries handled within :data:`DEDUPE_S`, by digest of their key: in Redis when given a link (``SET NX
    EX``, shared by the replicas), else, and while Redis does not answer, in the process (at most
    :data:`MAX_DELIVERIES_IN_PROCESS`, the oldest forgotten first)."""

    def __init__(self, link: RedisLink | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._link = link
        self._local: ExpiringKeys[bool] = ExpiringKeys(MAX_DELIVERIES_IN_PROCESS, clock)  # by digest

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveriesDone:
        if not settings.redis_url:
            return cls()
        note = "webhook deliveries are deduplicated in the process that received them until Redis answers again"
        return cls(RedisLink(redis_client(settings.redis_url), "webhook", note))

    def claim(self, key: str) -> bool:
        """True for the first delivery of ``key`` within the hour, which is then the one to handle it."""
        kept = digest(key)
        if self._link is not None and self._link.usable:
            try:
                claimed = self._link.client.set(_REDIS_PREFIX + kept, 1, nx=True, ex=DEDUPE_S)
            except redis.RedisError as error:
                self._link.went_down(error)
            else:
                self._link.answered()
                return bool(claimed)
        return self._local.add(kept, True, DEDUPE_S)

    def release(self, key: str) -> None:
        """Forget a claim whose handling failed, so that the sender's retry handles it."""
        kept = digest(key)
        self._local.pop(kept)
        if self._link is not None and self._link.usable:
            try:
                self._link.client.delete(_REDIS_PREFIX + kept)
            except redis.RedisError as error:
                self._link.went_down(error)


def delivery_key(delivery: Mapping[str, Any]) -> str | None:
    """What makes two deliveries one event: every field Moodle sent, its time included (two role assignments of one
    user in one second differ by their course); None without a time, when a delivery cannot be told from a later
    event of the same fields, and is handled each time."""
    if delivery.get("timecreated") is None:
        return None
    return json.dumps(sorted(delivery.items()), default=str)


# -- the events table -----------------------------------------------------------------------------------------------

NO_ENROLMENT_LISTS = "no cached answer lists enrolments"


@dataclass(frozen=True)
class Reaction:
    """What one Moodle event does: the read-cache groups it drops on every replica (or, with
    ``drops_recipients_notifications``, the notification entries of its ``relateduserid``), the event it publishes,
    and the fields of the delivery it needs to do so."""

    drops: tuple[CacheGroup, ...] = ()
    drops_recipients_notifications: bool = False
    publishes: EventType | None = None
    needs: tuple[str, ...] = ()
    drops_nothing_because: str = ""

    def __post_init__(self) -> None:
        if not self.drops and not self.drops_recipients_notifications and not self.drops_nothing_because:
            raise ValueError("an event drops the cache groups it makes wrong, or says why it makes none wrong")


_COURSE = ("objectid",)  # a course event's object is the course
_ENROLMENT = ("relateduserid", "courseid")  # the user enrolled, and where
_ROLE = ("relateduserid", "objectid")  # the user, and the role (a role event's object)
_RECIPIENT = ("relateduserid",)  # who was notified or sent a message

# By Moodle's event class: what the webhook does when Moodle says it happened. Nothing else is done by any event.
EVENTS: Mapping[str, Reaction] = {
    "\\core\\event\\course_created": Reaction(
        drops=(CacheGroup.COURSES,), publishes=EventType.COURSE_CREATED, needs=_COURSE
    ),
    "\\core\\event\\course_updated": Reaction(
        drops=(CacheGroup.COURSES,), publishes=EventType.COURSE_UPDATED, needs=_COURSE
    ),
    "\\core\\event\\course_deleted": Reaction(
        drops=(CacheGroup.COURSES,), publishes=EventType.COURSE_DELETED, needs=_COURSE
    ),
    "\\core\\event\\course_category_updated": Reaction(drops=(CacheGroup.COURSES,)),
    "\\core\\event\\user_created": Reaction(drops=(CacheGroup.USERS,)),
    "\\core\\event\\user_updated": Reaction(drops=(CacheGroup.USERS,)),
    "\\core\\event\\user_deleted": Reaction(drops=(CacheGroup.USERS,)),
    "\\core\\event\\user_enrolment_created": Reaction(
        publishes=EventType.ENROLMENT_CREATED, needs=_ENROLMENT, drops_nothing_because=NO_ENROLMENT_LISTS
    ),
    "\\core\\event\\user_enrolment_deleted": Reaction(
        publishes=EventType.ENROLMENT_DELETED, needs=_ENROLMENT, drops_nothing_because=NO_ENROLMENT_LISTS
    ),
    "\\core\\event\\role_assigned": Reaction(
        publishes=EventType.ROLE_ASSIGNED, needs=_ROLE, drops_nothing_because=NO_ENROLMENT_LISTS
    ),
    "\\core\\event\\role_unassigned": Reaction(
        publishes=EventType.ROLE_UNASSIGNED, needs=_ROLE, drops_nothing_because=NO_ENROLMENT_LISTS
    ),
    "\\core\\event\\notification_sent": Reaction(
        drops_recipients_notifications=True, publishes=EventType.NOTIFICATION, needs=_RECIPIENT
    ),
    "\\core\\event\\message_sent": Reaction(
        drops_recipients_notifications=True, publishes=EventType.NOTIFICATION, needs=_RECIPIENT
    ),
}


class Publication(NamedTuple):
    """Where an event of one type goes and what it says, from the delivery; and both as README shows them."""

    addressed: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]
    to: str
    says: str


def _course_event(delivery: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return course_channel(delivery["objectid"]), {"courseid": delivery["objectid"]}


def _enrolment_event(delivery: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    # courseid is 0 for a role assigned outside a course (a category's, the site's)
    return user_channel(delivery["relateduserid"]), {
        "courseid": delivery["courseid"],
        "userid": delivery["relateduserid"],
    }


def _role_event(delivery: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    channel, data = _enrolment_event(delivery)
    return channel, {**data, "roleid": delivery["objectid"]}  # a role event's object is the role


def _notification_event(delivery: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return user_channel(delivery["relateduserid"]), {"userid": delivery["relateduserid"]}


_COURSE_EVENT = Publication(_course_event, "`course-<objectid>`", "`courseid`")
_ENROLMENT_EVENT = Publication(_enrolment_event, "`user-<relateduserid>`", "`courseid`, `userid`")
_ROLE_EVENT = Publication(_role_event, "`user-<relateduserid>`", "`courseid` (0 outside a course), `userid`, `roleid`")
PUBLICATIONS: Mapping[EventType, Publication] = {
    EventType.COURSE_CREATED: _COURSE_EVENT,
    EventType.COURSE_UPDATED: _COURSE_EVENT,
    EventType.COURSE_DELETED: _COURSE_EVENT,
    EventType.ENROLMENT_CREATED: _ENROLMENT_EVENT,
    EventType.ENROLMENT_DELETED: _ENROLMENT_EVENT,
    EventType.ROLE_ASSIGNED: _ROLE_EVENT,
    EventType.ROLE_UNASSIGNED: _ROLE_EVENT,
    # the count is read from Moodle when the event is handled
    EventType.NOTIFICATION: Publication(
        _notification_event, "`user-<relateduserid>`", "`userid`, `unreadcount` (left out when Moodle cannot say)"
    ),
}


def readme_rows() -> str:
    """The events table as README shows it: one row per event of :data:`EVENTS`, and the row of any other."""
    rows = ["| Moodle event | fields it needs | drops (every replica) | publishes |", "|---|---|---|---|"]
    for name, reaction in EVENTS.items():
        needs = ", ".join(f"`{field}`" for field in reaction.needs) or "none"
        if reaction.drops_recipients_notifications:
            drops = "the recipient's `notifications` entries"
        elif reaction.drops:
            drops = ", ".join(f"`{group}`" for group in reaction.drops)
        else:
            drops = f"nothing: {reaction.drops_nothing_because}"
        published = reaction.publishes
        if published is None:
            publishes = "nothing"
        else:
            publication = PUBLICATIONS[published]
            publishes = f"`{published}` to {publication.to}: {publication.says}"
        rows.append(f"| `{name}` | {needs} | {drops} | {publishes} |")
    rows.append('| any other | `eventname` | nothing | nothing: answered `{"ignored": true}` |')
    return "\n".join(rows)


# -- a delivery -----------------------------------------------------------------------------------------------------


class Published(TypedDict):
    channel: str
    type: str


class Outcome(TypedDict):
    """The webhook's answer: what it did with a delivery."""

    event: str
    handled: NotRequired[bool]
    ignored: NotRequired[bool]
    duplicate: NotRequired[bool]
    dropped: NotRequired[list[str]]
    published: NotRequired[list[Published]]
    unreadcount: NotRequired[int | None]


def read_delivery(request: Request) -> dict[str, Any]:
    """The delivery's fields: a form-encoded body (the Event Trigger's default) or a JSON object ("JSON encode"),
    loaded by :class:`MoodleEventDelivery`; any other media type is a 415."""
    media_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if media_type == _FORM:
        fields = _form_fields(request.body)
    elif media_type == _JSON:
        fields = parse_json(request.body)
        if not isinstance(fields, dict):
            raise ApiError(ErrorCode.INVALID_JSON, "The request body must be a JSON object")
    else:
        raise ApiError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"The webhook takes {_FORM} or {_JSON}: the Event Trigger sends no Content-Type of its own, so give one "
            "in its header lines",
        )
    delivery: dict[str, Any] = _DELIVERY.load(fields)
    name = delivery["eventname"].strip()
    delivery["eventname"] = name if name.startswith("\\") else "\\" + name  # as Moodle names it: \core\event\...
    return delivery


def _form_fields(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise ValidationError({"body": ["A form-encoded body must be UTF-8 text, percent-encoded"]}) from None
    fields: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in fields:
            repeated[name] = [f"Give {name} once"]
        fields[name] = value
    if repeated:
        raise ValidationError(repeated)
    return fields


@dataclass(frozen=True)
class Webhook:
    """What handling a delivery acts on: the read cache, Moodle (for a recipient's unread count), the events engine,
    the deliveries done, and the metrics."""

    cache: ReadCache
    moodle: CachedMoodle
    events: EventEngine
    done: DeliveriesDone
    metrics: GatewayMetrics

    @classmethod
    def of(cls, request: Request, moodle: CachedMoodle) -> Webhook:
        registry = request.registry
        cache = request.find_service(ReadCache)
        return cls(cache, moodle, registry.events, registry.webhook_deliveries, registry.metrics)

    def receive(self, delivery: Mapping[str, Any]) -> Outcome:
        """Handle a delivery once: its row of :data:`EVENTS` applied, or ignored, or a duplicate left alone.

        The claim on the delivery comes first, so two deliveries of one event at once are handled once; a handling
        that fails releases it, so the sender's retry (it retries any answer but 200) handles the event then.

        A notification's recipient's unread count is read from Moodle (``refresh``: never an entry from before the
        event). When Moodle cannot say, the delivery is still answered 200, with the recipient's entries dropped and
        ``notification`` published without ``unreadcount``: the SPA learns at once that its count changed and reads it
        (from Moodle: its entries were dropped) when it can. A 5xx would have the Event Trigger post again on a later
        run of its scheduled task, a minute or more later, for a count the SPA can ask for itself; and the drop, the
        one thing only the webhook can do, would wait for Moodle to be reachable from the gateway again.
        """
        name = delivery["eventname"]
        reaction = EVENTS.get(name)
        if reaction is None:
            self.metrics.webhook_deliveries.labels(OTHER_EVENT, "ignored").inc()
            log.info("webhook.ignored", eventname=name)
            return {"event": name, "ignored": True}
        missing = {field: [f"Required by {name}"] for field in reaction.needs if delivery.get(field) is None}
        missing |= {
            field: [f"Must be a Moodle id (1 or more) for {name}"]
            for field in reaction.needs
            if field not in missing and delivery[field] < 1
        }
        if missing:
            raise ValidationError(missing)
        key = delivery_key(delivery)
        if key is not None and not self.done.claim(key):
            self.metrics.webhook_deliveries.labels(name, "duplicate").inc()
            log.info("webhook.duplicate", eventname=name)
            return {"event": name, "duplicate": True}
        try:
            outcome = self._apply(name, reaction, delivery)
        except BaseException:
            if key is not None:
                self.done.release(key)
            raise
        self.metrics.webhook_deliveries.labels(name, "handled").inc()
        log.info("webhook.handled", eventname=name, dropped=outcome["dropped"], published=len(outcome["published"]))
        return outcome

    def _apply(self, name: str, reaction: Reaction, delivery: Mapping[str, Any]) -> Outcome:
        outcome: Outcome = {"event": name, "handled": True, "dropped": [], "published": []}
        cause = f"webhook {name}"
        for group in reaction.drops:
            self.cache.invalidate(group, cause=cause)
            outcome["dropped"].append(str(group))
        if reaction.drops_recipients_notifications:
            recipient = delivery["relateduserid"]
            self.cache.invalidate(CacheGroup.NOTIFICATIONS, recipient, cause=cause)
            outcome["dropped"].append(f"{CacheGroup.NOTIFICATIONS}/{recipient}")
        if reaction.publishes is not None:
            channel, data = PUBLICATIONS[reaction.publishes].addressed(delivery)
            if reaction.publishes is EventType.NOTIFICATION:
                outcome["unreadcount"] = count = self._unread_count(data["userid"])
                if count is not None:
                    data["unreadcount"] = count
            if not self.events.publish(channel, reaction.publishes, data):
                raise ApiError(
                    ErrorCode.EVENTS_UNPUBLISHED,
                    f"{name} was taken, but its event could not be published to the streams: send it again",
                    {"dropped": outcome["dropped"]},
                    headers={"Retry-After": str(UNPUBLISHED_RETRY_AFTER_S)},
                )
            outcome["published"].append({"channel": channel, "type": str(reaction.publishes)})
        return outcome

    def _unread_count(self, userid: int) -> int | None:
        try:
            count: int = self.moodle.call(MoodleFunction.GET_UNREAD_COUNT, {"useridto": userid})
        except ApiError as error:
            log.warning("webhook.unread_count_unknown", userid=userid, error_code=str(error.code))
            return None
        return count


def includeme(config: Configurator) -> None:
    """With ``WEBHOOK_SECRET`` set, the webhook's path is authenticated by it (without, its route answers 404)."""
    settings: Settings = config.registry.settings["lms_api.settings"]
    if settings.webhook_secret is None:
        return
    needs = "'Authorization: Bearer <WEBHOOK_SECRET>', or 'X-Signature' and 'X-Webhook-Timestamp'"
    add_path_credentials(config, WEBHOOK_PATH, WebhookCredentials(settings.webhook_secret), needs=needs)
    config.registry.webhook_deliveries = DeliveriesDone.from_settings(settings)
