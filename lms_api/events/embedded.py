"""The embedded event engine: the gateway serves each event stream itself, as server-sent events, from a waitress
thread it holds for the stream's life; hence at most ``EVENTS_MAX_STREAMS`` at once per process (see
:func:`lms_api.server.check_stream_threads`).

An event's id is a whole number that only increases: the greater of the last id plus one and the time in
milliseconds, so ids keep increasing across restarts of the process (or of Redis) and ``Last-Event-ID`` from before
one never hides the events after it. Events are kept ``EVENTS_BUFFER_S`` (at most :data:`MAX_KEPT_PER_CHANNEL` a
channel) for the streams that resume.

With ``REDIS_URL`` the ids, the kept events and the delivery are shared by every replica: one Lua script numbers an
event, keeps it in its channel's sorted set and publishes it on :data:`FANOUT_CHANNEL`, to which one thread of each
process listens (from its first stream on) and hands every event, this process's own too, to its streams in the order
the fan-out brings them: the order of their ids, as the script runs alone. The listener pings Redis when the fan-out is
quiet, so a connection that died without a word is noticed; each time it subscribes again after losing the fan-out it
hands each open stream the kept events after the last one the stream had, which it missed meanwhile. While Redis does
not answer, an event reaches this process's streams only, with no id (so a client's ``Last-Event-ID`` stays that of the
last event it can resume after), and is counted as failed; the change is logged once each way
(:class:`~lms_api.redisstate.RedisLink`).

Without Redis, an event is numbered and handed to the streams under one lock, so they too get ids in order.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
import structlog
from pyramid.request import Request
from pyramid.response import Response

from lms_api.errors import ApiError, ErrorCode
from lms_api.events import EventType, event_data
from lms_api.redisstate import RETRY_AFTER_S, RedisLink, redis_client
from lms_api.settings import Settings

if TYPE_CHECKING:
    from lms_api.metrics import GatewayMetrics

log = structlog.get_logger("lms_api.events")

MAX_KEPT_PER_CHANNEL = 1000
# What a stream that fell this far behind its client is ended at: the client reconnects and resumes from the kept
# events, rather than the process queueing without bound for a client that does not read.
MAX_QUEUED_PER_STREAM = 1000
RECONNECT_MS = 5000  # the EventSource's wait before it reconnects, sent first on every stream
FULL_RETRY_AFTER_S = 10
LAST_EVENT_ID_PARAMETER = "last_event_id"
ID_KEY = "lms_api:events:id"
KEPT_PREFIX = "lms_api:events:kept:"
FANOUT_CHANNEL = "lms_api:events"
LISTEN_POLL_S = 0.5  # how soon the listener sees that the engine is closed
# The listener pings Redis after this long without a word on the fan-out, and subscribes again on a new connection
# when twice this passes without one: a connection whose peer vanished (no FIN, no RST) would otherwise be read for
# ever. redis-py's own health check sends the ping but never misses the answer.
HEALTH_CHECK_S = 5.0
# How often an idle stream asks waitress whether its client has gone (waitress keeps reading a connection whose request
# runs, channel_request_lookahead): a page reloaded frees its stream's slot within this, not at the next heartbeat.
GONE_CHECK_S = 1.0
SUBSCRIBE_WAIT_S = 1.0  # how long the first stream waits for the listener to subscribe (Redis may be away)
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # the last: nginx passes each event on
HEARTBEAT = b": heartbeat\n\n"
CLIENT_GONE = "waitress.client_disconnected"

# KEYS: the id counter, the channel's kept events. ARGV: the least id (the time in ms), the event's JSON after its id,
# the least id kept, the most events kept, seconds kept, the fan-out channel. Answers the event's id. Redis runs the
# script alone, so events are published on the fan-out in id order.
_PUBLISH_SCRIPT = """
local id = redis.call('INCR', KEYS[1])
if id < tonumber(ARGV[1]) then
  id = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], ARGV[1])
