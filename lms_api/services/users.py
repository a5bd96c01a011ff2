"""Users by id, idnumber, username or email, with the values Moodle silently left out named."""

from __future__ import annotations

from typing import Any

from lms_api.moodle.client import MoodleService
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import expect_list

GET_USERS_BY_FIELD = "core_user_get_users_by_field"
USER_FIELDS = ("id", "idnumber", "username", "email")


def users_by_field(moodle: MoodleService, field: str, values: list[str | int]) -> dict[str, Any]:
    """The users whose ``field`` is one of ``values``; ``missing`` lists the values no user matched.

    Values are compared the way Moodle looks them up: usernames are lower-case in Moodle (and sent so),
    emails are matched without regard to case, since that depends on the database's collation.
    """
    wanted = list(dict.fromkeys(values))
    sent = list(dict.fromkeys(_as_sent(field, value) for value in wanted))
    users: dict[int, dict[str, Any]] = {}
    for run in split_by_input_vars("values", sent, {"field": field}, moodle.max_input_vars):
        answer = moodle.call(GET_USERS_BY_FIELD, {"field": field, "values": sent[run.start : run.stop]})
        for user in expect_list(answer, GET_USERS_BY_FIELD, key="id"):
            users.setdefault(user["id"], user)
    found = {_match_key(field, user.get(field)) for user in users.values()}
    missing = [value for value in wanted if _match_key(field, _as_sent(field, value)) not in found]
    if missing and any(field not in user for user in users.values()):
        # Moodle hides idnumber, email or username from tokens that may not see them; ask value by value.
        missing = [value for value in missing if not _found_alone(moodle, field, _as_sent(field, value))]
    return {"users": sorted(users.values(), key=lambda user: user["id"]), "missing": missing}


def _found_alone(moodle: MoodleService, field: str, value: str | int) -> bool:
    return bool(expect_list(moodle.call(GET_USERS_BY_FIELD, {"field": field, "values": [value]}), GET_USERS_BY_FIELD))


def _as_sent(field: str, value: str | int) -> str | int:
    return value.lower() if field == "username" and isinstance(value, str) else value


def _match_key(field: str, value: Any) -> Any:
    return value.casefold() if field == "email" and isinstance(value, str) else value
