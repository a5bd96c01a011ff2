"""Why Moodle could not be reached, as operators meet it: the log, /readyz, and ``details`` with MOODLE_DEBUG.

Each cause is made for real on this machine: a free port (refused), a name under ``.invalid`` (RFC 2606: it never
resolves), https:// to the sandbox's plain HTTP (TLS), the sandbox answering later than the deadline (timeout), its
HTTP 503 page and its dropped connection. The deadline is 2 s, so that a loaded host still answers the others within
it, and the late answer comes well past it.

The name is looked up by the system's real resolver: nothing in the gateway bounds that lookup (MOODLE_TIMEOUT_MS
bounds the connection and the answer, not the lookup before them), only the resolver's own timeouts, so a host without
a reachable name server makes the dns case slower, never another cause.
"""

import pytest

from lms_api.cache import ReadCache
from lms_api.health import SiteInfoRefresher
from lms_api.moodle.client import MoodleClient
from tests.support.credentials import mint
from tests.support.gateway import service
from tests.support.sandbox import queue_fault

SITE_INFO = "core_webservice_get_site_info"
DEADLINE_MS = "2000"


def refresher_of(gateway):
    return SiteInfoRefresher(service(gateway, MoodleClient), service(gateway, ReadCache), 240, retry_s=5)


def warnings(gateway):
    return [line for line in gateway.log_lines if line["level"] == "warning"]


def unreachable_at(sandbox, unused_port, where):
    """The base URL that fails for ``where``, and the sandbox fault that makes it fail there (or None)."""
    return {
        "refused": (f"http://127.0.0.1:{unused_port}", None),
        "dns": ("https://moodle.example.invalid", None),
        "tls": (sandbox.url.replace("http://", "https://"), None),
        "timeout": (sandbox.url, {"kind": "delay", "seconds": 3.5}),
        "http": (sandbox.url, {"kind": "http", "status": 503}),
        "reset": (sandbox.url, {"kind": "reset"}),
    }[where]


CAUSES = [
    ("refused", 503, "moodleunavailable"),
    ("dns", 503, "moodleunavailable"),
    ("tls", 503, "moodleunavailable"),
    ("timeout", 504, "moodletimeout"),
    ("http", 503, "moodleunavailable"),
    ("reset", 503, "moodleunavailable"),
]


OPERATOR = {"REMOTE_ADDR": "127.0.0.1"}  # in METRICS_ALLOWED_NETWORKS, loopback by default
OUTSIDER = {"REMOTE_ADDR": "203.0.113.9"}


@pytest.mark.parametrize(("cause", "status", "code"), CAUSES)
def test_each_cause_is_in_the_log_readyz_and_debug_details(make_gateway, sandbox, unused_port, cause, status, code):
    base_url, fault = unreachable_at(sandbox, unused_port, cause)
    gateway = make_gateway(
        base_url=base_url, MOODLE_DEBUG="true", MOODLE_ALLOW_INSECURE="true", MOODLE_MAX_RETRIES="0",
        MOODLE_TIMEOUT_MS=DEADLINE_MS,
    )  # fmt: skip
    if fault:
        queue_fault(sandbox, function=SITE_INFO, **fault)

    answer = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))
    ready = gateway.get("/readyz", extra_environ=OPERATOR)
    outsider = gateway.get("/readyz", extra_environ=OUTSIDER)

    assert (answer.status_int, answer.json["error"]["code"]) == (status, code)
    details = answer.json["error"]["details"]
    assert details["cause"] == cause
    (logged,) = [line for line in warnings(gateway) if line["event"] == "moodle.unreachable"]
    assert (logged["cause"], logged["reason"], logged["moodle_base_url"]) == (cause, details["reason"], base_url)
    assert ready.status_int == 503
    assert ready.json["error"]["details"]["moodle"] == {"url": base_url, "cause": cause, "reason": details["reason"]}
    assert f"Moodle at {base_url} cannot be reached ({cause}: " in ready.json["error"]["message"]
    # /readyz needs no token: outside METRICS_ALLOWED_NETWORKS only the kind of failure is told
    assert outsider.json["error"]["details"]["moodle"] == {"cause": cause}
    assert f"Moodle cannot be reached ({cause})" in outsider.json["error"]["message"]
    assert base_url.split("//")[1] not in outsider.text and details["reason"] not in outsider.text
    assert sandbox.site.token not in gateway.log_stream.getvalue()


