"""POST and PATCH /api/moodle/users against a sandbox of their own, and what a retry with an Idempotency-Key does
after Moodle left a write's outcome unknown."""

import time
import uuid

import pytest

from lms_api.schemas.users import COUNTRIES
from moodle_sandbox.functions.users import _COUNTRIES as SANDBOX_COUNTRIES
from moodle_sandbox.registry import FUNCTIONS, SandboxFunction
from moodle_sandbox.server import start_sandbox
from tests.support.credentials import mint
from tests.support.sandbox import moodle_call, queue_fault, sandbox_calls

USERS = "/api/moodle/users"
TOKEN = mint("users:write users:read")
CREATE = "core_user_create_users"
UPDATE = "core_user_update_users"
LOOKUP = "core_user_get_users_by_field"


@pytest.fixture(scope="module")
def site():
    server = start_sandbox()
    yield server
    server.stop()


@pytest.fixture
def gateway(make_gateway, site):
    return make_gateway(site.url, site.site.token)


def fresh(count=1, **fields):
    """New users no other test uses."""
    stem = uuid.uuid4().hex[:8]
    return [
        {"username": f"u{stem}{n}", "firstname": "Ada", "lastname": f"L{n}", "email": f"u{stem}{n}@example.com",
         "password": "Secret#123", **fields}
        for n in range(count)
    ]  # fmt: skip


def on_site(site, field, values):
    return moodle_call(site, LOOKUP, field=field, values=values)


def calls(site, function):
    return sandbox_calls(site).get(function, 0)


def test_users_are_created_in_request_order_and_found_at_once_past_the_cache(gateway, site):
    wanted = fresh(3)
    usernames = [user["username"] for user in wanted]
    before = gateway.get(f"{USERS}/by-field?field=username&values={','.join(usernames)}", TOKEN)
    assert before.json["data"]["missing"] == usernames  # now cached as missing

    response = gateway.post(USERS, {"users": wanted}, TOKEN)

    assert response.status_int == 201
    created = response.json["data"]["created"]
    assert [(user["index"], user["username"]) for user in created] == list(enumerate(usernames))
    assert [user["id"] for user in on_site(site, "username", usernames)] == [user["id"] for user in created]
    after = gateway.get(f"{USERS}/by-field?field=username&values={','.join(usernames)}", TOKEN)
    assert [user["id"] for user in after.json["data"]["users"]] == [user["id"] for user in created]


def test_each_reason_is_named_per_user_and_nobody_is_created(gateway, site):
    good, upper, weak, taken = fresh(4)
    upper["username"] = upper["username"].upper()
    weak["password"] = "password"
    taken["email"] = "student1@example.com"
    sent_before = calls(site, CREATE)

    response = gateway.post(USERS, {"users": [good, upper, weak, taken, dict(good)]}, TOKEN)

    assert (response.status_int, response.json["error"]["code"]) == (400, "invalidusers")
    named = {
        user["index"]: [reason["code"] for reason in user["reasons"]]
        for user in response.json["error"]["details"]["users"]
    }
    assert named == {
        1: ["usernameinvalid"],
        2: ["passwordweak"],
        3: ["emailtaken"],
        4: ["usernameduplicate", "emailduplicate"],
    }
    assert calls(site, CREATE) == sent_before
    assert on_site(site, "username", [good["username"]]) == []


