"""``core_user_create_users``, ``core_user_update_users``, ``core_user_get_users_by_field`` and the user details
Moodle's ``user_get_user_details()`` gives a site admin.

The order of the checks is Moodle 5.0's: ``core_user_external::create_users()`` and ``update_users()`` in
``user/externallib.php``, then ``user_create_user()`` and ``user_update_user()`` in ``user/lib.php``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import MoodleException, coding_exception, missing_record, moodle_exception
from moodle_sandbox.functions.formatting import format_string, format_text
from moodle_sandbox.params import DEFAULT, INSTALLED_LANGS, OPTIONAL, Multiple, Single, Value, invalid_parameter
from moodle_sandbox.php import clean_safedir, php_empty, php_intval, php_loose_equals, php_trim
from moodle_sandbox.php import clean_username as _clean_username
from moodle_sandbox.records import User
from moodle_sandbox.registry import sandbox_function
from moodle_sandbox.seed import GUEST_USER_ID

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
# update_users_parameters() of Moodle 5.0: every field optional but the id, same PARAM_* types as for a new user.
UPDATE_USERS = Single(
    {
        "users": Multiple(
            Single(
                {
                    "id": Value("int"),
                    "username": Value("username", OPTIONAL),
                    "auth": Value("auth", OPTIONAL),
                    "suspended": Value("bool", OPTIONAL),
                    "password": Value("raw", OPTIONAL),
                    "firstname": Value("notags", OPTIONAL),
                    "lastname": Value("notags", OPTIONAL),
                    "email": Value("raw_trimmed", OPTIONAL),
                    "maildisplay": Value("int", OPTIONAL),
                    "city": Value("text", OPTIONAL),
                    "country": Value("alpha", OPTIONAL),
                    "timezone": Value("timezone", OPTIONAL),
                    "description": Value("raw", OPTIONAL),
                    "userpicture": Value("int", OPTIONAL),
                    "firstnamephonetic": Value("notags", OPTIONAL),
                    "lastnamephonetic": Value("notags", OPTIONAL),
                    "middlename": Value("notags", OPTIONAL),
                    "alternatename": Value("notags", OPTIONAL),
                    "interests": Value("text", OPTIONAL),
                    "idnumber": Value("raw", OPTIONAL),
                    "institution": Value("text", OPTIONAL),
                    "department": Value("text", OPTIONAL),
                    "phone1": Value("notags", OPTIONAL),
                    "phone2": Value("notags", OPTIONAL),
                    "address": Value("text", OPTIONAL),
                    "lang": Value("lang", OPTIONAL),
                    "calendartype": Value("plugin", OPTIONAL),
                    "theme": Value("theme", OPTIONAL),
                    "mailformat": Value("int", OPTIONAL),
                    "customfields": Multiple(Single({"type": Value("alphanumext"), "value": Value("raw")}), OPTIONAL),
                    "preferences": Multiple(Single({"type": Value("raw"), "value": Value("raw")}), OPTIONAL),
                }
            )
        )
    }
)
# The user columns the sandbox keeps that update_users() writes as given; the other fields it takes (phones,
# address, other names, interests, picture, custom fields...) are accepted and not kept.
_UPDATED_COLUMNS = (
    "username", "auth", "firstname", "lastname", "email", "city", "country", "timezone", "description", "idnumber",
    "institution", "department", "lang", "theme", "mailformat",
)  # fmt: skip
# The ISO 3166-1 codes of lang/en/countries.php: core_user::validate() clears any other country (to $CFG->country,
# which a new site leaves empty).
_COUNTRIES = frozenset((
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB", "BD",
    "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA",
    "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE",
    "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA",
    "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK",
    "HM", "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP",
    "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT",
    "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS",
    "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ",
    "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS",
    "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST",
    "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW",
    "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA",
    "ZM", "ZW",
))  # fmt: skip
# Every installed auth plugin but mnet and webservice, which create_users() refuses.
_CREATABLE_AUTHS = ("cas", "db", "email", "ldap", "lti", "manual", "nologin", "none", "oauth2", "shibboleth")
_INTERNAL_AUTHS = ("email", "manual", "nologin", "none")  # the ones that keep their password in Moodle
# moodle_phpmailer::validateAddress(), which is PHP's FILTER_VALIDATE_EMAIL, minus addresses with < or >.
_EMAIL = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z][A-Za-z0-9]*|xn--[A-Za-z0-9]+)(-+[A-Za-z0-9]+)*"
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
# The update refusals that have a string in lang/en/error.php (useremailinvalid, usernotupdateddeleted and
# usernotupdatedguest have none).
_ERROR_STRINGS = {"invaliduserid": "Invalid user ID", "useremailduplicate": "Duplicate address"}


@dataclass(frozen=True)
class _Preference:
    """A preference of ``core_user::fill_preferences_cache()``: its PARAM_* cleaning, the values it takes (another is
    replaced by ``default``, else by the first choice), and whether the admin may set it for themselves
    (``own``) and for another user (``others``)."""

    clean: Callable[[str], str]
    own: bool
    others: bool
    choices: tuple[str, ...] = ()
    default: str = ""


def _clean_int(value: str) -> str:
    return str(php_intval(value))


def _clean_bool(value: str) -> str:
    """PARAM_BOOL: on, yes and true are 1, off, no and false are 0, otherwise what PHP finds empty is 0."""
    lowered = value.lower()
    if lowered in ("yes", "true", "on"):
        return "1"
    return "0" if lowered in ("no", "false", "off") or php_empty(value) else "1"


def _own_only(clean: Callable[[str], str], **rule: Any) -> _Preference:
    """A preference whose permission callback is ``is_current_user`` (with the site's badges and blogs enabled)."""
    return _Preference(clean, own=True, others=False, **rule)


# Moodle 5.0's core user preferences, but htmleditor and user_home_page_preference, which depend on the site's
# editors and home page setting; those of core_message, core_calendar, core_contentbank and plugins are left out too.
# Any other name is one that can_edit_preference() refuses, and useredit_update_user_preference() skips it silently.
_PREFERENCES = {
    # Only somebody else, who may update users: never the admin for themselves.
    "auth_forcepasswordchange": _Preference(_clean_int, own=False, others=True, choices=("0", "1")),
    # No permission callback: default_preference_permission_check(), which lets the admin edit anybody.
    "forum_markasreadonnotification": _Preference(_clean_int, own=True, others=True, choices=("0", "1"), default="1"),
    "badgeprivacysetting": _own_only(_clean_int, choices=("0", "1"), default="1"),
    "blogpagesize": _own_only(_clean_int),
    "filemanager_recentviewmode": _own_only(_clean_int, choices=("1", "2", "3"), default="1"),
    "filepicker_recentrepository": _own_only(_clean_int),
    "filepicker_recentlicense": _own_only(clean_safedir),
    "filepicker_recentviewmode": _own_only(_clean_int, choices=("1", "2", "3"), default="1"),
    "userselector_optionscollapsed": _own_only(_clean_bool),
    "userselector_autoselectunique": _own_only(_clean_bool),
    "userselector_preserveselected": _own_only(_clean_bool),
    "userselector_searchtype": _own_only(_clean_int),
    "question_bank_advanced_search": _own_only(_clean_bool),
}
# external_warnings' warningcode is PARAM_ALPHANUM: a warning with any other code fails the answer's validation.
_WARNING_CODE = re.compile(r"[A-Za-z0-9]*")
# clean_param() of each searchable user field: PARAM_INT, PARAM_RAW, PARAM_USERNAME and PARAM_RAW_TRIMMED.
_CLEANERS = {
    "id": php_intval,
    "idnumber": lambda value: value,
    "username": _clean_username,
    "email": php_trim,
}


def picture_urls(site: SandboxSite) -> dict[str, str]:
    """The default picture (no user of the sandbox has uploaded one), small then big."""
    return {"profileimageurlsmall": site.image_url("u/f2"), "profileimageurl": site.image_url("u/f1")}


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
    """What a site admin sees of ``user`` (``user_description()`` key order; empty optional fields left out).

    Only the token user's own details carry ``preferences``: ``get_user_preferences()`` of the session user, every
    stored row as ``{"name", "value"}`` (text) then ``_lastloaded``, the time they were read (a number).
    """
    details: dict[str, Any] = {
        "id": user.id,
        "username": user.username,
        "firstname": user.firstname,
        "lastname": user.lastname,
        "fullname": format_string(user.fullname),
        "email": user.email,
        "department": user.department,
    }
    if user.institution:
        details["institution"] = user.institution
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
    details |= {"mailformat": user.mailformat, "trackforums": user.trackforums}
    if user.description is not None:
        details["description"], details["descriptionformat"] = format_text(user.description, user.descriptionformat)
    if user.city:
        details["city"] = user.city
    if user.country:
        details["country"] = user.country
    details |= picture_urls(site)
    if user.id == site.admin.id:
        stored: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in user.preferences.items()]
        details["preferences"] = [*stored, {"name": "_lastloaded", "value": site.now()}]
    return details


