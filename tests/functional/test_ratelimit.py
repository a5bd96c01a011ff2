"""Rate limits: budgets per caller for reads and writes, per address before authentication, shared through Redis."""

import json
import time
import uuid

import redis

from lms_api import ratelimit
from lms_api.ratelimit import LocalCounter, RedisCounter
from lms_api.redisstate import RETRY_AFTER_S, ReadAlong, RedisLink
from lms_api.settings import Rate
from tests.support.credentials import mint
from tests.support.gateway import capture_logs
from tests.support.servers import start_redis_server

SITEINFO = "/api/moodle/siteinfo"
COURSES = "/api/moodle/courses"


def caller(scope="siteinfo:read courses:write"):
    return mint(scope, sub=f"caller-{uuid.uuid4().hex[:8]}")


def assert_limited(response, limit):
    assert response.status_int == 429
    error = response.json["error"]
    assert error["code"] == "ratelimited"
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert error["details"]["retry_after_s"] == retry_after
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"


def test_reads_over_budget_are_429_with_retry_after_and_ratelimit_headers(make_gateway):
    gateway = make_gateway(RATE_LIMIT_READ="3/minute")
    token = caller()

    answers = [gateway.get(SITEINFO, token) for _ in range(4)]

    assert [answer.status_int for answer in answers] == [200, 200, 200, 429]
    assert [answer.headers["RateLimit-Remaining"] for answer in answers[:3]] == ["2", "1", "0"]
    assert_limited(answers[3], 3)


def test_each_caller_has_its_own_budget_and_writes_have_their_own(make_gateway):
    gateway = make_gateway(RATE_LIMIT_READ="2/minute", RATE_LIMIT_WRITE="1/minute")
    first, second = caller(), caller()

    assert [gateway.get(SITEINFO, first).status_int for _ in range(3)] == [200, 200, 429]
    assert gateway.get(SITEINFO, second).status_int == 200
    assert gateway.post(COURSES, {}, first).status_int == 400  # a write attempt, on the write budget
    assert_limited(gateway.post(COURSES, {}, first), 1)


def test_requests_that_fail_authentication_are_counted_per_address(make_gateway):
    gateway = make_gateway(RATE_LIMIT_UNAUTHENTICATED="2/minute")
    attacker, bystander = {"REMOTE_ADDR": "203.0.113.7"}, {"REMOTE_ADDR": "203.0.113.8"}

    answers = [gateway.get(SITEINFO, "bad-token", extra_environ=attacker) for _ in range(3)]

    assert [answer.status_int for answer in answers] == [401, 401, 429]
    assert gateway.get(SITEINFO, extra_environ=bystander).status_int == 401
    assert gateway.get(SITEINFO, caller(), extra_environ=attacker).status_int == 200


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(make_gateway):
    trusting = make_gateway(RATE_LIMIT_UNAUTHENTICATED="1/minute", TRUSTED_PROXIES="10.0.0.0/8")
    proxy = {"REMOTE_ADDR": "10.1.2.3"}

    first = trusting.get(SITEINFO, headers={"X-Forwarded-For": "198.51.100.1"}, extra_environ=proxy)
    other_client = trusting.get(SITEINFO, headers={"X-Forwarded-For": "198.51.100.2"}, extra_environ=proxy)
    same_client = trusting.get(SITEINFO, headers={"X-Forwarded-For": "198.51.100.1"}, extra_environ=proxy)
    assert [first.status_int, other_client.status_int, same_client.status_int] == [401, 401, 429]

    spoofer = {"REMOTE_ADDR": "203.0.113.9"}  # not a proxy: its X-Forwarded-For is ignored
    answers = [
        trusting.get(SITEINFO, headers={"X-Forwarded-For": f"198.51.100.{n}"}, extra_environ=spoofer) for n in (3, 4)
    ]
    assert [answer.status_int for answer in answers] == [401, 429]


