"""The read cache on its own: the in-process store, entries, Cache-Status, ReadCache with a fake fetch and a clock
that moves only when told to, and the Redis store against a real redis-server (replicas sharing it, Redis going
away and coming back)."""

import json
import threading
import time

import pytest
import redis
import structlog
from structlog.testing import capture_logs

from lms_api import cache as cache_module
from lms_api import redisstate
from lms_api.cache import (
    ENTRY_OVERHEAD_BYTES,
    KEY_PREFIX,
    MAX_DERIVED,
    CacheOutcome,
    Entry,
    Fetch,
    LocalStore,
    ReadCache,
    RedisStore,
    request_outcome,
)
from lms_api.calllog import recording_calls
from lms_api.errors import ErrorCode
from lms_api.moodle.client import Answer
from lms_api.moodle.errors import MoodleError
from lms_api.redisstate import RETRY_AFTER_S, RedisLink, redis_client
from tests.conftest import FakeClock, eventually, free_port, join, settings_for, start_redis_server

GET_COURSES = "core_course_get_courses"
GET_COURSES_BY_FIELD = "core_course_get_courses_by_field"
SITE_INFO = "core_webservice_get_site_info"
NOTIFICATIONS = "message_popup_get_popup_notifications"
CREATE_COURSES = "core_course_create_courses"
UPDATE_COURSES = "core_course_update_courses"
ENROL = "enrol_manual_enrol_users"
TTLS = {"siteinfo": 300, "courses": 60, "users": 30, "notifications": 0}
STALE_S = 600
MAX_BYTES = 1024 * 1024
TRANSPORT_CODES = [
    ErrorCode.MOODLE_TIMEOUT,
    ErrorCode.MOODLE_UNAVAILABLE,
    ErrorCode.BAD_GATEWAY,
    ErrorCode.MOODLE_BUSY,
]
# Moodle's own answers (and an answer the gateway could not read): Moodle was reached, so nothing is hidden.
ANSWER_CODES = ["invalidparameter", "sitemaintenance", "invalidtoken", ErrorCode.BAD_RESPONSE]
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


def read(cache, fetch, function=GET_COURSES, params=None, refresh=False):
    """The answer and how the cache got it (the Cache-Status outcome the request would carry)."""
    with recording_calls() as calls:
        answer = cache.read(function, params or {}, fetch, refresh)
    (outcome,) = calls.cache
    return answer, outcome


def read_error(cache, fetch, function=GET_COURSES, params=None):
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


def release_once_waiting_on_the_lock(replica, fetch):
    """Let ``fetch`` (another replica's, holding the key's lock) finish once ``replica`` waits on that lock."""
    locked = replica.store.locked

    def checked_then_released(key):
        held = locked(key)
        fetch.release.set()
        return held

    replica.store.locked = checked_then_released


@pytest.fixture(autouse=True)
def _loggers_of_this_test(monkeypatch):
    """structlog keeps a module's logger on first use with the logging set-up of that moment; one kept while another
    test's gateway was set up would not reach ``capture_logs``. Each test gets its own, dropped after it."""
    monkeypatch.setattr(cache_module, "log", structlog.get_logger("lms_api.cache"))
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


def redis_store(url, clock, link_clock):
    return RedisStore(
        RedisLink(redis_client(url), "cache", "kept in the process", clock=link_clock), LocalStore(MAX_BYTES, clock)
    )


def make_read_cache(store, clock, wait_s=2.0):
    return ReadCache(store, TTLS, STALE_S, wait_s, clock=clock)


@pytest.fixture(params=["memory", "redis"])
def make_cache(request, clock, link_clock):
    """Caches of one process, each with its own store (``memory``) or all on one Redis (``redis``, replicas)."""
    if request.param == "memory":
        return lambda wait_s=2.0: make_read_cache(LocalStore(MAX_BYTES, clock), clock, wait_s)
    url = request.getfixturevalue("empty_redis")
    return lambda wait_s=2.0: make_read_cache(redis_store(url, clock, link_clock), clock, wait_s)


# -- the in-process store --------------------------------------------------------------------------


def entry(body=b"{}", generation=0, fresh_until=1060.0, stale_until=1660.0):
    return Entry(generation, body, fresh_until, stale_until)


