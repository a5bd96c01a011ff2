"""The webhook's parts on their own: the credentials and their clock, the deliveries done (in the process, bounded; in
Redis, and in the process while Redis does not answer), and the events table with the README rows it prints."""

import hashlib
import hmac

import pytest
import redis
from pyramid.testing import DummyRequest

from lms_api import webhooks
from lms_api.moodle.functions import CacheGroup
from lms_api.redisstate import RedisLink, digest, redis_client
from lms_api.security import InvalidToken, Scope
from lms_api.webhooks import EVENTS, DeliveriesDone, Reaction, WebhookCredentials, delivery_key, readme_rows
from tests.support.timing import FakeClock

SECRET = "unit-webhook-secret-0123456789-abcdefghijklmn"
NOW = 1_700_000_000


def request(body=b"eventname=x", **headers):
    made = DummyRequest(headers=headers, body=body)
    made.body = body
    return made


def signature(body, stamp, secret=SECRET):
    return "sha256=" + hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()


@pytest.fixture
def credentials():
    return WebhookCredentials(SECRET, clock=lambda: NOW + 0.9)


def test_the_identity_is_the_webhooks_with_its_scope_only(credentials):
    identity = credentials(request(Authorization=f"Bearer {SECRET}"))

    assert identity.sub == "moodle-webhook"
    assert identity.scopes == {Scope.MOODLE_EVENTS.value}
    assert identity.moodle_userid is None
    assert not identity.has_scope(Scope.COURSES_READ)


def test_nothing_sent_is_no_identity(credentials):
    assert credentials(request()) is None


@pytest.mark.parametrize("age", [-300, 0, 300])
def test_a_signature_is_taken_up_to_300_s_either_way(credentials, age):
    stamp = NOW - age

    assert credentials(request(**{"X-Signature": signature(b"eventname=x", stamp), "X-Webhook-Timestamp": str(stamp)}))


@pytest.mark.parametrize(("age", "why"), [(301, "is 301 s old"), (-301, "is 301 s in the future")])
def test_a_signature_past_300_s_is_refused_saying_how_far(credentials, age, why):
    stamp = NOW - age
    sent = request(**{"X-Signature": signature(b"eventname=x", stamp), "X-Webhook-Timestamp": str(stamp)})

    with pytest.raises(InvalidToken, match=why):
        credentials(sent)


def test_the_hex_of_a_signature_may_be_upper_case(credentials):
    sent = request(**{"X-Signature": signature(b"eventname=x", NOW).upper().replace("SHA256=", "sha256="),
                      "X-Webhook-Timestamp": str(NOW)})  # fmt: skip

    assert credentials(sent)


@pytest.mark.parametrize("stamp", ["-5", "1e9", "٣", "9" * 13, " "])
def test_a_timestamp_that_is_not_whole_seconds_is_refused(credentials, stamp):
    with pytest.raises(InvalidToken, match="X-Webhook-Timestamp"):
        credentials(request(**{"X-Signature": signature(b"eventname=x", stamp), "X-Webhook-Timestamp": stamp}))


def test_a_refusal_never_repeats_what_was_sent(credentials):
    sent = f"Bearer {SECRET[:-1]}"
    with pytest.raises(InvalidToken) as refused:
        credentials(request(Authorization=sent))

    assert SECRET[:-1] not in str(refused.value)


def test_a_secret_that_is_not_latin1_text_is_refused_not_crashed(credentials):
    with pytest.raises(InvalidToken, match="not the gateway's"):
        credentials(request(Authorization="Bearer \udcff"))


# -- deliveries done ------------------------------------------------------------------------------------------------


def test_a_delivery_is_claimed_once_within_the_hour_then_again():
    clock = FakeClock()
    done = DeliveriesDone(clock=clock)

    assert done.claim("a") is True
    clock.advance(webhooks.DEDUPE_S - 1)
    assert done.claim("a") is False
    assert done.claim("b") is True
    clock.advance(1)
    assert done.claim("a") is True


def test_a_released_claim_is_claimed_again():
    done = DeliveriesDone()
    done.claim("a")

    done.release("a")

    assert done.claim("a") is True


def test_the_process_keeps_a_bounded_number_of_deliveries(monkeypatch):
    monkeypatch.setattr(webhooks, "MAX_DELIVERIES_IN_PROCESS", 3)
    done = DeliveriesDone()
    for key in "abcd":
        done.claim(key)

    assert len(done._local) == 3
    assert done.claim("a") is True  # the oldest was forgotten first
    assert done.claim("d") is False


def test_the_key_is_every_field_moodle_sent():
    delivery = {"eventname": "\\core\\event\\x", "objectid": 1, "relateduserid": None, "timecreated": 5, "userid": 9}

    assert delivery_key(delivery) == delivery_key(dict(reversed(delivery.items())))
    for field in ("eventname", "objectid", "relateduserid", "timecreated", "userid", "courseid"):
        assert delivery_key(delivery) != delivery_key({**delivery, field: 2})


def test_a_delivery_without_its_time_is_never_taken_for_another():
    assert delivery_key({"eventname": "\\core\\event\\x", "objectid": 1, "timecreated": None}) is None


def test_replicas_sharing_a_redis_claim_a_delivery_once(empty_redis):
    one = DeliveriesDone(RedisLink(redis_client(empty_redis), "webhook", "note"))
    other = DeliveriesDone(RedisLink(redis_client(empty_redis), "webhook", "note"))

    assert one.claim("a") is True
    assert other.claim("a") is False
    ttl = redis.Redis.from_url(empty_redis).ttl(webhooks._REDIS_PREFIX + digest("a"))
    assert webhooks.DEDUPE_S - 5 <= ttl <= webhooks.DEDUPE_S
    other.release("a")
    assert one.claim("a") is True


def test_with_redis_away_deliveries_are_claimed_in_the_process(own_redis):
    process, url = own_redis
    done = DeliveriesDone(RedisLink(redis_client(url), "webhook", "note"))
    assert done.claim("before") is True
    process.terminate()
    process.wait(10)

    assert done.claim("a") is True  # answered, not raised
    assert done.claim("a") is False
    done.release("a")  # Redis still away: forgotten in the process, never raised
    assert done.claim("a") is True


# -- the events table -----------------------------------------------------------------------------------------------


def test_an_event_that_drops_nothing_says_why():
    with pytest.raises(ValueError, match="says why"):
        Reaction()
    assert Reaction(drops_nothing_because="nothing cached shows it").drops == ()


def test_every_row_names_moodle_s_event_class_and_publishes_what_it_can_address():
    for name, reaction in EVENTS.items():
        assert name.startswith("\\core\\event\\")
        if reaction.publishes is not None:
            assert reaction.publishes in webhooks.PUBLICATIONS
        assert not (reaction.drops_recipients_notifications and reaction.drops)


def test_the_readme_rows_are_one_per_event_and_one_for_the_rest():
    rows = readme_rows().splitlines()

    assert len(rows) == 2 + len(EVENTS) + 1
    assert rows[2].startswith("| `\\core\\event\\course_created` | `objectid` | `courses` | `course.created` to")
    assert any("no cached answer lists enrolments" in row for row in rows)
    assert rows[-1].startswith("| any other |")
    assert all(str(CacheGroup.USERS) in row for row in rows if "\\user_" in row and "enrolment" not in row)
