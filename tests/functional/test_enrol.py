"""POST /api/moodle/enrol: role names, course pre-check, max_input_vars splitting and the account of a failure."""

import uuid

import pytest

from tests.support.credentials import mint
from tests.support.sandbox import moodle_call, queue_fault, sandbox_calls

TOKEN = mint("enrol:write")
ENROL = "enrol_manual_enrol_users"


def new_course(sandbox):
    shortname = f"E{uuid.uuid4().hex[:8]}"
    created = moodle_call(
        sandbox,
        "core_course_create_courses",
        courses=[{"fullname": "Enrol test", "shortname": shortname, "categoryid": 1}],
    )
    return created[0]["id"]


def enrolled(sandbox, course_id):
    users = moodle_call(sandbox, "core_enrol_get_enrolled_users", courseid=course_id)
    return {user["id"]: [role["shortname"] for role in user["roles"]] for user in users}


def test_enrol_by_role_name(gateway, sandbox):
    course_id = new_course(sandbox)
    body = {
        "enrolments": [
            {"roleid": "student", "userid": 3, "courseid": course_id},
            {"roleid": "editingteacher", "userid": 5, "courseid": course_id, "timestart": 0, "timeend": 0},
        ]
    }

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 200, response.text
    assert response.json["data"] == {"enrolled": 2, "calls": 1}
    assert enrolled(sandbox, course_id) == {3: ["student"], 5: ["editingteacher"]}


def test_role_ids_can_be_renamed_by_moodle_role_ids(make_gateway, sandbox):
    course_id = new_course(sandbox)
    gateway = make_gateway(MOODLE_ROLE_IDS="learner=5")

    body = {"enrolments": [{"roleid": "learner", "userid": 4, "courseid": course_id}]}

    assert gateway.post("/api/moodle/enrol", body, TOKEN).status_int == 200
    assert enrolled(sandbox, course_id) == {4: ["student"]}


def test_missing_courses_are_a_404_naming_them_and_nothing_is_enrolled(gateway, sandbox):
    course_id = new_course(sandbox)
    before = sandbox_calls(sandbox).get(ENROL, 0)
    body = {
        "enrolments": [
            {"roleid": 5, "userid": 3, "courseid": course_id},
            {"roleid": 5, "userid": 4, "courseid": 99998},
            {"roleid": 5, "userid": 4, "courseid": 99999},
        ]
    }

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 404
    assert response.json["error"]["code"] == "coursenotfound"
    assert response.json["error"]["details"]["missing_courses"] == [99998, 99999]
    assert sandbox_calls(sandbox).get(ENROL, 0) == before
    assert enrolled(sandbox, course_id) == {}


def test_a_missing_user_is_a_404_naming_it_and_nothing_is_enrolled(gateway, sandbox):
    course_id = new_course(sandbox)
    before = sandbox_calls(sandbox).get(ENROL, 0)
    body = {
        "enrolments": [
            {"roleid": 5, "userid": 3, "courseid": course_id},
            {"roleid": 5, "userid": 999999, "courseid": course_id},
        ]
    }

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 404
    error = response.json["error"]
    assert (error["code"], error["details"]) == ("usernotfound", {"missing_users": [999999]})
    assert error["message"] == "No user with id 999999 in Moodle; nothing was enrolled"
    assert sandbox_calls(sandbox).get(ENROL, 0) == before
    assert enrolled(sandbox, course_id) == {}


def test_missing_courses_and_users_are_named_in_one_404(gateway, sandbox):
    before = sandbox_calls(sandbox).get(ENROL, 0)
    body = {
        "enrolments": [{"roleid": 5, "userid": 999999, "courseid": 99999}, {"roleid": 5, "userid": 3, "courseid": 2}]
    }

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 404
    error = response.json["error"]
    assert (error["code"], error["details"]) == (
        "coursenotfound",
        {"missing_courses": [99999], "missing_users": [999999]},
    )
    assert sandbox_calls(sandbox).get(ENROL, 0) == before


def test_moodle_answers_a_missing_user_with_a_php_type_error(sandbox):
    """Why users are checked first: Moodle's own answer is a PHP TypeError naming a file on its server."""
    answer = moodle_call(sandbox, ENROL, enrolments=[{"roleid": 5, "userid": 999999, "courseid": 2}])

    assert answer["exception"] == "TypeError" and "errorcode" not in answer


def test_a_known_role_moodle_cannot_assign_in_a_course_is_moodles_403(make_gateway, sandbox):
    course_id = new_course(sandbox)
    gateway = make_gateway(MOODLE_ROLE_IDS="user=7", MOODLE_ASSIGNABLE_ROLES="student,user")

    response = gateway.post(
        "/api/moodle/enrol", {"enrolments": [{"roleid": "user", "userid": 3, "courseid": course_id}]}, TOKEN
    )

    assert response.status_int == 403
    assert response.json["error"]["code"] == "wsusercannotassign"