def test_a_proxy_chain_is_walked_from_the_right_past_trusted_hops(make_gateway):
    gateway = make_gateway(RATE_LIMIT_UNAUTHENTICATED="1/minute", TRUSTED_PROXIES="10.0.0.0/8")
    forwarded = {"X-Forwarded-For": "1.1.1.1, 198.51.100.50, 10.9.9.9"}  # client-set 1.1.1.1 is not believed

    gateway.get(SITEINFO, headers=forwarded, extra_environ={"REMOTE_ADDR": "10.0.0.1"})
    again = gateway.get(SITEINFO, headers={"X-Forwarded-For": "2.2.2.2, 198.51.100.50"},
                        extra_environ={"REMOTE_ADDR": "10.0.0.1"})  # fmt: skip

    assert again.status_int == 429


def test_the_window_starts_at_the_first_request_and_is_not_aligned_to_the_clock():
    now = [1037.5]
    counter = LocalCounter(clock=lambda: now[0])
    rate = Rate(2, 60)

    assert [counter.hit("k", rate).allowed for _ in range(3)] == [True, True, False]
    assert counter.hit("k", rate).reset_s == 60
    now[0] += 59.5
    assert not counter.hit("k", rate).allowed
    now[0] += 0.5
    decision = counter.hit("k", rate)
    assert decision.allowed and decision.remaining == 1


# -- Redis -----------------------------------------------------------------------------------------


def test_gateways_sharing_redis_share_one_budget(make_gateway, redis_url):
    first = make_gateway(REDIS_URL=redis_url, RATE_LIMIT_READ="4/minute")
    second = make_gateway(REDIS_URL=redis_url, RATE_LIMIT_READ="4/minute")
    token = caller()

    answers = [(first if n % 2 else second).get(SITEINFO, token).status_int for n in range(6)]

    assert answers == [200, 200, 200, 200, 429, 429]


def test_the_redis_window_expires(redis_url):
    counter = RedisCounter.from_url(redis_url)
    key, rate = f"expiry-{uuid.uuid4().hex}", Rate(1, 1)

    assert counter.hit(key, rate).allowed
    assert not counter.hit(key, rate).allowed
    redis.Redis.from_url(redis_url).pexpire("lms_api:ratelimit:" + key, 1)
    time.sleep(0.05)
    assert counter.hit(key, rate).allowed


def along(*keys, stamped=None):
    read_along = ReadAlong()
    read_along.add(keys, stamped)
    return read_along


def test_the_count_reads_the_keys_asked_along_in_its_round_trip(redis_url):
    counter = RedisCounter.from_url(redis_url)
    key = f"along-{uuid.uuid4().hex}"
    redis.Redis.from_url(redis_url).set(f"{key}:kept", b"41")

    decision, read = counter.hit_reading(key, Rate(2, 60), along(f"{key}:kept", f"{key}:absent"))
    again, nothing_asked = counter.hit_reading(key, Rate(2, 60), along())

    assert (decision.remaining, read) == (1, {f"{key}:kept": b"41", f"{key}:absent": None})
    assert (again.remaining, nothing_asked) == (0, {})


def test_the_stamps_are_taken_before_the_keys_along_are_read(redis_url):
    counter = RedisCounter.from_url(redis_url)
    key = f"along-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)

    class Stamped:
        """Stamps with the value it sets the key read along to: the snapshot shows it only if stamped before."""

        stamps = 0

        def stamp(self):
            self.stamps += 1
            client.set(f"{key}:state", self.stamps)
            return self.stamps

    stamped = Stamped()
    _, first = counter.hit_reading(key, Rate(5, 60), along(f"{key}:state", stamped=stamped))
    _, second = counter.hit_reading(key, Rate(5, 60), along(f"{key}:state", stamped=stamped))

    assert (first, first.stamps) == ({f"{key}:state": b"1"}, {stamped: 1})
    assert (second, second.stamps) == ({f"{key}:state": b"2"}, {stamped: 2})


