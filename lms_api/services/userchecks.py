"""Every reason Moodle would refuse a user, found before anything is written and named in the caller's terms.

Moodle 5.0's ``core_user_create_users`` answers each of them with the same opaque ``invalidparameter`` and creates
nobody, and ``core_user_update_users`` fails its own answer on a weak password: the gateway checks what Moodle checks
(the username's syntax, the email's, the password policy, the authentication plugin and language, a username or
email already taken or given twice) and answers ``invalidusers`` naming each user and reason instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lms_api.errors import ApiError, ErrorCode
from lms_api.settings import PasswordPolicy

# Moodle's PARAM_USERNAME without $CFG->extendedusernamechars: what is left after lower-casing and trimming.
_USERNAME = re.compile(r"[-.@_a-z0-9]+")
# validate_email(): PHPMailer's check, which is PHP's FILTER_VALIDATE_EMAIL (without < and >).
_EMAIL = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z][A-Za-z0-9]*|xn--[A-Za-z0-9]+)(-+[A-Za-z0-9]+)*"
)
# The authentication plugins that keep the password in Moodle: a new user of these needs one, or createpassword.
INTERNAL_AUTHS = frozenset({"manual", "nologin", "email", "none"})
# The message names this many users; ``details.users`` lists them all.
MAX_NAMED_USERS = 5


class Problem(StrEnum):
    """Why Moodle would refuse a user: ``details.users[].reasons[].code``."""

    USERNAME_INVALID = "usernameinvalid"
    USERNAME_DUPLICATE = "usernameduplicate"
    USERNAME_TAKEN = "usernametaken"
    EMAIL_INVALID = "emailinvalid"
    EMAIL_DUPLICATE = "emailduplicate"
    EMAIL_TAKEN = "emailtaken"
    PASSWORD_MISSING = "passwordmissing"  # noqa: S105  # a reason's code, not a password
    PASSWORD_WEAK = "passwordweak"  # noqa: S105
    AUTH_UNKNOWN = "authunknown"
    LANG_UNKNOWN = "langunknown"
    USER_DUPLICATE = "userduplicate"
    USER_GUEST = "userguest"
    UNCHECKED = "unchecked"  # a username or email the bound of lookups left unchecked

    @property
    def conflict(self) -> bool:
        """The site's state refuses it, not the request: the same request may pass later."""
        return self in (Problem.USERNAME_TAKEN, Problem.EMAIL_TAKEN)


@dataclass
class UserReasons:
    """The reasons found for one user of the request."""

    index: int
    username: str | None
    reasons: list[dict[str, str]] = field(default_factory=list)

    def add(self, field_name: str, problem: Problem, message: str) -> None:
        self.reasons.append({"field": field_name, "code": problem.value, "message": message})


class Findings:
    """The reasons found so far, per user of the request (by index)."""

    def __init__(self, users: list[dict[str, Any]]) -> None:
        self._users = users
        self._found: dict[int, UserReasons] = {}

    def add(self, index: int, field_name: str, problem: Problem, message: str) -> None:
        reasons = self._found.get(index)
        if reasons is None:
            reasons = self._found[index] = UserReasons(index, self._users[index].get("username"))
        reasons.add(field_name, problem, message)

    def __bool__(self) -> bool:
        return bool(self._found)

    def __contains__(self, index: int) -> bool:
        return index in self._found

    def error(self, written: str = "nothing was written", **details: Any) -> ApiError:
        """``invalidusers`` naming every user with a reason: 409 when every reason is the site's state (a username
        or email taken), 400 otherwise."""
        found = [self._found[index] for index in sorted(self._found)]
        conflicts_only = all(Problem(reason["code"]).conflict for user in found for reason in user.reasons)
        named = "; ".join(
            f"user {user.index} ({user.username!r}): {', '.join(reason['message'] for reason in user.reasons)}"
            for user in found[:MAX_NAMED_USERS]
        )
        more = f"; and {len(found) - MAX_NAMED_USERS} more users" if len(found) > MAX_NAMED_USERS else ""
        noun = "user" if len(found) == 1 else "users"
        return ApiError(
            ErrorCode.INVALID_USERS,
            f"Moodle would refuse {len(found)} {noun}, so {written}: {named}{more}",
            {"users": [{"index": u.index, "username": u.username, "reasons": u.reasons} for u in found], **details},
            status=409 if conflicts_only else None,
        )


def check_username(findings: Findings, index: int, username: str) -> bool:
    """False, with the reason, when Moodle's PARAM_USERNAME would change ``username``."""
    if _USERNAME.fullmatch(username):
        return True
    if username != username.strip():
        why = "has blanks around it"
    elif username != username.lower():
        why = "has upper-case letters (Moodle's usernames are lower case)"
    else:
        why = "may hold only lower-case letters, digits and _ . @ -"
    findings.add(index, "username", Problem.USERNAME_INVALID, f"Username {why}")
    return False


def check_email(findings: Findings, index: int, email: str) -> bool:
    if _EMAIL.fullmatch(email):
        return True
    findings.add(index, "email", Problem.EMAIL_INVALID, "Not a valid email address")
    return False


def check_password(findings: Findings, index: int, password: str, policy: PasswordPolicy) -> None:
    broken = password_policy_errors(password, policy)
    if broken:
        findings.add(index, "password", Problem.PASSWORD_WEAK, "Password " + "; ".join(broken))


def check_site_choices(
    findings: Findings, index: int, user: dict[str, Any], auth_plugins: Iterable[str], langs: Iterable[str]
) -> None:
    """The authentication plugin and language, against what the site has (settings: Moodle answers neither)."""
    auth_plugins, langs = tuple(auth_plugins), tuple(langs)
    if "auth" in user and user["auth"] not in auth_plugins:
        findings.add(
            index, "auth", Problem.AUTH_UNKNOWN, f"No authentication plugin {user['auth']!r}: {', '.join(auth_plugins)}"
        )
    if "lang" in user and user["lang"] not in langs:
        findings.add(index, "lang", Problem.LANG_UNKNOWN, f"No language pack {user['lang']!r}: {', '.join(langs)}")


def password_policy_errors(password: str, policy: PasswordPolicy) -> list[str]:
    """``check_password_policy()``'s rules, each broken one in words; the character classes are ASCII, as Moodle's
    POSIX classes are."""
    counts = (
        (policy.digits, sum(char.isascii() and char.isdigit() for char in password), "digit"),
        (policy.lower, sum("a" <= char <= "z" for char in password), "lower-case letter"),
        (policy.upper, sum("A" <= char <= "Z" for char in password), "upper-case letter"),
        (policy.nonalphanumeric, sum(not (char.isascii() and char.isalnum()) for char in password), "other character"),
    )
    broken = [f"must be at least {policy.length} characters long"] if len(password) < policy.length else []
    broken += [f"needs at least {least} {noun}{'s' if least > 1 else ''}" for least, got, noun in counts if got < least]
    if policy.consecutive and re.search(rf"(.)\1{{{policy.consecutive}}}", password, re.DOTALL):
        broken.append(f"must not repeat a character more than {policy.consecutive} times in a row")
    return broken


def first_seen(values: Iterable[tuple[int, str]]) -> dict[str, int]:
    """The index of each value's first user, for naming duplicates (``values`` are compared as given)."""
    first: dict[str, int] = {}
    for index, value in values:
        first.setdefault(value, index)
    return first
