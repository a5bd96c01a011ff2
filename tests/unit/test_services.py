"""Route services against a mocked Moodle: which functions are called with what, and how answers become one shape."""

from __future__ import annotations

import io
import json

import pytest
import responses

from lms_api.errors import ApiError
from lms_api.moodle.client import UploadFile
from lms_api.security import Identity
from lms_api.services import courses, enrolments, files, notifications, users
from lms_api.settings import DEFAULT_ROLE_IDS
from tests.unit.test_moodle_client import (
    BASE_URL,
    TOKEN,
    add,
    assert_token_absent,
    form_of,
    golden,
    prime,
    raised,
    refused,
    reset,
    sent_functions,
)

UPLOAD_URL = BASE_URL + "/webservice/upload.php"
ATTACH = "local_course_add_new_course_module_resource"
FUNCTIONS = (
    courses.GET_CATEGORIES,
    courses.GET_COURSES,
    courses.GET_COURSES_BY_FIELD,
    courses.SEARCH_COURSES,
    courses.CREATE_COURSES,
    courses.UPDATE_COURSES,
    users.GET_USERS_BY_FIELD,
    enrolments.ENROL_USERS,
    notifications.GET_POPUP_NOTIFICATIONS,
    notifications.GET_UNREAD_COUNT,
    ATTACH,
)
SITE_COURSE = {"id": 1, "shortname": "site", "fullname": "Site", "categoryid": 0, "format": "site"}


def course(course_id, categoryid=1, **fields):
    return {"id": course_id, "shortname": f"C{course_id}", "fullname": f"Course {course_id}", "categoryid": categoryid,
            "format": "topics", **fields}  # fmt: skip


@pytest.fixture
def moodle(make_service, rsps):
    service = make_service()
    prime(service, rsps, FUNCTIONS)
    return service


def sent(rsps, index=-1) -> dict[str, str]:
    return dict(form_of(rsps.calls[index].request))


def by_field_answer(*found):
    return {"courses": list(found), "warnings": []}


def api_raised(function, *args) -> ApiError:
    """What ``function`` raised: an ApiError of the gateway's own, or a MoodleError."""
    with pytest.raises(ApiError) as info:
        function(*args)
    return info.value


def ids_sent(rsps, index=-1) -> list[str]:
    return [value for key, value in form_of(rsps.calls[index].request) if key.startswith("options[ids]")]


# -- courses ---------------------------------------------------------------------------------------


def test_listing_without_filters_drops_the_site_course_and_pages_locally(moodle, rsps):
    add(rsps, courses.GET_COURSES, json=[SITE_COURSE, *(course(n) for n in range(2, 9))])

    listing = courses.list_courses(moodle, page=1, perpage=3)

    assert [c["id"] for c in listing["courses"]] == [5, 6, 7]
    assert (listing["total"], listing["page"], listing["perpage"]) == (7, 1, 3)
    assert set(sent(rsps)) == {"wstoken", "wsfunction", "moodlewsrestformat"}  # no options: all courses


def test_listing_a_category_uses_courses_by_field(moodle, rsps):
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(3, 2), course(4, 2)))

    listing = courses.list_courses(moodle, category=2, page=0, perpage=1)

    assert sent(rsps)["field"] == "category" and sent(rsps)["value"] == "2"
    assert [c["id"] for c in listing["courses"]] == [3]
    assert listing["total"] == 2


def test_a_search_pages_in_moodle_then_reads_the_page_by_id_in_moodles_order(moodle, rsps):
    public = [{"id": 7, "categoryid": 1}, {"id": 3, "categoryid": 2}]
    add(rsps, courses.SEARCH_COURSES, json={"total": 12, "courses": public, "warnings": []})
    add(rsps, courses.GET_COURSES, json=[course(3, 2, startdate=5), course(7)])

    listing = courses.list_courses(moodle, search="python", page=2, perpage=2)

    search = sent(rsps, -2)
    assert (search["criterianame"], search["criteriavalue"], search["page"], search["perpage"]) == (
        "search", "python", "2", "2")  # fmt: skip
    assert sent(rsps)["wsfunction"] == courses.GET_COURSES and ids_sent(rsps) == ["7", "3"]
    assert [c["id"] for c in listing["courses"]] == [7, 3]
    assert listing["courses"][1]["startdate"] == 5
    assert listing["total"] == 12


