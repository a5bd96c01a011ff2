"""Request bodies: the limits every API route holds a body to before anything else runs, the streaming multipart
reader's limits on an upload's parts, and Content-Type headers and JSON that cannot be read."""

import io
import itertools

import pytest
from marshmallow import fields
from webob import Request

from lms_api.bodylimits import BoundedInput, upload_paths
from lms_api.bodysizes import upload_body_limit
from lms_api.errors import ApiError
from lms_api.schemas.base import (
    _READ_CHUNK_BYTES,
    MAX_FIELD_BYTES,
    MAX_PART_HEADER_BYTES,
    MAX_PART_HEADERS,
    MAX_PARTS,
    RequestSchema,
    json_body_too_large,
    load_json_body,
)
from lms_api.schemas.files import MAX_FILES
from lms_api.settings import MIB
from tests.functional.test_envelope import assert_error_envelope, json_request
from tests.support.credentials import mint
from tests.support.sandbox import sandbox_calls
from tests.unit.lms_api.schemas.test_multipart import spooled_files

APP = "https://app.example.edu"
TOKEN = mint(moodle_userid=3, scope="admin")
UPLOAD = "/api/moodle/files/upload"
COURSES = "/api/moodle/courses"
BOUNDARY = "b0und4ry"
JSON_LIMIT = 1024  # the gateway fixture's MAX_JSON_BODY_KB
UPLOAD_LIMIT = upload_body_limit(1)  # the gateway fixture's MOODLE_MAX_UPLOAD_MB
_shortnames = itertools.count(1)


@pytest.fixture
def gateway(make_gateway):
    return make_gateway(CORS_ALLOWED_ORIGINS=APP, MAX_JSON_BODY_KB="1", MOODLE_MAX_UPLOAD_MB="1")


class Body:
    """A request body as the server hands it over, counting what the gateway reads of it."""

    def __init__(self, data=b""):
        self._stream = io.BytesIO(data)
        self.bytes_read = 0

    def read(self, size=-1):
        chunk = self._stream.read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readline(self, size=-1):
        line = self._stream.readline(size)
        self.bytes_read += len(line)
        return line


class Unreadable:
    """A body the gateway must not read at all."""

    def read(self, size=-1):
        raise AssertionError("the body was read")

    readline = read


