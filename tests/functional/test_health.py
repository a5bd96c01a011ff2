"""Liveness, readiness and the site info kept fresh; the bulkhead and the breaker as callers meet them."""

import threading

import pytest
from pyramid.config import Configurator

from lms_api.cache import ReadCache
from lms_api.health import SiteInfoRefresher, keep_site_info_fresh
from lms_api.moodle.client import MoodleClient
from lms_api.moodle.functions import CacheGroup, MoodleFunction
from tests.functional.test_metrics import scrape, value
from tests.support.credentials import mint
from tests.support.gateway import service
from tests.support.sandbox import queue_fault, sandbox_calls
from tests.support.timing import eventually

SITE_INFO = MoodleFunction.SITE_INFO


# -- /healthz and /readyz --------------------------------------------------------------------------


def test_healthz_answers_without_a_token_a_rate_limit_or_moodle(make_gateway, sandbox):
    gateway = make_gateway(RATE_LIMIT_UNAUTHENTICATED="1/minute")
    before = sandbox_calls(sandbox)

    answers = [gateway.get("/healthz") for _ in range(3)]

    assert [answer.status_int for answer in answers] == [200, 200, 200]
    assert answers[0].json == {"ok": True, "data": {"status": "ok"}}
    assert "RateLimit-Limit" not in answers[0].headers
    assert sandbox_calls(sandbox) == before


def test_readyz_waits_for_the_site_info_and_never_asks_moodle_for_it(gateway, sandbox):
    before = sandbox_calls(sandbox)

    not_ready = gateway.get("/readyz")

    assert not_ready.status_int == 503
    error = not_ready.json["error"]
    assert error["code"] == "notready"
    assert "site info has not been read" in error["message"]
    assert error["details"] == {"breaker": "closed", "site_info": "unknown", "moodle_calls_in_flight": 0,
                                "cache": "memory",
                                "jobs": {"engine": "embedded", "workers": 2, "queued": 0},
                                "events": {"engine": "embedded", "streams": 0, "max_streams": 8}}  # fmt: skip
    assert sandbox_calls(sandbox) == before

    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))
    ready = gateway.get("/readyz")

    assert ready.status_int == 200
    assert ready.json["data"] == {"status": "ready", "breaker": "closed", "site_info": "known",
                                  "moodle_calls_in_flight": 0, "cache": "memory",
                                  "jobs": {"engine": "embedded", "workers": 2, "queued": 0},
                                "events": {"engine": "embedded", "streams": 0, "max_streams": 8}}  # fmt: skip


def test_readyz_says_whether_the_shared_cache_answers(make_gateway, redis_url):
    gateway = make_gateway(REDIS_URL=redis_url)
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    ready = gateway.get("/readyz")

    assert (ready.status_int, ready.json["data"]["cache"], ready.json["data"]["redis"]) == (200, "redis", "answers")


def test_readyz_with_redis_gone_is_still_ready_and_says_so(make_gateway, unused_port):
    gateway = make_gateway(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0")
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    ready = gateway.get("/readyz")

    assert ready.status_int == 200
    assert ready.json["data"]["redis"] == "unreachable (serving from this process)"


def test_readyz_on_rq_counts_the_workers_and_the_jobs_waiting_and_is_ready_with_none(make_gateway, empty_redis):
    gateway = make_gateway(REDIS_URL=empty_redis, JOBS_ENGINE="rq")
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    ready = gateway.get("/readyz")

    assert ready.status_int == 200
    assert ready.json["data"]["jobs"] == {"engine": "rq", "workers": 0, "queued": 0}


def test_readyz_on_rq_with_redis_gone_is_ready_and_says_jobs_cannot_be_queued(make_gateway, unused_port):
    gateway = make_gateway(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0", JOBS_ENGINE="rq")
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    ready = gateway.get("/readyz")

    assert ready.status_int == 200
    assert ready.json["data"]["jobs"] == {"engine": "rq", "redis": "unreachable: jobs can be neither queued nor read"}


def test_an_open_breaker_makes_the_gateway_not_ready_but_alive(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_BREAKER_FAILURES="2", MOODLE_MAX_RETRIES="0", CACHE_TTLS="courses=0")
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))
    queue_fault(sandbox, kind="reset", times=2)
    for _ in range(2):
        gateway.get("/api/moodle/courses", mint("courses:read"))

    not_ready = gateway.get("/readyz")

    assert not_ready.status_int == 503
    assert not_ready.json["error"]["details"]["breaker"] == "open"
    assert "breaker is open" in not_ready.json["error"]["message"]
    assert gateway.get("/healthz").status_int == 200


# -- the breaker and the bulkhead at the gateway ---------------------------------------------------


def test_an_open_breaker_answers_at_once_without_calling_moodle(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_BREAKER_FAILURES="3", MOODLE_MAX_RETRIES="0", CACHE_TTLS="courses=0")
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))
    queue_fault(sandbox, kind="http", status=502, times=3)
    for _ in range(3):
        assert gateway.get("/api/moodle/courses", mint("courses:read")).status_int == 502
    before = sandbox_calls(sandbox)

    refused = gateway.get("/api/moodle/courses", mint("courses:read"))

    assert refused.status_int == 503
    assert refused.json["error"]["code"] == "moodleunavailable"
    assert refused.json["error"]["details"]["breaker"] == "open"
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert sandbox_calls(sandbox) == before


