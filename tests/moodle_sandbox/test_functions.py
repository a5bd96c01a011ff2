"""The sandbox's Moodle functions against the seed data, Moodle's rules and a real Moodle 5.0's recorded answers.

Most tests call ``SandboxSite.rest()`` on a fresh site; the golden bodies are read from ``tests/moodle_golden/`` and
compared byte for byte with ``php_json()``, the encoder the HTTP server uses (``test_golden.py`` replays every
recording over HTTP).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from lms_api.moodle.encoding import encode_params
from moodle_sandbox.errors import MoodleException
from moodle_sandbox.functions.enrol import _enrol as enrol_one
from moodle_sandbox.functions.messages import format_time
from moodle_sandbox.php import php_json
from moodle_sandbox.phpform import parse_php_form
from moodle_sandbox.records import Category, DraftFile
from moodle_sandbox.server import start_sandbox
from moodle_sandbox.site import FUNCTIONS, SandboxSite
from tests.moodle_sandbox.test_golden import golden_bytes, golden_json, golden_text

TOKEN = "functions-test-token"
GOLDEN_URL = "http://127.0.0.1:8088"
COURSE_KEYS_PUBLIC = [
    "id",
    "fullname",
    "displayname",
    "shortname",
    "courseimage",
    "categoryid",
    "categoryname",
    "sortorder",
    "summary",
    "summaryformat",
    "summaryfiles",
    "overviewfiles",
    "showactivitydates",
    "showcompletionconditions",
    "contacts",
    "enrollmentmethods",
]
COURSE_KEYS_EXTRA = [
    "idnumber",
    "format",
    "showgrades",
    "newsitems",
    "startdate",
    "enddate",
    "maxbytes",
    "showreports",
    "visible",
    "groupmode",
    "groupmodeforce",
    "defaultgroupingid",
    "enablecompletion",
    "completionnotify",
    "lang",
    "theme",
    "marker",
    "legacyfiles",
    "calendartype",
    "timecreated",
    "timemodified",
    "requested",
    "cacherev",
    "filters",
    "courseformatoptions",
]

# --- Byte-exact answers of the real Moodle 5.0 (production mode unless named DEBUG) ----------------------------------

GOLDEN_CREATE = golden_text("core_course_create_courses.json")
GOLDEN_UPDATE = golden_text("core_course_update_courses.json")
GOLDEN_GET_COURSES = golden_text("core_course_get_courses.json")
GOLDEN_GET_COURSES_BY_IDS = golden_text("core_course_get_courses__by_ids.json")
GOLDEN_DUPLICATE_SHORTNAME = golden_text("error_duplicate_shortname.json")
GOLDEN_INVALID_PARAMETER = golden_text("error_invalid_parameter_type_courseids.json")
GOLDEN_UPDATE_MISSING = golden_text("error_update_nonexistent_course.json")
GOLDEN_DEBUG_UPDATE_MISSING = golden_json("debug_mode/error_update_nonexistent_course.json")
GOLDEN_DEBUG_ENROL_MISSING_COURSE = golden_json("debug_mode/error_enrol_nonexistent_course.json")
GOLDEN_USERS_BY_EMAIL = golden_text("core_user_get_users_by_field.json")
GOLDEN_USERS_BY_EMAIL_TWO = golden_text("core_user_get_users_by_field__two.json")
GOLDEN_ENROLLED_USERS = golden_text("core_enrol_get_enrolled_users.json")
GOLDEN_TWO_UNREAD = golden_text("message_popup_get_popup_notifications__with_two_unread.json")
GOLDEN_LIMIT_1 = golden_text("message_popup_get_popup_notifications__limit1.json")
GOLDEN_NO_NOTIFICATIONS = golden_text("message_popup_get_popup_notifications.json")
GOLDEN_ENROL_MISSING_USER = golden_text("error_enrol_nonexistent_user.json")
GOLDEN_BY_IDS_MISSING = golden_text("core_course_get_courses_by_field__ids_missing.json")
GOLDEN_CATEGORY_MISSING_WARNING = golden_json("core_course_update_courses__category_missing.json")
GOLDEN_MISSING_RECORD = golden_text("core_course_search_courses__category_missing.json")


# --- Helpers ----------------------------------------------------------------------------------------------------------


def call(site: SandboxSite, function: str, **params: Any) -> Any:
    form, _ = parse_php_form([("wstoken", site.token), ("wsfunction", function), *encode_params(params)], 5000)
    return site.rest(form)


def error(site: SandboxSite, function: str, **params: Any) -> dict[str, Any]:
    with pytest.raises(MoodleException) as caught:
        call(site, function, **params)
    return site.error_body(caught.value)


class Clock:
    """A settable clock for ``SandboxSite(clock=...)``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def site() -> SandboxSite:
    return SandboxSite(TOKEN, base_url="http://moodle.test")


@pytest.fixture
def debug_site() -> SandboxSite:
    return SandboxSite(TOKEN, base_url="http://moodle.test", debug=True)


def golden_site(clock: Clock, debug: bool = False) -> SandboxSite:
    """A site shaped like the recorded one: only its front page, and the students without idnumbers."""
    site = SandboxSite(TOKEN, base_url=GOLDEN_URL, clock=clock, debug=debug)
    state = site.state
    for course_id in (2, 3, 4, 5):
        del state.courses[course_id]
    state.sequences["course"] = 1
    front = state.courses[1]
    front.shortname, front.fullname, front.timecreated, front.timemodified = (
        "realmoodle",
        "Real Moodle Test",
        1795619321,
        1795619361,
    )
    for user_id in (3, 4):
        state.users[user_id].idnumber = ""
    return site


def new_user(site: SandboxSite, username: str, **fields: Any) -> int:
    user = {
        "username": username,
        "password": "Sandbox#1234",
        "firstname": "New",
        "lastname": "User",
        "email": f"{username}@example.org",
        **fields,
    }
    return call(site, "core_user_create_users", users=[user])[0]["id"]


def new_course(site: SandboxSite, shortname: str, **fields: Any) -> int:
    course = {"fullname": f"Course {shortname}", "shortname": shortname, "categoryid": 1, **fields}
    return call(site, "core_course_create_courses", courses=[course])[0]["id"]


# --- Seed -------------------------------------------------------------------------------------------------------------


def test_a_new_site_holds_the_documented_seed(site):
    state = site.state
    assert {category.id: category.name for category in state.categories.values()} == {
        1: "Category 1",
        2: "Science",
        3: "Humanities",
    }
    courses = {
        course.id: (course.shortname, course.fullname, course.category, course.format, course.visible, course.idnumber)
        for course in state.courses.values()
    }
    assert courses == {
        1: ("sandbox", "lms_api Moodle sandbox", 0, "site", 1, ""),
        2: ("PY101", "Intro to Python", 1, "topics", 1, ""),
        3: ("CHEM101", "Chemistry Basics", 2, "topics", 1, ""),
        4: ("PHYS101", "Physics for Everyone", 2, "weeks", 1, ""),
        5: ("HIST201", "Modern History", 3, "topics", 0, "HIST-201"),
    }
    assert state.courses[2].summary == "Learn Python from scratch"
    users = {
        user.id: (user.username, user.firstname, user.lastname, user.email, user.idnumber)
        for user in state.users.values()
    }
    assert users == {
        1: ("guest", "Guest user", " ", "guest@example.com", ""),
        2: ("admin", "Admin", "User", "admin@example.com", ""),
        3: ("student1", "Ada", "Lovelace", "student1@example.com", "S001"),
        4: ("student2", "Alan", "Turing", "student2@example.com", "S002"),
        5: ("teacher1", "Grace", "Hopper", "teacher1@example.com", "T001"),
        6: ("student3", "Katherine", "Johnson", "student3@example.com", "S003"),
        7: (f"student4@example.com.{site.now() - 86400}", "Dorothy", "Vaughan", "166a50c910e390d922db4696e4c7747b", ""),
    }
    assert [user.id for user in state.users.values() if user.deleted] == [7]
    assert site.admin.id == 2 and site.admin.siteadmin
    assert {role.id: role.shortname for role in state.roles.values()} == {
        1: "manager",
        2: "coursecreator",
        3: "editingteacher",
        4: "teacher",
        5: "student",
        6: "guest",
        7: "user",
        8: "frontpage",
    }
    assert {role.id for role in state.roles.values() if role.course_assignable} == {1, 3, 4, 5}
    notifications = {n.id: (n.useridto, n.subject, n.timeread is None) for n in state.notifications.values()}
    assert notifications == {
        1: (2, "Grade released for PY101", True),
        2: (2, "New resource in PY101", True),
        3: (3, "Welcome to PY101", False),
        4: (3, "Assignment due soon", True),
    }
    assert state.notifications[2].timecreated > state.notifications[1].timecreated
    assert state.enrolments == {} and state.drafts == {} and state.course_modules == {}
    assert {course.id: course.contextid for course in state.courses.values()} == {1: 2, 2: 11, 3: 12, 4: 13, 5: 14}
    assert {category.id: category.coursecount for category in state.categories.values()} == {1: 1, 2: 2, 3: 1}


def test_two_sites_do_not_share_state(site):
    other = SandboxSite(TOKEN)
    new_course(site, "ONLYHERE")
    assert 6 in site.state.courses and 6 not in other.state.courses
    assert site.state.courses[2].sections is not other.state.courses[2].sections


def test_site_info_lists_every_registered_function_by_default(site):
    names = [function["name"] for function in call(site, "core_webservice_get_site_info")["functions"]]
    assert names == sorted(FUNCTIONS)
    assert {
        "core_course_get_courses",
        "core_course_get_courses_by_field",
        "core_course_search_courses",
        "core_course_create_courses",
        "core_course_update_courses",
        "core_user_get_users_by_field",
        "enrol_manual_enrol_users",
        "core_enrol_get_enrolled_users",
        "message_popup_get_popup_notifications",
        "message_popup_get_unread_popup_notification_count",
        "local_course_add_new_course_module_resource",
        "core_course_get_categories",
        "core_user_create_users",
    } <= set(names)


