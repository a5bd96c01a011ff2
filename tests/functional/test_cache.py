"""The read cache through the whole WSGI stack against the sandbox over real HTTP: Cache-Status on each cached route,
Moodle calls counted at the sandbox, authorisation before the cache, stale-if-error, invalidation by writes, one
Moodle call for concurrent misses, and replicas sharing one Redis (which may go away)."""

import re
import threading
import time
import uuid

import pytest
import structlog
import webtest

from lms_api.cache import ReadCache
from lms_api.config import make_app
from lms_api.moodle import guard
from tests.support.credentials import ALL_SCOPES, mint
from tests.support.gateway import settings_for
from tests.support.operations import api_operations
from tests.support.sandbox import moodle_call, queue_fault, sandbox_calls
from tests.support.timing import FakeClock, eventually, join
from tests.unit.lms_api.cache.support import RedisRoundTrips

API = "/api/moodle"
SITEINFO = f"{API}/siteinfo"
COURSES = f"{API}/courses"
NOTIFICATIONS = f"{API}/notifications"
UNREAD_COUNT = f"{API}/notifications/unread-count"
BY_FIELD = "core_course_get_courses_by_field"
GET_COURSES = "core_course_get_courses"
GET_NOTIFICATIONS = "message_popup_get_popup_notifications"
GET_USERS = "core_user_get_users_by_field"
MISS = "lms_api; fwd=uri-miss; stored"
MISS_NOT_STORED = "lms_api; fwd=uri-miss"
COLLAPSED = "lms_api; fwd=uri-miss; collapsed"
REFRESHED = "lms_api; fwd=request; stored"
TOKEN = mint(ALL_SCOPES, sub="cache-reader", moodle_userid=3)
STUDENT, OTHER_STUDENT, ADMIN_USER = 3, 4, 2


def hit_ttl(response):
    """The seconds left of a fresh hit's ``Cache-Status`` (None for anything else)."""
    match = re.fullmatch(r"lms_api; hit; ttl=(\d+)", response.headers.get("Cache-Status", ""))
    return int(match[1]) if match else None


def stale_ttl(response):
    """The seconds past expiry (negative) of a stale answer's ``Cache-Status`` (None for anything else)."""
    match = re.fullmatch(r"lms_api; hit; ttl=(-\d+); detail=stale-if-error", response.headers.get("Cache-Status", ""))
    return int(match[1]) if match else None


def calls_since(sandbox, before):
    """Moodle calls the sandbox received since ``before`` (a :func:`sandbox_calls` snapshot), by function."""
    return {
        name: count - before.get(name, 0)
        for name, count in sandbox_calls(sandbox).items()
        if count != before.get(name, 0)
    }


def unique(prefix="C"):
    return f"{prefix}{uuid.uuid4().hex[:8].upper()}"


def create_course(gateway, **fields):
    """A course of this test's own, so changing it disturbs no other test."""
    body = {"fullname": f"Cache test {unique()}", "shortname": unique(), "categoryid": 3, **fields}
    response = gateway.post(COURSES, body, TOKEN)
    assert response.status_int == 201, response.text
    assert "Cache-Status" not in response.headers  # writes carry none
    return response.json["data"]["id"]


def get_in_threads(gateway, count, path, token=TOKEN):
    """``count`` GETs let go at once, each on its own TestApp over the same app; their responses."""
    barrier = threading.Barrier(count)
    responses = [None] * count

    def run(n):
        app = webtest.TestApp(gateway.router)
        barrier.wait()
        responses[n] = app.get(path, headers={"Authorization": f"Bearer {token}"}, expect_errors=True)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    return threads, responses


# -- Cache-Status on each cached route -------------------------------------------------------------


NOTIFICATIONS_TTL = 30  # notifications are kept only when given a TTL
# What each route and method answered through the read cache is asked (a query string), and the TTL of its group.
# The cached operations are the registry's: one added without a line here fails the comparison, naming it.
CACHED_READS = {
    ("api.moodle.siteinfo", "GET"): [("", 300)],
    ("api.moodle.courses", "GET"): [
        ("", 60),
        ("?search=python", 60),  # two cached calls: the search, then the page's courses by id
        ("?category=2", 60),
    ],
    ("api.moodle.course", "GET"): [("", 60)],
    ("api.moodle.users.by_field", "GET"): [("?field=username&values=student1,student2", 30)],
    ("api.moodle.notifications", "GET"): [("", NOTIFICATIONS_TTL)],
    ("api.moodle.notifications.unread_count", "GET"): [("", NOTIFICATIONS_TTL)],
}


