"""Rate limits per caller: budgets for reads, writes and unauthenticated requests, in-process or shared in Redis.

A window starts at a caller's first request and lasts the rate's period; the count resets when it ends. With
``REDIS_URL`` every gateway replica counts in the same Redis keys, so N replicas enforce one budget. If Redis
goes away the gateway keeps serving with in-process counters, says so once in the log, and goes back to Redis
once it answers again.

The count's round trip also reads the Redis keys other concerns registered (:class:`~lms_api.redisstate.ReadAlong`:
the read cache's generations), for the request's snapshot: a cached read then asks Redis nothing more.

Counted here, not with the ``limits`` package: its limiters answer allowed or not, so the ``RateLimit-*`` headers
would take two more Redis round trips per request (and read a count other replicas may have moved meanwhile); it
has no fallback from one storage to another; and its in-process storage runs on the wall clock, keeps every key
until it expires and starts a timer thread every 10 ms while it holds any.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Protocol

import redis
import structlog
from pyramid.config import Configurator
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.tweens import EXCVIEW

from lms_api.caller import client_address
from lms_api.errors import ApiError, ErrorCode
from lms_api.redisstate import ReadAlong, RedisLink, Snapshot, read_along, redis_client, taking_snapshot
from lms_api.routes import is_api_request
from lms_api.security import Scope
from lms_api.settings import Rate, Settings

log = structlog.get_logger("lms_api.ratelimit")

READ_METHODS = frozenset({"GET", "HEAD"})
REFUSED_BUDGET = "lms_api.refused_budget"  # in the WSGI environ of a refused request: read, write or unauthenticated
KEY_PREFIX = "lms_api:ratelimit:"
MAX_LOCAL_KEYS = 100_000

# INCR, and start the window's clock on the first hit: atomic, so replicas never lose a count. The keys after the
# first are read along, at the same instant.
_REDIS_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
if #KEYS == 1 then return {count, ttl} end
return {count, ttl, redis.call('MGET', unpack(KEYS, 2))}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # until the window ends

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_s)
        return headers


def _decision(count: int, rate: Rate, remaining_ms: float) -> Decision:
    reset_s = max(1, math.ceil(remaining_ms / 1000))
    return Decision(count <= rate.count, rate.count, max(0, rate.count - count), reset_s)


_NOTHING_ALONG = ReadAlong()


class Counter(Protocol):
    def hit(self, key: str, rate: Rate) -> Decision: ...

    def hit_reading(self, key: str, rate: Rate, along: ReadAlong) -> tuple[Decision, Snapshot | None]:
        """``hit``, and the values of the Redis keys ``along`` read in the same round trip, with the stamps of its
        concerns taken just before it (None: not read)."""
        ...


class LocalCounter:
    """Counts in this process only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window end, count)
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def hit(self, key: str, rate: Rate) -> Decision:
        now = self._clock()
        with self._lock:
            if now >= self._next_sweep or len(self._windows) >= MAX_LOCAL_KEYS:
                self._sweep(now)
            ends, count = self._windows.get(key, (0.0, 0))
            if now >= ends:
                ends, count = now + rate.period_s, 0
            count += 1
            self._windows[key] = (ends, count)
        return _decision(count, rate, (ends - now) * 1000)

    def hit_reading(self, key: str, rate: Rate, along: ReadAlong) -> tuple[Decision, Snapshot | None]:
        return self.hit(key, rate), None

    def _sweep(self, now: float) -> None:
        """Forget ended windows; past MAX_LOCAL_KEYS also the half nearest to ending, so memory stays bounded."""
        self._windows = {key: window for key, window in self._windows.items() if window[0] > now}
        if len(self._windows) >= MAX_LOCAL_KEYS:
            keep = sorted(self._windows.items(), key=lambda item: item[1][0])[MAX_LOCAL_KEYS // 2 :]
            self._windows = dict(keep)
        self._next_sweep = now + 60


class RedisCounter:
    """Counts in Redis, shared by every replica; falls back to ``fallback`` while Redis is unreachable."""

    def __init__(self, link: RedisLink, fallback: LocalCounter) -> None:
        self.link = link
        self._script = link.client.register_script(_REDIS_HIT)
        self._fallback = fallback

    @classmethod
    def from_url(cls, url: str) -> RedisCounter:
        link = RedisLink(
            redis_client(url), "ratelimit", "rate limits are counted per process until Redis answers again"
        )
        return cls(link, LocalCounter())

    def hit(self, key: str, rate: Rate) -> Decision:
        return self.hit_reading(key, rate, _NOTHING_ALONG)[0]

    def hit_reading(self, key: str, rate: Rate, along: ReadAlong) -> tuple[Decision, Snapshot | None]:
        if not self.link.usable:
            return self._fallback.hit(key, rate), None
        stamps = along.stamps()
        try:
            count, ttl_ms, *read = self._script(keys=[KEY_PREFIX + key, *along.keys], args=[rate.period_s * 1000])
        except redis.RedisError as error:
            self.link.went_down(error)
            return self._fallback.hit(key, rate), None
        self.link.answered()
        snapshot = Snapshot(zip(along.keys, read[0] if read else (), strict=True), stamps)
        return _decision(int(count), rate, float(ttl_ms)), snapshot


def counter_from_settings(settings: Settings) -> Counter:
    return RedisCounter.from_url(settings.redis_url) if settings.redis_url else LocalCounter()


def _address_key(address: str) -> str:
    """IPv6 callers are counted per /64: one end site holds a whole /64 and could rotate through it."""
    try:
        parsed = ip_address(address)
    except ValueError:
        return address
    return str(ip_network(f"{parsed}/64", strict=False)) if parsed.version == 6 else address


def rate_limit_tween_factory(
    handler: Callable[[Request], Response], registry: Registry
) -> Callable[[Request], Response]:
    """429 ``ratelimited`` over budget; the ``RateLimit-*`` headers on every API answer, errors included."""
    settings: Settings = registry.settings["lms_api.settings"]
    counter: Counter = registry.rate_counter
    along = read_along(registry)

    def tween(request: Request) -> Response:
        if not is_api_request(request):
            return handler(request)
        identity = request.identity
        own_credentials = request.path_info in registry.path_credentials  # never a JWT's identity there
        if own_credentials and identity is not None and identity.scopes == {Scope.MOODLE_EVENTS}:
            # Moodle's own deliveries, by its webhook's secret: a cron run of Event Trigger flushes its queue at once,
            # and a refused delivery is only retried on a later run. Unauthenticated posts count as any others.
            return handler(request)
        if identity is None:
            budget, key, rate = (
                "unauthenticated",
                "anon:" + _address_key(client_address(request, settings.trusted_proxies)),
                settings.rate_limit_unauthenticated,
            )
        elif request.method in READ_METHODS:
            budget, key, rate = "read", "read:" + identity.sub, settings.rate_limit_read
        else:
            budget, key, rate = "write", "write:" + identity.sub, settings.rate_limit_write
        decision, snapshot = counter.hit_reading(key, rate, along)
        if decision.allowed:
            with taking_snapshot(snapshot):
                response = handler(request)
        else:
            request.environ[REFUSED_BUDGET] = budget
            refusal = ApiError(
                ErrorCode.RATE_LIMITED,
                f"Too many requests: the budget is {rate.count} per {rate.period_s} s; retry in {decision.reset_s} s",
                {"limit": rate.count, "period_s": rate.period_s, "retry_after_s": decision.reset_s},
            )
            # Over the exception view tween: its views are asked here, so the envelope is theirs as for any error.
            response = request.invoke_exception_view((type(refusal), refusal, None))
        response.headers.update(decision.headers())
        return response

    return tween


def includeme(config: Configurator) -> None:
    config.registry.rate_counter = counter_from_settings(config.registry.settings["lms_api.settings"])
    config.add_tween(
        "lms_api.ratelimit.rate_limit_tween_factory", over=EXCVIEW, under="lms_api.audit.audit_tween_factory"
    )
