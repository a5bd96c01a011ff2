"""The courses service against a mocked Moodle."""

from __future__ import annotations

import pytest

from lms_api.errors import ApiError
from lms_api.moodle.client import MoodleClient
from lms_api.moodle.functions import MoodleFunction
from lms_api.services import courses
from tests.unit.mocked_moodle import (
    BASE_URL,
    ROUTE_FUNCTIONS,
    SITE_COURSE,
    TOKEN,
    add,
    api_raised,
    by_field_answer,
    course,
    golden,
    ids_sent,
    prime,
    raised,
    reset,
    sent,
    sent_functions,
)

FORMATS = ("topics", "weeks")  # what the site offers (MOODLE_COURSE_FORMATS)


def test_listing_without_filters_drops_the_site_course_and_pages_locally(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, json=[SITE_COURSE, *(course(n) for n in range(2, 9))])

    listing = courses.list_courses(moodle, page=1, perpage=3)

    assert [c["id"] for c in listing["courses"]] == [5, 6, 7]
    assert (listing["total"], listing["page"], listing["perpage"]) == (7, 1, 3)
    assert set(sent(rsps)) == {"wstoken", "wsfunction", "moodlewsrestformat"}  # no options: all courses


def test_listing_a_category_uses_courses_by_field(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(3, 2), course(4, 2)))

    listing = courses.list_courses(moodle, category=2, page=0, perpage=1)

    assert sent(rsps)["field"] == "category" and sent(rsps)["value"] == "2"
    assert [c["id"] for c in listing["courses"]] == [3]
    assert listing["total"] == 2


def test_a_search_pages_in_moodle_then_reads_the_page_by_id_in_moodles_order(moodle, rsps):
    public = [{"id": 7, "categoryid": 1}, {"id": 3, "categoryid": 2}]
    add(rsps, MoodleFunction.SEARCH_COURSES, json={"total": 12, "courses": public, "warnings": []})
    add(rsps, MoodleFunction.GET_COURSES, json=[course(3, 2, startdate=5), course(7)])

    listing = courses.list_courses(moodle, search="python", page=2, perpage=2)

    search = sent(rsps, -2)
    assert (search["criterianame"], search["criteriavalue"], search["page"], search["perpage"]) == (
        "search", "python", "2", "2")  # fmt: skip
    assert sent(rsps)["wsfunction"] == MoodleFunction.GET_COURSES and ids_sent(rsps) == ["7", "3"]
    assert [c["id"] for c in listing["courses"]] == [7, 3]
    assert listing["courses"][1]["startdate"] == 5
    assert listing["total"] == 12


def test_search_and_category_search_everything_then_keep_the_category(moodle, rsps):
    public = [{"id": n, "categoryid": 2 if n % 2 else 1} for n in range(2, 12)]
    add(rsps, MoodleFunction.SEARCH_COURSES, json={"total": 10, "courses": public, "warnings": []})
    add(rsps, MoodleFunction.GET_COURSES, json=[course(7, 2), course(9, 2)])

    listing = courses.list_courses(moodle, search="x", category=2, page=1, perpage=2)

    assert (sent(rsps, -2)["page"], sent(rsps, -2)["perpage"]) == ("0", "0")
    assert ids_sent(rsps) == ["7", "9"]
    assert listing["total"] == 5
    assert [c["id"] for c in listing["courses"]] == [7, 9]


def test_courses_by_ids_leaves_out_missing_ids_and_the_front_page_in_the_order_asked(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES, body=golden("core_course_get_courses__ids_missing"))

    assert [c["id"] for c in courses.courses_by_ids(moodle, [987654, 2, 2])] == [2]
    assert ids_sent(rsps) == ["987654", "2"]

    add(rsps, MoodleFunction.GET_COURSES, json=[SITE_COURSE, course(3), course(5)])
    assert [c["id"] for c in courses.courses_by_ids(moodle, [5, 1, 3])] == [5, 3]