@sandbox_function("core_user_create_users", CREATE_USERS)
def create_users(site: SandboxSite, params: dict[str, Any]) -> list[dict[str, Any]]:
    """All or nothing, like ``create_users()``'s delegated transaction; ids of rolled-back users stay used.

    Moodle asks the database whether each username and email is taken; the sandbox asks an index of the site's
    usernames and emails built once per call, so a call creating thousands of users does not read every user for
    each. Users created earlier in the same call count as taken, as they do in Moodle's transaction. The call only
    adds users (with their preferences), so rolling back takes the new ones out again.
    """
    with site.inserting("users"):
        taken = _TakenNames(site.state.users.values())
        created = []
        for fields in params["users"]:
            user = _create_user(site, fields, taken)
            taken.add(user)
            created.append({"id": user.id, "username": user.username})
        return created


class _TakenNames:
    """The usernames (exact, as the unique index compares them) and the emails (case-insensitive, as
    ``sql_equal(..., false)`` compares them) of every row of the user table, deleted users' rows included."""

    def __init__(self, users: Iterable[User]) -> None:
        self.usernames: dict[str, int] = {}
        self.emails: defaultdict[str, set[int]] = defaultdict(set)
        for user in users:
            self.add(user)

    def add(self, user: User) -> None:
        self.usernames[user.username] = user.id
        self.emails[user.email.lower()].add(user.id)

    def remove(self, user: User) -> None:
        del self.usernames[user.username]
        self.emails[user.email.lower()].discard(user.id)

    def username_owner(self, username: str) -> int | None:
        return self.usernames.get(username)

    def email_used_by_another(self, email: str, user_id: int = 0) -> bool:
        return bool(self.emails.get(email.lower(), set()) - {user_id})


