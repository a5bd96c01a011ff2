"""Generated hostile input against every route: never a 5xx, always the envelope, and no Moodle call for input the
gateway refuses itself.

Deep and odd JSON, odd Unicode (lone surrogates, controls, other scripts' digits), extreme numbers, odd query
strings and paths (bytes that are not UTF-8 once percent-decoded, repeated names), odd and truncated multipart
bodies, odd headers. Bounded by the ``hypothesis`` profiles in ``tests/conftest.py``.
"""

import json
import string
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lms_api.schemas.courses import CourseFields
from lms_api.schemas.enrolments import EnrolmentSchema
from lms_api.schemas.files import AttachBody
from lms_api.webhooks import EVENTS
from tests.support.credentials import mint
from tests.support.gateway import Gateway, settings_for
from tests.support.operations import api_operations

# Answers the gateway gives without asking Moodle: after one of these, Moodle must not have been called.
REFUSED_BY_THE_GATEWAY = frozenset(
    {
        "validationerror",
        "invalidjson",
        "invalidencoding",
        "invalidmultipart",
        "unsupportedmediatype",
        "bodytoolarge",
        "filetoolarge",
        "notfound",
        "methodnotallowed",
        "unauthenticated",
        "invalid_token",
        "forbidden",
    }
)
ORIGIN = "https://app.example.edu"
TOKEN = mint(scope="admin", moodle_userid=3)
WEBHOOK_SECRET = "property-webhook-secret-0123456789abcdef"

# The fields each body takes, as its schema declares them.
COURSE_FIELDS = tuple(CourseFields().fields)
ENROLMENT_FIELDS = tuple(EnrolmentSchema().fields)
ATTACH_FIELDS = tuple(AttachBody().fields)


def query_routes(registry):
    """Each API path whose operation reads a query string, and the parameters its schema takes, from the registry."""
    return {
        each.path: tuple(each.operation.query.fields)
        for each in api_operations(registry)
        if each.operation.query is not None
    }


TRICKY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\nb",
        "\t",
        "\x7f",
        "\x85",
        "\u202e",
        "\ufeff",
        "\ufffd",
        "\U0001f600",
        "<b>x</b>",
        "%ff",
        "\u0661\u0662",  # ARABIC-INDIC DIGITS
        "\uff11",  # FULLWIDTH DIGIT ONE
        "1_0",
        "+1",
        "-0",
        "0x10",
        "1e3",
        "NaN",
        "Infinity",
        "9" * 30,
        str(2**53),
        str(2**53 - 1),
        "true",
        "null",
        "student",
        "id",
        "email",
        "username",
        "x" * 2000,
        "PY101",
        "2",
        "3",
    ]
)
TEXT = st.one_of(TRICKY_TEXT, st.text(st.characters(exclude_categories=()), max_size=40))
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, -1, 2**53 - 1, 2**53, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)


def objects_with(names):
    """JSON objects that mostly use the route's own field names, so validation is exercised beyond the first check."""
    keys = st.one_of(st.sampled_from(names), TEXT)
    return st.dictionaries(keys, st.one_of(JSON_VALUES, SCALARS), max_size=len(names) + 2)


ENROL_BODIES = st.one_of(
    st.fixed_dictionaries({"enrolments": st.lists(objects_with(ENROLMENT_FIELDS), max_size=4)}),
    objects_with(("enrolments",)),
)


def nested(depth):
    return "[" * depth + "]" * depth


def json_payloads(objects):
    """Bodies as bytes: objects (``ensure_ascii`` writes lone surrogates as escapes), raw bytes, deep nesting."""
    return st.one_of(
        objects.map(lambda value: json.dumps(value, ensure_ascii=True).encode()),
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        st.integers(1, 3000).map(lambda depth: nested(depth).encode()),
        st.binary(max_size=200),
        st.sampled_from([b'{"a":1,"a":2}', b"{NaN}", b'{"x":NaN}', b'{"a":"\\ud800"}', b"\xff\xfe{}", b"{}" * 3]),
    )


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=bogus-xyz",
            "application/json; charset=latin-1",
            "application/json;;;",
            "application/json; charset=",
            "text/plain",
            "multipart/form-data",
            "",
        ]
    ),
    st.text(string.printable.replace("\n", "").replace("\r", ""), max_size=40),
)