def size_of(key, body):
    return len(body) + len(key) + ENTRY_OVERHEAD_BYTES


def test_the_local_store_stays_within_its_bytes_dropping_the_least_recently_used_first():
    body = b"x" * 100
    store = LocalStore(3 * size_of("k1", body), FakeClock())
    for key in ("k1", "k2", "k3"):
        store.put("courses", key, entry(body))
    assert store.get("courses", "k1")[1] is not None  # k1 is now the most recently used

    store.put("courses", "k4", entry(body))

    assert store.get("courses", "k2") == (0, None)
    assert all(store.get("courses", key)[1] is not None for key in ("k1", "k3", "k4"))
    assert store.size_bytes == 3 * size_of("k1", body)


def test_an_entry_bigger_than_the_whole_store_is_not_kept_and_pushes_nothing_out():
    store = LocalStore(1000, FakeClock())
    store.put("courses", "small", entry(b"s"))

    store.put("courses", "huge", entry(b"h" * 1000))

    assert store.get("courses", "huge") == (0, None)
    assert store.get("courses", "small")[1] == entry(b"s")
    assert store.size_bytes == size_of("small", b"s")


def test_storing_a_key_again_replaces_its_entry_without_counting_it_twice():
    store = LocalStore(MAX_BYTES, FakeClock())
    for n in range(5):
        store.put("courses", "k", entry(b"%d" % n))

    assert store.get("courses", "k")[1].body == b"4"
    assert store.size_bytes == size_of("k", b"4")


def test_invalidating_a_group_hides_its_entries_and_refuses_answers_fetched_before():
    store = LocalStore(MAX_BYTES, FakeClock())
    store.put("courses", "course", entry(b"old"))
    store.put("siteinfo", "info", entry(b"info"))

    store.invalidate("courses")

    assert store.get("courses", "course") == (1, None)
    store.put("courses", "course", entry(b"fetched before the write", generation=0))
    assert store.get("courses", "course") == (1, None)
    store.put("courses", "course", entry(b"fetched after", generation=1))
    assert store.get("courses", "course")[1].body == b"fetched after"
    assert store.get("siteinfo", "info")[1].body == b"info"  # another group keeps its entries


def test_an_entry_past_its_stale_time_is_gone_and_its_bytes_freed():
    clock = FakeClock()
    store = LocalStore(MAX_BYTES, clock)
    store.put("courses", "k", entry(fresh_until=1060.0, stale_until=1660.0))
    clock.advance(659)
    assert store.get("courses", "k")[1] is not None  # stale but still within the window

    clock.advance(2)

    assert store.get("courses", "k") == (0, None)
    assert store.size_bytes == 0


# -- entries and Cache-Status ----------------------------------------------------------------------


def test_an_entry_survives_encoding_with_line_breaks_and_utf8_in_its_body():
    original = Entry(41, '{"name":"Caf\u00e9\\n"}\n{"second":"line"}'.encode(), 1712345678.123456, 1712346278.987654)

    assert Entry.decode(original.encode()) == original


@pytest.mark.parametrize(
    ("outcome", "header"),
    [
        (CacheOutcome(Fetch.HIT, 42), "lms_api; hit; ttl=42"),
        (CacheOutcome(Fetch.STALE, -30), "lms_api; hit; ttl=-30; detail=stale-if-error"),
        (CacheOutcome(Fetch.COLLAPSED), "lms_api; fwd=uri-miss; collapsed"),
        (CacheOutcome(Fetch.MISS, stored=True), "lms_api; fwd=uri-miss; stored"),
        (CacheOutcome(Fetch.MISS), "lms_api; fwd=uri-miss"),
        (CacheOutcome(Fetch.REFRESH, stored=True), "lms_api; fwd=request; stored"),
        (CacheOutcome(Fetch.REFRESH), "lms_api; fwd=request"),
    ],
)
def test_each_outcome_has_its_rfc_9211_member(outcome, header):
    assert outcome.header() == header


