"""The enrolments service against a mocked Moodle."""

from __future__ import annotations

import pytest

from lms_api.errors import ApiError
from lms_api.services import courses, enrolments, users
from lms_api.settings import DEFAULT_ROLE_IDS
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


def test_role_names_become_ids_and_unknown_names_are_a_400_naming_the_index():
    wanted = [{"roleid": "student", "userid": 3, "courseid": 2}, {"roleid": 4, "userid": 4, "courseid": 2}]

    assert [e["roleid"] for e in enrolments.resolve_roles(wanted, DEFAULT_ROLE_IDS)] == [5, 4]
    assert enrolments.resolve_roles(wanted, {**DEFAULT_ROLE_IDS, "student": 9})[0]["roleid"] == 9
    with pytest.raises(ApiError) as info:
        enrolments.resolve_roles([wanted[1], {**wanted[0], "roleid": "learner"}], DEFAULT_ROLE_IDS)
    assert info.value.status == 400
    assert "learner" in info.value.details["fields"]["enrolments"][1]["roleid"][0]


def to_enrol(count, courseid=2):
    return [{"roleid": 5, "userid": 100 + n, "courseid": courseid} for n in range(count)]


def test_missing_courses_are_a_404_before_anything_is_enrolled(moodle, rsps):
    add(rsps, courses.GET_COURSES, json=[course(2)])
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(100))

    with pytest.raises(ApiError) as info:
        enrolments.enrol(moodle, to_enrol(1) + to_enrol(1, courseid=77) + to_enrol(1, courseid=78))

    assert (info.value.status, info.value.code, info.value.details) == (
        404, "coursenotfound", {"missing_courses": [77, 78]})  # fmt: skip
    assert info.value.message == "No courses with ids 77, 78 in Moodle; nothing was enrolled"
    assert ids_sent(rsps, 1) == ["2", "77", "78"]
    assert enrolments.ENROL_USERS not in sent_functions(rsps)


def test_missing_users_are_a_404_naming_them_and_nothing_is_enrolled(moodle, rsps):
    add(rsps, courses.GET_COURSES, json=[course(2)])
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(100))

    error = api_raised(enrolments.enrol, moodle, [*to_enrol(1), {"roleid": 5, "userid": 999999, "courseid": 2}])

    assert (error.status, error.code, error.details) == (404, "usernotfound", {"missing_users": [999999]})
    assert error.message == "No user with id 999999 in Moodle; nothing was enrolled"
    form = sent(rsps)
    assert (form["field"], form["values[0]"], form["values[1]"]) == ("id", "100", "999999")
    assert enrolments.ENROL_USERS not in sent_functions(rsps)


def test_missing_courses_and_users_are_named_together(moodle, rsps):
    add(rsps, courses.GET_COURSES, json=[])
    add(rsps, users.GET_USERS_BY_FIELD, json=[])

    error = api_raised(enrolments.enrol, moodle, to_enrol(2, courseid=77))

    assert (error.status, error.code) == (404, "coursenotfound")
    assert error.details == {"missing_courses": [77], "missing_users": [100, 101]}
    assert error.message == "No course with id 77 and no users with ids 100, 101 in Moodle; nothing was enrolled"
    assert enrolments.ENROL_USERS not in sent_functions(rsps)


def test_enrolment_is_not_checked_when_the_enrol_function_is_missing(make_client, rsps):
    moodle = make_client()
    prime(moodle, rsps, [f for f in ROUTE_FUNCTIONS if f != enrolments.ENROL_USERS])

    error = raised(enrolments.enrol, moodle, to_enrol(1))

    assert (error.status, error.details["function"]) == (501, enrolments.ENROL_USERS)
    assert sent_functions(rsps) == ["core_webservice_get_site_info"]


def test_a_user_deleted_after_the_check_is_moodles_php_error_without_its_path(moodle, rsps):
    add(rsps, courses.GET_COURSES, json=[course(2)])
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(100))
    add(rsps, enrolments.ENROL_USERS, body=golden("error_enrol_nonexistent_user"))

    error = raised(enrolments.enrol, moodle, to_enrol(1))

    assert (error.status, error.code) == (502, "moodleexception")
    assert "PHP TypeError" in error.message and "/var/www" not in error.message
    assert (error.details["applied"], error.details["not_applied"]) == ([], [0])


def test_a_batch_is_split_to_fit_max_input_vars(make_client, rsps):
    moodle = make_client(max_input_vars=12)  # three enrolments of three fields per call
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, courses.GET_COURSES, json=[course(2)])
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(*range(100, 107)))
    add(rsps, enrolments.ENROL_USERS, body="null")

    assert enrolments.enrol(moodle, to_enrol(7)) == {"enrolled": 7, "calls": 3}
    calls = [
        dict(form_of(c.request)) for c in rsps.calls if dict(form_of(c.request))["wsfunction"] == enrolments.ENROL_USERS
    ]
    assert [sum(key.endswith("[userid]") for key in form) for form in calls] == [3, 3, 1]
    assert [form["enrolments[0][userid]"] for form in calls] == ["100", "103", "106"]


def test_a_later_call_failing_lists_what_was_applied_and_what_was_not(make_client, rsps):
    moodle = make_client(max_input_vars=12)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, courses.GET_COURSES, json=[course(2)])
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(*range(100, 107)))
    add(rsps, enrolments.ENROL_USERS, body="null")
    add(rsps, enrolments.ENROL_USERS, json={"exception": "dml_missing_record_exception", "errorcode": "invaliduser",
                                            "message": "Invalid user"})  # fmt: skip

    error = raised(enrolments.enrol, moodle, to_enrol(7))

    assert (error.status, error.code) == (404, "invaliduser")
    assert error.details["applied"] == [0, 1, 2]
    assert error.details["not_applied"] == [3, 4, 5, 6]
    assert (error.details["calls"], error.details["failed_call"]) == (3, 2)
    assert sent_functions(rsps).count(enrolments.ENROL_USERS) == 2  # the third call is not made


def test_a_call_with_an_unknown_outcome_is_reported_as_unknown_and_not_resent(make_client, rsps):
    moodle = make_client(max_input_vars=12)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, courses.GET_COURSES, json=[course(2)])
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(*range(100, 107)))
    add(rsps, enrolments.ENROL_USERS, body="null")
    add(rsps, enrolments.ENROL_USERS, body=reset())

    error = raised(enrolments.enrol, moodle, to_enrol(7))

    assert error.status == 504
    assert error.details["outcome"] == "unknown"
    assert (error.details["applied"], error.details["unknown"], error.details["not_applied"]) == (
        [0, 1, 2], [3, 4, 5], [6])  # fmt: skip
    assert sent_functions(rsps).count(enrolments.ENROL_USERS) == 2