def send(gateway, path, body, content_type, length="declared", token=TOKEN):
    """POST ``body`` (bytes, or a stream) through every tween; ``length`` a number to declare, or None for a body
    without a Content-Length (chunked, which the server ends)."""
    headers = {"Origin": APP, "Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = Request.blank(path, method="POST", headers=headers)
    if length == "declared":
        length = len(body._stream.getvalue()) if isinstance(body, Body) else len(body)
    request.environ["wsgi.input"] = body if hasattr(body, "read") else Body(body)
    if length is None:
        request.environ.pop("CONTENT_LENGTH", None)
        request.environ["wsgi.input_terminated"] = True
    else:
        request.environ["CONTENT_LENGTH"] = str(length)
    return request.get_response(gateway.router)


def with_json(response):
    """A webob response with ``.json`` and ``.status_int``, as assert_error_envelope takes it."""
    response.json = response.json_body
    return response


def assert_api_headers(response):
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def multipart(*parts, boundary=BOUNDARY):
    body = b"".join(
        b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts
    )
    return body + b"--" + boundary.encode() + b"--\r\n"


def file_part(number, size=5):
    return (f'Content-Disposition: form-data; name="file"; filename="f{number}.txt"'.encode(), b"x" * size)


def text_part(name, value=b"1"):
    return (f'Content-Disposition: form-data; name="{name}"'.encode(), value)


FORM = f"multipart/form-data; boundary={BOUNDARY}"


def course_json(size=None, summary_bytes=0):
    """A course to create, with a shortname no other test uses (they share the sandbox); padded with spaces to
    ``size`` bytes when given."""
    body = (
        f'{{"fullname": "F", "shortname": "BODY{next(_shortnames)}", "categoryid": 1, "summary": "'.encode()
        + b"s" * summary_bytes
        + b'"}'
    )
    return body if size is None else body + b" " * (size - len(body))


def upload_of_size(size):
    """A multipart body of ``size`` bytes holding one file of MOODLE_MAX_UPLOAD_MB (1 MiB), the rest an epilogue
    after the close delimiter, which the reader reads to the end."""
    body = multipart(file_part(1, size=MIB))
    return body + b"e" * (size - len(body))


# -- limits before anything else runs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "anonymous"])
def test_a_json_body_declared_over_max_json_body_kb_is_a_413_before_the_token_or_the_body_is_read(gateway, token):
    response = with_json(send(gateway, COURSES, Unreadable(), "application/json", length=40 * MIB, token=token))

    assert_error_envelope(response, 413, "bodytoolarge")
    assert response.json["error"]["details"] == {"max_bytes": 1024}
    assert "MAX_JSON_BODY_KB" in response.json["error"]["message"]
    assert_api_headers(response)
    assert "RateLimit-Limit" not in response.headers  # refused before the budgets are counted
    [request_line] = [line for line in gateway.log_lines if line["event"] == "request"]
    assert (request_line["status"], request_line["sub"]) == (413, None)  # the token was never checked
    [audit] = [line for line in gateway.log_lines if line["event"] == "audit"]
    assert (audit["outcome"], audit["sub"]) == ("bodytoolarge", None)  # a refused write attempt is still audited


def test_a_refused_body_costs_the_caller_no_budget(make_gateway):
    gateway = make_gateway(MAX_JSON_BODY_KB="1", RATE_LIMIT_UNAUTHENTICATED="1/minute")

    refusals = [send(gateway, COURSES, Unreadable(), "application/json", length=MIB, token=None) for _ in range(3)]
    counted = send(gateway, COURSES, b"{}", "application/json", token=None)

    assert [response.status_int for response in refusals] == [413, 413, 413]
    assert counted.status_int == 401
    assert counted.headers["RateLimit-Remaining"] == "0"


def test_every_api_route_but_the_upload_holds_bodies_to_max_json_body_kb(gateway):
    for path in ("/api/moodle/siteinfo", "/api/moodle/files/attach", "/api/moodle/nothere"):
        response = with_json(send(gateway, path, Unreadable(), "application/json", length=1025))
        assert_error_envelope(response, 413, "bodytoolarge")


def test_a_body_at_max_json_body_kb_is_read(gateway):
    response = send(gateway, COURSES, course_json(size=JSON_LIMIT, summary_bytes=900), "application/json")

    assert response.status_int == 201


def test_the_json_reader_holds_bodies_to_the_setting(make_gateway):
    gateway = make_gateway(MAX_JSON_BODY_KB="2048")
    body = course_json(summary_bytes=1536 * 1024)  # 1.5 MiB: over the former fixed 1 MiB, under MAX_JSON_BODY_KB

    response = send(gateway, COURSES, body, "application/json")

    assert response.status_int == 201


class _Named(RequestSchema):
    name = fields.String(required=True)


def json_request_without_length(body):
    """A JSON request as a server that does not de-chunk hands it over: no Content-Length, the input ended by it."""
    request = json_request(body)
    del request.environ["CONTENT_LENGTH"]
    request.environ["wsgi.input_terminated"] = True
    return request


def test_the_json_reader_itself_refuses_a_body_without_a_length_one_byte_past_the_limit():
    # Behind the body-limit tween such a body is refused by its BoundedInput first: this is the reader's own guard,
    # for a body that reaches it any other way.
    limit = json_request(b"").lms_settings.max_json_body_kb * 1024
    named = b'{"name": "x"}'
    at_limit = named + b" " * (limit - len(named))
    request = json_request_without_length(at_limit + b" ")

    with pytest.raises(ApiError) as refused:
        load_json_body(request, _Named())

    assert (refused.value.status, refused.value.code) == (413, "bodytoolarge")
    assert refused.value.details == {"max_bytes": limit}
    assert load_json_body(json_request_without_length(at_limit), _Named()) == {"name": "x"}


def test_an_upload_declared_over_moodle_max_upload_mb_is_a_413_before_the_token_or_the_body_is_read(gateway):
    response = with_json(send(gateway, UPLOAD, Unreadable(), FORM, length=40 * MIB, token=None))

    assert_error_envelope(response, 413, "filetoolarge")
    assert response.json["error"]["details"] == {"max_bytes": MIB}
    assert_api_headers(response)


def test_an_upload_whose_files_exceed_the_limit_inside_its_framing_is_a_413_after_the_budget_is_counted(gateway):
    response = with_json(send(gateway, UPLOAD, multipart(file_part(1, size=MIB + 1)), FORM))

    assert_error_envelope(response, 413, "filetoolarge")
    assert response.headers["RateLimit-Remaining"]  # past the rate limit: the OpenAPI document says which 413s are not


def test_an_upload_of_more_than_max_json_body_kb_is_taken(gateway):
    response = send(gateway, UPLOAD, multipart(file_part(1, size=100 * 1024)), FORM)

    assert response.status_int == 201


@pytest.mark.parametrize(
    ("path", "content_type", "code"), [(COURSES, "application/json", "bodytoolarge"), (UPLOAD, FORM, "filetoolarge")]
)
def test_a_body_without_a_length_is_held_to_the_same_limit_while_read(gateway, sandbox, path, content_type, code):
    before = sandbox_calls(sandbox)
    body = Body(b'{"a": "' + b"x" * (2 * MIB) + b'"}' if path == COURSES else multipart(file_part(1, size=2 * MIB)))
    limit = JSON_LIMIT if path == COURSES else UPLOAD_LIMIT

    response = with_json(send(gateway, path, body, content_type, length=None))

    assert_error_envelope(response, 413, code)
    assert_api_headers(response)
    assert body.bytes_read <= limit + _READ_CHUNK_BYTES  # the limit and a chunk at most, not the 2 MiB
    assert sandbox_calls(sandbox) == before


def test_a_body_without_a_length_under_the_limit_is_read(gateway):
    body = course_json()

    assert send(gateway, COURSES, body, "application/json", length=None).status_int == 201
    assert send(gateway, UPLOAD, multipart(file_part(1)), FORM, length=None).status_int == 201


@pytest.mark.parametrize(
    ("path", "content_type", "limit", "body_of_size", "code"),
    [
        (COURSES, "application/json", JSON_LIMIT, lambda size: course_json(size=size), "bodytoolarge"),
        (UPLOAD, FORM, UPLOAD_LIMIT, upload_of_size, "filetoolarge"),
    ],
    ids=["json", "upload"],
)
def test_a_body_without_a_length_is_taken_at_the_limit_and_refused_one_byte_past_it(
    gateway, path, content_type, limit, body_of_size, code
):
    taken = send(gateway, path, body_of_size(limit), content_type, length=None)
    refused = with_json(send(gateway, path, body_of_size(limit + 1), content_type, length=None))

    assert taken.status_int == 201, taken.text
    assert_error_envelope(refused, 413, code)


def test_bounded_input_holds_lines_to_the_limit_too():
    def refusal():
        return json_body_too_large(6)

    bounded = BoundedInput(io.BytesIO(b"abc\ndefgh\n"), 6, refusal)

    assert bounded.readline() == b"abc\n"
    with pytest.raises(ApiError) as refused:
        bounded.readline()  # "defgh\n" would make 10 bytes
    assert refused.value.code == "bodytoolarge"

    at_limit = BoundedInput(io.BytesIO(b"abc\nde"), 6, refusal)
    assert [at_limit.readline(), at_limit.readline(), at_limit.readline(2)] == [b"abc\n", b"de", b""]


# -- the streaming multipart reader -----------------------------------------------------------------------------------


def test_an_upload_of_1500_small_files_stops_at_the_limit_with_a_file_for_each_taken(
    make_gateway, sandbox, monkeypatch
):
    gateway = make_gateway()
    parts = [file_part(number, size=1100) for number in range(1500)]  # 1.7 MiB; each past cgi's 1000-byte spool
    body = Body(multipart(*parts))
    before = sandbox_calls(sandbox)
    opened = spooled_files(monkeypatch)

    response = with_json(send(gateway, UPLOAD, body, FORM))

    assert_error_envelope(response, 400, "invalidmultipart")
    assert f"more than {MAX_FILES} files" in response.json["error"]["message"]
    assert len(opened) == MAX_FILES  # the file past the limit is refused before its temporary file is made
    assert all(file.closed for file in opened)
    assert body.bytes_read <= 2 * _READ_CHUNK_BYTES  # the first 21 parts are in the first chunks read
    assert sandbox_calls(sandbox) == before


def test_300000_tiny_fields_are_refused_after_the_first_parts(make_gateway):
    gateway = make_gateway()
    body = Body(multipart(*[text_part(f"f{number}") for number in range(300_000)]))

    response = with_json(send(gateway, UPLOAD, body, FORM))

    assert_error_envelope(response, 400, "invalidmultipart")
    assert f"more than {MAX_PARTS} parts" in response.json["error"]["message"]
    assert body.bytes_read <= 2 * _READ_CHUNK_BYTES  # of 15 MB


def test_files_past_the_limit_are_refused_and_at_the_limit_taken(gateway):
    refused = with_json(send(gateway, UPLOAD, multipart(*[file_part(n) for n in range(MAX_FILES + 1)]), FORM))
    taken = send(gateway, UPLOAD, multipart(*[file_part(n) for n in range(MAX_FILES)]), FORM)

    assert_error_envelope(refused, 400, "invalidmultipart")
    assert taken.status_int == 201
    assert len(taken.json_body["data"]["files"]) == MAX_FILES


def test_a_text_field_over_its_limit_is_a_400_naming_it(gateway):
    response = with_json(send(gateway, UPLOAD, multipart(file_part(1), text_part("component", b"c" * 5000)), FORM))

    assert_error_envelope(response, 400, "validationerror")
    assert response.json["error"]["details"]["fields"] == {
        "component": [f"Text fields are limited to {MAX_FIELD_BYTES} bytes"]
    }


@pytest.mark.parametrize(
    "headers",
    [
        b'Content-Disposition: form-data; name="file"; filename="' + b"n" * MAX_PART_HEADER_BYTES + b'"',
        b'Content-Disposition: form-data; name="file"; filename="a.txt"' + b"\r\nX-Extra: 1" * MAX_PART_HEADERS,
    ],
    ids=["long-header-line", "many-header-lines"],
)
def test_part_headers_past_their_limits_are_refused(gateway, headers):
    response = with_json(send(gateway, UPLOAD, multipart((headers, b"x")), FORM))

    assert_error_envelope(response, 400, "invalidmultipart")
    assert "header" in response.json["error"]["message"]


def test_the_temporary_files_of_an_upload_are_closed_when_it_ends(gateway, monkeypatch):
    opened = spooled_files(monkeypatch)

    response = send(gateway, UPLOAD, multipart(file_part(1, size=MIB - 1024), file_part(2)), FORM)

    assert response.status_int == 201
    assert len(opened) == 2 and all(file.closed for file in opened)


# -- Content-Type and JSON that cannot be read ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "says"),
    [
        (f"multipart/form-data; charset=latin1; boundary={BOUNDARY}", "charset=latin1"),
        (f"multipart/form-data; boundary={BOUNDARY}; boundary=other", "boundary twice"),
        ("multipart/form-data; boundary", "boundary"),
        (f'multipart/form-data; boundary="{BOUNDARY}', f'"{BOUNDARY}'),
        (f"multipart/form-data; boundary={BOUNDARY} x", "x"),
        (f"multipart/form-data; =x; boundary={BOUNDARY}", "=x"),
    ],
    ids=["latin1", "boundary-twice", "no-value", "unterminated-quote", "junk-after-value", "no-name"],
)
def test_an_upload_content_type_that_cannot_be_read_is_a_400_saying_what(gateway, content_type, says):
    response = with_json(send(gateway, UPLOAD, multipart(file_part(1)), content_type))

    assert_error_envelope(response, 400, "invalidmultipart")
    assert says in response.json["error"]["message"]
    assert_api_headers(response)


