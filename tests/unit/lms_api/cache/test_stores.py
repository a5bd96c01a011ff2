"""Where entries are kept: an entry's encoding, the in-process store within its bytes, and the Redis store."""

import redis

from lms_api.cache.entry import Entry, Generation
from lms_api.cache.localstore import ENTRY_OVERHEAD_BYTES, LocalStore
from lms_api.cache.outcomes import CacheOutcome, Fetch
from lms_api.cache.parsed import PARSED_SHARE_OF_CACHE
from lms_api.cache.readcache import ReadCache
from lms_api.cache.redisstore import ENTRY_PREFIX, RedisStore
from lms_api.moodle.functions import MoodleFunction
from tests.support.gateway import settings_for
from tests.support.timing import FakeClock
from tests.unit.lms_api.cache.support import MAX_BYTES, NEW, OLD, FakeMoodle, make_read_cache, read


def entry(body=b"{}", generation=0, fresh_until=1060.0, stale_until=1660.0):
    return Entry(Generation(0, generation), body, fresh_until, stale_until)


def room_for(count, key, body):
    """A store's bytes for exactly ``count`` entries of ``key``'s length and ``body``."""
    return count * (len(body) + len(key) + ENTRY_OVERHEAD_BYTES)


def kept(store, *keys):
    return [key for key in keys if store.get("courses", key)[1] is not None]


# -- an entry --------------------------------------------------------------------------------------


def test_an_entry_survives_encoding_with_line_breaks_and_utf8_in_its_body():
    body = '{"name":"Caf\u00e9\\n"}\n{"second":"line"}'.encode()
    original = Entry(Generation(3, 41), body, 1712345678.123456, 1712346278.987654)

    assert Entry.decode(original.encode(), epoch=3) == original


# -- in the process --------------------------------------------------------------------------------


def test_the_local_store_stays_within_its_bytes_dropping_the_least_recently_used_first():
    body = b"x" * 100
    store = LocalStore(room_for(3, "k1", body), FakeClock())
    for key in ("k1", "k2", "k3"):
        store.put("courses", key, entry(body))
    assert store.get("courses", "k1")[1] is not None  # k1 is now the most recently used

    store.put("courses", "k4", entry(body))
    assert kept(store, "k1", "k2", "k3", "k4") == ["k1", "k3", "k4"]  # read in this order: k1 is now the least recent
    store.put("courses", "k5", entry(body))  # exactly one more goes: the bytes of k2 were given back

    assert kept(store, "k1", "k3", "k4", "k5") == ["k3", "k4", "k5"]


def test_an_entry_bigger_than_the_whole_store_is_not_kept_and_pushes_nothing_out():
    store = LocalStore(room_for(2, "k1", b"s"), FakeClock())
    store.put("courses", "k1", entry(b"s"))

    store.put("courses", "huge", entry(b"h" * 1000))
    store.put("courses", "k2", entry(b"s"))  # fits beside k1: the refused entry took no room

    assert store.get("courses", "huge") == (Generation(0, 0), None)
    assert kept(store, "k1", "k2") == ["k1", "k2"]


def test_an_answer_too_big_to_keep_still_drops_the_older_answer_of_its_key(clock):
    cache = make_read_cache(LocalStore(ENTRY_OVERHEAD_BYTES + 500, clock), clock)  # room for the first answer
    read(cache, FakeMoodle(OLD))
    big = {"courses": [{"id": 2, "fullname": "x" * 1000}]}

    assert read(cache, FakeMoodle(big), refresh=True)[0] == big
    assert read(cache, FakeMoodle(NEW)) == (NEW, CacheOutcome(Fetch.MISS, stored=True))


def test_storing_a_key_again_replaces_its_entry_without_counting_it_twice():
    store = LocalStore(room_for(2, "k1", b"0"), FakeClock())
    for n in range(5):
        store.put("courses", "k1", entry(b"%d" % n))

    store.put("courses", "k2", entry(b"x"))  # room for two: the five puts of k1 count once

    assert store.get("courses", "k1")[1].body == b"4"
    assert kept(store, "k1", "k2") == ["k1", "k2"]


