"""Copies of Redis's entries kept near, in the process: a hit asks Redis for its group's generation alone (nothing,
when the request's rate limit read it along), hands out the same bytes each time, and is never served once a write
anywhere has moved the group on, nor across Redis going away, coming back, or restarting empty."""

import contextvars
import json

import redis

from lms_api.cache.outcomes import CacheOutcome, Fetch
from lms_api.cache.readcache import GENERATION_OUTLIVES_ENTRIES_S
from lms_api.cache.redisstore import ENTRY_PREFIX, KEY_PREFIX
from lms_api.errors import ErrorCode
from lms_api.moodle.functions import CacheGroup, MoodleFunction
from lms_api.redisstate import RETRY_AFTER_S, redis_client
from tests.support.servers import free_port, start_redis_server
from tests.unit.lms_api.cache.support import (
    MAX_BYTES,
    NEW,
    OLD,
    STALE_S,
    TTLS,
    BlockingMoodle,
    FakeMoodle,
    RedisRoundTrips,
    in_request,
    in_threads,
    make_read_cache,
    moodle_error,
    read,
    redis_store,
)

SITE_INFO = MoodleFunction.SITE_INFO
NOTIFICATIONS = MoodleFunction.GET_POPUP_NOTIFICATIONS
UPDATE_COURSES = MoodleFunction.UPDATE_COURSES
TTL = 60  # the courses'


def unreachable():
    return redis_client(f"redis://127.0.0.1:{free_port()}/0")


def stored_key(url, group):
    """The store's key of the one entry of ``group`` in Redis."""
    (key,) = redis.Redis.from_url(url).keys(f"{ENTRY_PREFIX}{group}:*")
    return key.decode().removeprefix(ENTRY_PREFIX)


# -- hits ------------------------------------------------------------------------------------------


def test_a_hit_asks_redis_for_its_generation_alone_and_hands_out_the_same_bytes(replicas, empty_redis, monkeypatch):
    cache = replicas[0]
    read(cache, FakeMoodle(OLD), SITE_INFO)
    redis_trips = RedisRoundTrips(monkeypatch)

    with redis_trips.counting() as trips:
        hits = [read(cache, FakeMoodle(NEW), SITE_INFO) for _ in range(3)]

    assert hits == [(OLD, CacheOutcome(Fetch.HIT, 300))] * 3
    assert [[command[0] for command in trip] for trip in trips] == [[b"GET"]] * 3
    assert not redis_trips.reads_entries(trips)
    key = stored_key(empty_redis, "siteinfo")
    assert cache.store.get("siteinfo", key)[1].body is cache.store.get("siteinfo", key)[1].body
    assert hits[0][0] is hits[1][0]  # a shared read's answer, parsed once


def test_in_a_request_a_hit_asks_redis_nothing_beyond_the_rate_limits_round_trip(replicas, empty_redis, monkeypatch):
    cache = replicas[0]
    read(cache, FakeMoodle(OLD))
    read(cache, FakeMoodle(OLD), SITE_INFO)
    redis_trips = RedisRoundTrips(monkeypatch)
    with in_request(cache, empty_redis):  # the counter's script, loaded once
        pass

    with redis_trips.counting() as trips, in_request(cache, empty_redis):
        hits = [read(cache, FakeMoodle(NEW)), read(cache, FakeMoodle(NEW), SITE_INFO)]

    assert hits == [(OLD, CacheOutcome(Fetch.HIT, TTL)), (OLD, CacheOutcome(Fetch.HIT, 300))]
    ((evalsha,),) = trips
    assert evalsha[0] == b"EVALSHA"
    assert {KEY_PREFIX.encode() + b"generation:courses", KEY_PREFIX.encode() + b"generation:siteinfo"} <= set(evalsha)
    assert not redis_trips.reads_entries(trips)