def test_search_and_category_search_everything_then_keep_the_category(moodle, rsps):
    public = [{"id": n, "categoryid": 2 if n % 2 else 1} for n in range(2, 12)]
    add(rsps, courses.SEARCH_COURSES, json={"total": 10, "courses": public, "warnings": []})
    add(rsps, courses.GET_COURSES, json=[course(7, 2), course(9, 2)])

    listing = courses.list_courses(moodle, search="x", category=2, page=1, perpage=2)

    assert (sent(rsps, -2)["page"], sent(rsps, -2)["perpage"]) == ("0", "0")
    assert ids_sent(rsps) == ["7", "9"]
    assert listing["total"] == 5
    assert [c["id"] for c in listing["courses"]] == [7, 9]


def test_courses_by_ids_leaves_out_missing_ids_and_the_front_page_in_the_order_asked(moodle, rsps):
    add(rsps, courses.GET_COURSES, body=golden("core_course_get_courses__ids_missing"))

    assert [c["id"] for c in courses.courses_by_ids(moodle, [987654, 2, 2])] == [2]
    assert ids_sent(rsps) == ["987654", "2"]

    add(rsps, courses.GET_COURSES, json=[SITE_COURSE, course(3), course(5)])
    assert [c["id"] for c in courses.courses_by_ids(moodle, [5, 1, 3])] == [5, 3]


def test_a_course_deleted_between_the_search_and_its_read_back_is_left_out_of_the_page(moodle, rsps):
    public = [{"id": 2, "categoryid": 1}, {"id": 6, "categoryid": 1}]
    add(rsps, courses.SEARCH_COURSES, json={"total": 2, "courses": public, "warnings": []})
    add(rsps, courses.GET_COURSES, json=[course(2)])

    listing = courses.list_courses(moodle, search="python")

    assert [c["id"] for c in listing["courses"]] == [2]
    assert courses.GET_COURSES_BY_FIELD not in sent_functions(rsps)


def test_courses_by_ids_splits_to_fit_max_input_vars_and_asks_nothing_for_no_ids(make_service, rsps):
    moodle = make_service(max_input_vars=5)  # 5 - 3 reserved = two ids per call
    prime(moodle, rsps, FUNCTIONS)
    add(rsps, courses.GET_COURSES, json=[course(2)])

    assert courses.courses_by_ids(moodle, []) == []
    assert [c["id"] for c in courses.courses_by_ids(moodle, [2, 3, 4, 5, 6])] == [2]
    assert [ids_sent(rsps, index) for index in (1, 2, 3)] == [["2", "3"], ["4", "5"], ["6"]]


def test_a_search_without_matches_makes_no_second_call(moodle, rsps):
    add(rsps, courses.SEARCH_COURSES, json={"total": 0, "courses": [], "warnings": []})

    assert courses.list_courses(moodle, search="nothing")["courses"] == []
    assert sent_functions(rsps)[-1] == courses.SEARCH_COURSES


@pytest.mark.parametrize(
    "answer",
    [{"courses": []}, {"total": "3", "courses": []}, [], {"total": 1, "courses": [{"name": "no id"}]}],
)
def test_a_search_answer_of_another_shape_is_a_502(moodle, rsps, answer):
    add(rsps, courses.SEARCH_COURSES, json=answer)

    error = raised(lambda: courses.list_courses(moodle, search="x"))

    assert (error.status, error.code) == (502, "badresponse")


def test_a_missing_course_is_a_404_naming_it(moodle, rsps):
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer())

    with pytest.raises(ApiError) as info:
        courses.get_course(moodle, 99)

    assert (info.value.status, info.value.code, info.value.details) == (
        404,
        "coursenotfound",
        {"missing_courses": [99]},
    )


def test_create_sends_one_course_and_answers_its_id(moodle, rsps):
    add(rsps, courses.CREATE_COURSES, json=[{"id": 6, "shortname": "NEW1"}])

    created = courses.create_course(moodle, {"fullname": "New", "shortname": "NEW1", "categoryid": 1, "visible": False})

    assert created == {"id": 6, "shortname": "NEW1"}
    form = sent(rsps)
    assert (form["courses[0][shortname]"], form["courses[0][visible]"]) == ("NEW1", "0")


