"""Input a client can send that once found a 500 or reached Moodle: each is a 400 envelope with the request id,
the CORS headers and one request log line, and Moodle is never called."""

import pytest

from lms_api.schemas.base import MAX_JSON_DEPTH, MAX_SAFE_INTEGER
from lms_api.views.exceptions import MAX_LISTED
from tests.functional.test_envelope import assert_error_envelope
from tests.support.credentials import mint
from tests.support.sandbox import sandbox_calls

APP = "https://app.example.edu"
TOKEN = mint(moodle_userid=3, scope="admin")


@pytest.fixture
def gateway(make_gateway):
    return make_gateway(CORS_ALLOWED_ORIGINS=APP)


def send(gateway, method, path, body=None, content_type=None, token=TOKEN):
    headers = {"Origin": APP, "Authorization": f"Bearer {token}"} if token else {"Origin": APP}
    if content_type:
        headers["Content-Type"] = content_type
    return gateway.app.request(path, method=method, body=body, headers=headers, expect_errors=True)


def assert_refused_before_moodle(gateway, sandbox, response, code, before):
    assert_error_envelope(response, 400, code)
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert [line["status"] for line in gateway.log_lines if line["event"] == "request"] == [400]
    assert sandbox_calls(sandbox) == before


NEW_COURSE = b'{"fullname":"F","shortname":"S","categoryid":1}'
COURSE = {"fullname": "F", "shortname": "S", "categoryid": 1}


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"[" * 1000 + b"]" * 1000, "application/json", "invalidjson"),
        (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "application/json", "invalidjson"),
        (b'{"fullname":"\\ud800","shortname":"S","categoryid":1}', "application/json", "invalidjson"),
        (b'{"fullname":"F","shortname":"\\udfff\\ud800","categoryid":1}', "application/json", "invalidjson"),
        (b'{"\\ud800":"F"}', "application/json", "invalidjson"),
        (NEW_COURSE, "application/json; charset=bogus-xyz", "invalidjson"),
        (NEW_COURSE.decode().encode("utf-16"), "application/json; charset=utf-16", "invalidjson"),
        (b'{"fullname":"F\xff","shortname":"S","categoryid":1}', "application/json", "invalidjson"),
        (b'{"fullname":"F","shortname":"S","categoryid":NaN}', "application/json", "invalidjson"),
        (b'{"fullname":"F","shortname":"S","categoryid":1,"categoryid":2}', "application/json", "invalidjson"),
        (b'{"fullname":"F","shortname":"S","categoryid":' + b"9" * 5000 + b"}", "application/json", "invalidjson"),
    ],
    ids=[
        "nested-1000",
        "nested-past-limit",
        "lone-surrogate",
        "reversed-surrogates",
        "surrogate-key",
        "bogus-charset",
        "utf-16",
        "invalid-utf8",
        "nan",
        "repeated-key",
        "huge-number",
    ],
)
def test_unreadable_json_is_a_400(gateway, sandbox, body, content_type, code):
    before = sandbox_calls(sandbox)

    response = send(gateway, "POST", "/api/moodle/courses", body, content_type)

    assert_refused_before_moodle(gateway, sandbox, response, code, before)


def test_a_utf8_charset_in_any_spelling_is_accepted(gateway):
    response = send(gateway, "POST", "/api/moodle/courses", b"{}", "application/json; charset=UTF8")

    assert response.json["error"]["code"] == "validationerror"