@pytest.mark.parametrize(
    "content_type",
    [
        f'multipart/form-data; boundary="{BOUNDARY}"',
        f"Multipart/Form-Data;boundary={BOUNDARY};charset=UTF-8",
        f"multipart/form-data; boundary={BOUNDARY};",
    ],
)
def test_well_formed_upload_content_types_are_taken(gateway, content_type):
    assert send(gateway, UPLOAD, multipart(file_part(1)), content_type).status_int == 201


@pytest.mark.parametrize(
    ("content_type", "says"),
    [("application/json; charset", "charset"), ('application/json; charset="utf-8', '"utf-8')],
)
def test_a_json_content_type_that_cannot_be_read_is_a_400_saying_what(gateway, content_type, says):
    response = with_json(send(gateway, COURSES, b"{}", content_type))

    assert_error_envelope(response, 400, "invalidjson")
    assert says in response.json["error"]["message"]


@pytest.mark.parametrize(("path", "body"), [(COURSES, b"{}"), (UPLOAD, multipart(file_part(1)))])
@pytest.mark.parametrize("content_type", ["text/plain; ;x", "text/plain; a=1; a=2", "application/xml; charset"])
def test_another_media_type_is_a_415_whatever_its_parameters(gateway, path, body, content_type):
    response = with_json(send(gateway, path, body, content_type))

    assert_error_envelope(response, 415, "unsupportedmediatype")
    assert_api_headers(response)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"fullname": "F",\n "shortname" "S"}', "line 2, column 14"),
        (b'{\n  "fullname": "\xc3\xa9t\xc3\xa9",\n  "categoryid": 1,\n}', "line 4, column 1"),
        (b'{"fullname": "F"} x', "line 1, column 19"),
    ],
    ids=["missing-colon", "trailing-comma-after-text", "extra-data"],
)
def test_invalid_json_says_where(gateway, body, where):
    response = with_json(send(gateway, COURSES, body, "application/json"))

    assert_error_envelope(response, 400, "invalidjson")
    assert where in response.json["error"]["message"]


def test_the_routes_held_to_the_upload_limit_are_those_whose_operation_takes_a_form(gateway):
    assert upload_paths(gateway.router.registry) == {"/api/moodle/files/upload"}