def test_the_table_names_every_operation_answered_through_the_cache(gateway):
    registry = gateway.router.registry
    cached = {(each.route_name, each.method) for each in api_operations(registry) if each.operation.cached}

    assert cached == set(CACHED_READS)


@pytest.mark.parametrize(
    ("operation", "query", "ttl"),
    [
        pytest.param(operation, query, ttl, id=f"{operation[1]} {operation[0]}{query}")
        for operation, reads in CACHED_READS.items()
        for query, ttl in reads
    ],
)
def test_each_cached_route_is_a_miss_then_a_hit_without_calling_moodle(make_gateway, sandbox, operation, query, ttl):
    gateway = make_gateway(CACHE_TTLS=f"notifications={NOTIFICATIONS_TTL}")
    paths = {(each.route_name, each.method): each.path for each in api_operations(gateway.router.registry)}
    path = paths[operation] + query
    first = gateway.get(path, TOKEN)
    before = sandbox_calls(sandbox)

    second = gateway.get(path, TOKEN)

    assert (first.status_int, first.headers["Cache-Status"]) == (200, MISS)
    assert second.status_int == 200 and second.json["data"] == first.json["data"]
    assert ttl - 1 <= hit_ttl(second) <= ttl
    assert calls_since(sandbox, before) == {}
    summary = [line for line in gateway.log_lines if line["event"] == "request"][-1]
    assert summary["cache"] == second.headers["Cache-Status"]


def test_the_key_is_never_the_callers_token(make_gateway, sandbox):
    gateway = make_gateway()
    gateway.get(f"{COURSES}?category=2", TOKEN)
    before = sandbox_calls(sandbox)

    other_caller = gateway.get(f"{COURSES}?category=2", mint("courses:read", sub="someone-else"))

    assert other_caller.status_int == 200 and hit_ttl(other_caller) is not None
    assert calls_since(sandbox, before) == {}


def test_the_parameters_are_part_of_the_key(make_gateway, sandbox):
    gateway = make_gateway()
    gateway.get(f"{COURSES}/2", TOKEN)
    before = sandbox_calls(sandbox)

    other_course = gateway.get(f"{COURSES}/3", TOKEN)

    assert other_course.headers["Cache-Status"] == MISS and other_course.json["data"]["id"] == 3
    assert calls_since(sandbox, before) == {BY_FIELD: 1}


def test_cache_status_is_exposed_to_the_page(make_gateway):
    gateway = make_gateway(CORS_ALLOWED_ORIGINS="https://app.example.edu")

    response = gateway.get(SITEINFO, TOKEN, headers={"Origin": "https://app.example.edu"})

    assert response.headers["Cache-Status"] == MISS
    exposed = [name.strip().lower() for name in response.headers["Access-Control-Expose-Headers"].split(",")]
    assert "cache-status" in exposed


@pytest.mark.parametrize(
    ("ttls", "path", "function", "still_cached"),
    [
        ("courses=0", f"{COURSES}/2", BY_FIELD, SITEINFO),
        ("siteinfo=0", SITEINFO, "core_webservice_get_site_info", f"{COURSES}/2"),
    ],
)
def test_a_ttl_of_zero_turns_a_group_off(make_gateway, sandbox, ttls, path, function, still_cached):
    gateway = make_gateway(CACHE_TTLS=ttls)
    gateway.get(f"{API}/users/by-field?field=username&values=student1", TOKEN)  # the function list
    before = sandbox_calls(sandbox)

    answers = [gateway.get(path, TOKEN) for _ in range(2)]

    assert [answer.status_int for answer in answers] == [200, 200]
    assert all("Cache-Status" not in answer.headers for answer in answers)
    assert calls_since(sandbox, before) == {function: 2}
    assert gateway.get(still_cached, TOKEN).headers["Cache-Status"] == MISS  # the other groups keep their TTLs


def test_an_entry_expires_after_its_ttl(make_gateway, sandbox):
    gateway = make_gateway(CACHE_TTLS="courses=1")
    gateway.get(f"{COURSES}/2", TOKEN)
    assert hit_ttl(gateway.get(f"{COURSES}/2", TOKEN)) == 1

    time.sleep(1.05)  # the one real wait: the gateway's own clock, not a stand-in
    before = sandbox_calls(sandbox)
    expired = gateway.get(f"{COURSES}/2", TOKEN)

    assert expired.headers["Cache-Status"] == MISS
    assert calls_since(sandbox, before) == {BY_FIELD: 1}


