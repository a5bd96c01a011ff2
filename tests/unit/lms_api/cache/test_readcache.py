"""ReadCache with a fake fetch and a clock that moves only when told to, each test on a store of its process and on
Redis: hits and misses, refreshes, stale-if-error, writes dropping groups, one fetch for concurrent misses."""

import time

import pytest
from structlog.testing import capture_logs

from lms_api.cache.localstore import LocalStore
from lms_api.cache.outcomes import CacheOutcome, Fetch
from lms_api.cache.parsed import KEPT_BYTES_PER_JSON_BYTE
from lms_api.errors import ErrorCode
from lms_api.moodle.errors import MoodleError
from lms_api.moodle.functions import CacheGroup, MoodleFunction
from tests.support.timing import join
from tests.unit.lms_api.cache.support import (
    MAX_BYTES,
    NEW,
    OLD,
    PARSED_MAX_BYTES,
    STALE_S,
    TTLS,
    BlockingMoodle,
    EventWaits,
    FakeMoodle,
    answer_of,
    in_threads,
    make_read_cache,
    moodle_error,
    read,
    read_error,
)

GET_COURSES = MoodleFunction.GET_COURSES
GET_COURSES_BY_FIELD = MoodleFunction.GET_COURSES_BY_FIELD
SITE_INFO = MoodleFunction.SITE_INFO
NOTIFICATIONS = MoodleFunction.GET_POPUP_NOTIFICATIONS
CREATE_COURSES = MoodleFunction.CREATE_COURSES
UPDATE_COURSES = MoodleFunction.UPDATE_COURSES
ENROL = MoodleFunction.ENROL_USERS
TRANSPORT_CODES = [
    ErrorCode.MOODLE_TIMEOUT,
    ErrorCode.MOODLE_UNAVAILABLE,
    ErrorCode.BAD_GATEWAY,
    ErrorCode.MOODLE_BUSY,
]
# Moodle's own answers (and an answer the gateway could not read): Moodle was reached, so nothing is hidden.
ANSWER_CODES = ["invalidparameter", "sitemaintenance", "invalidtoken", ErrorCode.BAD_RESPONSE]


def test_which_functions_are_cached_follows_their_groups_ttls(clock):
    cache = make_read_cache(LocalStore(MAX_BYTES, clock), clock, 1.0, ttls={**TTLS, "users": 0})

    assert [cache.ttl_s(GET_COURSES), cache.ttl_s(SITE_INFO)] == [60, 300]
    assert cache.caches(GET_COURSES) and cache.caches(SITE_INFO)
    assert not cache.caches(MoodleFunction.GET_USERS_BY_FIELD)  # its group's TTL is 0
    assert not cache.caches(NOTIFICATIONS)  # off by default
    assert not cache.caches(MoodleFunction.GET_CATEGORIES)  # a read without a group
    assert not cache.caches(CREATE_COURSES) and cache.ttl_s(CREATE_COURSES) == 0


@pytest.mark.parametrize("function", [MoodleFunction.GET_CATEGORIES, NOTIFICATIONS, UPDATE_COURSES])
def test_reading_a_function_the_cache_does_not_keep_through_it_is_a_mistake(make_cache, function):
    moodle = FakeMoodle(OLD)

    with pytest.raises(ValueError, match=f"{function} is not kept by the read cache"):
        make_cache().read(function, {}, moodle)

    assert moodle.calls == 0


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
    cache = make_read_cache(LocalStore(MAX_BYTES, clock), clock, 1.0, ttls={**TTLS, "notifications": 30})
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

    fetched = cache.fetch_and_store(GET_COURSES, {}, FakeMoodle(NEW))
    unkept = cache.fetch_and_store(NOTIFICATIONS, {"useridto": 3}, FakeMoodle({"notifications": ["TTL 0"]}))

    assert (fetched.value, unkept.value) == (NEW, {"notifications": ["TTL 0"]})
    assert read(cache, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, 60))
    with_notifications = make_read_cache(cache.store, time.time, ttls={**TTLS, "notifications": 30})  # same store
    unread = FakeMoodle({"notifications": []})
    assert read(with_notifications, unread, NOTIFICATIONS, {"useridto": 3})[1].fetch == Fetch.MISS