end
local event = '{"id":' .. string.format('%d', id) .. ',' .. ARGV[2]
redis.call('ZADD', KEYS[2], id, event)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[4]))
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], event)
return id
"""


@dataclass(frozen=True)
class Event:
    """An event as streams send it; ``id`` None: sent while Redis was away, so it cannot be resumed after."""

    id: int | None
    channel: str
    type: str
    data: str  # the JSON text of event_data()
    at: float  # when it was published, in seconds since the epoch

    def frame(self) -> bytes:
        """The server-sent event: id, type and data lines, and the blank line that ends it."""
        lines = [] if self.id is None else [f"id: {self.id}"]
        lines.append(f"event: {self.type}")
        lines.extend(f"data: {line}" for line in self.data.split("\n"))
        return ("\n".join(lines) + "\n\n").encode()

    def fields_after_id(self) -> str:
        """The event's JSON object without its opening brace and id, which the publish script puts first."""
        fields = {"channel": self.channel, "type": self.type, "data": self.data, "at": self.at}
        return json.dumps(fields, separators=(",", ":"))[1:]

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """The event the publish script stored; ValueError, KeyError or TypeError when ``text`` is not one."""
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise TypeError(f"an event is a JSON object, not {type(fields).__name__}")
        event = cls(int(fields["id"]), fields["channel"], fields["type"], fields["data"], float(fields["at"]))
        if not all(isinstance(value, str) for value in (event.channel, event.type, event.data)):
            raise TypeError("an event's channel, type and data are strings")
        return event


def next_id(last: int, now: float) -> int:
    """The id after ``last``: never below the time in milliseconds, so ids keep increasing after a restart."""
    return max(last + 1, int(now * 1000))


class LocalEvents:
    """The ids and kept events of one process (no ``REDIS_URL``)."""

    def __init__(self, keep_s: float, clock: Callable[[], float]) -> None:
        self._keep_s = keep_s
        self._clock = clock
        self._last_id = 0
        self._kept: dict[str, deque[Event]] = {}
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    def add(self, channel: str, event_type: str, data: str) -> Event:
        """Number a new event and keep it."""
        now = self._clock()
        with self._lock:
            self._last_id = next_id(self._last_id, now)
            event = Event(self._last_id, channel, event_type, data, now)
            kept = self._kept.setdefault(channel, deque(maxlen=MAX_KEPT_PER_CHANNEL))
            kept.append(event)
            self._drop_old(channel, now)
        return event

    def since(self, channels: Iterable[str], last_id: int) -> list[Event]:
        """The kept events of ``channels`` after ``last_id``, in id order."""
        cutoff = self._clock() - self._keep_s
        with self._lock:
            found = [
                event
                for channel in channels
                for event in self._kept.get(channel, ())
                if event.at >= cutoff and event.id is not None and event.id > last_id
            ]
        return sorted(found, key=_by_id)

    def _drop_old(self, channel: str, now: float) -> None:
        """Drop events past their time: the channel just published to's, and every ``keep_s`` every channel's (one
        published to once is not kept for ever)."""
        cutoff = now - self._keep_s
        channels = [channel]
        if now >= self._next_sweep:
            self._next_sweep = now + self._keep_s
            channels = list(self._kept)
        for name in channels:
            kept = self._kept[name]
            while kept and kept[0].at < cutoff:
                kept.popleft()
            if not kept:
                del self._kept[name]


def _by_id(event: Event) -> int:
    return event.id or 0


class _Subscriber:
    """One open stream: its channels and the events handed to it, which its thread sends."""

    def __init__(self, channels: Sequence[str], last_id: int | None) -> None:
        self.channels = frozenset(channels)
        # The id of the last event sent, else the one the stream started after: what comes later with an id no
        # greater was sent already (or is older than what the client has), and a replay starts after it.
        self.last_id = last_id
        self.ended = False  # the engine closed, or the client fell too far behind
        self._queue: queue.Queue[Event | None] = queue.Queue(MAX_QUEUED_PER_STREAM)

    def offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("events.stream_behind", queued=MAX_QUEUED_PER_STREAM)
            self.end()

    def end(self) -> None:
        self.ended = True
        with suppress(queue.Full):  # a full queue is read on at once, and the flag seen
            self._queue.put_nowait(None)

    def next(self, timeout: float) -> Event | None:
        """The next event within ``timeout`` seconds (``queue.Empty`` if none); None once the stream is ended."""
        return self._queue.get(timeout=timeout)