NO_CACHE = [{"Cache-Control": "no-cache"}, {"Pragma": "no-cache"}, {"Cache-Control": "max-age=0"}]
REFRESHER = mint(f"{ALL_SCOPES} cache:refresh", sub="cache-refresher", moodle_userid=3)


@pytest.mark.parametrize("header", NO_CACHE)
def test_no_cache_with_the_scope_forwards_to_moodle_and_keeps_the_new_answer(make_gateway, sandbox, header):
    gateway = make_gateway()
    course_id = create_course(gateway)
    gateway.get(f"{COURSES}/{course_id}", TOKEN)
    moodle_call(sandbox, "core_course_update_courses", courses=[{"id": course_id, "fullname": "Changed in Moodle"}])
    cached = gateway.get(f"{COURSES}/{course_id}", TOKEN)
    before = sandbox_calls(sandbox)

    refreshed = gateway.get(f"{COURSES}/{course_id}", REFRESHER, headers=header)

    assert hit_ttl(cached) is not None and cached.json["data"]["fullname"] != "Changed in Moodle"
    assert refreshed.headers["Cache-Status"] == REFRESHED
    assert refreshed.json["data"]["fullname"] == "Changed in Moodle"
    assert calls_since(sandbox, before) == {BY_FIELD: 1}
    after = gateway.get(f"{COURSES}/{course_id}", TOKEN)
    assert hit_ttl(after) is not None and after.json["data"]["fullname"] == "Changed in Moodle"


@pytest.mark.parametrize("header", NO_CACHE)
def test_no_cache_without_the_scope_is_answered_from_the_cache_saying_so(make_gateway, sandbox, header):
    gateway = make_gateway()
    gateway.get(SITEINFO, TOKEN)  # the function list, read once per process
    before = sandbox_calls(sandbox)

    answers = [gateway.get(f"{COURSES}/2", TOKEN, headers=header) for _ in range(50)]

    assert calls_since(sandbox, before) == {BY_FIELD: 1}  # without the scope: 50 Moodle calls
    assert [answer.status_int for answer in answers] == [200] * 50
    assert answers[0].headers["Cache-Status"] == MISS
    for answer in answers[1:]:
        assert re.fullmatch(r"lms_api; hit; ttl=\d+; detail=no-cache-ignored", answer.headers["Cache-Status"])
        assert answer.json["data"] == answers[0].json["data"]


@pytest.mark.parametrize("scope", ["courses:read cache:refresh", "admin"])
def test_with_cache_refresh_each_no_cache_request_is_forwarded(make_gateway, sandbox, scope):
    gateway = make_gateway()
    gateway.get(SITEINFO, TOKEN)
    token = mint(scope, sub="refresher")
    before = sandbox_calls(sandbox)

    answers = [gateway.get(f"{COURSES}/2", token, headers={"Cache-Control": "no-cache"}) for _ in range(50)]

    assert calls_since(sandbox, before) == {BY_FIELD: 50}
    assert [answer.headers["Cache-Status"] for answer in answers] == [REFRESHED] * 50


def test_cache_refresh_alone_opens_no_route(make_gateway, sandbox):
    gateway = make_gateway()
    before = sandbox_calls(sandbox)

    response = gateway.get(f"{COURSES}/2", mint("cache:refresh"), headers={"Cache-Control": "no-cache"})

    assert response.status_int == 403
    assert response.json["error"]["details"] == {"required_scope": "courses:read"}
    assert calls_since(sandbox, before) == {}


# -- authorisation before the cache ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        (SITEINFO, "courses:read users:read"),
        (f"{COURSES}/2", "siteinfo:read users:read"),
        (f"{COURSES}?category=2", "siteinfo:read"),
        (f"{API}/users/by-field?field=username&values=student1", "courses:read"),
    ],
)
def test_a_caller_without_the_scope_is_refused_even_when_the_answer_is_cached(make_gateway, sandbox, path, scope):
    gateway = make_gateway()
    assert gateway.get(path, TOKEN).status_int == 200
    before = sandbox_calls(sandbox)

    refused = gateway.get(path, mint(scope, sub="under-scoped"))
    anonymous = gateway.get(path)

    assert refused.status_int == 403 and refused.json["error"]["code"] == "forbidden"
    assert anonymous.status_int == 401
    assert "Cache-Status" not in refused.headers and "Cache-Status" not in anonymous.headers
    assert "data" not in refused.json and "data" not in anonymous.json
    assert calls_since(sandbox, before) == {}


