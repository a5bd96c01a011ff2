"""Users by id, idnumber, username or email, with the values Moodle silently left out named."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, TypedDict

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import Moodle
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import MoodleError, MoodleRecord, expect_list
from lms_api.moodle.functions import MoodleFunction
from lms_api.services.notfound import not_found

# When Moodle hides the field from the gateway's token, each value it did not match is asked alone; this bounds
# those calls per request (a request may name 1,000 values), and the values past it are answered as unchecked.
MAX_SINGLE_VALUE_CALLS = 20
# Moodle 5.0 fails a whole core_user_get_users_by_field call when one value finds a deleted user (its user context
# is gone, so context_user::instance() finds no user that is not deleted): a missing record, ``invalidrecordunknown``,
# or ``invaliduser`` in debug mode. Such a batch is halved until each deleted user stands alone; this bounds those
# calls per request (one deleted user among 10,000 ids takes 24 more), and the values left past it are unchecked.
MAX_DELETED_SEARCH_CALLS = 40
_DELETED_USER_FOUND = frozenset({ErrorCode.INVALID_RECORD_UNKNOWN, ErrorCode.INVALID_USER})
# Moodle's installer creates the guest user first ($CFG->siteguest).
GUEST_USER_ID = 1


class ExtraCalls:
    """The value-by-value and halving calls that the lookups of one request may still make, shared between them; the
    batches max_input_vars needs are always made, and not counted."""

    def __init__(self, calls: int) -> None:
        self.left = calls

    def take(self, calls: int) -> bool:
        if calls > self.left:
            return False
        self.left -= calls
        return True


class UsersFound(TypedDict):
    users: list[MoodleRecord]
    missing: list[str | int]  # values no user has (a deleted user's included), as the caller wrote them
    unchecked: list[str | int]  # values past the bound of value-by-value calls: neither found nor missing


class UserIds(NamedTuple):
    missing: list[int]  # ids no user has, a deleted user's included
    deleted: list[int]  # those of them that are a deleted user's
    unchecked: list[int]  # ids left past MAX_DELETED_SEARCH_CALLS: neither found nor missing


def users_by_field(
    moodle: Moodle, field: str, values: Sequence[str | int], extra: ExtraCalls | None = None
) -> UsersFound:
    """The users whose ``field`` is one of ``values``; ``missing`` lists the values no user matched.

    Values are compared the way Moodle looks them up: usernames are lower-case in Moodle (and sent so),
    emails are matched without regard to case, since that depends on the database's collation.
    A deleted user's value is missing: Moodle keeps no account under it. ``unchecked`` lists the values that could
    not be checked within MAX_SINGLE_VALUE_CALLS or MAX_DELETED_SEARCH_CALLS, or the ``extra`` calls the request's
    lookups share: neither found nor missing as far as the gateway knows.
    """
    wanted = list(dict.fromkeys(values))
    lookup = _Lookup(moodle, field, extra)
    lookup.ask(list(dict.fromkeys(_as_sent(field, value) for value in wanted)))
    users = lookup.users
    found = {_match_key(field, user.get(field)) for user in users.values()}
    unchecked = [value for value in wanted if _as_sent(field, value) in lookup.unchecked]
    missing = [
        value
        for value in wanted
        if _match_key(field, _as_sent(field, value)) not in found and _as_sent(field, value) not in lookup.unchecked
    ]
    if missing and any(field not in user for user in users.values()):
        # Moodle hides idnumber, email or username from tokens that may not see them; ask value by value.
        missing, past_bound = _ask_alone(lookup, missing)
        unchecked += past_bound
    return {"users": sorted(users.values(), key=lambda user: user["id"]), "missing": missing, "unchecked": unchecked}


class ExistingUsers(NamedTuple):
    users: dict[int, MoodleRecord]  # the users found, by id
    ids: UserIds  # the ids asked for that no user has


def user_ids(moodle: Moodle, user_ids: Iterable[int]) -> UserIds:
    """Which of ``user_ids`` no user of Moodle has, in the order given: missing, deleted, or left unchecked."""
    return existing_users(moodle, user_ids).ids


def existing_users(moodle: Moodle, user_ids: Iterable[int], extra: ExtraCalls | None = None) -> ExistingUsers:
    """The users of ``user_ids`` Moodle has, and which of the ids no user has (see :func:`user_ids`)."""
    wanted = list(dict.fromkeys(user_ids))
    lookup = _Lookup(moodle, "id", extra)
    lookup.ask(wanted)
    ids = UserIds(
        missing=[user_id for user_id in wanted if user_id not in lookup.users and user_id not in lookup.unchecked],
        deleted=[user_id for user_id in wanted if user_id in lookup.deleted],
        unchecked=[user_id for user_id in wanted if user_id in lookup.unchecked],
    )
    return ExistingUsers(lookup.users, ids)


def user_not_found(user_ids: list[int]) -> ApiError:
    return not_found(ErrorCode.USER_NOT_FOUND, "user", "users", user_ids)


class _Lookup:
    """core_user_get_users_by_field on one field, in as many calls as the server's max_input_vars needs, finding the
    deleted users whose values fail a call."""

    def __init__(self, moodle: Moodle, field: str, extra: ExtraCalls | None = None) -> None:
        self.moodle, self.field = moodle, field
        self.extra = extra or ExtraCalls(MAX_SINGLE_VALUE_CALLS + MAX_DELETED_SEARCH_CALLS)
        self.users: dict[int, MoodleRecord] = {}
        self.deleted: set[str | int] = set()
        self.unchecked: set[str | int] = set()
        self._halving_calls = 0

    def ask(self, sent: Sequence[str | int]) -> list[MoodleRecord]:
        """The users matching ``sent``; a value of a deleted user's goes to ``deleted``, one past the bound of
        calls to ``unchecked``."""
        answered: list[MoodleRecord] = []
        for run in split_by_input_vars("values", sent, {"field": self.field}, self.moodle.max_input_vars):
            answered += self._ask_run(list(sent[run.start : run.stop]))
        return answered

    def _ask_run(self, values: list[str | int]) -> list[MoodleRecord]:
        try:
            answer = self.moodle.call(MoodleFunction.GET_USERS_BY_FIELD, {"field": self.field, "values": values})
        except MoodleError as error:
            if error.code not in _DELETED_USER_FOUND:
                raise
            if len(values) == 1:
                self.deleted.add(values[0])
            elif self._halving_calls + 2 > MAX_DELETED_SEARCH_CALLS or not self.extra.take(2):
                self.unchecked.update(values)
            else:
                self._halving_calls += 2
                half = len(values) // 2
                return self._ask_run(values[:half]) + self._ask_run(values[half:])
            return []
        users = expect_list(answer, MoodleFunction.GET_USERS_BY_FIELD, key="id")
        for user in users:
            self.users.setdefault(user["id"], user)
        return users


def _ask_alone(lookup: _Lookup, values: list[str | int]) -> tuple[list[str | int], list[str | int]]:
    """``values`` split into those Moodle has no user for, and those left unchecked past the bound."""
    answers: dict[str | int, bool] = {}
    missing: list[str | int] = []
    unchecked: list[str | int] = []
    for value in values:
        sent = _as_sent(lookup.field, value)
        if sent not in answers:
            if len(answers) == MAX_SINGLE_VALUE_CALLS or not lookup.extra.take(1):
                unchecked.append(value)
                continue
            answers[sent] = bool(lookup.ask([sent]))
        if not answers[sent]:
            missing.append(value)
    return missing, unchecked


def _as_sent(field: str, value: str | int) -> str | int:
    return value.lower() if field == "username" and isinstance(value, str) else value


def _match_key(field: str, value: Any) -> Any:
    return value.casefold() if field == "email" and isinstance(value, str) else value
