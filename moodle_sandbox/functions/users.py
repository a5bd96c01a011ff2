"""``core_user_create_users``, ``core_user_get_users_by_field`` and the user details Moodle's
``user_get_user_details()`` gives a site admin."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import coding_exception, missing_record, moodle_exception
from moodle_sandbox.functions.formatting import format_string
from moodle_sandbox.params import DEFAULT, INSTALLED_LANGS, OPTIONAL, Multiple, Single, Value, invalid_parameter
from moodle_sandbox.php import clean_username as _clean_username
from moodle_sandbox.php import php_empty, php_intval, php_loose_equals, php_trim
from moodle_sandbox.records import User, theme_image_url
from moodle_sandbox.registry import sandbox_function

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

GET_USERS_BY_FIELD = Single({"field": Value("alpha"), "values": Multiple(Value("raw"))})
# create_users_parameters() of Moodle 5.0, with the PARAM_* type core_user gives each user field.
CREATE_USERS = Single(
    {
        "users": Multiple(
            Single(
                {
                    "createpassword": Value("bool", OPTIONAL),
                    "username": Value("username"),
                    "auth": Value("auth", DEFAULT, "manual"),
                    "password": Value("raw", OPTIONAL),
                    "firstname": Value("notags"),
                    "lastname": Value("notags"),
                    "email": Value("raw_trimmed"),
                    "maildisplay": Value("int", OPTIONAL),
                    "city": Value("text", OPTIONAL),
                    "country": Value("alpha", OPTIONAL),
                    "timezone": Value("timezone", OPTIONAL),
                    "description": Value("raw", OPTIONAL),
                    "firstnamephonetic": Value("notags", OPTIONAL),
                    "lastnamephonetic": Value("notags", OPTIONAL),
                    "middlename": Value("notags", OPTIONAL),
                    "alternatename": Value("notags", OPTIONAL),
                    "interests": Value("text", OPTIONAL),
                    "idnumber": Value("raw", DEFAULT, ""),
                    "institution": Value("text", OPTIONAL),
                    "department": Value("text", OPTIONAL),
                    "phone1": Value("notags", OPTIONAL),
                    "phone2": Value("notags", OPTIONAL),
                    "address": Value("text", OPTIONAL),
                    "lang": Value("lang", DEFAULT, "en"),
                    "calendartype": Value("plugin", DEFAULT, "gregorian"),
                    "theme": Value("theme", OPTIONAL),
                    "mailformat": Value("int", OPTIONAL),
                    "customfields": Multiple(Single({"type": Value("alphanumext"), "value": Value("raw")}), OPTIONAL),
                    "preferences": Multiple(Single({"type": Value("raw"), "value": Value("raw")}), OPTIONAL),
                }
            )
        )
    }
)
# Every installed auth plugin but mnet and webservice, which create_users() refuses.
_CREATABLE_AUTHS = ("cas", "db", "email", "ldap", "lti", "manual", "nologin", "none", "oauth2", "shibboleth")
_INTERNAL_AUTHS = ("email", "manual", "nologin", "none")  # the ones that keep their password in Moodle
# moodle_phpmailer::validateAddress(), which is PHP's FILTER_VALIDATE_EMAIL, minus addresses with < or >.
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
# The site's default password policy after its length rule, in get_password_policy_errors()'s order: at least one
# of each (the POSIX classes of those patterns are ASCII only).
_PASSWORD_MIN_LENGTH = 8
_PASSWORD_RULES = (
    (re.compile(r"[0-9]"), "Passwords must have at least 1 digit(s)."),
    (re.compile(r"[a-z]"), "Passwords must have at least 1 lower case letter(s)."),
    (re.compile(r"[A-Z]"), "Passwords must have at least 1 upper case letter(s)."),
    (re.compile(r"[^A-Za-z0-9]"), "The password must have at least 1 special character(s) such as *, -, or #."),
)
# clean_param() of each searchable user field: PARAM_INT, PARAM_RAW, PARAM_USERNAME and PARAM_RAW_TRIMMED.
_CLEANERS = {
    "id": php_intval,
    "idnumber": lambda value: value,
    "username": _clean_username,
    "email": php_trim,
}


def picture_urls(site: SandboxSite) -> dict[str, str]:
    """The default picture (no user of the sandbox has uploaded one), small then big."""
    return {
        "profileimageurlsmall": theme_image_url(site.base_url, "u/f2"),
        "profileimageurl": theme_image_url(site.base_url, "u/f1"),
    }


@sandbox_function("core_user_get_users_by_field", GET_USERS_BY_FIELD)
def get_users_by_field(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Exact, case-sensitive matches (as on PostgreSQL) in id order; unknown values are silently left out, and a
    deleted user's id (or mangled username) fails the whole call with a missing record."""
    field = params["field"]
    if field not in _CLEANERS:
        raise coding_exception(
            "invalid field parameter",
            f"The search field '{field}' is not supported, look at the web service documentation",
        )
    wanted = set()
    for value in params["values"]:
        cleaned = _CLEANERS[field](value)
        if not php_loose_equals(value, cleaned):
            raise invalid_parameter(f"The field '{field}' value is invalid: {value}(cleaned value: {cleaned})")
        wanted.add(cleaned)
    users = [user for user in site.state.users.values() if getattr(user, field) in wanted]
    deleted = sorted(user.id for user in users if user.deleted)
    if deleted:
        # user_get_user_details_courses() asks for the user's context first, and delete_user() deleted it:
        # context_user::instance() then reads the user again with deleted = 0, MUST_EXIST, and the call fails.
        raise missing_record("user", "id", deleted[0], site.debug, deleted=0)
    # A user is answered only when the searched field is in its details (e.g. never for an empty idnumber).
    return [
        details
        for details in (user_details(site, user) for user in sorted(users, key=lambda user: user.id))
        if details.get(field)
    ]