def test_notifications_are_not_cached_by_default(make_gateway, sandbox):
    gateway = make_gateway()
    before = sandbox_calls(sandbox)

    answers = [gateway.get(NOTIFICATIONS, mint("notifications:read", moodle_userid=STUDENT)) for _ in range(2)]

    assert [answer.status_int for answer in answers] == [200, 200]
    assert all("Cache-Status" not in answer.headers for answer in answers)
    assert calls_since(sandbox, before).get(GET_NOTIFICATIONS) == 2


@pytest.mark.parametrize("path", [NOTIFICATIONS, UNREAD_COUNT])
def test_with_a_ttl_each_users_notifications_are_that_users_entry(make_gateway, sandbox, path):
    gateway = make_gateway(CACHE_TTLS="notifications=30")
    student, admin = (
        mint("notifications:read", moodle_userid=STUDENT),
        mint("notifications:read", moodle_userid=ADMIN_USER),
    )
    first = gateway.get(path, student)
    before = sandbox_calls(sandbox)

    again = gateway.get(path, student)
    other_user = gateway.get(path, admin)

    assert (first.headers["Cache-Status"], hit_ttl(again)) == (MISS, 30)
    assert again.json["data"] == first.json["data"] and first.json["data"]["userid"] == STUDENT
    assert other_user.headers["Cache-Status"] == MISS and other_user.json["data"]["userid"] == ADMIN_USER
    assert other_user.json["data"] != first.json["data"]
    assert sum(calls_since(sandbox, before).values()) == 1


@pytest.mark.parametrize("path", [NOTIFICATIONS, UNREAD_COUNT])
def test_another_users_cached_notifications_still_need_admin(make_gateway, sandbox, path):
    gateway = make_gateway(CACHE_TTLS="notifications=30")
    assert gateway.get(path, mint("notifications:read", moodle_userid=STUDENT)).status_int == 200
    before = sandbox_calls(sandbox)

    other_student = gateway.get(f"{path}?userid={STUDENT}", mint("notifications:read", moodle_userid=OTHER_STUDENT))
    no_claim = gateway.get(f"{path}?userid={STUDENT}", mint("notifications:read"))
    no_scope = gateway.get(path, mint("courses:read", moodle_userid=STUDENT))
    admin = gateway.get(f"{path}?userid={STUDENT}", mint("notifications:read admin", moodle_userid=ADMIN_USER))

    for refused in (other_student, no_claim, no_scope):
        assert refused.status_int == 403 and refused.json["error"]["code"] == "forbidden"
        assert "Cache-Status" not in refused.headers
    assert admin.status_int == 200 and hit_ttl(admin) == 30 and admin.json["data"]["userid"] == STUDENT
    assert calls_since(sandbox, before) == {}


# -- stale-if-error --------------------------------------------------------------------------------


@pytest.fixture
def cache_clock(monkeypatch):
    """The read cache's clock in every gateway the test builds: it moves only when told to."""
    clock = FakeClock()
    from_settings = ReadCache.from_settings
    monkeypatch.setattr(ReadCache, "from_settings", classmethod(lambda cls, settings: from_settings(settings, clock)))
    return clock


@pytest.fixture
def failing_gateway(make_gateway, cache_clock):
    """A gateway that tries Moodle once per call, so one queued fault is one failed call; its deadline leaves a loaded
    host room for the calls that must succeed."""
    return make_gateway(MOODLE_MAX_RETRIES="0", MOODLE_TIMEOUT_MS="1000")


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "reset"},
        {"kind": "http", "status": 502},
        {"kind": "http", "status": 503},
        {"kind": "http", "status": 504},
        {"kind": "delay", "seconds": 2.5},  # well past MOODLE_TIMEOUT_MS
    ],
    ids=["reset", "http502", "http503", "http504", "timeout"],
)
def test_a_transport_failure_serves_the_expired_entry(failing_gateway, cache_clock, sandbox, fault):
    cached = failing_gateway.get(f"{COURSES}/2", TOKEN)
    cache_clock.advance(60 + 30)
    queue_fault(sandbox, function=BY_FIELD, **fault)
    before = sandbox_calls(sandbox)

    stale = failing_gateway.get(f"{COURSES}/2", TOKEN)

    assert stale.status_int == 200, stale.text
    assert stale.json["data"] == cached.json["data"]
    assert stale_ttl(stale) == -30
    assert calls_since(sandbox, before) == {BY_FIELD: 1}  # Moodle was tried first
    assert "cache.stale_served" in [line["event"] for line in failing_gateway.log_lines]


