"""What Moodle's Event Trigger posts to the webhook, and what the webhook answers.

The Event Trigger's "HTTP post" step sends the fields its parameter template names, form-encoded, or, with "JSON
encode" ticked, as a JSON object of the same strings (PHP's ``parse_str`` reads the template first): every number
arrives as text either way, and a field the event leaves unset as an empty one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE, fields, pre_load, validate

from lms_api.schemas.base import (
    MAX_SAFE_INTEGER,
    IntegerText,
    JsonInteger,
    RequestSchema,
    ResponseSchema,
    not_blank,
    single_line,
)

MAX_EVENT_NAME_LENGTH = 255  # Moodle's logstore column for it is 255 characters


class EventNumber(JsonInteger):
    """An id or a time of a Moodle event: a JSON integer, or its digits as text."""

    def __init__(self, **kwargs: Any) -> None:
        bounds = validate.Range(min=-MAX_SAFE_INTEGER, max=MAX_SAFE_INTEGER)
        super().__init__(allow_none=True, load_default=None, validate=bounds, **kwargs)
        self._text = IntegerText()

    def _validated(self, value: Any) -> int:
        if isinstance(value, str):
            return self._text._validated(value)
        return super()._validated(value)


class MoodleEventDelivery(RequestSchema):
    """One Moodle event as the Event Trigger sends it. Only ``eventname`` is required: which of the other fields an
    event needs is the events table's to say (``lms_api.webhooks.EVENTS``). Fields it does not know are ignored: a
    workflow's template may send any of the event's fields."""

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def unset_fields_are_none(self, data: Any, **kwargs: Any) -> Any:
        """A field the event leaves unset (a message's ``objectid``) is rendered by the Event Trigger as nothing."""
        if not isinstance(data, Mapping):
            return data
        return {name: None if value == "" and name in _NUMBERS else value for name, value in data.items()}

    eventname = fields.String(
        required=True,
        validate=[validate.Length(max=MAX_EVENT_NAME_LENGTH), not_blank, single_line],
        metadata={"description": "the event's class, as Moodle names it: `\\core\\event\\course_updated`"},
    )
    objectid = EventNumber(metadata={"description": "the record the event is about (a course, a user, a role...)"})
    courseid = EventNumber(metadata={"description": "the course the event happened in"})
    userid = EventNumber(metadata={"description": "who acted"})
    relateduserid = EventNumber(metadata={"description": "the user the event is about (enrolled, notified...)"})
    contextinstanceid = EventNumber(metadata={"description": "the instance of the event's context"})
    timecreated = EventNumber(metadata={"description": "when the event happened, in seconds since 1970"})


_NUMBERS = frozenset(name for name, field in MoodleEventDelivery().fields.items() if isinstance(field, EventNumber))


class PublishedEventSchema(ResponseSchema):
    channel = fields.String(required=True, metadata={"description": "the channel the event went to"})
    type = fields.String(required=True, metadata={"description": "the event's type, as the stream names it"})


class DeliveryAnswerSchema(ResponseSchema):
    """What the webhook did with a delivery: handled (what it dropped and published), ignored (an event the table
    does not know) or a duplicate (the same event within the hour: nothing done again)."""

    event = fields.String(required=True, metadata={"description": "the delivery's `eventname`"})
    handled = fields.Boolean(metadata={"description": "true: the events table's row for it was applied"})
    ignored = fields.Boolean(metadata={"description": "true: the events table has no row for it; nothing was done"})
    duplicate = fields.Boolean(metadata={"description": "true: the same event was delivered within the hour"})
    dropped = fields.List(
        fields.String(),
        metadata={"description": "the read-cache groups dropped on every replica (`notifications/<userid>`: a user's)"},
    )
    published = fields.List(fields.Nested(PublishedEventSchema()), metadata={"description": "the events published"})
    unreadcount = fields.Integer(
        allow_none=True,
        metadata={"description": "a notification's recipient's new unread count; null when Moodle could not say"},
    )