def test_a_call_with_no_free_slot_is_a_503_moodlebusy_and_cached_reads_do_not_wait(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_MAX_CONCURRENCY="1", MOODLE_QUEUE_TIMEOUT_MS="0", CACHE_TTLS="users=0")
    token = mint("siteinfo:read users:read")
    assert gateway.get("/api/moodle/siteinfo", token).status_int == 200  # site info now cached
    queue_fault(sandbox, kind="delay", seconds=1.0, function="core_user_get_users_by_field")
    slow = threading.Thread(target=gateway.get, args=("/api/moodle/users/by-field?field=id&values=3", token))
    slow.start()
    try:
        eventually(lambda: service(gateway, MoodleClient).bulkhead.in_use == 1, "the slow call taking the slot")
        busy = gateway.get("/api/moodle/users/by-field?field=id&values=4", token)
        cached = gateway.get("/api/moodle/siteinfo", token)
        samples = scrape(gateway)
    finally:
        slow.join(5)

    assert value(samples, "lms_api_moodle_calls_in_flight") == 1
    assert value(samples, "lms_api_moodle_bulkhead_refusals_total") == 1

    assert busy.status_int == 503
    assert busy.json["error"]["code"] == "moodlebusy"
    assert busy.headers["Retry-After"] == "1"
    assert cached.status_int == 200
    assert cached.headers["Cache-Status"].startswith("lms_api; hit")


# -- the site info kept fresh ----------------------------------------------------------------------


def test_the_refresher_reads_the_site_info_into_the_client_and_the_cache(gateway, sandbox):
    refresher = SiteInfoRefresher(service(gateway, MoodleClient), service(gateway, ReadCache), interval_s=240)

    assert refresher.refresh() == 240
    before = sandbox_calls(sandbox)
    answer = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert answer.headers["Cache-Status"].startswith("lms_api; hit")
    assert gateway.get("/readyz").status_int == 200
    assert sandbox_calls(sandbox) == before


def test_a_failed_refresh_is_tried_again_soon(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_MAX_RETRIES="0")
    refresher = SiteInfoRefresher(service(gateway, MoodleClient), service(gateway, ReadCache), 240, retry_s=5)
    queue_fault(sandbox, kind="reset", function=SITE_INFO)

    assert refresher.refresh() == 5
    assert gateway.get("/readyz").status_int == 503


@pytest.mark.parametrize(("ttls", "interval"), [("siteinfo=300", 240), ("siteinfo=100", 80), ("siteinfo=0", 240)])
def test_a_served_gateway_refreshes_ahead_of_the_shorter_lifetime(make_gateway, sandbox, ttls, interval):
    gateway = make_gateway(CACHE_TTLS=ttls, MOODLE_FUNCTIONS_TTL_S="300")

    refresher = keep_site_info_fresh(gateway.router)
    try:
        eventually(lambda: service(gateway, MoodleClient).knows_functions, "the site info read in the background")
    finally:
        refresher.stop()

    assert refresher.interval_s == interval
    assert gateway.get("/readyz").status_int == 200


def test_a_site_info_fetched_while_its_group_is_dropped_is_not_kept(gateway, sandbox):
    """What was fetched before a drop of the site info's group is never stored after it: the next read asks Moodle."""
    client, cache = service(gateway, MoodleClient), service(gateway, ReadCache)
    refresher = SiteInfoRefresher(client, cache, interval_s=240)
    queue_fault(sandbox, kind="delay", seconds=0.5, function=SITE_INFO)
    refreshing = threading.Thread(target=refresher.refresh)
    refreshing.start()
    try:
        eventually(lambda: client.bulkhead.in_use == 1, "the site info's fetch in flight")
        cache.store.invalidate(CacheGroup.SITE_INFO)
    finally:
        refreshing.join(5)
    before = sandbox_calls(sandbox)

    answer = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert client.knows_functions  # the fetch itself succeeded: only its keeping was refused
    assert answer.headers["Cache-Status"] == "lms_api; fwd=uri-miss; stored"
    after = sandbox_calls(sandbox)
    assert {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)} == {
        MoodleFunction.SITE_INFO.value: 1
    }


def test_a_served_gateway_refreshes_through_the_client_registered_as_it_starts(gateway):
    """The client is found as a request finds it: a factory of the request is handed one, not ``None``."""
    registry = gateway.router.registry
    built_with_the_app = service(gateway, MoodleClient)
    settings = registry.settings["lms_api.settings"]
    swapped = MoodleClient.from_settings(settings, settings.moodle_base_url, settings.moodle_token)
    asked_by = []

    def client_for(context, request):
        asked_by.append(request.registry)
        return swapped

    config = Configurator(registry=registry)
    config.register_service_factory(client_for, MoodleClient)
    config.commit()

    refresher = keep_site_info_fresh(gateway.router)
    try:
        eventually(lambda: swapped.knows_functions, "the site info read in the background by the swapped client")
    finally:
        refresher.stop()

    assert asked_by == [registry]
    assert not built_with_the_app.knows_functions
