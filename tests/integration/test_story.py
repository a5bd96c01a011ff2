"""The whole story over real HTTP: production.ini in front of a standalone sandbox, each step and its unhappy twin."""

import uuid

import pytest
import requests

from tests.support.credentials import mint
from tests.support.processes import clean_env, wait_for_port
from tests.support.servers import free_port

SECRET = "story-secret-" + "s" * 40
EVERYTHING = "courses:read courses:write users:read enrol:write notifications:read files:write"


@pytest.fixture
def api(spawn, standalone_sandbox):
    gateway_port = free_port()
    env = clean_env(
        MOODLE_BASE_URL=standalone_sandbox("story-token"),
        MOODLE_TOKEN="story-token",
        JWT_SECRET=SECRET,
        MOODLE_MAX_UPLOAD_MB="1",
    )
    gateway = spawn("pserve", "production.ini", f"http_port={gateway_port}", env=env)
    wait_for_port(gateway_port, gateway)
    return Api(f"http://127.0.0.1:{gateway_port}/api/moodle")


class Api:
    def __init__(self, base):
        self.base = base
        self.session = requests.Session()

    def __call__(self, method, path, scope=EVERYTHING, moodle_userid=3, **kwargs):
        token = mint(scope, secret=SECRET, moodle_userid=moodle_userid)
        response = self.session.request(
            method, self.base + path, headers={"Authorization": f"Bearer {token}"}, timeout=20, **kwargs
        )
        assert response.headers["Content-Type"].startswith("application/json")
        return response.status_code, response.json()


def test_the_whole_story_and_its_unhappy_twins(api):
    marker = uuid.uuid4().hex[:8]
    shortname = f"STORY{marker}"

    # Create a course; the same short name again is a conflict.
    status, body = api(
        "POST", "/courses", json={"fullname": f"Story {marker}", "shortname": shortname, "categoryid": 2}
    )
    assert status == 201, body
    course_id = body["data"]["id"]
    status, body = api("POST", "/courses", json={"fullname": "Again", "shortname": shortname, "categoryid": 2})
    assert (status, body["error"]["code"]) == (409, "shortnametaken")

    # Find it by search and by category; a page size over 200 is refused.
    status, body = api("GET", f"/courses?search={marker}")
    assert status == 200 and [c["id"] for c in body["data"]["courses"]] == [course_id]
    status, body = api("GET", "/courses?category=2&perpage=200")
    assert course_id in [c["id"] for c in body["data"]["courses"]]
    status, body = api("GET", "/courses?category=2&perpage=500")
    assert (status, list(body["error"]["details"]["fields"])) == (400, ["perpage"])

    # Update it; a course that does not exist is a 404.
    status, body = api("PATCH", f"/courses/{course_id}", json={"fullname": f"Story {marker} (updated)"})
    assert (status, body["data"]["fullname"]) == (200, f"Story {marker} (updated)")
    status, body = api("PATCH", "/courses/99999", json={"fullname": "Nobody's"})
    assert (status, body["error"]["code"]) == (404, "coursenotfound")

    # Find two users by email; a field Moodle cannot search is refused before Moodle sees it.
    status, body = api("GET", "/users/by-field?field=email&values=student1@example.com,student2@example.com")
    assert status == 200 and [u["id"] for u in body["data"]["users"]] == [3, 4] and body["data"]["missing"] == []
    user_ids = [u["id"] for u in body["data"]["users"]]
    status, body = api("GET", "/users/by-field?field=firstname&values=Ada")
    assert (status, list(body["error"]["details"]["fields"])) == (400, ["field"])

    # Enrol them by role name; an unknown role name and a missing course are refused, nothing enrolled.
    enrolments = [{"roleid": "student", "userid": user_id, "courseid": course_id} for user_id in user_ids]
    status, body = api("POST", "/enrol", json={"enrolments": enrolments})
    assert (status, body["data"]) == (200, {"enrolled": 2, "calls": 1})
    status, body = api("POST", "/enrol", json={"enrolments": [{**enrolments[0], "roleid": "wizard"}]})
    assert status == 400 and "wizard" in str(body["error"]["details"])
    status, body = api("POST", "/enrol", json={"enrolments": [{**enrolments[0], "courseid": 99999}]})
    assert (status, body["error"]["details"]["missing_courses"]) == (404, [99999])

    # Upload a file; one over MOODLE_MAX_UPLOAD_MB is a 413.
    status, body = api("POST", "/files/upload", files={"file": ("syllabus.txt", b"Week 1: variables\n")})
    assert status == 201, body
    itemid = body["data"]["itemid"]
    assert body["data"]["files"][0]["filename"] == "syllabus.txt"
    status, body = api("POST", "/files/upload", files={"file": ("big.bin", b"x" * (1024 * 1024 + 1))})
    assert (status, body["error"]["code"]) == (413, "filetoolarge")

    # Attach it to the course; attaching to a course that does not exist is a 404.
    status, body = api("POST", "/files/attach", json={"courseid": course_id, "draftitemid": itemid, "name": "Syllabus"})
    assert status == 201 and isinstance(body["data"]["cmid"], int)
    status, body = api("POST", "/files/attach", json={"courseid": 99999, "draftitemid": itemid, "name": "Syllabus"})
    assert status == 404

    # Read the caller's notifications and unread count; another user's need admin, and no claim means no default.
    status, body = api("GET", "/notifications?limit=10")
    assert status == 200 and body["data"]["userid"] == 3 and body["data"]["unreadcount"] == 1
    status, body = api("GET", "/notifications?userid=2")
    assert (status, body["error"]["details"]) == (403, {"required_scope": "admin"})
    status, body = api("GET", "/notifications/unread-count")
    assert (status, body["data"]) == (200, {"userid": 3, "count": 1})
    status, body = api("GET", "/notifications/unread-count", moodle_userid=None)
    assert (status, list(body["error"]["details"]["fields"])) == (400, ["userid"])