@pytest.mark.parametrize(
    "path",
    [
        "/api/moodle/courses?search=%ff",
        "/api/moodle/siteinfo?%ff=1",
        "/api/moodle/courses/%ff",
        "/api/moodle/courses/%c3%28",
        "/api/moodle/nothere/%ff?%fe",
    ],
)
@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-token"])
def test_a_path_or_query_that_is_not_utf8_is_a_400(gateway, sandbox, path, token):
    before = sandbox_calls(sandbox)

    response = send(gateway, "GET", path, token=token)

    assert_refused_before_moodle(gateway, sandbox, response, "invalidencoding", before)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/moodle/courses", {"fullname": "F", "shortname": "S", "categoryid": 10**30}, "categoryid"),
        ("POST", "/api/moodle/courses", {"fullname": "F", "shortname": "S", "categoryid": 2**63}, "categoryid"),
        ("POST", "/api/moodle/courses", {**COURSE, "startdate": 10**23}, "startdate"),
        ("POST", "/api/moodle/courses", {"fullname": "F", "shortname": "S", "categoryid": 1.5}, "categoryid"),
        ("PATCH", "/api/moodle/courses/2", {"enddate": MAX_SAFE_INTEGER + 1}, "enddate"),
        ("POST", "/api/moodle/enrol", {"enrolments": [{"roleid": 2**53, "userid": 3, "courseid": 2}]}, "enrolments"),
        ("POST", "/api/moodle/enrol", {"enrolments": [{"roleid": 5, "userid": -1, "courseid": 2}]}, "enrolments"),
        ("POST", "/api/moodle/files/attach", {"courseid": 2, "draftitemid": 10**16, "name": "N"}, "draftitemid"),
        ("POST", "/api/moodle/courses", {"fullname": "F\x00", "shortname": "S", "categoryid": 1}, "fullname"),
        ("POST", "/api/moodle/courses", {"fullname": "F", "shortname": "S\nT", "categoryid": 1}, "shortname"),
        ("POST", "/api/moodle/courses", {**COURSE, "idnumber": "\x1b[31m"}, "idnumber"),
        ("POST", "/api/moodle/courses", {**COURSE, "summary": "a\x07"}, "summary"),
        ("POST", "/api/moodle/files/attach", {"courseid": 2, "draftitemid": 1, "name": "N\u0085"}, "name"),
        ("PATCH", "/api/moodle/courses/2", {}, "body"),
    ],
)  # fmt: skip
def test_out_of_bounds_numbers_and_control_characters_are_400s_naming_the_field(
    gateway, sandbox, method, path, body, field
):
    before = sandbox_calls(sandbox)

    send_json = gateway.app.post_json if method == "POST" else gateway.app.patch_json
    response = send_json(path, body, headers={"Origin": APP, "Authorization": f"Bearer {TOKEN}"}, expect_errors=True)

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
    assert field in response.json["error"]["details"]["fields"]


def test_multi_line_text_keeps_its_line_breaks_and_tabs(gateway, sandbox):
    body = {"fullname": "Lines", "shortname": "LINES1", "categoryid": 1, "summary": "one\r\ntwo\tthree"}

    response = gateway.post("/api/moodle/courses", body, TOKEN)

    assert response.status_int == 201


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/moodle/courses?category=1_0", "category"),
        ("/api/moodle/courses?category=+1", "category"),
        ("/api/moodle/courses?category=%201", "category"),
        ("/api/moodle/courses?category=%D9%A1", "category"),  # ARABIC-INDIC DIGIT ONE
        ("/api/moodle/courses?category=%EF%BC%91", "category"),  # FULLWIDTH DIGIT ONE
        ("/api/moodle/courses?category=9007199254740992", "category"),
        ("/api/moodle/courses?page=99999999999999999999999", "page"),
        ("/api/moodle/courses/%EF%BC%92", "course_id"),
        ("/api/moodle/courses/2%0A", "course_id"),
        ("/api/moodle/courses/9007199254740992", "course_id"),
        ("/api/moodle/notifications?offset=1e3", "offset"),
        ("/api/moodle/notifications?userid=0x3", "userid"),
        ("/api/moodle/notifications/unread-count?userid=3.0", "userid"),
        ("/api/moodle/courses?search=a%00b", "search"),
        ("/api/moodle/courses?search=a%0Ab", "search"),
    ],
)
def test_ids_and_numbers_in_paths_and_queries_are_parsed_strictly(gateway, sandbox, path, field):
    before = sandbox_calls(sandbox)

    response = send(gateway, "GET", path)

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
    assert field in response.json["error"]["details"]["fields"]


@pytest.mark.parametrize(
    ("query", "name"),
    [("page=1&page=0", "page"), ("search=a&search=b", "search"), ("perpage=5&perpage=5", "perpage")],
)
def test_a_repeated_query_parameter_says_to_give_it_once(gateway, sandbox, query, name):
    before = sandbox_calls(sandbox)

    response = send(gateway, "GET", f"/api/moodle/courses?{query}")

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
    assert response.json["error"]["details"]["fields"] == {name: [f"Give {name} once (it was given 2 times)"]}


def test_an_empty_update_names_the_body_not_a_schema(gateway):
    response = gateway.patch("/api/moodle/courses/2", {}, TOKEN)

    error = response.json["error"]
    assert error["message"] == "Invalid input: body"
    assert error["details"]["fields"]["body"][0].startswith("The body changes nothing: give at least one of")


def test_an_error_lists_the_first_fields_and_counts_the_rest(gateway, sandbox):
    query = "&".join(f"unknown{number}=1" for number in range(5000))
    before = sandbox_calls(sandbox)

    response = send(gateway, "GET", f"/api/moodle/courses?{query}")

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
    details = response.json["error"]["details"]
    assert len(details["fields"]) == MAX_LISTED
    assert details["more_fields"] == 5000 - MAX_LISTED
    assert response.json["error"]["message"].endswith(f"and {5000 - MAX_LISTED} more")
    assert len(response.body) < 3000


