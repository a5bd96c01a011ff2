"""The gateway served from one request class, as pserve serves it: every concern's request method and property there,
answering as before."""

import itertools
import re

from pyramid.events import NewRequest
from pyramid.interfaces import IRequestExtensions

from lms_api.requestclass import serve_one_request_class
from tests.support.credentials import mint

_numbers = itertools.count(1)


def test_every_concern_s_request_method_and_property_is_on_the_one_class_and_answers(make_gateway):
    gateway = make_gateway(PUBLIC_URL="https://api.example.edu")
    serve_one_request_class(gateway.router)
    registry = gateway.router.registry
    made = []
    registry.registerHandler(lambda event: made.append(event.request), (NewRequest,))
    extensions = registry.getUtility(IRequestExtensions)

    read = gateway.get("/api/moodle/siteinfo", mint())  # request.id, lms_settings, find_service, fresh_answer
    cached = gateway.get("/api/moodle/siteinfo", mint(), headers={"X-Request-ID": "trace-me-2"})
    body = {"fullname": "One class", "shortname": f"ONE{next(_numbers)}", "categoryid": 1}
    created = gateway.post("/api/moodle/courses", body, mint())  # public_url, audit_targets
    refused = gateway.get("/api/moodle/siteinfo")  # api_error

    one = gateway.router.request_factory
    assert {type(request) for request in made} == {one}
    assert {*extensions.methods, *extensions.descriptors} <= set(vars(one))
    assert read.status_int == 200 and re.fullmatch(r"[0-9a-f]{32}", read.headers["X-Request-ID"])
    assert cached.headers["Cache-Status"].startswith("lms_api; hit")
    assert cached.headers["X-Request-ID"] == "trace-me-2"
    assert created.status_int == 201, created.text
    assert created.headers["Location"] == f"https://api.example.edu/api/moodle/courses/{created.json['data']['id']}"
    assert refused.status_int == 401 and refused.json["error"]["request_id"] == refused.headers["X-Request-ID"]
    ids = [response.headers["X-Request-ID"] for response in (read, cached, created, refused)]
    summaries = [line for line in gateway.log_lines if line["event"] == "request"]
    assert [line["request_id"] for line in summaries] == ids
    assert [line["status"] for line in summaries] == [200, 200, 201, 401]
    assert [line["event"] for line in gateway.log_lines if line.get("request_id") == ids[2]].count("audit") == 1