class _StreamBody:
    """A stream's app_iter: its frames, and the slot given back however it ends. waitress calls :meth:`close` when the
    client went away (its write raised) or the frames ended; a body dropped unread gives it back once collected."""

    def __init__(self, frames: Generator[bytes, None, None], release: Callable[[], None]) -> None:
        self._frames = frames
        self._release = weakref.finalize(self, release)

    def __iter__(self) -> Iterator[bytes]:
        return self  # whoever iterates holds the body, and with it the slot

    def __next__(self) -> bytes:
        return next(self._frames)

    def close(self) -> None:
        try:
            self._frames.close()  # GeneratorExit where the frames were: their own end gives the slot back
        finally:
            self._release()  # and this, should they never have started


class EmbeddedEvents:
    """Event streams served by this process, shared with other replicas through ``link``'s Redis when given."""

    name = "embedded"

    def __init__(
        self,
        max_streams: int,
        heartbeat_s: float,
        keep_s: float,
        link: RedisLink | None = None,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_streams = max_streams
        self._heartbeat_s = heartbeat_s
        self._keep_s = keep_s
        self._link = link
        self._metrics = metrics
        self._clock = clock
        self._local = LocalEvents(keep_s, clock)
        self._streams: set[_Subscriber] = set()
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()  # without Redis: an event is numbered and handed on before the next
        self._closed = False
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._listener: threading.Thread | None = None
        if link is not None:
            self._publish_script = link.client.register_script(_PUBLISH_SCRIPT)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: GatewayMetrics | None = None) -> EmbeddedEvents:
        link = None
        if settings.redis_url:
            note = "events reach this process's streams only, and cannot be resumed, until Redis answers again"
            link = RedisLink(redis_client(settings.redis_url), "events", note)
        return cls(
            settings.events_max_streams, settings.events_heartbeat_s, settings.events_buffer_s, link, metrics=metrics
        )

    # -- publishing ------------------------------------------------------------------------------------------------

    def publish(self, channel: str, event_type: EventType, data: Mapping[str, Any]) -> bool:
        outcome = "sent"
        try:
            text = event_data(event_type, data)
            if self._link is None:
                with self._publish_lock:
                    self._deliver(self._local.add(channel, str(event_type), text))
            else:
                # A numbered event reaches this process's streams through the fan-out, as the others' do, in id order.
                event = self._publish_shared(self._link, channel, str(event_type), text)
                if event.id is None:
                    outcome = "failed"  # the other replicas' streams never see it
                    self._deliver(event)
        except Exception:  # publishing never fails the request or job that publishes
            log.exception("events.publish_failed", channel=channel, type=str(event_type))
            outcome = "failed"
        if self._metrics is not None:
            self._metrics.events_published.labels(str(event_type), outcome).inc()
        return outcome == "sent"

    def _publish_shared(self, link: RedisLink, channel: str, event_type: str, data: str) -> Event:
        now = self._clock()
        unnumbered = Event(None, channel, event_type, data, now)
        if not link.usable:
            return unnumbered
        try:
            event_id = self._publish_script(
                keys=[ID_KEY, KEPT_PREFIX + channel],
                args=[
                    next_id(0, now),
                    unnumbered.fields_after_id(),
                    next_id(0, now - self._keep_s),
                    MAX_KEPT_PER_CHANNEL,
                    max(1, round(self._keep_s)),
                    FANOUT_CHANNEL,
                ],
            )
        except redis.RedisError as error:
            link.went_down(error)
            return unnumbered
        link.answered()
        return Event(int(event_id), channel, event_type, data, now)

    def _deliver(self, event: Event) -> None:
        with self._lock:
            subscribers = [subscriber for subscriber in self._streams if event.channel in subscriber.channels]
        for subscriber in subscribers:
            subscriber.offer(event)

    def _kept_since(self, channels: Iterable[str], last_id: int) -> list[Event]:
        if self._link is None:
            return self._local.since(channels, last_id)
        if not self._link.usable:
            return []
        try:
            events = self._read_kept(self._link, channels, last_id)
        except redis.RedisError as error:
            self._link.went_down(error)
            return []
        self._link.answered()
        return events

    def _read_kept(self, link: RedisLink, channels: Iterable[str], last_id: int) -> list[Event]:
        """The events Redis keeps for ``channels`` after ``last_id``, in id order, read at one instant: an event
        published meanwhile is in all of them or none, so one it holds back comes later with an id above theirs."""
        with link.client.pipeline(transaction=True) as pipe:
            for channel in sorted(channels):
                pipe.zrangebyscore(KEPT_PREFIX + channel, f"({last_id}", "+inf")
            found: list[list[bytes]] = pipe.execute()
        cutoff = self._clock() - self._keep_s
        events = (_readable(member, "kept") for members in found for member in members)
        return sorted((event for event in events if event is not None and event.at >= cutoff), key=_by_id)

    def _last_id_given(self) -> int | None:
        """The last id Redis gave an event (0 before the first), None when Redis does not answer."""
        if self._link is None or not self._link.usable:
            return None
        try:
            given = self._link.client.get(ID_KEY)
        except redis.RedisError as error:
            self._link.went_down(error)
            return None
        self._link.answered()
        return int(given or 0)

    # -- the fan-out listener --------------------------------------------------------------------------------------

    def _start_listening(self) -> bool:
        """With Redis, start the listener with the first stream (a process that serves none needs no listener); True
        when it was started now."""
        if self._link is None or self._listener is not None:
            return False
        self._listener = threading.Thread(target=self._listen, name="events-fanout", daemon=True)
        self._listener.start()
        return True

    def _listen(self) -> None:
        """Hand what the fan-out brings to this process's streams; subscribe again whenever it is lost (Redis went
        away, or kept silent, or a bug), after a pause, and stop once the engine is closed."""
        assert self._link is not None
        link = self._link
        replay = False  # the first subscription comes with the first stream, which reads the kept events itself
        while not self._stopping.is_set():
            fanout = link.client.pubsub()
            try:
                fanout.subscribe(FANOUT_CHANNEL)
                self._follow(link, fanout, replay)
            except redis.RedisError as error:
                link.went_down(error)
            except Exception:  # never the end of listening: this process's streams would get no event again
                log.exception("events.listener_failed")
            finally:
                self._subscribed.clear()
                with suppress(Exception):
                    fanout.close()
            replay = True
            self._stopping.wait(RETRY_AFTER_S)

    def _follow(self, link: RedisLink, fanout: redis.client.PubSub, replay: bool) -> None:
        """Read the fan-out until the engine is closed: once subscribed, hand each open stream what it missed when
        ``replay`` (the fan-out was lost), then every event; raise ``redis.ConnectionError`` once Redis has not
        answered for twice :data:`HEALTH_CHECK_S`."""
        heard = pinged = time.monotonic()
        while not self._stopping.is_set():
            message = fanout.get_message(timeout=LISTEN_POLL_S)
            now = time.monotonic()
            if message is None:
                if now - heard > 2 * HEALTH_CHECK_S:
                    raise redis.ConnectionError(f"no answer on the fan-out in {2 * HEALTH_CHECK_S:g} s")
                if now - heard >= HEALTH_CHECK_S and now - pinged >= HEALTH_CHECK_S:
                    fanout.ping()
                    pinged = now
                continue
            heard = now
            if message["type"] == "subscribe":
                link.answered()
                self._subscribed.set()
                if replay:
                    self._replay(link)
            elif message["type"] == "message":
                self._receive(message["data"])

    def _replay(self, link: RedisLink) -> None:
        """Hand each open stream the kept events after the last it had: those published while the fan-out was lost.
        Read after subscribing, so what is published later comes by the fan-out, behind them; a stream skips an event
        it has had."""
        with self._lock:
            subscribers = list(self._streams)
        for subscriber in subscribers:
            if subscriber.last_id is None:
                continue  # opened while Redis was away: it has nothing to resume after
            for event in self._read_kept(link, subscriber.channels, subscriber.last_id):
                subscriber.offer(event)

    def _receive(self, message: bytes) -> None:
        event = _readable(message, "fanout")
        if event is not None:
            self._deliver(event)

    # -- streams ---------------------------------------------------------------------------------------------------

    def stream(self, request: Request, channels: Sequence[str]) -> Response:
        last_id = _last_event_id(request)
        if last_id is None:
            # With Redis, a new stream starts after the last event numbered: it reads what is published while it
            # opens from the kept events, and a replay knows where it started.
            last_id = self._last_id_given()
        subscriber = _Subscriber(channels, last_id)
        with self._lock:
            full = self._closed or len(self._streams) >= self.max_streams
            if not full:
                self._streams.add(subscriber)
                listener_started = self._start_listening()
        if full:
            log.warning("events.streams_full", max_streams=self.max_streams)
            raise ApiError(
                ErrorCode.EVENTS_FULL,
                f"The gateway serves {self.max_streams} event streams already (EVENTS_MAX_STREAMS): ask for a new "
                f"ticket and try again in {FULL_RETRY_AFTER_S} s",
                {"max_streams": self.max_streams},
                headers={"Retry-After": str(FULL_RETRY_AFTER_S)},
            )
        if listener_started:  # the first stream misses nothing published once it has opened
            self._subscribed.wait(SUBSCRIBE_WAIT_S)
        gone = request.environ.get(CLIENT_GONE)  # waitress's; None elsewhere (a test's WSGI call)
        body = _StreamBody(self._frames(subscriber, gone), lambda: self._release(subscriber))
        response = Response(app_iter=body, content_type="text/event-stream", charset="utf-8")
        response.headers.update(STREAM_HEADERS)
        return response

    def _frames(self, subscriber: _Subscriber, gone: Callable[[], bool] | None = None) -> Generator[bytes, None, None]:
        """What a stream sends: the reconnection delay at once, the kept events after the id it starts after, then
        each event as it comes and a heartbeat after every ``heartbeat_s`` without one; it ends when ``gone`` says
        its client has left."""
        try:
            yield f"retry: {RECONNECT_MS}\n\n".encode()
            if subscriber.last_id is not None:
                for kept in self._kept_since(subscriber.channels, subscriber.last_id):
                    subscriber.last_id = kept.id
                    yield kept.frame()
            sent_at = time.monotonic()
            while not subscriber.ended:
                wait = self._heartbeat_s - (time.monotonic() - sent_at)
                try:
                    event = subscriber.next(max(0.0, wait if gone is None else min(wait, GONE_CHECK_S)))
                except queue.Empty:
                    if gone is not None and gone():
                        return
                    if time.monotonic() - sent_at >= self._heartbeat_s:
                        sent_at = time.monotonic()
                        yield HEARTBEAT
                    continue
                if event is None:
                    return
                if event.id is not None:
                    # Events come in id order: one no newer than the last was sent already (read with the kept
                    # events, or handed on again by a replay), or is older than what the client has.
                    if subscriber.last_id is not None and event.id <= subscriber.last_id:
                        continue
                    subscriber.last_id = event.id
                sent_at = time.monotonic()
                yield event.frame()
        finally:
            self._release(subscriber)

    def _release(self, subscriber: _Subscriber) -> None:
        with self._lock:
            self._streams.discard(subscriber)

    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def readiness(self) -> dict[str, Any]:
        state: dict[str, Any] = {"engine": self.name, "streams": self.open_streams(), "max_streams": self.max_streams}
        if self._link is not None:
            answers = self._link.answers()
            state["redis"] = "answers" if answers else "unreachable (events reach this process's streams only)"
            if self._listener is None:
                state["fanout"] = "not yet (no stream opened)"
            else:
                state["fanout"] = "subscribed" if self._subscribed.is_set() else "subscribing"
        return state

    def close(self) -> None:
        """End every stream (each sends nothing more, and its thread is free) and stop listening to Redis."""
        with self._lock:
            self._closed = True
            subscribers = list(self._streams)
        for subscriber in subscribers:
            subscriber.end()
        self._stopping.set()
        if self._listener is not None:
            self._listener.join(LISTEN_POLL_S * 4)


def _readable(text: bytes, source: str) -> Event | None:
    """The event ``text`` from Redis holds; None, logged, when it holds none (anyone who can write to Redis may have
    put it there), rather than an error that would end a stream or the listener."""
    try:
        return Event.from_json(text)
    except Exception:
        log.warning(f"events.{source}_unreadable", size=len(text))
        return None


def _last_event_id(request: Request) -> int | None:
    """The id a stream resumes after: ``Last-Event-ID`` (an EventSource reconnecting), else ``last_event_id`` (a new
    ticket's stream); None when neither is a whole number."""
    given = request.headers.get("Last-Event-ID") or request.GET.get(LAST_EVENT_ID_PARAMETER) or ""
    given = given.strip()
    return int(given) if given.isascii() and given.isdigit() else None