# --- The recorded Moodle, byte for byte -------------------------------------------------------------------------------


def test_create_update_and_list_answer_like_the_recorded_moodle():
    clock = Clock(1795619432)
    site = golden_site(clock)
    created = call(
        site, "core_course_create_courses", courses=[{"fullname": "Intro", "shortname": "PY101", "categoryid": 1}]
    )
    assert php_json(created).decode() == GOLDEN_CREATE
    update = {"id": 2, "fullname": "Intro to Python", "summary": "Updated via REST"}
    assert php_json(call(site, "core_course_update_courses", courses=[update])).decode() == GOLDEN_UPDATE
    assert php_json(call(site, "core_course_get_courses")).decode() == GOLDEN_GET_COURSES
    by_ids = call(site, "core_course_get_courses", options={"ids": [2]})
    assert php_json(by_ids).decode() == GOLDEN_GET_COURSES_BY_IDS
    duplicate = error(
        site, "core_course_create_courses", courses=[{"fullname": "Intro again", "shortname": "PY101", "categoryid": 1}]
    )
    assert php_json(duplicate).decode() == GOLDEN_DUPLICATE_SHORTNAME
    missing = call(site, "core_course_update_courses", courses=[{"id": 99999, "fullname": "Ghost"}])
    assert php_json(missing).decode() == GOLDEN_UPDATE_MISSING


def test_update_of_a_missing_course_names_the_query_in_debug_mode():
    site = golden_site(Clock(1795619432), debug=True)
    answer = call(site, "core_course_update_courses", courses=[{"id": 99999, "fullname": "Ghost"}])
    assert answer == GOLDEN_DEBUG_UPDATE_MISSING


def test_enrolment_and_participants_answer_like_the_recorded_moodle():
    site = golden_site(Clock(1795619440))
    new_course(site, "PY101", fullname="Intro to Python")
    enrolments = [{"roleid": 5, "userid": 3, "courseid": 2}, {"roleid": 5, "userid": 4, "courseid": 2}]
    answer = call(site, "enrol_manual_enrol_users", enrolments=enrolments)
    assert php_json(answer) == golden_bytes("enrol_manual_enrol_users.json") == b"null"
    assert php_json(call(site, "core_enrol_get_enrolled_users", courseid=2)).decode() == GOLDEN_ENROLLED_USERS


def test_enrolling_into_a_missing_course_is_invalidparameter_like_the_recorded_moodle(site, debug_site):
    enrolments = [{"roleid": 5, "userid": 3, "courseid": 99999}]
    body = error(site, "enrol_manual_enrol_users", enrolments=enrolments)
    assert php_json(body).decode() == golden_text("error_enrol_nonexistent_course.json")
    assert error(debug_site, "enrol_manual_enrol_users", enrolments=enrolments) == GOLDEN_DEBUG_ENROL_MISSING_COURSE


def test_users_by_field_answer_like_the_recorded_moodle():
    site = golden_site(Clock(1795619440))
    one = call(site, "core_user_get_users_by_field", field="email", values=["student1@example.com"])
    assert php_json(one).decode() == GOLDEN_USERS_BY_EMAIL
    two = call(
        site, "core_user_get_users_by_field", field="email", values=["student1@example.com", "student2@example.com"]
    )
    assert php_json(two).decode() == GOLDEN_USERS_BY_EMAIL_TWO
    nobody = call(site, "core_user_get_users_by_field", field="email", values=["nobody@example.com"])
    assert php_json(nobody) == golden_bytes("core_user_get_users_by_field__nomatch.json") == b"[]"


def test_notifications_answer_like_the_recorded_moodle():
    clock = Clock(1795619453)
    site = golden_site(clock)
    for notification in site.state.notifications.values():
        notification.timecreated = 1795619449
    two = call(site, "message_popup_get_popup_notifications", useridto=2)
    assert php_json(two).decode() == GOLDEN_TWO_UNREAD
    first = call(site, "message_popup_get_popup_notifications", useridto=2, limit=1, offset=0, newestfirst=True)
    assert php_json(first).decode() == GOLDEN_LIMIT_1
    two_unread = golden_bytes("message_popup_get_unread_popup_notification_count__two_unread.json")
    assert php_json(call(site, "message_popup_get_unread_popup_notification_count", useridto=2)) == two_unread == b"2"
    site.state.notifications = {}
    assert php_json(call(site, "message_popup_get_popup_notifications", useridto=2)).decode() == GOLDEN_NO_NOTIFICATIONS
    none_unread = golden_bytes("message_popup_get_unread_popup_notification_count.json")
    assert php_json(call(site, "message_popup_get_unread_popup_notification_count", useridto=2)) == none_unread == b"0"


def test_a_non_integer_course_id_is_invalidparameter_like_the_recorded_moodle(site):
    body = error(site, "core_course_get_courses", options={"ids": ["abc"]})
    assert php_json(body).decode() == GOLDEN_INVALID_PARAMETER


# --- core_course_get_courses ------------------------------------------------------------------------------------------


def test_get_courses_lists_every_course_with_the_front_page_in_id_order(site):
    courses = call(site, "core_course_get_courses")
    assert [course["id"] for course in courses] == [1, 2, 3, 4, 5]
    assert courses[0]["format"] == "site" and courses[0]["categoryid"] == 0
    assert "hiddensections" not in courses[0]
    assert courses[3]["courseformatoptions"] == [
        {"name": "hiddensections", "value": 1},
        {"name": "coursedisplay", "value": 0},
        {"name": "automaticenddate", "value": 1},
    ]


def test_get_courses_by_ids_skips_unknown_ids_and_repeats(site):
    courses = call(site, "core_course_get_courses", options={"ids": [5, 99, 2, 5]})
    assert [course["id"] for course in courses] == [2, 5]
    assert courses[1]["visible"] == 0 and courses[1]["idnumber"] == "HIST-201"


def test_names_are_formatted_like_format_string(site):
    course_id = new_course(site, "AMP", fullname="Q&A < R &amp; S")
    [course] = call(site, "core_course_get_courses", options={"ids": [course_id]})
    assert course["fullname"] == "Q&amp;A &lt; R &amp; S"
    assert site.state.courses[course_id].fullname == "Q&A < R &amp; S"


# --- core_course_get_courses_by_field ---------------------------------------------------------------------------------


def by_field(site: SandboxSite, field: str = "", value: str = "") -> dict[str, Any]:
    return call(site, "core_course_get_courses_by_field", field=field, value=value)


def test_by_field_without_a_field_lists_all_courses_with_the_front_page(site):
    answer = by_field(site)
    assert [course["id"] for course in answer["courses"]] == [1, 2, 3, 4, 5]
    assert answer["warnings"] == []
    assert list(answer["courses"][1]) == COURSE_KEYS_PUBLIC + COURSE_KEYS_EXTRA
    front = answer["courses"][0]
    assert (front["categoryname"], front["enrollmentmethods"], front["courseformatoptions"]) == ("", [], [])


@pytest.mark.parametrize(
    ("field", "value", "ids"),
    [
        ("id", "2", [2]),
        ("id", "99", []),
        ("id", "abc", []),
        ("category", "2", [3, 4]),
        ("category", "0", [1]),
        ("shortname", "CHEM101", [3]),
        ("shortname", "chem101", []),
        ("idnumber", "HIST-201", [5]),
        ("idnumber", "nothing", []),
        ("ids", "4,2,4", [4, 2]),
    ],
)
def test_by_field_finds_courses_by_each_field(site, field, value, ids):
    answer = by_field(site, field, value)
    assert [course["id"] for course in answer["courses"]] == ids
    assert answer["warnings"] == []


def test_by_field_public_part_and_extras(site):
    [course] = by_field(site, "id", "2")["courses"]
    assert (course["categoryname"], course["sortorder"], course["enrollmentmethods"]) == (
        "Category 1",
        10001,
        ["manual"],
    )
    assert (course["summaryfiles"], course["overviewfiles"], course["contacts"]) == ([], [], [])
    assert course["courseformatoptions"][-1] == {"name": "indentation", "value": "1"}


def test_every_course_has_the_generated_image_of_its_context_and_the_site_filters(site):
    courses = by_field(site)["courses"]
    image = "http://moodle.test/pluginfile.php/{}/course/generated/course.svg"
    assert [course["courseimage"] for course in courses] == [image.format(context) for context in (2, 11, 12, 13, 14)]
    recorded = golden_json("core_course_get_courses_by_field__id.json")["courses"][0]["filters"]
    assert all(course["filters"] == recorded for course in courses)
    assert [course["courseimage"] for course in search(site, "101")["courses"]] == [
        "http://moodle.test/pluginfile.php/11/course/generated/course.svg",
        "http://moodle.test/pluginfile.php/13/course/generated/course.svg",
        "http://moodle.test/pluginfile.php/12/course/generated/course.svg",
    ]


def test_new_courses_and_users_take_the_next_context_ids_even_when_rolled_back(site):
    assert new_course(site, "CTX1") == 6
    assert site.state.courses[6].contextid == 15
    taken = {"fullname": "Taken", "shortname": "CTX1", "categoryid": 1}
    bad = [{"fullname": "Rolled back", "shortname": "CTX2", "categoryid": 1}, taken]
    assert error(site, "core_course_create_courses", courses=bad)["errorcode"] == "shortnametaken"
    assert new_user(site, "ctxuser") == 8
    assert new_course(site, "CTX3") == 8
    # 16 went to the rolled-back course (kept used, as a PostgreSQL sequence is) and 17 to the user.
    assert site.state.courses[8].contextid == 18


@pytest.mark.parametrize(
    ("recording", "function", "params"),
    [
        (
            "core_course_get_courses_by_field__id.json",
            "core_course_get_courses_by_field",
            {"field": "id", "value": "2"},
        ),
        (
            "core_course_search_courses.json",
            "core_course_search_courses",
            {"criterianame": "search", "criteriavalue": "Python"},
        ),
    ],
)
def test_course_keys_come_in_the_recorded_order(site, recording, function, params):
    [recorded] = golden_json(recording)["courses"]
    [course] = call(site, function, **params)["courses"]
    assert list(course) == list(recorded)
    assert list(recorded) == (COURSE_KEYS_PUBLIC + COURSE_KEYS_EXTRA if "by_field" in recording else COURSE_KEYS_PUBLIC)