def test_the_groups_read_along_are_those_kept_and_not_kept_apart_by_a_parameter(empty_redis, clock, link_clock):
    ttls = {"siteinfo": 300, "courses": 60, "users": 0, "notifications": 30}
    cache = make_read_cache(redis_store(empty_redis, clock, link_clock), clock, ttls=ttls)

    assert cache.generations_read_along() == [f"{KEY_PREFIX}generation:{group}" for group in ("siteinfo", "courses")]


def test_copies_near_stay_within_the_fallbacks_bytes_the_least_recently_read_out_first(replicas, monkeypatch):
    cache = replicas[0]
    half = {"courses": ["x" * (MAX_BYTES // 2 - 1000)]}  # two fit within the bytes of the fallback, not three
    for n in range(3):
        read(cache, FakeMoodle(half), params={"n": n})
    redis_trips = RedisRoundTrips(monkeypatch)

    with redis_trips.counting() as latest:
        assert read(cache, FakeMoodle(), params={"n": 2})[1].fetch == Fetch.HIT
    with redis_trips.counting() as first:
        assert read(cache, FakeMoodle(), params={"n": 0})[1].fetch == Fetch.HIT

    assert not redis_trips.reads_entries(latest)
    assert redis_trips.reads_entries(first)  # its copy went to make room: read from Redis again


def test_a_replica_refetches_an_entry_another_replica_replaced_once_its_copy_expires(replicas, clock):
    first, second = replicas
    read(first, FakeMoodle(OLD))
    read(second, FakeMoodle())  # a copy near on the second
    clock.advance(TTL)
    assert read(first, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))

    assert read(second, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))


def test_a_copy_near_is_served_stale_when_moodle_cannot_be_reached(replicas, empty_redis, clock):
    cache = replicas[0]
    read(cache, FakeMoodle(OLD))
    redis.Redis.from_url(empty_redis).delete(ENTRY_PREFIX + stored_key(empty_redis, "courses"))
    clock.advance(TTL + 10)

    failing = FakeMoodle(NEW, moodle_error(ErrorCode.MOODLE_UNAVAILABLE))

    assert read(cache, failing) == (OLD, CacheOutcome(Fetch.STALE, -10))
    clock.advance(STALE_S)
    assert read(cache, failing) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


# -- writes ----------------------------------------------------------------------------------------


def test_a_write_on_one_replica_hides_the_copy_near_on_the_other_from_its_next_request(replicas, empty_redis):
    first, second = replicas
    with in_request(second, empty_redis):
        read(second, FakeMoodle(OLD))
    with in_request(second, empty_redis):
        assert read(second, FakeMoodle(NEW)) == (OLD, CacheOutcome(Fetch.HIT, TTL))  # from its copy near

    with in_request(first, empty_redis):
        first.invalidate_after(UPDATE_COURSES)

    with in_request(second, empty_redis):
        assert read(second, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert read(second, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))  # outside a request too


def test_a_write_then_a_read_in_one_request_sees_the_write(replicas, empty_redis):
    cache = replicas[0]
    read(cache, FakeMoodle(OLD))

    with in_request(cache, empty_redis):
        assert read(cache, FakeMoodle(NEW)) == (OLD, CacheOutcome(Fetch.HIT, TTL))
        cache.invalidate_after(UPDATE_COURSES)
        assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
        assert read(cache, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))


def test_a_write_that_missed_redis_in_a_request_is_seen_by_its_reads_once_redis_answers(
    replicas, empty_redis, link_clock
):
    cache = replicas[0]
    read(cache, FakeMoodle(OLD))

    with in_request(cache, empty_redis):
        assert read(cache, FakeMoodle(NEW))[1].fetch == Fetch.HIT
        reachable = cache.store.link.client
        cache.store.link.client = unreachable()
        cache.invalidate_after(UPDATE_COURSES)  # kept to be replayed
        cache.store.link.client = reachable
        link_clock.advance(RETRY_AFTER_S)

        assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


