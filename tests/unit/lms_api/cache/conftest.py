"""The read cache's pieces on their own: a fake fetch for ReadCache, a clock that moves only when told to, and Redis
stores on a real redis-server (replicas sharing one Redis)."""

import json
import threading
import time

import pytest
import structlog

from lms_api import redisstate
from lms_api.cache import readcache
from lms_api.cache.localstore import LocalStore
from lms_api.cache.readcache import ReadCache
from lms_api.cache.redisstore import RedisStore
from lms_api.calllog import recording_calls
from lms_api.moodle.client import Answer
from lms_api.moodle.errors import MoodleError
from lms_api.moodle.functions import MoodleFunction
from lms_api.redisstate import RedisLink, redis_client
from tests.support.timing import FakeClock, eventually

TTLS = {"siteinfo": 300, "courses": 60, "users": 30, "notifications": 0}
STALE_S = 600
MAX_BYTES = 1024 * 1024
OLD, NEW = {"courses": [{"id": 2, "fullname": "Old name"}]}, {"courses": [{"id": 2, "fullname": "New name"}]}


class FakeMoodle:
    """A fetch for ReadCache.read: counts its calls, raises the queued errors first, then answers ``answer``."""

    def __init__(self, answer=None, *errors):
        self.answer = answer if answer is not None else OLD
        self.errors = list(errors)
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
            error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        return answer_of(self.answer)


def answer_of(value):
    """What MoodleClient.answer gives: the parsed answer and the bytes Moodle sent."""
    return Answer(json.loads(json.dumps(value)), json.dumps(value).encode())


class BlockingMoodle(FakeMoodle):
    """A fetch that holds on until ``release`` is set, so other readers come while it is in flight."""

    def __init__(self, answer=None, *errors):
        super().__init__(answer, *errors)
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self):
        self.entered.set()
        assert self.release.wait(5), "the test never released the fetch"
        return super().__call__()


def moodle_error(code):
    return MoodleError(code, f"failed with {code}")


def read(cache, fetch, function=MoodleFunction.GET_COURSES, params=None, refresh=False):
    """The answer and how the cache got it (the Cache-Status outcome the request would carry)."""
    with recording_calls() as calls:
        answer = cache.read(function, params or {}, fetch, refresh)
    (outcome,) = calls.cache
    return answer, outcome


def read_error(cache, fetch, function=MoodleFunction.GET_COURSES, params=None):
    with recording_calls() as calls, pytest.raises(MoodleError) as raised:
        cache.read(function, params or {}, fetch)
    (outcome,) = calls.cache
    return raised.value, outcome


def in_threads(count, target):
    """Run ``target(n)`` in ``count`` threads let go at once; answers (or errors) by thread number."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(n):
        barrier.wait()
        try:
            results[n] = target(n)
        except Exception as error:
            results[n] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def wait_for_waiters(cache, count):
    """Until ``count`` readers wait on this process's fetch in flight (each is one waiter of its done event)."""
    eventually(
        lambda: sum(len(flight.done._cond._waiters) for flight in list(cache._flights.values())) >= count,
        f"{count} readers waiting on the fetch in flight",
    )


def redis_store(url, clock, link_clock):
    return RedisStore(
        RedisLink(redis_client(url), "cache", "kept in the process", clock=link_clock), LocalStore(MAX_BYTES, clock)
    )


def make_read_cache(store, clock, wait_s=2.0, ttls=TTLS):
    return ReadCache(store, ttls, STALE_S, wait_s, clock=clock)


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