@pytest.mark.parametrize("value", ["99,3", "3,99", "99", "3,0", "3,03", "0"])
def test_by_field_ids_fails_with_a_php_error_when_one_course_is_missing(site, debug_site, value):
    # A missing id, 0 (no course), or an id with a leading zero (its context is found, the course is not).
    body = error(site, "core_course_get_courses_by_field", field="ids", value=value)
    assert php_json(body).decode() == GOLDEN_BY_IDS_MISSING
    assert error(debug_site, "core_course_get_courses_by_field", field="ids", value=value) == body


def test_by_field_ids_keeps_the_order_asked_and_drops_repeats(site):
    assert [course["id"] for course in by_field(site, "ids", "5,1,3,5,1")["courses"]] == [5, 1, 3]
    assert [course["id"] for course in by_field(site, "ids", " 4, x2 ")["courses"]] == [4, 2]  # PARAM_SEQUENCE


def test_by_field_ids_past_the_bigint_range_fails_in_the_database(debug_site):
    body = error(debug_site, "core_course_get_courses_by_field", field="ids", value="2,99999999999999999999")
    assert (body["exception"], body["errorcode"]) == ("dml_read_exception", "dmlreadexception")
    assert body["debuginfo"].startswith('ERROR:  value "99999999999999999999" is out of range for type bigint\n')


def test_by_field_a_single_missing_id_is_an_empty_list_like_the_recorded_moodle(site):
    assert php_json(by_field(site, "id", "987654")).decode() == golden_text(
        "core_course_get_courses_by_field__id_missing.json"
    )


def test_by_field_ids_with_an_empty_id_fails_in_the_database(site, debug_site):
    body = error(site, "core_course_get_courses_by_field", field="ids", value="2,,3")
    assert (body["exception"], body["errorcode"]) == ("dml_read_exception", "dmlreadexception")
    assert body["message"] == "Error reading from database"
    debuginfo = error(debug_site, "core_course_get_courses_by_field", field="ids", value="")["debuginfo"]
    assert debuginfo.startswith('ERROR:  invalid input syntax for type bigint: ""\nSELECT DISTINCT cc.id')
    assert debuginfo.endswith("WHERE c.id = ?\n[array (\n  0 => '',\n)]")  # get_in_or_equal() of one id


def test_by_field_refuses_an_unknown_field(site, debug_site):
    assert php_json(error(site, "core_course_get_courses_by_field", field="name", value="x")).decode() == (
        GOLDEN_INVALID_PARAMETER
    )
    assert error(debug_site, "core_course_get_courses_by_field", field="name", value="x")["debuginfo"] == (
        "Invalid field name"
    )
    # PARAM_ALPHA: anything but letters is refused before the function runs.
    assert error(debug_site, "core_course_get_courses_by_field", field="short_name")["debuginfo"].startswith(
        'field => Invalid parameter value detected (Invalid external api parameter: the value is "short_name", '
        'the server was expecting "alpha" type)'
    )


def test_by_field_lists_editing_teachers_as_contacts(site):
    call(
        site,
        "enrol_manual_enrol_users",
        enrolments=[{"roleid": 3, "userid": 5, "courseid": 2}, {"roleid": 5, "userid": 3, "courseid": 2}],
    )
    [course] = by_field(site, "id", "2")["courses"]
    assert course["contacts"] == [{"id": 5, "fullname": "Grace Hopper"}]


# --- core_course_search_courses ---------------------------------------------------------------------------------------


def search(site: SandboxSite, value: str, **options: Any) -> dict[str, Any]:
    return call(site, "core_course_search_courses", criterianame="search", criteriavalue=value, **options)


def found(answer: dict[str, Any]) -> list[str]:
    return [course["shortname"] for course in answer["courses"]]


@pytest.mark.parametrize(
    ("value", "shortnames"),
    [
        ("python", ["PY101"]),
        ("PYTHON", ["PY101"]),
        ("intro  python", ["PY101"]),
        ("python chemistry", []),
        ("scratch", ["PY101"]),  # the summary counts
        ("HIST-201", ["HIST201"]),  # the idnumber counts, hidden courses are found by the admin
        ("sandbox", []),  # never the front page
        ("PY_01", ["PY101"]),  # SQL LIKE wildcard
        ("101", ["PY101", "PHYS101", "CHEM101"]),  # category sort order
        ("+Physics", ["PHYS101"]),
        ("+Phys", []),
        ("101 -Physics", ["PY101", "CHEM101"]),
        ("", []),
        ("   ", []),
    ],
)
def test_search_matches_every_word_in_names_idnumber_or_summary(site, value, shortnames):
    answer = search(site, value)
    assert found(answer) == shortnames
    assert answer["total"] == len(shortnames) and answer["warnings"] == []


def test_search_answers_the_public_structure_only(site):
    [course] = search(site, "python")["courses"]
    assert list(course) == COURSE_KEYS_PUBLIC


def test_search_pages_count_every_match(site):
    assert found(search(site, "1", perpage=2)) == ["PY101", "PHYS101"]
    second = search(site, "1", perpage=2, page=1)
    assert (found(second), second["total"]) == (["CHEM101", "HIST201"], 4)
    assert search(site, "1", perpage=2, page=5) == {"total": 4, "courses": [], "warnings": []}
    assert len(search(site, "1", perpage=0)["courses"]) == 4


def test_search_filters_by_completion_and_enrolment_like_moodle(site):
    new_course(site, "NOCOMP1", enablecompletion=0)
    assert "NOCOMP1" not in found(search(site, "course", onlywithcompletion=True))
    assert "NOCOMP1" in found(search(site, "course"))
    assert search(site, "101", limittoenrolled=True) == {"total": 0, "courses": [], "warnings": []}
    call(site, "enrol_manual_enrol_users", enrolments=[{"roleid": 1, "userid": 2, "courseid": 3}])
    assert search(site, "101", limittoenrolled=True)["courses"][0]["shortname"] == "CHEM101"


def test_search_by_module_block_and_tag(site):
    blocks = call(site, "core_course_search_courses", criterianame="blocklist", criteriavalue="1")
    assert blocks == {"total": 0, "courses": [], "warnings": []}
    assert call(site, "core_course_search_courses", criterianame="tagid", criteriavalue="1")["total"] == 0
    modules = call(site, "core_course_search_courses", criterianame="modulelist", criteriavalue="resource")
    assert modules["total"] == 0
    call(
        site,
        "local_course_add_new_course_module_resource",
        courseid="3",
        sectionnum="1",
        itemid="0",
        displayname="Lab notes",
        visible="true",
    )
    modules = call(site, "core_course_search_courses", criterianame="modulelist", criteriavalue="resource")
    assert found(modules) == ["CHEM101"]


def test_search_refuses_an_unknown_criterion(debug_site):
    body = error(debug_site, "core_course_search_courses", criterianame="fulltext", criteriavalue="x")
    assert body["debuginfo"] == (
        "Invalid value for criterianame parameter (value: fulltext),"
        "allowed values are: search,modulelist,blocklist,tagid"
    )


# --- core_course_create_courses ---------------------------------------------------------------------------------------


def create_error(site: SandboxSite, **fields: Any) -> dict[str, Any]:
    course = {"fullname": "Any", "shortname": "ANY1", "categoryid": 1, **fields}
    return error(site, "core_course_create_courses", courses=[course])


def test_created_courses_get_the_next_ids_and_are_listed(site):
    created = call(
        site,
        "core_course_create_courses",
        courses=[
            {
                "fullname": "Data Science",
                "shortname": "DS100",
                "categoryid": 2,
                "idnumber": "DS-100",
                "summary": "Numbers",
                "startdate": 1767225600,
                "enddate": 0,
                "visible": 0,
                "format": "weeks",
                "numsections": 6,
            },
            {"fullname": "Latin", "shortname": "LAT1", "categoryid": 3},
        ],
    )
    assert created == [{"id": 6, "shortname": "DS100"}, {"id": 7, "shortname": "LAT1"}]
    [course] = call(site, "core_course_get_courses", options={"ids": [6]})
    assert (course["categoryid"], course["idnumber"], course["visible"], course["format"], course["numsections"]) == (
        2,
        "DS-100",
        0,
        "weeks",
        6,
    )
    assert course["categorysortorder"] == 20001  # a new course goes first in its category
    assert site.state.courses[4].sortorder == 20002 and site.state.courses[3].sortorder == 20003
    assert found(search(site, "data science")) == ["DS100"]


def test_create_applies_the_site_defaults(site):
    course_id = new_course(site, "DEF1")
    course = site.state.courses[course_id]
    assert (course.format, course.summaryformat, course.showgrades, course.newsitems, course.visible) == (
        "topics",
        1,
        1,
        5,
        1,
    )
    assert (course.enablecompletion, course.showcompletionconditions, course.startdate, course.enddate) == (
        1,
        True,
        0,
        0,
    )
    assert course.format_options == {"hiddensections": 1, "coursedisplay": 0}
    assert course.timecreated == course.timemodified == site.now()


def test_create_takes_format_options(site):
    course_id = new_course(
        site,
        "OPT1",
        hiddensections=0,
        courseformatoptions=[{"name": "coursedisplay", "value": "1"}, {"name": "unknown", "value": "x"}],
    )
    assert site.state.courses[course_id].format_options == {"hiddensections": 0, "coursedisplay": 1}


def test_a_missing_category_is_errorcatcontextnotvalid_with_the_inner_message(site, debug_site):
    body = create_error(site, categoryid=99)
    assert body == {
        "exception": "core\\exception\\moodle_exception",
        "errorcode": "errorcatcontextnotvalid",
        "message": "You cannot execute functions in the category context (category id:99). "
        "The context error message was: Invalid parameter value detected",
    }
    assert create_error(debug_site, categoryid=99)["message"].endswith(
        "was: Invalid parameter value detected (Context does not exist)"
    )