def test_a_refresh_that_brings_another_answer_hides_the_copies_near_of_its_group_on_every_replica(
    replicas, empty_redis
):
    first, second = replicas
    with in_request(second, empty_redis):
        read(second, FakeMoodle(OLD))
        read(second, FakeMoodle(OLD), params={"other": 1})

    with in_request(first, empty_redis):
        assert read(first, FakeMoodle(NEW), refresh=True) == (NEW, CacheOutcome(Fetch.REFRESH, stored=True))
        assert read(first, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))  # its own reads see it

    with in_request(second, empty_redis):
        assert read(second, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))  # Redis's entry, not its copy
        assert read(second, FakeMoodle(NEW), params={"other": 1}) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


def test_a_refresh_that_brings_the_same_answer_leaves_its_group_at_its_generation(replicas, empty_redis):
    first, second = replicas
    with in_request(second, empty_redis):
        read(second, FakeMoodle(OLD))
        read(second, FakeMoodle(OLD), params={"other": 1})
    generation = redis.Redis.from_url(empty_redis).get(KEY_PREFIX + "generation:courses")

    with in_request(first, empty_redis):
        assert read(first, FakeMoodle(OLD), refresh=True) == (OLD, CacheOutcome(Fetch.REFRESH, stored=True))

    assert redis.Redis.from_url(empty_redis).get(KEY_PREFIX + "generation:courses") == generation
    with in_request(second, empty_redis):
        assert read(second, FakeMoodle(NEW), params={"other": 1}) == (OLD, CacheOutcome(Fetch.HIT, TTL))


def test_a_refresh_that_brings_the_same_bytes_renews_the_entrys_times_without_sending_them_again(
    replicas, empty_redis, clock, monkeypatch
):
    first, second = replicas
    read(first, FakeMoodle(OLD))
    read(first, FakeMoodle(OLD), refresh=True)  # Redis has the renewal's script from now on
    kept = first.store.get("courses", stored_key(empty_redis, "courses"))[1].body
    clock.advance(TTL // 2)
    redis_trips = RedisRoundTrips(monkeypatch)

    with redis_trips.counting() as trips:
        assert read(first, FakeMoodle(OLD), refresh=True) == (OLD, CacheOutcome(Fetch.REFRESH, stored=True))

    assert not any(len(arg) > 200 for trip in trips for command in trip for arg in command)  # no answer sent
    assert [[command[0] for command in trip] for trip in trips] == [[b"GET"], [b"EVALSHA"]]  # no lock for a refresh
    assert first.store.get("courses", stored_key(empty_redis, "courses"))[1].body is kept  # what was parsed stays
    clock.advance(TTL // 2 + 1)  # past the first fetch's time, within the refresh's
    assert read(second, FakeMoodle(NEW)) == (OLD, CacheOutcome(Fetch.HIT, TTL // 2 - 1))  # Redis's entry, renewed


def test_a_renewal_finds_other_bytes_kept_in_redis_and_sends_the_answer(replicas, empty_redis):
    first, second = replicas
    read(first, FakeMoodle(OLD))
    key = stored_key(empty_redis, "courses")
    kept = redis.Redis.from_url(empty_redis).get(ENTRY_PREFIX + key)
    header = kept.partition(b"\n")[0]
    other = json.dumps({"courses": [{"id": 2, "fullname": "Other name"}]}).encode()  # as another replica kept it
    redis.Redis.from_url(empty_redis).set(
        ENTRY_PREFIX + key, header.rsplit(b" ", 1)[0] + b" " + b"0" * 32 + b"\n" + other
    )

    assert read(first, FakeMoodle(OLD), refresh=True)[0] == OLD

    assert read(second, FakeMoodle(NEW)) == (OLD, CacheOutcome(Fetch.HIT, TTL))  # the answer, sent after all


def test_an_answer_fetched_before_a_refresh_brought_another_is_not_kept_over_it(replicas, empty_redis):
    first, second = replicas
    read(first, FakeMoodle(OLD))
    slow_fetch = BlockingMoodle(OLD)
    threads, _ = in_threads(1, lambda _: read(second, slow_fetch, refresh=True))  # under the generation of before
    assert slow_fetch.entered.wait(5)

    assert read(first, FakeMoodle(NEW), refresh=True)[0] == NEW
    slow_fetch.release.set()
    threads[0].join(5)

    assert read(first, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))
    assert read(second, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))


def test_an_answer_fetched_before_another_replaced_an_expired_entry_is_not_kept_over_it(replicas, empty_redis, clock):
    first, second = replicas
    read(first, FakeMoodle(OLD))
    clock.advance(TTL + 1)
    slow_fetch = BlockingMoodle(OLD)
    threads, _ = in_threads(1, lambda _: read(second, slow_fetch, refresh=True))  # under the generation of before
    assert slow_fetch.entered.wait(5)

    assert read(first, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))  # the expired entry replaced
    slow_fetch.release.set()
    threads[0].join(5)

    assert read(first, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))
    assert read(second, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))


