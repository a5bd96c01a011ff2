"""``core_user_get_users_by_field`` and the user details Moodle's ``user_get_user_details()`` gives a site admin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lms_api.sandbox.errors import coding_exception
from lms_api.sandbox.functions.formatting import format_string
from lms_api.sandbox.params import Multiple, Single, Value, invalid_parameter
from lms_api.sandbox.php import clean_username as _clean_username
from lms_api.sandbox.php import php_intval, php_loose_equals, php_trim
from lms_api.sandbox.records import User, theme_image_url
from lms_api.sandbox.registry import sandbox_function

if TYPE_CHECKING:
    from lms_api.sandbox.site import SandboxSite

GET_USERS_BY_FIELD = Single({"field": Value("alpha"), "values": Multiple(Value("raw"))})
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
    """Exact, case-sensitive matches (as on PostgreSQL) in id order; unknown values are silently left out."""
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