@pytest.mark.parametrize(
    ("fields", "errorcode", "message"),
    [
        ({"shortname": "PY101"}, "shortnametaken", "Short name is already used for another course (PY101)"),
        ({"shortname": "sandbox"}, "shortnametaken", "Short name is already used for another course (sandbox)"),
        ({"idnumber": "HIST-201"}, "courseidnumbertaken", "ID number is already used for another course (HIST-201)"),
        ({"fullname": "  "}, "errorinvalidparam", 'The param "fullname" is invalid.'),
        ({"shortname": " "}, "errorinvalidparam", 'The param "shortname" is invalid.'),
        ({"lang": "fr"}, "errorinvalidparam", 'The param "lang" is invalid.'),
        (
            {"startdate": 10, "enddate": 5},
            "enddatebeforestartdate",
            "The course end date must be after the start date.",
        ),
        ({"enddate": 5}, "nostartdatenoenddate", "A course end date can only be set if a start date is also set."),
        ({"summaryformat": 7}, "formatnotsupported", "[[formatnotsupported]]"),
    ],
)
def test_create_refuses_bad_courses_with_moodles_errors(site, fields, errorcode, message):
    body = create_error(site, **fields)
    assert body == {"exception": "core\\exception\\moodle_exception", "errorcode": errorcode, "message": message}
    assert sorted(site.state.courses) == [1, 2, 3, 4, 5]


def test_create_accepts_a_zero_idnumber_twice_and_an_end_date_of_zero(site):
    new_course(site, "ZERO1", idnumber="0", startdate=100, enddate=0)
    new_course(site, "ZERO2", idnumber="0")  # "0" is empty() to PHP, so never checked
    assert [course.idnumber for course in site.state.courses.values()].count("0") == 2


def test_a_shortname_with_tags_is_refused_as_param_text(debug_site):
    body = create_error(debug_site, shortname="<b>X</b>")
    assert body["errorcode"] == "invalidparameter"
    assert 'the value is "<b>X</b>", the server was expecting "text" type' in body["debuginfo"]


def test_create_is_all_or_nothing_and_keeps_used_ids_used(site):
    courses = [
        {"fullname": "Fine", "shortname": "FINE1", "categoryid": 1},
        {"fullname": "Also fine", "shortname": "FINE2", "categoryid": 2},
        {"fullname": "Broken", "shortname": "FINE1", "categoryid": 1},  # taken by the first one of this call
    ]
    body = error(site, "core_course_create_courses", courses=courses)
    assert body["errorcode"] == "shortnametaken"
    assert sorted(site.state.courses) == [1, 2, 3, 4, 5]
    assert site.state.courses[2].sortorder == 10001 and site.state.courses[3].sortorder == 20002
    assert found(search(site, "fine")) == []
    # Like a PostgreSQL sequence, the ids of the rolled-back inserts are not given again.
    assert new_course(site, "AFTER1") == 8


# --- core_course_update_courses ---------------------------------------------------------------------------------------


def update(site: SandboxSite, *courses: dict[str, Any]) -> dict[str, Any]:
    return call(site, "core_course_update_courses", courses=list(courses))


def test_update_changes_only_the_given_fields_and_timemodified(site):
    clock = Clock(1800000000)
    site = SandboxSite(TOKEN, clock=clock)
    clock.now += 60
    assert update(site, {"id": 3, "fullname": "Chemistry Advanced", "visible": 0, "summary": "New"}) == {"warnings": []}
    course = site.state.courses[3]
    assert (course.fullname, course.visible, course.summary, course.shortname) == (
        "Chemistry Advanced",
        0,
        "New",
        "CHEM101",
    )
    assert course.timemodified == 1800000060 and course.timecreated < course.timemodified


def test_update_failures_are_warnings_and_earlier_courses_stay_updated(site):
    answer = update(
        site,
        {"id": 2, "summary": "First one applies"},
        {"id": 3, "shortname": "PY101"},
        {"id": 4, "fullname": " "},
        {"id": 5, "idnumber": "HIST-201"},  # its own idnumber: no change, no warning
    )
    assert answer == {
        "warnings": [
            {
                "item": "course",
                "itemid": 3,
                "warningcode": "shortnametaken",
                "message": "Short name is already used for another course (PY101)",
            },
            {
                "item": "course",
                "itemid": 4,
                "warningcode": "errorinvalidparam",
                "message": 'The param "fullname" is invalid.',
            },
        ]
    }
    assert site.state.courses[2].summary == "First one applies"
    assert site.state.courses[3].shortname == "CHEM101"


@pytest.mark.parametrize(
    ("fields", "warningcode", "message"),
    [
        ({"id": 1, "fullname": "Front"}, "invalidcourse", "Invalid course"),
        (
            {"id": 2, "idnumber": "HIST-201"},
            "courseidnumbertaken",
            "ID number is already used for another course (HIST-201)",
        ),
        (
            {"id": 2, "enddate": 5},
            "nostartdatenoenddate",
            "A course end date can only be set if a start date is also set.",
        ),
        (
            {"id": 2, "startdate": 20, "enddate": 10},
            "enddatebeforestartdate",
            "The course end date must be after the start date.",
        ),
        ({"id": 2, "summaryformat": 3}, "formatnotsupported", "[[formatnotsupported]]"),
        ({"id": 2, "categoryid": 77}, "invalidrecordunknown", "Can't find data record in database."),
        ({"id": 2, "lang": "de"}, "errorinvalidparam", 'The param "lang" is invalid.'),
    ],
)
def test_update_warnings_carry_moodles_errorcodes(site, fields, warningcode, message):
    before = site.state.courses[fields["id"]].fullname
    [warning] = update(site, fields)["warnings"]
    assert (warning["warningcode"], warning["message"]) == (warningcode, message)
    assert site.state.courses[fields["id"]].fullname == before


def test_update_moves_a_course_to_the_top_of_another_category(site):
    update(site, {"id": 2, "categoryid": 2})
    assert (site.state.courses[2].category, site.state.courses[2].sortorder) == (2, 20001)
    assert found(search(site, "101")) == ["PY101", "PHYS101", "CHEM101"]
    assert [course["id"] for course in by_field(site, "category", "2")["courses"]] == [2, 3, 4]


def test_update_takes_format_options_and_format(site):
    update(site, {"id": 2, "hiddensections": 0}, {"id": 3, "format": "weeks"})
    assert site.state.courses[2].format_options["hiddensections"] == 0
    assert site.state.courses[3].format_options == {"hiddensections": 1, "coursedisplay": 0, "automaticenddate": 1}


def test_update_of_a_missing_category_names_the_table_in_debug_mode(debug_site):
    [warning] = update(debug_site, {"id": 2, "categoryid": 77})["warnings"]
    assert warning["warningcode"] == "invalidrecord"
    assert warning["message"] == (
        "Can't find data record in database table course_categories. "
        "(SELECT id,parent FROM {course_categories} WHERE id = ?\n[array (\n  0 => 77,\n)])"
    )


def test_update_needs_a_course_id(debug_site):
    body = error(debug_site, "core_course_update_courses", courses=[{"fullname": "No id"}])
    assert body["debuginfo"].startswith("courses => Invalid parameter value detected (Missing required key")


def test_a_move_into_a_missing_category_is_written_then_warned_like_the_recorded_moodle():
    clock = Clock(1800000000)
    site = SandboxSite(TOKEN, clock=clock)
    course = site.state.courses[2]
    before = (course.sortorder, course.timemodified, course.cacherev)
    clock.now += 60
    answer = update(site, {"id": 2, "categoryid": 999999, "fullname": "Moved away", "summary": "Still saved"})
    recorded = GOLDEN_CATEGORY_MISSING_WARNING["warnings"][0]
    assert answer == {"warnings": [recorded | {"itemid": 2}]}
    # Everything update_course() writes before it looks for the category's context stays written.
    assert (course.category, course.fullname, course.summary) == (999999, "Moved away", "Still saved")
    assert course.visible == 0  # $DB->get_record() of the category found nothing: empty($newcategory->visible)
    assert (course.timemodified, course.cacherev) == (1800000060, 1800000060)
    # fix_course_sortorder() never runs: the sort order and the stored course count of the old category stay.
    assert course.sortorder == before[0] == 10001
    assert site.state.categories[1].coursecount == 1
    [listed] = call(site, "core_course_get_courses", options={"ids": [2]})
    assert (listed["categoryid"], listed["fullname"], listed["visible"]) == (999999, "Moved away", 0)


def test_a_move_into_a_missing_category_names_the_category_query_in_debug_mode(debug_site):
    [warning] = update(debug_site, {"id": 2, "categoryid": 999999})["warnings"]
    assert warning == {
        "item": "course",
        "itemid": 2,
        "warningcode": "invalidrecord",
        "message": "Can't find data record in database table course_categories. "
        "(SELECT id,parent FROM {course_categories} WHERE id = ?\n[array (\n  0 => 999999,\n)])",
    }
    assert debug_site.state.courses[2].category == 999999


def test_a_visibility_sent_with_the_move_is_kept(site):
    update(site, {"id": 5, "categoryid": 999999, "visible": 1})  # HIST201 was hidden: a change, so no category check
    update(site, {"id": 3, "categoryid": 999999, "visible": 1})  # CHEM101 was visible: no change, so hidden
    assert (site.state.courses[5].visible, site.state.courses[3].visible) == (1, 0)


def test_a_move_into_a_hidden_category_hides_the_course(site):
    site.state.categories[3].visible = 0
    assert update(site, {"id": 2, "categoryid": 3}) == {"warnings": []}
    assert (site.state.courses[2].category, site.state.courses[2].visible) == (3, 0)
    assert site.state.courses[2].sortorder == 30001


