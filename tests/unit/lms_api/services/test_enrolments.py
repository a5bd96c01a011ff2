"""The enrolments service against a mocked Moodle."""

from __future__ import annotations

import pytest

from lms_api.errors import ApiError
from lms_api.moodle.functions import MoodleFunction
from lms_api.security import Identity
from lms_api.services import enrolments, users
from tests.support.gateway import settings_for
from tests.unit.mocked_moodle import (
    ROUTE_FUNCTIONS,
    add,
    api_raised,
    course,
    form_of,
    golden,
    ids_sent,
    prime,
    raised,
    reset,
    sent,
    sent_functions,
    users_answer,
)

ENROL_WRITE = Identity("writer", frozenset({"enrol:write"}))
ADMIN = Identity("admin", frozenset({"admin"}))
DEFAULTS = settings_for("https://moodle.test", "token")
KNOWN = "known roles: manager (1), editingteacher (3), teacher (4), student (5)"


def roles(wanted, settings=DEFAULTS, identity=ENROL_WRITE):
    return [enrolment["roleid"] for enrolment in enrolments.resolve_roles(wanted, settings, identity)]


def role_refused(wanted, settings=DEFAULTS, identity=ENROL_WRITE):
    with pytest.raises(ApiError) as info:
        enrolments.resolve_roles(wanted, settings, identity)
    return info.value


def test_role_names_become_ids_and_unknown_names_are_a_400_naming_the_index():
    wanted = [{"roleid": "student", "userid": 3, "courseid": 2}, {"roleid": 4, "userid": 4, "courseid": 2}]

    assert roles(wanted) == [5, 4]
    assert roles(wanted, settings_for("https://moodle.test", "token", MOODLE_ROLE_IDS="student=9")) == [9, 4]
    error = role_refused([wanted[1], {**wanted[0], "roleid": "learner"}])
    assert (error.status, error.code) == (400, "validationerror")
    assert error.details == {"fields": {"enrolments": {1: {"roleid": [f"Unknown role 'learner'; {KNOWN}"]}}}}


@pytest.mark.parametrize(
    ("role", "message"),
    [
        ("Student", f"Unknown role 'Student' (did you mean 'student'?); {KNOWN}"),
        (" TEACHER ", f"Unknown role ' TEACHER ' (did you mean 'teacher'?); {KNOWN}"),
        ("students", f"Unknown role 'students'; {KNOWN}"),
        (99, f"Unknown role 99; {KNOWN}"),
        (2, f"Unknown role 2; {KNOWN}"),  # Moodle's coursecreator: a role the gateway does not know
    ],
)
def test_a_role_the_gateway_does_not_know_is_a_400_listing_the_known_ones(role, message):
    error = role_refused([{"roleid": role, "userid": 3, "courseid": 2}])

    assert (error.status, error.code) == (400, "validationerror")
    assert error.details["fields"]["enrolments"][0]["roleid"] == [message]


@pytest.mark.parametrize("role", ["manager", 1])
def test_a_known_role_beyond_the_assignable_ones_needs_the_admin_scope(role):
    wanted = [{"roleid": "student", "userid": 3, "courseid": 2}, {"roleid": role, "userid": 4, "courseid": 2}]

    error = role_refused(wanted)

    assert (error.status, error.code) == (403, "forbidden")
    assert error.details == {"required_scope": "admin", "roles": ["manager"]}
    assert error.message == (
        "Assigning the role manager needs the admin scope; enrol:write may assign student, teacher, editingteacher"
    )
    assert roles(wanted, identity=ADMIN) == [5, 1]


def test_the_assignable_roles_are_a_setting_and_a_renamed_role_keeps_its_permission():
    settings = settings_for(
        "https://moodle.test", "token", MOODLE_ROLE_IDS="learner=5", MOODLE_ASSIGNABLE_ROLES="student"
    )

    assert roles([{"roleid": "learner", "userid": 3, "courseid": 2}], settings) == [5]
    error = role_refused([{"roleid": "teacher", "userid": 3, "courseid": 2}], settings)
    assert (error.status, error.details["roles"]) == (403, ["teacher"])


