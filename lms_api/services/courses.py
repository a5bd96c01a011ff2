"""Courses: one listing shape over three Moodle functions, create, read one, and update with read-back."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import Moodle
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import (
    OUTCOME_UNKNOWN,
    MoodleError,
    MoodleRecord,
    code_of,
    expect_list,
    is_moodle_code,
    not_a_moodle_code,
    status_for_errorcode,
    unexpected_answer,
)
from lms_api.moodle.functions import MoodleFunction
from lms_api.services.notfound import not_found

SITE_FORMAT = "site"  # the front-page course every Moodle has; never a course a caller means


class CourseListing(TypedDict):
    courses: list[MoodleRecord]
    total: int  # every match, before paging
    page: int
    perpage: int


class CreatedCourse(TypedDict):
    id: int
    shortname: str


def list_courses(
    moodle: Moodle, *, search: str | None = None, category: int | None = None, page: int = 0, perpage: int = 50
) -> CourseListing:
    """Courses matching ``search`` and/or in ``category``, page ``page`` (0-based) of ``perpage``.

    ``total`` counts every match before paging. Search results carry only Moodle's public course fields,
    so the page's courses are read again by id to give every listing the same fields.
    """
    if search is None:
        if category is None:
            all_courses = expect_list(moodle.call(MoodleFunction.GET_COURSES), MoodleFunction.GET_COURSES, key="id")
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


def courses_by_ids(moodle: Moodle, course_ids: Iterable[int]) -> list[MoodleRecord]:
    """The courses with these ids that exist, front page left out, in the order asked.

    ``core_course_get_courses`` leaves out an id that does not exist, where ``core_course_get_courses_by_field``
    with ``field=ids`` fails with a PHP error, even for a course deleted a moment before.
    """
    wanted = list(dict.fromkeys(course_ids))
    found: dict[int, MoodleRecord] = {}
    for run in split_by_input_vars("ids", wanted, {}, moodle.max_input_vars):
        answer = moodle.call(MoodleFunction.GET_COURSES, {"options": {"ids": wanted[run.start : run.stop]}})
        found |= {
            course["id"]: course
            for course in expect_list(answer, MoodleFunction.GET_COURSES, key="id")
            if not _is_site(course)
        }
    return [found[course_id] for course_id in wanted if course_id in found]


def get_course(moodle: Moodle, course_id: int) -> MoodleRecord:
    courses = _by_field(moodle, "id", str(course_id))
    if not courses:
        raise course_not_found([course_id])
    return courses[0]


def create_course(moodle: Moodle, fields: Mapping[str, Any], offered_formats: Sequence[str]) -> CreatedCourse:
    """Create one course, in one of the ``offered_formats`` (MOODLE_COURSE_FORMATS). Moodle refuses a category that
    does not exist before it writes anything, so that refusal is only given the category's own error code here, at no
    extra call."""
    _require_offered_format(fields, offered_formats)
    try:
        answer = moodle.call(MoodleFunction.CREATE_COURSES, {"courses": [dict(fields)]})
    except MoodleError as error:
        if error.code == ErrorCode.ERROR_CAT_CONTEXT_NOT_VALID:
            raise category_not_found([fields["categoryid"]]) from error
        raise
    created = expect_list(answer, MoodleFunction.CREATE_COURSES)
    if len(created) != 1 or not isinstance(created[0].get("id"), int):
        raise unexpected_answer(MoodleFunction.CREATE_COURSES)
    return {"id": created[0]["id"], "shortname": created[0].get("shortname", fields["shortname"])}


def created_already(moodle: Moodle, fields: Mapping[str, Any]) -> CreatedCourse | None:
    """After an answer that left a create's outcome unknown: the course an earlier attempt created, found by its
    short name (unique in Moodle) with the same full name and category; None when there is none, or it is another."""
    for course in _by_field(moodle, "shortname", fields["shortname"]):
        # Moodle answers the names as its text filters show them: "R&D" as "R&amp;D".
        names = (html.unescape(str(course.get("shortname"))), html.unescape(str(course.get("fullname"))))
        if names == (fields["shortname"], fields["fullname"]) and course.get("categoryid") == fields["categoryid"]:
            return {"id": course["id"], "shortname": fields["shortname"]}
    return None


def update_course(
    moodle: Moodle, course_id: int, changes: Mapping[str, Any], offered_formats: Sequence[str]
) -> MoodleRecord:
    """Send only ``changes``, then read the course back; Moodle reports a failed update as a warning in a 200. A
    ``format`` changed to must be one of the ``offered_formats`` (MOODLE_COURSE_FORMATS).

    Moodle moves a course into a category that does not exist, answering only a warning; such a course breaks
    every search that finds it and cannot be deleted. So before a move the category is checked, and the course
    too: a missing record reported after both were found can then only mean one was deleted meanwhile.
    Every function is checked first, so a missing read-back function never follows an applied update.
    """
    _require_offered_format(changes, offered_formats)
    category_id = changes.get("categoryid")
    moodle.require(
        MoodleFunction.UPDATE_COURSES,
        MoodleFunction.GET_COURSES_BY_FIELD,
        *(() if category_id is None else (MoodleFunction.GET_CATEGORIES,)),
    )
    if category_id is not None:
        get_course(moodle, course_id)
        require_category(moodle, category_id)
    answer = moodle.call(MoodleFunction.UPDATE_COURSES, {"courses": [{"id": course_id, **changes}]})
    warnings = expect_list(answer.get("warnings", []), MoodleFunction.UPDATE_COURSES)
    if warnings:
        # Debug mode appends the SQL of the failed query to the message; the first line is the human part.
        message = moodle.clean(str(warnings[0].get("message") or "").split("\n")[0])
        code = warnings[0].get("warningcode") or ""
        if code and not is_moodle_code(code, moodle.clean):
            raise not_a_moodle_code(MoodleFunction.UPDATE_COURSES, {"course_id": course_id})
        raise _warning_error(str(code), message, course_id, category_id)
    try:
        return get_course(moodle, course_id)
    except ApiError as error:
        raise type(error)(
            error.code,
            f"The update was applied, but reading the course back failed: {error.message}",
            {**error.details, "updated": True},
            status=error.status,
            headers=error.headers,
        ) from error


def require_category(moodle: Moodle, category_id: int) -> None:
    """404 ``categorynotfound`` unless the category exists (and the gateway's Moodle account may see it)."""
    # Without addsubcategories=0 Moodle also answers every category below this one.
    params = {"criteria": [{"key": "id", "value": category_id}], "addsubcategories": False}
    categories = expect_list(
        moodle.call(MoodleFunction.GET_CATEGORIES, params), MoodleFunction.GET_CATEGORIES, key="id"
    )
    if not any(category["id"] == category_id for category in categories):
        raise category_not_found([category_id])


def course_not_found(course_ids: list[int]) -> ApiError:
    return not_found(ErrorCode.COURSE_NOT_FOUND, "course", "courses", course_ids)


def category_not_found(category_ids: list[int]) -> ApiError:
    return not_found(ErrorCode.CATEGORY_NOT_FOUND, "category", "categories", category_ids)


def _require_offered_format(fields: Mapping[str, Any], formats: Sequence[str]) -> None:
    """400 ``validationerror`` on ``format`` unless it is one of ``formats``: Moodle stores any name as the course's
    format, a plugin or not."""
    chosen = fields.get("format")
    if chosen is not None and chosen not in formats:
        message = f"Not a course format this site offers: {chosen!r}; one of {', '.join(formats)}"
        raise ApiError(ErrorCode.VALIDATION_ERROR, "Invalid input: format", {"fields": {"format": [message]}})


def _warning_error(code: str, message: str, course_id: int, category_id: int | None) -> ApiError:
    status = status_for_errorcode(code)
    if status == 404 and category_id is None:
        return course_not_found([course_id])  # the course is the only record such an update looks up
    if status == 404:
        # Both were found just before the update, and Moodle writes the course before it looks the category up.
        return MoodleError(
            code_of(code),
            f"Course {course_id} or category {category_id} was deleted during the update; Moodle may have saved "
            "the update anyway, the move into the missing category included",
            {"function": MoodleFunction.UPDATE_COURSES, "course_id": course_id, "outcome": OUTCOME_UNKNOWN},
        )
    return MoodleError(
        code_of(code) if code else ErrorCode.MOODLE_WARNING,
        message or "Moodle did not update the course",
        {"function": MoodleFunction.UPDATE_COURSES, "course_id": course_id},
        status=status,
    )


def _by_field(moodle: Moodle, field: str, value: str) -> list[MoodleRecord]:
    answer = moodle.call(MoodleFunction.GET_COURSES_BY_FIELD, {"field": field, "value": value})
    return [
        course
        for course in expect_list(answer.get("courses"), MoodleFunction.GET_COURSES_BY_FIELD, key="id")
        if not _is_site(course)
    ]


def _search(moodle: Moodle, text: str, page: int, perpage: int) -> tuple[list[MoodleRecord], int]:
    """Moodle's text search: one page of matches (``perpage`` 0: all of them) and the number of all matches."""
    params = {"criterianame": "search", "criteriavalue": text, "page": page, "perpage": perpage}
    answer = moodle.call(MoodleFunction.SEARCH_COURSES, params)
    total = answer.get("total")
    if not isinstance(total, int):
        raise unexpected_answer(MoodleFunction.SEARCH_COURSES)
    return expect_list(answer.get("courses"), MoodleFunction.SEARCH_COURSES, key="id"), total


def _page(items: list[Any], page: int, perpage: int) -> list[Any]:
    return items[page * perpage : (page + 1) * perpage]


def _listing(courses: list[MoodleRecord], total: int, page: int, perpage: int) -> CourseListing:
    return {"courses": courses, "total": total, "page": page, "perpage": perpage}


def _is_site(course: Mapping[str, Any]) -> bool:
    return course.get("format") == SITE_FORMAT