def test_update_sends_only_the_given_fields_and_reads_the_course_back(moodle, rsps):
    add(rsps, courses.UPDATE_COURSES, json={"warnings": []})
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(2, fullname="Renamed")))

    updated = courses.update_course(moodle, 2, {"fullname": "Renamed"})

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
    add(rsps, courses.UPDATE_COURSES, json={"warnings": [warning]})

    with pytest.raises(ApiError) as info:
        courses.update_course(moodle, 2, {"shortname": "PY101"})

    assert (info.value.status, info.value.code) == (status, code)
    assert "SELECT" not in info.value.message
    assert sent_functions(rsps)[1:] == [courses.UPDATE_COURSES]


def test_the_golden_warning_for_a_missing_course_is_a_404_naming_it(moodle, rsps):
    add(rsps, courses.UPDATE_COURSES, body=golden("error_update_nonexistent_course"))

    error = api_raised(courses.update_course, moodle, 99999, {"fullname": "Nobody"})

    assert (error.status, error.code, error.details) == (404, "coursenotfound", {"missing_courses": [99999]})
    assert error.message == "No course with id 99999 in Moodle"


def test_a_warning_message_loses_server_paths_and_the_token(moodle, rsps):
    message = f"Cannot write /var/www/moodle/cache/x.php for {TOKEN}\n[SQL]"
    warning = {"item": "course", "itemid": 2, "warningcode": "cannotwrite", "message": message}
    add(rsps, courses.UPDATE_COURSES, json={"warnings": [warning]})

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"})

    assert (error.status, error.code, error.message) == (502, "cannotwrite", "Cannot write [path] for [redacted]")


def categories_answer(*category_ids):
    return [{"id": category_id, "name": f"Category {category_id}", "parent": 0} for category_id in category_ids]


def test_a_move_checks_the_course_and_the_category_before_the_update(moodle, rsps):
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))
    add(rsps, courses.GET_CATEGORIES, json=categories_answer(3))
    add(rsps, courses.UPDATE_COURSES, json={"warnings": []})
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(2, 3)))

    assert courses.update_course(moodle, 2, {"categoryid": 3})["categoryid"] == 3

    by_field, categories, update = courses.GET_COURSES_BY_FIELD, courses.GET_CATEGORIES, courses.UPDATE_COURSES
    assert sent_functions(rsps)[1:] == [by_field, categories, update, by_field]
    assert sent(rsps, 2) | {"wstoken": ""} == {
        "wstoken": "",
        "wsfunction": courses.GET_CATEGORIES,
        "moodlewsrestformat": "json",
        "criteria[0][key]": "id",
        "criteria[0][value]": "3",
        "addsubcategories": "0",
    }


def test_a_move_into_a_missing_category_is_a_404_and_nothing_is_sent_to_update(moodle, rsps):
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))
    add(rsps, courses.GET_CATEGORIES, json=[])

    error = api_raised(courses.update_course, moodle, 2, {"categoryid": 999999, "fullname": "New"})

    assert (error.status, error.code, error.details) == (404, "categorynotfound", {"missing_categories": [999999]})
    assert error.message == "No category with id 999999 in Moodle"
    assert courses.UPDATE_COURSES not in sent_functions(rsps)


def test_only_the_asked_category_counts_not_one_of_the_answer_below_it(moodle, rsps):
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))
    add(rsps, courses.GET_CATEGORIES, json=categories_answer(5, 6))

    assert api_raised(courses.update_course, moodle, 2, {"categoryid": 4}).code == "categorynotfound"
    assert courses.UPDATE_COURSES not in sent_functions(rsps)


def test_moving_a_missing_course_is_a_404_for_the_course_before_the_category_is_asked(moodle, rsps):
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer())

    error = api_raised(courses.update_course, moodle, 99, {"categoryid": 999})

    assert (error.code, error.details) == ("coursenotfound", {"missing_courses": [99]})
    assert sent_functions(rsps)[1:] == [courses.GET_COURSES_BY_FIELD]


def test_a_missing_record_after_both_checks_says_something_was_deleted_meanwhile(moodle, rsps):
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(6)))
    add(rsps, courses.GET_CATEGORIES, json=categories_answer(7))
    add(rsps, courses.UPDATE_COURSES, body=golden("core_course_update_courses__category_missing"))

    error = raised(courses.update_course, moodle, 6, {"categoryid": 7})

    assert (error.status, error.code) == (404, "invalidrecordunknown")
    assert error.details == {"function": courses.UPDATE_COURSES, "course_id": 6, "outcome": "unknown"}
    assert "Course 6 or category 7 was deleted during the update" in error.message


