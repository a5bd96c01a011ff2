"""Notification routes: the caller's own by default, another user's only with admin."""

import pytest

from tests.support.credentials import mint
from tests.support.sandbox import sandbox_calls

ADMIN_USER, STUDENT = 2, 3


def token(moodle_userid=None, scope="notifications:read"):
    return mint(scope, moodle_userid=moodle_userid)


def test_the_callers_own_notifications_newest_first(gateway):
    response = gateway.get("/api/moodle/notifications", token(ADMIN_USER))

    assert response.status_int == 200
    data = response.json["data"]
    assert (data["userid"], data["unreadcount"], data["limit"], data["offset"]) == (ADMIN_USER, 2, 20, 0)
    assert [n["subject"] for n in data["notifications"]] == ["New resource in PY101", "Grade released for PY101"]
    assert data["notifications"][0]["read"] is False and data["notifications"][0]["useridto"] == ADMIN_USER


def test_limit_and_offset_page_through_them(gateway):
    first = gateway.get("/api/moodle/notifications?limit=1", token(ADMIN_USER)).json["data"]
    second = gateway.get("/api/moodle/notifications?limit=1&offset=1", token(ADMIN_USER)).json["data"]

    assert [n["id"] for n in first["notifications"]] == [2]
    assert [n["id"] for n in second["notifications"]] == [1]


def test_the_unread_count_is_an_object(gateway):
    assert gateway.get("/api/moodle/notifications/unread-count", token(ADMIN_USER)).json["data"] == {
        "userid": ADMIN_USER,
        "count": 2,
    }
    assert gateway.get("/api/moodle/notifications/unread-count", token(STUDENT)).json["data"]["count"] == 1


@pytest.mark.parametrize("path", ["/api/moodle/notifications", "/api/moodle/notifications/unread-count"])
@pytest.mark.parametrize("moodle_userid", [STUDENT, None])
def test_another_users_notifications_need_admin_and_moodle_is_not_asked(gateway, sandbox, path, moodle_userid):
    before = sandbox_calls(sandbox)

    response = gateway.get(f"{path}?userid={ADMIN_USER}", token(moodle_userid))

    assert response.status_int == 403
    assert response.json["error"]["details"] == {"required_scope": "admin"}
    assert sandbox_calls(sandbox) == before


@pytest.mark.parametrize("path", ["/api/moodle/notifications", "/api/moodle/notifications/unread-count"])
def test_admin_reads_anyones(gateway, path):
    response = gateway.get(f"{path}?userid={STUDENT}", token(None, "notifications:read admin"))

    assert response.status_int == 200
    assert response.json["data"]["userid"] == STUDENT


@pytest.mark.parametrize("path", ["/api/moodle/notifications", "/api/moodle/notifications/unread-count"])
def test_no_userid_and_no_claim_is_a_400(gateway, path):
    response = gateway.get(path, token(None))

    assert response.status_int == 400
    assert "userid" in response.json["error"]["details"]["fields"]


@pytest.mark.parametrize("path", ["/api/moodle/notifications", "/api/moodle/notifications/unread-count"])
def test_notifications_of_a_user_moodle_does_not_have_are_a_404_naming_the_user(gateway, path):
    response = gateway.get(f"{path}?userid=999999", token(None, "notifications:read admin"))

    assert response.status_int == 404, response.text
    error = response.json["error"]
    assert (error["code"], error["details"]) == ("usernotfound", {"missing_users": [999999]})


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=101", "limit"), ("limit=0", "limit"), ("offset=-1", "offset"), ("userid=abc", "userid"), ("x=1", "x")],
)
def test_bad_queries_are_400s(gateway, sandbox, query, field):
    before = sandbox_calls(sandbox)

    response = gateway.get(f"/api/moodle/notifications?{query}", token(ADMIN_USER))

    assert response.status_int == 400
    assert field in response.json["error"]["details"]["fields"]
    assert sandbox_calls(sandbox) == before


def test_the_routes_need_notifications_read(gateway):
    response = gateway.get("/api/moodle/notifications/unread-count", mint("courses:read", moodle_userid=2))

    assert response.status_int == 403
    assert response.json["error"]["details"]["required_scope"] == "notifications:read"