def test_a_course_in_a_missing_category_is_listed_but_breaks_every_search_that_finds_it(site, debug_site):
    for each in (site, debug_site):
        update(each, {"id": 3, "categoryid": 999999})
    [course] = by_field(site, "id", "3")["courses"]
    assert (course["categoryid"], course["categoryname"], course["visible"]) == (999999, "", 0)
    assert [course["id"] for course in by_field(site, "category", "999999")["courses"]] == [3]
    assert [course["id"] for course in by_field(site, "ids", "3,2")["courses"]] == [3, 2]
    body = error(site, "core_course_search_courses", criterianame="search", criteriavalue="101")
    assert php_json(body).decode() == GOLDEN_MISSING_RECORD
    # Also when the course is not on the page asked for: every match is checked before paging.
    assert error(site, "core_course_search_courses", criterianame="search", criteriavalue="101", perpage=1) == body
    assert search(site, "python")["total"] == 1  # searches that do not find it still work
    debug = error(debug_site, "core_course_search_courses", criterianame="search", criteriavalue="Chemistry")
    assert (debug["errorcode"], debug["debuginfo"]) == (
        "invalidrecord",
        "SELECT id,parent FROM {course_categories} WHERE id = ?\n[array (\n  0 => 999999,\n)]",
    )


def test_a_search_finds_a_course_in_a_missing_category_the_token_user_is_enrolled_in(site):
    update(site, {"id": 3, "categoryid": 999999})
    call(site, "enrol_manual_enrol_users", enrolments=[{"roleid": 3, "userid": 2, "courseid": 3}])
    [course] = search(site, "chemistry")["courses"]
    assert (course["id"], course["categoryname"]) == (3, "")
    call(site, "local_course_add_new_course_module_resource", courseid="4", sectionnum="1", itemid="0",
         displayname="Notes", visible="true")  # fmt: skip
    update(site, {"id": 4, "categoryid": 999998})
    body = error(site, "core_course_search_courses", criterianame="modulelist", criteriavalue="resource")
    assert body["errorcode"] == "invalidrecordunknown"


def test_a_course_moved_back_into_a_real_category_is_placed_and_counted(site):
    update(site, {"id": 2, "categoryid": 999999})
    assert update(site, {"id": 2, "categoryid": 2}) == {"warnings": []}
    course = site.state.courses[2]
    assert (course.category, course.sortorder, course.visible) == (2, 20001, 0)
    assert {category.id: category.coursecount for category in site.state.categories.values()} == {1: 0, 2: 3, 3: 1}
    assert search(site, "python")["total"] == 1


def test_a_format_no_plugin_provides_is_stored_as_moodle_5_stores_it(site):
    course_id = new_course(site, "BOGUS", format="bogus")
    assert site.state.courses[course_id].format == "bogus"
    assert update(site, {"id": 2, "format": "nosuchformat"}) == {"warnings": []}
    [course] = call(site, "core_course_get_courses", options={"ids": [2, course_id]})[:1]
    assert course["format"] == "nosuchformat"


def test_updating_a_course_already_in_a_missing_category_works(site):
    update(site, {"id": 2, "categoryid": 999999})
    assert update(site, {"id": 2, "fullname": "Still lost", "categoryid": 999999}) == {"warnings": []}
    assert site.state.courses[2].fullname == "Still lost"


# --- core_user_get_users_by_field -------------------------------------------------------------------------------------


def user_ids(site: SandboxSite, field: str, *values: str) -> list[int]:
    return [user["id"] for user in call(site, "core_user_get_users_by_field", field=field, values=list(values))]


@pytest.mark.parametrize(
    ("field", "values", "ids"),
    [
        ("id", ["6", "3", "99"], [3, 6]),
        ("username", ["teacher1", "nobody"], [5]),
        ("email", ["student2@example.com", "admin@example.com"], [2, 4]),
        ("email", ["Student2@example.com"], []),  # exact, like PostgreSQL
        ("idnumber", ["S003", "S001"], [3, 6]),
        ("id", ["3.0", " 4"], [3, 4]),  # PHP's loose == lets these through
    ],
)
def test_users_by_field_finds_users_in_id_order(site, field, values, ids):
    assert user_ids(site, field, *values) == ids


DELETED_USERNAME_PREFIX = "student4@example.com."


@pytest.mark.parametrize(
    ("field", "values"),
    [("id", ["3", "7", "99"]), ("id", ["7"]), ("idnumber", [""]), ("username", [DELETED_USERNAME_PREFIX])],
    ids=["among-others", "alone", "empty-idnumber", "mangled-username"],
)
def test_a_deleted_user_found_fails_the_whole_lookup_as_its_missing_context_does_in_moodle(
    site, debug_site, field, values
):
    """user_get_user_details_courses() asks for the user's context, which delete_user() removed; context_user reads
    the user again with deleted = 0 and MUST_EXIST. An empty idnumber matches the deleted user (Moodle clears it)."""
    if field == "username":
        values = [site.state.users[7].username]
    assert error(site, "core_user_get_users_by_field", field=field, values=values) == {
        "exception": "dml_missing_record_exception",
        "errorcode": "invalidrecordunknown",
        "message": "Can't find data record in database.",
    }
    if field == "username":
        values = [debug_site.state.users[7].username]
    debug = error(debug_site, "core_user_get_users_by_field", field=field, values=values)
    assert (debug["errorcode"], debug["message"]) == ("invaliduser", "Invalid user (SELECT id FROM {user} WHERE id = ? "
        "AND deleted = ?\n[array (\n  0 => 7,\n  1 => 0,\n)])")  # fmt: skip


def test_a_deleted_users_old_username_and_email_find_nobody(site):
    assert user_ids(site, "username", "student4") == []
    assert user_ids(site, "email", "student4@example.com") == []


def test_a_user_has_the_admin_view_of_the_profile(site):
    [user] = call(site, "core_user_get_users_by_field", field="username", values=["student3"])
    assert user == {
        "id": 6,
        "username": "student3",
        "firstname": "Katherine",
        "lastname": "Johnson",
        "fullname": "Katherine Johnson",
        "email": "student3@example.com",
        "department": "",
        "idnumber": "S003",
        "firstaccess": 0,
        "lastaccess": 0,
        "auth": "manual",
        "suspended": False,
        "confirmed": True,
        "lang": "en",
        "theme": "",
        "timezone": "99",
        "mailformat": 1,
        "trackforums": 0,
        "profileimageurlsmall": "http://moodle.test/theme/image.php/boost/core/1795619406/u/f2",
        "profileimageurl": "http://moodle.test/theme/image.php/boost/core/1795619406/u/f1",
    }


@pytest.mark.parametrize(
    ("field", "value", "debuginfo"),
    [
        ("username", "Bob", "The field 'username' value is invalid: Bob(cleaned value: bob)"),
        ("username", " admin", "The field 'username' value is invalid:  admin(cleaned value: admin)"),
        ("id", "abc", "The field 'id' value is invalid: abc(cleaned value: 0)"),
        ("id", "2x", "The field 'id' value is invalid: 2x(cleaned value: 2)"),
        ("email", "a@example.com ", "The field 'email' value is invalid: a@example.com (cleaned value: a@example.com)"),
    ],
)
def test_a_value_that_cleaning_changes_is_invalidparameter(site, debug_site, field, value, debuginfo):
    params = {"field": field, "values": [value]}
    assert php_json(error(site, "core_user_get_users_by_field", **params)).decode() == GOLDEN_INVALID_PARAMETER
    assert error(debug_site, "core_user_get_users_by_field", **params)["debuginfo"] == debuginfo


def test_an_unsupported_field_is_a_coding_error(site, debug_site):
    body = error(site, "core_user_get_users_by_field", field="lastname", values=["Turing"])
    assert body == {
        "exception": "core\\exception\\coding_exception",
        "errorcode": "codingerror",
        "message": "Coding error detected, it must be fixed by a programmer: invalid field parameter",
    }
    debug = error(debug_site, "core_user_get_users_by_field", field="lastname", values=["Turing"])
    assert debug["debuginfo"] == "The search field 'lastname' is not supported, look at the web service documentation"


# --- enrol_manual_enrol_users and core_enrol_get_enrolled_users -------------------------------------------------------


def enrol(site: SandboxSite, *enrolments: dict[str, Any]) -> Any:
    return call(site, "enrol_manual_enrol_users", enrolments=list(enrolments))


def participants(site: SandboxSite, course_id: int, **options: str) -> list[dict[str, Any]]:
    listed = [{"name": name, "value": value} for name, value in options.items()]
    return call(site, "core_enrol_get_enrolled_users", courseid=course_id, options=listed)


def test_enrolled_users_are_listed_with_roles_and_courses(site):
    assert (
        enrol(
            site,
            {"roleid": 5, "userid": 4, "courseid": 2},
            {"roleid": 3, "userid": 5, "courseid": 2},
            {"roleid": 5, "userid": 4, "courseid": 5},
        )
        is None
    )
    users = participants(site, 2)
    assert [user["id"] for user in users] == [4, 5]
    assert users[0]["roles"] == [{"roleid": 5, "name": "", "shortname": "student", "sortorder": 0}]
    # A student's hidden course (HIST201) is not among their courses; a teacher's would be.
    assert users[0]["enrolledcourses"] == [{"id": 2, "fullname": "Intro to Python", "shortname": "PY101"}]
    assert users[0]["idnumber"] == "S002" and "auth" not in users[0]
    assert participants(site, 3) == []


def test_enrolling_again_updates_the_enrolment_and_adds_the_role(site):
    enrol(site, {"roleid": 5, "userid": 3, "courseid": 2})
    enrol(
        site,
        {"roleid": 4, "userid": 3, "courseid": 2, "suspend": 1},
        {"roleid": 5, "userid": 3, "courseid": 2, "suspend": 1},
    )
    enrolment = site.state.enrolments[(2, 3)]
    assert (enrolment.roleids, enrolment.status) == ([5, 4], 1)
    [user] = participants(site, 2)
    assert [role["shortname"] for role in user["roles"]] == ["teacher", "student"]
    assert "enrolledcourses" not in user  # no active enrolment left
    assert participants(site, 2, onlyactive="1") == []
    assert [user["id"] for user in participants(site, 2, onlysuspended="1")] == [3]


