"""The course routes through the whole WSGI stack against the stateful sandbox over real HTTP."""

import uuid

import pytest

from tests.support.credentials import mint
from tests.support.sandbox import moodle_call, sandbox_calls

COURSE_FIELDS = {
    "id", "shortname", "fullname", "displayname", "categoryid", "summary", "summaryformat", "format", "startdate",
    "enddate", "visible", "idnumber",
}  # fmt: skip
READ, WRITE = mint("courses:read"), mint("courses:read courses:write")


def unique(prefix="T"):
    return f"{prefix}{uuid.uuid4().hex[:8].upper()}"


def create(gateway, **fields):
    body = {"fullname": "Gateway test course", "shortname": unique(), "categoryid": 1, **fields}
    response = gateway.post("/api/moodle/courses", body, WRITE)
    assert response.status_int == 201, response.text
    return response


# -- list ------------------------------------------------------------------------------------------


def test_listing_has_every_course_but_the_front_page_in_one_shape(gateway):
    response = gateway.get("/api/moodle/courses?perpage=200", READ)

    assert response.status_int == 200
    data = response.json["data"]
    shortnames = [course["shortname"] for course in data["courses"]]
    assert {"PY101", "CHEM101", "PHYS101", "HIST201"} <= set(shortnames)
    assert "sandbox" not in shortnames and all(course["format"] != "site" for course in data["courses"])
    assert data["total"] == len(data["courses"])
    assert all(set(course) == COURSE_FIELDS for course in data["courses"])
    assert (data["page"], data["perpage"]) == (0, 200)


def test_pages_are_disjoint_and_total_counts_all_matches(gateway):
    first = gateway.get("/api/moodle/courses?perpage=2", READ).json["data"]
    second = gateway.get("/api/moodle/courses?perpage=2&page=1", READ).json["data"]

    assert len(first["courses"]) == 2 and first["total"] == second["total"] >= 4
    assert not {c["id"] for c in first["courses"]} & {c["id"] for c in second["courses"]}


def test_search_finds_by_name_with_the_same_fields(gateway):
    data = gateway.get("/api/moodle/courses?search=python", READ).json["data"]

    py101 = next(course for course in data["courses"] if course["shortname"] == "PY101")
    assert set(py101) == COURSE_FIELDS
    assert py101["format"] == "topics" and py101["categoryid"] == 1
    assert data["total"] == len(data["courses"])


def test_category_lists_that_categorys_courses(gateway):
    data = gateway.get("/api/moodle/courses?category=2", READ).json["data"]

    assert {"CHEM101", "PHYS101"} <= {course["shortname"] for course in data["courses"]}
    assert {course["categoryid"] for course in data["courses"]} == {2}


def test_search_and_category_together_keep_only_matches_in_that_category(gateway):
    both = gateway.get("/api/moodle/courses?search=Basics&category=2", READ).json["data"]
    elsewhere = gateway.get("/api/moodle/courses?search=python&category=3", READ).json["data"]

    assert [course["shortname"] for course in both["courses"]] == ["CHEM101"] and both["total"] == 1
    assert elsewhere == {"courses": [], "total": 0, "page": 0, "perpage": 50}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("perpage=201", "perpage"),
        ("perpage=0", "perpage"),
        ("page=-1", "page"),
        ("category=abc", "category"),
        ("category=0", "category"),
        ("search=%20%20", "search"),
        ("sort=name", "sort"),
        ("page=1&page=2", "page"),
    ],
)
def test_bad_listing_queries_are_400s_before_moodle_is_called(gateway, sandbox, query, field):
    before = sandbox_calls(sandbox)

    response = gateway.get(f"/api/moodle/courses?{query}", READ)

    assert response.status_int == 400
    assert field in response.json["error"]["details"]["fields"]
    assert sandbox_calls(sandbox) == before


# -- create, read, update --------------------------------------------------------------------------


def test_a_created_course_is_201_with_its_location_and_can_be_found(gateway):
    shortname = unique("NEW")
    response = create(gateway, shortname=shortname, fullname="Quantum Gardening", categoryid=3, visible=0,
                      summary="Plants in superposition", startdate=1790000000, enddate=1800000000)  # fmt: skip

    created = response.json["data"]
    assert set(created) == {"id", "shortname"} and created["shortname"] == shortname
    assert response.headers["Location"].endswith(f"/api/moodle/courses/{created['id']}")
    course = gateway.get(f"/api/moodle/courses/{created['id']}", READ).json["data"]
    assert (course["fullname"], course["categoryid"], course["visible"], course["enddate"]) == (
        "Quantum Gardening", 3, 0, 1800000000)  # fmt: skip
    found = gateway.get("/api/moodle/courses?search=quantum%20gardening&category=3", READ).json["data"]
    assert shortname in [course["shortname"] for course in found["courses"]]


