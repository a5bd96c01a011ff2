"""The stores of Idempotency-Keys, in the process and in a real Redis: claims, holder-only completion and release, lock
deadlines and abandoned keys, unsettled answers taken over, the TTL and the process's memory bound; and the key
header's rules, as the server applies them and as the OpenAPI document says them."""

import re
import time
from types import SimpleNamespace

import pytest
import redis
from marshmallow import Schema
from pyramid.testing import DummyRequest
from structlog.testing import capture_logs

from lms_api.errors import ApiError
from lms_api.idempotency import (
    ENTRY_OVERHEAD_BYTES,
    EVICTION_WARNING_INTERVAL_S,
    KEY_PREFIX,
    Claim,
    ClaimState,
    KeptAnswer,
    LocalIdempotencyStore,
    RedisIdempotencyStore,
    replay,
    requested_key,
)
from lms_api.openapi import IDEMPOTENCY_KEY_PARAMETER
from lms_api.operation import OPERATION, Operation
from lms_api.redisstate import RedisLink
from lms_api.security import Scope
from lms_api.views import api_view, operation_view
from tests.support.timing import FakeClock

ANSWER = KeptAnswer(201, (("Content-Type", "application/json"), ("Location", "https://x/api/moodle/courses/7")), b"{}")
LATER = KeptAnswer(200, (("Content-Type", "application/json"),), b'{"ok":true,"data":2}')
# Waits in Redis are real: each check is 0.2 s or more from the deadline it checks, under a loaded machine too.
LOCK_S = 0.4
TTL_S = 1.2


class LocalStore:
    """A local store on a fake clock: waiting is moving the clock."""

    def __init__(self, max_bytes=1 << 20):
        self.clock = FakeClock()
        self.store = LocalIdempotencyStore(TTL_S, LOCK_S, max_bytes, clock=self.clock)

    def wait(self, seconds):
        self.clock.advance(seconds)


class RedisStore:
    def __init__(self, url):
        self.store = RedisIdempotencyStore(RedisLink(redis.Redis.from_url(url), "idempotency", "test"), TTL_S, LOCK_S)

    def wait(self, seconds):
        time.sleep(seconds)


@pytest.fixture(params=["local", "redis"])
def kept(request):
    if request.param == "local":
        return LocalStore()
    return RedisStore(request.getfixturevalue("empty_redis"))


def test_a_free_key_is_held_by_its_first_claim_and_its_answer_replayed_once_completed(kept):
    store = kept.store
    assert store.claim("k", "fp", "h1", False).state is ClaimState.BEGAN
    assert store.claim("k", "fp", "h2", False).state is ClaimState.BUSY
    assert store.claim("k", "other", "h2", False).state is ClaimState.REUSED
    assert store.complete("k", "h1", ANSWER, unsettled=False)
    claim = store.claim("k", "fp", "h3", True)
    assert (claim.state, claim.answer) == (ClaimState.KEPT, ANSWER)
    assert store.claim("k", "other", "h3", False).state is ClaimState.REUSED


def test_only_the_holder_completes_or_releases_a_key(kept):
    store = kept.store
    store.claim("k", "fp", "h1", False)
    assert not store.complete("k", "h2", LATER, unsettled=False)
    assert not store.release("k", "h2")
    assert store.claim("k", "fp", "h2", False).state is ClaimState.BUSY
    assert store.release("k", "h1")
    assert not store.complete("k", "h1", LATER, unsettled=False), "a released key is no longer the holder's"
    assert store.claim("k", "fp", "h3", False).state is ClaimState.BEGAN


def test_a_lock_past_its_deadline_without_an_answer_leaves_the_key_abandoned_not_free(kept):
    store = kept.store
    store.claim("k", "fp", "crashed", False)
    kept.wait(LOCK_S / 2)
    assert store.claim("k", "fp", "h2", True).state is ClaimState.BUSY
    kept.wait(LOCK_S / 2 + 0.2)
    assert store.claim("k", "fp", "h2", False) == Claim(ClaimState.ABANDONED)
    assert store.claim("k", "other", "h2", False).state is ClaimState.REUSED
    assert store.claim("k", "fp", "h2", True) == Claim(ClaimState.TOOK), "to settle or resend: no answer to go on"
    assert not store.complete("k", "crashed", ANSWER, unsettled=False), "taken over: no longer the crashed one's"
    assert store.claim("k", "fp", "h3", True).state is ClaimState.BUSY
    assert store.release("k", "h2")  # the retry did nothing: the key is abandoned again, not free
    assert store.claim("k", "fp", "h3", False).state is ClaimState.ABANDONED
    assert store.claim("k", "fp", "h3", True).state is ClaimState.TOOK
    assert store.complete("k", "h3", LATER, unsettled=False)
    assert store.claim("k", "fp", "h4", False) == Claim(ClaimState.KEPT, LATER)