def test_only_taken_usernames_are_a_409(gateway):
    (user,) = fresh(1, username="student1")

    response = gateway.post(USERS, {"users": [user]}, TOKEN)

    assert (response.status_int, response.json["error"]["code"]) == (409, "invalidusers")
    assert response.json["error"]["details"]["users"][0]["reasons"][0]["code"] == "usernametaken"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"users": []}, "users"),
        ({"users": "ada"}, "users"),
        ({"users": [{"username": "ada"}]}, "users"),
        ({"users": [{**fresh()[0], "createpassword": True}]}, "users"),
        ({"users": [{**fresh()[0], "country": "Norway"}]}, "users"),
        ({"users": [{**fresh()[0], "country": "XX"}]}, "users"),  # Moodle would clear it, silently
        ({"users": [{**fresh()[0], "country": "no"}]}, "users"),
        ({"users": [{**fresh()[0], "timezone": "Mars/Olympus"}]}, "users"),
        ({"users": [{**fresh()[0], "firstname": "<b>Ada</b>"}]}, "users"),
        ({"users": [{**fresh()[0], "firstname": "Ada <3"}]}, "users"),  # strip_tags() would cut it: Moodle refuses
        ({"users": [{**fresh()[0], "lastname": "Lovelace<"}]}, "users"),
        ({"users": [{**fresh()[0], "lastname": "Byron <\u00a0Lovelace"}]}, "users"),  # PHP's blanks are ASCII
        ({"users": [{**fresh()[0], "id": 3}]}, "users"),
        ({"users": fresh(5001)}, "users"),
    ],
)
def test_bad_bodies_are_a_400_naming_the_field(gateway, body, field):
    response = gateway.post(USERS, body, TOKEN)

    assert (response.status_int, response.json["error"]["code"]) == (400, "validationerror")
    assert field in response.json["error"]["details"]["fields"]


def test_a_batch_over_max_input_vars_is_split(make_gateway, make_sandbox):
    small = make_sandbox(max_input_vars=40)
    gateway = make_gateway(small.url, small.site.token, MOODLE_MAX_INPUT_VARS="40")
    wanted = fresh(15)

    response = gateway.post(USERS, {"users": wanted}, TOKEN)

    assert response.status_int == 201
    assert len({user["id"] for user in response.json["data"]["created"]}) == 15
    assert calls(small, CREATE) == 3  # five fields a user: seven users per call of 37 variables


def test_users_are_updated_and_the_answer_names_them(gateway, site):
    created = gateway.post(USERS, {"users": fresh(2)}, TOKEN).json["data"]["created"]
    ids = [user["id"] for user in created]

    response = gateway.patch(
        USERS, {"users": [{"id": ids[0], "city": "Oslo"}, {"id": ids[1], "suspended": True}]}, TOKEN
    )

    assert (response.status_int, response.json["data"]) == (200, {"updated": ids, "failed": []})
    found = {user["id"]: user for user in on_site(site, "id", ids)}
    assert found[ids[1]]["suspended"] is True


def test_an_update_of_a_missing_user_is_a_404_and_nothing_is_written(gateway, site):
    (created,) = gateway.post(USERS, {"users": fresh(1)}, TOKEN).json["data"]["created"]
    sent_before = calls(site, UPDATE)

    response = gateway.patch(USERS, {"users": [{"id": created["id"], "city": "X"}, {"id": 999999, "city": "Y"}]}, TOKEN)

    assert (response.status_int, response.json["error"]["code"]) == (404, "usernotfound")
    assert response.json["error"]["details"] == {"missing_users": [999999]}
    assert calls(site, UPDATE) == sent_before


def test_an_update_to_a_taken_username_or_a_weak_password_is_refused_before_moodle_is_called(gateway, site):
    (created,) = gateway.post(USERS, {"users": fresh(1)}, TOKEN).json["data"]["created"]
    sent_before = calls(site, UPDATE)

    response = gateway.patch(
        USERS, {"users": [{"id": created["id"], "username": "student1"}, {"id": 4, "password": "abc"}]}, TOKEN
    )

    assert (response.status_int, response.json["error"]["code"]) == (400, "invalidusers")
    reasons = [user["reasons"][0]["code"] for user in response.json["error"]["details"]["users"]]
    assert reasons == ["usernametaken", "passwordweak"]
    assert calls(site, UPDATE) == sent_before


def test_an_update_body_that_changes_nothing_is_a_400(gateway):
    response = gateway.patch(USERS, {"users": [{"id": 3}]}, TOKEN)

    assert (response.status_int, response.json["error"]["code"]) == (400, "validationerror")