@pytest.fixture
def breaker_log_of_this_test(monkeypatch):
    """The breaker logs its changes through a proxy that keeps its logger on first use: give this test its own, so
    the logging set-up of this test's gateway is not kept for the tests that capture the breaker's log lines."""
    monkeypatch.setattr(guard, "log", structlog.get_logger("lms_api.moodle"))


@pytest.mark.usefixtures("breaker_log_of_this_test")
def test_an_open_breaker_serves_expired_entries_without_calling_moodle(make_gateway, cache_clock, sandbox):
    gateway = make_gateway(MOODLE_MAX_RETRIES="0", MOODLE_BREAKER_FAILURES="1")
    gateway.get(f"{COURSES}/2", TOKEN)
    gateway.get(f"{COURSES}/3", TOKEN)
    cache_clock.advance(61)
    queue_fault(sandbox, kind="reset", function=BY_FIELD)
    assert stale_ttl(gateway.get(f"{COURSES}/2", TOKEN)) == -1  # this failure opens the breaker
    before = sandbox_calls(sandbox)

    behind_the_breaker = gateway.get(f"{COURSES}/3", TOKEN)

    assert behind_the_breaker.status_int == 200 and behind_the_breaker.json["data"]["id"] == 3
    assert stale_ttl(behind_the_breaker) == -1
    assert calls_since(sandbox, before) == {}


def test_a_full_bulkhead_serves_the_expired_entry(make_gateway, cache_clock, sandbox):
    gateway = make_gateway(MOODLE_MAX_RETRIES="0", MOODLE_MAX_CONCURRENCY="1", MOODLE_QUEUE_TIMEOUT_MS="50")
    gateway.get(f"{COURSES}/2", TOKEN)
    cache_clock.advance(61)
    queue_fault(sandbox, kind="delay", seconds=1.0, function="core_user_get_users_by_field")
    users_before = sandbox_calls(sandbox).get("core_user_get_users_by_field", 0)
    threads, _ = get_in_threads(gateway, 1, f"{API}/users/by-field?field=username&values=student3")
    eventually(  # that call holds the only slot, in the sandbox's hands
        lambda: sandbox_calls(sandbox).get("core_user_get_users_by_field", 0) > users_before, "the slow call"
    )
    before = sandbox_calls(sandbox)

    busy = gateway.get(f"{COURSES}/2", TOKEN)

    join(threads)
    assert busy.status_int == 200 and busy.json["data"]["id"] == 2
    assert stale_ttl(busy) == -1
    assert calls_since(sandbox, before) == {}  # refused unsent


def test_past_cache_stale_s_the_failure_is_the_answer(failing_gateway, cache_clock, sandbox):
    failing_gateway.get(f"{COURSES}/2", TOKEN)
    cache_clock.advance(60 + 600 + 1)
    queue_fault(sandbox, kind="reset", function=BY_FIELD)

    failed = failing_gateway.get(f"{COURSES}/2", TOKEN)

    assert failed.status_int == 503 and failed.json["error"]["code"] == "moodleunavailable"
    assert failed.headers["Cache-Status"] == MISS_NOT_STORED


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [({"kind": "maintenance"}, 503, "sitemaintenance"), ({"kind": "notjson"}, 502, "badresponse")],
)
def test_moodles_own_answers_are_never_hidden_nor_cached(failing_gateway, cache_clock, sandbox, fault, status, code):
    failing_gateway.get(f"{COURSES}/2", TOKEN)
    cache_clock.advance(61)
    queue_fault(sandbox, function=BY_FIELD, **fault)

    failed = failing_gateway.get(f"{COURSES}/2", TOKEN)
    before = sandbox_calls(sandbox)
    recovered = failing_gateway.get(f"{COURSES}/2", TOKEN)

    assert (failed.status_int, failed.json["error"]["code"]) == (status, code)
    assert failed.headers["Cache-Status"] == MISS_NOT_STORED
    assert (recovered.status_int, recovered.headers["Cache-Status"]) == (200, MISS)
    assert calls_since(sandbox, before) == {BY_FIELD: 1}