def test_a_course_deleted_between_the_search_and_its_read_back_is_left_out_of_the_page(moodle, rsps):
    public = [{"id": 2, "categoryid": 1}, {"id": 6, "categoryid": 1}]
    add(rsps, MoodleFunction.SEARCH_COURSES, json={"total": 2, "courses": public, "warnings": []})
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])

    listing = courses.list_courses(moodle, search="python")

    assert [c["id"] for c in listing["courses"]] == [2]
    assert MoodleFunction.GET_COURSES_BY_FIELD not in sent_functions(rsps)


def test_courses_by_ids_splits_to_fit_max_input_vars_and_asks_nothing_for_no_ids(make_client, rsps):
    moodle = make_client(max_input_vars=5)  # 5 - 3 reserved = two ids per call
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    add(rsps, MoodleFunction.GET_COURSES, json=[course(2)])

    assert courses.courses_by_ids(moodle, []) == []
    assert [c["id"] for c in courses.courses_by_ids(moodle, [2, 3, 4, 5, 6])] == [2]
    assert [ids_sent(rsps, index) for index in (1, 2, 3)] == [["2", "3"], ["4", "5"], ["6"]]


def test_a_search_without_matches_makes_no_second_call(moodle, rsps):
    add(rsps, MoodleFunction.SEARCH_COURSES, json={"total": 0, "courses": [], "warnings": []})

    assert courses.list_courses(moodle, search="nothing")["courses"] == []
    assert sent_functions(rsps)[-1] == MoodleFunction.SEARCH_COURSES


@pytest.mark.parametrize(
    "answer",
    [{"courses": []}, {"total": "3", "courses": []}, [], {"total": 1, "courses": [{"name": "no id"}]}],
)
def test_a_search_answer_of_another_shape_is_a_502(moodle, rsps, answer):
    add(rsps, MoodleFunction.SEARCH_COURSES, json=answer)

    error = raised(lambda: courses.list_courses(moodle, search="x"))

    assert (error.status, error.code) == (502, "badresponse")


def test_a_missing_course_is_a_404_naming_it(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer())

    with pytest.raises(ApiError) as info:
        courses.get_course(moodle, 99)

    assert (info.value.status, info.value.code, info.value.details) == (
        404,
        "coursenotfound",
        {"missing_courses": [99]},
    )


def test_create_sends_one_course_and_answers_its_id(moodle, rsps):
    add(rsps, MoodleFunction.CREATE_COURSES, json=[{"id": 6, "shortname": "NEW1"}])

    created = courses.create_course(
        moodle, {"fullname": "New", "shortname": "NEW1", "categoryid": 1, "visible": False}, FORMATS
    )

    assert created == {"id": 6, "shortname": "NEW1"}
    form = sent(rsps)
    assert (form["courses[0][shortname]"], form["courses[0][visible]"]) == ("NEW1", "0")


def test_update_sends_only_the_given_fields_and_reads_the_course_back(moodle, rsps):
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": []})
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(2, fullname="Renamed")))

    updated = courses.update_course(moodle, 2, {"fullname": "Renamed"}, FORMATS)

    update = sent(rsps, -2)
    assert {key for key in update if key.startswith("courses")} == {"courses[0][id]", "courses[0][fullname]"}
    assert updated["fullname"] == "Renamed"


@pytest.mark.parametrize(
    ("warningcode", "message", "status", "code"),
    [
        ("invalidrecordunknown", "Can't find data record in database.", 404, "coursenotfound"),
        ("invalidrecord", "Can't find data record in database table course. (SELECT id\n[array (\n)])", 404,
         "coursenotfound"),
        ("shortnametaken", "Short name is already used for another course (PY101)", 409, "shortnametaken"),
        ("nopermissions", "Sorry, but you do not currently have permissions to do that.", 403, "nopermissions"),
        ("errorinvalidparam", "Invalid parameter", 400, "errorinvalidparam"),
        ("invalidcourse", "Invalid course", 404, "coursenotfound"),
    ],
)  # fmt: skip
def test_update_warnings_are_errors_without_another_call(moodle, rsps, warningcode, message, status, code):
    warning = {"item": "course", "itemid": 2, "warningcode": warningcode, "message": message}
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": [warning]})

    with pytest.raises(ApiError) as info:
        courses.update_course(moodle, 2, {"shortname": "PY101"}, FORMATS)

    assert (info.value.status, info.value.code) == (status, code)
    assert "SELECT" not in info.value.message
    assert sent_functions(rsps)[1:] == [MoodleFunction.UPDATE_COURSES]