def test_an_answer_fetched_outside_a_request_while_its_group_is_dropped_is_not_kept(make_cache):
    cache = make_cache()

    class DropDuringFetch(FakeMoodle):
        def __call__(self):
            answer = super().__call__()  # Moodle answered before the change...
            cache.store.invalidate(CacheGroup.SITE_INFO)  # ...whose drop came before this answer is stored
            return answer

    assert cache.fetch_and_store(SITE_INFO, {}, DropDuringFetch(OLD)).value == OLD
    after = FakeMoodle(NEW)
    assert read(cache, after, SITE_INFO) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert after.calls == 1


def test_a_failed_fetch_outside_a_request_keeps_nothing(make_cache):
    cache = make_cache()

    with pytest.raises(MoodleError):
        cache.fetch_and_store(SITE_INFO, {}, FakeMoodle(OLD, moodle_error(ErrorCode.MOODLE_UNAVAILABLE)))

    assert read(cache, FakeMoodle(NEW), SITE_INFO) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


# -- shared reads' answers kept parsed -------------------------------------------------------------


def site_info(n, json_bytes=200):
    """A site info whose JSON (as Moodle sends it here: ``answer_of``) is ``json_bytes`` long."""
    info = {"sitename": f"Site {n}", "padding": ""}
    return {**info, "padding": "x" * (json_bytes - len(answer_of(info).body))}


def test_a_hit_on_a_shared_reads_stored_answer_is_the_same_object(make_cache, clock):
    cache = make_cache()

    fetched, _ = read(cache, FakeMoodle(site_info(1)), SITE_INFO)
    hits = [read(cache, FakeMoodle(), SITE_INFO)[0] for _ in range(3)]
    clock.advance(300 + 29.5)
    stale, outcome = read(cache, FakeMoodle(NEW, moodle_error(ErrorCode.MOODLE_UNAVAILABLE)), SITE_INFO)
    refetched, _ = read(cache, FakeMoodle(site_info(2)), SITE_INFO)

    assert fetched == site_info(1) and all(hit is fetched for hit in hits)  # what the client parsed: never again
    assert outcome.fetch == Fetch.STALE and stale is fetched
    assert refetched == site_info(2) and read(cache, FakeMoodle(), SITE_INFO)[0] is refetched


@pytest.mark.parametrize("function", [GET_COURSES, MoodleFunction.GET_USERS_BY_FIELD])
def test_a_hit_on_a_read_a_caller_can_vary_is_parsed_again_each_time(make_cache, clock, function):
    """Nothing of it is kept parsed: a caller cycling through queries cannot fill the process with parsed answers."""
    cache = make_cache()
    fetched, _ = read(cache, FakeMoodle(OLD), function, {"values": [3]})

    hits = [read(cache, FakeMoodle(), function, {"values": [3]}) for _ in range(2)]
    clock.advance(TTLS[function.cache_group] + 1)
    stale, outcome = read(cache, FakeMoodle(NEW, moodle_error(ErrorCode.MOODLE_TIMEOUT)), function, {"values": [3]})

    assert [outcome.fetch for _, outcome in hits] == [Fetch.HIT, Fetch.HIT]
    assert hits[0][0] == hits[1][0] == fetched == OLD
    assert hits[0][0] is not fetched and hits[1][0] is not hits[0][0]
    assert (stale, outcome.fetch) == (OLD, Fetch.STALE) and stale is not fetched


