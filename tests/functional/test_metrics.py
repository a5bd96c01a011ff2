"""GET /metrics: Prometheus' text format, only to METRICS_ALLOWED_NETWORKS, fed by what requests did."""

import uuid

import webtest
from prometheus_client.parser import text_string_to_metric_families
from pyramid.interfaces import ITweens

from lms_api.calllog import READERS
from lms_api.config import make_app
from lms_api.moodle.guard import Bulkhead
from tests.support.credentials import mint
from tests.support.sandbox import queue_fault

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}


def scrape(gateway, address="127.0.0.1"):
    response = gateway.get("/metrics", extra_environ={"REMOTE_ADDR": address})
    assert response.status_int == 200, response.text
    assert response.content_type == "text/plain"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name, **labels):
    sample = (name, tuple(sorted(labels.items())))
    assert sample in samples, f"no sample {name}{labels} in the scrape"
    return samples[sample]


def test_requests_moodle_calls_and_cache_answers_are_counted(gateway, sandbox):
    token = mint("siteinfo:read courses:read")
    for _ in range(2):
        gateway.get("/api/moodle/courses", token)
    gateway.get("/api/moodle/siteinfo?bad=1", token)

    samples = scrape(gateway)

    assert value(samples, "lms_api_requests_total", route="api.moodle.courses", method="GET", status="200") == 2
    assert value(samples, "lms_api_requests_total", route="api.moodle.siteinfo", method="GET", status="400") == 1
    assert value(samples, "lms_api_request_duration_seconds_count", route="api.moodle.courses", method="GET") == 2
    assert value(samples, "lms_api_moodle_calls_total", function="core_course_get_courses", outcome="ok") == 1
    assert value(samples, "lms_api_cache_answers_total", group="courses", result="miss") == 1
    assert value(samples, "lms_api_cache_answers_total", group="courses", result="hit") == 1


def test_failed_moodle_calls_and_retries_are_counted_by_code(make_gateway, sandbox):
    gateway = make_gateway(CACHE_TTLS="courses=0", MOODLE_MAX_RETRIES="1")
    token = mint("courses:read")
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))
    queue_fault(sandbox, kind="reset", times=2, function="core_course_get_courses")

    gateway.get("/api/moodle/courses", token)
    samples = scrape(gateway)

    failed = {"function": "core_course_get_courses", "outcome": "moodleunavailable"}
    assert value(samples, "lms_api_moodle_calls_total", **failed) == 1
    assert value(samples, "lms_api_moodle_retries_total", function="core_course_get_courses") == 1


def test_an_upload_whose_file_moodle_refuses_is_a_failed_call_under_its_errortype(gateway):
    token = mint("files:write")
    stored = gateway.upload("/api/moodle/files/upload", [("file", "notes.txt", b"week 1")], token)
    itemid = str(stored.json["data"]["itemid"])

    again = gateway.upload("/api/moodle/files/upload", [("file", "notes.txt", b"week 1")], token, [("itemid", itemid)])
    samples = scrape(gateway)

    assert again.json["error"]["code"] == "filenameexist"
    assert value(samples, "lms_api_moodle_calls_total", function="upload.php", outcome="ok") == 1
    assert value(samples, "lms_api_moodle_calls_total", function="upload.php", outcome="filenameexist") == 1


def test_the_breaker_the_bulkhead_and_rate_limits_are_reported(make_gateway, sandbox):
    gateway = make_gateway(
        MOODLE_BREAKER_FAILURES="1", MOODLE_MAX_RETRIES="0", CACHE_TTLS="courses=0", RATE_LIMIT_READ="3/minute"
    )
    token = mint("siteinfo:read courses:read")
    gateway.get("/api/moodle/siteinfo", token)
    queue_fault(sandbox, kind="reset", function="core_course_get_courses")
    gateway.get("/api/moodle/courses", token)
    for _ in range(2):
        gateway.get("/api/moodle/siteinfo", token)

    samples = scrape(gateway)

    assert value(samples, "lms_api_moodle_breaker_state") == 2
    assert value(samples, "lms_api_moodle_concurrency_limit") == 10
    assert value(samples, "lms_api_moodle_calls_in_flight") == 0
    assert value(samples, "lms_api_moodle_bulkhead_refusals_total") == 0
    assert value(samples, "lms_api_rate_limit_refusals_total", budget="read") == 1