SEGMENT_BYTES = st.binary(min_size=0, max_size=6).map(lambda raw: "".join(f"%{byte:02X}" for byte in raw))
# A lone surrogate is escaped as the bytes it would be in UTF-8 (not valid UTF-8: the gateway must refuse it).
ESCAPED_TEXT = TEXT.map(lambda text: quote(text, safe="", errors="surrogatepass"))
PATH_SEGMENTS = st.one_of(SEGMENT_BYTES, ESCAPED_TEXT, NUMBERS.map(str))
QUERY_PIECES = st.one_of(SEGMENT_BYTES, ESCAPED_TEXT, NUMBERS.map(str))


def query_strings(names):
    pair = st.tuples(st.one_of(st.sampled_from(names or ("x",)), QUERY_PIECES), QUERY_PIECES)
    joined = st.lists(pair, max_size=6).map(lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))
    return st.one_of(joined, QUERY_PIECES, st.sampled_from(["&&", "=", "a=1&a=2", "%", "%%", "%g0", "page=%00"]))


def multipart_bodies():
    boundary = st.one_of(
        st.just("b0und4ry"), st.text(string.ascii_letters + string.digits + "'()+_,-./:=?", max_size=80)
    )
    header_value = st.one_of(TEXT, st.sampled_from(['name="file"; filename="a.txt"', 'name="itemid"', "name=file"]))
    part = st.tuples(
        header_value, st.one_of(st.binary(max_size=50), TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")))
    )

    def build(drawn):
        boundary, parts, cut, close = drawn
        body = b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Disposition: form-data; "
            + header.encode("utf-8", "surrogatepass")
            + b"\r\n\r\n"
            + content
            + b"\r\n"
            for header, content in parts
        )
        if close:
            body += b"--" + boundary.encode() + b"--\r\n"
        body = body[:cut] if cut is not None else body
        return body, f"multipart/form-data; boundary={boundary}"

    return st.tuples(
        boundary, st.lists(part, max_size=3), st.one_of(st.none(), st.integers(0, 400)), st.booleans()
    ).map(build)


HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Request-ID": st.text(string.printable.replace("\n", "").replace("\r", ""), max_size=140),
        "Origin": st.sampled_from([ORIGIN, "null", "https://evil.example"]),
        "Authorization": st.sampled_from([f"Bearer {TOKEN}", "Bearer", "Bearer x.y.z", "Basic abc", f"bearer {TOKEN}"]),
    },
)


@pytest.fixture(scope="module")
def gateway(sandbox):
    # Budgets far above what the examples use: a 429 would hide what the input itself does.
    return Gateway(
        settings_for(
            sandbox.url,
            sandbox.site.token,
            CORS_ALLOWED_ORIGINS=ORIGIN,
            RATE_LIMIT_READ="1000000/minute",
            RATE_LIMIT_WRITE="1000000/minute",
            RATE_LIMIT_UNAUTHENTICATED="1000000/minute",
            WEBHOOK_SECRET=WEBHOOK_SECRET,
        )
    )


def send(gateway, sandbox, method, path, body=b"", content_type=None, headers=None):
    headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
    if content_type is not None:
        headers["Content-Type"] = content_type
    with sandbox.state_lock:
        calls_before = sum(sandbox.calls.values())
    response = gateway.app.request(path, method=method, body=body, headers=headers, expect_errors=True)
    with sandbox.state_lock:
        calls_after = sum(sandbox.calls.values())

    assert response.status_int < 500, (method, path, body[:300], response.body[:500])
    assert response.headers.get("X-Request-ID")
    if response.status_int == 204 or method == "HEAD":
        return response
    envelope = json.loads(response.body)
    if response.status_int >= 400:
        assert envelope["ok"] is False
        assert set(envelope["error"]) == {"code", "message", "details", "request_id"}
        assert envelope["error"]["request_id"] == response.headers["X-Request-ID"]
        if envelope["error"]["code"] in REFUSED_BY_THE_GATEWAY:
            assert calls_after == calls_before, f"Moodle was called for refused input: {path} {body[:200]!r}"
    else:
        assert envelope["ok"] is True and "data" in envelope
    return response