# -- a retry after Moodle left the outcome unknown ------------------------------------------------------------------


def keyed(value):
    return {"headers": {"Idempotency-Key": value}}


def test_a_create_applied_though_its_answer_was_lost_is_answered_from_moodle_on_retry(make_gateway, site):
    gateway = make_gateway(site.url, site.site.token, MOODLE_TIMEOUT_MS="300")
    wanted, key = fresh(2), uuid.uuid4().hex
    queue_fault(site, kind="delay", seconds=0.6, function=CREATE)  # Moodle creates them after the gateway gave up

    first = gateway.post(USERS, {"users": wanted}, TOKEN, **keyed(key))
    assert (first.status_int, first.json["error"]["details"]["outcome"]) == (504, "unknown")
    time.sleep(0.8)
    sent = calls(site, CREATE)

    retry = gateway.post(USERS, {"users": wanted}, TOKEN, **keyed(key))

    assert retry.status_int == 201
    ids = [user["id"] for user in on_site(site, "username", [user["username"] for user in wanted])]
    assert [user["id"] for user in retry.json["data"]["created"]] == ids
    assert calls(site, CREATE) == sent  # found in Moodle, not sent again
    again = gateway.post(USERS, {"users": wanted}, TOKEN, **keyed(key))
    assert (again.status_int, again.headers["Idempotent-Replayed"]) == (201, "true")
    assert again.json["data"] == retry.json["data"]


def test_a_create_that_never_reached_moodle_is_sent_on_retry(gateway, site):
    wanted, key = fresh(2), uuid.uuid4().hex
    queue_fault(site, kind="reset", function=CREATE)  # dropped after the request was sent: unknown to the gateway

    first = gateway.post(USERS, {"users": wanted}, TOKEN, **keyed(key))
    assert (first.status_int, first.json["error"]["details"]["outcome"]) == (504, "unknown")
    assert on_site(site, "username", [wanted[0]["username"]]) == []

    retry = gateway.post(USERS, {"users": wanted}, TOKEN, **keyed(key))

    assert retry.status_int == 201
    assert len(on_site(site, "username", [user["username"] for user in wanted])) == 2


def test_an_enrolment_in_place_after_an_unknown_outcome_is_answered_without_enrolling_again(make_gateway, site):
    gateway = make_gateway(site.url, site.site.token, MOODLE_TIMEOUT_MS="300")
    (user,) = gateway.post(USERS, {"users": fresh(1)}, TOKEN).json["data"]["created"]
    body, key, token = (
        {"enrolments": [{"roleid": "student", "userid": user["id"], "courseid": 2}]},
        uuid.uuid4().hex,
        mint("enrol:write"),
    )
    queue_fault(site, kind="delay", seconds=0.6, function="enrol_manual_enrol_users")

    first = gateway.post("/api/moodle/enrol", body, token, **keyed(key))
    assert first.status_int == 504
    time.sleep(0.8)
    sent = calls(site, "enrol_manual_enrol_users")

    retry = gateway.post("/api/moodle/enrol", body, token, **keyed(key))

    assert (retry.status_int, retry.json["data"]) == (200, {"enrolled": 1, "calls": 1})
    assert calls(site, "enrol_manual_enrol_users") == sent


def test_a_course_created_though_its_answer_was_lost_is_found_by_its_short_name_on_retry(make_gateway, site):
    gateway = make_gateway(site.url, site.site.token, MOODLE_TIMEOUT_MS="300")
    shortname = f"LOST{uuid.uuid4().hex[:8]}"
    body, key, token = (
        {"fullname": "Lost", "shortname": shortname, "categoryid": 1},
        uuid.uuid4().hex,
        mint("courses:write"),
    )
    queue_fault(site, kind="delay", seconds=0.6, function="core_course_create_courses")

    assert gateway.post("/api/moodle/courses", body, token, **keyed(key)).status_int == 504
    time.sleep(0.8)
    sent = calls(site, "core_course_create_courses")

    retry = gateway.post("/api/moodle/courses", body, token, **keyed(key))

    assert retry.status_int == 201
    assert retry.json["data"]["shortname"] == shortname
    assert retry.headers["Location"].endswith(f"/api/moodle/courses/{retry.json['data']['id']}")
    assert calls(site, "core_course_create_courses") == sent


