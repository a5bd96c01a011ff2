"""The events the gateway's own writes publish, once Moodle has answered them: what a write through the gateway
changed, the streams hear at once, without waiting for Moodle's webhook (which may follow and say it again: the
events are facts to refresh by, not counts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lms_api.events import EventType, course_channel, user_channel
from lms_api.moodle.functions import MoodleFunction

Published = tuple[str, EventType, dict[str, Any]]  # channel, type, data


def _enrolled(params: Mapping[str, Any], answer: Any) -> Iterator[Published]:
    for enrolment in params.get("enrolments", ()):
        data = {"userid": enrolment["userid"], "courseid": enrolment["courseid"], "roleid": enrolment["roleid"]}
        yield user_channel(enrolment["userid"]), EventType.ENROLMENT_CREATED, data


def _courses_created(params: Mapping[str, Any], answer: Any) -> Iterator[Published]:
    for course in answer if isinstance(answer, list) else ():
        yield course_channel(course["id"]), EventType.COURSE_CREATED, {"courseid": course["id"]}


def _courses_updated(params: Mapping[str, Any], answer: Any) -> Iterator[Published]:
    # A course Moodle warned about was not updated (or not wholly): its warning names it.
    warned = {warning.get("itemid") for warning in (answer or {}).get("warnings", ()) if isinstance(warning, dict)}
    for course in params.get("courses", ()):
        if course["id"] not in warned:
            yield course_channel(course["id"]), EventType.COURSE_UPDATED, {"courseid": course["id"]}


# By the write that was answered: the events it publishes, from its parameters and Moodle's answer.
PUBLISHED_BY: Mapping[MoodleFunction, Callable[[Mapping[str, Any], Any], Iterator[Published]]] = {
    MoodleFunction.ENROL_USERS: _enrolled,
    MoodleFunction.CREATE_COURSES: _courses_created,
    MoodleFunction.UPDATE_COURSES: _courses_updated,
}


def published_by(function: MoodleFunction, params: Mapping[str, Any] | None, answer: Any) -> list[Published]:
    """The events a write of ``function`` Moodle answered publishes (none for most writes)."""
    events = PUBLISHED_BY.get(function)
    return [] if events is None else list(events(params or {}, answer))
