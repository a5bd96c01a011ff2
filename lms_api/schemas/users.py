"""Users by field: which field, which values, and the user fields that leave the gateway."""

from __future__ import annotations

import functools
import zoneinfo
from typing import Any

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from lms_api.moodle.functions import USER_LOOKUP_FIELDS
from lms_api.schemas.base import (
    MAX_SAFE_INTEGER,
    Choices,
    CommaSeparated,
    Flag,
    Records,
    RequestSchema,
    ResponseSchema,
    Text,
    no_control_characters,
    no_html,
    not_blank,
    single_line,
    strict_int,
)

MAX_VALUES = 1000
MAX_NAMED = 20  # bad ids named in the message


class UsersByFieldQuery(RequestSchema):
    field = fields.String(required=True, validate=validate.OneOf(USER_LOOKUP_FIELDS))
    values = CommaSeparated(
        Text(validate=(validate.Length(max=255), single_line)),
        required=True,
        metadata={"description": f"comma-separated values, at most {MAX_VALUES}; ids (`field=id`) from 1 to 2^53-1"},
    )

    @post_load
    def _typed_values(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        values = data["values"]
        if len(values) > MAX_VALUES:
            raise ValidationError({"values": [f"At most {MAX_VALUES} values per request"]})
        if data["field"] == "id":
            bad = [
                value
                for value in values
                if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_SAFE_INTEGER
            ]
            if bad:
                named = ", ".join(value if len(value) <= 24 else value[:24] + "..." for value in bad[:MAX_NAMED])
                more = f" and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
                raise ValidationError(
                    {"values": [f"User ids must be integers from 1 to {MAX_SAFE_INTEGER}: {named}{more}"]}
                )
            data["values"] = [int(value) for value in values]
        return data


class UserSchema(ResponseSchema):
    id = fields.Integer()
    username = fields.String()
    firstname = fields.String()
    lastname = fields.String()
    fullname = fields.String()
    email = fields.String()
    idnumber = fields.String()
    department = fields.String()
    institution = fields.String()
    auth = fields.String()
    suspended = fields.Boolean()
    confirmed = fields.Boolean()
    lang = fields.String()
    timezone = fields.String()
    firstaccess = fields.Integer()
    lastaccess = fields.Integer()
    profileimageurl = fields.String()
    profileimageurlsmall = fields.String()


class UsersByFieldSchema(ResponseSchema):
    """``missing``: values no user has; ``unchecked``: values the gateway could not check within its bound of
    Moodle calls (only when Moodle hides the field from its token), so neither found nor missing."""

    users = Records(UserSchema)
    missing = fields.List(fields.Raw())
    unchecked = fields.List(fields.Raw())


# Moodle's user table: username, firstname, lastname, email char(100); idnumber, institution, department char(255);
# city char(120); lang char(30); timezone char(100); auth char(20).
NAME_MAX, LONG_TEXT_MAX, CITY_MAX, LANG_MAX, TIMEZONE_MAX, AUTH_MAX = 100, 255, 120, 30, 100, 20
PASSWORD_MAX = 1024
MAX_USERS = 5000
# The countries of Moodle's lang/en/countries.php (ISO 3166-1 alpha-2): Moodle clears any other, silently.
_COUNTRY_CODES = (
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY "
    "BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK "
    "FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR "
    "IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK "
    "ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM "
    "PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF "
    "TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW"
)
COUNTRIES = tuple(_COUNTRY_CODES.split())
# Moodle's own zone for "the server's timezone"; the others are IANA names.
SERVER_TIMEZONE = "99"
_NAME_RULES = (validate.Length(max=NAME_MAX), not_blank, single_line, no_html)
_LINE_RULES = (validate.Length(max=LONG_TEXT_MAX), single_line, no_html)


class Timezone(fields.String):
    """An IANA time zone name (``Europe/Oslo``) or Moodle's ``99``, the server's own."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validate=validate.Length(min=1, max=TIMEZONE_MAX), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        zone: str = super()._deserialize(value, attr, data, **kwargs)
        if zone != SERVER_TIMEZONE and zone not in known_timezones():
            raise ValidationError(f"Not a time zone: give an IANA name such as Europe/Oslo, or {SERVER_TIMEZONE}")
        return zone

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        return {"description": f"an IANA time zone name such as `Europe/Oslo`, or `{SERVER_TIMEZONE}` (the server's)"}


@functools.cache
def known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


class UserFields(RequestSchema):
    """What a caller may set on a user; whether Moodle would take it (the username's syntax, the password policy,
    a username or email taken) is the users service's question, answered per user before anything is written."""

    username = Text(
        validate=(validate.Length(min=1, max=NAME_MAX),),
        metadata={"description": "Moodle's syntax: lower case, letters, digits and `_ . @ -` only"},
    )
    firstname = Text(validate=_NAME_RULES)
    lastname = Text(validate=_NAME_RULES)
    email = Text(validate=(validate.Length(min=1, max=NAME_MAX),))
    password = fields.String(
        validate=validate.Length(min=1, max=PASSWORD_MAX),
        load_only=True,
        metadata={"description": "held to the site's password policy (`MOODLE_PASSWORD_POLICY`)"},
    )
    auth = Text(
        validate=(validate.Length(min=1, max=AUTH_MAX), single_line),
        metadata={"description": "an authentication plugin of the site (`MOODLE_AUTH_PLUGINS`)"},
    )
    idnumber = Text(validate=_LINE_RULES)
    institution = Text(validate=_LINE_RULES)
    department = Text(validate=_LINE_RULES)
    city = Text(validate=(validate.Length(max=CITY_MAX), single_line, no_html))
    country = fields.String(
        validate=validate.OneOf(
            COUNTRIES, error="Not a country Moodle knows: an ISO 3166 alpha-2 code in upper case, such as NO"
        ),
        metadata={"description": "ISO 3166 alpha-2, upper case, one Moodle lists"},
    )
    lang = Text(
        validate=(validate.Length(min=1, max=LANG_MAX), single_line),
        metadata={"description": "a language pack of the site (`MOODLE_LANGS`)"},
    )
    timezone = Timezone()
    description = Text(validate=no_control_characters)


class NewUser(UserFields):
    username = Text(
        required=True,
        validate=(validate.Length(min=1, max=NAME_MAX),),
        metadata={"description": "Moodle's syntax: lower case, letters, digits and `_ . @ -` only"},
    )
    firstname = Text(required=True, validate=_NAME_RULES)
    lastname = Text(required=True, validate=_NAME_RULES)
    email = Text(required=True, validate=(validate.Length(min=1, max=NAME_MAX),))
    createpassword = Flag(metadata={"description": "Moodle makes a password and mails it; instead of `password`"})
    auth = Text(
        load_default="manual",
        validate=(validate.Length(min=1, max=AUTH_MAX), single_line),
        metadata={"description": "an authentication plugin of the site (`MOODLE_AUTH_PLUGINS`)"},
    )

    @validates_schema
    def _one_password(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("createpassword") and "password" in data:
            raise ValidationError("Give a password or createpassword: true, not both", "createpassword")


class UserChanges(UserFields):
    id = strict_int(1, required=True)
    suspended = Flag()

    @validates_schema
    def _something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if len(data) < 2:
            fields = ", ".join(sorted(name for name in UserChanges._declared_fields if name != "id"))
            raise ValidationError(f"Nothing to change: give at least one of {fields}", "id")


class UsersCreate(RequestSchema):
    users = fields.List(fields.Nested(NewUser), required=True, validate=validate.Length(min=1, max=MAX_USERS))


class UsersUpdate(RequestSchema):
    users = fields.List(fields.Nested(UserChanges), required=True, validate=validate.Length(min=1, max=MAX_USERS))


class CreatedUserSchema(ResponseSchema):
    index = fields.Integer(metadata={"description": "the user's place in the request, from 0"})
    id = fields.Integer()
    username = fields.String()


class UsersCreatedSchema(ResponseSchema):
    created = fields.List(fields.Nested(CreatedUserSchema), metadata={"description": "in request order"})


class FailedUpdateSchema(ResponseSchema):
    id = fields.Integer()
    code = fields.String(metadata={"description": "`usernametaken`, `emailtaken`, `useremailinvalid`, ..."})
    message = fields.String()


class UsersUpdatedSchema(ResponseSchema):
    updated = fields.List(fields.Integer(), metadata={"description": "ids, in request order"})
    failed = fields.List(fields.Nested(FailedUpdateSchema), metadata={"description": "empty on a 200"})