def miss_a_write(cache, link_clock):
    """A write through ``cache`` whose invalidation Redis missed (kept to be replayed), then Redis answering again."""
    reachable = cache.store.link.client
    cache.store.link.client = unreachable()
    cache.invalidate_after(UPDATE_COURSES)
    cache.store.link.client = reachable
    link_clock.advance(RETRY_AFTER_S)


def test_a_request_begun_after_a_write_redis_missed_sees_it_once_its_read_replays_it(replicas, empty_redis, link_clock):
    cache, other_replica = replicas
    read(other_replica, FakeMoodle(OLD))
    miss_a_write(cache, link_clock)

    with in_request(cache, empty_redis):  # its snapshot read before the replay
        assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
        assert read(cache, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))


def test_a_request_begun_after_a_write_redis_missed_sees_it_once_another_request_replays_it(
    replicas, empty_redis, link_clock
):
    cache, other_replica = replicas
    read(other_replica, FakeMoodle(OLD))
    miss_a_write(cache, link_clock)
    later = contextvars.copy_context()
    request = in_request(cache, empty_redis)
    later.run(request.__enter__)  # its snapshot read before the replay

    with in_request(cache, empty_redis):
        assert read(cache, FakeMoodle(), SITE_INFO)[1].fetch == Fetch.MISS  # Redis used again: the write replayed

    assert later.run(read, cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    later.run(request.__exit__, None, None, None)


# -- generations of the parts of a group kept apart by a parameter ---------------------------------


def notifications_replicas(url, clock, link_clock):
    ttls = {**TTLS, "notifications": 30}
    return [make_read_cache(redis_store(url, clock, link_clock, ttls), clock, ttls=ttls) for _ in range(2)]


def test_a_users_generation_is_kept_longer_than_its_entries_live_and_no_longer(empty_redis, clock, link_clock):
    reader, writer = notifications_replicas(empty_redis, clock, link_clock)
    client = redis.Redis.from_url(empty_redis)
    kept_ms = (30 + STALE_S + GENERATION_OUTLIVES_ENTRIES_S) * 1000

    read(reader, FakeMoodle({"notifications": []}), NOTIFICATIONS, {"useridto": 3})  # its first generation
    writer.invalidate(CacheGroup.NOTIFICATIONS, 4, cause="a write")  # a new one
    read(reader, FakeMoodle(OLD))

    read_ms = client.pttl(KEY_PREFIX + "generation:notifications/3")
    assert client.pttl(ENTRY_PREFIX + stored_key(empty_redis, "notifications/3")) < read_ms - 30_000 < kept_ms
    assert kept_ms - 5000 < read_ms <= kept_ms
    assert kept_ms - 5000 < client.pttl(KEY_PREFIX + "generation:notifications/4") <= kept_ms
    assert client.pttl(KEY_PREFIX + "generation:courses") == -1  # one for the whole group: kept


def test_a_users_generation_gone_begins_again_at_a_new_one(empty_redis, clock, link_clock):
    reader, writer = notifications_replicas(empty_redis, clock, link_clock)
    client = redis.Redis.from_url(empty_redis)
    params = {"useridto": 3}
    read(reader, FakeMoodle(OLD), NOTIFICATIONS, params)
    read(writer, FakeMoodle(), NOTIFICATIONS, params)  # a copy near on the writer too
    generation = client.get(KEY_PREFIX + "generation:notifications/3")

    client.delete(KEY_PREFIX + "generation:notifications/3")  # as Redis expires it

    assert read(reader, FakeMoodle(NEW), NOTIFICATIONS, params) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    assert client.get(KEY_PREFIX + "generation:notifications/3") not in (None, generation)
    assert read(writer, FakeMoodle(OLD), NOTIFICATIONS, params) == (NEW, CacheOutcome(Fetch.HIT, 30))


# -- Redis going away, coming back, restarting -----------------------------------------------------


def test_an_answer_fetched_while_redis_was_away_is_not_kept_once_it_is_back(empty_redis, clock, link_clock):
    cache = make_read_cache(redis_store(empty_redis, clock, link_clock), clock)
    reachable = cache.store.link.client
    cache.store.link.client = unreachable()
    read(cache, FakeMoodle(OLD), SITE_INFO)  # Redis is found away: the process's generations from now

    class RedisComesBack(FakeMoodle):
        def __call__(self):
            cache.store.link.client = reachable
            link_clock.advance(RETRY_AFTER_S)
            return super().__call__()

    # Fetched under the process's generation (its first, as the group's first in Redis), kept under neither.
    assert read(cache, RedisComesBack(OLD)) == (OLD, CacheOutcome(Fetch.MISS, stored=True))
    assert redis.Redis.from_url(empty_redis).keys(ENTRY_PREFIX + "courses:*") == []
    assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


def test_copies_near_are_not_served_while_redis_is_away_nor_after(replicas, empty_redis, link_clock):
    cache, other_replica = replicas
    read(cache, FakeMoodle(OLD))
    reachable = cache.store.link.client
    cache.store.link.client = unreachable()

    assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))  # not the copy near
    other_replica.invalidate_after(UPDATE_COURSES)
    cache.store.link.client = reachable
    link_clock.advance(RETRY_AFTER_S)

    assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))  # nor the fallback's
    assert read(cache, FakeMoodle(OLD)) == (NEW, CacheOutcome(Fetch.HIT, TTL))