def test_invalidating_a_group_hides_its_entries_and_refuses_answers_fetched_before():
    store = LocalStore(MAX_BYTES, FakeClock())
    store.put("courses", "course", entry(b"old"))
    store.put("siteinfo", "info", entry(b"info"))

    store.invalidate("courses")

    assert store.get("courses", "course") == (Generation(0, 1), None)
    store.put("courses", "course", entry(b"fetched before the write", generation=0))
    assert store.get("courses", "course") == (Generation(0, 1), None)
    store.put("courses", "course", entry(b"fetched after", generation=1))
    assert store.get("courses", "course")[1].body == b"fetched after"
    assert store.get("siteinfo", "info")[1].body == b"info"  # another group keeps its entries


def test_an_entry_past_its_stale_time_is_gone_and_its_bytes_freed():
    clock = FakeClock()
    store = LocalStore(room_for(2, "k1", b"{}"), clock)
    store.put("courses", "k1", entry(fresh_until=1060.0, stale_until=1660.0))
    clock.advance(659)
    assert store.get("courses", "k1")[1] is not None  # stale but still within the window

    clock.advance(2)

    assert store.get("courses", "k1") == (Generation(0, 0), None)
    for key in ("k2", "k3"):
        store.put("courses", key, entry(fresh_until=2060.0, stale_until=2660.0))
    assert kept(store, "k2", "k3") == ["k2", "k3"]  # room for two: the expired entry's bytes were given back


def test_the_settings_make_an_in_process_cache_bounded_by_cache_max_mb():
    cache = ReadCache.from_settings(settings_for("http://127.0.0.1:9", "token", CACHE_MAX_MB="1"))
    too_big = FakeMoodle({"courses": ["x" * (1024 * 1024)]})
    # Shared reads' parsed answers have their share of CACHE_MAX_MB: entries have the rest.
    over_the_entries_share = FakeMoodle({"courses": ["x" * int(1024 * 1024 * (1 - PARSED_SHARE_OF_CACHE))]})
    fits = FakeMoodle({"courses": ["x" * (512 * 1024)]})

    assert isinstance(cache.store, LocalStore)
    assert [read(cache, too_big, params={"n": 1})[1].fetch for _ in range(2)] == [Fetch.MISS, Fetch.MISS]
    assert [read(cache, over_the_entries_share, params={"n": 2})[1].fetch for _ in range(2)] == [Fetch.MISS] * 2
    assert [read(cache, fits, params={"n": 3})[1].fetch for _ in range(2)] == [Fetch.MISS, Fetch.HIT]


# -- in Redis --------------------------------------------------------------------------------------


def test_the_settings_make_a_redis_cache_with_redis_url(empty_redis):
    cache = ReadCache.from_settings(settings_for("http://127.0.0.1:9", "token", REDIS_URL=empty_redis))
    read(cache, FakeMoodle(OLD))

    assert isinstance(cache.store, RedisStore)
    assert redis.Redis.from_url(empty_redis).keys(ENTRY_PREFIX + "courses:*") != []


def keyspace_misses(url):
    return redis.Redis.from_url(url).info("stats")["keyspace_misses"]


def test_keeping_an_answer_reads_no_key_but_its_groups_generation_and_the_entry_it_replaces(empty_redis, replicas):
    cache = replicas[0]
    cache.invalidate_after(MoodleFunction.UPDATE_COURSES)  # the group's generation is a key now
    cache.fetch_and_store(MoodleFunction.GET_COURSES, {}, FakeMoodle(OLD))  # the entry is a key now
    misses = keyspace_misses(empty_redis)

    cache.fetch_and_store(MoodleFunction.GET_COURSES, {}, FakeMoodle(NEW))

    assert keyspace_misses(empty_redis) == misses
    assert read(cache, FakeMoodle(), params={})[0] == NEW
