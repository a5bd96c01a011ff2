import pytest
from marshmallow import ValidationError

from lms_api.errors import ApiError
from tests.unit.lms_api.views.support import answering, functions_asked, view_answer

PY101 = {"id": 2, "shortname": "PY101", "fullname": "Intro to Python", "categoryid": 1, "format": "topics"}
COURSE = "api.moodle.course"


def test_a_search_is_paged_by_moodle_and_read_back_by_id_through_the_read_cache(make_request, moodle):
    answering(
        moodle,
        core_course_search_courses={"total": 7, "courses": [{"id": 2}]},
        core_course_get_courses=[{**PY101, "secretfield": "x"}],
    )
    request = make_request("/api/moodle/courses?search=%20python%20&page=1&perpage=1", route="api.moodle.courses")

    data = view_answer(request)

    assert data["total"] == 7 and (data["page"], data["perpage"]) == (1, 1)
    assert data["courses"][0]["shortname"] == "PY101" and "secretfield" not in data["courses"][0]
    assert data["courses"][0]["summary"] is None  # a field Moodle did not give is null
    assert functions_asked(moodle.answer) == [
        ("core_course_search_courses", {"criterianame": "search", "criteriavalue": "python", "page": 1, "perpage": 1}),
        ("core_course_get_courses", {"options": {"ids": [2]}}),
    ]
    moodle.call.assert_not_called()


def test_a_new_course_answers_201_with_its_location_and_audit_targets(make_request, moodle):
    answering(moodle, core_course_create_courses=[{"id": 9, "shortname": "DS101"}])
    request = make_request(
        "/api/moodle/courses",
        "POST",
        json_body={"fullname": "Data", "shortname": "DS101", "categoryid": 2},
        route="api.moodle.courses",
    )

    data = view_answer(request)

    assert data == {"id": 9, "shortname": "DS101"}
    assert request.answered.status_int == 201
    assert request.answered.location == "/api/moodle/courses/9"
    assert request.audit_targets == {"categoryid": 2, "shortname": "DS101", "course_id": 9}


def test_one_course_by_its_path_id_and_again_from_the_cache(make_request, moodle):
    answering(moodle, core_course_get_courses_by_field={"courses": [PY101], "warnings": []})

    first = view_answer(make_request("/api/moodle/courses/2", matchdict={"course_id": "2"}, route=COURSE))
    again = view_answer(make_request("/api/moodle/courses/2", matchdict={"course_id": "2"}, route=COURSE))

    assert first["id"] == 2 and again == first
    moodle.answer.assert_called_once_with("core_course_get_courses_by_field", {"field": "id", "value": "2"})


def test_a_move_checks_the_course_and_the_category_before_writing(make_request, moodle):
    answering(
        moodle,
        core_course_get_courses_by_field={"courses": [PY101], "warnings": []},
        core_course_get_categories=[],
        core_course_update_courses={"warnings": []},
    )
    request = make_request(
        "/api/moodle/courses/2", "PATCH", json_body={"categoryid": 99}, matchdict={"course_id": "2"}, route=COURSE
    )

    with pytest.raises(ApiError) as refused:
        view_answer(request)

    assert (refused.value.status, refused.value.code) == (404, "categorynotfound")
    asked = [made.args[0] for made in moodle.mock_calls if made[0] in ("answer", "call")]  # in the order made
    assert asked == ["core_course_get_courses_by_field", "core_course_get_categories"]
    assert request.audit_targets == {"course_id": 2, "fields": ["categoryid"]}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [("/api/moodle/courses/2", {}, "body"), ("/api/moodle/courses/x", {"fullname": "F"}, "course_id")],
)
def test_bad_updates_never_reach_moodle(make_request, moodle, path, body, field):
    course_id = path.rsplit("/", 1)[1]
    request = make_request(path, "PATCH", json_body=body, matchdict={"course_id": course_id}, route=COURSE)

    with pytest.raises(ValidationError) as refused:
        view_answer(request)

    assert field in refused.value.messages
    moodle.call.assert_not_called()
    moodle.answer.assert_not_called()
