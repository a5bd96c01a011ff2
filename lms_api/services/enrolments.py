"""Manual enrolment in as many Moodle calls as the server's max_input_vars needs, with an exact account on failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lms_api.errors import ApiError
from lms_api.moodle.client import MoodleService
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import MoodleError
from lms_api.services.courses import course_not_found, courses_by_ids

ENROL_USERS = "enrol_manual_enrol_users"


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
        raise ApiError(400, "validationerror", "Invalid input: enrolments", {"fields": {"enrolments": problems}})
    return resolved


def enrol(moodle: MoodleService, enrolments: list[dict[str, Any]]) -> dict[str, Any]:
    """Enrol everyone or say exactly who was enrolled.

    Moodle answers ``invalidparameter`` for a course that does not exist, so the courses are checked first.
    Each Moodle call is all-or-nothing; when one fails, ``details`` lists the indexes ``applied`` by the
    earlier calls and ``not_applied`` (and ``unknown`` when the failed call's outcome cannot be known).
    """
    course_ids = list(dict.fromkeys(enrolment["courseid"] for enrolment in enrolments))
    existing = {course["id"] for course in courses_by_ids(moodle, course_ids)}
    missing = [course_id for course_id in course_ids if course_id not in existing]
    if missing:
        raise course_not_found(missing)
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