def test_a_holder_that_let_go_before_its_deadline_frees_the_key(kept):
    store = kept.store
    store.claim("k", "fp", "h1", False)
    assert store.release("k", "h1")  # nothing was done
    assert store.claim("k", "other", "h2", False).state is ClaimState.BEGAN


def test_an_abandoned_key_lasts_the_ttl_from_its_claim(kept):
    store = kept.store
    store.claim("k", "fp", "crashed", False)
    kept.wait(TTL_S - 0.3)
    assert store.claim("k", "fp", "h2", False).state is ClaimState.ABANDONED
    kept.wait(0.5)
    assert store.claim("k", "fp", "h2", False).state is ClaimState.BEGAN


def test_a_kept_answer_lasts_its_ttl(kept):
    store = kept.store
    store.claim("k", "fp", "h1", False)
    store.complete("k", "h1", ANSWER, unsettled=False)
    kept.wait(TTL_S - 0.3)
    assert store.claim("k", "fp", "h2", False).state is ClaimState.KEPT
    kept.wait(0.5)
    assert store.claim("k", "fp", "h2", False).state is ClaimState.BEGAN


def test_an_unsettled_answer_is_replayed_unless_taken_over_and_comes_back_when_the_retry_lets_go(kept):
    store = kept.store
    store.claim("k", "fp", "h1", False)
    store.complete("k", "h1", ANSWER, unsettled=True)
    assert store.claim("k", "fp", "h2", False) == store.claim("k", "fp", "h2", False)
    assert store.claim("k", "fp", "h2", False).state is ClaimState.KEPT
    took = store.claim("k", "fp", "h2", True)
    assert (took.state, took.answer) == (ClaimState.TOOK, ANSWER)
    assert store.claim("k", "fp", "h3", True).state is ClaimState.BUSY
    assert store.release("k", "h2")  # the retry changed nothing (a 5xx before sending): the unsettled answer stays
    assert store.claim("k", "fp", "h3", True).state is ClaimState.TOOK
    assert store.complete("k", "h3", LATER, unsettled=False)
    assert store.claim("k", "fp", "h4", True) == store.claim("k", "fp", "h4", False)
    assert store.claim("k", "fp", "h4", True).answer == LATER


def test_a_retry_that_took_over_an_unsettled_answer_and_stopped_leaves_it_unsettled(kept):
    store = kept.store
    store.claim("k", "fp", "h1", False)
    store.complete("k", "h1", ANSWER, unsettled=True)
    store.claim("k", "fp", "crashed", True)
    kept.wait(LOCK_S + 0.2)
    assert store.claim("k", "fp", "h2", False).state is ClaimState.KEPT
    took = store.claim("k", "fp", "h2", True)
    assert (took.state, took.answer) == (ClaimState.TOOK, ANSWER)


def test_redis_keeps_a_key_under_the_prefix_of_its_own_for_the_ttl_and_its_lock_deadline_in_the_record(empty_redis):
    store = RedisStore(empty_redis).store
    client = redis.Redis.from_url(empty_redis)
    seconds, microseconds = client.time()
    now_ms = seconds * 1000 + microseconds // 1000
    store.claim("k", "fp", "h1", False)
    assert client.keys("*") == [(KEY_PREFIX + "k").encode()]
    assert (TTL_S - 0.3) * 1000 < client.pttl(KEY_PREFIX + "k") <= TTL_S * 1000
    until = int(client.hget(KEY_PREFIX + "k", "until"))
    assert now_ms + LOCK_S * 1000 <= until < now_ms + (LOCK_S + 0.3) * 1000
    store.complete("k", "h1", ANSWER, unsettled=False)
    assert (TTL_S - 0.3) * 1000 < client.pttl(KEY_PREFIX + "k") <= TTL_S * 1000
    assert client.hget(KEY_PREFIX + "k", "until") is None