def test_unknown_roles_are_told_before_roles_beyond_the_callers_scope():
    wanted = [{"roleid": "manager", "userid": 3, "courseid": 2}, {"roleid": "boss", "userid": 4, "courseid": 2}]

    assert role_refused(wanted).status == 400


def to_enrol(count, courseid=2):
    return [{"roleid": 5, "userid": 100 + n, "courseid": courseid} for n in range(count)]


def enrol(moodle, wanted, identity=ENROL_WRITE):
    return enrolments.enrol(moodle, wanted, DEFAULTS, identity)


def test_enrolment_sends_the_role_ids_the_roles_given_resolve_to(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(100, 101))
    add(rsps, MoodleFunction.ENROL_USERS, body="null")
    wanted = [{"roleid": "student", "userid": 100, "courseid": 2}, {"roleid": 4, "userid": 101, "courseid": 2}]

    assert enrol(moodle, wanted) == {"enrolled": 2, "calls": 1}

    form = sent(rsps)
    assert (form["enrolments[0][roleid]"], form["enrolments[1][roleid]"]) == ("5", "4")
    assert wanted[0]["roleid"] == "student"  # the caller's list is left as it was


@pytest.mark.parametrize(
    ("role", "status", "code"), [("wizard", 400, "validationerror"), ("manager", 403, "forbidden")]
)
def test_a_role_refused_is_refused_before_moodle_is_asked_anything(moodle, rsps, role, status, code):
    calls_before = len(rsps.calls)

    error = api_raised(enrol, moodle, [{"roleid": role, "userid": enrolments.GUEST_USER_ID, "courseid": 2}])

    assert (error.status, error.code) == (status, code)  # before the guest, too
    assert len(rsps.calls) == calls_before


def test_a_role_beyond_enrol_write_is_enrolled_for_an_admin(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(100))
    add(rsps, MoodleFunction.ENROL_USERS, body="null")

    assert enrol(moodle, [{"roleid": "manager", "userid": 100, "courseid": 2}], ADMIN)["enrolled"] == 1
    assert sent(rsps)["enrolments[0][roleid]"] == "1"


def test_missing_courses_are_a_404_before_anything_is_enrolled(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(100))

    with pytest.raises(ApiError) as info:
        enrol(moodle, to_enrol(1) + to_enrol(1, courseid=77) + to_enrol(1, courseid=78))

    assert (info.value.status, info.value.code, info.value.details) == (
        404, "coursenotfound", {"missing_courses": [77, 78]})  # fmt: skip
    assert info.value.message == "No courses with ids 77, 78 in Moodle; nothing was enrolled"
    assert ids_sent(rsps, 1) == ["2", "77", "78"]
    assert MoodleFunction.ENROL_USERS not in sent_functions(rsps)


def test_missing_users_are_a_404_naming_them_and_nothing_is_enrolled(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(100))

    error = api_raised(enrol, moodle, [*to_enrol(1), {"roleid": 5, "userid": 999999, "courseid": 2}])

    assert (error.status, error.code, error.details) == (404, "usernotfound", {"missing_users": [999999]})
    assert error.message == "No user with id 999999 in Moodle; nothing was enrolled"
    form = sent(rsps)
    assert (form["field"], form["values[0]"], form["values[1]"]) == ("id", "100", "999999")
    assert MoodleFunction.ENROL_USERS not in sent_functions(rsps)


def test_missing_courses_and_users_are_named_together(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=[])

    error = api_raised(enrol, moodle, to_enrol(2, courseid=77))

    assert (error.status, error.code) == (404, "coursenotfound")
    assert error.details == {"missing_courses": [77], "missing_users": [100, 101]}
    assert error.message == "No course with id 77 and no users with ids 100, 101 in Moodle; nothing was enrolled"
    assert MoodleFunction.ENROL_USERS not in sent_functions(rsps)