@pytest.mark.parametrize(("cause", "status", "code"), CAUSES)
def test_without_moodle_debug_a_caller_never_learns_the_cause(make_gateway, sandbox, unused_port, cause, status, code):
    base_url, fault = unreachable_at(sandbox, unused_port, cause)
    gateway = make_gateway(
        base_url=base_url, MOODLE_ALLOW_INSECURE="true", MOODLE_MAX_RETRIES="0", MOODLE_TIMEOUT_MS=DEADLINE_MS
    )
    if fault:
        queue_fault(sandbox, function=SITE_INFO, **fault)

    answer = gateway.get("/api/moodle/siteinfo", mint("siteinfo:read"))

    assert (answer.status_int, answer.json["error"]["details"]) == (status, {"function": SITE_INFO})
    assert base_url.split("//")[1] not in answer.text
    (logged,) = [line for line in warnings(gateway) if line["event"] == "moodle.unreachable"]
    assert logged["cause"] == cause  # the operator still learns it


def test_the_first_failed_site_info_read_is_one_warning_and_its_return_is_said_once(
    make_gateway, make_sandbox, unused_port
):
    base_url = f"http://127.0.0.1:{unused_port}"
    gateway = make_gateway(base_url=base_url, token="causes-token", MOODLE_MAX_RETRIES="0")
    refresher = refresher_of(gateway)

    assert [refresher.refresh() for _ in range(3)] == [5, 5, 5]

    (warning,) = warnings(gateway)
    assert (warning["event"], warning["function"], warning["cause"]) == ("moodle.unreachable", SITE_INFO, "refused")
    assert warning["moodle_base_url"] == base_url
    assert warning["reason"] == f"nothing accepts connections on 127.0.0.1:{unused_port} (connection refused)"

    make_sandbox(port=unused_port, token="causes-token")
    assert refresher.refresh() == 240

    events = [(line["event"], line["level"]) for line in gateway.log_lines]
    assert events[-2:] == [("moodle.reachable", "info"), ("siteinfo.refreshed", "info")]
    assert gateway.log_lines[-2]["failed_calls"] == 3
    assert gateway.log_lines[-1]["after_failed_reads"] == 3
    ready = gateway.get("/readyz")
    assert ready.status_int == 200
    assert "moodle" not in ready.json["data"]


def test_a_breaker_opened_by_the_refresher_names_the_cause_and_its_pauses_are_no_new_warnings(
    make_gateway, unused_port
):
    gateway = make_gateway(
        base_url=f"http://127.0.0.1:{unused_port}", MOODLE_MAX_RETRIES="0", MOODLE_BREAKER_FAILURES="2"
    )
    refresher = refresher_of(gateway)

    for _ in range(4):  # two failures open the breaker; the next reads are refused by it
        refresher.refresh()

    assert [(line["event"], line["cause"]) for line in warnings(gateway)] == [
        ("moodle.unreachable", "refused"),
        ("moodle.breaker_opened", "refused"),
    ]
    ready = gateway.get("/readyz")
    assert ready.json["error"]["details"]["breaker"] == "open"
    assert ready.json["error"]["details"]["moodle"]["cause"] == "refused"


def test_a_site_info_read_moodle_refuses_is_one_warning_naming_the_error_and_the_url(make_gateway, sandbox):
    gateway = make_gateway(token="not-the-sandbox-token")
    refresher = refresher_of(gateway)

    for _ in range(3):
        refresher.refresh()

    (warning,) = warnings(gateway)
    assert (warning["event"], warning["error_code"]) == ("siteinfo.refresh_failed", "invalidtoken")
    assert warning["moodle_base_url"] == sandbox.url
    assert "MOODLE_TOKEN" in warning["error_message"]
    assert "not-the-sandbox-token" not in gateway.log_stream.getvalue()
    assert "moodle" not in gateway.get("/readyz").json["error"]["details"]  # Moodle answered: it can be reached