@pytest.mark.parametrize(
    ("outcomes", "header"),
    [
        ([CacheOutcome(Fetch.HIT, 50), CacheOutcome(Fetch.HIT, 20)], "lms_api; hit; ttl=20"),
        ([CacheOutcome(Fetch.HIT, 50), CacheOutcome(Fetch.MISS, stored=True)], "lms_api; fwd=uri-miss; stored"),
        ([CacheOutcome(Fetch.COLLAPSED), CacheOutcome(Fetch.HIT, 5)], "lms_api; fwd=uri-miss; collapsed"),
        ([CacheOutcome(Fetch.MISS, stored=True), CacheOutcome(Fetch.MISS)], "lms_api; fwd=uri-miss"),
        ([CacheOutcome(Fetch.HIT, 9), CacheOutcome(Fetch.REFRESH, stored=True)], "lms_api; fwd=request; stored"),
        (
            [CacheOutcome(Fetch.STALE, -5), CacheOutcome(Fetch.STALE, -40), CacheOutcome(Fetch.MISS, stored=True)],
            "lms_api; hit; ttl=-40; detail=stale-if-error",
        ),
    ],
)
def test_a_request_of_several_cached_calls_reports_its_least_cached_one(outcomes, header):
    outcome = request_outcome(outcomes)

    assert outcome is not None and outcome.header() == header


@pytest.mark.parametrize(
    ("outcome", "header"),
    [
        (CacheOutcome(Fetch.HIT, 42), "lms_api; hit; ttl=42; detail=no-cache-ignored"),
        # The others reached Moodle, or waited for a call that did, or Moodle failed: no-cache changed nothing there
        (CacheOutcome(Fetch.STALE, -30), "lms_api; hit; ttl=-30; detail=stale-if-error"),
        (CacheOutcome(Fetch.COLLAPSED), "lms_api; fwd=uri-miss; collapsed"),
        (CacheOutcome(Fetch.MISS, stored=True), "lms_api; fwd=uri-miss; stored"),
    ],
)
def test_a_hit_says_when_the_requests_no_cache_was_not_honoured(outcome, header):
    assert outcome.header(no_cache_ignored=True) == header


def test_a_request_without_cached_calls_has_no_outcome():
    assert request_outcome([]) is None


# -- ReadCache -------------------------------------------------------------------------------------


def test_which_functions_are_cached_follows_the_group_ttls(clock):
    cache = ReadCache(LocalStore(MAX_BYTES, clock), {**TTLS, "users": 0}, STALE_S, 1.0, clock=clock)

    assert cache.caches(GET_COURSES) and cache.caches(SITE_INFO)
    assert not cache.caches("core_user_get_users_by_field")  # its group's TTL is 0
    assert not cache.caches(NOTIFICATIONS)  # off by default
    assert not cache.caches(CREATE_COURSES) and not cache.caches("no_such_function")


def test_the_settings_make_an_in_process_cache_bounded_by_cache_max_mb():
    cache = ReadCache.from_settings(settings_for("http://127.0.0.1:9", "token", CACHE_MAX_MB="1"))
    too_big = FakeMoodle({"courses": ["x" * (1024 * 1024)]})
    fits = FakeMoodle({"courses": ["x" * (512 * 1024)]})

    assert isinstance(cache.store, LocalStore)
    assert [read(cache, too_big, params={"n": 1})[1].fetch for _ in range(2)] == [Fetch.MISS, Fetch.MISS]
    assert [read(cache, fits, params={"n": 2})[1].fetch for _ in range(2)] == [Fetch.MISS, Fetch.HIT]


def test_the_settings_make_a_redis_cache_with_redis_url(empty_redis):
    cache = ReadCache.from_settings(settings_for("http://127.0.0.1:9", "token", REDIS_URL=empty_redis))
    read(cache, FakeMoodle(OLD))

    assert isinstance(cache.store, RedisStore)
    assert redis.Redis.from_url(empty_redis).keys(KEY_PREFIX + "courses:*") != []


def test_a_miss_is_fetched_and_stored_then_hits_count_down_until_it_expires(make_cache, clock):
    cache, moodle = make_cache(), FakeMoodle(OLD)

    assert read(cache, moodle) == (OLD, CacheOutcome(Fetch.MISS, stored=True))
    assert read(cache, moodle) == (OLD, CacheOutcome(Fetch.HIT, 60))
    clock.advance(45.5)
    assert read(cache, moodle) == (OLD, CacheOutcome(Fetch.HIT, 15))
    assert moodle.calls == 1

    clock.advance(14.5)  # exactly at expiry: no longer fresh

    assert read(cache, moodle) == (OLD, CacheOutcome(Fetch.MISS, stored=True))
    assert moodle.calls == 2