def user_details(site: SandboxSite, user: User) -> dict[str, Any]:
    """What a site admin sees of ``user`` (``user_description()`` key order; empty optional fields left out)."""
    details: dict[str, Any] = {
        "id": user.id,
        "username": user.username,
        "firstname": user.firstname,
        "lastname": user.lastname,
        "fullname": format_string(user.fullname),
        "email": user.email,
        "department": user.department,
    }
    if user.idnumber:
        details["idnumber"] = user.idnumber
    details |= {
        "firstaccess": user.firstaccess,
        "lastaccess": user.lastaccess,
        "auth": user.auth,
        "suspended": bool(user.suspended),
        "confirmed": bool(user.confirmed),
        "lang": user.lang,
        "theme": user.theme,
    }
    if user.timezone:
        details["timezone"] = user.timezone
    return details | {"mailformat": user.mailformat, "trackforums": user.trackforums} | picture_urls(site)


@sandbox_function("core_user_create_users", CREATE_USERS)
def create_users(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    """All or nothing, like ``create_users()``'s delegated transaction; ids of rolled-back users stay used."""
    with site.transaction():
        return [_create_user(site, fields) for fields in params["users"]]


def _create_user(site: SandboxSite, fields: dict[str, Any]) -> dict[str, Any]:
    """The checks of ``create_users()`` then ``user_create_user()``, in their order."""
    state = site.state
    username, auth, email = fields["username"], fields["auth"], fields["email"]
    if any(user.username == username for user in state.users.values()):
        raise invalid_parameter(f"Username already exists: {username}")
    if auth not in _CREATABLE_AUTHS:
        raise invalid_parameter(f"Invalid authentication type: {auth}")
    if fields["lang"] not in INSTALLED_LANGS:
        raise invalid_parameter(f"Invalid language code: {fields['lang']}")
    internal = auth in _INTERNAL_AUTHS
    if internal and php_empty(fields.get("password")) and not fields.get("createpassword"):
        raise invalid_parameter("Invalid password: you must provide a password, or set createpassword.")
    if not _EMAIL.fullmatch(email):
        raise invalid_parameter(f"Email address is invalid: {email}")
    if any(user.email.lower() == email.lower() for user in state.users.values()):  # allowaccountssameemail is off
        raise invalid_parameter(f"Email address already exists: {email}")
    if php_trim(username) == "":
        raise moodle_exception("invalidusernameblank", "The username cannot be blank")
    if internal and not fields.get("createpassword") and "password" in fields:
        policy = _password_policy_errors(fields["password"])
        if policy:
            # Moodle throws the policy text itself as the errorcode; no such string exists, hence "error/...".
            raise moodle_exception(policy, f"error/{policy}")
    user = User(
        id=state.next_id("user"),
        username=username,
        firstname=fields["firstname"],
        lastname=fields["lastname"],
        email=email,
        idnumber=fields["idnumber"],
        auth=auth,
        lang=fields["lang"],
        theme=fields.get("theme", ""),
        timezone=fields.get("timezone", "99"),
        mailformat=fields.get("mailformat", 1),
        department=fields.get("department", ""),
        timecreated=site.now(),
    )
    state.next_id("context")  # user_create_user() gives the new user a context
    state.users[user.id] = user
    return {"id": user.id, "username": user.username}


def _password_policy_errors(password: str) -> str:
    """``check_password_policy()``'s message: each broken rule in a ``<div>``, or nothing."""
    errors = [f"Passwords must be at least {_PASSWORD_MIN_LENGTH} characters long."]
    if len(password) >= _PASSWORD_MIN_LENGTH:
        errors = []
    errors += [text for pattern, text in _PASSWORD_RULES if pattern.search(password) is None]
    return "".join(f"<div>{text}</div>" for text in errors)