PROPERTY = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def test_every_query_a_route_reads_is_generated(gateway):
    routes = query_routes(gateway.router.registry)

    assert routes == {
        "/api/moodle/siteinfo": (),
        "/api/moodle/courses": ("search", "category", "page", "perpage"),
        "/api/moodle/users/by-field": ("field", "values"),
        "/api/moodle/notifications": ("userid", "limit", "offset"),
        "/api/moodle/notifications/unread-count": ("userid",),
        "/api/moodle/jobs": ("page", "perpage"),
        "/api/moodle/events/tickets": ("courses",),
        "/api/moodle/events/stream": ("ticket", "last_event_id"),  # never a ticket that opens one: a 401, not a stream
    }


@PROPERTY
@given(data=st.data(), headers=HEADERS)
def test_query_routes(gateway, sandbox, data, headers):
    routes = query_routes(gateway.router.registry)
    route = data.draw(st.sampled_from(sorted(routes)))
    query = data.draw(query_strings(routes[route]))
    send(gateway, sandbox, data.draw(st.sampled_from(["GET", "HEAD"])), f"{route}?{query}", headers=headers)


@PROPERTY
@given(segment=PATH_SEGMENTS, query=query_strings(()), method=st.sampled_from(["GET", "PATCH", "DELETE", "OPTIONS"]))
def test_paths(gateway, sandbox, segment, query, method):
    send(gateway, sandbox, method, f"/api/moodle/courses/{segment}?{query}", b"{}", "application/json")
    send(gateway, sandbox, "GET", f"/api/moodle/{segment}/{segment}")


@PROPERTY
@given(
    route=st.sampled_from(["/api/moodle/courses", "/api/moodle/courses/2", "/api/moodle/courses/99999"]),
    body=json_payloads(objects_with(COURSE_FIELDS)),
    content_type=st.one_of(st.just("application/json"), CONTENT_TYPES),
)
def test_course_writes(gateway, sandbox, route, body, content_type):
    send(gateway, sandbox, "POST" if route == "/api/moodle/courses" else "PATCH", route, body, content_type)


@PROPERTY
@given(body=json_payloads(ENROL_BODIES), content_type=st.one_of(st.just("application/json"), CONTENT_TYPES))
def test_enrol(gateway, sandbox, body, content_type):
    send(gateway, sandbox, "POST", "/api/moodle/enrol", body, content_type)


@PROPERTY
@given(
    body=json_payloads(objects_with(ATTACH_FIELDS)), content_type=st.one_of(st.just("application/json"), CONTENT_TYPES)
)
def test_attach(gateway, sandbox, body, content_type):
    send(gateway, sandbox, "POST", "/api/moodle/files/attach", body, content_type)


@PROPERTY
@given(upload=multipart_bodies(), query=query_strings(("itemid",)))
def test_upload(gateway, sandbox, upload, query):
    body, content_type = upload
    send(gateway, sandbox, "POST", f"/api/moodle/files/upload?{query}", body, content_type)


WEBHOOK_FIELDS = ("eventname", "objectid", "courseid", "userid", "relateduserid", "contextinstanceid", "timecreated")
EVENT_NAMES = st.sampled_from([*EVENTS, "\\core\\event\\course_viewed", "core\\event\\course_updated", "", " ", "\\"])
DELIVERY_VALUES = st.one_of(EVENT_NAMES, TEXT, NUMBERS.map(str), st.just(""))
FORM_BODIES = st.dictionaries(st.one_of(st.sampled_from(WEBHOOK_FIELDS), TEXT), DELIVERY_VALUES, max_size=9).map(
    lambda fields: urlencode(fields).encode()
)
FORM_TYPES = st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=x"])


@PROPERTY
@given(
    body=st.one_of(FORM_BODIES, json_payloads(objects_with(WEBHOOK_FIELDS)), st.binary(max_size=300)),
    content_type=st.one_of(FORM_TYPES, st.just("application/json"), CONTENT_TYPES),
)
def test_webhook_deliveries(gateway, sandbox, body, content_type):
    authorization = {"Authorization": f"Bearer {WEBHOOK_SECRET}"}
    send(gateway, sandbox, "POST", "/api/moodle/webhooks/moodle", body, content_type, headers=authorization)
