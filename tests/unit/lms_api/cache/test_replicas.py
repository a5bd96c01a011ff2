"""Replicas sharing one Redis: an entry stored by one is a hit on the other, one fetch across replicas for a key, and
Redis going away (each replica keeps entries in its process) and coming back (what was missed is replayed)."""

import time

import redis
from structlog.testing import capture_logs

from lms_api.cache.outcomes import CacheOutcome, Fetch
from lms_api.cache.redisstore import ENTRY_PREFIX
from lms_api.moodle.functions import MoodleFunction
from lms_api.redisstate import RETRY_AFTER_S, redis_client
from tests.support.servers import free_port, start_redis_server
from tests.support.timing import join
from tests.unit.lms_api.cache.support import (
    NEW,
    OLD,
    STALE_S,
    BlockingMoodle,
    FakeMoodle,
    in_threads,
    make_read_cache,
    read,
    redis_store,
)

SITE_INFO = MoodleFunction.SITE_INFO
UPDATE_COURSES = MoodleFunction.UPDATE_COURSES


def release_once_waiting_on_the_lock(replica, fetch):
    """Let ``fetch`` (another replica's, holding the key's lock) finish once ``replica`` waits on that lock."""
    locked = replica.store.locked

    def checked_then_released(key):
        held = locked(key)
        fetch.release.set()
        return held

    replica.store.locked = checked_then_released


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

    (key,) = redis.Redis.from_url(empty_redis).keys(ENTRY_PREFIX + "courses:*")
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


def stop(process):
    process.kill()
    process.wait(10)


def test_redis_going_away_during_a_fetch_still_answers_and_the_process_takes_over(own_redis, clock, link_clock):
    process, url = own_redis
    cache = make_read_cache(redis_store(url, clock, link_clock), clock)

    class RedisGoesAway(FakeMoodle):
        def __call__(self):
            stop(process)
            return super().__call__()

    with capture_logs() as logs:
        assert read(cache, RedisGoesAway(OLD)) == (OLD, CacheOutcome(Fetch.MISS, stored=True))
        again = FakeMoodle(NEW)
        assert read(cache, again) == (NEW, CacheOutcome(Fetch.MISS, stored=True))  # the entry never reached Redis
        assert read(cache, again) == (NEW, CacheOutcome(Fetch.HIT, 60))  # kept in the process meanwhile

    assert again.calls == 1
    assert events(logs) == ["cache.redis_unavailable"]


def test_redis_going_away_once_a_miss_is_found_still_fetches_and_the_process_keeps_the_next(
    own_redis, clock, link_clock
):
    process, url = own_redis
    cache = make_read_cache(redis_store(url, clock, link_clock), clock)
    find = cache.store.get

    def found_then_gone(group, key):
        found = find(group, key)
        stop(process)  # before the key's lock is taken
        cache.store.get = find
        return found

    cache.store.get = found_then_gone
    moodle = FakeMoodle(OLD)

    assert read(cache, moodle) == (OLD, CacheOutcome(Fetch.MISS, stored=True))
    # Fetched under Redis's generation, it is not kept under the process's, whatever their values.
    assert read(cache, moodle) == (OLD, CacheOutcome(Fetch.MISS, stored=True))
    assert read(cache, moodle) == (OLD, CacheOutcome(Fetch.HIT, 60))
    assert moodle.calls == 2


def test_a_replica_waiting_on_a_lock_when_redis_goes_away_fetches_itself(own_redis, clock, link_clock):
    process, url = own_redis
    first, second = (make_read_cache(redis_store(url, clock, link_clock), clock) for _ in range(2))
    in_flight = BlockingMoodle(OLD)
    threads, _ = in_threads(1, lambda n: read(first, in_flight))
    assert in_flight.entered.wait(5)
    locked = second.store.locked

    def gone_while_waiting(key):
        stop(process)
        return locked(key)

    second.store.locked = gone_while_waiting
    own = FakeMoodle(NEW)

    answer, outcome = read(second, own)

    in_flight.release.set()
    join(threads)
    assert (answer, outcome, own.calls) == (NEW, CacheOutcome(Fetch.MISS, stored=True), 1)


def test_an_answer_kept_outside_a_request_while_redis_is_away_is_kept_in_the_process(empty_redis, clock, link_clock):
    cache = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    cache.store.link.client = unreachable()

    cache.fetch_and_store(MoodleFunction.GET_COURSES, {}, FakeMoodle(OLD))  # finds Redis away
    cache.fetch_and_store(MoodleFunction.GET_COURSES, {}, FakeMoodle(NEW))  # does not try it again yet

    assert read(cache, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, 60))


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
