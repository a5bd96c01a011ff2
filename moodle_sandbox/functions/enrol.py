"""Manual enrolment (``enrol_manual_enrol_users``) and the participants list (``core_enrol_get_enrolled_users``).

``enrol/manual/externallib.php`` never looks the user up: a user id nobody has is enrolled, and the course welcome
message that follows (on by default for manual enrolments since Moodle 4.4) fails on the missing user with a PHP
``TypeError`` naming the Moodle server's own path. The gateway must not pass that message on. Nor does it check the
user's state: the guest is enrolled like anyone, and only ``role_assign()``, after the welcome message, refuses a
deleted user (or the dummy no-reply and support users) as a coding error.

A new enrolment triggers ``\\core\\event\\user_enrolment_created`` then ``role_assigned``; enrolling again triggers
``user_enrolment_updated`` when the dates or the suspension change and ``role_assigned`` for a new role. The course
welcome message is not modelled: Moodle sends it as a popup notification (``notification_sent``), the sandbox does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import PhpError, coding_exception, missing_record, moodle_exception
from moodle_sandbox.functions.formatting import format_string
from moodle_sandbox.functions.users import user_details
from moodle_sandbox.params import DEFAULT, OPTIONAL, Multiple, Single, Value, invalid_parameter
from moodle_sandbox.php import php_intval
from moodle_sandbox.records import Enrolment, User
from moodle_sandbox.registry import sandbox_function
from moodle_sandbox.seed import NOREPLY_USER_ID, SITE_COURSE_ID, SUPPORT_USER_ID

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

ENROL_USERS = Single(
    {
        "enrolments": Multiple(
            Single(
                {
                    "roleid": Value("int"),
                    "userid": Value("int"),
                    "courseid": Value("int"),
                    "timestart": Value("int", OPTIONAL),
                    "timeend": Value("int", OPTIONAL),
                    "suspend": Value("int", OPTIONAL),
                }
            )
        )
    }
)
GET_ENROLLED_USERS = Single(
    {
        "courseid": Value("int"),
        "options": Multiple(Single({"name": Value("alphanumext"), "value": Value("raw")}), DEFAULT),
    }
)
_SORT_FIELDS = ("id", "firstname", "lastname", "siteorder")
# Where enrol_plugin::send_course_welcome_message_to_user() hands core_user::get_user()'s false on, in Moodle 5.0.
WELCOME_MESSAGE_TYPE_ERROR = (
    "core\\user::get_name_placeholders(): Argument #1 ($user) must be of type stdClass, bool given, "
    "called in /var/www/moodle/lib/enrollib.php on line 3674"
)


@sandbox_function("enrol_manual_enrol_users", ENROL_USERS)
def enrol_users(site: SandboxSite, params: dict[str, Any]) -> None:
    """One transaction: the first failing enrolment undoes the whole call. Enrolling again updates the enrolment
    (dates, suspension) and adds the role if it is new, as ``enrol_plugin::enrol_user()`` does."""
    with site.transaction():
        for enrolment in params["enrolments"]:
            _enrol(site, enrolment)


def _enrol(site: SandboxSite, enrolment: dict[str, Any]) -> None:
    """The checks of ``enrol_users()`` in its order: course context, assignable role, manual instance."""
    state = site.state
    course_id, user_id, role_id = enrolment["courseid"], enrolment["userid"], enrolment["roleid"]
    if course_id not in state.courses:  # context_course::instance(IGNORE_MISSING) then validate_context()
        raise invalid_parameter("Context does not exist")
    role = state.roles.get(role_id)
    if role is None or not role.course_assignable:
        raise moodle_exception(
            "wsusercannotassign",
            f"You don't have the permission to assign this role ({role_id}) to this user ({user_id}) "
            f"in this course ({course_id}).",
        )
    if course_id == SITE_COURSE_ID:  # the front page has no manual enrolment instance
        raise moodle_exception(
            "wsnoinstance",
            f"Manual enrolment plugin instance doesn't exist or is disabled for the course (id = {course_id})",
        )
    now = site.now()
    timestart, timeend = enrolment.get("timestart", 0), enrolment.get("timeend", 0)
    status = 1 if enrolment.get("suspend") else 0
    current = state.enrolments.get((course_id, user_id))
    if current is None:
        enrolment_id = state.next_id("user_enrolments")
        state.enrolments[(course_id, user_id)] = Enrolment(
            course_id, user_id, [role_id], status, timestart, timeend, now, now, enrolment_id
        )
        _trigger_enrolment_event(site, "\\core\\event\\user_enrolment_created", enrolment_id, course_id, user_id)
        # enrol_user() has inserted the user_enrolments row when the welcome message or role_assign() fails; the error
        # aborts the call's transaction, so the caller's rollback removes the row again, with the call's other ones.
        if user_id not in state.users and user_id not in (NOREPLY_USER_ID, SUPPORT_USER_ID):
            raise PhpError("TypeError", WELCOME_MESSAGE_TYPE_ERROR)  # core_user::get_user() gave false
        _assign_role(site, user_id)
        _trigger_role_assigned(site, role_id, course_id, user_id)
        return
    if (current.status, current.timestart, current.timeend) != (status, timestart, timeend):
        current.status, current.timestart, current.timeend, current.timemodified = status, timestart, timeend, now
        _trigger_enrolment_event(site, "\\core\\event\\user_enrolment_updated", current.id, course_id, user_id)
    if role_id not in current.roleids:  # role_assign() of a role the user already holds changes nothing
        current.roleids.append(role_id)
        _trigger_role_assigned(site, role_id, course_id, user_id)


def _trigger_enrolment_event(
    site: SandboxSite, eventname: str, enrolment_id: int, course_id: int, user_id: int
) -> None:
    """``user_enrolment_created`` (before the role is assigned, as ``enrol_user()`` triggers it) and
    ``user_enrolment_updated``: the ``user_enrolments`` row is the object, the enrolled user the related user."""
    site.trigger(eventname, enrolment_id, courseid=course_id, contextinstanceid=course_id, relateduserid=user_id)


def _trigger_role_assigned(site: SandboxSite, role_id: int, course_id: int, user_id: int) -> None:
    """``role_assign()``'s event: its object is the role (the assignment's own id is in ``other``)."""
    site.trigger(
        "\\core\\event\\role_assigned", role_id, courseid=course_id, contextinstanceid=course_id, relateduserid=user_id
    )


def _assign_role(site: SandboxSite, user_id: int) -> None:
    """``role_assign()`` wants a user row that is not deleted; the dummy users have none."""
    user = site.state.users.get(user_id)
    if user is None or user.deleted:
        raise coding_exception("User ID does not exist or is deleted!", f"userid:{user_id}")


# The user details get_enrolled_users_returns() lists before the access times, and those between them and the roles.
_PARTICIPANT_HEAD = (
    "id",
    "username",
    "firstname",
    "lastname",
    "fullname",
    "email",
    "department",
    "institution",
    "idnumber",
)
_PARTICIPANT_PROFILE = (
    "description", "descriptionformat", "city", "country", "profileimageurlsmall", "profileimageurl",
)  # fmt: skip


@sandbox_function("core_enrol_get_enrolled_users", GET_ENROLLED_USERS)
def get_enrolled_users(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Everybody enrolled in the course, suspended or not, by user id unless ``options`` say otherwise.

    Options understood: ``onlyactive``, ``onlysuspended``, ``limitfrom``, ``limitnumber``, ``sortby``,
    ``sortdirection``; others (``withcapability``, ``groupid``, ``userfields``) are accepted and ignored.
    """
    course_id = params["courseid"]
    course = site.state.courses.get(course_id)
    if course is None:  # $DB->get_record('course', ..., MUST_EXIST)
        raise missing_record("course", "*", course_id, site.debug)
    options = _enrolled_users_options(params["options"])
    now = site.now()
    enrolments = [enrolment for enrolment in site.state.enrolments.values() if enrolment.courseid == course_id]
    if options["onlyactive"]:
        enrolments = [enrolment for enrolment in enrolments if enrolment.is_active(now)]
    elif options["onlysuspended"]:
        enrolments = [enrolment for enrolment in enrolments if not enrolment.is_active(now)]
    users = sorted(
        (site.state.users[enrolment.userid] for enrolment in enrolments),
        key=options["sortkey"],
        reverse=options["descending"],
    )
    start, count = max(options["limitfrom"], 0), max(options["limitnumber"], 0)
    users = users[start : start + count] if count else users[start:]
    return [_participant(site, user, course_id) for user in users]


