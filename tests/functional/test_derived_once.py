"""A forwarded site info through the whole WSGI stack, against a sandbox of the test's own over real HTTP: Moodle's
bytes, when the same as last time, are neither parsed, checked nor dumped again; any other bytes are, and a changed
answer that is not Moodle's site info is refused as before."""

import pytest
from marshmallow import Schema

from lms_api.moodle import client as client_module
from lms_api.schemas.siteinfo import SiteInfoSchema
from tests.support.credentials import mint
from tests.support.gateway import Gateway, settings_for
from tests.support.sandbox import queue_fault, sandbox_calls

SITEINFO = "/api/moodle/siteinfo"
SITE_INFO = "core_webservice_get_site_info"
REFRESHER = mint("siteinfo:read cache:refresh", sub="site-info-refresher")
FORWARD = {"Cache-Control": "no-cache"}
REFRESHED = "lms_api; fwd=request; stored"


@pytest.fixture
def own_sandbox(make_sandbox):
    return make_sandbox()


@pytest.fixture
def gateway(own_sandbox):
    return Gateway(settings_for(own_sandbox.url, own_sandbox.site.token, MOODLE_MAX_RETRIES="0"))


@pytest.fixture
def work(monkeypatch):
    """What the gateway did with Moodle's answers from here on: bodies parsed by the client, site infos dumped."""
    done = {"parsed": 0, "dumped": 0}
    loads = client_module.loads

    def counting_loads(body):
        done["parsed"] += 1
        return loads(body)

    def counting_dump(schema, answer, **options):
        done["dumped"] += 1
        return Schema.dump(schema, answer, **options)

    monkeypatch.setattr(client_module, "loads", counting_loads)
    monkeypatch.setattr(SiteInfoSchema, "dump", counting_dump)
    return done


def forwarded(gateway):
    response = gateway.get(SITEINFO, REFRESHER, headers=FORWARD)
    assert response.headers.get("Cache-Status") == REFRESHED or response.status_int != 200, response.headers
    return response


def test_the_same_bytes_forwarded_again_are_neither_parsed_nor_dumped_again(gateway, own_sandbox, work):
    first = forwarded(gateway)
    assert work == {"parsed": 1, "dumped": 1}

    again = [forwarded(gateway) for _ in range(3)]

    assert sandbox_calls(own_sandbox)[SITE_INFO] == 4  # each was forwarded to Moodle
    assert work == {"parsed": 1, "dumped": 1}
    assert [response.status_int for response in again] == [200] * 3
    assert {response.json["data"] == first.json["data"] for response in again} == {True}
    assert "userprivateaccesskey" not in again[-1].json["data"]


def test_changed_bytes_are_parsed_checked_and_dumped(gateway, own_sandbox, work):
    before = forwarded(gateway)
    with own_sandbox.site.lock:
        own_sandbox.site.upload_files = False
        own_sandbox.site.service_functions.remove("core_course_get_courses_by_field")

    changed = forwarded(gateway)
    again = forwarded(gateway)

    assert (before.json["data"]["uploadfiles"], changed.json["data"]["uploadfiles"]) == (1, 0)
    assert work == {"parsed": 2, "dumped": 2}
    assert again.json["data"] == changed.json["data"]
    # The function list kept is the new answer's: a route on the function removed is refused without calling it.
    courses = gateway.get("/api/moodle/courses/2", mint("courses:read"))
    assert (courses.status_int, courses.json["error"]["code"]) == (501, "functionnotavailable")


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [({"kind": "notjson"}, 502, "badresponse"), ({"kind": "maintenance"}, 503, "sitemaintenance")],
)
def test_a_changed_answer_that_is_no_site_info_is_refused_and_never_kept(
    gateway, own_sandbox, work, fault, status, code
):
    first = forwarded(gateway)
    queue_fault(own_sandbox, function=SITE_INFO, **fault)

    failed = forwarded(gateway)
    recovered = forwarded(gateway)

    assert (failed.status_int, failed.json["error"]["code"]) == (status, code)
    assert failed.json["error"]["details"]["function"] == SITE_INFO
    assert recovered.status_int == 200 and recovered.json["data"] == first.json["data"]
    # The refused bytes were parsed; the site info's again were the ones kept, neither parsed nor dumped again.
    assert work == {"parsed": 2, "dumped": 1}