def test_an_enrolment_outside_its_dates_is_not_active(site):
    now = site.now()
    enrol(
        site,
        {"roleid": 5, "userid": 6, "courseid": 3, "timestart": now + 3600},
        {"roleid": 5, "userid": 4, "courseid": 3, "timestart": now - 3600, "timeend": now + 3600},
    )
    assert [user["id"] for user in participants(site, 3, onlyactive="1")] == [4]
    assert [user["id"] for user in participants(site, 3)] == [4, 6]


def test_enrolled_users_options_sort_and_limit(site):
    enrol(site, *({"roleid": 5, "userid": user_id, "courseid": 2} for user_id in (3, 4, 5, 6)))
    assert [user["id"] for user in participants(site, 2, sortby="lastname")] == [5, 6, 3, 4]
    assert [user["id"] for user in participants(site, 2, sortby="firstname", sortdirection="desc")] == [6, 5, 4, 3]
    assert [user["id"] for user in participants(site, 2, limitfrom="1", limitnumber="2")] == [4, 5]


def test_enrolled_users_refuse_a_bad_sort(debug_site):
    body = error(
        debug_site, "core_enrol_get_enrolled_users", courseid=2, options=[{"name": "sortby", "value": "email"}]
    )
    assert body["debuginfo"] == (
        "Invalid value for sortby parameter (value: email), allowed values are: id,firstname,lastname,siteorder"
    )


def test_enrolled_users_of_a_missing_course(site, debug_site):
    assert error(site, "core_enrol_get_enrolled_users", courseid=99) == {
        "exception": "dml_missing_record_exception",
        "errorcode": "invalidrecordunknown",
        "message": "Can't find data record in database.",
    }
    debug = error(debug_site, "core_enrol_get_enrolled_users", courseid=99)
    assert (debug["errorcode"], debug["debuginfo"]) == (
        "invalidrecord",
        "SELECT * FROM {course} WHERE id = ?\n[array (\n  0 => 99,\n)]",
    )
    assert debug["message"].startswith("Can't find data record in database table course. (SELECT * FROM {course}")


@pytest.mark.parametrize(
    ("enrolment", "errorcode", "message"),
    [
        (
            {"roleid": 7, "userid": 3, "courseid": 2},
            "wsusercannotassign",
            "You don't have the permission to assign this role (7) to this user (3) in this course (2).",
        ),
        (
            {"roleid": 99, "userid": 4, "courseid": 3},
            "wsusercannotassign",
            "You don't have the permission to assign this role (99) to this user (4) in this course (3).",
        ),
        (
            {"roleid": 5, "userid": 3, "courseid": 1},
            "wsnoinstance",
            "Manual enrolment plugin instance doesn't exist or is disabled for the course (id = 1)",
        ),
    ],
)
def test_enrolment_errors_are_moodles(site, enrolment, errorcode, message):
    assert error(site, "enrol_manual_enrol_users", enrolments=[enrolment]) == {
        "exception": "core\\exception\\moodle_exception",
        "errorcode": errorcode,
        "message": message,
    }


def test_the_guest_is_enrolled_as_moodle_5_does_without_checking_the_user(site):
    assert call(site, "enrol_manual_enrol_users", enrolments=[{"roleid": 5, "userid": 1, "courseid": 2}]) is None
    assert site.state.enrolments[2, 1].roleids == [5]


@pytest.mark.parametrize("user_id", [7, -10, -20], ids=["deleted", "noreply", "support"])
def test_a_deleted_or_dummy_user_is_refused_by_role_assign_and_the_call_rolls_back(site, debug_site, user_id):
    enrolments = [{"roleid": 5, "userid": 3, "courseid": 2}, {"roleid": 5, "userid": user_id, "courseid": 2}]
    assert error(site, "enrol_manual_enrol_users", enrolments=enrolments) == {
        "exception": "core\\exception\\coding_exception",
        "errorcode": "codingerror",
        "message": "Coding error detected, it must be fixed by a programmer: User ID does not exist or is deleted!",
    }
    assert site.state.enrolments == {}
    assert error(debug_site, "enrol_manual_enrol_users", enrolments=enrolments)["debuginfo"] == f"userid:{user_id}"


def test_enrolling_a_missing_user_is_the_php_type_error_of_the_recorded_moodle(site, debug_site):
    enrolment = {"roleid": 5, "userid": 999999, "courseid": 2}
    body = error(site, "enrol_manual_enrol_users", enrolments=[enrolment])
    assert php_json(body).decode() == GOLDEN_ENROL_MISSING_USER
    assert "/var/www/moodle/lib/enrollib.php" in body["message"]  # the server path the gateway must not pass on
    assert error(debug_site, "enrol_manual_enrol_users", enrolments=[enrolment]) == body  # no debuginfo either
    assert site.state.enrolments == {}


def test_a_missing_user_is_enrolled_before_the_welcome_message_fails():
    """Moodle inserts the enrolment first; only the call's transaction takes it back."""
    site = SandboxSite(TOKEN)
    with pytest.raises(MoodleException) as caught:
        enrol_one(site, {"roleid": 5, "userid": 999999, "courseid": 2})
    assert caught.value.exception == "TypeError"
    assert list(site.state.enrolments) == [(2, 999999)]


@pytest.mark.parametrize(
    ("enrolment", "errorcode"),
    [
        ({"roleid": 5, "userid": 999999, "courseid": 99999}, "invalidparameter"),  # the course is checked first
        ({"roleid": 7, "userid": 999999, "courseid": 2}, "wsusercannotassign"),  # then the role
        ({"roleid": 5, "userid": 999999, "courseid": 1}, "wsnoinstance"),  # then the manual instance
        ({"roleid": 7, "userid": 1, "courseid": 2}, "wsusercannotassign"),
        ({"roleid": 5, "userid": -10, "courseid": 1}, "wsnoinstance"),
    ],
)
def test_the_user_is_only_looked_at_after_the_course_role_and_instance(site, enrolment, errorcode):
    assert error(site, "enrol_manual_enrol_users", enrolments=[enrolment])["errorcode"] == errorcode


def test_enrolment_is_all_or_nothing(site):
    enrol(site, {"roleid": 5, "userid": 3, "courseid": 2})
    body = error(
        site,
        "enrol_manual_enrol_users",
        enrolments=[
            {"roleid": 3, "userid": 3, "courseid": 2, "suspend": 1},  # would change an existing enrolment
            {"roleid": 5, "userid": 4, "courseid": 2},
            {"roleid": 5, "userid": 99, "courseid": 2},
        ],
    )
    assert body["exception"] == "TypeError"
    assert list(site.state.enrolments) == [(2, 3)]
    assert (site.state.enrolments[(2, 3)].roleids, site.state.enrolments[(2, 3)].status) == ([5], 0)


# --- Popup notifications ----------------------------------------------------------------------------------------------


def notifications(site: SandboxSite, useridto: int, **options: Any) -> dict[str, Any]:
    return call(site, "message_popup_get_popup_notifications", useridto=useridto, **options)


def test_useridto_zero_is_the_token_user(site):
    answer = notifications(site, 0)
    assert [n["id"] for n in answer["notifications"]] == [2, 1] and answer["unreadcount"] == 2
    assert answer["notifications"][0]["timecreatedpretty"] == "1 hour ago"
    assert answer["notifications"][0]["contexturl"] == "http://moodle.test/course/view.php?id=2"


def test_the_admin_reads_another_users_notifications(site):
    answer = notifications(site, 3, newestfirst=False)
    assert [(n["id"], n["read"], n["timeread"] is None) for n in answer["notifications"]] == [
        (3, True, False),
        (4, False, True),
    ]
    assert answer["unreadcount"] == 1
    assert notifications(site, 3, limit=1, offset=1)["notifications"][0]["id"] == 3
    assert notifications(site, 4) == {"notifications": [], "unreadcount": 0}


def test_a_user_nobody_has_is_a_missing_record_like_the_recorded_moodle(site, debug_site):
    body = error(site, "message_popup_get_popup_notifications", useridto=999999)
    assert php_json(body).decode() == golden_text("error_popup_notifications_nonexistent_user.json")
    debuginfo = "SELECT emailstop FROM {user} WHERE id = ?\n[array (\n  0 => 999999,\n)]"
    assert error(debug_site, "message_popup_get_popup_notifications", useridto=999999) == {
        "exception": "dml_missing_record_exception",
        "errorcode": "invaliduser",
        "message": f"Invalid user ({debuginfo})",
        "debuginfo": debuginfo,
    }
    # The count reads the whole user row first.
    count = error(site, "message_popup_get_unread_popup_notification_count", useridto=999999)
    assert php_json(count).decode() == golden_text(
        "message_popup_get_unread_popup_notification_count__missing_user.json"
    )
    debuginfo = "SELECT * FROM {user} WHERE id = ?\n[array (\n  0 => 999999,\n)]"
    assert error(debug_site, "message_popup_get_unread_popup_notification_count", useridto=999999) == {
        "exception": "dml_missing_record_exception",
        "errorcode": "invaliduser",
        "message": f"Invalid user ({debuginfo})",
        "debuginfo": debuginfo,
    }


def test_ids_that_cannot_be_real_users_are_invaliduser(site):
    invalid_user = {
        "exception": "core\\exception\\moodle_exception",
        "errorcode": "invaliduser",
        "message": "Invalid user",
    }
    assert error(site, "message_popup_get_popup_notifications", useridto=-10) == invalid_user
    assert error(site, "message_popup_get_unread_popup_notification_count", useridto=-20) == invalid_user


def test_a_user_who_stopped_notifications_has_none_listed_but_still_counted(site):
    site.state.users[3].emailstop = 1
    assert notifications(site, 3) == {"notifications": [], "unreadcount": 1}
    site.admin.emailstop = 1  # the token user's own setting is read from the session, not the table
    assert notifications(site, 0) == {"notifications": [], "unreadcount": 2}