KNOWN_ROLES = "known roles: manager (1), editingteacher (3), teacher (4), student (5)"


@pytest.mark.parametrize(
    ("role", "message"),
    [
        (99, f"Unknown role 99; {KNOWN_ROLES}"),  # Moodle itself: 403 "You don't have the permission..."
        ("Student", f"Unknown role 'Student' (did you mean 'student'?); {KNOWN_ROLES}"),
        ("students", f"Unknown role 'students'; {KNOWN_ROLES}"),
    ],
)
def test_a_role_the_gateway_does_not_know_is_a_400_listing_the_known_ones_before_moodle(
    gateway, sandbox, role, message
):
    course_id = new_course(sandbox)
    before = sandbox_calls(sandbox).get(ENROL, 0)

    response = gateway.post(
        "/api/moodle/enrol", {"enrolments": [{"roleid": role, "userid": 3, "courseid": course_id}]}, TOKEN
    )

    assert response.status_int == 400
    assert response.json["error"]["code"] == "validationerror"
    assert response.json["error"]["details"]["fields"]["enrolments"] == {"0": {"roleid": [message]}}
    assert sandbox_calls(sandbox).get(ENROL, 0) == before


@pytest.mark.parametrize("role", ["manager", 1])
def test_manager_needs_the_admin_scope_beside_enrol_write(gateway, sandbox, role):
    course_id = new_course(sandbox)
    body = {"enrolments": [{"roleid": role, "userid": 4, "courseid": course_id}]}

    refused = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert refused.status_int == 403
    assert refused.json["error"]["code"] == "forbidden"
    assert refused.json["error"]["details"] == {"required_scope": "admin", "roles": ["manager"]}
    assert enrolled(sandbox, course_id) == {}
    assert gateway.post("/api/moodle/enrol", body, mint("enrol:write admin")).status_int == 200
    assert enrolled(sandbox, course_id) == {4: ["manager"]}


def test_the_sandbox_enrols_the_guest_as_moodle_5_does_and_the_gateway_refuses_it(gateway, sandbox):
    course_id = new_course(sandbox)
    assert moodle_call(sandbox, ENROL, enrolments=[{"roleid": 5, "userid": 1, "courseid": course_id}]) is None
    assert enrolled(sandbox, course_id) == {1: ["student"]}
    other = new_course(sandbox)
    before = sandbox_calls(sandbox).get(ENROL, 0)
    body = {
        "enrolments": [
            {"roleid": "student", "userid": 3, "courseid": other},
            {"roleid": 5, "userid": 1, "courseid": other},
        ]
    }

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 400
    assert response.json["error"]["code"] == "guestsarenotallowed"
    assert response.json["error"]["details"] == {"enrolments": [1]}
    assert enrolled(sandbox, other) == {}
    assert sandbox_calls(sandbox).get(ENROL, 0) == before


def test_a_deleted_user_is_a_404_naming_it_as_deleted_where_moodle_fails_on_it(gateway, sandbox):
    course_id = new_course(sandbox)
    direct = moodle_call(sandbox, ENROL, enrolments=[{"roleid": 5, "userid": 7, "courseid": course_id}])
    assert direct["errorcode"] == "codingerror"  # role_assign(): "User ID does not exist or is deleted!"
    lookup = moodle_call(sandbox, "core_user_get_users_by_field", field="id", values=[3, 7])
    assert lookup["errorcode"] == "invalidrecordunknown"  # the deleted user's context is gone
    before = sandbox_calls(sandbox).get(ENROL, 0)
    body = {"enrolments": [{"roleid": 5, "userid": user, "courseid": course_id} for user in (3, 7, 99999)]}

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 404
    error = response.json["error"]
    assert error["code"] == "usernotfound"
    assert error["details"] == {"missing_users": [7, 99999], "deleted_users": [7]}
    assert error["message"] == "No users with ids 7, 99999 in Moodle (user with id 7 deleted); nothing was enrolled"
    assert enrolled(sandbox, course_id) == {}
    assert sandbox_calls(sandbox).get(ENROL, 0) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "enrolments"),
        ({"enrolments": []}, "enrolments"),
        ({"enrolments": [{"roleid": "learner", "userid": 3, "courseid": 2}]}, "enrolments"),
        ({"enrolments": [{"roleid": 5, "userid": "3", "courseid": 2}]}, "enrolments"),
        ({"enrolments": [{"roleid": 5, "userid": 3}]}, "enrolments"),
        ({"enrolments": [{"roleid": 0, "userid": 3, "courseid": 2}]}, "enrolments"),
        ({"enrolments": [{"roleid": 5, "userid": 3, "courseid": 2, "timestart": 9, "timeend": 1}]}, "enrolments"),
        ({"enrolments": [{"roleid": 5, "userid": 3, "courseid": 2, "suspend": "yes"}]}, "enrolments"),
        ({"enrolments": [{"roleid": 5, "userid": 3, "courseid": 2, "group": 1}]}, "enrolments"),
        ({"enrolments": {"roleid": 5}}, "enrolments"),
        ({"enrolments": [], "notify": True}, "notify"),
    ],
)
def test_bad_bodies_are_400s_before_moodle_is_called(gateway, sandbox, body, field):
    before = sandbox_calls(sandbox)

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 400
    assert field in response.json["error"]["details"]["fields"]
    assert sandbox_calls(sandbox) == before


