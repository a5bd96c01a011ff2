"""The read cache: Moodle's answers to read functions, kept per group for ``CACHE_TTLS``, shared by replicas in Redis.

The key is the function and its encoded parameters (so a user's notifications are that user's entry), never the
caller's token; authorisation has run before a view asks. Concurrent identical misses make one Moodle call: in one
process the others wait for its answer; across replicas a short lock in Redis does the same. A transport failure
(timeout, refused, reset, HTTP 502/503/504, breaker open, bulkhead full) serves an entry up to ``CACHE_STALE_S``
past its expiry; Moodle's own error answers pass through and nothing failed is kept. ``Cache-Control: no-cache``
forwards a read to Moodle only for a token with the ``cache:refresh`` scope; anyone else is answered from the cache.

Each group has a generation. A write that may have changed a group bumps it once the write has ended, whatever its
outcome (in Redis, so every replica sees it before the write's answer is sent); entries of an older generation are
never served, and an answer fetched before the bump is never stored after it. The function table
(``lms_api.moodle.functions``) says which group keeps a read's answers and which groups a write drops.

With Redis, each process keeps copies of the entries near, served while their group is at the generation they were
stored under and they are fresh. A request reads the generations at its start, along with its rate limit's count:
a hit is that one round trip to Redis, which never carries the answer.

Views hand services :class:`CachedMoodle`, for reads and writes alike: it is where both happen.
"""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.request import Request
from pyramid.tweens import EXCVIEW, INGRESS

from lms_api.cache.cachedmoodle import CachedMoodle
from lms_api.cache.outcomes import CacheOutcome
from lms_api.cache.readcache import ReadCache
from lms_api.cache.redisstore import RedisStore
from lms_api.cache.tween import SAFE_METHODS, FreshAnswer, cache_tween_factory, fresh_answer
from lms_api.moodle.client import MoodleClient
from lms_api.redisstate import read_along
from lms_api.settings import Settings

__all__ = [
    "CacheOutcome",
    "CachedMoodle",
    "FreshAnswer",
    "ReadCache",
    "RedisStore",
    "cache_tween_factory",
]


def includeme(config: Configurator) -> None:
    settings: Settings = config.registry.settings["lms_api.settings"]
    cache = ReadCache.from_settings(settings)
    config.include("lms_api.service_lookup")
    config.register_service(cache, ReadCache)
    if isinstance(cache.store, RedisStore):
        read_along(config.registry).add(cache.generations_read_along(), stamped=cache.store)

    def cached_moodle(context: Any, request: Request) -> CachedMoodle:
        # A write's reads ask Moodle (and refresh what is kept): what a write is checked against, or reads back, is
        # Moodle's state of the moment, not an entry up to a TTL old.
        refresh = request.fresh_answer is FreshAnswer.HONOURED or request.method not in SAFE_METHODS
        return CachedMoodle(request.find_service(MoodleClient), cache, refresh, request.registry.events)

    config.register_service_factory(cached_moodle, CachedMoodle)
    config.add_request_method(fresh_answer, "fresh_answer", reify=True)
    # Under the summary line, which reports Cache-Status, when there is one.
    config.add_tween(
        "lms_api.cache.cache_tween_factory", over=EXCVIEW, under=("lms_api.logging.request_tween_factory", INGRESS)
    )
