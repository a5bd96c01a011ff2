"""Courses: listing query, create and update bodies, and the one course shape every course route answers."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from lms_api.schemas.base import (
    Choices,
    Flag,
    JsonInteger,
    Records,
    RequestSchema,
    ResponseSchema,
    Text,
    no_control_characters,
    no_html,
    not_blank,
    single_line,
    strict_int,
    text_int,
)

MAX_PERPAGE = 200
MAX_PAGE = 1_000_000  # page * perpage stays far inside Moodle's SQL offsets
# Moodle's column sizes (course.fullname 1333, shortname 255, idnumber 100).
FULLNAME_MAX, SHORTNAME_MAX, IDNUMBER_MAX = 1333, 255, 100
# FORMAT_MOODLE, FORMAT_HTML, FORMAT_PLAIN, FORMAT_MARKDOWN
SUMMARY_FORMATS = (0, 1, 2, 4)
_FULLNAME_RULES = (validate.Length(max=FULLNAME_MAX), not_blank, single_line, no_html)
_SHORTNAME_RULES = (validate.Length(max=SHORTNAME_MAX), not_blank, single_line, no_html)


FORMAT_MAX = 21


class CourseFormat(fields.String):
    """A course format plugin's name. Which ones the site offers is a setting (``MOODLE_COURSE_FORMATS``), so the
    courses service checks it; Moodle 5.0 stores any name it is given, and a course whose format no plugin
    provides is shown in the default format, its own format options lost."""

    def __init__(self, **kwargs: Any) -> None:
        # course.format is char(21) in Moodle's database: a longer name is no format, and is not echoed back.
        super().__init__(validate=validate.Length(max=FORMAT_MAX), **kwargs)

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        return {"enum": list(choices.course_formats)}


class CoursesQuery(RequestSchema):
    search = Text(validate=(validate.Length(min=1, max=255), single_line))
    category = text_int(1)
    page = text_int(0, MAX_PAGE, load_default=0)
    perpage = text_int(1, MAX_PERPAGE, load_default=50)

    @post_load
    def _trim_search(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "search" in data:
            data["search"] = data["search"].strip()
            if not data["search"]:
                raise ValidationError({"search": ["Search text must not be blank"]})
        return data


class CoursePath(RequestSchema):
    course_id = text_int(1, required=True)


class CourseFields(RequestSchema):
    """The course fields a caller may set; Moodle's own validation runs again on its side."""

    fullname = Text(validate=_FULLNAME_RULES)
    shortname = Text(validate=_SHORTNAME_RULES)
    categoryid = strict_int(1)
    summary = Text(validate=no_control_characters)
    summaryformat = JsonInteger(validate=validate.OneOf(SUMMARY_FORMATS))
    format = CourseFormat()
    visible = Flag()
    startdate = strict_int(0, metadata={"description": "Unix time; 0 for none"})
    enddate = strict_int(
        0, metadata={"description": "Unix time; 0 for none. Needs a startdate (not 0) in the request, not after it"}
    )
    idnumber = Text(validate=(validate.Length(max=IDNUMBER_MAX), single_line))

    @validates_schema
    def _dates_in_order(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Moodle checks only the dates a request sends: an end date needs a start date beside it."""
        start, end = data.get("startdate"), data.get("enddate")
        if end and not start:
            raise ValidationError(
                "Give a startdate (not 0) with an enddate: Moodle refuses an end without a start", "enddate"
            )
        if start is not None and end and end < start:
            raise ValidationError("Must not be before startdate", "enddate")


class CourseCreate(CourseFields):
    fullname = Text(required=True, validate=_FULLNAME_RULES)
    shortname = Text(required=True, validate=_SHORTNAME_RULES)
    categoryid = strict_int(1, required=True)


class CourseUpdate(CourseFields):
    @validates_schema
    def _something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            fields = ", ".join(sorted(CourseFields._declared_fields))
            raise ValidationError(f"The body changes nothing: give at least one of {fields}", "body")


class CourseSchema(ResponseSchema):
    """Every course route answers these fields; one Moodle did not give is ``null``."""

    id = fields.Integer()
    shortname = fields.String(dump_default=None)
    fullname = fields.String(dump_default=None)
    displayname = fields.String(dump_default=None)
    categoryid = fields.Integer(dump_default=None)
    summary = fields.String(dump_default=None)
    summaryformat = fields.Integer(dump_default=None)
    format = fields.String(dump_default=None)
    startdate = fields.Integer(dump_default=None)
    enddate = fields.Integer(dump_default=None)
    visible = fields.Integer(dump_default=None)
    idnumber = fields.String(dump_default=None)


class CourseListSchema(ResponseSchema):
    courses = Records(CourseSchema)
    total = fields.Integer()
    page = fields.Integer()
    perpage = fields.Integer()


class CreatedCourseSchema(ResponseSchema):
    id = fields.Integer()
    shortname = fields.String()