def test_a_move_is_not_checked_or_sent_when_the_category_function_is_missing(make_service, rsps):
    moodle = make_service()
    prime(moodle, rsps, [f for f in FUNCTIONS if f != courses.GET_CATEGORIES])

    error = raised(courses.update_course, moodle, 2, {"categoryid": 3})

    assert (error.status, error.details["function"]) == (501, courses.GET_CATEGORIES)
    assert sent_functions(rsps) == ["core_webservice_get_site_info"]


def test_an_update_without_a_move_needs_no_category_function(make_service, rsps):
    moodle = make_service()
    prime(moodle, rsps, [f for f in FUNCTIONS if f != courses.GET_CATEGORIES])
    add(rsps, courses.UPDATE_COURSES, json={"warnings": []})
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer(course(2)))

    assert courses.update_course(moodle, 2, {"fullname": "New"})["id"] == 2


def test_creating_in_a_missing_category_is_a_404_naming_the_category(moodle, rsps):
    refusal = {
        "exception": "moodle_exception",
        "errorcode": "errorcatcontextnotvalid",
        "message": "You cannot execute functions in the category context (category id:999). ...",
    }
    add(rsps, courses.CREATE_COURSES, json=refusal)

    error = api_raised(courses.create_course, moodle, {"fullname": "X", "shortname": "X1", "categoryid": 999})

    assert (error.status, error.code, error.details) == (404, "categorynotfound", {"missing_categories": [999]})
    assert isinstance(error.__cause__, ApiError) and error.__cause__.code == "errorcatcontextnotvalid"
    assert sent_functions(rsps)[1:] == [courses.CREATE_COURSES]  # no check first: Moodle's refusal writes nothing


def test_an_update_is_not_sent_when_the_read_back_function_is_missing(make_service, rsps):
    moodle = make_service()
    prime(moodle, rsps, [f for f in FUNCTIONS if f != courses.GET_COURSES_BY_FIELD])

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"})

    assert (error.status, error.details["function"]) == (501, courses.GET_COURSES_BY_FIELD)
    assert courses.UPDATE_COURSES not in sent_functions(rsps)


def test_a_failed_read_back_says_the_update_was_applied(moodle, rsps):
    add(rsps, courses.UPDATE_COURSES, json={"warnings": []})
    add(rsps, courses.GET_COURSES_BY_FIELD, body=reset())
    add(rsps, courses.GET_COURSES_BY_FIELD, body=reset())
    add(rsps, courses.GET_COURSES_BY_FIELD, body=reset())

    error = raised(courses.update_course, moodle, 2, {"fullname": "New"})

    assert (error.status, error.code) == (503, "moodleunavailable")
    assert error.details == {"function": courses.GET_COURSES_BY_FIELD, "updated": True}
    assert error.message == "The update was applied, but reading the course back failed: " + error.__cause__.message
    assert "updated" not in error.__cause__.details


def test_a_course_deleted_before_its_read_back_is_a_404_saying_the_update_was_applied(moodle, rsps):
    add(rsps, courses.UPDATE_COURSES, json={"warnings": []})
    add(rsps, courses.GET_COURSES_BY_FIELD, json=by_field_answer())

    with pytest.raises(ApiError) as info:
        courses.update_course(moodle, 2, {"fullname": "New"})

    assert (info.value.status, info.value.code) == (404, "coursenotfound")
    assert info.value.details == {"missing_courses": [2], "updated": True}


# -- users -----------------------------------------------------------------------------------------


def user(user_id, username, email, idnumber=""):
    return {"id": user_id, "username": username, "email": email, "idnumber": idnumber, "fullname": username}


def test_missing_users_are_named_as_the_caller_spelled_them(moodle, rsps):
    add(rsps, users.GET_USERS_BY_FIELD, json=[user(3, "ada", "Ada@Example.com")])

    found = users.users_by_field(moodle, "email", ["ada@example.com", "Nobody@Example.com"])

    assert [u["id"] for u in found["users"]] == [3]
    assert found["missing"] == ["Nobody@Example.com"]


