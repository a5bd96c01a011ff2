"""Services read Moodle's answers and build their own: the read cache hands the same answer to every request."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from lms_api.drafts import LocalDraftOwners
from lms_api.moodle.client import FileUpload, Moodle
from lms_api.moodle.functions import MoodleFunction
from lms_api.security import Identity
from lms_api.services import courses, enrolments, files, notifications, users
from tests.support.gateway import settings_for
from tests.unit.mocked_moodle import SITE_COURSE, by_field_answer, course, users_answer


class SharedAnswers:
    """A :class:`Moodle` whose answers are shared objects, as cached answers are: each is handed out as it is, and
    a copy is kept to tell whether a service changed it."""

    max_input_vars = 5000

    def __init__(self, answers: Mapping[MoodleFunction, Any]) -> None:
        self.answers = answers
        self.handed_out: list[tuple[Any, Any]] = []

    def call(self, function: MoodleFunction, params: Mapping[str, Any] | None = None) -> Any:
        answer = self.answers[function]
        self.handed_out.append((answer, copy.deepcopy(answer)))
        return answer

    def require(self, *functions: MoodleFunction) -> None:
        pass

    def clean(self, text: str) -> str:
        return text

    def upload(self, files: Sequence[FileUpload], itemid: int = 0) -> list[dict[str, Any]]:
        raise AssertionError("no upload here")

    def forget_functions(self) -> None:
        pass

    def changed(self) -> list[Any]:
        return [before for answer, before in self.handed_out if answer != before]


COURSES = [SITE_COURSE, course(2), course(3, categoryid=4)]
ANSWERS: dict[MoodleFunction, Any] = {
    MoodleFunction.GET_COURSES: COURSES,
    MoodleFunction.GET_COURSES_BY_FIELD: by_field_answer(course(2), course(3, categoryid=4)),
    MoodleFunction.SEARCH_COURSES: {"total": 2, "courses": [{"id": 3, "categoryid": 4}, {"id": 2, "categoryid": 1}]},
    MoodleFunction.GET_CATEGORIES: [{"id": 4, "name": "Maths"}],
    MoodleFunction.UPDATE_COURSES: {"warnings": []},
    MoodleFunction.CREATE_COURSES: [{"id": 6, "shortname": "NEW1"}],
    MoodleFunction.GET_USERS_BY_FIELD: [{**user, "email": f"U{user['id']}@X.ORG"} for user in users_answer(3, 5)],
    MoodleFunction.ENROL_USERS: None,
    MoodleFunction.GET_POPUP_NOTIFICATIONS: {"notifications": [{"id": 9, "subject": "Due"}], "unreadcount": 1},
    MoodleFunction.GET_UNREAD_COUNT: 1,
    MoodleFunction.ATTACH_FILE: {"message": "Successful", "id": "17"},
}
ENROLMENTS = [{"roleid": 5, "userid": 3, "courseid": 2}, {"roleid": 5, "userid": 5, "courseid": 3}]
SETTINGS = settings_for("https://moodle.test", "token")
CALLER = Identity("ada", frozenset({"admin"}))
FORMATS = ("topics",)


def attached(moodle: Moodle) -> Any:
    owners = LocalDraftOwners()
    owners.remember(7, CALLER.sub)
    fields = {"courseid": 2, "draftitemid": 7, "name": "Slides", "section": 1, "visible": True}
    return files.attach(moodle, fields, owners=owners, sub=CALLER.sub)


SERVICES: dict[str, Callable[[Moodle], Any]] = {
    "all-courses": lambda moodle: courses.list_courses(moodle, page=0, perpage=1),
    "courses-in-category": lambda moodle: courses.list_courses(moodle, category=4),
    "search": lambda moodle: courses.list_courses(moodle, search="py", perpage=1),
    "search-in-category": lambda moodle: courses.list_courses(moodle, search="py", category=4),
    "by-ids": lambda moodle: courses.courses_by_ids(moodle, [3, 1, 2]),
    "one-course": lambda moodle: courses.get_course(moodle, 2),
    "create": lambda moodle: courses.create_course(moodle, {"shortname": "NEW1", "categoryid": 4}, FORMATS),
    "update-and-move": lambda moodle: courses.update_course(moodle, 2, {"categoryid": 4}, FORMATS),
    "category": lambda moodle: courses.require_category(moodle, 4),
    "users-by-email": lambda moodle: users.users_by_field(moodle, "email", ["u3@x.org", "u4@x.org"]),
    "user-ids": lambda moodle: users.user_ids(moodle, [3, 4, 5]),
    "enrol": lambda moodle: enrolments.enrol(moodle, ENROLMENTS, SETTINGS, CALLER),
    "notifications": lambda moodle: notifications.notifications(moodle, CALLER, 2, 10, 0),
    "unread-count": lambda moodle: notifications.unread_count(moodle, CALLER, 2),
    "attach": attached,
}


@pytest.mark.parametrize("service", SERVICES.values(), ids=SERVICES)
def test_a_service_leaves_the_answers_it_reads_as_they_were(service):
    moodle = SharedAnswers(copy.deepcopy(ANSWERS))

    first = copy.deepcopy(service(moodle))
    second = service(moodle)  # the same answers again, as a cache hit hands them out

    assert moodle.handed_out, "the service read nothing"
    assert moodle.changed() == []
    assert second == first


def test_a_service_that_changed_an_answer_would_be_caught():
    moodle = SharedAnswers(copy.deepcopy(ANSWERS))

    moodle.call(MoodleFunction.GET_COURSES).pop()

    assert moodle.changed() == [COURSES]