def test_the_unread_count_is_a_bare_number(site):
    assert call(site, "message_popup_get_unread_popup_notification_count", useridto=2) == 2
    assert call(site, "message_popup_get_unread_popup_notification_count", useridto=3) == 1
    assert call(site, "message_popup_get_unread_popup_notification_count", useridto=4) == 0
    # 0 is the token user, as message_popup\\api counts it.
    assert call(site, "message_popup_get_unread_popup_notification_count", useridto=0) == 2


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "now"),
        (1, "1 sec"),
        (4, "4 secs"),
        (60, "1 min"),
        (61, "1 min 1 sec"),
        (3599, "59 mins 59 secs"),
        (3600, "1 hour"),
        (7260, "2 hours 1 min"),
        (86400, "1 day"),
        (90000, "1 day 1 hour"),
        (31536000 + 2 * 86400, "1 year 2 days"),
        (-5, "5 secs"),
    ],
)
def test_format_time_is_moodles(seconds, text):
    assert format_time(seconds) == text


# --- local_course_add_new_course_module_resource (lectureStudio sync service) -----------------------------------------


def add_resource(site: SandboxSite, **params: str) -> Any:
    fields = {"courseid": "2", "sectionnum": "1", "itemid": "0", "displayname": "Slides", "visible": "true", **params}
    return call(site, "local_course_add_new_course_module_resource", **fields)


def test_a_resource_takes_the_draft_files_and_joins_its_section(site):
    site.state.drafts[555] = [DraftFile(555, "/", "slides.pdf", 1234, 0), DraftFile(555, "/", "notes.txt", 5, 0)]
    assert add_resource(site, itemid="555", displayname="Week 1 slides") == {"message": "Successful", "id": "1"}
    assert add_resource(site, beforemod="1") == {"message": "Successful", "id": "2"}
    first = site.state.course_modules[1]
    assert (first.course, first.section, first.modname, first.name, first.visible, first.draftitemid) == (
        2,
        1,
        "resource",
        "Week 1 slides",
        1,
        555,
    )
    assert [(file.filename, file.filesize) for file in first.files] == [("slides.pdf", 1234), ("notes.txt", 5)]
    assert site.state.courses[2].sections[1] == [2, 1]


def test_a_resource_can_be_hidden_or_timed(site):
    add_resource(site, visible="false")
    add_resource(site, time="1800000000", visible="true")
    hidden, timed = site.state.course_modules[1], site.state.course_modules[2]
    assert (hidden.visible, hidden.availability) == (0, None)
    assert (timed.visible, timed.availability) == (
        1,
        '{"op":"&","c":[{"type":"date","d":">=","t":1800000000}],"showc":[true]}',
    )


def test_a_missing_section_is_created(site):
    add_resource(site, sectionnum="9")
    [course] = call(site, "core_course_get_courses", options={"ids": [2]})
    assert course["numsections"] == 9


def test_a_resource_in_a_missing_course(site, debug_site):
    assert (
        error(
            site,
            "local_course_add_new_course_module_resource",
            courseid="99999",
            sectionnum="1",
            itemid="0",
            displayname="x",
            visible="true",
        )["errorcode"]
        == "invalidrecordunknown"
    )
    debug = error(
        debug_site,
        "local_course_add_new_course_module_resource",
        courseid="99999",
        sectionnum="1",
        itemid="0",
        displayname="x",
        visible="true",
    )
    assert debug["debuginfo"] == "SELECT id,category FROM {course} WHERE id = ?\n[array (\n  0 => '99999',\n)]"
    assert site.state.course_modules == {} and debug_site.state.course_modules == {}


@pytest.mark.parametrize(("field", "value"), [("courseid", "two"), ("sectionnum", "1a"), ("itemid", "draft")])
def test_text_that_is_no_number_fails_in_the_database(site, field, value):
    body = error(
        site,
        "local_course_add_new_course_module_resource",
        **{"courseid": "2", "sectionnum": "1", "itemid": "0", "displayname": "x", "visible": "true", field: value},
    )
    assert body["errorcode"] in ("dmlreadexception", "dmlwriteexception")
    assert site.state.course_modules == {}


# --- core_course_get_categories ---------------------------------------------------------------------------------------


CATEGORY_KEYS = [
    "id",
    "name",
    "idnumber",
    "description",
    "descriptionformat",
    "parent",
    "sortorder",
    "coursecount",
    "visible",
    "visibleold",
    "timemodified",
    "depth",
    "path",
    "theme",
]


def categories(site: SandboxSite, *criteria: tuple[str, str], **options: Any) -> list[dict[str, Any]]:
    listed = [{"key": key, "value": value} for key, value in criteria]
    return call(site, "core_course_get_categories", criteria=listed, **options)


def category_ids(site: SandboxSite, *criteria: tuple[str, str], **options: Any) -> list[int]:
    return [category["id"] for category in categories(site, *criteria, **options)]


def test_categories_are_all_listed_with_the_managers_fields_in_moodles_key_order(site):
    listed = call(site, "core_course_get_categories")
    assert [category["id"] for category in listed] == [1, 2, 3]
    assert all(list(category) == CATEGORY_KEYS for category in listed)
    assert listed[1] == {
        "id": 2,
        "name": "Science",
        "idnumber": "",
        "description": "",
        "descriptionformat": 0,
        "parent": 0,
        "sortorder": 20000,
        "coursecount": 2,
        "visible": 1,
        "visibleold": 1,
        "timemodified": site.state.categories[2].timemodified,
        "depth": 1,
        "path": "/2",
        "theme": "",
    }


def test_a_category_is_found_by_id_and_a_missing_id_gives_an_empty_list(site):
    # The gateway's existence check before a move.
    assert category_ids(site, ("id", "2"), addsubcategories=False) == [2]
    assert php_json(categories(site, ("id", "999999"), addsubcategories=False)) == b"[]"
    assert categories(site, ("id", "999999")) == []
    assert categories(site, ("id", "abc")) == []  # PARAM_INT makes it 0


@pytest.mark.parametrize(
    ("criteria", "ids"),
    [
        ([("ids", "3,1,77")], [1, 3]),
        ([("name", "Science")], [2]),
        ([("name", "science")], []),
        ([("parent", "0")], [1, 2, 3]),
        ([("visible", "1"), ("name", "Humanities")], [3]),
        ([("id", "1"), ("id", "2")], [1]),  # a repeated key counts once
        ([("ids", "1,2"), ("ids", "2,3")], [2]),  # except ids
        ([("idnumber", "")], [1, 2, 3]),
        ([("theme", "boost")], []),  # no category has a theme of its own
    ],
)
def test_criteria_are_anded(site, criteria, ids):
    assert category_ids(site, *criteria) == ids


def test_subcategories_are_added_unless_asked_not_to(site):
    site.state.categories[4] = Category(4, "Chemistry", 20010, parent=2)
    site.state.categories[5] = Category(5, "Organic", 20020, parent=4, visible=0)
    assert category_ids(site, ("id", "2")) == [2, 4, 5]
    assert category_ids(site, ("id", "2"), addsubcategories=False) == [2]
    assert category_ids(site, ("id", "2"), ("visible", "1")) == [2, 4]  # the visible criterion applies below too
    [organic] = categories(site, ("id", "5"))
    assert (organic["parent"], organic["depth"], organic["path"]) == (4, 3, "/2/4/5")


def test_categories_are_sorted_by_sortorder_compared_as_text(site):
    site.state.categories[4] = Category(4, "Late", 9000)
    assert category_ids(site) == [1, 2, 3, 4]  # "9000" sorts after "30000" with strcmp()


def test_the_course_count_is_the_stored_one(site):
    update(site, {"id": 2, "categoryid": 999999})
    assert categories(site, ("id", "1"))[0]["coursecount"] == 1  # not fixed after the failed move
    new_course(site, "COUNT1", categoryid=3)
    assert [category["coursecount"] for category in categories(site)] == [0, 2, 2]


def test_an_unknown_criterion_is_a_criteriaerror(site, debug_site):
    body = error(
        site, "core_course_get_categories", criteria=[{"key": "id", "value": "1"}, {"key": "path", "value": "/1"}]
    )
    assert body == {
        "exception": "core\\exception\\moodle_exception",
        "errorcode": "criteriaerror",
        "message": "Missing permissions to search on a criterion.",
    }
    debug = error(debug_site, "core_course_get_categories", criteria=[{"key": "ID", "value": "1"}])
    assert debug["debuginfo"] == "You can not search on this criteria: ID"
    # PARAM_ALPHA refuses anything else before the function runs.
    assert error(site, "core_course_get_categories", criteria=[{"key": "id_", "value": "1"}])["errorcode"] == (
        "invalidparameter"
    )


def test_ids_postgresql_cannot_read_fail_after_every_criterion_is_checked(site, debug_site):
    body = error(site, "core_course_get_categories", criteria=[{"key": "ids", "value": "1,,2"}])
    assert (body["exception"], body["errorcode"]) == ("dml_read_exception", "dmlreadexception")
    unknown_after = [{"key": "ids", "value": ""}, {"key": "nope", "value": "x"}]
    assert error(site, "core_course_get_categories", criteria=unknown_after)["errorcode"] == "criteriaerror"
    debug = error(debug_site, "core_course_get_categories", criteria=[{"key": "ids", "value": "x"}])
    assert debug["debuginfo"].endswith("SELECT * FROM {course_categories} WHERE id = ?\n[array (\n  0 => '',\n)]")


# --- core_user_create_users -------------------------------------------------------------------------------------------


def user_error(site: SandboxSite, **fields: Any) -> dict[str, Any]:
    user = {"username": "newbie", "password": "Sandbox#1234", "firstname": "New", "lastname": "User", **fields}
    return error(site, "core_user_create_users", users=[{"email": "newbie@example.org", **user}])