def test_usernames_are_sent_lower_case_and_matched_as_sent(moodle, rsps):
    add(rsps, users.GET_USERS_BY_FIELD, json=[user(3, "ada", "a@x")])

    found = users.users_by_field(moodle, "username", ["Ada", "ada", "Bob"])

    values = [value for key, value in form_of(rsps.calls[-1].request) if key.startswith("values")]
    assert values == ["ada", "bob"]
    assert found["missing"] == ["Bob"]


def test_values_are_asked_one_by_one_when_moodle_hides_the_field(moodle, rsps):
    hidden = {"id": 3, "fullname": "Ada Lovelace"}  # a token that may not see idnumbers
    add(rsps, users.GET_USERS_BY_FIELD, json=[hidden])
    add(rsps, users.GET_USERS_BY_FIELD, json=[hidden])
    add(rsps, users.GET_USERS_BY_FIELD, json=[])

    found = users.users_by_field(moodle, "idnumber", ["S001", "X9"])

    assert found["missing"] == ["X9"]
    assert sent_functions(rsps).count(users.GET_USERS_BY_FIELD) == 3


def test_ids_are_matched_as_integers(moodle, rsps):
    add(rsps, users.GET_USERS_BY_FIELD, json=[user(4, "b", "b@x")])

    assert users.users_by_field(moodle, "id", [4, 5])["missing"] == [5]


def test_many_values_are_split_over_calls_that_fit_max_input_vars(make_service, rsps):
    moodle = make_service(max_input_vars=10)  # 10 - 3 reserved - 1 for field = 6 values per call
    prime(moodle, rsps, FUNCTIONS)
    add(rsps, users.GET_USERS_BY_FIELD, json=[user(3, "u3", "3@x")])

    found = users.users_by_field(moodle, "id", list(range(1, 15)))

    assert sent_functions(rsps).count(users.GET_USERS_BY_FIELD) == 3
    assert found["users"] == [user(3, "u3", "3@x")]
    assert len(found["missing"]) == 13


def hidden_user(user_id):
    return {"id": user_id, "fullname": f"User {user_id}"}  # a token that may not see idnumbers


def test_values_asked_one_by_one_are_bounded_and_the_rest_are_unchecked(moodle, rsps):
    values = [f"S{n:03}" for n in range(30)]
    add(rsps, users.GET_USERS_BY_FIELD, json=[hidden_user(3)])
    for n in range(users.MAX_SINGLE_VALUE_CALLS):
        add(rsps, users.GET_USERS_BY_FIELD, json=[hidden_user(3)] if n == 0 else [])

    found = users.users_by_field(moodle, "idnumber", values)

    assert sent_functions(rsps).count(users.GET_USERS_BY_FIELD) == 1 + users.MAX_SINGLE_VALUE_CALLS == 21
    assert found["missing"] == values[1:20]
    assert found["unchecked"] == values[20:]
    assert [u["id"] for u in found["users"]] == [3]


def test_one_value_spelled_twice_is_asked_alone_once(moodle, rsps):
    add(rsps, users.GET_USERS_BY_FIELD, json=[{"id": 3, "fullname": "Ada"}])  # usernames hidden
    add(rsps, users.GET_USERS_BY_FIELD, json=[])
    add(rsps, users.GET_USERS_BY_FIELD, json=[{"id": 3, "fullname": "Ada"}])

    found = users.users_by_field(moodle, "username", ["Ghost", "ghost", "ada"])

    assert sent_functions(rsps).count(users.GET_USERS_BY_FIELD) == 3
    assert (found["missing"], found["unchecked"]) == (["Ghost", "ghost"], [])


def test_nothing_is_unchecked_when_moodle_shows_the_field(moodle, rsps):
    add(rsps, users.GET_USERS_BY_FIELD, json=[])

    found = users.users_by_field(moodle, "email", [f"u{n}@x" for n in range(50)])

    assert (len(found["missing"]), found["unchecked"]) == (50, [])
    assert sent_functions(rsps).count(users.GET_USERS_BY_FIELD) == 1


def test_missing_user_ids_are_named_in_the_order_given(make_service, rsps):
    moodle = make_service(max_input_vars=6)  # 6 - 3 reserved - 1 for field = two ids per call
    prime(moodle, rsps, FUNCTIONS)
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(4))

    assert users.missing_user_ids(moodle, [9, 4, 9, 7]) == [9, 7]
    assert sent_functions(rsps).count(users.GET_USERS_BY_FIELD) == 2
    assert (sent(rsps, 1)["field"], sent(rsps, 1)["values[0]"], sent(rsps, 1)["values[1]"]) == ("id", "9", "4")


