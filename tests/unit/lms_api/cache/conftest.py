"""Fixtures of the read cache's tests: clocks that move only when told to, caches of one process (in memory or on
Redis) and replicas sharing one Redis, and loggers of the test's own."""

import time

import pytest
import structlog

from lms_api import redisstate
from lms_api.cache import readcache
from lms_api.cache.localstore import LocalStore
from tests.support.timing import FakeClock
from tests.unit.lms_api.cache.support import MAX_BYTES, make_read_cache, redis_store


@pytest.fixture(autouse=True)
def _loggers_of_this_test(monkeypatch):
    """structlog keeps a module's logger on first use with the logging set-up of that moment; one kept while another
    test's gateway was set up would not reach ``capture_logs``. Each test gets its own, dropped after it."""
    monkeypatch.setattr(readcache, "log", structlog.get_logger("lms_api.cache"))
    monkeypatch.setattr(redisstate, "log", structlog.get_logger("lms_api.redis"))


@pytest.fixture
def clock():
    # Wall-clock seconds: Redis expires entries by the real time, so entries must be dated near it.
    clock = FakeClock()
    clock.now = float(int(time.time()))  # whole seconds: the steps below add up exactly
    return clock


@pytest.fixture
def link_clock():
    """When a RedisLink tries Redis again after a failure (monotonic seconds)."""
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def make_cache(request, clock, link_clock):
    """Caches of one process, each with its own store (``memory``) or all on one Redis (``redis``, replicas)."""
    if request.param == "memory":
        return lambda wait_s=2.0: make_read_cache(LocalStore(MAX_BYTES, clock), clock, wait_s)
    url = request.getfixturevalue("empty_redis")
    return lambda wait_s=2.0: make_read_cache(redis_store(url, clock, link_clock), clock, wait_s)


@pytest.fixture
def replicas(empty_redis, clock, link_clock):
    """Two processes' caches on one Redis, each with its own fallback."""
    return [make_read_cache(redis_store(empty_redis, clock, link_clock), clock) for _ in range(2)]
