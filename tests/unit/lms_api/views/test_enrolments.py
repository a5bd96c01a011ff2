import pytest

from lms_api.errors import ApiError
from tests.unit.lms_api.views.support import answering, view_answer

ENROL = "api.moodle.enrol"


def test_role_names_become_the_sites_role_ids_and_every_id_is_checked_first(make_request, moodle):
    answering(
        moodle,
        core_course_get_courses=[{"id": 2, "format": "topics"}],
        core_user_get_users_by_field=[{"id": 3}, {"id": 5}],
        enrol_manual_enrol_users=None,
    )
    body = {
        "enrolments": [{"roleid": "student", "userid": 3, "courseid": 2}, {"roleid": 4, "userid": 5, "courseid": 2}]
    }
    request = make_request("/api/moodle/enrol", "POST", json_body=body, route=ENROL)

    data = view_answer(request)

    assert data == {"enrolled": 2, "calls": 1}
    moodle.call.assert_called_once_with(
        "enrol_manual_enrol_users",
        {"enrolments": [{"roleid": 5, "userid": 3, "courseid": 2}, {"roleid": 4, "userid": 5, "courseid": 2}]},
    )
    assert request.audit_targets == {"course_ids": [2], "user_ids": [3, 5], "enrolments": 2}


def test_an_unknown_role_name_is_refused_before_moodle_is_asked(make_request, moodle):
    body = {"enrolments": [{"roleid": "wizard", "userid": 3, "courseid": 2}]}

    with pytest.raises(ApiError) as refused:
        view_answer(make_request("/api/moodle/enrol", "POST", json_body=body, route=ENROL))

    assert refused.value.code == "validationerror"
    assert "wizard" in refused.value.details["fields"]["enrolments"][0]["roleid"][0]
    moodle.call.assert_not_called()
    moodle.answer.assert_not_called()