def test_enrolment_is_not_checked_when_the_enrol_function_is_missing(make_client, rsps):
    moodle = make_client()
    prime(moodle, rsps, [f for f in ROUTE_FUNCTIONS if f != MoodleFunction.ENROL_USERS])

    error = raised(enrol, moodle, to_enrol(1))

    assert (error.status, error.details["function"]) == (501, MoodleFunction.ENROL_USERS)
    assert sent_functions(rsps) == ["core_webservice_get_site_info"]


def test_a_user_deleted_after_the_check_is_moodles_php_error_without_its_path(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(100))
    add(rsps, MoodleFunction.ENROL_USERS, body=golden("error_enrol_nonexistent_user"))

    error = raised(enrol, moodle, to_enrol(1))

    assert (error.status, error.code) == (502, "moodleexception")
    assert "PHP TypeError" in error.message and "/var/www" not in error.message
    assert (error.details["applied"], error.details["not_applied"]) == ([], [0])


def test_a_batch_is_split_to_fit_max_input_vars(make_client, rsps):
    moodle = make_client(max_input_vars=12)  # three enrolments of three fields per call
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(*range(100, 107)))
    add(rsps, MoodleFunction.ENROL_USERS, body="null")

    assert enrol(moodle, to_enrol(7)) == {"enrolled": 7, "calls": 3}
    calls = [
        dict(form_of(c.request))
        for c in rsps.calls
        if dict(form_of(c.request))["wsfunction"] == MoodleFunction.ENROL_USERS
    ]
    assert [sum(key.endswith("[userid]") for key in form) for form in calls] == [3, 3, 1]
    assert [form["enrolments[0][userid]"] for form in calls] == ["100", "103", "106"]


def test_a_later_call_failing_lists_what_was_applied_and_what_was_not(make_client, rsps):
    moodle = make_client(max_input_vars=12)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(*range(100, 107)))
    add(rsps, MoodleFunction.ENROL_USERS, body="null")
    add(rsps, MoodleFunction.ENROL_USERS, json={"exception": "dml_missing_record_exception", "errorcode": "invaliduser",
                                            "message": "Invalid user"})  # fmt: skip

    error = raised(enrol, moodle, to_enrol(7))

    assert (error.status, error.code) == (404, "invaliduser")
    assert error.details["applied"] == [0, 1, 2]
    assert error.details["not_applied"] == [3, 4, 5, 6]
    assert error.details["outcome"] == "partial"
    assert (error.details["calls"], error.details["failed_call"]) == (3, 2)
    assert sent_functions(rsps).count(MoodleFunction.ENROL_USERS) == 2  # the third call is not made


def test_a_call_with_an_unknown_outcome_is_reported_as_unknown_and_not_resent(make_client, rsps):
    moodle = make_client(max_input_vars=12)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(*range(100, 107)))
    add(rsps, MoodleFunction.ENROL_USERS, body="null")
    add(rsps, MoodleFunction.ENROL_USERS, body=reset())

    error = raised(enrol, moodle, to_enrol(7))

    assert error.status == 504
    assert error.details["outcome"] == "unknown"
    assert "applied" not in error.__cause__.details  # the client's error is left as it was raised
    assert (error.details["applied"], error.details["unknown"], error.details["not_applied"]) == (
        [0, 1, 2], [3, 4, 5], [6])  # fmt: skip
    assert sent_functions(rsps).count(MoodleFunction.ENROL_USERS) == 2


