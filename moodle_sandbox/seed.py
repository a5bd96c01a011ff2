"""The data every new ``SandboxSite`` starts with; tests rely on these exact ids.

Categories (all top level and visible): 1 "Category 1", 2 "Science", 3 "Humanities".

Courses (id, shortname, fullname, category, format, visible, idnumber):

- 1 ``sandbox`` "lms_api Moodle sandbox", category 0, format ``site`` (the front page: listed by
  ``core_course_get_courses`` and ``core_course_get_courses_by_field`` with no field, never by the search);
- 2 ``PY101`` "Intro to Python", 1, topics, visible, "" (summary "Learn Python from scratch");
- 3 ``CHEM101`` "Chemistry Basics", 2, topics, visible, "";
- 4 ``PHYS101`` "Physics for Everyone", 2, weeks, visible, "";
- 5 ``HIST201`` "Modern History", 3, topics, hidden, "HIST-201".

New courses get ids 6, 7, ... (an id used by a rolled-back call is not given again, as with PostgreSQL).

Context ids: the front page 2 (as on every Moodle site), courses 2-5 get 11-14 (on the recorded site the first
course created got 11); each new course or user takes the next one, from 15.

Users (id, username, first and last name, email, idnumber): 1 guest "Guest user" " " guest@example.com "";
2 admin "Admin" "User" admin@example.com "" (site admin, the token's user); 3 student1 "Ada" "Lovelace" "S001";
4 student2 "Alan" "Turing" "S002"; 5 teacher1 "Grace" "Hopper" "T001"; 6 student3 "Katherine" "Johnson" "S003";
the emails of 3-6 are ``<username>@example.com``. 7 is a deleted user, once student4 "Dorothy" "Vaughan"
student4@example.com "S004", as Moodle's delete_user() leaves one: username ``student4@example.com.<time deleted>``,
email the md5 of "student4", no idnumber, ``deleted`` 1, no user context. New users get ids 8, 9, ...

Nobody has stored preferences: the admin's own details list only ``_lastloaded``, the time they were read. Theme
image URLs carry revision 1795619406 (``SandboxSite.theme_revision``).

Roles: 1 manager, 2 coursecreator, 3 editingteacher, 4 teacher, 5 student, 6 guest, 7 user, 8 frontpage; only
1, 3, 4 and 5 can be given in a course. Course contacts are the editing teachers (role 3).

Popup notifications, all from the no-reply user (-10) about PY101: to admin, 1 "Grade released for PY101" and
2 "New resource in PY101", both unread (2 is newer); to student1, 3 "Welcome to PY101" (read) and 4 "Assignment due
soon" (unread). Nobody else has any.

No enrolments, draft files, course modules, personal messages or conversations at the start.
"""

from __future__ import annotations

import hashlib
from typing import Any

from moodle_sandbox.records import Category, Course, Notification, Role, SiteState, User

SITE_COURSE_ID = 1
GUEST_USER_ID = 1
ADMIN_USER_ID = 2
DELETED_USER_ID = 7
ADMIN_CONTEXT_ID = 5  # the admin's user context, home of their draft files
SITE_CONTEXT_ID = 2  # the front page's course context
NOREPLY_USER_ID = -10
SUPPORT_USER_ID = -20
EDITING_TEACHER_ROLE_ID = 3
# Default options of each course format, as course_get_format()->get_format_options() lists them.
FORMAT_OPTIONS: dict[str, dict[str, int | str]] = {
    "site": {"numsections": 1},
    "topics": {"hiddensections": 1, "coursedisplay": 0},
    "weeks": {"hiddensections": 1, "coursedisplay": 0, "automaticenddate": 1},
    "social": {"numdiscussions": 10},
    "singleactivity": {"activitytype": "forum"},
}
_COURSE_CONTEXT_IDS = {SITE_COURSE_ID: SITE_CONTEXT_ID, 2: 11, 3: 12, 4: 13, 5: 14}
_DAY = 86400
_WEEK = 7 * _DAY


def _course(course_id: int, shortname: str, fullname: str, category: int, course_format: str, **fields: Any) -> Course:
    return Course(
        id=course_id,
        shortname=shortname,
        fullname=fullname,
        category=category,
        format=course_format,
        format_options=dict(FORMAT_OPTIONS[course_format]),
        contextid=_COURSE_CONTEXT_IDS[course_id],
        **fields,
    )


def _sections(last: int) -> dict[int, list[int]]:
    return {number: [] for number in range(last + 1)}


