"""What the read cache's tests build it from: a fake fetch for ReadCache and one that blocks, reads and their threads
(and which of them wait on an event), Redis stores on a real redis-server (replicas sharing one Redis), the TTLs
and sizes they are made with, requests that read the generations along with their rate limit's count, and the round
trips a thread makes to Redis."""

import functools
import json
import sys
import threading
import uuid
from contextlib import contextmanager

import pytest
import redis

from lms_api.cache.localstore import LocalStore
from lms_api.cache.readcache import ReadCache, expiring_generations
from lms_api.cache.redisstore import RedisStore
from lms_api.calllog import recording_calls
from lms_api.moodle.client import Answer
from lms_api.moodle.errors import MoodleError
from lms_api.moodle.functions import MoodleFunction
from lms_api.ratelimit import RedisCounter
from lms_api.redisstate import ReadAlong, RedisLink, redis_client, taking_snapshot
from lms_api.settings import Rate
from tests.support.timing import eventually

TTLS = {"siteinfo": 300, "courses": 60, "users": 30, "notifications": 0}
STALE_S = 600
MAX_BYTES = 1024 * 1024
PARSED_MAX_BYTES = MAX_BYTES // 8
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


def in_threads(count, target, profile=None):
    """Run ``target(n)`` in ``count`` threads let go at once; answers (or errors) by thread number. ``profile`` is set
    as each thread's profile function (``sys.setprofile``)."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(n):
        sys.setprofile(profile)
        barrier.wait()
        try:
            results[n] = target(n)
        except Exception as error:
            results[n] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


class EventWaits:
    """Counts the calls to ``threading.Event.wait`` made in the threads it profiles (``in_threads(profile=...)``), on
    any event but the test's own ``ignored`` ones: a reader that waits for a fetch in flight has called it on that
    fetch's event, which answers at once if the fetch is already over; one that has not is still on its way there."""

    def __init__(self, *ignored):
        self._ignored = ignored
        self._calls = 0
        self._lock = threading.Lock()

    def profile(self, frame, event, arg):
        if event != "call" or frame.f_code is not threading.Event.wait.__code__:
            return
        if not any(frame.f_locals["self"] is ignored for ignored in self._ignored):
            with self._lock:
                self._calls += 1

    def wait_for(self, count):
        """Until ``count`` readers wait on a fetch in flight."""
        eventually(lambda: self._calls >= count, f"{count} readers waiting on the fetch in flight")


def redis_store(url, clock, link_clock, ttls=TTLS):
    link = RedisLink(redis_client(url), "cache", "kept in the process", clock=link_clock)
    return RedisStore(link, LocalStore(MAX_BYTES, clock), expiring_generations(ttls, STALE_S))


def make_read_cache(store, clock, wait_s=2.0, ttls=TTLS):
    return ReadCache(store, ttls, STALE_S, wait_s, PARSED_MAX_BYTES, clock=clock)


@contextmanager
def in_request(cache, url):
    """A request to ``cache``'s process: its rate limit counted in Redis at ``url``, which reads the generations
    along, as the gateway's tween does for the request's handling."""
    along = ReadAlong()
    along.add(cache.generations_read_along(), stamped=cache.store)
    decision, snapshot = _counter(url).hit_reading(f"test:{uuid.uuid4().hex}", Rate(1000, 60), along)
    assert decision.allowed and snapshot is not None
    with taking_snapshot(snapshot):
        yield


@functools.cache
def _counter(url):
    """One counter per Redis, as one gateway has: its connection made once."""
    return RedisCounter.from_url(url)


class RedisRoundTrips:
    """The round trips this thread makes to Redis, through any client: each as the commands it sent, decoded."""

    def __init__(self, monkeypatch):
        self.trips = []
        thread = threading.get_ident()
        send = redis.connection.AbstractConnection.send_packed_command

        def counted(connection, command, check_health=True):
            if threading.get_ident() == thread:
                self.trips.append(_commands(b"".join(command) if isinstance(command, list) else command))
            return send(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)

    @contextmanager
    def counting(self):
        """The trips made in the block (a list, complete once it ends)."""
        start = len(self.trips)
        made = []
        yield made
        made.extend(self.trips[start:])

    def reads_entries(self, trips):
        """Whether any of ``trips`` named an entry's key (its answer), not only generations or counts."""
        names = [arg for trip in trips for command in trip for arg in command[1:]]
        return any(name.startswith(b"lms_api:cache:") and b":generation:" not in name for name in names)


def _commands(packed):
    """The commands of a request in Redis's protocol (RESP arrays of bulk strings), each as its arguments."""
    commands, at = [], 0
    while at < len(packed):
        end = packed.index(b"\r\n", at)
        assert packed[at : at + 1] == b"*", packed
        count, at, args = int(packed[at + 1 : end]), end + 2, []
        for _ in range(count):
            end = packed.index(b"\r\n", at)
            length = int(packed[at + 1 : end])
            args.append(packed[end + 2 : end + 2 + length])
            at = end + 2 + length + 2
        commands.append(args)
    return commands