def test_created_users_get_the_next_ids_and_moodles_defaults():
    site = SandboxSite(TOKEN, clock=Clock(1800000000))
    created = call(
        site,
        "core_user_create_users",
        users=[
            {"username": "ada", "password": "Ada#12345", "firstname": "Ada", "lastname": "L", "email": "a@ex.org"},
            {
                "username": "bob",
                "createpassword": 1,
                "firstname": "Bob",
                "lastname": "B",
                "email": "b@ex.org",
                "idnumber": "B1",
                "department": "Maths",
                "timezone": "Europe/Berlin",
            },
        ],
    )
    assert created == [{"id": 8, "username": "ada"}, {"id": 9, "username": "bob"}]
    [ada] = call(site, "core_user_get_users_by_field", field="id", values=["8"])
    assert (ada["auth"], ada["lang"], ada["timezone"], ada["mailformat"], ada["confirmed"]) == (
        "manual",
        "en",
        "99",
        1,
        True,
    )
    bob = site.state.users[9]
    assert (bob.idnumber, bob.department, bob.timezone, bob.timecreated) == ("B1", "Maths", "Europe/Berlin", 1800000000)


def test_create_users_answers_like_the_recorded_moodle(site, debug_site):
    duplicate = {"username": "student1", "password": "Student#1234", "firstname": "Dup", "lastname": "User"}
    body = error(site, "core_user_create_users", users=[duplicate | {"email": "dup@example.com"}])
    assert php_json(body).decode() == golden_text("error_duplicate_username.json")
    debug = error(debug_site, "core_user_create_users", users=[duplicate | {"email": "dup@example.com"}])
    assert debug == golden_json("debug_mode/error_duplicate_username.json")
    weak = user_error(site, username="student9", password="abc")
    assert php_json(weak).decode() == golden_text("error_weak_password.json")


@pytest.mark.parametrize(
    ("fields", "debuginfo"),
    [
        ({"auth": "webservice"}, "Invalid authentication type: webservice"),
        ({"auth": "mnet"}, "Invalid authentication type: mnet"),
        ({"password": ""}, "Invalid password: you must provide a password, or set createpassword."),
        ({"password": "0"}, "Invalid password: you must provide a password, or set createpassword."),
        ({"email": "not-an-address"}, "Email address is invalid: not-an-address"),
        ({"email": "a<b@example.org"}, "Email address is invalid: a<b@example.org"),
        ({"email": "Student1@Example.com"}, "Email address already exists: Student1@Example.com"),
    ],
)
def test_create_users_refuses_like_moodle(site, debug_site, fields, debuginfo):
    assert php_json(user_error(site, **fields)).decode() == GOLDEN_INVALID_PARAMETER
    assert user_error(debug_site, **fields)["debuginfo"] == debuginfo


@pytest.mark.parametrize(
    ("fields", "type_name"),
    [
        ({"username": "Newbie"}, "username"),  # PARAM_USERNAME lowercases, so the value is refused
        ({"auth": "ldapx"}, "auth"),
        ({"lang": "de"}, "lang"),
        ({"theme": "fancy"}, "theme"),
        ({"timezone": "Mars/Olympus Mons"}, "timezone"),
        ({"email": " a@example.org"}, "raw_trimmed"),
    ],
)
def test_create_users_parameters_are_cleaned_like_moodle(debug_site, fields, type_name):
    assert f'the server was expecting "{type_name}" type' in user_error(debug_site, **fields)["debuginfo"]


def test_a_password_policy_error_lists_each_broken_rule(site):
    assert user_error(site, password="ALLCAPSLONG")["errorcode"] == (
        "<div>Passwords must have at least 1 digit(s).</div>"
        "<div>Passwords must have at least 1 lower case letter(s).</div>"
        "<div>The password must have at least 1 special character(s) such as *, -, or #.</div>"
    )
    assert user_error(site, password="Äpfel#123456")["errorcode"] == (
        "<div>Passwords must have at least 1 upper case letter(s).</div>"  # only ASCII counts
    )
    # External authentication and createpassword keep no password here, so no policy applies.
    assert call(site, "core_user_create_users", users=[{"username": "ext", "auth": "ldap", "firstname": "E",
                                                       "lastname": "X", "email": "ext@example.org"}])  # fmt: skip


def test_create_users_is_all_or_nothing(site):
    users = [
        {"username": "one", "password": "One#12345", "firstname": "O", "lastname": "N", "email": "one@example.org"},
        {"username": "one", "password": "One#12345", "firstname": "O", "lastname": "N", "email": "two@example.org"},
    ]
    assert error(site, "core_user_create_users", users=users)["errorcode"] == "invalidparameter"
    assert sorted(site.state.users) == [1, 2, 3, 4, 5, 6, 7]
    assert new_user(site, "three") == 9  # 8 went to the rolled-back user and is not given again


# --- Over HTTP: state across calls, JSON encoding, threads -----------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    sandbox = start_sandbox(token=TOKEN)
    yield sandbox
    sandbox.stop()


def http_call(server, function: str, **params: Any) -> requests.Response:
    data = [("wstoken", TOKEN), ("wsfunction", function), ("moodlewsrestformat", "json"), *encode_params(params)]
    return requests.post(f"{server.url}/webservice/rest/server.php", data=data, timeout=5)


def test_a_course_lives_through_create_list_update_enrol_and_participants(server):
    created = http_call(
        server,
        "core_course_create_courses",
        courses=[
            {"fullname": "Stateful Sandbox", "shortname": "STATE1", "categoryid": 3, "summary": "Kept between calls"},
        ],
    ).json()
    course_id = created[0]["id"]
    listed = http_call(server, "core_course_search_courses", criterianame="search", criteriavalue="stateful").json()
    assert [course["id"] for course in listed["courses"]] == [course_id]
    in_category = http_call(server, "core_course_get_courses_by_field", field="category", value="3").json()
    assert course_id in [course["id"] for course in in_category["courses"]]
    assert http_call(
        server, "core_course_update_courses", courses=[{"id": course_id, "fullname": "Renamed"}]
    ).json() == {"warnings": []}
    enrolled = http_call(
        server, "enrol_manual_enrol_users", enrolments=[{"roleid": 5, "userid": 6, "courseid": course_id}]
    )
    assert enrolled.content == b"null"
    [user] = http_call(server, "core_enrol_get_enrolled_users", courseid=course_id).json()
    assert user["username"] == "student3"
    assert {"id": course_id, "fullname": "Renamed", "shortname": "STATE1"} in user["enrolledcourses"]


def test_moodles_php_errors_and_missing_users_come_over_http_byte_for_byte(server):
    by_ids = http_call(server, "core_course_get_courses_by_field", field="ids", value="2,987654")
    assert (by_ids.status_code, by_ids.content) == (200, GOLDEN_BY_IDS_MISSING.encode())
    enrol = http_call(server, "enrol_manual_enrol_users", enrolments=[{"roleid": 5, "userid": 999999, "courseid": 2}])
    assert (enrol.status_code, enrol.content) == (200, GOLDEN_ENROL_MISSING_USER.encode())
    with server.site.lock:
        assert (2, 999999) not in server.site.state.enrolments
    popup = http_call(server, "message_popup_get_popup_notifications", useridto=999999)
    assert popup.content == golden_bytes("error_popup_notifications_nonexistent_user.json")
    count = http_call(server, "message_popup_get_unread_popup_notification_count", useridto=999999)
    assert count.content == golden_bytes("message_popup_get_unread_popup_notification_count__missing_user.json")


def test_users_and_categories_over_http(server):
    user = {"username": "httpuser", "password": "Http#12345", "firstname": "H", "lastname": "T", "email": "h@ex.org"}
    [created] = http_call(server, "core_user_create_users", users=[user]).json()
    [found] = http_call(server, "core_user_get_users_by_field", field="username", values=["httpuser"]).json()
    assert found["id"] == created["id"]
    one = {"criteria": [{"key": "id", "value": "1"}], "addsubcategories": 0}
    assert [category["name"] for category in http_call(server, "core_course_get_categories", **one).json()] == [
        "Category 1"
    ]
    missing = {"criteria": [{"key": "id", "value": "999999"}], "addsubcategories": 0}
    assert http_call(server, "core_course_get_categories", **missing).content == b"[]"


def test_a_course_moved_into_a_missing_category_over_http():
    sandbox = start_sandbox(token=TOKEN)
    try:
        created = http_call(
            sandbox, "core_course_create_courses", courses=[{"fullname": "Lost", "shortname": "LOST1", "categoryid": 1}]
        ).json()
        course_id = created[0]["id"]
        moved = http_call(sandbox, "core_course_update_courses", courses=[{"id": course_id, "categoryid": 999999}])
        assert moved.json() == {"warnings": [GOLDEN_CATEGORY_MISSING_WARNING["warnings"][0] | {"itemid": course_id}]}
        listed = http_call(sandbox, "core_course_get_courses_by_field", field="id", value=str(course_id)).json()
        [course] = listed["courses"]
        assert (course["categoryid"], course["categoryname"], course["visible"]) == (999999, "", 0)
        assert course["courseimage"] == f"{sandbox.url}/pluginfile.php/15/course/generated/course.svg"
        lost = http_call(sandbox, "core_course_search_courses", criterianame="search", criteriavalue="Lost")
        assert lost.content == GOLDEN_MISSING_RECORD.encode()
    finally:
        sandbox.stop()


def test_answers_escape_slashes_like_php(server):
    response = http_call(server, "core_user_get_users_by_field", field="id", values=["3"])
    assert b'"profileimageurl":"http:\\/\\/127.0.0.1:' in response.content
    assert response.json()[0]["profileimageurl"].startswith(server.url + "/theme/image.php/")


def test_concurrent_creates_get_distinct_ids(server):
    ids: list[int] = []

    def create(number: int) -> None:
        answer = http_call(
            server,
            "core_course_create_courses",
            courses=[{"fullname": "Parallel", "shortname": f"PAR{number}", "categoryid": 1}],
        ).json()
        ids.append(answer[0]["id"])

    threads = [threading.Thread(target=create, args=(number,)) for number in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 12
    with server.site.lock:
        sortorders = [course.sortorder for course in server.site.state.courses.values() if course.category == 1]
    assert len(set(sortorders)) == len(sortorders)