def test_an_unknown_role_name_names_the_enrolment_and_the_known_roles(gateway):
    body = {
        "enrolments": [{"roleid": 5, "userid": 3, "courseid": 2}, {"roleid": "learner", "userid": 4, "courseid": 2}]
    }

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    message = response.json["error"]["details"]["fields"]["enrolments"]["1"]["roleid"][0]
    assert "learner" in message and "student (5)" in message


# -- max_input_vars ---------------------------------------------------------------------------------

STUDENTS = [2, 3, 4, 5, 6]


def test_a_batch_too_big_for_one_call_is_split_and_all_are_enrolled(make_sandbox, make_gateway):
    small = make_sandbox(max_input_vars=12)  # 3 reserved + three enrolments of three fields
    gateway = make_gateway(base_url=small.url, token=small.site.token, MOODLE_MAX_INPUT_VARS="12")
    course_id = new_course(small)
    body = {"enrolments": [{"roleid": "student", "userid": user, "courseid": course_id} for user in STUDENTS]}

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.json["data"] == {"enrolled": 5, "calls": 2}
    assert sorted(enrolled(small, course_id)) == STUDENTS


def test_without_splitting_php_would_drop_enrolments_silently(make_sandbox, make_gateway):
    """Why the split matters: told the server takes 5000 fields, the gateway sends one call and Moodle loses some."""
    small = make_sandbox(max_input_vars=12)
    gateway = make_gateway(base_url=small.url, token=small.site.token, MOODLE_MAX_INPUT_VARS="5000")
    course_id = new_course(small)
    body = {"enrolments": [{"roleid": "student", "userid": user, "courseid": course_id} for user in STUDENTS]}

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 200
    assert len(enrolled(small, course_id)) < len(STUDENTS)


def test_when_a_later_call_fails_the_error_says_what_was_applied(make_sandbox, make_gateway):
    small = make_sandbox(max_input_vars=12)
    gateway = make_gateway(
        base_url=small.url, token=small.site.token, MOODLE_MAX_INPUT_VARS="12", MOODLE_ROLE_IDS="user=7"
    )
    course_id = new_course(small)
    roles = [5, 5, 5, 7, 5]  # role 7 cannot be assigned in a course: the second call fails
    pairs = zip(roles, STUDENTS, strict=True)
    body = {"enrolments": [{"roleid": role, "userid": user, "courseid": course_id} for role, user in pairs]}

    response = gateway.post("/api/moodle/enrol", body, mint("enrol:write admin"))

    assert response.status_int == 403
    details = response.json["error"]["details"]
    assert (details["applied"], details["not_applied"], details["calls"], details["failed_call"]) == (
        [0, 1, 2], [3, 4], 2, 2)  # fmt: skip
    assert sorted(enrolled(small, course_id)) == STUDENTS[:3]


def test_a_connection_reset_in_a_later_call_reports_its_enrolments_as_unknown(make_sandbox, make_gateway):
    small = make_sandbox(max_input_vars=12)
    gateway = make_gateway(base_url=small.url, token=small.site.token, MOODLE_MAX_INPUT_VARS="12")
    course_id = new_course(small)
    body = {"enrolments": [{"roleid": 5, "userid": user, "courseid": course_id} for user in STUDENTS]}
    gateway.get("/api/moodle/courses/2", mint("courses:read"))  # warm the function list
    queue_fault(small, kind="reset", function=ENROL, times=1)
    sent_before = sandbox_calls(small).get(ENROL, 0)

    response = gateway.post("/api/moodle/enrol", body, TOKEN)

    assert response.status_int == 504
    details = response.json["error"]["details"]
    assert details["outcome"] == "unknown"
    assert (details["applied"], details["unknown"], details["not_applied"]) == ([], [0, 1, 2], [3, 4])
    assert sandbox_calls(small)[ENROL] == sent_before + 1  # a write is never sent twice