def test_a_long_unknown_name_is_cut_short_in_the_error(gateway):
    response = send(gateway, "GET", "/api/moodle/courses?" + "n" * 10_000 + "=1")

    assert response.status_int == 400
    assert len(response.body) < 1000


def test_nested_errors_are_capped_too(gateway, sandbox):
    enrolments = [{"roleid": "nobody", "userid": "x", "courseid": 2}] * 5000
    before = sandbox_calls(sandbox)

    response = gateway.post("/api/moodle/enrol", {"enrolments": enrolments}, TOKEN, headers={"Origin": APP})

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
    listed = response.json["error"]["details"]["fields"]["enrolments"]
    assert len(listed) == MAX_LISTED + 1
    assert listed["..."] == f"{5000 - MAX_LISTED} more"
    assert len(response.body) < 5000


def multipart(*parts, boundary="b0und4ry", close=True):
    body = b"".join(
        b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts
    )
    if close:
        body += b"--" + boundary.encode() + b"--\r\n"
    return body


FILE_PART = (b'Content-Disposition: form-data; name="file"; filename="a.txt"\r\nContent-Type: text/plain', b"hello")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (multipart(FILE_PART, close=False), "multipart/form-data; boundary=b0und4ry"),
        (multipart(FILE_PART)[:-30], "multipart/form-data; boundary=b0und4ry"),
        (multipart(FILE_PART), "multipart/form-data"),
        (multipart(FILE_PART), "multipart/form-data; boundary=other"),
        (multipart(FILE_PART), "multipart/form-data; boundary=" + "x" * 71),
        (b"", "multipart/form-data; boundary=b0und4ry"),
        (multipart(FILE_PART), "multipart/form-data; charset=latin1; boundary=b0und4ry"),
        (multipart(FILE_PART), "multipart/form-data; boundary=b0und4ry; boundary=b0und4ry"),
    ],
    ids=[
        "no-closing-boundary",
        "cut-short",
        "no-boundary",
        "other-boundary",
        "boundary-too-long",
        "empty",
        "latin1-charset",
        "boundary-twice",
    ],
)
def test_a_truncated_or_malformed_multipart_body_is_a_400(gateway, sandbox, body, content_type):
    before = sandbox_calls(sandbox)

    response = send(gateway, "POST", "/api/moodle/files/upload", body, content_type)

    assert_refused_before_moodle(gateway, sandbox, response, "invalidmultipart", before)


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ((FILE_PART, (b'Content-Disposition: form-data; name="itemid"', b"1"), (b'name="itemid"', b"2")), "itemid"),
        ((FILE_PART, (b'Content-Disposition: form-data; name="itemid"', b"1_0")), "itemid"),
        ((FILE_PART, (b'Content-Disposition: form-data; name="itemid"', b"\xff\xfe")), "itemid"),
        (((b'Content-Disposition: form-data; name="file"; filename="a\x01b.txt"', b"x"),), "file"),
        (((b'Content-Disposition: form-data; name="file"; filename="' + b"n" * 256 + b'"', b"x"),), "file"),
    ],
    ids=["repeated-itemid", "itemid-not-digits", "itemid-not-utf8", "control-in-filename", "long-filename"],
)
def test_bad_upload_fields_are_400s_naming_the_field(gateway, sandbox, parts, field):
    parts = [(b"Content-Disposition: form-data; " + h if not h.startswith(b"Content") else h, c) for h, c in parts]
    before = sandbox_calls(sandbox)

    response = send(
        gateway, "POST", "/api/moodle/files/upload", multipart(*parts), "multipart/form-data; boundary=b0und4ry"
    )

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
    assert field in response.json["error"]["details"]["fields"]


def test_a_well_formed_multipart_body_with_an_epilogue_is_stored(gateway):
    body = multipart(FILE_PART) + b"\r\n"

    response = send(gateway, "POST", "/api/moodle/files/upload", body, "multipart/form-data; boundary=b0und4ry")

    assert response.status_int == 201
    assert response.json["data"]["files"][0]["filesize"] == 5


def test_many_bad_user_ids_are_named_briefly(gateway, sandbox):
    values = ",".join(["9" * 200] * 1000)
    before = sandbox_calls(sandbox)

    response = send(gateway, "GET", f"/api/moodle/users/by-field?field=id&values={values}")

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
    assert response.json["error"]["details"]["fields"]["values"][0].endswith("and 980 more")
    assert len(response.body) < 2000


def test_a_control_character_in_a_user_value_is_refused(gateway, sandbox):
    before = sandbox_calls(sandbox)

    response = send(gateway, "GET", "/api/moodle/users/by-field?field=username&values=ada,bo%07b")

    assert_refused_before_moodle(gateway, sandbox, response, "validationerror", before)