def test_a_not_found_message_names_at_most_twenty_ids_and_details_list_them_all():
    error = users.user_not_found(list(range(1, 26)))

    assert error.message == f"No users with ids {', '.join(map(str, range(1, 21)))} and 5 more in Moodle"
    assert error.details == {"missing_users": list(range(1, 26))}


# -- enrolments -------------------------------------------------------------------------------------


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


def users_answer(*user_ids):
    return [{"id": user_id, "fullname": f"User {user_id}"} for user_id in user_ids]


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


def test_enrolment_is_not_checked_when_the_enrol_function_is_missing(make_service, rsps):
    moodle = make_service()
    prime(moodle, rsps, [f for f in FUNCTIONS if f != enrolments.ENROL_USERS])

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


def test_a_batch_is_split_to_fit_max_input_vars(make_service, rsps):
    moodle = make_service(max_input_vars=12)  # three enrolments of three fields per call
    prime(moodle, rsps, FUNCTIONS)
    add(rsps, courses.GET_COURSES, json=[course(2)])
    add(rsps, users.GET_USERS_BY_FIELD, json=users_answer(*range(100, 107)))
    add(rsps, enrolments.ENROL_USERS, body="null")

    assert enrolments.enrol(moodle, to_enrol(7)) == {"enrolled": 7, "calls": 3}
    calls = [
        dict(form_of(c.request)) for c in rsps.calls if dict(form_of(c.request))["wsfunction"] == enrolments.ENROL_USERS
    ]
    assert [sum(key.endswith("[userid]") for key in form) for form in calls] == [3, 3, 1]
    assert [form["enrolments[0][userid]"] for form in calls] == ["100", "103", "106"]


def test_a_later_call_failing_lists_what_was_applied_and_what_was_not(make_service, rsps):
    moodle = make_service(max_input_vars=12)
    prime(moodle, rsps, FUNCTIONS)
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


def test_a_call_with_an_unknown_outcome_is_reported_as_unknown_and_not_resent(make_service, rsps):
    moodle = make_service(max_input_vars=12)
    prime(moodle, rsps, FUNCTIONS)
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


# -- notifications ---------------------------------------------------------------------------------


def identity(moodle_userid=None, scopes=("notifications:read",)):
    return Identity("someone", frozenset(scopes), moodle_userid)


def test_the_user_defaults_to_the_tokens_moodle_userid():
    assert notifications.notification_user(identity(3), None) == 3
    assert notifications.notification_user(identity(3), 3) == 3


@pytest.mark.parametrize("moodle_userid", [3, None])
def test_another_user_needs_admin(moodle_userid):
    with pytest.raises(ApiError) as info:
        notifications.notification_user(identity(moodle_userid), 4)

    assert (info.value.status, info.value.details) == (403, {"required_scope": "admin"})
    assert notifications.notification_user(identity(moodle_userid, ("notifications:read", "admin")), 4) == 4


def test_no_userid_and_no_claim_is_a_400():
    with pytest.raises(ApiError) as info:
        notifications.notification_user(identity(None), None)

    assert info.value.status == 400
    assert "userid" in info.value.details["fields"]


def test_notifications_are_asked_newest_first_with_limit_and_offset(moodle, rsps):
    add(rsps, notifications.GET_POPUP_NOTIFICATIONS, json={"notifications": [{"id": 2}], "unreadcount": 2})

    answer = notifications.notifications(moodle, 3, 5, 10)

    form = sent(rsps)
    assert (form["useridto"], form["limit"], form["offset"], form["newestfirst"]) == ("3", "5", "10", "1")
    assert answer == {"userid": 3, "notifications": [{"id": 2}], "unreadcount": 2, "limit": 5, "offset": 10}


def test_notifications_of_a_user_moodle_does_not_have_are_a_404_naming_the_user(moodle, rsps):
    add(rsps, notifications.GET_POPUP_NOTIFICATIONS, body=golden("error_popup_notifications_nonexistent_user"))

    error = api_raised(notifications.notifications, moodle, 999999, 20, 0)

    assert (error.status, error.code, error.details) == (404, "usernotfound", {"missing_users": [999999]})
    assert error.message == "No user with id 999999 in Moodle"


