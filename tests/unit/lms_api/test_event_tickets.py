"""Event stream tickets: single use, a minute long, kept as digests, in Redis when there is one."""

import redis

from lms_api.events.tickets import TICKET_TTL_S, Ticket, TicketStore
from lms_api.redisstate import ExpiringKeys, RedisLink, redis_client

TICKET = Ticket("user-1", 3, ("user-3", "caller-ab"))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_ticket_is_redeemed_once():
    store = TicketStore()
    text = store.issue(TICKET)

    assert store.redeem(text) == TICKET
    assert store.redeem(text) is None
    assert store.redeem("made-up") is None


def test_a_ticket_expires_after_a_minute():
    clock = Clock()
    store = TicketStore(clock=clock)
    fresh, stale = store.issue(TICKET), store.issue(TICKET)

    assert store.redeem(fresh) == TICKET
    clock.now += TICKET_TTL_S
    assert store.redeem(stale) is None


def test_expired_tickets_are_swept_as_new_ones_are_issued():
    clock = Clock()
    store = TicketStore(clock=clock)
    for _ in range(5):
        store.issue(TICKET)
    clock.now += TICKET_TTL_S + 1

    store.issue(TICKET)

    assert len(store._local) == 1


def test_redis_keeps_only_a_digest_for_the_ticket_lifetime(empty_redis):
    client = redis.Redis.from_url(empty_redis)
    store = TicketStore(RedisLink(redis_client(empty_redis), "events.tickets", "in process"))
    text = store.issue(TICKET)

    (key,) = client.keys("lms_api:events:ticket:*")
    assert text.encode() not in key and text.encode() not in client.get(key)
    assert 0 < client.ttl(key) <= TICKET_TTL_S
    assert TicketStore(RedisLink(redis_client(empty_redis), "events.tickets", "")).redeem(text) == TICKET
    assert store.redeem(text) is None


def test_while_redis_is_away_tickets_are_kept_in_the_process(own_redis):
    process, url = own_redis
    store = TicketStore(RedisLink(redis_client(url), "events.tickets", "in process"))
    process.terminate()
    process.wait(10)

    text = store.issue(TICKET)

    assert store.redeem(text) == TICKET
    assert store.redeem(text) is None


def test_a_ticket_whose_redis_answer_was_lost_is_still_used_once(empty_redis):
    class AnswerLost(redis.Redis):
        def set(self, *args, **kwargs):  # stored, but the answer times out
            super().set(*args, **kwargs)
            raise redis.TimeoutError("Timeout reading from socket")

    issuing = TicketStore(RedisLink(AnswerLost.from_url(empty_redis), "events.tickets", "in process"))
    text = issuing.issue(TICKET)
    another_replica = TicketStore(RedisLink(redis_client(empty_redis), "events.tickets", ""))
    issuing._link.answered()  # Redis answers again by the time the stream comes

    assert issuing.redeem(text) == TICKET
    assert another_replica.redeem(text) is None


def test_keys_kept_in_the_process_expire_and_are_bounded_oldest_first():
    clock = Clock()
    keys = ExpiringKeys(2, clock)

    assert keys.add("a", 1, 10) and not keys.add("a", 2, 10)  # as SET NX: the live key stays
    assert keys.add("b", 2, 10) and keys.add("c", 3, 10)  # the third pushes the oldest out
    assert (keys.pop("a"), keys.pop("b")) == (None, 2)
    clock.now += 10
    assert keys.pop("c") is None  # its time ran out