def answering(function, answer):
    """``function`` of the sandbox run as Moodle runs it, then answered by ``answer(number, params, answered)``
    (``number`` from 1): Moodle applied the call, whatever its answer says."""
    original = FUNCTIONS[function]
    sent = []

    def run(site, params):
        sent.append([user.get("id", user.get("username")) for user in params["users"]])
        return answer(len(sent), params, original.run(site, params))

    return SandboxFunction(function, original.params, run), sent


def test_a_retry_after_an_unknown_outcome_runs_as_a_job_when_asked_and_names_every_user(
    make_gateway, site, monkeypatch
):
    gateway = make_gateway(site.url, site.site.token, MOODLE_MAX_INPUT_VARS="13")
    token, key, wanted = mint("users:write users:read jobs:read"), uuid.uuid4().hex, fresh(5)

    def lost_second(number, params, answered):
        return {"users": "?"} if number == 2 else answered  # created, then answered in the wrong shape

    function, sent = answering(CREATE, lost_second)
    monkeypatch.setitem(FUNCTIONS, CREATE, function)
    first = gateway.post(USERS, {"users": wanted}, token, **keyed(key))
    details = first.json["error"]["details"]
    assert (first.status_int, details["outcome"]) == (502, "unknown")
    assert len(details["created"]) == len(sent[0]) and details["not_attempted"]  # a call of each kind
    before = len(sent)

    retry = gateway.post(USERS, {"users": wanted}, token, headers={"Idempotency-Key": key, "Prefer": "respond-async"})

    assert retry.status_int == 202, retry.text
    assert retry.headers["Preference-Applied"] == "respond-async"
    job = retry.json["data"]
    assert (job["kind"], job["progress"]["total"]) == ("users.create", 5)
    path, deadline = retry.headers["Location"], time.monotonic() + 10
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)  # polled within the caller's rate budget
        job = gateway.get(path, token, status=200).json["data"]
    assert job["state"] == "succeeded", job
    on = {user["username"]: user["id"] for user in on_site(site, "username", [user["username"] for user in wanted])}
    assert job["result"]["created"] == [
        {"index": index, "id": on[user["username"]], "username": user["username"]} for index, user in enumerate(wanted)
    ]
    resent = [username for users in sent[before:] for username in users]
    assert resent == [wanted[index]["username"] for index in details["not_attempted"]]  # only those never sent
    again = gateway.post(USERS, {"users": wanted}, token, **keyed(key))
    assert (again.status_int, again.headers["Location"]) == (202, path)