def test_other_notification_errors_pass_as_they_are(moodle, rsps):
    add(rsps, notifications.GET_POPUP_NOTIFICATIONS, json={"exception": "moodle_exception", "errorcode": "invaliduser",
                                                           "message": "Invalid user"})  # fmt: skip

    assert raised(notifications.notifications, moodle, -5, 20, 0).code == "invaliduser"


@pytest.mark.parametrize("body", ["2", "0"])
def test_the_bare_integer_count_becomes_an_object(moodle, rsps, body):
    add(rsps, notifications.GET_UNREAD_COUNT, body=body)

    assert notifications.unread_count(moodle, 3) == {"userid": 3, "count": int(body)}


@pytest.mark.parametrize("body", ["true", '"2"', "null", '{"count": 2}'])
def test_a_count_that_is_not_an_integer_is_a_502(moodle, rsps, body):
    add(rsps, notifications.GET_UNREAD_COUNT, body=body)

    assert raised(notifications.unread_count, moodle, 3).status == 502


# -- files -----------------------------------------------------------------------------------------


def draft_entry(filename, itemid=549014061, size=26):
    return {"component": "user", "contextid": 5, "userid": "2", "filearea": "draft", "filename": filename,
            "filepath": "/", "itemid": itemid, "license": "unknown", "author": "Admin User",
            "source": 'O:8:"stdClass":1:{s:6:"source";s:8:"hello.py";}', "filesize": size}  # fmt: skip


def upload_file(name="hello.py", content=b"print('hello from lms_api')"):
    return UploadFile(name, io.BytesIO(content), "text/x-python")


def test_upload_streams_a_multipart_body_with_the_token_in_it(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("hello.py")], content_type="text/plain")

    answer = files.upload(moodle, [upload_file()], itemid=0)

    request = rsps.calls[-1].request
    assert request.url == UPLOAD_URL
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    body = request.body.read() if hasattr(request.body, "read") else request.body
    body = body if isinstance(body, bytes) else body.encode()
    assert b'name="token"\r\n\r\n' + TOKEN.encode() in body
    assert b'name="itemid"\r\n\r\n0\r\n' in body
    assert b'filename="hello.py"' in body and b"print('hello from lms_api')" in body
    assert answer["itemid"] == 549014061
    assert answer["files"][0]["filename"] == "hello.py"


def test_upload_errors_in_upload_phps_own_shape_are_mapped(moodle, rsps):
    bad_token = {"error": "Invalid token - token not found", "errorcode": "invalidtoken", "stacktrace": None,
                 "debuginfo": None, "reproductionlink": None}  # fmt: skip
    rsps.add(responses.POST, UPLOAD_URL, json=bad_token)

    error = raised(files.upload, moodle, [upload_file()])

    assert (error.status, error.code) == (502, "invalidtoken")
    assert "MOODLE_TOKEN" in error.message
    assert_token_absent(error)


@pytest.mark.parametrize(("errortype", "status"), [("fileoversized", 413), ("filenameexist", 409), ("virusfound", 502)])
def test_a_refused_file_is_an_error_that_never_shows_moodles_temp_path(moodle, rsps, errortype, status):
    refused_entry = {"filename": "big.bin", "errortype": errortype, "error": "[[maxbytes]]",
                     "filepath": "/var/moodledata/temp/phpAbC123", "size": 99}  # fmt: skip
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("hello.py"), refused_entry])

    error = raised(files.upload, moodle, [upload_file(), upload_file("big.bin")])

    assert error.status == status
    assert error.details["stored"] == ["hello.py"] and error.details["itemid"] == 549014061
    assert "phpAbC123" not in json.dumps(error.details) + error.message


def test_a_refused_files_errortype_never_shows_a_server_path(moodle, rsps):
    refused_entry = {"filename": "x.bin", "errortype": "cannot write /var/moodledata/temp/x", "error": "x"}
    rsps.add(responses.POST, UPLOAD_URL, json=[refused_entry])

    error = raised(files.upload, moodle, [upload_file("x.bin")])

    assert (error.code, error.message) == ("uploadrefused", "Moodle refused x.bin (cannot write [path])")