def test_an_answer_stored_by_another_process_is_parsed_once_here(replicas):
    first, second = replicas
    read(first, FakeMoodle(site_info(1)), SITE_INFO)

    hits = [read(second, FakeMoodle(), SITE_INFO)[0] for _ in range(3)]

    assert hits[0] == site_info(1) and all(hit is hits[0] for hit in hits)
    assert hits[0] is not read(first, FakeMoodle(), SITE_INFO)[0]  # each process parses its own


def test_after_a_drop_or_a_refresh_the_new_shared_answer_is_served(make_cache):
    cache = make_cache()
    read(cache, FakeMoodle(site_info(1)), SITE_INFO)

    cache.store.invalidate(CacheGroup.SITE_INFO)
    after_drop, _ = read(cache, FakeMoodle(site_info(2)), SITE_INFO)
    refreshed, _ = read(cache, FakeMoodle(site_info(3)), SITE_INFO, refresh=True)

    assert (after_drop, refreshed) == (site_info(2), site_info(3))
    assert read(cache, FakeMoodle(), SITE_INFO)[0] is refreshed


def test_a_shared_answer_kept_outside_a_request_is_the_object_the_next_reads_get(make_cache):
    cache = make_cache()

    answer = cache.fetch_and_store(SITE_INFO, {}, FakeMoodle(site_info(1)))

    assert read(cache, FakeMoodle(OLD), SITE_INFO)[0] is answer.value


def test_shared_answers_are_kept_parsed_within_their_byte_budget(clock):
    cache = make_read_cache(LocalStore(MAX_BYTES, clock), clock)
    two_fifths = PARSED_MAX_BYTES // KEPT_BYTES_PER_JSON_BYTE * 2 // 5  # room for two such answers, not three
    fetched = [read(cache, FakeMoodle(site_info(n, two_fifths)), SITE_INFO, {"n": n})[0] for n in range(2)]
    assert read(cache, FakeMoodle(), SITE_INFO, {"n": 0})[0] is fetched[0]  # now the most recently read

    read(cache, FakeMoodle(site_info(2, two_fifths)), SITE_INFO, {"n": 2})  # pushes out the least recently read: n=1

    assert read(cache, FakeMoodle(), SITE_INFO, {"n": 0})[0] is fetched[0]
    again, outcome = read(cache, FakeMoodle(), SITE_INFO, {"n": 1})
    assert outcome.fetch == Fetch.HIT and again == fetched[1] and again is not fetched[1]  # parsed from its entry


def test_a_shared_answer_over_the_byte_budget_is_parsed_at_each_hit_and_pushes_nothing_out(clock):
    cache = make_read_cache(LocalStore(MAX_BYTES, clock), clock)
    small, _ = read(cache, FakeMoodle(site_info(1)), SITE_INFO, {"n": 1})
    too_big = site_info(2, PARSED_MAX_BYTES // KEPT_BYTES_PER_JSON_BYTE + 1)

    fetched, _ = read(cache, FakeMoodle(too_big), SITE_INFO, {"n": 2})
    hit, outcome = read(cache, FakeMoodle(), SITE_INFO, {"n": 2})

    assert outcome.fetch == Fetch.HIT and hit == fetched and hit is not fetched
    assert read(cache, FakeMoodle(), SITE_INFO, {"n": 1})[0] is small


# -- one fetch for concurrent misses ---------------------------------------------------------------


def test_concurrent_identical_misses_make_one_fetch_and_the_others_wait_for_it(make_cache):
    cache, moodle = make_cache(), BlockingMoodle(OLD)
    waits = EventWaits(moodle.release)

    threads, results = in_threads(10, lambda n: read(cache, moodle), profile=waits.profile)
    assert moodle.entered.wait(5)
    waits.wait_for(9)
    moodle.release.set()
    join(threads)

    assert moodle.calls == 1
    assert results[0][0] == OLD and all(answer is results[0][0] for answer, _ in results)  # the fetch's own
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
    waits = EventWaits(moodle.release)

    threads, results = in_threads(5, lambda n: read(cache, moodle), profile=waits.profile)
    assert moodle.entered.wait(5)
    waits.wait_for(4)
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
