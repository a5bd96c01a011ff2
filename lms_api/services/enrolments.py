"""Manual enrolment in as many Moodle calls as the server's max_input_vars needs, with an exact account on failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import Moodle
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import OUTCOME_PARTIAL, OUTCOME_UNKNOWN, MoodleError, expect_list
from lms_api.moodle.functions import MoodleFunction
from lms_api.security import Identity, Scope
from lms_api.services.courses import courses_by_ids
from lms_api.services.notfound import missing_ids
from lms_api.services.progress import Progress, advanced, stopped
from lms_api.services.users import GUEST_USER_ID, UserIds, user_ids
from lms_api.settings import Settings


class EnrolResult(TypedDict):
    enrolled: int
    calls: int  # Moodle calls the batch was split into


def resolve_roles(enrolments: list[dict[str, Any]], settings: Settings, identity: Identity) -> list[dict[str, Any]]:
    """Replace role names (``student``) by the site's role ids, allowing only the roles the gateway knows.

    A role neither named nor numbered in ``moodle_role_ids`` is a 400 listing the known ones (Moodle would answer
    a misleading ``wsusercannotassign``). A known role outside ``moodle_assignable_roles`` (``manager``) needs the
    ``admin`` scope: a 403 ``forbidden`` otherwise. What is allowed is the Moodle role, whatever name it is given.
    """
    role_ids = settings.moodle_role_ids
    known = ", ".join(f"{name} ({number})" for name, number in sorted(role_ids.items(), key=lambda item: item[1]))
    assignable = {role_ids[name] for name in settings.moodle_assignable_roles}
    resolved, problems, beyond_write = [], {}, set()
    for index, enrolment in enumerate(enrolments):
        role = enrolment["roleid"]
        role_id = role_ids.get(role) if isinstance(role, str) else role
        if not isinstance(role_id, int) or role_id not in role_ids.values():
            problems[index] = {"roleid": [f"Unknown role {role!r}{_hint(role, role_ids)}; known roles: {known}"]}
            continue
        if role_id not in assignable:
            beyond_write.add(_names_of(role_id, role_ids))
        resolved.append({**enrolment, "roleid": role_id})
    if problems:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "Invalid input: enrolments", {"fields": {"enrolments": problems}})
    if beyond_write and not identity.has_scope(Scope.ADMIN):
        raise ApiError(
            ErrorCode.FORBIDDEN,
            f"Assigning the role {', '.join(sorted(beyond_write))} needs the admin scope; enrol:write may assign "
            f"{', '.join(settings.moodle_assignable_roles)}",
            {"required_scope": Scope.ADMIN.value, "roles": sorted(beyond_write)},
        )
    return resolved


def _names_of(role_id: int, role_ids: Mapping[str, int]) -> str:
    """``manager``, or every name the settings give the role: ``learner/student``."""
    return "/".join(sorted(name for name, number in role_ids.items() if number == role_id))


def _hint(role: object, role_ids: Mapping[str, int]) -> str:
    """The known name ``role`` differs from only in case or surrounding blanks, as a question."""
    if not isinstance(role, str):
        return ""
    near = [name for name in role_ids if name == role.strip().casefold()]
    return f" (did you mean {near[0]!r}?)" if near else ""


def enrol(moodle: Moodle, wanted: list[dict[str, Any]], settings: Settings, caller: Identity) -> EnrolResult:
    """Enrol everyone or say exactly who was enrolled: :func:`prepare_enrol`, then its plan applied."""
    return prepare_enrol(moodle, wanted, settings, caller).apply()


def prepare_enrol(moodle: Moodle, wanted: list[dict[str, Any]], settings: Settings, caller: Identity) -> EnrolPlan:
    """Every check of an enrolment, before anything is written: its plan (:class:`EnrolPlan`) writes it.

    The roles are resolved first (:func:`resolve_roles`, held to what ``caller`` may assign), then the guest is
    refused: Moodle 5.0 would enrol it. The courses and users are checked before anything is written: Moodle answers
    ``invalidparameter`` for a course that does not exist, fails with a PHP TypeError for a user that does not exist
    and with a coding error for a deleted one.
    """
    enrolments = resolve_roles(wanted, settings, caller)
    # Moodle 5.0's enrol_manual_enrol_users enrols the guest like anyone: it checks neither the user nor its state.
    guests = [index for index, enrolment in enumerate(enrolments) if enrolment["userid"] == GUEST_USER_ID]
    if guests:
        raise ApiError(
            ErrorCode.GUESTS_ARE_NOT_ALLOWED,
            f"The guest user (id {GUEST_USER_ID}) cannot be enrolled; nothing was enrolled",
            {"enrolments": guests},
        )
    # Every function is checked first: a 501 before any call.
    moodle.require(MoodleFunction.GET_COURSES, MoodleFunction.GET_USERS_BY_FIELD, MoodleFunction.ENROL_USERS)
    course_ids = list(dict.fromkeys(enrolment["courseid"] for enrolment in enrolments))
    existing = {course["id"] for course in courses_by_ids(moodle, course_ids)}
    missing_courses = [course_id for course_id in course_ids if course_id not in existing]
    users = user_ids(moodle, (enrolment["userid"] for enrolment in enrolments))
    if missing_courses or users.missing or users.unchecked:
        raise _not_found(missing_courses, users)
    return EnrolPlan(moodle, enrolments)


class EnrolPlan:
    """Checked enrolments, written by :meth:`apply`."""

    def __init__(self, moodle: Moodle, enrolments: list[dict[str, Any]]) -> None:
        self._moodle = moodle
        self._enrolments = enrolments
        self.total = len(enrolments)

    def data(self) -> dict[str, Any]:
        """What :meth:`from_data` rebuilds the plan from, as JSON: a job queued in Redis carries it."""
        return {"enrolments": self._enrolments}

    @classmethod
    def from_data(cls, moodle: Moodle, settings: Settings, data: dict[str, Any]) -> EnrolPlan:
        """The plan of :meth:`data`, checked when it was made: not checked again."""
        return cls(moodle, data["enrolments"])

    def apply(self, progress: Progress | None = None) -> EnrolResult:
        """Send the enrolments in as many calls as max_input_vars needs, each all-or-nothing. When one fails,
        ``details`` lists the indexes ``applied`` by the earlier calls and ``not_applied`` (and ``unknown`` when the
        failed call's outcome cannot be known); when ``progress`` stops it between calls, ``applied`` and
        ``not_attempted`` (:func:`~lms_api.services.progress.stopped`)."""
        moodle, enrolments = self._moodle, self._enrolments
        runs = split_by_input_vars("enrolments", enrolments, {}, moodle.max_input_vars)
        for number, run in enumerate(runs):
            try:
                moodle.call(MoodleFunction.ENROL_USERS, {"enrolments": enrolments[run.start : run.stop]})
            except MoodleError as error:
                later = list(range(run.stop, len(enrolments)))
                account: dict[str, Any] = {"applied": list(range(run.start))}
                if error.details.get("outcome") == OUTCOME_UNKNOWN:
                    account |= {"unknown": list(run), "not_applied": later}
                else:
                    account["not_applied"] = list(run) + later
                    if run.start:
                        account["outcome"] = OUTCOME_PARTIAL
                account |= {"calls": len(runs), "failed_call": number + 1}
                raise type(error)(
                    error.code, error.message, {**error.details, **account}, status=error.status, headers=error.headers
                ) from error
            if number + 1 < len(runs) and not advanced(progress, run.stop, self.total):
                applied = list(range(run.stop))
                raise stopped(
                    f"{len(applied)} of {self.total} enrolments applied",
                    applied_any=True,
                    applied=applied,
                    not_attempted=list(range(run.stop, self.total)),
                    calls=len(runs),
                    calls_made=number + 1,
                )
        advanced(progress, self.total, self.total)
        return {"enrolled": len(enrolments), "calls": len(runs)}


def enrolled_already(
    moodle: Moodle, wanted: list[dict[str, Any]], settings: Settings, caller: Identity
) -> EnrolResult | None:
    """After an answer that left the enrolment's outcome unknown or partial: the answer :func:`enrol` would have
    given when every user holds the role in the course now (one participants call per course), else None. Enrolling
    again those who are enrolled changes nothing in Moodle, so a batch found incomplete is sent again whole."""
    enrolments = resolve_roles(wanted, settings, caller)
    moodle.require(MoodleFunction.GET_ENROLLED_USERS)
    for course_id in dict.fromkeys(enrolment["courseid"] for enrolment in enrolments):
        try:
            answer = moodle.call(
                MoodleFunction.GET_ENROLLED_USERS,
                {"courseid": course_id, "options": [{"name": "userfields", "value": "id,roles"}]},
            )
        except MoodleError as error:
            if error.status == 404:  # the course is gone: the enrolment would find it missing
                return None
            raise
        held = {
            (participant["id"], role.get("roleid"))
            for participant in expect_list(answer, MoodleFunction.GET_ENROLLED_USERS, key="id")
            for role in participant.get("roles") or ()
            if isinstance(role, dict)
        }
        in_course = (enrolment for enrolment in enrolments if enrolment["courseid"] == course_id)
        if any((enrolment["userid"], enrolment["roleid"]) not in held for enrolment in in_course):
            return None
    runs = split_by_input_vars("enrolments", enrolments, {}, moodle.max_input_vars)
    return {"enrolled": len(enrolments), "calls": len(runs)}


def _not_found(missing_courses: list[int], users: UserIds) -> ApiError:
    """One 404 naming every missing course and user, so a caller fixes the request once; a missing course
    (``coursenotfound``) is named first, as a course is what every enrolment of the batch is about. A deleted user
    counts as missing (``details.deleted_users`` says which): Moodle keeps no account under its id."""
    named: list[str] = []
    details: dict[str, list[int]] = {}
    if missing_courses:
        named.append(missing_ids("course", "courses", missing_courses))
        details["missing_courses"] = missing_courses
    if users.missing:
        named.append(missing_ids("user", "users", users.missing))
        details["missing_users"] = users.missing
    if users.deleted:
        details["deleted_users"] = users.deleted
    sentences = [f"No {' and no '.join(named)} in Moodle"] if named else []
    if users.deleted:
        sentences[-1] += f" ({missing_ids('user', 'users', users.deleted)} deleted)"
    if users.unchecked:
        # Each deleted user found costs Moodle calls; the ones left past the bound are named for another request.
        # They are only ever left over from a lookup Moodle failed, which proves a deleted user among them: a 404.
        details["unchecked_users"] = users.unchecked
        unchecked = missing_ids("user", "users", users.unchecked)
        sentences.append(f"{unchecked[0].upper()}{unchecked[1:]} could not be checked: send them in another request")
    message = "; ".join(sentences)
    code = ErrorCode.COURSE_NOT_FOUND if missing_courses else ErrorCode.USER_NOT_FOUND
    return ApiError(code, f"{message}; nothing was enrolled", details)