def test_a_taken_shortname_is_a_409(gateway):
    response = gateway.post("/api/moodle/courses", {"fullname": "Again", "shortname": "PY101", "categoryid": 1}, WRITE)

    assert response.status_int == 409
    assert response.json["error"]["code"] == "shortnametaken"
    assert "PY101" in response.json["error"]["message"]


def test_creating_in_a_missing_category_is_a_404_naming_the_category_and_nothing_is_created(gateway, sandbox):
    shortname = unique()

    response = gateway.post("/api/moodle/courses", {"fullname": "X", "shortname": shortname, "categoryid": 999}, WRITE)

    assert response.status_int == 404
    error = response.json["error"]
    assert (error["code"], error["details"]) == ("categorynotfound", {"missing_categories": [999]})
    assert error["message"] == "No category with id 999 in Moodle"
    assert moodle_call(sandbox, "core_course_get_courses_by_field", field="shortname", value=shortname)["courses"] == []


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"fullname", "shortname", "categoryid"}),
        ({"fullname": "A", "shortname": "B", "categoryid": "1"}, {"categoryid"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1.5}, {"categoryid"}),
        ({"fullname": " ", "shortname": "B", "categoryid": 1}, {"fullname"}),
        ({"fullname": "<b>Bold</b>", "shortname": "B", "categoryid": 1}, {"fullname"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "visible": "yes"}, {"visible"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "visible": 2}, {"visible"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "startdate": 10, "enddate": 5}, {"enddate"}),
        # Moodle answers nostartdatenoenddate for an end date without a start date beside it.
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "enddate": 5}, {"enddate"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "startdate": 0, "enddate": 5}, {"enddate"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "format": "Topics!"}, {"format"}),
        # Moodle would clean these to "" (not a plugin name) and answer a bare invalidparameter.
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "format": "a"}, {"format"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "format": "topics_"}, {"format"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "format": "to__pics"}, {"format"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "format": "t" * 22}, {"format"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "format": 5}, {"format"}),
        ({"fullname": "A", "shortname": "x" * 256, "categoryid": 1}, {"shortname"}),
        ({"fullname": "A", "shortname": "B", "categoryid": 1, "teacher": "me"}, {"teacher"}),
    ],
)
def test_bad_course_bodies_are_400s_naming_the_fields_before_moodle_is_called(gateway, sandbox, body, fields):
    before = sandbox_calls(sandbox)

    response = gateway.post("/api/moodle/courses", body, WRITE)

    assert response.status_int == 400
    assert set(response.json["error"]["details"]["fields"]) == fields
    assert sandbox_calls(sandbox) == before


OFFERED = "one of topics, weeks, social, singleactivity"


def test_a_format_longer_than_moodle_keeps_is_refused_without_echoing_it(gateway):
    response = gateway.post("/api/moodle/courses", {"fullname": "A", "shortname": "B", "categoryid": 1,
                                                    "format": "t" * 100_000}, WRITE)  # fmt: skip

    assert response.status_int == 400
    assert response.json["error"]["details"]["fields"]["format"] == ["Longer than maximum length 21."]
    assert len(response.body) < 1000


@pytest.mark.parametrize("course_format", ["bogus", "Topics", "site", "flexsections"])
def test_a_format_the_site_does_not_offer_is_a_400_naming_the_offered_ones(gateway, sandbox, course_format):
    """Moodle 5.0 stores any format name it is given (the sandbox too), and shows such a course in the default
    format, its format options lost."""
    before = sandbox_calls(sandbox)
    body = {"fullname": "A", "shortname": unique(), "categoryid": 1, "format": course_format}

    created = gateway.post("/api/moodle/courses", body, WRITE)
    updated = gateway.patch("/api/moodle/courses/2", {"format": course_format}, WRITE)

    for response in (created, updated):
        assert response.status_int == 400
        assert response.json["error"]["code"] == "validationerror"
        assert response.json["error"]["details"]["fields"] == {
            "format": [f"Not a course format this site offers: {course_format!r}; {OFFERED}"]
        }
    assert sandbox_calls(sandbox) == before
    assert moodle_call(sandbox, "core_course_get_courses", options={"ids": [2]})[0]["format"] == "topics"