def test_an_update_answered_in_the_wrong_shape_after_moodle_applied_it_names_its_users_unknown(
    make_gateway, site, monkeypatch
):
    gateway = make_gateway(site.url, site.site.token, MOODLE_MAX_INPUT_VARS="13")
    ids = [user["id"] for user in gateway.post(USERS, {"users": fresh(5)}, TOKEN).json["data"]["created"]]
    function, sent = answering(UPDATE, lambda number, params, answered: {"warnings": "?"} if number == 2 else answered)
    monkeypatch.setitem(FUNCTIONS, UPDATE, function)
    changes = [
        {"id": user_id, "city": "Lyon", "firstname": "Bea", "lastname": "M", "institution": "U"} for user_id in ids
    ]

    response = gateway.patch(USERS, {"users": changes}, TOKEN)

    error = response.json["error"]
    assert (response.status_int, error["code"], error["details"]["outcome"]) == (502, "badresponse", "unknown")
    assert len(sent) == 2 and len(sent[0]) + len(sent[1]) < len(ids)
    assert error["details"]["updated"] == sent[0] and error["details"]["unknown"] == sent[1]
    assert error["details"]["not_attempted"] == ids[len(sent[0]) + len(sent[1]) :]
    assert (error["details"]["failed"], error["details"]["failed_call"]) == ([], 2)
    cities = {user["id"]: user.get("city") for user in on_site(site, "id", ids)}
    assert [user_id for user_id in ids if cities[user_id] == "Lyon"] == sent[0] + sent[1]  # applied: the answer lied


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_write_through_one_replica_drops_the_users_entries_another_replica_reads(
    make_gateway, site, empty_redis, method
):
    reader = make_gateway(site.url, site.site.token, REDIS_URL=empty_redis)
    writer = make_gateway(site.url, site.site.token, REDIS_URL=empty_redis)
    (user,) = fresh(1)
    if method == "PATCH":
        user["id"] = writer.post(USERS, {"users": [user]}, TOKEN).json["data"]["created"][0]["id"]
    query = f"{USERS}/by-field?field=username&values={user['username']}"
    before = reader.get(query, TOKEN)
    assert before.headers["Cache-Status"].endswith("stored")
    assert reader.get(query, TOKEN).headers["Cache-Status"].startswith("lms_api; hit")

    if method == "POST":
        assert writer.post(USERS, {"users": [user]}, TOKEN).status_int == 201
    else:
        assert writer.patch(USERS, {"users": [{"id": user["id"], "firstname": "Grace"}]}, TOKEN).status_int == 200

    after = reader.get(query, TOKEN)
    assert not after.headers["Cache-Status"].startswith("lms_api; hit")
    (found,) = after.json["data"]["users"]
    assert found["firstname"] == ("Grace" if method == "PATCH" else "Ada")


def test_the_countries_taken_are_the_ones_moodle_keeps():
    assert set(COUNTRIES) == SANDBOX_COUNTRIES


def test_a_name_with_a_lone_less_than_sign_followed_by_a_blank_is_kept(gateway, site):
    (user,) = fresh(1, lastname="Byron < Lovelace")

    response = gateway.post(USERS, {"users": [user]}, TOKEN)

    assert response.status_int == 201
    assert on_site(site, "username", [user["username"]])[0]["lastname"] == "Byron < Lovelace"


def test_an_administrator_is_changed_only_with_the_admin_scope(gateway, site):
    sent_before = calls(site, UPDATE)

    refused = gateway.patch(USERS, {"users": [{"id": 2, "email": "someone@evil.example"}]}, TOKEN)

    assert (refused.status_int, refused.json["error"]["details"]) == (403, {"required_scope": "admin", "users": [2]})
    assert calls(site, UPDATE) == sent_before
    allowed = gateway.patch(USERS, {"users": [{"id": 2, "city": "Perth"}]}, mint("users:write admin"))
    assert allowed.status_int == 200


def test_passwords_reach_no_log_line_nor_answer_even_with_moodle_debug(make_gateway, site):
    gateway = make_gateway(site.url, site.site.token, MOODLE_DEBUG="true")
    created, weak, taken = fresh(3)
    created["password"], weak["password"] = "Canary#Created7", "canaryweak"
    taken["username"], taken["password"] = "student1", "Canary#Taken7"

    answers = [
        gateway.post(USERS, {"users": [created]}, TOKEN),
        gateway.post(USERS, {"users": [weak, taken]}, TOKEN),
        gateway.patch(USERS, {"users": [{"id": 4, "password": "canaryweak2"}]}, TOKEN),
    ]

    assert [answer.status_int for answer in answers] == [201, 400, 400]
    logged = gateway.log_stream.getvalue()
    assert "moodle.call" in logged  # the debug lines were written
    for text in [logged, *(answer.text for answer in answers)]:
        assert not [word for word in ("Canary#Created7", "canaryweak", "Canary#Taken7") if word in text]
