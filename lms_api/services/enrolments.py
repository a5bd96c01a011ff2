"""Manual enrolment in as many Moodle calls as the server's max_input_vars needs, with an exact account on failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import MoodleClient
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import MoodleError
from lms_api.services.courses import GET_COURSES, courses_by_ids
from lms_api.services.notfound import missing_ids
from lms_api.services.users import GET_USERS_BY_FIELD, missing_user_ids

ENROL_USERS = "enrol_manual_enrol_users"


class EnrolResult(TypedDict):
    enrolled: int
    calls: int  # Moodle calls the batch was split into


def resolve_roles(enrolments: list[dict[str, Any]], role_ids: Mapping[str, int]) -> list[dict[str, Any]]:
    """Replace role names (``student``) by the site's role ids; an unknown name is a 400 naming it."""
    resolved, problems = [], {}
    for index, enrolment in enumerate(enrolments):
        role = enrolment["roleid"]
        if isinstance(role, str):
            if role not in role_ids:
                known = ", ".join(f"{name} ({number})" for name, number in sorted(role_ids.items()))
                problems[index] = {"roleid": [f"Unknown role {role!r}; known roles: {known}, or a role id"]}
                continue
            enrolment = {**enrolment, "roleid": role_ids[role]}
        resolved.append(enrolment)
    if problems:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "Invalid input: enrolments", {"fields": {"enrolments": problems}})
    return resolved


def enrol(moodle: MoodleClient, enrolments: list[dict[str, Any]]) -> EnrolResult:
    """Enrol everyone or say exactly who was enrolled.

    The courses and users are checked before anything is written: Moodle answers ``invalidparameter`` for a
    course that does not exist and fails with a PHP TypeError for a user that does not exist. Each Moodle call
    is all-or-nothing; when one fails, ``details`` lists the indexes ``applied`` by the earlier calls and
    ``not_applied`` (and ``unknown`` when the failed call's outcome cannot be known).
    """
    moodle.require(GET_COURSES, GET_USERS_BY_FIELD, ENROL_USERS)  # a 501 before any call
    course_ids = list(dict.fromkeys(enrolment["courseid"] for enrolment in enrolments))
    existing = {course["id"] for course in courses_by_ids(moodle, course_ids)}
    missing_courses = [course_id for course_id in course_ids if course_id not in existing]
    missing_users = missing_user_ids(moodle, (enrolment["userid"] for enrolment in enrolments))
    if missing_courses or missing_users:
        raise _not_found(missing_courses, missing_users)
    runs = split_by_input_vars("enrolments", enrolments, {}, moodle.max_input_vars)
    for number, run in enumerate(runs):
        try:
            moodle.call(ENROL_USERS, {"enrolments": enrolments[run.start : run.stop]})
        except MoodleError as error:
            later = list(range(run.stop, len(enrolments)))
            account: dict[str, list[int]] = {"applied": list(range(run.start))}
            if error.details.get("outcome") == "unknown":
                account |= {"unknown": list(run), "not_applied": later}
            else:
                account["not_applied"] = list(run) + later
            error.details |= account | {"calls": len(runs), "failed_call": number + 1}
            raise
    return {"enrolled": len(enrolments), "calls": len(runs)}


def _not_found(missing_courses: list[int], missing_users: list[int]) -> ApiError:
    """One 404 naming every missing course and user, so a caller fixes the request once; a missing course
    (``coursenotfound``) is named first, as a course is what every enrolment of the batch is about."""
    named: list[str] = []
    details: dict[str, list[int]] = {}
    if missing_courses:
        named.append(missing_ids("course", "courses", missing_courses))
        details["missing_courses"] = missing_courses
    if missing_users:
        named.append(missing_ids("user", "users", missing_users))
        details["missing_users"] = missing_users
    code = ErrorCode.COURSE_NOT_FOUND if missing_courses else ErrorCode.USER_NOT_FOUND
    return ApiError(code, f"No {' and no '.join(named)} in Moodle; nothing was enrolled", details)
