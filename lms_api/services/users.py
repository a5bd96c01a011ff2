"""Users by id, idnumber, username or email, with the values Moodle silently left out named."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import Moodle
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import MoodleRecord, expect_list
from lms_api.services.notfound import not_found

GET_USERS_BY_FIELD = "core_user_get_users_by_field"
USER_FIELDS = ("id", "idnumber", "username", "email")
# When Moodle hides the field from the gateway's token, each value it did not match is asked alone; this bounds
# those calls per request (a request may name 1,000 values), and the values past it are answered as unchecked.
MAX_SINGLE_VALUE_CALLS = 20


class UsersFound(TypedDict):
    users: list[MoodleRecord]
    missing: list[str | int]  # values no user has, as the caller wrote them
    unchecked: list[str | int]  # values past the bound of value-by-value calls: neither found nor missing


def users_by_field(moodle: Moodle, field: str, values: list[str | int]) -> UsersFound:
    """The users whose ``field`` is one of ``values``; ``missing`` lists the values no user matched.

    Values are compared the way Moodle looks them up: usernames are lower-case in Moodle (and sent so),
    emails are matched without regard to case, since that depends on the database's collation.
    ``unchecked`` lists the values that could not be checked within MAX_SINGLE_VALUE_CALLS: neither found nor
    missing as far as the gateway knows.
    """
    wanted = list(dict.fromkeys(values))
    users = _users(moodle, field, list(dict.fromkeys(_as_sent(field, value) for value in wanted)))
    found = {_match_key(field, user.get(field)) for user in users.values()}
    missing = [value for value in wanted if _match_key(field, _as_sent(field, value)) not in found]
    unchecked: list[str | int] = []
    if missing and any(field not in user for user in users.values()):
        # Moodle hides idnumber, email or username from tokens that may not see them; ask value by value.
        missing, unchecked = _ask_alone(moodle, field, missing)
    return {"users": sorted(users.values(), key=lambda user: user["id"]), "missing": missing, "unchecked": unchecked}


def missing_user_ids(moodle: Moodle, user_ids: Iterable[int]) -> list[int]:
    """The ids among ``user_ids`` that no user of Moodle has (a deleted user's included), in the order given."""
    wanted = list(dict.fromkeys(user_ids))
    found = _users(moodle, "id", wanted)
    return [user_id for user_id in wanted if user_id not in found]


def user_not_found(user_ids: list[int]) -> ApiError:
    return not_found(ErrorCode.USER_NOT_FOUND, "user", "users", user_ids)


def _users(moodle: Moodle, field: str, sent: Sequence[str | int]) -> dict[int, dict[str, Any]]:
    """The users matching ``sent``, keyed by id, in as many calls as the server's max_input_vars needs."""
    users: dict[int, dict[str, Any]] = {}
    for run in split_by_input_vars("values", sent, {"field": field}, moodle.max_input_vars):
        answer = moodle.call(GET_USERS_BY_FIELD, {"field": field, "values": sent[run.start : run.stop]})
        for user in expect_list(answer, GET_USERS_BY_FIELD, key="id"):
            users.setdefault(user["id"], user)
    return users


def _ask_alone(moodle: Moodle, field: str, values: list[str | int]) -> tuple[list[str | int], list[str | int]]:
    """``values`` split into those Moodle has no user for, and those left unchecked past the bound."""
    answers: dict[str | int, bool] = {}
    missing: list[str | int] = []
    unchecked: list[str | int] = []
    for value in values:
        sent = _as_sent(field, value)
        if sent not in answers:
            if len(answers) == MAX_SINGLE_VALUE_CALLS:
                unchecked.append(value)
                continue
            answer = moodle.call(GET_USERS_BY_FIELD, {"field": field, "values": [sent]})
            answers[sent] = bool(expect_list(answer, GET_USERS_BY_FIELD))
        if not answers[sent]:
            missing.append(value)
    return missing, unchecked


def _as_sent(field: str, value: str | int) -> str | int:
    return value.lower() if field == "username" and isinstance(value, str) else value


def _match_key(field: str, value: Any) -> Any:
    return value.casefold() if field == "email" and isinstance(value, str) else value