def test_the_guest_is_refused_before_any_call_as_moodle_5_would_enrol_it(moodle, rsps):
    calls_before = len(rsps.calls)
    wanted = [*to_enrol(1), {"roleid": 5, "userid": enrolments.GUEST_USER_ID, "courseid": 2}]

    error = api_raised(enrol, moodle, wanted)

    assert (error.status, error.code, error.details) == (400, "guestsarenotallowed", {"enrolments": [1]})
    assert error.message == "The guest user (id 1) cannot be enrolled; nothing was enrolled"
    assert len(rsps.calls) == calls_before


def test_deleted_users_are_missing_users_named_as_deleted_and_nothing_is_enrolled(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    deleted_answer = {"exception": "dml_missing_record_exception", "errorcode": "invalidrecordunknown", "message": "x"}
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=deleted_answer)  # the batch [100, 7]
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=users_answer(100))  # [100]
    add(rsps, MoodleFunction.GET_USERS_BY_FIELD, json=deleted_answer)  # [7]

    error = api_raised(enrol, moodle, [*to_enrol(1), {"roleid": 5, "userid": 7, "courseid": 2}])

    assert (error.status, error.code) == (404, "usernotfound")
    assert error.details == {"missing_users": [7], "deleted_users": [7]}
    assert error.message == "No user with id 7 in Moodle (user with id 7 deleted); nothing was enrolled"
    assert MoodleFunction.ENROL_USERS not in sent_functions(rsps)


def test_users_left_unchecked_past_the_bound_refuse_the_batch_naming_them(moodle, rsps, monkeypatch):
    monkeypatch.setattr(users, "MAX_DELETED_SEARCH_CALLS", 0)
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])
    add(
        rsps,
        MoodleFunction.GET_USERS_BY_FIELD,
        json={"exception": "x", "errorcode": "invalidrecordunknown", "message": "x"},
    )

    error = api_raised(enrol, moodle, to_enrol(2))

    assert (error.status, error.code, error.details) == (404, "usernotfound", {"unchecked_users": [100, 101]})
    assert error.message == (
        "Users with ids 100, 101 could not be checked: send them in another request; nothing was enrolled"
    )
    assert MoodleFunction.ENROL_USERS not in sent_functions(rsps)


def enrolled_answer(*pairs):
    return [{"id": user_id, "roles": [{"roleid": role_id, "shortname": "x"}]} for user_id, role_id in pairs]


def test_an_enrolment_in_place_is_answered_as_enrolled_without_enrolling(moodle, rsps):
    add(rsps, MoodleFunction.GET_ENROLLED_USERS, json=enrolled_answer((100, 5), (101, 5), (7, 4)))

    wanted = [{"roleid": "student", "userid": 100, "courseid": 2}, {"roleid": 5, "userid": 101, "courseid": 2}]
    assert enrolments.enrolled_already(moodle, wanted, DEFAULTS, ENROL_WRITE) == {"enrolled": 2, "calls": 1}
    assert sent(rsps)["courseid"] == "2"
    assert MoodleFunction.ENROL_USERS not in sent_functions(rsps)


@pytest.mark.parametrize(
    "held",
    [
        [(100, 5)],  # user 101 is not enrolled
        [(100, 5), (101, 4)],  # user 101 holds another role
    ],
)
def test_an_enrolment_not_all_in_place_is_left_to_be_sent_again(moodle, rsps, held):
    add(rsps, MoodleFunction.GET_ENROLLED_USERS, json=enrolled_answer(*held))

    wanted = [{"roleid": 5, "userid": 100, "courseid": 2}, {"roleid": 5, "userid": 101, "courseid": 2}]
    assert enrolments.enrolled_already(moodle, wanted, DEFAULTS, ENROL_WRITE) is None


def test_a_course_gone_leaves_the_enrolment_to_be_sent_and_refused(moodle, rsps):
    missing = {"exception": "dml_missing_record_exception", "errorcode": "invalidrecordunknown", "message": "x"}
    add(rsps, MoodleFunction.GET_ENROLLED_USERS, json=missing)

    assert enrolments.enrolled_already(moodle, to_enrol(1), DEFAULTS, ENROL_WRITE) is None