@pytest.mark.parametrize("fault", [{"kind": "reset"}, {"kind": "maintenance"}])
def test_a_failed_miss_is_not_cached(failing_gateway, sandbox, fault):
    failing_gateway.get(SITEINFO, TOKEN)  # the function list, so the fault meets the course read
    queue_fault(sandbox, function=BY_FIELD, **fault)

    failed = failing_gateway.get(f"{COURSES}/4", TOKEN)
    before = sandbox_calls(sandbox)
    retried = failing_gateway.get(f"{COURSES}/4", TOKEN)

    assert failed.status_int == 503 and failed.headers["Cache-Status"] == MISS_NOT_STORED
    assert (retried.status_int, retried.headers["Cache-Status"]) == (200, MISS)
    assert calls_since(sandbox, before) == {BY_FIELD: 1}


def test_after_a_write_the_old_entry_is_not_served_even_on_failure(failing_gateway, cache_clock, sandbox):
    course_id = create_course(failing_gateway)
    listing = f"{COURSES}?category=3&perpage=200"
    failing_gateway.get(listing, TOKEN)
    assert failing_gateway.patch(f"{COURSES}/{course_id}", {"fullname": "After the write"}, TOKEN).status_int == 200
    cache_clock.advance(61)
    queue_fault(sandbox, kind="reset", function=BY_FIELD)

    failed = failing_gateway.get(listing, TOKEN)

    assert failed.status_int == 503 and failed.json["error"]["code"] == "moodleunavailable"


# -- writes drop what they change ------------------------------------------------------------------


def test_a_created_course_is_seen_by_the_next_read_of_every_listing(make_gateway, sandbox):
    gateway = make_gateway()
    word = unique("Cachecreate")
    fullname = f"{word} course"
    listings = [f"{COURSES}?perpage=200", f"{COURSES}?category=3&perpage=200", f"{COURSES}?search={word}"]
    for listing in listings:
        gateway.get(listing, TOKEN)
        assert hit_ttl(gateway.get(listing, TOKEN)) is not None

    create_course(gateway, fullname=fullname)

    for listing in listings:
        after = gateway.get(listing, TOKEN)
        assert after.headers["Cache-Status"] == MISS, listing
        assert fullname in [course["fullname"] for course in after.json["data"]["courses"]], listing


def test_an_update_is_seen_by_the_next_read_of_the_course_and_its_listing(make_gateway, sandbox):
    gateway = make_gateway()
    course_id = create_course(gateway)
    gateway.get(f"{COURSES}/{course_id}", TOKEN)
    gateway.get(f"{COURSES}?category=3&perpage=200", TOKEN)

    updated = gateway.patch(f"{COURSES}/{course_id}", {"fullname": "Renamed through the gateway"}, TOKEN)
    before = sandbox_calls(sandbox)
    course = gateway.get(f"{COURSES}/{course_id}", TOKEN)
    listing = gateway.get(f"{COURSES}?category=3&perpage=200", TOKEN)

    assert updated.status_int == 200 and "Cache-Status" not in updated.headers
    assert updated.json["data"]["fullname"] == "Renamed through the gateway"
    # The update read the course back from Moodle once the write had dropped the courses: that answer is kept.
    assert hit_ttl(course) is not None and course.json["data"]["fullname"] == "Renamed through the gateway"
    assert listing.headers["Cache-Status"] == MISS
    assert {c["id"]: c["fullname"] for c in listing.json["data"]["courses"]}[course_id] == "Renamed through the gateway"
    assert calls_since(sandbox, before) == {BY_FIELD: 1}  # the listing's


def test_a_write_whose_outcome_is_unknown_drops_the_courses_too(make_gateway, sandbox):
    gateway = make_gateway()
    gateway.get(f"{COURSES}?perpage=200", TOKEN)
    queue_fault(sandbox, kind="reset", function="core_course_create_courses")

    lost = gateway.post(COURSES, {"fullname": "Lost answer", "shortname": unique(), "categoryid": 3}, TOKEN)

    assert lost.status_int == 504 and lost.json["error"]["details"]["outcome"] == "unknown"
    assert gateway.get(f"{COURSES}?perpage=200", TOKEN).headers["Cache-Status"] == MISS


def test_a_write_refused_before_moodle_is_asked_drops_nothing(make_gateway, sandbox):
    gateway = make_gateway()
    gateway.get(f"{COURSES}?perpage=200", TOKEN)

    invalid = gateway.post(COURSES, {"fullname": "No short name", "categoryid": 3}, TOKEN)

    assert invalid.status_int == 400
    assert hit_ttl(gateway.get(f"{COURSES}?perpage=200", TOKEN)) is not None