def test_a_count_in_the_process_reads_nothing_along(own_redis):
    process, url = own_redis
    counter = RedisCounter.from_url(url)
    process.kill()
    process.wait(10)

    decision, read = counter.hit_reading("along", Rate(2, 60), along("kept"))

    assert (decision.allowed, read) == (True, None)
    assert LocalCounter().hit_reading("along", Rate(2, 60), along("kept"))[1] is None


def test_when_redis_goes_away_the_gateway_keeps_serving_and_says_so_once(make_gateway, own_redis):
    process, url = own_redis
    gateway = make_gateway(REDIS_URL=url, RATE_LIMIT_READ="100/minute")
    token = caller()
    assert gateway.get(SITEINFO, token).headers["RateLimit-Remaining"] == "99"

    process.kill()
    process.wait(10)
    answers = [gateway.get(SITEINFO, token) for _ in range(5)]

    assert [answer.status_int for answer in answers] == [200] * 5
    assert all("RateLimit-Limit" in answer.headers for answer in answers)
    events = [line["event"] for line in gateway.log_lines]
    assert events.count("ratelimit.redis_unavailable") == 1


def test_the_in_process_fallback_still_limits(make_gateway, own_redis):
    process, url = own_redis
    gateway = make_gateway(REDIS_URL=url, RATE_LIMIT_READ="2/minute")
    process.kill()
    process.wait(10)
    token = caller()

    assert [gateway.get(SITEINFO, token).status_int for _ in range(3)] == [200, 200, 429]


def test_ipv6_callers_are_counted_per_64(make_gateway):
    gateway = make_gateway(RATE_LIMIT_UNAUTHENTICATED="2/minute")

    answers = [gateway.get(SITEINFO, extra_environ={"REMOTE_ADDR": f"2001:db8:1:2::{n}"}) for n in range(1, 4)]

    assert [answer.status_int for answer in answers] == [401, 401, 429]
    assert gateway.get(SITEINFO, extra_environ={"REMOTE_ADDR": "2001:db8:1:3::1"}).status_int == 401


def test_limits_hold_when_the_gateway_is_mounted_under_a_prefix(make_gateway):
    gateway = make_gateway(RATE_LIMIT_UNAUTHENTICATED="1/minute")
    mounted = {"SCRIPT_NAME": "/gateway", "REMOTE_ADDR": "203.0.113.20"}

    answers = [gateway.get(SITEINFO, extra_environ=mounted) for _ in range(2)]

    assert [answer.status_int for answer in answers] == [401, 429]
    assert answers[1].headers["X-Content-Type-Options"] == "nosniff"


def test_the_in_process_counter_stays_bounded():
    counter = LocalCounter(clock=lambda: 0.0)
    for n in range(ratelimit.MAX_LOCAL_KEYS + 10):
        counter.hit(f"caller-{n}", Rate(1, 86400))

    assert len(counter._windows) <= ratelimit.MAX_LOCAL_KEYS


def test_redis_is_used_again_once_it_is_back_and_that_is_logged_once(own_redis):
    process, url = own_redis
    now = [1000.0]
    link = RedisLink(redis.Redis.from_url(url, socket_connect_timeout=0.5), "ratelimit", "", clock=lambda: now[0])
    counter = RedisCounter(link, LocalCounter())
    key, rate = f"back-{uuid.uuid4().hex}", Rate(10, 60)
    logs = capture_logs()
    assert counter.hit(key, rate).remaining == 9

    process.kill()
    process.wait(10)
    assert counter.hit(key, rate).remaining == 9  # a fresh in-process window
    restarted, _ = start_redis_server(port=int(url.rsplit(":", 1)[1].split("/")[0]))
    try:
        assert counter.hit(key, rate).remaining == 8  # still on the fallback until the retry time
        now[0] += RETRY_AFTER_S
        assert [counter.hit(key, rate).remaining for _ in range(2)] == [9, 8]  # the new Redis counts afresh
    finally:
        restarted.terminate()
        restarted.wait(10)

    events = [json.loads(line)["event"] for line in logs.getvalue().splitlines()]
    assert events == ["ratelimit.redis_unavailable", "ratelimit.redis_restored"]