def test_the_key_is_the_function_and_its_parameters(make_cache):
    cache = make_cache()
    read(cache, FakeMoodle({"course": 2}), GET_COURSES_BY_FIELD, {"field": "id", "value": "2"})
    three = FakeMoodle({"course": 3})
    listing = FakeMoodle({"courses": []})

    assert read(cache, three, GET_COURSES_BY_FIELD, {"field": "id", "value": "3"})[0] == {"course": 3}
    assert read(cache, listing, GET_COURSES, {"field": "id", "value": "2"})[0] == {"courses": []}
    assert (three.calls, listing.calls) == (1, 1)


def test_each_users_notifications_are_that_users_entry(clock):
    cache = ReadCache(LocalStore(MAX_BYTES, clock), {**TTLS, "notifications": 30}, STALE_S, 1.0, clock=clock)
    read(cache, FakeMoodle({"notifications": ["for user 3"]}), NOTIFICATIONS, {"useridto": 3, "limit": 20})
    other_user = FakeMoodle({"notifications": []})

    answer, outcome = read(cache, other_user, NOTIFICATIONS, {"useridto": 4, "limit": 20})

    assert answer == {"notifications": []} and outcome.fetch == Fetch.MISS and other_user.calls == 1


def test_a_refresh_forwards_even_when_fresh_and_keeps_the_new_answer(make_cache):
    cache = make_cache()
    read(cache, FakeMoodle(OLD))
    moodle = FakeMoodle(NEW)

    assert read(cache, moodle, refresh=True) == (NEW, CacheOutcome(Fetch.REFRESH, stored=True))
    assert read(cache, moodle) == (NEW, CacheOutcome(Fetch.HIT, 60))
    assert moodle.calls == 1


@pytest.mark.parametrize("code", TRANSPORT_CODES)
def test_a_transport_failure_serves_the_expired_entry_within_the_stale_window(make_cache, clock, code):
    cache = make_cache()
    read(cache, FakeMoodle(OLD))
    clock.advance(60 + 29.5)
    moodle = FakeMoodle(NEW, moodle_error(code))

    with capture_logs() as logs:
        answer, outcome = read(cache, moodle)

    assert (answer, outcome) == (OLD, CacheOutcome(Fetch.STALE, -30))
    assert moodle.calls == 1  # Moodle was tried first
    assert [line["event"] for line in logs] == ["cache.stale_served"]
    # Serving stale made nothing fresh: the next read tries Moodle again and keeps its answer.
    assert read(cache, moodle) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


@pytest.mark.parametrize("code", TRANSPORT_CODES[:2])
def test_past_the_stale_window_a_transport_failure_is_the_answer(make_cache, clock, code):
    cache = make_cache()
    read(cache, FakeMoodle(OLD))
    clock.advance(60 + STALE_S + 0.5)

    error, outcome = read_error(cache, FakeMoodle(NEW, moodle_error(code)))

    assert error.code == code
    assert outcome == CacheOutcome(Fetch.MISS)


@pytest.mark.parametrize("code", ANSWER_CODES)
def test_moodles_own_error_answers_are_never_hidden_by_a_stale_entry(make_cache, clock, code):
    cache = make_cache()
    read(cache, FakeMoodle(OLD))
    clock.advance(61)

    error, outcome = read_error(cache, FakeMoodle(NEW, moodle_error(code)))

    assert error.code == code
    assert outcome == CacheOutcome(Fetch.MISS)


@pytest.mark.parametrize("code", [*TRANSPORT_CODES[:1], *ANSWER_CODES[:1]])
def test_errors_are_never_cached(make_cache, code):
    cache = make_cache()
    moodle = FakeMoodle(NEW, moodle_error(code))

    assert read_error(cache, moodle)[1] == CacheOutcome(Fetch.MISS)  # not stored
    assert read(cache, moodle) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert read(cache, moodle)[1].fetch == Fetch.HIT
    assert moodle.calls == 2