@pytest.mark.parametrize("answer", [[], {"files": []}, "ok"])
def test_an_upload_answer_without_the_files_is_a_502(moodle, rsps, answer):
    rsps.add(responses.POST, UPLOAD_URL, json=answer)

    assert raised(files.upload, moodle, [upload_file()]).status == 502


@pytest.mark.parametrize("itemid", [None, "7", True])
def test_an_upload_answer_naming_no_draft_item_is_a_502(moodle, rsps, itemid):
    rsps.add(responses.POST, UPLOAD_URL, json=[{**draft_entry("hello.py"), "itemid": itemid}])

    error = raised(files.upload, moodle, [upload_file()])

    assert (error.status, error.code) == (502, "badresponse")


def test_an_upload_is_not_sent_twice_after_the_connection_dropped(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, body=reset())

    error = raised(files.upload, moodle, [upload_file()])

    assert error.details["outcome"] == "unknown"
    assert len([c for c in rsps.calls if c.request.url == UPLOAD_URL]) == 1


def test_an_upload_that_never_connected_is_retried_from_the_start_of_the_file(moodle, rsps):
    rsps.add(responses.POST, UPLOAD_URL, body=refused())
    rsps.add(responses.POST, UPLOAD_URL, json=[draft_entry("hello.py")])

    assert files.upload(moodle, [upload_file()])["files"][0]["filename"] == "hello.py"
    body = rsps.calls[-1].request.body
    body = body.read() if hasattr(body, "read") else body
    assert b"print('hello from lms_api')" in body


def test_the_size_limit_counts_all_files():
    files.check_sizes([upload_file(content=b"x" * (1024 * 1024))], 1)
    with pytest.raises(ApiError) as info:
        files.check_sizes([upload_file(content=b"x" * (1024 * 1024)), upload_file(content=b"y")], 1)
    assert (info.value.status, info.value.code) == (413, "filetoolarge")


def test_a_declared_body_length_over_the_limit_is_refused_before_reading():
    files.refuse_oversized_body(None, 1)
    files.refuse_oversized_body(1024 * 1024 + 1000, 1)
    with pytest.raises(ApiError):
        files.refuse_oversized_body(2 * 1024 * 1024, 1)


ATTACH_FIELDS = {"courseid": 2, "draftitemid": 549014061, "name": "Slides", "section": 1, "visible": False}


def test_attach_calls_the_plugin_with_its_parameter_names(moodle, rsps):
    add(rsps, ATTACH, json={"message": "Successful", "id": "17"})

    attached = files.attach(moodle, ATTACH, ATTACH_FIELDS)

    form = sent(rsps)
    assert (form["courseid"], form["sectionnum"], form["itemid"], form["displayname"], form["visible"]) == (
        "2", "1", "549014061", "Slides", "false")  # fmt: skip
    assert attached == {"cmid": 17, "courseid": 2, "section": 1, "name": "Slides", "visible": False}


def test_attach_without_the_plugin_is_a_501_naming_it(make_service, rsps):
    moodle = make_service()
    prime(moodle, rsps, [f for f in FUNCTIONS if f != ATTACH])

    error = raised(files.attach, moodle, ATTACH, ATTACH_FIELDS)

    assert (error.status, error.code) == (501, "functionnotavailable")
    assert files.SYNC_SERVICE_PLUGIN in error.message and "MOODLE_ATTACH_FUNCTION" in error.message
    other = raised(files.attach, moodle, "local_other_attach", ATTACH_FIELDS)
    assert "MOODLE_ATTACH_FUNCTION" in other.message and files.SYNC_SERVICE_PLUGIN not in other.message


def test_a_missing_record_on_attach_makes_the_function_list_be_read_again(moodle, rsps):
    missing = {"exception": "dml_missing_record_exception", "errorcode": "invalidrecordunknown", "message": "x"}
    add(rsps, ATTACH, json=missing)

    assert raised(files.attach, moodle, ATTACH, ATTACH_FIELDS).status == 404
    add(rsps, "core_webservice_get_site_info", json={"functions": []})
    assert raised(files.attach, moodle, ATTACH, ATTACH_FIELDS).status == 501


@pytest.mark.parametrize("answer", [{"message": "Successful"}, {"id": "x"}, {"id": None}])
def test_attach_without_a_module_id_is_a_502(moodle, rsps, answer):
    add(rsps, ATTACH, json=answer)

    assert raised(files.attach, moodle, ATTACH, ATTACH_FIELDS).status == 502
