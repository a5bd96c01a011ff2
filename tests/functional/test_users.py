"""GET /api/moodle/users/by-field against the sandbox's seeded users."""

import pytest

from tests.support.credentials import mint
from tests.support.sandbox import sandbox_calls

TOKEN = mint("users:read")


def by_field(gateway, query):
    return gateway.get(f"/api/moodle/users/by-field?{query}", TOKEN)


def test_two_users_by_email_and_a_missing_one_named_as_spelled(gateway):
    response = by_field(gateway, "field=email&values=student1@example.com,student2@example.com,nobody@example.com")

    assert response.status_int == 200
    data = response.json["data"]
    assert [(user["id"], user["fullname"]) for user in data["users"]] == [(3, "Ada Lovelace"), (4, "Alan Turing")]
    assert data["missing"] == ["nobody@example.com"]
    assert {"id", "username", "email", "fullname", "profileimageurl"} <= set(data["users"][0])


def test_usernames_are_matched_lower_case(gateway):
    data = by_field(gateway, "field=username&values=Student1,%20teacher1%20,ghost").json["data"]

    assert [user["username"] for user in data["users"]] == ["student1", "teacher1"]
    assert data["missing"] == ["ghost"]


def test_ids_and_idnumbers(gateway):
    assert [u["id"] for u in by_field(gateway, "field=id&values=4,3,999").json["data"]["users"]] == [3, 4]
    assert by_field(gateway, "field=id&values=4,3,999").json["data"]["missing"] == [999]
    assert by_field(gateway, "field=idnumber&values=S003,X").json["data"]["missing"] == ["X"]


def test_a_deleted_users_id_is_missing_where_moodle_fails_the_whole_lookup(gateway, sandbox):
    response = by_field(gateway, "field=id&values=3,7,4")

    assert response.status_int == 200
    data = response.json["data"]
    assert ([user["id"] for user in data["users"]], data["missing"], data["unchecked"]) == ([3, 4], [7], [])


def test_no_match_is_an_empty_list_not_an_error(gateway):
    data = by_field(gateway, "field=email&values=nobody@example.com").json["data"]

    assert data == {"users": [], "missing": ["nobody@example.com"], "unchecked": []}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("field=firstname&values=Ada", "field"),
        ("field=id&values=3,abc", "values"),
        ("field=id&values=0", "values"),
        ("field=id&values=3,9007199254740992", "values"),
        (f"field=id&values={'9' * 255}", "values"),
        ("field=email", "values"),
        ("values=a", "field"),
        ("field=email&values=a,,b", "values"),
        ("field=email&values=a&values=b", "values"),
        ("field=email&values=a&role=x", "role"),
    ],
)
def test_bad_queries_are_400s_before_moodle_is_called(gateway, sandbox, query, field):
    before = sandbox_calls(sandbox)

    response = by_field(gateway, query)

    assert response.status_int == 400
    assert field in response.json["error"]["details"]["fields"]
    assert sandbox_calls(sandbox) == before


def test_the_largest_safe_id_is_asked_and_reported_missing(gateway):
    data = by_field(gateway, "field=id&values=9007199254740991,3").json["data"]

    assert data["missing"] == [9007199254740991] and [user["id"] for user in data["users"]] == [3]


def test_it_needs_users_read(gateway):
    response = gateway.get("/api/moodle/users/by-field?field=id&values=3", mint("courses:read"))

    assert response.status_int == 403
