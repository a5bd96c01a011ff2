"""Notifications: whose, how many, from where; and the notification fields that leave the gateway."""

from __future__ import annotations

from marshmallow import fields

from lms_api.schemas.base import Records, RequestSchema, ResponseSchema, text_int

MAX_LIMIT = 100
MAX_OFFSET = 1_000_000  # far past any inbox, far inside Moodle's SQL offsets


class UnreadCountQuery(RequestSchema):
    userid = text_int(1)


class NotificationsQuery(UnreadCountQuery):
    limit = text_int(1, MAX_LIMIT, load_default=20)
    offset = text_int(0, MAX_OFFSET, load_default=0)


class NotificationSchema(ResponseSchema):
    id = fields.Integer()
    useridfrom = fields.Integer()
    useridto = fields.Integer()
    subject = fields.String()
    shortenedsubject = fields.String()
    text = fields.String()
    fullmessage = fields.String()
    fullmessageformat = fields.Integer()
    fullmessagehtml = fields.String()
    smallmessage = fields.String()
    contexturl = fields.String(allow_none=True)
    contexturlname = fields.String(allow_none=True)
    timecreated = fields.Integer()
    timecreatedpretty = fields.String()
    timeread = fields.Integer(allow_none=True)
    read = fields.Boolean()
    deleted = fields.Boolean()
    iconurl = fields.String()
    component = fields.String()
    eventtype = fields.String()
    customdata = fields.Raw(allow_none=True)


class NotificationsSchema(ResponseSchema):
    userid = fields.Integer()
    notifications = Records(NotificationSchema)
    unreadcount = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class UnreadCountSchema(ResponseSchema):
    userid = fields.Integer()
    count = fields.Integer()