def test_the_redis_fallback_is_reported_for_the_cache_and_the_rate_limits(make_gateway, unused_port):
    gateway = make_gateway(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0")
    gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    samples = scrape(gateway)

    assert value(samples, "lms_api_redis_fallback", use="cache") == 1
    assert value(samples, "lms_api_redis_fallback", use="ratelimit") == 1


def test_the_client_scraped_is_the_one_serving_requests_when_a_test_swaps_it(gateway):
    assert value(scrape(gateway), "lms_api_moodle_concurrency_limit") == 10
    gateway.use_moodle_client(bulkhead=Bulkhead(3, 1.0))

    assert value(scrape(gateway), "lms_api_moodle_concurrency_limit") == 3


def tween_names(router):
    return [name for name, _ in router.registry.getUtility(ITweens).implicit()]


def test_the_call_log_is_opened_outside_every_tween_that_reads_it(gateway):
    names = tween_names(gateway.router)

    assert set(READERS) == {
        "lms_api.logging.request_tween_factory",
        "lms_api.metrics.metrics_tween_factory",
        "lms_api.audit.audit_tween_factory",
        "lms_api.cache.cache_tween_factory",
    }
    assert set(READERS) <= set(names), "a reader the call log's tween is ordered over is not a tween of the app"
    assert all(names.index("lms_api.calllog.call_log_tween_factory") < names.index(reader) for reader in READERS)


def test_without_the_logging_tween_audit_and_metrics_still_see_the_moodle_calls(gateway):
    kept = [name for name in tween_names(gateway.router) if name != "lms_api.logging.request_tween_factory"]
    gateway.router = make_app(gateway.router.registry.settings["lms_api.settings"], {"pyramid.tweens": "\n".join(kept)})
    gateway.app = webtest.TestApp(gateway.router)
    body = {"fullname": "Unlogged", "shortname": f"NOLOG{uuid.uuid4().hex[:6]}", "categoryid": 2}

    assert gateway.post("/api/moodle/courses", body, mint("courses:write")).status_int == 201

    assert not [line for line in gateway.log_lines if line["event"] == "request"]  # no summary line's tween
    (audit,) = [line for line in gateway.log_lines if line["event"] == "audit"]
    assert audit["moodle_functions"][-1] == "core_course_create_courses"
    created = {"function": "core_course_create_courses", "outcome": "ok"}
    assert value(scrape(gateway), "lms_api_moodle_calls_total", **created) == 1


def test_metrics_are_not_there_for_anyone_else(gateway):
    outside = gateway.get("/metrics", extra_environ={"REMOTE_ADDR": "10.1.2.3"})
    forwarded = gateway.get(
        "/metrics", headers={"X-Forwarded-For": "127.0.0.1"}, extra_environ={"REMOTE_ADDR": "10.1.2.3"}
    )

    assert (outside.status_int, forwarded.status_int) == (404, 404)
    assert outside.json["error"]["code"] == "notfound"


def test_behind_a_trusted_proxy_the_forwarded_caller_is_judged(make_gateway):
    gateway = make_gateway(TRUSTED_PROXIES="127.0.0.1")  # nginx on the same host: every caller arrives from loopback

    outside = gateway.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, extra_environ=LOOPBACK)

    assert outside.status_int == 404
    assert scrape(gateway)  # the proxy's own address, with nothing forwarded


def test_methods_of_a_callers_making_share_one_label(gateway):
    unchecked = webtest.TestApp(gateway.router, lint=False)  # webtest's checker refuses such methods itself
    for method in ("FOO1", "FOO2"):
        unchecked.request("/api/moodle/siteinfo", method=method, expect_errors=True)

    samples = scrape(gateway)

    methods = {dict(labels)["method"] for name, labels in samples if name == "lms_api_requests_total"}
    assert "other" in methods
    assert not methods & {"FOO1", "FOO2"}


def test_a_peer_that_is_no_ip_address_is_not_answered(gateway):
    # A Unix socket, or a proxy that leaves REMOTE_ADDR empty: nothing to judge by, so nothing is shown.
    for address in ("", "unix:/run/lms_api.sock"):
        assert gateway.get("/metrics", extra_environ={"REMOTE_ADDR": address}).status_int == 404


def test_the_allowed_networks_are_a_setting(make_gateway):
    gateway = make_gateway(METRICS_ALLOWED_NETWORKS="10.0.0.0/8")

    assert scrape(gateway, "10.1.2.3")
    assert gateway.get("/metrics", extra_environ=LOOPBACK).status_int == 404
