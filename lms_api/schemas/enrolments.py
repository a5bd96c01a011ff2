"""Manual enrolments: each one's role (an id or a role name), user, course and optional dates."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from lms_api.schemas.base import MAX_SAFE_INTEGER, Choices, Flag, RequestSchema, ResponseSchema, integral, strict_int

MAX_ENROLMENTS = 10000
ROLE_NAME_MAX = 100  # role.shortname is char(100)


class Role(fields.Field[Any]):
    """A Moodle role id, or a role name the gateway maps to one (``student``, ``teacher``, ...). Whether the gateway
    knows the role is the enrolment service's question, as the known roles are settings."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | str:
        value = integral(value)
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SAFE_INTEGER:
            return value
        if isinstance(value, str) and 1 <= len(value) <= ROLE_NAME_MAX:
            return value
        raise ValidationError("A role id (a positive integer) or a role name such as 'student'")

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        by_id = sorted(choices.role_ids, key=lambda role: role[1])
        return {
            "oneOf": [
                {"type": "integer", "enum": sorted({number for _, number in choices.role_ids})},
                {"type": "string", "enum": sorted(name for name, _ in choices.role_ids)},
            ],
            "description": "a role the gateway knows (`MOODLE_ROLE_IDS`), by id or by name: "
            + ", ".join(f"`{name}` ({number})" for name, number in by_id)
            + "; roles beyond `MOODLE_ASSIGNABLE_ROLES` need the `admin` scope as well",
        }


class EnrolmentSchema(RequestSchema):
    roleid = Role(required=True)
    userid = strict_int(1, required=True)
    courseid = strict_int(1, required=True)
    timestart = strict_int(0)
    timeend = strict_int(0)
    suspend = Flag()

    @validates_schema
    def _dates_in_order(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("timestart"), data.get("timeend")
        if start is not None and end and end < start:
            raise ValidationError("Must not be before timestart", "timeend")


class EnrolBody(RequestSchema):
    enrolments = fields.List(
        fields.Nested(EnrolmentSchema), required=True, validate=validate.Length(min=1, max=MAX_ENROLMENTS)
    )


class EnrolResultSchema(ResponseSchema):
    enrolled = fields.Integer()
    calls = fields.Integer()
