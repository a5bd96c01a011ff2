"""Courses: one listing shape over three Moodle functions, create, read one, and update with read-back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lms_api.errors import ApiError
from lms_api.moodle.client import MoodleService
from lms_api.moodle.errors import MoodleError, expect_list, expect_object, status_for_errorcode, unexpected_answer

GET_COURSES = "core_course_get_courses"
GET_COURSES_BY_FIELD = "core_course_get_courses_by_field"
SEARCH_COURSES = "core_course_search_courses"
CREATE_COURSES = "core_course_create_courses"
UPDATE_COURSES = "core_course_update_courses"

SITE_FORMAT = "site"  # the front-page course every Moodle has; never a course a caller means


def list_courses(
    moodle: MoodleService, *, search: str | None = None, category: int | None = None, page: int = 0, perpage: int = 50
) -> dict[str, Any]:
    """Courses matching ``search`` and/or in ``category``, page ``page`` (0-based) of ``perpage``.

    ``total`` counts every match before paging. Search results carry only Moodle's public course fields,
    so the page's courses are read again by id to give every listing the same fields.
    """
    if search is None:
        if category is None:
            all_courses = expect_list(moodle.call(GET_COURSES), GET_COURSES, key="id")
            matches = [course for course in all_courses if not _is_site(course)]
        else:
            matches = _by_field(moodle, "category", str(category))
        return _listing(_page(matches, page, perpage), len(matches), page, perpage)
    if category is None:
        found, total = _search(moodle, search, page, perpage)
        page_ids = [course["id"] for course in found]
    else:
        found, _ = _search(moodle, search, 0, 0)  # everything: Moodle's search has no category filter
        in_category = [course["id"] for course in found if course.get("categoryid") == category]
        page_ids, total = _page(in_category, page, perpage), len(in_category)
    return _listing(courses_by_ids(moodle, page_ids), total, page, perpage)


def courses_by_ids(moodle: MoodleService, course_ids: Iterable[int]) -> list[dict[str, Any]]:
    """The courses with these ids that exist, in the order asked."""
    wanted = list(dict.fromkeys(course_ids))
    if not wanted:
        return []
    found = {course["id"]: course for course in _by_field(moodle, "ids", ",".join(map(str, wanted)))}
    return [found[course_id] for course_id in wanted if course_id in found]


def get_course(moodle: MoodleService, course_id: int) -> dict[str, Any]:
    courses = _by_field(moodle, "id", str(course_id))
    if not courses:
        raise course_not_found([course_id])
    return courses[0]


def create_course(moodle: MoodleService, fields: Mapping[str, Any]) -> dict[str, Any]:
    created = expect_list(moodle.call(CREATE_COURSES, {"courses": [dict(fields)]}), CREATE_COURSES)
    if len(created) != 1 or not isinstance(created[0].get("id"), int):
        raise unexpected_answer(CREATE_COURSES)
    return {"id": created[0]["id"], "shortname": created[0].get("shortname", fields["shortname"])}


def update_course(moodle: MoodleService, course_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Send only ``changes``; Moodle reports a failed update as a warning in a 200, which becomes the error.

    Both functions are checked first, so a missing read-back function never follows an applied update.
    """
    moodle.require(UPDATE_COURSES, GET_COURSES_BY_FIELD)
    answer = expect_object(moodle.call(UPDATE_COURSES, {"courses": [{"id": course_id, **changes}]}), UPDATE_COURSES)
    for warning in expect_list(answer.get("warnings", []), UPDATE_COURSES):
        raise _warning_error(warning, course_id, changes, moodle)
    try:
        return get_course(moodle, course_id)
    except ApiError as error:
        error.message = f"The update was applied, but reading the course back failed: {error.message}"
        error.details["updated"] = True
        raise


def course_not_found(course_ids: list[int]) -> ApiError:
    names = ", ".join(map(str, course_ids))
    return ApiError(
        404,
        "coursenotfound",
        f"No course with id {names} in Moodle" if len(course_ids) == 1 else f"No courses with ids {names} in Moodle",
        {"missing_courses": course_ids},
    )


def _warning_error(
    warning: Mapping[str, Any], course_id: int, changes: Mapping[str, Any], moodle: MoodleService
) -> ApiError:
    code = str(warning.get("warningcode") or "")
    status = status_for_errorcode(code)
    if status == 404:
        if not _by_field(moodle, "id", str(course_id)):
            return course_not_found([course_id])
        # The course exists, so a record the update names is missing: the category, the only one it can name.
        # Moodle writes the course before it looks the category up, so other fields may have been saved.
        what = f"category {changes['categoryid']}" if "categoryid" in changes else "a record this update names"
        return MoodleError(
            404,
            code,
            f"Moodle could not find {what}; other fields of this update may have been saved",
            {"function": UPDATE_COURSES, "course_id": course_id, "outcome": "unknown"},
        )
    # Debug mode appends the SQL of the failed query to the message; the first line is the human part.
    message = moodle.redact(str(warning.get("message") or "").split("\n")[0]) or "Moodle did not update the course"
    return MoodleError(status, code or "moodlewarning", message, {"function": UPDATE_COURSES, "course_id": course_id})


def _by_field(moodle: MoodleService, field: str, value: str) -> list[dict[str, Any]]:
    answer = expect_object(moodle.call(GET_COURSES_BY_FIELD, {"field": field, "value": value}), GET_COURSES_BY_FIELD)
    return [
        course for course in expect_list(answer.get("courses"), GET_COURSES_BY_FIELD, key="id") if not _is_site(course)
    ]


def _search(moodle: MoodleService, text: str, page: int, perpage: int) -> tuple[list[dict[str, Any]], int]:
    """Moodle's text search: one page of matches (``perpage`` 0: all of them) and the number of all matches."""
    params = {"criterianame": "search", "criteriavalue": text, "page": page, "perpage": perpage}
    answer = expect_object(moodle.call(SEARCH_COURSES, params), SEARCH_COURSES)
    total = answer.get("total")
    if not isinstance(total, int):
        raise unexpected_answer(SEARCH_COURSES)
    return expect_list(answer.get("courses"), SEARCH_COURSES, key="id"), total


def _page(items: list[Any], page: int, perpage: int) -> list[Any]:
    return items[page * perpage : (page + 1) * perpage]


def _listing(courses: list[dict[str, Any]], total: int, page: int, perpage: int) -> dict[str, Any]:
    return {"courses": courses, "total": total, "page": page, "perpage": perpage}


def _is_site(course: Mapping[str, Any]) -> bool:
    return course.get("format") == SITE_FORMAT