def test_the_offered_formats_are_a_setting(make_gateway, sandbox):
    gateway = make_gateway(MOODLE_COURSE_FORMATS="topics,flexsections")

    created = gateway.post(
        "/api/moodle/courses",
        {"fullname": "A", "shortname": unique(), "categoryid": 1, "format": "flexsections"},
        WRITE,
    )
    refused = gateway.post(
        "/api/moodle/courses", {"fullname": "A", "shortname": unique(), "categoryid": 1, "format": "weeks"}, WRITE
    )

    assert created.status_int == 201
    course = moodle_call(sandbox, "core_course_get_courses", options={"ids": [created.json["data"]["id"]]})[0]
    assert course["format"] == "flexsections"
    assert refused.status_int == 400
    assert refused.json["error"]["details"]["fields"]["format"] == [
        "Not a course format this site offers: 'weeks'; one of topics, flexsections"
    ]


def test_a_body_that_is_not_json_is_a_400(gateway):
    response = gateway.app.post(
        "/api/moodle/courses",
        "{fullname: x",
        headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "application/json"},
        expect_errors=True,
    )

    assert (response.status_int, response.json["error"]["code"]) == (400, "invalidjson")


def test_a_body_of_another_media_type_is_a_415(gateway):
    response = gateway.app.post(
        "/api/moodle/courses", "fullname=x", headers={"Authorization": f"Bearer {WRITE}"}, expect_errors=True
    )

    assert (response.status_int, response.json["error"]["code"]) == (415, "unsupportedmediatype")


def test_a_json_body_over_one_mib_is_a_413_before_it_is_parsed(gateway, sandbox):
    before = sandbox_calls(sandbox)

    response = gateway.post("/api/moodle/courses", {"fullname": "x" * (1024 * 1024), "shortname": "B"}, WRITE)

    assert (response.status_int, response.json["error"]["code"]) == (413, "bodytoolarge")
    assert sandbox_calls(sandbox) == before


def test_reading_a_course_that_does_not_exist_is_a_404(gateway):
    response = gateway.get("/api/moodle/courses/99999", READ)

    assert response.status_int == 404
    assert response.json["error"]["code"] == "coursenotfound"
    assert response.json["error"]["details"] == {"missing_courses": [99999]}


def test_update_changes_only_the_given_fields_and_answers_the_course(gateway):
    course_id = create(gateway, summary="Before").json["data"]["id"]

    response = gateway.patch(f"/api/moodle/courses/{course_id}", {"fullname": "After", "visible": False}, WRITE)

    assert response.status_int == 200
    course = response.json["data"]
    assert (course["id"], course["fullname"], course["visible"], course["summary"]) == (course_id, "After", 0, "Before")


def test_updating_a_missing_course_is_a_404(gateway):
    response = gateway.patch("/api/moodle/courses/99999", {"fullname": "Nobody"}, WRITE)

    assert response.status_int == 404
    assert response.json["error"]["code"] == "coursenotfound"


def test_updating_to_a_taken_shortname_is_a_409(gateway):
    course_id = create(gateway).json["data"]["id"]

    response = gateway.patch(f"/api/moodle/courses/{course_id}", {"shortname": "PY101"}, WRITE)

    assert response.status_int == 409
    assert response.json["error"]["code"] == "shortnametaken"
    assert gateway.get(f"/api/moodle/courses/{course_id}", READ).json["data"]["shortname"] != "PY101"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/moodle/courses/2", {}, "body"),
        ("/api/moodle/courses/abc", {"fullname": "x"}, "course_id"),
        ("/api/moodle/courses/0", {"fullname": "x"}, "course_id"),
        ("/api/moodle/courses/2", {"id": 3}, "id"),
        ("/api/moodle/courses/2", {"categoryid": None}, "categoryid"),
    ],
)
def test_bad_updates_are_400s_before_moodle_is_called(gateway, sandbox, path, body, field):
    before = sandbox_calls(sandbox)

    response = gateway.patch(path, body, WRITE)

    assert response.status_int == 400
    assert field in response.json["error"]["details"]["fields"]
    assert sandbox_calls(sandbox) == before


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("get", "/api/moodle/courses", "courses:read"),
        ("get", "/api/moodle/courses/2", "courses:read"),
        ("post", "/api/moodle/courses", "courses:write"),
        ("patch", "/api/moodle/courses/2", "courses:write"),
    ],
)
def test_each_course_route_needs_its_scope(gateway, method, path, scope):
    other = "courses:write" if scope == "courses:read" else "courses:read"

    if method == "get":
        response = gateway.get(path, mint(other))
    else:
        response = getattr(gateway, method)(path, {"fullname": "x"}, mint(other))

    assert response.status_int == 403
    assert response.json["error"]["details"]["required_scope"] == scope