def test_a_redis_restarted_empty_never_serves_a_copy_near_from_before(own_redis, clock, link_clock):
    process, url = own_redis
    reader, writer = (make_read_cache(redis_store(url, clock, link_clock), clock) for _ in range(2))
    writer.invalidate_after(UPDATE_COURSES)
    read(reader, FakeMoodle(OLD))  # a copy near, under the courses' generation of the moment
    process.kill()
    process.wait(10)
    restarted, _ = start_redis_server(port=int(url.rsplit(":", 1)[1].split("/")[0]))
    try:
        writer.invalidate_after(UPDATE_COURSES)  # the first write Redis counts since it restarted

        assert read(reader, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))
    finally:
        restarted.terminate()
        restarted.wait(10)


def test_a_redis_gone_back_to_an_older_generation_never_serves_a_copy_near_stored_after_it(replicas, empty_redis):
    reader, writer = replicas
    answers = [{"courses": [{"id": 2, "fullname": name}]} for name in ("first", "second", "third")]
    with in_request(reader, empty_redis):
        read(reader, FakeMoodle(answers[0]))
    client = redis.Redis.from_url(empty_redis)
    generation = KEY_PREFIX + "generation:courses"
    saved = client.get(generation)  # as a snapshot on disk, or a replica behind, keeps it
    with in_request(writer, empty_redis):
        writer.invalidate_after(UPDATE_COURSES)
    with in_request(reader, empty_redis):
        assert read(reader, FakeMoodle(answers[1]))[0] == answers[1]  # a copy near, under the generation after
    client.flushall()
    client.set(generation, saved)  # Redis restarted from that snapshot, or failed over to that replica

    with in_request(writer, empty_redis):
        writer.invalidate_after(UPDATE_COURSES)

    with in_request(reader, empty_redis):
        assert read(reader, FakeMoodle(answers[2])) == (answers[2], CacheOutcome(Fetch.MISS, stored=True))