def _create_user(site: SandboxSite, fields: dict[str, Any], taken: _TakenNames) -> User:
    """The checks of ``create_users()`` then ``user_create_user()``, in their order."""
    state = site.state
    username, auth, email = fields["username"], fields["auth"], fields["email"]
    for name in ("username", "firstname", "lastname"):
        if php_trim(fields[name]) == "":
            raise invalid_parameter(f"The field {name} cannot be blank")
    if taken.username_owner(username) is not None:
        raise invalid_parameter(f"Username already exists: {username}")
    if auth not in _CREATABLE_AUTHS:
        raise invalid_parameter(f"Invalid authentication type: {auth}")
    if fields["lang"] not in INSTALLED_LANGS:
        raise invalid_parameter(f"Invalid language code: {fields['lang']}")
    internal = auth in _INTERNAL_AUTHS
    createpassword = bool(fields.get("createpassword"))
    if internal and php_empty(fields.get("password")) and not createpassword:
        raise invalid_parameter("Invalid password: you must provide a password, or set createpassword.")
    if not _EMAIL.fullmatch(email):
        raise invalid_parameter(f"Email address is invalid: {email}")
    if taken.email_used_by_another(email):  # allowaccountssameemail is off
        raise invalid_parameter(f"Email address already exists: {email}")
    if internal and not createpassword:  # user_create_user() with $updatepassword
        _check_password_policy(fields["password"])
    now = site.now()
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
        institution=fields.get("institution", ""),
        city=fields.get("city", ""),
        country=_stored_country(fields.get("country", "")),
        description=fields.get("description"),
        timecreated=now,
        timemodified=now,
    )
    if createpassword:  # setnew_password_and_mail(), then the new password must be changed at first login
        user.preferences["auth_forcepasswordchange"] = "1"
    _set_preferences(site, user, fields.get("preferences", []))
    state.next_id("context")  # user_create_user() gives the new user a context
    state.users[user.id] = user
    _trigger_user_event(site, "\\core\\event\\user_created", user.id)
    return user


def _trigger_user_event(site: SandboxSite, eventname: str, user_id: int) -> None:
    """``user_created::create_from_userid()`` and ``user_updated``'s: the user is the object and the related user,
    in the user's own context."""
    site.trigger(eventname, user_id, contextinstanceid=user_id, relateduserid=user_id)


@sandbox_function("core_user_update_users", UPDATE_USERS)
def update_users(site: SandboxSite, params: dict[str, Any]) -> dict[str, Any]:
    """Each user in a transaction of its own: a failure rolls that user back and becomes a warning, the others are
    written. A failure whose errorcode is not alphanumeric (the password policy's HTML) then fails the answer's own
    validation: the whole call answers ``invalid_response_exception`` although every other user was written."""
    taken = _TakenNames(site.state.users.values())
    warnings = []
    for fields in params["users"]:
        try:
            _update_user(site, fields, taken)
        except MoodleException as error:
            warnings.append(
                {
                    "item": "user",
                    "itemid": fields["id"],
                    "warningcode": error.errorcode,
                    "message": error.text(site.debug),
                }
            )
    for warning in warnings:
        if not _WARNING_CODE.fullmatch(warning["warningcode"]):
            raise _invalid_warning_code(warning["warningcode"])
    return {"warnings": warnings}


