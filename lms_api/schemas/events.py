"""Event streams: the ticket asked for, the ticket given, the stream's query and an event's data."""

from __future__ import annotations

from marshmallow import fields, validate

from lms_api.events import EventType
from lms_api.schemas.base import CommaSeparated, RequestSchema, ResponseSchema, text_int

# Channels one stream multiplexes: nchan takes up to 255, and each course is one.
MAX_COURSES = 50


class TicketQuery(RequestSchema):
    courses = CommaSeparated(
        text_int(1),
        validate=validate.Length(max=MAX_COURSES),
        metadata={
            "description": f"comma-separated course ids, at most {MAX_COURSES}, whose course events the stream carries "
            "as well (needs `courses:read`)"
        },
    )


class TicketSchema(ResponseSchema):
    ticket = fields.String(metadata={"description": "single use, valid `expires_in` seconds"})
    expires_in = fields.Integer()
    stream_url = fields.String(metadata={"description": "the EventSource URL, the ticket included"})
    websocket_url = fields.String(
        allow_none=True,
        metadata={"description": "the WebSocket URL, the ticket included; null unless nginx with nchan"},
    )
    userid = fields.Integer(allow_none=True, metadata={"description": "the Moodle user whose channel it carries"})
    courses = fields.List(fields.Integer())


class StreamQuery(RequestSchema):
    ticket = fields.String(required=True, validate=validate.Length(min=1, max=128))
    last_event_id = fields.String(
        validate=validate.Length(max=128),
        metadata={"description": "resume after this event id (as `Last-Event-ID`, for a new EventSource)"},
    )


class EventDataSchema(ResponseSchema):
    """An event's data; its fields are its type's."""

    type = fields.String(validate=validate.OneOf([each.value for each in EventType]))
    userid = fields.Integer(metadata={"description": "notification, enrolment.*: the Moodle user"})
    unreadcount = fields.Integer(metadata={"description": "notification: the user's unread popup notifications"})
    courseid = fields.Integer(metadata={"description": "course.*, enrolment.*"})
    roleid = fields.Integer(metadata={"description": "enrolment.role_*"})
    job = fields.Dict(metadata={"description": "job.progress: the job's summary, as `GET /api/moodle/jobs` lists it"})