def _enrolled_users_options(options: list[dict[str, str]]) -> dict[str, Any]:
    chosen: dict[str, Any] = {
        "onlyactive": False,
        "onlysuspended": False,
        "limitfrom": 0,
        "limitnumber": 0,
        "sortkey": lambda user: user.id,
        "descending": False,
    }
    for option in options:
        name, value = option["name"], option["value"]
        if name in ("onlyactive", "onlysuspended"):
            chosen[name] = value not in ("", "0")
        elif name in ("limitfrom", "limitnumber"):
            chosen[name] = php_intval(value)
        elif name == "sortby":
            if value not in _SORT_FIELDS:
                raise invalid_parameter(
                    f"Invalid value for sortby parameter (value: {value}), allowed values are: {','.join(_SORT_FIELDS)}"
                )
            chosen["sortkey"] = {
                "id": lambda user: user.id,
                "firstname": lambda user: user.firstname,
                "lastname": lambda user: user.lastname,
                "siteorder": lambda user: (user.lastname, user.firstname, user.id),
            }[value]
        elif name == "sortdirection":
            direction = value.upper()
            if direction not in ("ASC", "DESC"):
                raise invalid_parameter(
                    "Invalid value for sortdirection parameter\n                        "
                    f"(value: {direction}),allowed values are: ASC,DESC"
                )
            chosen["descending"] = direction == "DESC"
    return chosen