def test_a_write_drops_its_groups_and_nothing_else(make_cache):
    cache = make_cache()
    read(cache, FakeMoodle(OLD))
    read(cache, FakeMoodle({"sitename": "Moodle"}), SITE_INFO)

    cache.invalidate_after(ENROL)  # enrolments change nothing the cache keeps
    assert read(cache, FakeMoodle(NEW))[1].fetch == Fetch.HIT

    cache.invalidate_after(UPDATE_COURSES)
    assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert read(cache, FakeMoodle(), SITE_INFO)[1].fetch == Fetch.HIT

    cache.invalidate_after(CREATE_COURSES)
    assert read(cache, FakeMoodle(OLD))[1].fetch == Fetch.MISS


def test_an_answer_fetched_while_a_write_lands_is_passed_on_but_never_stored(make_cache):
    cache = make_cache()

    class WriteDuringFetch(FakeMoodle):
        def __call__(self):
            answer = super().__call__()  # Moodle answered before the write was applied...
            cache.invalidate_after(UPDATE_COURSES)  # ...whose answer left before this fetch is stored
            return answer

    assert read(cache, WriteDuringFetch(OLD))[0] == OLD
    after = FakeMoodle(NEW)
    assert read(cache, after) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert after.calls == 1


def test_after_a_write_the_old_entry_is_not_served_even_as_stale(make_cache, clock):
    cache = make_cache()
    read(cache, FakeMoodle(OLD))
    cache.invalidate_after(UPDATE_COURSES)
    clock.advance(61)

    error, _ = read_error(cache, FakeMoodle(NEW, moodle_error(ErrorCode.MOODLE_UNAVAILABLE)))

    assert error.code == ErrorCode.MOODLE_UNAVAILABLE


def test_an_answer_fetched_outside_a_request_is_kept_for_the_next_read(make_cache):
    cache = make_cache()
    cache.invalidate_after(UPDATE_COURSES)  # kept under the group's generation of now

    cache.store_answer(GET_COURSES, {}, answer_of(NEW))
    cache.store_answer(NOTIFICATIONS, {"useridto": 3}, answer_of({"notifications": ["not cached: TTL 0"]}))

    assert read(cache, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, 60))
    assert read(cache, FakeMoodle({"notifications": []}), NOTIFICATIONS, {"useridto": 3})[1].fetch == Fetch.MISS


# -- one fetch for concurrent misses ---------------------------------------------------------------


def test_concurrent_identical_misses_make_one_fetch_and_the_others_wait_for_it(make_cache):
    cache, moodle = make_cache(), BlockingMoodle(OLD)

    threads, results = in_threads(10, lambda n: read(cache, moodle))
    assert moodle.entered.wait(5)
    wait_for_waiters(cache, 9)
    moodle.release.set()
    join(threads)

    assert moodle.calls == 1
    assert all(answer == OLD for answer, _ in results)
    assert sorted(outcome.header() for _, outcome in results) == [
        *["lms_api; fwd=uri-miss; collapsed"] * 9,
        "lms_api; fwd=uri-miss; stored",
    ]


def test_a_fetch_in_flight_holds_up_no_read_of_another_key(clock):
    cache, hung = make_read_cache(LocalStore(MAX_BYTES, clock), clock), BlockingMoodle(OLD)
    threads, _ = in_threads(1, lambda n: read(cache, hung, GET_COURSES_BY_FIELD, {"field": "id", "value": "2"}))
    assert hung.entered.wait(5)
    other = FakeMoodle(NEW)

    answer, outcome = read(cache, other, GET_COURSES_BY_FIELD, {"field": "id", "value": "3"})

    assert (answer, outcome.fetch, other.calls) == (NEW, Fetch.MISS, 1)
    hung.release.set()
    join(threads)


def test_the_waiters_share_the_fetch_error_and_nothing_is_kept(clock):
    cache = make_read_cache(LocalStore(MAX_BYTES, clock), clock)
    moodle = BlockingMoodle(NEW, moodle_error(ErrorCode.MOODLE_UNAVAILABLE))

    threads, results = in_threads(5, lambda n: read(cache, moodle))
    assert moodle.entered.wait(5)
    wait_for_waiters(cache, 4)
    moodle.release.set()
    join(threads)

    assert moodle.calls == 1
    assert [getattr(result, "code", None) for result in results] == [ErrorCode.MOODLE_UNAVAILABLE] * 5
    assert read(cache, moodle) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