def test_redis_that_does_not_answer_refuses_a_claim_with_a_503_and_a_retry_after(unused_port):
    client = redis.Redis.from_url(f"redis://127.0.0.1:{unused_port}/0", socket_connect_timeout=0.2)
    store = RedisIdempotencyStore(RedisLink(client, "idempotency", "test"), TTL_S, LOCK_S)
    for _ in range(2):  # then at once, while the link is known to be down
        with pytest.raises(ApiError) as refused:
            store.claim("k", "fp", "h1", False)
        assert (refused.value.status, refused.value.code, refused.value.headers["Retry-After"]) == (
            503,
            "idempotencyunavailable",
            "5",
        )
    with pytest.raises(redis.ConnectionError):  # the answer is not kept: the caller says so
        store.complete("k", "h1", ANSWER, unsettled=False)
    assert not store.release("k", "h1")


def test_the_process_keeps_answers_within_its_bound_least_recently_used_out_first_never_a_held_key():
    body = b"x" * 1000
    entry = ENTRY_OVERHEAD_BYTES + 1 + len("fp") + len(body) + len("Content-Type") + len("text/plain")
    kept = LocalStore(max_bytes=3 * entry)
    store = kept.store
    answer = KeptAnswer(200, (("Content-Type", "text/plain"),), body)
    for key in "abc":
        store.claim(key, "fp", "h", False)
        store.complete(key, "h", answer, unsettled=False)
    assert store.bytes_kept == 3 * entry
    assert store.claim("a", "fp", "h", False).state is ClaimState.KEPT  # a is now used more recently than b
    store.claim("held", "fp", "h", False)  # held keys count, and are never evicted
    store.claim("d", "fp", "h", False)
    store.complete("d", "h", answer, unsettled=False)
    assert store.bytes_kept <= 3 * entry
    assert store.claim("b", "fp", "h2", False).state is ClaimState.BEGAN, "b, least recently used, went first"
    assert store.claim("held", "fp", "h2", False).state is ClaimState.BUSY
    assert store.claim("d", "fp", "h2", False).state is ClaimState.KEPT


def test_answers_dropped_before_their_ttl_are_said_in_a_warning_at_most_once_a_minute():
    answer = KeptAnswer(200, (), b"x" * 1000)
    max_bytes = 2 * (ENTRY_OVERHEAD_BYTES + 1 + len("fp") + 1000)
    kept = LocalStore(max_bytes)
    store = kept.store

    def keep(keys):
        for key in keys:
            store.claim(key, "fp", "h", False)
            store.complete(key, "h", answer, unsettled=False)

    with capture_logs() as logs:
        keep("ab")
        assert logs == []
        keep("cd")
        kept.wait(EVICTION_WARNING_INTERVAL_S - 1)
        keep("e")
        kept.wait(1)
        keep("f")
    warnings = [(line["log_level"], line["event"], line["answers"], line["max_bytes"]) for line in logs]
    assert warnings == [
        ("warning", "idempotency.evicted", 1, max_bytes),
        ("warning", "idempotency.evicted", 3, max_bytes),
    ]
    kept_keys = [key for key in "abcdef" if store.claim(key, "fp", "h2", False).state is ClaimState.KEPT]
    assert kept_keys == ["e", "f"], "the warning changes nothing in what is dropped"


def test_an_answer_larger_than_the_bound_is_not_kept():
    store = LocalStore(max_bytes=ENTRY_OVERHEAD_BYTES * 2).store
    store.claim("k", "fp", "h", False)
    store.complete("k", "h", KeptAnswer(200, (), b"x" * ENTRY_OVERHEAD_BYTES * 2), unsettled=False)
    assert store.bytes_kept == 0
    assert store.claim("k", "fp", "h", False).state is ClaimState.BEGAN


def test_a_kept_answer_is_stored_as_its_exact_bytes():
    answer = KeptAnswer(504, (("Retry-After", "3"),), b'{"a":"\\u00e9\n"}\n\x00')
    assert KeptAnswer.decode(answer.encode()) == answer


def _request(method="POST", required=False, **headers):
    request = DummyRequest(method=method, headers=headers)
    request.lms_settings = type("Settings", (), {"idempotency_required": required})()
    return request


