"""The base every route schema derives from, and how a request's input is read into it."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields
from pyramid.request import Request

from lms_api.errors import ApiError

MAX_JSON_BYTES = 1024 * 1024
# The largest integer a browser's JSON.parse keeps exactly; no id, count or timestamp of Moodle comes near it.
MAX_SAFE_INTEGER = 2**53 - 1


class RequestSchema(Schema):
    """Input schema: unknown fields are an error that names them, so a caller's typo never passes silently."""

    class Meta:
        unknown = RAISE


class ResponseSchema(Schema):
    """Output schema: only declared fields leave the gateway, so a new or secret Moodle field never leaks."""


def load_query(request: Request, schema: RequestSchema) -> dict[str, Any]:
    """Validate the query string; a repeated parameter is kept as a list for the schema to refuse."""
    return schema.load(_as_dict(request.GET))


def load_multipart(request: Request, schema: RequestSchema) -> dict[str, Any]:
    """Validate a ``multipart/form-data`` body; file parts stay file objects (spooled to disk when large)."""
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "unsupportedmediatype", "This route takes a multipart/form-data body")
    try:
        form = _as_dict(request.POST)
    except ValueError:  # no boundary, or a body that does not follow it
        raise ApiError(400, "invalidmultipart", "The multipart/form-data body cannot be read") from None
    request.add_finished_callback(_close_spooled_body)
    return schema.load(form)


def _close_spooled_body(request: Request) -> None:
    """Delete the spooled copies of the body and its files now, not whenever the garbage collector runs."""
    for value in request.POST.values():
        if hasattr(value, "file") and hasattr(value.file, "close"):
            value.file.close()
    request.body_file_raw.close()


def load_matchdict(request: Request, schema: RequestSchema) -> dict[str, Any]:
    return schema.load(dict(request.matchdict or {}))


def _as_dict(multidict: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in multidict:
        found = multidict.getall(name)
        values[name] = found[0] if len(found) == 1 else found
    return values


def load_json_body(request: Request, schema: RequestSchema) -> dict[str, Any]:
    """A JSON object body: 415 for another media type, 413 past MAX_JSON_BYTES (judged before it is read)."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupportedmediatype", "This route takes a JSON body (Content-Type: application/json)")
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise ApiError(
            413, "bodytoolarge", f"JSON bodies are limited to {MAX_JSON_BYTES} bytes", {"max_bytes": MAX_JSON_BYTES}
        )
    try:
        body = request.json_body
    except ValueError:
        raise ApiError(400, "invalidjson", "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalidjson", "The request body must be a JSON object")
    return schema.load(body)


def not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank")


_HTML_TAG = re.compile(r"<[A-Za-z/!?]")


def no_html(value: str) -> None:
    """Moodle's PARAM_TEXT refuses tags with a bare ``invalidparameter``; say so here instead."""
    if _HTML_TAG.search(value):
        raise ValidationError("Must not contain HTML tags")


class Flag(fields.Field):
    """A yes/no input: JSON ``true``/``false`` or Moodle's ``1``/``0``; nothing else (no "yes", no 2, no 1.0)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) in (bool, int) and value in (0, 1):
            return bool(value)
        raise ValidationError("Must be true, false, 1 or 0")


class CommaSeparated(fields.Field):
    """``a,b,c`` in a query string, each item loaded by ``item``; blanks around items are dropped."""

    def __init__(self, item: fields.Field, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item = item

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if not isinstance(value, str):
            raise ValidationError("Give the values once, separated by commas")
        items = [part.strip() for part in value.split(",")]
        if any(not part for part in items):
            raise ValidationError("Empty value in the comma-separated list")
        loaded, problems = [], {}
        for index, part in enumerate(items):
            try:
                loaded.append(self.item.deserialize(part))
            except ValidationError as error:
                problems[index] = error.messages
        if problems:
            raise ValidationError(problems)
        return loaded


def strict_int(**kwargs: Any) -> fields.Integer:
    """An integer field for JSON bodies: ``1.5``, ``"1"`` and ``true`` are refused, not coerced."""
    return fields.Integer(strict=True, **kwargs)