def test_a_waiter_fetches_itself_once_the_fetch_it_waits_for_outlasts_a_calls_deadline(clock):
    cache = make_read_cache(LocalStore(MAX_BYTES, clock), clock, wait_s=0.1)
    hung = BlockingMoodle(OLD)
    threads, _ = in_threads(1, lambda n: read(cache, hung))
    assert hung.entered.wait(5)
    own = FakeMoodle(NEW)

    started = time.monotonic()
    answer, outcome = read(cache, own)

    assert (answer, outcome.fetch, own.calls) == (NEW, Fetch.MISS, 1)
    assert time.monotonic() - started < 2
    hung.release.set()
    join(threads)


def test_a_read_that_starts_after_a_write_does_not_wait_for_a_fetch_that_started_before_it(make_cache):
    cache, before_write = make_cache(), BlockingMoodle(OLD)
    first, first_result = in_threads(1, lambda n: read(cache, before_write))
    assert before_write.entered.wait(5)
    cache.invalidate_after(UPDATE_COURSES)  # the write's answer has left: any read from now on must see it
    after_write = FakeMoodle(NEW)

    second, second_result = in_threads(1, lambda n: read(cache, after_write))
    join(second)  # done while the fetch from before the write is still held: it did not wait for it
    before_write.release.set()
    join(first)

    assert first_result[0][0] == OLD
    assert second_result[0] == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert read(cache, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, 60))


# -- Redis: shared by replicas ---------------------------------------------------------------------


@pytest.fixture
def replicas(empty_redis, clock, link_clock):
    """Two processes' caches on one Redis, each with its own fallback."""
    return [make_read_cache(redis_store(empty_redis, clock, link_clock), clock) for _ in range(2)]


def test_an_entry_stored_by_one_replica_is_a_hit_on_another_and_a_write_on_either_drops_it(replicas):
    first, second = replicas
    read(first, FakeMoodle(OLD))
    moodle = FakeMoodle(NEW)

    assert read(second, moodle) == (OLD, CacheOutcome(Fetch.HIT, 60))
    first.invalidate_after(UPDATE_COURSES)
    assert read(second, moodle) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert read(first, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, 60))
    assert moodle.calls == 1


def test_redis_forgets_an_entry_once_its_stale_window_is_over(empty_redis, replicas):
    read(replicas[0], FakeMoodle(OLD))

    (key,) = redis.Redis.from_url(empty_redis).keys(KEY_PREFIX + "courses:*")
    expires_ms = redis.Redis.from_url(empty_redis).pttl(key)

    assert (60 + STALE_S - 5) * 1000 < expires_ms <= (60 + STALE_S) * 1000


def test_only_the_holder_of_a_key_lock_releases_it(replicas):
    store = replicas[0].store
    token = store.lock("some-key", 5)

    assert token is not None and store.lock("some-key", 5) is None
    store.unlock("some-key", "another-token")
    assert store.locked("some-key")
    store.unlock("some-key", token)
    assert not store.locked("some-key")


def read_while_the_other_replica_fetches(first, second):
    """``second`` reads while ``first`` has the same fetch in flight: the answer, how it came, Moodle calls made."""
    in_flight = BlockingMoodle(OLD)
    threads, _ = in_threads(1, lambda n: read(first, in_flight))
    assert in_flight.entered.wait(5)
    waiting = FakeMoodle(NEW)

    release_once_waiting_on_the_lock(second, in_flight)
    answer, outcome = read(second, waiting)
    join(threads)
    return answer, outcome, waiting.calls


def test_a_replica_waits_for_the_fetch_another_replica_has_in_flight(replicas):
    assert read_while_the_other_replica_fetches(*replicas) == (OLD, CacheOutcome(Fetch.COLLAPSED), 0)


def test_a_replica_waiting_on_the_lock_finds_the_entry_even_when_storing_it_is_slow(replicas):
    first, second = replicas
    store_entry = first.store.put

    def slow_put(*args):
        time.sleep(0.15)  # Redis is slow to answer this one write
        store_entry(*args)

    first.store.put = slow_put

    assert read_while_the_other_replica_fetches(first, second) == (OLD, CacheOutcome(Fetch.COLLAPSED), 0)