def test_the_golden_warning_for_a_missing_course_is_a_404_naming_it(moodle, rsps):
    add(rsps, MoodleFunction.UPDATE_COURSES, body=golden("error_update_nonexistent_course"))

    error = api_raised(courses.update_course, moodle, 99999, {"fullname": "Nobody"}, FORMATS)

    assert (error.status, error.code, error.details) == (404, "coursenotfound", {"missing_courses": [99999]})
    assert error.message == "No course with id 99999 in Moodle"


def test_a_warning_message_loses_server_paths_and_the_token(moodle, rsps):
    message = f"Cannot write /var/www/moodle/cache/x.php for {TOKEN}\n[SQL]"
    warning = {"item": "course", "itemid": 2, "warningcode": "cannotwrite", "message": message}
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": [warning]})

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"}, FORMATS)

    assert (error.status, error.code, error.message) == (502, "cannotwrite", "Cannot write [path] for [redacted]")


POLICY = "<div>Passwords must be at least 8 characters long.</div>"


@pytest.mark.parametrize(
    "warningcode",
    [TOKEN, f"x_{TOKEN}", POLICY, "Not a code", "UPPERCASE", "a" * 65, 7, True],
    ids=["token", "holding-token", "html-policy", "words", "upper-case", "too-long", "integer", "boolean"],
)
def test_a_warningcode_that_is_no_moodle_code_is_a_moodleerror_without_moodles_text(moodle, rsps, warningcode):
    warning = {"item": "course", "itemid": 2, "warningcode": warningcode, "message": f"{POLICY} {TOKEN} secret"}
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": [warning]})

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"}, FORMATS)

    assert (error.status, error.code) == (502, "moodleerror")
    assert error.message == (
        "Moodle answered core_course_update_courses with an error whose code is not a Moodle code; its text is left out"
    )
    assert error.details == {"function": MoodleFunction.UPDATE_COURSES, "course_id": 2}
    assert TOKEN not in repr(error.__dict__) and "<div>" not in repr(error.__dict__)


def test_a_warningcode_carrying_a_token_shaped_like_moodles_is_no_code(rsps):
    hex_token = "0123456789abcdef0123456789abcdef"  # fits Moodle's code syntax
    moodle = MoodleClient(BASE_URL, hex_token, timeout_s=2.0, max_retries=0, functions_ttl_s=300)
    prime(moodle, rsps, ROUTE_FUNCTIONS)
    warning = {"item": "course", "itemid": 2, "warningcode": hex_token, "message": f"Token {hex_token} refused"}
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": [warning]})

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"}, FORMATS)

    assert (error.status, error.code) == (502, "moodleerror")
    assert hex_token not in repr(error.__dict__)


@pytest.mark.parametrize("warningcode", ["1", "0", "invalid_record", "x" * 64])
def test_a_warningcode_of_moodles_code_syntax_is_passed_on(moodle, rsps, warningcode):
    warning = {"item": "course", "itemid": 2, "warningcode": warningcode, "message": "No access rights"}
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": [warning]})

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"}, FORMATS)

    assert (error.status, error.code, error.message) == (502, warningcode, "No access rights")


def categories_answer(*category_ids):
    return [{"id": category_id, "name": f"Category {category_id}", "parent": 0} for category_id in category_ids]


def test_a_move_checks_the_course_and_the_category_before_the_update(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))
    add(rsps, MoodleFunction.GET_CATEGORIES, json=categories_answer(3))
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": []})
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(2, 3)))

    assert courses.update_course(moodle, 2, {"categoryid": 3}, FORMATS)["categoryid"] == 3

    by_field, categories, update = (
        MoodleFunction.GET_COURSES_BY_FIELD,
        MoodleFunction.GET_CATEGORIES,
        MoodleFunction.UPDATE_COURSES,
    )
    assert sent_functions(rsps)[1:] == [by_field, categories, update, by_field]
    assert sent(rsps, 2) | {"wstoken": ""} == {
        "wstoken": "",
        "wsfunction": MoodleFunction.GET_CATEGORIES,
        "moodlewsrestformat": "json",
        "criteria[0][key]": "id",
        "criteria[0][value]": "3",
        "addsubcategories": "0",
    }