def _update_user(site: SandboxSite, fields: dict[str, Any], taken: _TakenNames) -> None:
    """The checks of ``update_users()`` then ``user_update_user()``, in their order; the user's row is written only
    once every check has passed, so a failure leaves it as it was (the rollback of the user's transaction)."""
    user = site.state.users.get(fields["id"])
    if user is None:
        raise _update_error("invaliduserid", "Invalid user ID")
    # The token user is a site admin, so Moodle's refusal of another admin by a non-admin never applies here.
    if user.deleted:
        raise _update_error("usernotupdateddeleted", "User is a deleted user")
    if user.id == GUEST_USER_ID:
        raise _update_error("usernotupdatedguest", "Cannot update guest account")
    email = fields.get("email")
    if email is not None and email != user.email:
        if not _EMAIL.fullmatch(email):
            raise _update_error("useremailinvalid", "Invalid email address")
        if taken.email_used_by_another(email, user.id):  # allowaccountssameemail is off
            raise _update_error("useremailduplicate", "Duplicate email address")
    if "password" in fields:
        _check_password_policy(fields["password"])
    changes = {column: fields[column] for column in _UPDATED_COLUMNS if column in fields}
    if "suspended" in fields:
        changes["suspended"] = int(fields["suspended"])
    if "country" in changes:
        changes["country"] = _stored_country(changes["country"])
    username = changes.get("username", user.username)
    if taken.username_owner(username) not in (None, user.id):
        raise _duplicate_username(username, user.id)
    updated = dataclasses.replace(user, **changes, timemodified=site.now(), preferences=dict(user.preferences))
    _set_preferences(site, updated, fields.get("preferences", []))
    taken.remove(user)
    taken.add(updated)
    site.state.users[user.id] = updated
    _trigger_user_event(site, "\\core\\event\\user_updated", user.id)


def _stored_country(country: str) -> str:
    """PARAM_ALPHA lets any letters through; ``core_user::validate()`` then keeps only a country code Moodle lists
    (upper case), and clears anything else."""
    return country if country in _COUNTRIES else ""


def _set_preferences(site: SandboxSite, user: User, preferences: list[dict[str, str]]) -> None:
    """``useredit_update_user_preference()``: each preference the token user may edit for ``user``, cleaned; the
    others are skipped without a word."""
    for preference in preferences:
        rule = _PREFERENCES.get(preference["type"])
        if rule is None or not (rule.own if user.id == site.admin.id else rule.others):
            continue
        value = rule.clean(preference["value"])
        if rule.choices and value not in rule.choices:
            value = rule.default or rule.choices[0]
        user.preferences[preference["type"]] = value


def _update_error(errorcode: str, debuginfo: str) -> MoodleException:
    """``new moodle_exception($errorcode, '', '', null, $debuginfo)``: the message is the string of that name in
    ``lang/en/error.php``, or ``error/<code>`` where there is none; debug mode appends the debuginfo to it."""
    return moodle_exception(errorcode, _ERROR_STRINGS.get(errorcode, f"error/{errorcode}"), debuginfo)


def _duplicate_username(username: str, user_id: int) -> MoodleException:
    """PostgreSQL refusing the row: usernames are unique per MNet host."""
    debuginfo = (
        'ERROR:  duplicate key value violates unique constraint "mdl_user_mneuse_uix"\n'
        f"DETAIL:  Key (mnethostid, username)=(1, {username}) already exists.\n"
        f"UPDATE {{user}} SET ... WHERE id=?\n[array (\n  0 => {user_id},\n)]"
    )
    return MoodleException("dml_write_exception", "dmlwriteexception", "Error writing to database", debuginfo)


def _invalid_warning_code(code: str) -> MoodleException:
    """``external_api::clean_returnvalue()`` refusing a warningcode: each structure on the way names its key (a list
    adds nothing) around the message and debuginfo of the level below."""
    debuginfo = (
        f'Invalid external api response: the value is "{code}" of PHP type "string", the server was expecting '
        '"alphanum" type'
    )
    for key in ("warningcode", "warnings"):
        debuginfo = f"{key} => Invalid response value detected ({debuginfo}): {debuginfo}"
    return MoodleException(
        "core\\exception\\invalid_response_exception", "invalidresponse", "Invalid response value detected", debuginfo
    )


def _check_password_policy(password: str) -> None:
    """``check_password_policy()`` failing: Moodle throws its HTML message as the errorcode, and no string has that
    name, hence the message ``error/<the HTML>``."""
    policy = _password_policy_errors(password)
    if policy:
        raise moodle_exception(policy, f"error/{policy}")


def _password_policy_errors(password: str) -> str:
    """``check_password_policy()``'s message: each broken rule in a ``<div>``, or nothing."""
    errors = [f"Passwords must be at least {_PASSWORD_MIN_LENGTH} characters long."]
    if len(password) >= _PASSWORD_MIN_LENGTH:
        errors = []
    errors += [text for pattern, text in _PASSWORD_RULES if pattern.search(password) is None]
    return "".join(f"<div>{text}</div>" for text in errors)