def test_a_replica_that_loses_the_race_for_the_lock_waits_rather_than_fetches(replicas):
    first, second = replicas
    in_flight = BlockingMoodle(OLD)
    started = []
    take_lock = second.store.lock

    def the_first_replica_takes_it_just_before(key, ttl_s):
        # Both replicas missed at the same moment; the first one's lock reaches Redis first.
        started.extend(in_threads(1, lambda n: read(first, in_flight))[0])
        assert in_flight.entered.wait(5)
        release_once_waiting_on_the_lock(second, in_flight)
        second.store.lock = take_lock
        return take_lock(key, ttl_s)

    second.store.lock = the_first_replica_takes_it_just_before
    waiting = FakeMoodle(NEW)
    answer, outcome = read(second, waiting)
    join(started)

    assert (answer, waiting.calls, in_flight.calls) == (OLD, 0, 1)
    assert outcome == CacheOutcome(Fetch.COLLAPSED)


def test_a_replica_fetches_itself_when_the_lock_holder_outlasts_a_calls_deadline(empty_redis, clock, link_clock):
    first = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    second = make_read_cache(redis_store(empty_redis, clock, link_clock), clock, wait_s=0.1)
    hung = BlockingMoodle(OLD)
    threads, _ = in_threads(1, lambda n: read(first, hung))
    assert hung.entered.wait(5)
    own = FakeMoodle(NEW)

    answer, outcome = read(second, own)

    assert (answer, outcome.fetch, own.calls) == (NEW, Fetch.MISS, 1)
    hung.release.set()
    join(threads)


# -- Redis going away and coming back --------------------------------------------------------------


def unreachable():
    """A client for a Redis that does not answer (nothing listens on its port): this replica's view of an outage."""
    return redis_client(f"redis://127.0.0.1:{free_port()}/0")


def events(logs):
    return [line["event"] for line in logs if line["event"].startswith("cache.redis")]


def test_while_redis_is_away_entries_are_kept_in_the_process_and_that_is_logged_once(empty_redis, clock, link_clock):
    cache = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    cache.store.link.client = unreachable()
    moodle = FakeMoodle(OLD)

    with capture_logs() as logs:
        first = read(cache, moodle)
        later = [read(cache, moodle)]
        for _ in range(3):  # Redis is tried again every RETRY_AFTER_S, and still does not answer
            link_clock.advance(RETRY_AFTER_S)
            later.append(read(cache, moodle))

    assert first == (OLD, CacheOutcome(Fetch.MISS, stored=True))
    assert [outcome.fetch for _, outcome in later] == [Fetch.HIT] * 4
    assert moodle.calls == 1
    assert events(logs) == ["cache.redis_unavailable"]


def test_redis_going_away_during_a_fetch_still_answers_and_the_process_takes_over(empty_redis, clock, link_clock):
    cache = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)

    class RedisGoesAway(FakeMoodle):
        def __call__(self):
            cache.store.link.client = unreachable()
            return super().__call__()

    assert read(cache, RedisGoesAway(OLD))[0] == OLD
    again = FakeMoodle(NEW)
    assert read(cache, again) == (NEW, CacheOutcome(Fetch.MISS, stored=True))  # the entry never reached Redis
    assert read(cache, again) == (NEW, CacheOutcome(Fetch.HIT, 60))  # kept in the process meanwhile
    assert again.calls == 1


def test_writes_while_redis_is_away_drop_the_in_process_entries(empty_redis, clock, link_clock):
    cache = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    cache.store.link.client = unreachable()
    read(cache, FakeMoodle(OLD))

    cache.invalidate_after(UPDATE_COURSES)

    assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


def test_redis_is_used_again_once_it_is_back_and_that_is_logged_once(own_redis, clock, link_clock):
    process, url = own_redis
    first = make_read_cache(redis_store(url, clock, link_clock), clock)
    second = make_read_cache(redis_store(url, clock, link_clock), clock)
    with capture_logs() as logs:
        process.kill()
        process.wait(10)
        read(first, FakeMoodle(OLD))  # kept in the first replica alone
        restarted, _ = start_redis_server(port=int(url.rsplit(":", 1)[1].split("/")[0]))
        try:
            assert read(second, FakeMoodle(NEW))[0] == NEW  # Redis is back, and empty
            assert read(first, FakeMoodle())[0] == OLD  # not tried again before RETRY_AFTER_S
            link_clock.advance(RETRY_AFTER_S)
            assert read(first, FakeMoodle()) == (NEW, CacheOutcome(Fetch.HIT, 60))  # the entry in Redis
        finally:
            restarted.terminate()
            restarted.wait(10)

    assert events(logs) == ["cache.redis_unavailable", "cache.redis_restored"]