def _participant(site: SandboxSite, user: User, course_id: int) -> dict[str, Any]:
    """A user as ``get_enrolled_users`` answers, in its returns description's key order (which drops the account
    fields: auth, suspended, confirmed, lang, theme, timezone, mailformat, trackforums)."""
    details = user_details(site, user)
    record = {name: details[name] for name in _PARTICIPANT_HEAD if name in details}
    record |= {"firstaccess": user.firstaccess, "lastaccess": user.lastaccess, "lastcourseaccess": 0}
    record |= {name: details[name] for name in _PARTICIPANT_PROFILE if name in details}
    roles = sorted(site.state.enrolments[(course_id, user.id)].roleids)
    record["roles"] = [
        {
            "roleid": role_id,
            "name": site.state.roles[role_id].name,
            "shortname": site.state.roles[role_id].shortname,
            "sortorder": 0,  # role_assignments.sortorder, which Moodle never sets
        }
        for role_id in roles
    ]
    if "preferences" in details:  # the token user's own
        record["preferences"] = details["preferences"]
    courses = _enrolled_courses(site, user)
    if courses:  # Moodle leaves the key out for a user without any active enrolment
        record["enrolledcourses"] = courses
    return record


def _enrolled_courses(site: SandboxSite, user: User) -> list[dict[str, Any]]:
    """``enrol_get_users_courses($userid, true)``: active enrolments; a hidden course only for a user whose role
    there may see hidden courses (manager, editing and non-editing teacher)."""
    now = site.now()
    courses = []
    for enrolment in site.state.enrolments.values():
        course = site.state.courses[enrolment.courseid]
        if enrolment.userid != user.id or not enrolment.is_active(now):
            continue
        if course.visible or {1, 3, 4} & set(enrolment.roleids):
            courses.append(course)
    courses.sort(key=lambda course: (-course.visible, course.sortorder))
    return [
        {"id": course.id, "fullname": format_string(course.fullname), "shortname": format_string(course.shortname)}
        for course in courses
    ]