def test_a_write_drops_what_it_changes_in_an_app_without_any_other_tween(sandbox):
    """Dropping is the write's own doing: with the exception views as the app's only tween (no call log, no summary
    line, no Cache-Status), a course created or updated is seen by the next read."""
    settings = settings_for(sandbox.url, sandbox.site.token)
    app = webtest.TestApp(make_app(settings, {"pyramid.tweens": "pyramid.tweens.excview_tween_factory"}))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    listing = f"{COURSES}?category=3&perpage=200"

    def read(path):
        response = app.get(path, headers=headers)
        assert "Cache-Status" not in response.headers and "X-Request-ID" not in response.headers  # no other tween
        return response.json["data"]

    def listed():
        return {course["id"]: course["fullname"] for course in read(listing)["courses"]}

    read(SITEINFO)  # the function list
    before = listed()
    calls = sandbox_calls(sandbox)
    assert listed() == before and calls_since(sandbox, calls) == {}  # kept: the cache is on
    created = app.post_json(
        COURSES, {"fullname": "Without tweens", "shortname": unique(), "categoryid": 3}, headers=headers
    )
    course_id = created.json["data"]["id"]

    assert listed().get(course_id) == "Without tweens"
    assert read(f"{COURSES}/{course_id}")["fullname"] == "Without tweens"
    app.patch_json(f"{COURSES}/{course_id}", {"fullname": "Renamed without tweens"}, headers=headers)
    assert read(f"{COURSES}/{course_id}")["fullname"] == "Renamed without tweens"
    assert listed().get(course_id) == "Renamed without tweens"


def test_the_checks_before_a_write_ask_moodle_even_when_their_answers_are_kept(make_gateway, sandbox):
    """A course or user deleted in Moodle a moment ago must not pass the checks an enrolment makes first."""
    gateway = make_gateway()
    course_id = create_course(gateway)
    enrolment = {"enrolments": [{"roleid": "student", "userid": 6, "courseid": course_id}]}
    assert gateway.post(f"{API}/enrol", enrolment, TOKEN).status_int == 200  # what its checks read is kept
    before = sandbox_calls(sandbox)

    again = gateway.post(f"{API}/enrol", enrolment, TOKEN)

    assert again.status_int == 200 and "Cache-Status" not in again.headers
    assert calls_since(sandbox, before) == {GET_COURSES: 1, GET_USERS: 1, "enrol_manual_enrol_users": 1}


def test_enrolments_uploads_and_attachments_drop_nothing(make_gateway):
    gateway = make_gateway()
    course_id = create_course(gateway)
    gateway.get(f"{COURSES}/{course_id}", TOKEN)

    enrolled = gateway.post(
        f"{API}/enrol", {"enrolments": [{"roleid": "student", "userid": 6, "courseid": course_id}]}, TOKEN
    )
    uploaded = gateway.upload(f"{API}/files/upload", [("file", "notes.txt", b"notes")], TOKEN)
    attached = gateway.post(
        f"{API}/files/attach",
        {"courseid": course_id, "draftitemid": uploaded.json["data"]["itemid"], "name": "Notes"},
        TOKEN,
    )

    assert [enrolled.status_int, uploaded.status_int, attached.status_int] == [200, 201, 201]
    assert all("Cache-Status" not in write.headers for write in (enrolled, uploaded, attached))
    assert hit_ttl(gateway.get(f"{COURSES}/{course_id}", TOKEN)) is not None


# -- one Moodle call for concurrent misses ---------------------------------------------------------


def test_twenty_concurrent_identical_misses_make_one_moodle_call(make_gateway, sandbox):
    gateway = make_gateway()
    gateway.get(f"{COURSES}/2", TOKEN)  # the function list, read once per process
    queue_fault(sandbox, kind="delay", seconds=1.0, function=GET_COURSES)
    before = sandbox_calls(sandbox)

    threads, responses = get_in_threads(gateway, 20, COURSES)
    join(threads)

    assert calls_since(sandbox, before) == {GET_COURSES: 1}
    assert [response.status_int for response in responses] == [200] * 20
    assert all(response.json["data"] == responses[0].json["data"] for response in responses)
    assert sorted(response.headers["Cache-Status"] for response in responses) == [COLLAPSED] * 19 + [MISS]


# -- replicas sharing one Redis --------------------------------------------------------------------


@pytest.fixture
def replicas(make_gateway, empty_redis):
    """Two gateways, as two replicas behind a load balancer, on one Redis."""
    return make_gateway(REDIS_URL=empty_redis), make_gateway(REDIS_URL=empty_redis)


