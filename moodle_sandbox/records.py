"""The sandbox's database: one dataclass per Moodle table it needs, and ``SiteState`` holding them all.

Each record keeps Moodle's column names, so the functions can copy them into answers field by field. Everything in
a ``SiteState`` is guarded by ``SandboxSite.lock``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Part of every theme image URL; a real site bumps it when its theme caches are purged.
THEME_REVISION = 1795619406
CONTEXT_COURSE = 50


def theme_image_url(base_url: str, revision: int, image: str) -> str:
    """``$OUTPUT->image_url()``: e.g. ``u/f1`` (default user picture) or ``i/marker`` (notification icon)."""
    return f"{base_url}/theme/image.php/boost/core/{revision}/{image}"


@dataclass
class Category:
    """A row of ``course_categories``. ``coursecount`` is Moodle's stored count: only ``fix_course_sortorder()``
    (after creating or moving a course) brings it up to date, so it can lag behind the ``course`` table."""

    id: int
    name: str
    sortorder: int
    visible: int = 1
    parent: int = 0
    idnumber: str = ""
    description: str = ""
    descriptionformat: int = 0
    visibleold: int = 1
    timemodified: int = 0
    coursecount: int = 0
    theme: str | None = None


@dataclass
class Course:
    """A row of ``course``; ``sections`` maps each section number to its course-module ids, in page order."""

    id: int
    shortname: str
    fullname: str
    category: int
    format: str
    sortorder: int
    timecreated: int
    timemodified: int
    summary: str = ""
    summaryformat: int = 1
    idnumber: str = ""
    visible: int = 1
    startdate: int = 0
    enddate: int = 0
    showgrades: int = 1
    newsitems: int = 5
    maxbytes: int = 0
    showreports: int = 0
    groupmode: int = 0
    groupmodeforce: int = 0
    defaultgroupingid: int = 0
    enablecompletion: int = 1
    completionnotify: int = 0
    showactivitydates: bool = False
    showcompletionconditions: bool | None = True
    lang: str = ""
    theme: str = ""
    calendartype: str = ""
    marker: int = 0
    legacyfiles: int = 0
    requested: int = 0
    cacherev: int = 0
    format_options: dict[str, int | str] = field(default_factory=dict)
    sections: dict[int, list[int]] = field(default_factory=lambda: {0: []})
    contextid: int = 0  # the course's row in Moodle's context table

    @property
    def last_section(self) -> int:
        """``course_format::get_last_section_number()``, which web services call ``numsections``."""
        return max(self.sections)


@dataclass
class User:
    id: int
    username: str
    firstname: str
    lastname: str
    email: str
    idnumber: str = ""
    auth: str = "manual"
    confirmed: int = 1
    suspended: int = 0
    lang: str = "en"
    theme: str = ""
    timezone: str = "99"
    mailformat: int = 1
    trackforums: int = 0
    department: str = ""
    institution: str = ""
    city: str = ""
    country: str = ""
    description: str | None = None  # NULL until set: user_get_user_details() then leaves it out
    descriptionformat: int = 1
    firstaccess: int = 0
    lastaccess: int = 0
    siteadmin: bool = False
    emailstop: int = 0  # "disable notifications": Moodle then lists none of the user's popup notifications
    timecreated: int = 0
    timemodified: int = 0
    # Rows of user_preferences, in the order they were first set (the order Moodle reads them back by id).
    preferences: dict[str, str] = field(default_factory=dict)
    # delete_user() keeps the row with deleted=1, a username made from the email and the time, the old username's md5
    # as email and no idnumber, and deletes the user's context.
    deleted: int = 0

    @property
    def fullname(self) -> str:
        return f"{self.firstname} {self.lastname}"


@dataclass
class Role:
    """A role; only those with ``course_assignable`` can be given in a course by the token's admin."""

    id: int
    shortname: str
    course_assignable: bool
    name: str = ""


@dataclass
class Enrolment:
    """A manual enrolment (``user_enrolments``, whose row ``id`` it keeps) with the roles it gave in the course
    (``role_assignments``)."""

    courseid: int
    userid: int
    roleids: list[int]
    status: int
    timestart: int
    timeend: int
    timecreated: int
    timemodified: int
    id: int = 0

    def is_active(self, now: int) -> bool:
        return self.status == 0 and self.timestart <= now and (self.timeend == 0 or self.timeend > now)


@dataclass
class Notification:
    """A popup notification; ``contexturl`` is a path, given the site's URL when answered."""

    id: int
    useridfrom: int
    useridto: int
    subject: str
    fullmessage: str
    fullmessageformat: int
    fullmessagehtml: str
    smallmessage: str
    contexturl: str
    contexturlname: str
    timecreated: int
    timeread: int | None = None
    component: str = "moodle"
    eventtype: str = "notices"
    customdata: str | None = None


@dataclass
class Message:
    """A row of ``messages``: a personal message, in the conversation of its sender and recipient. Not a popup
    notification: those are the ``notifications`` table, which messages never enter."""

    id: int
    useridfrom: int
    conversationid: int
    smallmessage: str
    fullmessageformat: int
    timecreated: int


@dataclass
class DraftFile:
    """A file in the token user's draft area; only its name and size are kept, never its bytes."""

    itemid: int
    filepath: str
    filename: str
    filesize: int
    timecreated: int


@dataclass
class CourseModule:
    """A resource made by the sync-service plugin, with the files copied from its draft area."""

    id: int
    course: int
    section: int
    modname: str
    instance: int
    name: str
    visible: int
    availability: str | None
    draftitemid: int
    files: list[DraftFile]
    added: int


@dataclass
class SiteState:
    """Every table of the site, and the id sequences (which, like PostgreSQL's, survive a rollback)."""

    categories: dict[int, Category]
    courses: dict[int, Course]
    users: dict[int, User]
    roles: dict[int, Role]
    notifications: dict[int, Notification]
    enrolments: dict[tuple[int, int], Enrolment] = field(default_factory=dict)
    drafts: dict[int, list[DraftFile]] = field(default_factory=dict)
    course_modules: dict[int, CourseModule] = field(default_factory=dict)
    messages: dict[int, Message] = field(default_factory=dict)
    # message_conversations of two users (or one, messaging themselves), by the ids of their members.
    conversations: dict[frozenset[int], int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)

    def next_id(self, table: str) -> int:
        """The next id of ``table``: one past the highest id seeded, then counting up."""
        self.sequences[table] = self.sequences[table] + 1
        return self.sequences[table]
