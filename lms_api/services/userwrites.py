"""Users created and updated many at a time: every reason Moodle would refuse one found first, the calls split under
the server's max_input_vars, and an exact account of what was written when a call fails anyway."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypedDict

from lms_api.errors import ApiError, ErrorCode
from lms_api.moodle.client import Moodle
from lms_api.moodle.encoding import split_by_input_vars
from lms_api.moodle.errors import (
    OUTCOME_PARTIAL,
    OUTCOME_UNKNOWN,
    MoodleError,
    MoodleRecord,
    expect_list,
    is_moodle_code,
    unexpected_answer,
)
from lms_api.moodle.functions import MoodleFunction
from lms_api.security import Identity, Scope
from lms_api.services.notfound import missing_ids
from lms_api.services.progress import Progress, advanced, stopped
from lms_api.services.userchecks import (
    INTERNAL_AUTHS,
    Findings,
    Problem,
    check_email,
    check_password,
    check_site_choices,
    check_username,
    first_seen,
)
from lms_api.services.users import GUEST_USER_ID, ExtraCalls, UserIds, existing_users, users_by_field
from lms_api.settings import Settings

# The Moodle calls the prechecks of one request make at most, unless max_input_vars needs more batches than that: the
# calls that ask value by value (a field Moodle hides) or halve a batch (a deleted user) share what the batches leave.
PRECHECK_CALLS = 20
# Moodle fails its own answer (invalid_response_exception) when core_user_update_users meets a password it refuses
# after applying the users before it: what was written cannot be told.
_UNREADABLE_UPDATE = "invalidresponse"
# The warnings of core_user_update_users that are the request's own fault, not the site's state.
_REQUEST_OWN_FAILURES = frozenset({"useremailinvalid"})


class CreatedUser(TypedDict):
    index: int
    id: int
    username: str


class UsersCreated(TypedDict):
    created: list[CreatedUser]


class UsersUpdated(TypedDict):
    updated: list[int]
    failed: list[dict[str, Any]]


def create_users(
    moodle: Moodle, users: list[dict[str, Any]], settings: Settings, *, resume: bool = False
) -> UsersCreated:
    """Create every user or none, and say exactly which: :func:`prepare_create_users`, then its plan applied."""
    return prepare_create_users(moodle, users, settings, resume=resume).apply()


def prepare_create_users(
    moodle: Moodle, users: list[dict[str, Any]], settings: Settings, *, resume: bool = False
) -> CreatePlan:
    """Every check of a creation, before anything is written: its plan (:class:`CreatePlan`) writes it.

    Each reason Moodle would refuse a user is found first (:func:`_find_reasons`), as Moodle names none of them:
    any → 400 ``invalidusers``, nothing written.

    ``resume``: a request sent again after an answer that left it unknown or partial. A user on the site as the
    request describes it (username, email, names, authentication) is one an earlier attempt created: it is answered,
    not sent again; refusing the others then still names those created, as partial.
    """
    moodle.require(MoodleFunction.GET_USERS_BY_FIELD, MoodleFunction.CREATE_USERS)
    findings = Findings(users)
    created = _find_reasons(moodle, users, range(len(users)), settings, findings, resume=resume)
    if findings and created:
        raise findings.error(
            f"only the {len(created)} created by an earlier attempt are on the site",
            created=[created[index] for index in sorted(created)],
            not_created=[index for index in range(len(users)) if index not in created],
            outcome=OUTCOME_PARTIAL,
        )
    if findings:
        raise findings.error()
    return CreatePlan(moodle, users, settings, created)


class CreatePlan:
    """Checked users, created by :meth:`apply`; ``created``: those an earlier attempt created (on a resume)."""

    def __init__(
        self, moodle: Moodle, users: list[dict[str, Any]], settings: Settings, created: dict[int, CreatedUser]
    ) -> None:
        self._moodle, self._users, self._settings = moodle, users, settings
        self._created = created
        self.total = len(users)

    def data(self) -> dict[str, Any]:
        """What :meth:`from_data` rebuilds the plan from, as JSON: a job queued in Redis carries it."""
        return {"users": self._users, "created": list(self._created.values())}

    @classmethod
    def from_data(cls, moodle: Moodle, settings: Settings, data: dict[str, Any]) -> CreatePlan:
        """The plan of :meth:`data`, checked when it was made: not checked again."""
        return cls(moodle, data["users"], settings, {user["index"]: user for user in data["created"]})

    def apply(self, progress: Progress | None = None) -> UsersCreated:
        """Send the users in as many calls as max_input_vars needs; each call is all or nothing. When one fails,
        ``details`` lists ``created`` (with ids), ``not_created`` or ``unknown`` (the failed call's), and
        ``not_attempted``; a failure that a second look explains (a username taken meanwhile) is an
        ``invalidusers`` naming it. Stopped by ``progress`` between calls: ``created`` and ``not_attempted``."""
        moodle, users, created = self._moodle, self._users, dict(self._created)
        pending = [index for index in range(len(users)) if index not in created]
        sent = [_as_moodle_user(users[index]) for index in pending]
        runs = split_by_input_vars("users", sent, {}, moodle.max_input_vars)
        for number, run in enumerate(runs):
            indexes = pending[run.start : run.stop]
            try:
                answer = moodle.call(MoodleFunction.CREATE_USERS, {"users": sent[run.start : run.stop]})
                answered = expect_list(answer, MoodleFunction.CREATE_USERS, key="id")
                if len(answered) != len(indexes):
                    raise unexpected_answer(MoodleFunction.CREATE_USERS)
            except MoodleError as error:  # an answer of the wrong shape leaves the call's outcome unknown
                account = _CreateAccount(created, indexes, pending[run.stop :], len(runs), number + 1)
                raise account.error(moodle, users, self._settings, error) from error
            for index, user in zip(indexes, answered, strict=True):
                created[index] = {"index": index, "id": user["id"], "username": users[index]["username"]}
            if number + 1 < len(runs) and not advanced(progress, len(created), self.total):
                raise stopped(
                    f"{len(created)} of {self.total} users created",
                    applied_any=True,
                    created=[created[index] for index in sorted(created)],
                    not_attempted=pending[run.stop :],
                    calls=len(runs),
                    calls_made=number + 1,
                )
        advanced(progress, self.total, self.total)
        return {"created": [created[index] for index in range(len(users))]}


def _find_reasons(
    moodle: Moodle,
    users: list[dict[str, Any]],
    indexes: Iterable[int],
    settings: Settings,
    findings: Findings,
    *,
    resume: bool = False,
) -> dict[int, CreatedUser]:
    """Add to ``findings`` every reason Moodle would refuse the users at ``indexes``, in ``create_users()``'s terms:
    the username's syntax, the password (or ``createpassword``) and its policy, the authentication plugin, the
    language, the email's syntax; a username or email given twice, or already on the site (two lookups in as few
    calls as max_input_vars allows). With ``resume``, the users an earlier attempt created are answered instead."""
    usernames: list[tuple[int, str]] = []
    emails: list[tuple[int, str]] = []
    for index in indexes:
        user = users[index]
        if check_username(findings, index, user["username"]):
            usernames.append((index, user["username"]))
        if check_email(findings, index, user["email"]):
            emails.append((index, user["email"]))
        if "password" in user:
            check_password(findings, index, user["password"], settings.moodle_password_policy)
        elif user["auth"] in INTERNAL_AUTHS and not user.get("createpassword"):
            needs = f"A {user['auth']} user needs a password, or createpassword"
            findings.add(index, "password", Problem.PASSWORD_MISSING, needs)
        check_site_choices(findings, index, user, settings.moodle_auth_plugins, settings.moodle_langs)
    _mark_duplicates(findings, usernames, "username", Problem.USERNAME_DUPLICATE, str)
    _mark_duplicates(findings, emails, "email", Problem.EMAIL_DUPLICATE, str.casefold)
    extra = _extra_calls(
        moodle, (("username", (name for _, name in usernames)), ("email", (mail for _, mail in emails)))
    )
    created: dict[int, CreatedUser] = {}
    for index, username, existing in _on_site(moodle, "username", usernames, findings, extra):
        if resume and existing is not None and _as_described(existing, users[index]):
            created[index] = {"index": index, "id": existing["id"], "username": username}
        else:
            findings.add(index, "username", Problem.USERNAME_TAKEN, f"Username {username!r} is taken{_by(existing)}")
    for index, email, existing in _on_site(
        moodle, "email", [pair for pair in emails if pair[0] not in created], findings, extra
    ):
        findings.add(index, "email", Problem.EMAIL_TAKEN, f"Email {email!r} is used{_by(existing)}")
    return created


def _as_described(existing: MoodleRecord, user: dict[str, Any]) -> bool:
    """``existing`` is the user the request describes: same email (without regard to case), names (Moodle answers
    them as its text filters show them, hence unescaped) and authentication plugin."""
    return (
        _email_key(existing.get("email")) == _email_key(user["email"])
        and html.unescape(str(existing.get("firstname"))) == user["firstname"]
        and html.unescape(str(existing.get("lastname"))) == user["lastname"]
        and existing.get("auth", user["auth"]) == user["auth"]
    )


def _by(existing: MoodleRecord | None) -> str:
    return "" if existing is None else f" (user {existing['id']})"


def update_users(moodle: Moodle, changes: list[dict[str, Any]], settings: Settings, caller: Identity) -> UsersUpdated:
    """Change the given fields of each user, and say which were changed: :func:`prepare_update_users`, then its plan
    applied."""
    return prepare_update_users(moodle, changes, settings, caller).apply()


def prepare_update_users(
    moodle: Moodle, changes: list[dict[str, Any]], settings: Settings, caller: Identity
) -> UpdatePlan:
    """Every check of an update, before anything is written: its plan (:class:`UpdatePlan`) writes it.

    Checked first, nothing written otherwise: every user exists (404 ``usernotfound``), no user twice, and each new
    username or email is valid, not given twice, and not another user's; a new password meets the policy (Moodle
    would fail its own answer on it).
    """
    ids = [change["id"] for change in changes]
    _require_admin_for_admins(ids, settings, caller)
    moodle.require(MoodleFunction.GET_USERS_BY_FIELD, MoodleFunction.UPDATE_USERS)
    findings = Findings(changes)
    first = first_seen((index, str(user_id)) for index, user_id in enumerate(ids))
    for index, user_id in enumerate(ids):
        if user_id == GUEST_USER_ID:
            findings.add(
                index, "id", Problem.USER_GUEST, f"User {user_id} is the guest user, which Moodle never changes"
            )
        elif first[str(user_id)] != index:
            message = f"User {user_id} is also user {first[str(user_id)]} of this request: change a user once"
            findings.add(index, "id", Problem.USER_DUPLICATE, message)
    if findings:  # before any lookup: the request names the guest, or a user twice
        raise findings.error("nothing was updated")
    extra = _extra_calls(
        moodle,
        (
            ("id", ids),
            ("username", (change["username"] for change in changes if "username" in change)),
            ("email", (change["email"] for change in changes if "email" in change)),
        ),
    )
    found = existing_users(moodle, ids, extra)
    if found.ids.missing or found.ids.unchecked:
        raise _not_found(found.ids)
    _find_update_reasons(moodle, changes, found.users, settings, findings, extra)
    if findings:
        raise findings.error("nothing was updated")
    return UpdatePlan(moodle, changes, found.users)


class UpdatePlan:
    """Checked changes, written by :meth:`apply`; ``current``: the users as they were checked."""

    def __init__(self, moodle: Moodle, changes: list[dict[str, Any]], current: dict[int, MoodleRecord]) -> None:
        self._moodle, self._changes, self._current = moodle, changes, current
        self.total = len(changes)

    def data(self) -> dict[str, Any]:
        """What :meth:`from_data` rebuilds the plan from, as JSON: a job queued in Redis carries it."""
        return {"changes": self._changes, "current": list(self._current.items())}

    @classmethod
    def from_data(cls, moodle: Moodle, settings: Settings, data: dict[str, Any]) -> UpdatePlan:
        """The plan of :meth:`data`, checked when it was made: not checked again."""
        return cls(moodle, data["changes"], dict(data["current"]))

    def apply(self, progress: Progress | None = None) -> UsersUpdated:
        """Moodle applies the users it can and warns of the others: their Moodle codes are translated
        (``usernametaken``, ``emailtaken``, ``usernotfound``, ``useremailinvalid``), and any failure is a
        ``usersnotupdated`` naming ``updated`` and ``failed``. Stopped by ``progress`` between calls: ``updated``,
        ``failed`` and ``not_attempted``."""
        moodle, changes = self._moodle, self._changes
        ids = [change["id"] for change in changes]
        sent = [_as_moodle_user(change) for change in changes]
        runs = split_by_input_vars("users", sent, {}, moodle.max_input_vars)
        failed: dict[int, dict[str, Any]] = {}
        current = {user_id: user.get("username") for user_id, user in self._current.items()}
        renamed = {
            change["id"] for change in changes if change.get("username", current[change["id"]]) != current[change["id"]]
        }
        for number, run in enumerate(runs):
            in_run = {change["id"]: change for change in changes[run.start : run.stop]}
            try:
                answer = moodle.call(MoodleFunction.UPDATE_USERS, {"users": sent[run.start : run.stop]})
                # Read whole before any is counted: an answer of the wrong shape leaves the whole call unknown.
                failures = _failures(moodle, answer, in_run, renamed)
            except MoodleError as error:
                raise _update_failed(error, ids, run, failed, len(runs), number + 1) from error
            for failure in failures:
                failed.setdefault(failure["id"], failure)
            if number + 1 < len(runs) and not advanced(progress, run.stop, self.total):
                updated = [user_id for user_id in dict.fromkeys(ids[: run.stop]) if user_id not in failed]
                raise stopped(
                    f"{len(updated)} of {self.total} users updated",
                    applied_any=bool(updated),
                    updated=updated,
                    failed=list(failed.values()),
                    not_attempted=list(dict.fromkeys(ids[run.stop :])),
                    calls=len(runs),
                    calls_made=number + 1,
                )
        advanced(progress, self.total, self.total)
        updated = [user_id for user_id in dict.fromkeys(ids) if user_id not in failed]
        if failed:
            failures = [failed[user_id] for user_id in dict.fromkeys(ids) if user_id in failed]
            own = all(failure["code"] in _REQUEST_OWN_FAILURES for failure in failures)
            raise ApiError(
                ErrorCode.USERS_NOT_UPDATED,
                f"Moodle updated {len(updated)} of {len(updated) + len(failures)} users and refused "
                f"{missing_ids('user', 'users', [failure['id'] for failure in failures])}",
                {"updated": updated, "failed": failures},
                status=400 if own else None,
            )
        return {"updated": updated, "failed": []}


def _require_admin_for_admins(ids: list[int], settings: Settings, caller: Identity) -> None:
    """403 unless the caller has ``admin`` to change an administrator or the gateway's own Moodle user
    (MOODLE_ADMIN_USER_IDS): a new password or email there is the whole site, and a suspended gateway user stops
    every route."""
    admins = sorted(set(ids) & set(settings.moodle_admin_user_ids))
    if admins and not caller.has_scope(Scope.ADMIN):
        raise ApiError(
            ErrorCode.FORBIDDEN,
            f"Changing {missing_ids('user', 'users', admins)} (MOODLE_ADMIN_USER_IDS) needs the admin scope",
            {"required_scope": Scope.ADMIN.value, "users": admins},
        )


def _not_found(ids: UserIds) -> ApiError:
    """404 ``usernotfound``: the ids no user has (a deleted user's too), and those left unchecked past the bound of
    lookups (only ever with a deleted user among them), told apart."""
    details: dict[str, list[int]] = {"missing_users": ids.missing}
    sentences = [f"No {missing_ids('user', 'users', ids.missing)} in Moodle"] if ids.missing else []
    if ids.deleted:
        details["deleted_users"] = ids.deleted
    if ids.unchecked:
        details["unchecked_users"] = ids.unchecked
        sentences.append(f"{missing_ids('user', 'users', ids.unchecked)} could not be checked: send them again")
    return ApiError(ErrorCode.USER_NOT_FOUND, "; ".join(sentences) + "; nothing was updated", details)


def _find_update_reasons(
    moodle: Moodle,
    changes: list[dict[str, Any]],
    current: dict[int, MoodleRecord],
    settings: Settings,
    findings: Findings,
    extra: ExtraCalls,
) -> None:
    """The reasons of :func:`_find_reasons` for the fields a change sets; a username or email set to the user's own
    is no change, and is not another user's."""
    usernames: list[tuple[int, str]] = []
    emails: list[tuple[int, str]] = []
    for index, change in enumerate(changes):
        user = current[change["id"]]
        username, email = change.get("username"), change.get("email")
        if username is not None and username != user.get("username") and check_username(findings, index, username):
            usernames.append((index, username))
        new_email = email is not None and _email_key(email) != _email_key(user.get("email"))
        if email is not None and new_email and check_email(findings, index, email):
            emails.append((index, email))
        if "password" in change:
            check_password(findings, index, change["password"], settings.moodle_password_policy)
        check_site_choices(findings, index, change, settings.moodle_auth_plugins, settings.moodle_langs)
    _mark_duplicates(findings, usernames, "username", Problem.USERNAME_DUPLICATE, str)
    _mark_duplicates(findings, emails, "email", Problem.EMAIL_DUPLICATE, str.casefold)
    for index, username, existing in _on_site(moodle, "username", usernames, findings, extra):
        if existing is None or existing["id"] != changes[index]["id"]:
            findings.add(index, "username", Problem.USERNAME_TAKEN, f"Username {username!r} is taken{_by(existing)}")
    for index, email, existing in _on_site(moodle, "email", emails, findings, extra):
        if existing is None or existing["id"] != changes[index]["id"]:
            findings.add(index, "email", Problem.EMAIL_TAKEN, f"Email {email!r} is used{_by(existing)}")


def _mark_duplicates(
    findings: Findings, values: list[tuple[int, str]], field: str, problem: Problem, key: Callable[[str], str]
) -> None:
    first = first_seen((index, key(value)) for index, value in values)
    for index, value in values:
        if first[key(value)] != index:
            findings.add(index, field, problem, f"The {field} {value!r} is also user {first[key(value)]}'s")


def _on_site(
    moodle: Moodle, field: str, values: Sequence[tuple[int, str]], findings: Findings, extra: ExtraCalls
) -> Iterable[tuple[int, str, MoodleRecord | None]]:
    """Each of ``values`` some user of the site has in ``field``, with that user when Moodle shows the field to the
    gateway's token (else None: found, but not told apart). A value is on the site unless the lookup named it
    missing, so a field Moodle hides counts as found; values the lookup could not check within its bound of calls
    are reasons of their own. Emails are matched without regard to case, as Moodle refuses them; since its lookup
    compares them as the database does, each is asked as given and in lower case."""
    if not values:
        return []
    forms = {value: _forms(field, value) for _, value in values}
    found = users_by_field(moodle, field, _asked(field, (value for _, value in values)), extra)
    missing, unchecked = set(found["missing"]), set(found["unchecked"])
    shown = {_match(field, user.get(field)): user for user in found["users"] if user.get(field) is not None}
    on_site = []
    for index, value in values:
        if any(form in unchecked for form in forms[value]):
            message = f"The {field} {value!r} could not be checked within the bound of Moodle calls: send it again"
            findings.add(index, field, Problem.UNCHECKED, message)
        elif not all(form in missing for form in forms[value]):
            on_site.append((index, value, shown.get(_match(field, value))))
    return on_site


def _forms(field: str, value: str) -> list[str]:
    return [value, value.lower()] if field == "email" else [value]


def _asked(field: str, values: Iterable[str]) -> list[str]:
    """What the lookup of ``values`` sends: each email as given and in lower case."""
    return list(dict.fromkeys(form for value in values for form in _forms(field, value)))


def _extra_calls(moodle: Moodle, lookups: Iterable[tuple[str, Iterable[Any]]]) -> ExtraCalls:
    """The calls the prechecks' ``lookups`` (field, values) may make past the batches max_input_vars needs for them,
    so that all of them make PRECHECK_CALLS at most (or the batches alone, when max_input_vars needs more)."""
    batches = sum(
        len(split_by_input_vars("values", _asked(field, values), {"field": field}, moodle.max_input_vars))
        for field, values in lookups
    )
    return ExtraCalls(max(0, PRECHECK_CALLS - batches))


def _match(field: str, value: Any) -> Any:
    return _email_key(value) if field == "email" else value


def _email_key(email: Any) -> str:
    return email.casefold() if isinstance(email, str) else ""


def _as_moodle_user(user: dict[str, Any]) -> dict[str, Any]:
    """The user as Moodle takes it: ``createpassword`` only when it is asked for."""
    return {name: value for name, value in user.items() if name != "createpassword" or value}


class _CreateAccount:
    """Which users a failed create left created, not created (or unknown) and not attempted."""

    def __init__(
        self, created: dict[int, CreatedUser], failed: list[int], later: list[int], calls: int, failed_call: int
    ) -> None:
        self.created, self.failed, self.later = created, failed, later
        self.calls, self.failed_call = calls, failed_call

    def error(self, moodle: Moodle, users: list[dict[str, Any]], settings: Settings, error: MoodleError) -> ApiError:
        """The failed call's error with the account in its details; ``invalidusers`` when a second look at the
        failed call's users finds why (another creator took a username or email meanwhile)."""
        unknown = error.details.get("outcome") == OUTCOME_UNKNOWN
        account: dict[str, Any] = {
            "created": [self.created[index] for index in sorted(self.created)],
            "unknown" if unknown else "not_created": self.failed,
            "not_attempted": self.later,
            "calls": self.calls,
            "failed_call": self.failed_call,
        }
        if self.created and not unknown:
            account["outcome"] = OUTCOME_PARTIAL
        summary = (
            f"{len(self.created)} users created, {len(self.failed)} "
            f"{'whose creation is unknown' if unknown else 'not created'}, {len(self.later)} not attempted"
        )
        if not unknown:
            findings = Findings(users)
            try:
                _find_reasons(moodle, users, self.failed, settings, findings)
            except MoodleError:
                findings = Findings(users)  # the second look failed too: Moodle's own error says what is known
            if findings:
                return findings.error(summary, **account)
        return type(error)(
            error.code,
            f"{error.message} (call {self.failed_call} of {self.calls}: {summary})",
            {**error.details, **account},
            status=error.status,
            headers=error.headers,
        )


def _update_failed(
    error: MoodleError, ids: list[int], run: range, failed: dict[int, dict[str, Any]], calls: int, number: int
) -> MoodleError:
    """A failed update call's error, with what the earlier calls ``updated`` and ``failed``, and the ids the failed
    call left ``unknown`` or ``not_updated`` (Moodle's ``invalidresponse`` leaves them unknown: it comes after
    Moodle applied some)."""
    unknown = error.details.get("outcome") == OUTCOME_UNKNOWN or str(error.code) == _UNREADABLE_UPDATE
    earlier = [user_id for user_id in dict.fromkeys(ids[: run.start]) if user_id not in failed]
    account: dict[str, Any] = {
        "updated": earlier,
        "failed": list(failed.values()),
        "unknown" if unknown else "not_updated": list(dict.fromkeys(ids[run.start : run.stop])),
        "not_attempted": list(dict.fromkeys(ids[run.stop :])),
        "calls": calls,
        "failed_call": number,
    }
    if unknown:
        account["outcome"] = OUTCOME_UNKNOWN
    elif earlier:
        account["outcome"] = OUTCOME_PARTIAL
    message = error.message
    if str(error.code) == _UNREADABLE_UPDATE:
        message = (
            "Moodle could not answer the update (invalidresponse), as it does on a password its own policy refuses: "
            "the site's policy is stricter than MOODLE_PASSWORD_POLICY says. Which users of the call were updated "
            "is unknown"
        )
    return type(error)(error.code, message, {**error.details, **account}, status=error.status, headers=error.headers)


def _failures(
    moodle: Moodle, answer: Any, changes: dict[int, dict[str, Any]], renamed: set[int]
) -> list[dict[str, Any]]:
    """The users core_user_update_users refused, from its answer (``{"warnings": [...]}``); a 502 of unknown outcome
    for an answer of another shape, which Moodle sends after applying the call."""
    if not isinstance(answer, dict):
        raise unexpected_answer(MoodleFunction.UPDATE_USERS)
    warnings = expect_list(answer.get("warnings", []), MoodleFunction.UPDATE_USERS)
    return [_failure(moodle, warning, changes, renamed) for warning in warnings]


def _failure(
    moodle: Moodle, warning: dict[str, Any], changes: dict[int, dict[str, Any]], renamed: set[int]
) -> dict[str, Any]:
    """One warning of core_user_update_users in the gateway's terms; ``renamed``: the users given a new username."""
    user_id = warning.get("itemid")
    if not isinstance(user_id, int) or user_id not in changes:
        raise unexpected_answer(MoodleFunction.UPDATE_USERS)
    code = warning.get("warningcode")
    change = changes[user_id]
    if code in ("invaliduserid", "usernotupdateddeleted"):
        return _failed(user_id, ErrorCode.USER_NOT_FOUND, f"No user with id {user_id}: deleted meanwhile")
    if code == "useremailduplicate":
        return _failed(user_id, Problem.EMAIL_TAKEN, f"Email {change.get('email')!r} is used by another user")
    if code == "useremailinvalid":
        return _failed(user_id, code, f"Moodle refused the email address {change.get('email')!r} as invalid")
    if code == "dmlwriteexception" and user_id in renamed:
        # Moodle's database refused the row: its unique index on the username, taken since the gateway looked.
        return _failed(user_id, Problem.USERNAME_TAKEN, f"Username {change['username']!r} is taken")
    if not is_moodle_code(code, moodle.clean):
        return _failed(user_id, ErrorCode.MOODLE_WARNING, "Moodle refused the user without a code")
    message = moodle.clean(str(warning.get("message") or "").split("\n")[0])
    return _failed(user_id, str(code), message or "Moodle refused the user")


def _failed(user_id: int, code: str, message: str) -> dict[str, Any]:
    return {"id": user_id, "code": str(code), "message": message}
