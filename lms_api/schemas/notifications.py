"""Notifications: whose, how many, from where; and the notification fields that leave the gateway."""

from __future__ import annotations

from marshmallow import fields, validate

from lms_api.schemas.base import RequestSchema, ResponseSchema

MAX_LIMIT = 100


class UnreadCountQuery(RequestSchema):
    userid = fields.Integer(validate=validate.Range(min=1))


class NotificationsQuery(UnreadCountQuery):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=MAX_LIMIT))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


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
    notifications = fields.List(fields.Nested(NotificationSchema))
    unreadcount = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class UnreadCountSchema(ResponseSchema):
    userid = fields.Integer()
    count = fields.Integer()
