"""Personal messages sent as the gateway's Moodle user: to whom, what, and what became of each."""

from __future__ import annotations

from marshmallow import fields, validate

from lms_api.schemas.base import RequestSchema, ResponseSchema, Text, no_control_characters, strict_int

MAX_MESSAGES = 100
# Moodle's \core_message\api::MESSAGE_MAX_LENGTH. Moodle counts bytes: a longer text in UTF-8 is refused in its item.
MAX_TEXT_LENGTH = 4096
MAX_CLIENT_MESSAGE_ID_LENGTH = 100
CLIENT_MESSAGE_ID = r"^[A-Za-z0-9_-]+$"  # Moodle's PARAM_ALPHANUMEXT: any other character fails the whole call


class MessageSchema(RequestSchema):
    touserid = strict_int(1, required=True)
    text = Text(required=True, validate=[validate.Length(min=1, max=MAX_TEXT_LENGTH), no_control_characters])
    clientmsgid = fields.String(
        validate=[
            validate.Length(min=1, max=MAX_CLIENT_MESSAGE_ID_LENGTH),
            validate.Regexp(CLIENT_MESSAGE_ID, error="Only letters, digits, '_' and '-'"),
        ],
        metadata={"description": "the caller's own id for the message, answered with its outcome"},
    )


class SendMessagesBody(RequestSchema):
    messages = fields.List(
        fields.Nested(MessageSchema), required=True, validate=validate.Length(min=1, max=MAX_MESSAGES)
    )


class MessageOutcomeSchema(ResponseSchema):
    touserid = fields.Integer()
    clientmsgid = fields.String()
    sent = fields.Boolean()
    msgid = fields.Integer(allow_none=True, metadata={"description": "Moodle's id of the message; null if not sent"})
    conversationid = fields.Integer(allow_none=True)
    timecreated = fields.Integer(allow_none=True)
    error = fields.String(metadata={"description": "why Moodle did not send it (only when `sent` is false)"})


class MessagesSentSchema(ResponseSchema):
    messages = fields.List(fields.Nested(MessageOutcomeSchema))
    sent = fields.Integer()
    failed = fields.Integer()
