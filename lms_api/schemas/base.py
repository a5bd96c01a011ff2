"""The base every route schema derives from, and how a request's input is read into it."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema
from pyramid.request import Request

from lms_api.errors import ApiError


class RequestSchema(Schema):
    """Input schema: unknown fields are an error that names them, so a caller's typo never passes silently."""

    class Meta:
        unknown = RAISE


class ResponseSchema(Schema):
    """Output schema: only declared fields leave the gateway, so a new or secret Moodle field never leaks."""


def load_query(request: Request, schema: RequestSchema) -> dict[str, Any]:
    """Validate the query string; a repeated parameter is kept as a list for the schema to refuse."""
    query: dict[str, Any] = {}
    for name in request.GET:
        values = request.GET.getall(name)
        query[name] = values[0] if len(values) == 1 else values
    return schema.load(query)


def load_json_body(request: Request, schema: RequestSchema) -> dict[str, Any]:
    try:
        body = request.json_body
    except ValueError:
        raise ApiError(400, "invalidjson", "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalidjson", "The request body must be a JSON object")
    return schema.load(body)