ACCEPTED_KEYS = [
    ("a", "a"),
    ("k" * 255, "k" * 255),
    ("order 42 ~!", "order 42 ~!"),
    ('"', '"'),
    ('a"b', 'a"b'),
    ('"ab', '"ab'),
    ('ab"', 'ab"'),
    ('"8e03978e-40d5"', "8e03978e-40d5"),
    ('"a,b \\"c\\" \\\\"', 'a,b "c" \\'),
    ('"' + "k" * 255 + '"', "k" * 255),
    ('"' + '\\"' * 255 + '"', '"' * 255),
]
REFUSED_KEYS = [
    "",
    "k" * 256,
    "a\x01b",
    "a\tb",
    "caf\xe9",
    "a\x7f",
    "a, b",
    "a,b",
    ",",
    '""',
    '"a"b"',
    '"a\\b"',
    '"a\\"',
    '"' + "k" * 256 + '"',
    '"' + '\\"' * 256 + '"',
    '"caf\xe9"',
]


@pytest.mark.parametrize(("value", "key"), ACCEPTED_KEYS)
def test_a_key_is_1_to_255_printable_ascii_characters_or_a_quoted_string_of_them(value, key):
    assert requested_key(_request(**{"Idempotency-Key": value})) == key


@pytest.mark.parametrize("value", REFUSED_KEYS)
def test_a_malformed_key_is_a_400(value):
    with pytest.raises(ApiError) as refused:
        requested_key(_request(**{"Idempotency-Key": value}))
    assert (refused.value.status, refused.value.code) == (400, "invalididempotencykey")


@pytest.mark.parametrize(
    ("value", "accepted"), [(value, True) for value, _ in ACCEPTED_KEYS] + [(value, False) for value in REFUSED_KEYS]
)
def test_the_openapi_schema_of_the_key_accepts_what_the_server_accepts(value, accepted):
    schema = IDEMPOTENCY_KEY_PARAMETER["schema"]
    # The pattern is ECMA-262, as JSON Schema's: the same in Python's re for what it uses (\xNN classes, groups,
    # bounded repeats); \Z where ECMA's $ would not take a final newline.
    pattern = re.compile(schema["pattern"].removesuffix("$") + r"\Z")
    documented = schema["minLength"] <= len(value) <= schema["maxLength"] and pattern.match(value) is not None
    assert documented is accepted


def test_reads_ignore_the_key_and_writes_without_one_are_refused_only_when_required():
    assert requested_key(_request("GET", required=True, **{"Idempotency-Key": ""})) is None
    assert requested_key(_request("POST")) is None
    with pytest.raises(ApiError) as refused:
        requested_key(_request("PATCH", required=True))
    assert (refused.value.status, refused.value.code) == (428, "idempotencykeyrequired")


def test_an_operation_answers_an_unknown_outcome_one_way_at_most():
    with pytest.raises(TypeError, match="settled_by and resend_when_unknown"):
        api_view(
            request_method="POST",
            permission=Scope.COURSES_WRITE,
            answers=Schema(),
            settled_by="look",
            resend_when_unknown=True,
        )


def test_settled_by_naming_no_method_of_the_class_stops_the_start():
    class Views:
        def write(self):
            return {}

    info = SimpleNamespace(
        options={OPERATION: Operation(Scope.COURSES_WRITE, Schema(), settled_by="lookup")}, original_view=Views
    )
    with pytest.raises(TypeError, match=r"settled_by='lookup'.*has no such method"):
        operation_view(lambda context, request: None, info)


def test_a_replayed_answer_is_sent_as_kept_and_its_error_told_to_the_audit_when_it_is_an_envelope():
    envelope = b'{"ok":false,"error":{"code":"coursenotfound","message":"No","details":{"id":9},"request_id":"r1"}}'
    request = DummyRequest()
    replayed = replay(request, KeptAnswer(404, (("Content-Type", "application/json"),), envelope))
    assert (replayed.status_int, replayed.body, replayed.headers["Idempotent-Replayed"]) == (404, envelope, "true")
    assert (request.api_error.code, request.api_error.details) == ("coursenotfound", {"id": 9})

    request = DummyRequest()
    replayed = replay(request, KeptAnswer(409, (("Location", "/api/moodle/courses/7"),), b"<html>not ours</html>"))
    assert (replayed.status_int, replayed.headers["Location"], request.api_error) == (
        409,
        "/api/moodle/courses/7",
        None,
    )