@pytest.mark.parametrize("path", [SITEINFO, f"{COURSES}/2", f"{COURSES}?search=python"])
def test_an_entry_stored_by_one_replica_is_a_hit_on_the_other(replicas, sandbox, path):
    first, second = replicas
    second.get(f"{COURSES}/5", TOKEN)  # its function list
    assert first.get(path, TOKEN).headers["Cache-Status"] == MISS
    before = sandbox_calls(sandbox)

    shared = second.get(path, TOKEN)

    assert shared.status_int == 200 and hit_ttl(shared) is not None
    assert calls_since(sandbox, before) == {}


@pytest.mark.parametrize("path", [SITEINFO, f"{COURSES}/2"])
def test_with_redis_a_hit_is_one_round_trip_the_rate_limits_which_never_reads_the_answer(
    replicas, sandbox, monkeypatch, path
):
    first, second = replicas
    first.get(path, TOKEN)
    second.get(path, TOKEN)  # a hit on the entry the first stored, kept near from now
    redis_trips = RedisRoundTrips(monkeypatch)

    with redis_trips.counting() as trips:
        hits = [replica.get(path, TOKEN) for replica in (first, second, first, second)]

    assert all(hit_ttl(hit) is not None for hit in hits)
    assert [[command[0] for command in trip] for trip in trips] == [[b"EVALSHA"]] * 4
    assert not redis_trips.reads_entries(trips)
    assert all(b"lms_api:ratelimit:read:cache-reader" in trip[0] for trip in trips)


def test_a_write_on_one_replica_is_seen_by_the_next_read_on_the_other(replicas):
    first, second = replicas
    course_id = create_course(first)
    assert second.get(f"{COURSES}/{course_id}", TOKEN).headers["Cache-Status"] == MISS
    assert hit_ttl(second.get(f"{COURSES}/{course_id}", TOKEN)) is not None

    assert hit_ttl(second.get(f"{COURSES}/{course_id}", TOKEN)) is not None  # kept near on the second

    first.patch(f"{COURSES}/{course_id}", {"fullname": "Renamed on the first replica"}, TOKEN)
    seen = second.get(f"{COURSES}/{course_id}", TOKEN)

    # What the first replica read back once its write had dropped the courses, kept in Redis.
    assert hit_ttl(seen) is not None and seen.json["data"]["fullname"] == "Renamed on the first replica"


def test_concurrent_misses_on_two_replicas_make_one_moodle_call(replicas, sandbox):
    for replica in replicas:
        replica.get(f"{COURSES}/5", TOKEN)  # each process's function list
    queue_fault(sandbox, kind="delay", seconds=1.0, function=GET_COURSES)
    before = sandbox_calls(sandbox)

    started = [get_in_threads(replica, 10, COURSES) for replica in replicas]
    join([thread for threads, _ in started for thread in threads])
    responses = [response for _, answered in started for response in answered]

    assert calls_since(sandbox, before) == {GET_COURSES: 1}
    assert [response.status_int for response in responses] == [200] * 20
    assert sorted(response.headers["Cache-Status"] for response in responses) == [COLLAPSED] * 19 + [MISS]


def test_when_redis_goes_away_reads_and_writes_go_on_in_the_process(make_gateway, own_redis, sandbox):
    process, url = own_redis
    gateway = make_gateway(REDIS_URL=url)
    course_id = create_course(gateway)
    gateway.get(f"{COURSES}/{course_id}", TOKEN)
    assert hit_ttl(gateway.get(f"{COURSES}/{course_id}", TOKEN)) is not None  # from Redis

    process.kill()
    process.wait(10)
    refetched = gateway.get(f"{COURSES}/{course_id}", TOKEN)
    before = sandbox_calls(sandbox)
    kept = gateway.get(f"{COURSES}/{course_id}", TOKEN)

    assert (refetched.status_int, refetched.headers["Cache-Status"]) == (200, MISS)
    assert kept.status_int == 200 and hit_ttl(kept) is not None
    assert calls_since(sandbox, before) == {}
    assert gateway.patch(f"{COURSES}/{course_id}", {"fullname": "Renamed without Redis"}, TOKEN).status_int == 200
    after_write = gateway.get(f"{COURSES}/{course_id}", TOKEN)
    assert hit_ttl(after_write) is not None  # the update's read-back, kept in the process
    assert after_write.json["data"]["fullname"] == "Renamed without Redis"
    events = [line["event"] for line in gateway.log_lines]
    assert events.count("cache.redis_unavailable") == 1