def test_a_move_into_a_missing_category_is_a_404_and_nothing_is_sent_to_update(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))
    add(rsps, MoodleFunction.GET_CATEGORIES, json=[])

    error = api_raised(courses.update_course, moodle, 2, {"categoryid": 999999, "fullname": "New"}, FORMATS)

    assert (error.status, error.code, error.details) == (404, "categorynotfound", {"missing_categories": [999999]})
    assert error.message == "No category with id 999999 in Moodle"
    assert MoodleFunction.UPDATE_COURSES not in sent_functions(rsps)


def test_only_the_asked_category_counts_not_one_of_the_answer_below_it(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))
    add(rsps, MoodleFunction.GET_CATEGORIES, json=categories_answer(5, 6))

    assert api_raised(courses.update_course, moodle, 2, {"categoryid": 4}, FORMATS).code == "categorynotfound"
    assert MoodleFunction.UPDATE_COURSES not in sent_functions(rsps)


def test_moving_a_missing_course_is_a_404_for_the_course_before_the_category_is_asked(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer())

    error = api_raised(courses.update_course, moodle, 99, {"categoryid": 999}, FORMATS)

    assert (error.code, error.details) == ("coursenotfound", {"missing_courses": [99]})
    assert sent_functions(rsps)[1:] == [MoodleFunction.GET_COURSES_BY_FIELD]


def test_a_missing_record_after_both_checks_says_something_was_deleted_meanwhile(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(6)))
    add(rsps, MoodleFunction.GET_CATEGORIES, json=categories_answer(7))
    add(rsps, MoodleFunction.UPDATE_COURSES, body=golden("core_course_update_courses__category_missing"))

    error = raised(courses.update_course, moodle, 6, {"categoryid": 7}, FORMATS)

    assert (error.status, error.code) == (404, "invalidrecordunknown")
    assert error.details == {"function": MoodleFunction.UPDATE_COURSES, "course_id": 6, "outcome": "unknown"}
    assert "Course 6 or category 7 was deleted during the update" in error.message


def test_a_move_is_not_checked_or_sent_when_the_category_function_is_missing(make_client, rsps):
    moodle = make_client()
    prime(moodle, rsps, [f for f in ROUTE_FUNCTIONS if f != MoodleFunction.GET_CATEGORIES])

    error = raised(courses.update_course, moodle, 2, {"categoryid": 3}, FORMATS)

    assert (error.status, error.details["function"]) == (501, MoodleFunction.GET_CATEGORIES)
    assert sent_functions(rsps) == ["core_webservice_get_site_info"]


def test_an_update_without_a_move_needs_no_category_function(make_client, rsps):
    moodle = make_client()
    prime(moodle, rsps, [f for f in ROUTE_FUNCTIONS if f != MoodleFunction.GET_CATEGORIES])
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": []})
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))

    assert courses.update_course(moodle, 2, {"fullname": "New"}, FORMATS)["id"] == 2


def test_creating_in_a_missing_category_is_a_404_naming_the_category(moodle, rsps):
    refusal = {
        "exception": "moodle_exception",
        "errorcode": "errorcatcontextnotvalid",
        "message": "You cannot execute functions in the category context (category id:999). ...",
    }
    add(rsps, MoodleFunction.CREATE_COURSES, json=refusal)

    error = api_raised(courses.create_course, moodle, {"fullname": "X", "shortname": "X1", "categoryid": 999}, FORMATS)

    assert (error.status, error.code, error.details) == (404, "categorynotfound", {"missing_categories": [999]})
    assert isinstance(error.__cause__, ApiError) and error.__cause__.code == "errorcatcontextnotvalid"
    assert sent_functions(rsps)[1:] == [
        MoodleFunction.CREATE_COURSES
    ]  # no check first: Moodle's refusal writes nothing


def test_an_update_is_not_sent_when_the_read_back_function_is_missing(make_client, rsps):
    moodle = make_client()
    prime(moodle, rsps, [f for f in ROUTE_FUNCTIONS if f != MoodleFunction.GET_COURSES_BY_FIELD])

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"}, FORMATS)

    assert (error.status, error.details["function"]) == (501, MoodleFunction.GET_COURSES_BY_FIELD)
    assert MoodleFunction.UPDATE_COURSES not in sent_functions(rsps)