def seed_state(now: int) -> SiteState:
    """A new site's data; times that should look recent (notifications) are relative to ``now``."""
    created = now - 30 * _DAY
    times = {"timecreated": created, "timemodified": created, "cacherev": created}
    courses = [
        _course(
            SITE_COURSE_ID, "sandbox", "lms_api Moodle sandbox", 0, "site", sortorder=1, summaryformat=0,
            newsitems=3, enablecompletion=0, showcompletionconditions=None, sections=_sections(1), **times,
        ),
        _course(
            2, "PY101", "Intro to Python", 1, "topics", sortorder=10001, summary="Learn Python from scratch",
            startdate=1767225600, enddate=1782864000, sections=_sections(4), **times,
        ),
        _course(
            3, "CHEM101", "Chemistry Basics", 2, "topics", sortorder=20002,
            summary="Atoms, molecules and reactions", startdate=1767225600, sections=_sections(4), **times,
        ),
        _course(
            4, "PHYS101", "Physics for Everyone", 2, "weeks", sortorder=20001, summary="Mechanics, waves and energy",
            startdate=1767571200, enddate=1767571200 + 7200 + 10 * _WEEK,
            sections=_sections(10), **times,
        ),
        _course(
            5, "HIST201", "Modern History", 3, "topics", sortorder=30001, visible=0, idnumber="HIST-201",
            summary="From 1789 to today", startdate=1756684800, enddate=1772323200, sections=_sections(4),
            **times,
        ),
    ]  # fmt: skip
    users = [
        User(GUEST_USER_ID, "guest", "Guest user", " ", "guest@example.com"),
        User(
            ADMIN_USER_ID, "admin", "Admin", "User", "admin@example.com", siteadmin=True,
            firstaccess=now - 60 * _DAY, lastaccess=now - 60,
        ),
        User(3, "student1", "Ada", "Lovelace", "student1@example.com", idnumber="S001"),
        User(4, "student2", "Alan", "Turing", "student2@example.com", idnumber="S002"),
        User(5, "teacher1", "Grace", "Hopper", "teacher1@example.com", idnumber="T001"),
        User(6, "student3", "Katherine", "Johnson", "student3@example.com", idnumber="S003"),
        User(
            DELETED_USER_ID, f"student4@example.com.{now - _DAY}", "Dorothy", "Vaughan",
            hashlib.md5(b"student4", usedforsecurity=False).hexdigest(), deleted=1, timecreated=created,
        ),
    ]  # fmt: skip
    roles = [
        Role(1, "manager", True),
        Role(2, "coursecreator", False),
        Role(EDITING_TEACHER_ROLE_ID, "editingteacher", True),
        Role(4, "teacher", True),
        Role(5, "student", True),
        Role(6, "guest", False),
        Role(7, "user", False),
        Role(8, "frontpage", False),
    ]
    categories = [
        Category(1, "Category 1", 10000, timemodified=created),
        Category(2, "Science", 20000, timemodified=created),
        Category(3, "Humanities", 30000, timemodified=created),
    ]
    for category in categories:
        category.coursecount = sum(1 for course in courses if course.category == category.id)
    notifications = [
        _notification(1, ADMIN_USER_ID, "Grade released for PY101", now - 7200),
        _notification(2, ADMIN_USER_ID, "New resource in PY101", now - 3600),
        _notification(3, 3, "Welcome to PY101", now - 2 * _DAY, timeread=now - _DAY),
        _notification(4, 3, "Assignment due soon", now - 1800),
    ]
    return SiteState(
        categories={category.id: category for category in categories},
        courses={course.id: course for course in courses},
        users={user.id: user for user in users},
        roles={role.id: role for role in roles},
        notifications={notification.id: notification for notification in notifications},
        sequences={
            "course": 5,
            "course_modules": 0,
            "resource": 0,
            "user": DELETED_USER_ID,
            "context": 14,
            "user_enrolments": 0,
            "messages": 0,
            "message_conversations": 0,
        },
    )


def _notification(notification_id: int, useridto: int, subject: str, timecreated: int, **fields: Any) -> Notification:
    """Shaped like the notifications of the recorded Moodle (plain text, an HTML copy, a link to PY101)."""
    return Notification(
        id=notification_id,
        useridfrom=NOREPLY_USER_ID,
        useridto=useridto,
        subject=subject,
        fullmessage=f"{subject} (full message text)",
        fullmessageformat=2,
        fullmessagehtml=f"<p>{subject}</p>",
        smallmessage=subject,
        contexturl="/course/view.php?id=2",
        contexturlname="Intro to Python",
        timecreated=timecreated,
        **fields,
    )
