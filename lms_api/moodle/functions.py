"""The Moodle functions the gateway calls: one declaration each, and everything the gateway does by it.

A declaration says whether the function only reads (then it is retried after a transport failure: calling it twice
changes nothing in Moodle) or writes (never sent twice), which read-cache group keeps a read's answers and whether
they are shared by every caller, which groups a write may have changed (dropped once the write may have reached
Moodle, whatever its outcome), and the shape its answer must have. Services call Moodle through these members, never
through a name typed again.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class CacheGroup(StrEnum):
    """The read cache's groups; ``CACHE_TTLS`` sets each one's time to live."""

    SITE_INFO = "siteinfo"
    COURSES = "courses"
    USERS = "users"
    NOTIFICATIONS = "notifications"


class AnswerShape(StrEnum):
    """What Moodle's answer must be before a service looks into it; anything else is a ``502 badresponse``."""

    OBJECT = "object"
    LIST = "list"
    INTEGER = "integer"
    NULL = "null"  # a function declared without a return value answers ``null``


class Behaviour(NamedTuple):
    writes: bool
    answer: AnswerShape
    cache_group: CacheGroup | None = None  # a read's: where the read cache keeps its answers
    # A cached read whose answers are the same for every caller, from parameters no caller chooses, and asked often:
    # the read cache keeps such an answer parsed, so a hit is one object whose dump the view remembers. Not for a
    # read a caller can vary: each of its answers would be kept parsed, several times the size of its entry.
    shared: bool = False
    # A cached read's parameter that names whose answer it is (``useridto``): its entries are kept apart by that
    # value, so one user's can be dropped without the others' (an event from Moodle names the user).
    partition_by: str | None = None
    drops: tuple[CacheGroup, ...] = ()  # a write's: the groups whose entries it may make wrong
    drops_nothing_because: str = ""  # a write that drops no group says why


def read(
    answer: AnswerShape, cached: CacheGroup | None = None, *, shared: bool = False, partition_by: str | None = None
) -> Behaviour:
    if (shared or partition_by) and cached is None:
        raise ValueError("only a cached read's answers are kept parsed or apart: such a read names its cache group")
    return Behaviour(False, answer, cached, shared=shared, partition_by=partition_by)


def write(answer: AnswerShape, *, drops: tuple[CacheGroup, ...] = (), drops_nothing_because: str = "") -> Behaviour:
    if not drops and not drops_nothing_because:
        raise ValueError("a write drops the cache groups it may change, or says why it changes none")
    return Behaviour(True, answer, drops=drops, drops_nothing_because=drops_nothing_because)


class MoodleFunction(StrEnum):
    """A Moodle function; the member is its name as Moodle knows it."""

    behaviour: Behaviour

    def __new__(cls, name: str, behaviour: Behaviour) -> MoodleFunction:
        member = str.__new__(cls, name)
        member._value_ = name
        member.behaviour = behaviour
        return member

    @property
    def writes(self) -> bool:
        return self.behaviour.writes

    @property
    def retried(self) -> bool:
        """Sent again after a transport failure: only a read, which changes nothing in Moodle."""
        return not self.behaviour.writes

    @property
    def cache_group(self) -> CacheGroup | None:
        return self.behaviour.cache_group

    @property
    def shared(self) -> bool:
        """Its answers are the same for every caller: the read cache keeps them parsed (see ``Behaviour.shared``)."""
        return self.behaviour.shared

    @property
    def drops(self) -> tuple[CacheGroup, ...]:
        return self.behaviour.drops

    @property
    def partition_by(self) -> str | None:
        return self.behaviour.partition_by

    @property
    def answer(self) -> AnswerShape:
        return self.behaviour.answer

    SITE_INFO = (
        "core_webservice_get_site_info",
        read(AnswerShape.OBJECT, cached=CacheGroup.SITE_INFO, shared=True),  # every page load of an SPA asks for it
    )
    GET_CATEGORIES = "core_course_get_categories", read(AnswerShape.LIST)
    GET_COURSES = "core_course_get_courses", read(AnswerShape.LIST, cached=CacheGroup.COURSES)
    GET_COURSES_BY_FIELD = "core_course_get_courses_by_field", read(AnswerShape.OBJECT, cached=CacheGroup.COURSES)
    SEARCH_COURSES = "core_course_search_courses", read(AnswerShape.OBJECT, cached=CacheGroup.COURSES)
    CREATE_COURSES = "core_course_create_courses", write(AnswerShape.LIST, drops=(CacheGroup.COURSES,))
    UPDATE_COURSES = "core_course_update_courses", write(AnswerShape.OBJECT, drops=(CacheGroup.COURSES,))
    GET_USERS_BY_FIELD = "core_user_get_users_by_field", read(AnswerShape.LIST, cached=CacheGroup.USERS)
    CREATE_USERS = "core_user_create_users", write(AnswerShape.LIST, drops=(CacheGroup.USERS,))
    UPDATE_USERS = "core_user_update_users", write(AnswerShape.OBJECT, drops=(CacheGroup.USERS,))
    GET_ENROLLED_USERS = "core_enrol_get_enrolled_users", read(AnswerShape.LIST)
    ENROL_USERS = (
        "enrol_manual_enrol_users",
        write(AnswerShape.NULL, drops_nothing_because="no cached answer lists enrolments"),
    )
    GET_POPUP_NOTIFICATIONS = (
        "message_popup_get_popup_notifications",
        read(AnswerShape.OBJECT, cached=CacheGroup.NOTIFICATIONS, partition_by="useridto"),
    )
    GET_UNREAD_COUNT = (
        "message_popup_get_unread_popup_notification_count",
        read(AnswerShape.INTEGER, cached=CacheGroup.NOTIFICATIONS, partition_by="useridto"),
    )
    SEND_INSTANT_MESSAGES = (
        "core_message_send_instant_messages",
        write(AnswerShape.LIST, drops_nothing_because="messages are not popup notifications, and none is cached"),
    )
    # Not a web-service function: upload.php is its own script; the name labels its calls in logs and errors.
    UPLOAD = "upload.php", write(AnswerShape.LIST, drops_nothing_because="draft files are never cached")
    # The sync-service plugin's function; MOODLE_ATTACH_FUNCTION names the one a site has, which the client sends.
    ATTACH_FILE = (
        "local_course_add_new_course_module_resource",
        write(AnswerShape.OBJECT, drops_nothing_because="no cached answer lists a course's modules"),
    )


# The fields core_user_get_users_by_field looks users up by.
USER_LOOKUP_FIELDS = ("id", "idnumber", "username", "email")


def _partitions() -> dict[CacheGroup, str]:
    """Each cache group whose entries are kept apart, and by which parameter: the same for all its reads."""
    partitions: dict[CacheGroup, str | None] = {}
    for function in MoodleFunction:
        group = function.cache_group
        if group is None:
            continue
        if partitions.setdefault(group, function.partition_by) != function.partition_by:
            raise ValueError(f"the reads of cache group {group} must all be kept apart by one parameter, or none")
    return {group: by for group, by in partitions.items() if by is not None}


PARTITIONED_GROUPS = _partitions()