def test_a_failed_read_back_says_the_update_was_applied(moodle, rsps):
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": []})
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, body=reset())
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, body=reset())
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, body=reset())

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"}, FORMATS)

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.details == {"function": MoodleFunction.GET_COURSES_BY_FIELD, "updated": True}
    assert error.message == "The update was applied, but reading the course back failed: " + error.__cause__.message
    assert "updated" not in error.__cause__.details


def test_a_course_deleted_before_its_read_back_is_a_404_saying_the_update_was_applied(moodle, rsps):
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": []})
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer())

    with pytest.raises(ApiError) as info:
        courses.update_course(moodle, 2, {"fullname": "New"}, FORMATS)

    assert (info.value.status, info.value.code) == (404, "coursenotfound")
    assert info.value.details == {"missing_courses": [2], "updated": True}


def test_a_course_is_created_in_an_offered_format(moodle, rsps):
    add(rsps, MoodleFunction.CREATE_COURSES, json=[{"id": 6, "shortname": "NEW1"}])

    courses.create_course(moodle, {"fullname": "New", "shortname": "NEW1", "categoryid": 1, "format": "weeks"}, FORMATS)

    assert sent(rsps)["courses[0][format]"] == "weeks"


def test_a_course_is_changed_to_an_offered_format(moodle, rsps):
    add(rsps, MoodleFunction.UPDATE_COURSES, json={"warnings": []})
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(2, format="weeks")))

    assert courses.update_course(moodle, 2, {"format": "weeks"}, FORMATS)["format"] == "weeks"
    assert sent(rsps, -2)["courses[0][format]"] == "weeks"


OFFERED_ONLY = "Not a course format this site offers: 'bogus'; one of topics, weeks"


@pytest.mark.parametrize(
    "write",
    [
        lambda moodle: courses.create_course(
            moodle, {"fullname": "X", "shortname": "X1", "categoryid": 1, "format": "bogus"}, FORMATS
        ),
        lambda moodle: courses.update_course(moodle, 2, {"format": "bogus", "fullname": "New"}, FORMATS),
        lambda moodle: courses.update_course(moodle, 2, {"format": "bogus", "categoryid": 3}, FORMATS),
    ],
    ids=["create", "update", "move"],
)
def test_a_format_the_site_does_not_offer_is_a_400_before_moodle_is_asked_anything(moodle, rsps, write):
    calls_before = len(rsps.calls)

    error = api_raised(write, moodle)

    assert (error.status, error.code, error.message) == (400, "validationerror", "Invalid input: format")
    assert error.details == {"fields": {"format": [OFFERED_ONLY]}}
    assert len(rsps.calls) == calls_before


WANTED = {"shortname": "C9", "fullname": "Course 9", "categoryid": 1}


def test_a_course_an_earlier_attempt_created_is_found_by_its_short_name(moodle, rsps):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(course(9)))

    assert courses.created_already(moodle, WANTED) == {"id": 9, "shortname": "C9"}
    assert (sent(rsps)["field"], sent(rsps)["value"]) == ("shortname", "C9")


@pytest.mark.parametrize(
    "found",
    [
        [],  # never created
        [course(9, fullname="Another course")],  # another course holds the short name
        [course(9, categoryid=4)],
    ],
)
def test_no_course_or_another_one_under_the_short_name_is_not_the_one_created(moodle, rsps, found):
    add(rsps, MoodleFunction.GET_COURSES_BY_FIELD, json=by_field_answer(*found))

    assert courses.created_already(moodle, WANTED) is None


def test_a_course_whose_names_moodle_answers_escaped_is_still_the_one_created(moodle, rsps):
    add(
        rsps,
        MoodleFunction.GET_COURSES_BY_FIELD,
        json=by_field_answer(course(9, shortname="R&amp;D", fullname="R&amp;D &lt;1&gt;")),
    )

    wanted = {"shortname": "R&D", "fullname": "R&D <1>", "categoryid": 1}
    assert courses.created_already(moodle, wanted) == {"id": 9, "shortname": "R&D"}