def test_invalidations_made_while_redis_was_away_are_replayed_when_it_answers_again(empty_redis, clock, link_clock):
    writer = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    reader = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    read(reader, FakeMoodle(OLD))
    reachable = writer.store.link.client
    writer.store.link.client = unreachable()  # the writer alone loses Redis; the entry stays in it

    writer.invalidate_after(UPDATE_COURSES)
    assert read(reader, FakeMoodle(NEW))[1].fetch == Fetch.HIT  # not known in Redis yet
    link_clock.advance(RETRY_AFTER_S)
    read(writer, FakeMoodle({}), SITE_INFO)  # still away: the invalidation is kept for later
    writer.store.link.client = reachable
    link_clock.advance(RETRY_AFTER_S)
    read(writer, FakeMoodle({}), SITE_INFO)  # Redis answers: the invalidation is made there before anything else

    assert read(reader, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


def test_entries_kept_in_the_process_during_one_outage_are_not_served_in_the_next(empty_redis, clock, link_clock):
    cache = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    other_replica = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    reachable = cache.store.link.client
    cache.store.link.client = unreachable()
    read(cache, FakeMoodle(OLD))  # kept in the process while Redis is away
    cache.store.link.client = reachable
    link_clock.advance(RETRY_AFTER_S)
    assert cache.store.link.answers()  # a readiness probe is the first to find Redis back
    read(cache, FakeMoodle({}), SITE_INFO)

    other_replica.invalidate_after(UPDATE_COURSES)  # a write this replica hears of through Redis alone
    cache.store.link.client = unreachable()  # and Redis goes away again

    assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


# -- answers derived from an entry -----------------------------------------------------------------


class CountingDerive:
    """A derive function that counts how often it is worked out."""

    def __init__(self):
        self.calls = 0

    def __call__(self, answer):
        self.calls += 1
        return ("derived", answer["courses"][0]["fullname"])


def read_derived(cache, fetch, derive, refresh=False):
    with recording_calls():
        return cache.read(GET_COURSES, {}, fetch, refresh, derive)


def test_a_derived_answer_is_worked_out_once_per_stored_version(make_cache, clock):
    cache, derive = make_cache(), CountingDerive()

    assert read_derived(cache, FakeMoodle(OLD), derive) == ("derived", "Old name")  # a miss: worked out
    assert [read_derived(cache, FakeMoodle(), derive) for _ in range(3)] == [("derived", "Old name")] * 3
    assert derive.calls == 2  # once for the miss, once for the entry's stored version, then remembered

    clock.advance(61)
    assert read_derived(cache, FakeMoodle(NEW), derive) == ("derived", "New name")
    assert read_derived(cache, FakeMoodle(), derive) == ("derived", "New name")


def test_a_derived_answer_is_never_served_after_a_write_or_to_a_refresh(make_cache):
    cache, derive = make_cache(), CountingDerive()
    read_derived(cache, FakeMoodle(OLD), derive)
    read_derived(cache, FakeMoodle(), derive)

    cache.invalidate_after(UPDATE_COURSES)
    assert read_derived(cache, FakeMoodle(NEW), derive) == ("derived", "New name")
    fresher = {"courses": [{"id": 2, "fullname": "Newest"}]}
    assert read_derived(cache, FakeMoodle(fresher), derive, refresh=True) == ("derived", "Newest")


def test_the_derived_answers_kept_are_bounded(make_cache):
    cache = make_cache()
    for _ in range(MAX_DERIVED + 10):
        derive = CountingDerive()  # each its own function: each its own remembered answer
        read_derived(cache, FakeMoodle(), derive)
        read_derived(cache, FakeMoodle(), derive)

    assert len(cache._derived) == MAX_DERIVED
