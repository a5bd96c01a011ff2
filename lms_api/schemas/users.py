"""Users by field: which field, which values, and the user fields that leave the gateway."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, post_load, validate

from lms_api.moodle.functions import USER_LOOKUP_FIELDS
from lms_api.schemas.base import (
    MAX_SAFE_INTEGER,
    CommaSeparated,
    Records,
    RequestSchema,
    ResponseSchema,
    Text,
    single_line,
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
