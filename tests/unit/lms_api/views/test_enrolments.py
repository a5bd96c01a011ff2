import pytest

from lms_api.errors import ApiError
from lms_api.views.enrolments import enrol
from tests.unit.mocked_moodle import answering


def test_role_names_become_the_sites_role_ids_and_every_id_is_checked_first(make_request, moodle):
    moodle.call.side_effect = answering(
        core_course_get_courses=[{"id": 2, "format": "topics"}],
        core_user_get_users_by_field=[{"id": 3}, {"id": 5}],
        enrol_manual_enrol_users=None,
    )
    body = {
        "enrolments": [{"roleid": "student", "userid": 3, "courseid": 2}, {"roleid": 4, "userid": 5, "courseid": 2}]
    }
    request = make_request("/api/moodle/enrol", "POST", json_body=body)

    data = enrol(request)

    assert data == {"enrolled": 2, "calls": 1}
    sent = moodle.call.call_args_list[-1].args
    assert sent == (
        "enrol_manual_enrol_users",
        {"enrolments": [{"roleid": 5, "userid": 3, "courseid": 2}, {"roleid": 4, "userid": 5, "courseid": 2}]},
    )
    assert request.audit_targets == {"course_ids": [2], "user_ids": [3, 5], "enrolments": 2}


def test_an_unknown_role_name_is_refused_before_moodle_is_asked(make_request, moodle):
    body = {"enrolments": [{"roleid": "wizard", "userid": 3, "courseid": 2}]}

    with pytest.raises(ApiError) as refused:
        enrol(make_request("/api/moodle/enrol", "POST", json_body=body))

    assert refused.value.code == "validationerror"
    assert "wizard" in refused.value.details["fields"]["enrolments"][0]["roleid"][0]
    moodle.call.assert_not_called()