def test_a_course_route_answers_405_with_allow_for_other_methods(gateway):
    response = gateway.app.delete("/api/moodle/courses/2", headers={"Authorization": f"Bearer {WRITE}"},
                                  expect_errors=True)  # fmt: skip

    assert response.status_int == 405
    assert response.headers["Allow"] == "GET, HEAD, PATCH"


def test_the_sandbox_really_holds_what_the_gateway_created(gateway, sandbox):
    created = create(gateway, fullname="Held in the sandbox").json["data"]

    courses = moodle_call(sandbox, "core_course_get_courses", options={"ids": [created["id"]]})

    assert [course["fullname"] for course in courses] == ["Held in the sandbox"]


def sandbox_course(sandbox, course_id):
    return moodle_call(sandbox, "core_course_get_courses", options={"ids": [course_id]})[0]


def test_moving_into_a_missing_category_is_a_404_and_the_course_is_unchanged(gateway, sandbox):
    course_id = create(gateway, fullname="Stays put", categoryid=2).json["data"]["id"]
    before = sandbox_course(sandbox, course_id)
    updates = sandbox_calls(sandbox).get("core_course_update_courses", 0)

    response = gateway.patch(f"/api/moodle/courses/{course_id}", {"categoryid": 999999, "fullname": "Moved"}, WRITE)

    assert response.status_int == 404, response.text
    error = response.json["error"]
    assert (error["code"], error["details"]) == ("categorynotfound", {"missing_categories": [999999]})
    assert error["message"] == "No category with id 999999 in Moodle"
    assert sandbox_calls(sandbox).get("core_course_update_courses", 0) == updates
    assert sandbox_course(sandbox, course_id) == before
    found = gateway.get("/api/moodle/courses?search=stays%20put", READ)
    assert found.status_int == 200 and course_id in [course["id"] for course in found.json["data"]["courses"]]


def test_moving_into_a_category_that_exists_moves_the_course(gateway):
    course_id = create(gateway, categoryid=1).json["data"]["id"]

    response = gateway.patch(f"/api/moodle/courses/{course_id}", {"categoryid": 3}, WRITE)

    assert response.status_int == 200, response.text
    assert response.json["data"]["categoryid"] == 3


def test_moving_a_missing_course_is_a_404_for_the_course(gateway, sandbox):
    updates = sandbox_calls(sandbox).get("core_course_update_courses", 0)

    response = gateway.patch("/api/moodle/courses/99999", {"categoryid": 2}, WRITE)

    assert response.status_int == 404
    assert response.json["error"]["details"] == {"missing_courses": [99999]}
    assert sandbox_calls(sandbox).get("core_course_update_courses", 0) == updates


def test_a_search_reads_its_page_back_without_courses_by_field(gateway, sandbox):
    before = sandbox_calls(sandbox)

    data = gateway.get("/api/moodle/courses?search=python", READ).json["data"]

    after = sandbox_calls(sandbox)
    assert "PY101" in [course["shortname"] for course in data["courses"]]
    assert after.get("core_course_get_courses", 0) == before.get("core_course_get_courses", 0) + 1
    assert after.get("core_course_get_courses_by_field", 0) == before.get("core_course_get_courses_by_field", 0)


def test_the_front_page_course_cannot_be_updated(gateway):
    response = gateway.patch("/api/moodle/courses/1", {"fullname": "Front"}, WRITE)

    assert response.status_int == 404


def test_a_taken_idnumber_is_a_409(gateway):
    response = gateway.post(
        "/api/moodle/courses", {"fullname": "X", "shortname": unique(), "categoryid": 1, "idnumber": "HIST-201"}, WRITE
    )

    assert (response.status_int, response.json["error"]["code"]) == (409, "courseidnumbertaken")
