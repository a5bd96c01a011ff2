"""The base every route schema derives from, and how a request's input is read into it.

Input is refused here, before any Moodle call, when it is not what the route takes: a wrong media type or
charset, a Content-Type whose parameters cannot be read, JSON that is not UTF-8 text or nests without end, a repeated
query parameter, a multipart body that does not end with its closing boundary or passes a limit on its parts.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile
from typing import IO, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate
from multipart import MultipartError, MultipartSegment, ParserLimitReached, PushMultipartParser
from pyramid.request import Request

from lms_api.errors import ApiError, ErrorCode

# The largest integer a browser's JSON.parse keeps exactly; no id, count or timestamp of Moodle comes near it.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_JSON_DEPTH = 32
_UTF8_CHARSETS = frozenset({"utf-8", "utf8"})
_SURROGATE = re.compile("[\ud800-\udfff]")
# An upload's parts: its files (each route says how many), a few short text fields, and the headers of each.
MAX_PARTS = 64
MAX_FIELD_BYTES = 4 * 1024
MAX_PART_HEADERS = 4  # RFC 7578 names three: Content-Disposition, Content-Type, Content-Transfer-Encoding
MAX_PART_HEADER_BYTES = 4 * 1024  # a header line; a 255-character file name percent-encoded fits
_READ_CHUNK_BYTES = 64 * 1024
_FILE_IN_MEMORY_BYTES = 1024 * 1024  # a file part larger than this goes on to a temporary file on disk
# RFC 2046: 1 to 70 characters, not ending with a space. Its set of characters is not held to: clients go past it
# (WebTest's boundaries hold a "$"), and any printable ASCII delimits as well.
_BOUNDARY = re.compile(r"[ -~]{0,69}[!-~]")
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# RFC 9110: ``; name=value``, the value a token or a quoted string; an empty parameter between semicolons is allowed.
_QUOTED = r'"(?P<quoted>(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*)"'
_PARAMETER = re.compile(rf"[ \t]*;[ \t]*(?:(?P<name>{_TCHARS})=(?:(?P<token>{_TCHARS})|{_QUOTED}))?[ \t]*")
_QUOTED_PAIR = re.compile(r"\\(.)")


class RequestSchema(Schema):
    """Input schema: unknown fields are an error that names them, so a caller's typo never passes silently."""

    class Meta:
        unknown = RAISE


class ResponseSchema(Schema):
    """Output schema: only declared fields leave the gateway, so a new or secret Moodle field never leaks."""


class Records(fields.Nested):
    """``Nested(schema, many=True)`` for a list of flat records (no nested field of their own), dumped by ``schema``'s
    fields without a schema's per-record machinery, which costs several times more per record: a real site's
    hundreds of functions are on the path of every forwarded site info (README: Benchmarks).

    What it dumps is what ``Nested(many=True)`` dumps (a test holds them equal): declared fields only, each serialised
    by its field, a missing one left out or given its ``dump_default``. Everything else (loading, the OpenAPI
    document) is ``Nested``'s own.
    """

    def __init__(self, schema: type[ResponseSchema], **kwargs: Any) -> None:
        super().__init__(schema, many=True, **kwargs)
        self._plan = [
            (field.data_key or name, name, field, field.dump_default, _UNCHANGED_BY.get(type(field)))
            for name, field in schema().dump_fields.items()
        ]

    # marshmallow's Field and Nested name the value differently, so no one signature matches both.
    def _serialize(self, nested_obj: Any, attr: Any, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if nested_obj is None:
            return None
        return [self._record(record) for record in nested_obj]

    def _record(self, record: dict[str, Any]) -> dict[str, Any]:
        dumped: dict[str, Any] = {}
        for key, name, field, default, unchanged in self._plan:
            if name in record:
                item = record[name]
            elif default is missing:
                continue
            else:
                item = default() if callable(default) else default
            if item is None or type(item) is unchanged:
                dumped[key] = item
            else:
                dumped[key] = field._serialize(item, name, record)
        return dumped


# A value of exactly this type comes out of the field as it went in (a str of a String, an int of an Integer).
_UNCHANGED_BY: dict[type[fields.Field[Any]], type] = {fields.String: str, fields.Integer: int, fields.Boolean: bool}


class FormSchema(RequestSchema):
    """A ``multipart/form-data`` body: the fields that may come more than once, and how many files it may hold."""

    repeatable: ClassVar[tuple[str, ...]] = ()
    max_files: ClassVar[int] = 0


class Choices(NamedTuple):
    """What the settings allow where a schema cannot say it: the course formats and the roles the gateway knows."""

    course_formats: tuple[str, ...]
    role_ids: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, course_formats: Iterable[str], role_ids: Mapping[str, int]) -> Choices:
        return cls(tuple(course_formats), tuple(role_ids.items()))


@runtime_checkable
class StatesJsonSchema(Protocol):
    """A field of the gateway's own says what it takes as JSON Schema, beyond what its marshmallow base says; with
    the settings' ``choices`` where they decide it."""

    def json_schema(self, choices: Choices) -> dict[str, Any]: ...


def load_query(request: Request, schema: RequestSchema) -> dict[str, Any]:
    """Validate the query string; a parameter given twice is refused, whichever value a caller meant."""
    return _loaded(schema, _as_dict(request.GET.items()))


def load_matchdict(request: Request, schema: RequestSchema) -> dict[str, Any]:
    return _loaded(schema, dict(request.matchdict or {}))


def load_multipart(
    request: Request, schema: RequestSchema, repeatable: Iterable[str] = (), *, max_files: int
) -> dict[str, Any]:
    """Validate a ``multipart/form-data`` body, read as it streams in: at most MAX_PARTS parts and ``max_files``
    files, a text field of at most MAX_FIELD_BYTES, part headers of at most MAX_PART_HEADER_BYTES a line.

    The reading stops at the first part past a limit, so a body of thousands of parts costs no more than one
    at the limit. Files become :class:`FilePart` objects on temporary files (in memory while small), closed
    when the request finishes. Only the fields named in ``repeatable`` may come more than once.
    """
    parameters = _content_type(
        request, "multipart/form-data", "This route takes a multipart/form-data body", _unreadable_multipart
    )
    boundary = parameters.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise _unreadable_multipart("the Content-Type gives no boundary of 1 to 70 printable ASCII characters")
    charset = parameters.get("charset")
    if charset is not None and charset.lower() not in _UTF8_CHARSETS:
        raise _unreadable_multipart(f"its fields are read as UTF-8; the Content-Type says charset={charset}")
    opened: list[IO[bytes]] = []
    request.add_finished_callback(lambda finished: _close_all(opened))
    parts = _read_parts(request.body_file, boundary.encode("ascii"), max_files, opened)
    return _loaded(schema, _as_dict(parts, frozenset(repeatable)))


@dataclass(frozen=True)
class FilePart:
    """A file part of a multipart body: the filename as sent, its content and its declared media type."""

    filename: str
    file: IO[bytes]
    type: str | None


def _read_parts(body: IO[bytes], boundary: bytes, max_files: int, opened: list[IO[bytes]]) -> list[tuple[str, Any]]:
    parser = PushMultipartParser(boundary, max_header_size=MAX_PART_HEADER_BYTES, max_header_count=MAX_PART_HEADERS)
    parts: list[tuple[str, Any]] = []
    text_fields: dict[int, bytearray] = {}  # index in parts -> the field's bytes so far
    files = 0
    sink: IO[bytes] | bytearray | None = None
    try:
        while True:
            chunk = body.read(_READ_CHUNK_BYTES)
            for event in parser.parse(chunk):  # an empty chunk ends the body: a missing close delimiter is an error
                if isinstance(event, MultipartSegment):
                    if len(parts) == MAX_PARTS:
                        raise _unreadable_multipart(f"it has more than {MAX_PARTS} parts")
                    if event.filename is None:
                        sink = text_fields[len(parts)] = bytearray()
                        parts.append((event.name or "", sink))
                    else:
                        files += 1
                        if files > max_files:
                            raise _unreadable_multipart(f"it has more than {max_files} files")
                        sink = SpooledTemporaryFile(max_size=_FILE_IN_MEMORY_BYTES)  # noqa: SIM115 (closed at the end)
                        opened.append(sink)
                        parts.append((event.name or "", FilePart(event.filename, sink, event.content_type)))
                elif event is None:
                    sink = None
                elif isinstance(sink, bytearray):
                    sink += event
                    if len(sink) > MAX_FIELD_BYTES:
                        raise ValidationError({parts[-1][0]: [f"Text fields are limited to {MAX_FIELD_BYTES} bytes"]})
                elif sink is not None:
                    sink.write(event)
            if not chunk:
                break
    except ParserLimitReached:
        raise _unreadable_multipart(
            f"a part has more than {MAX_PART_HEADERS} header lines or a header line over {MAX_PART_HEADER_BYTES} bytes"
        ) from None
    except MultipartError as error:
        if not chunk:  # what the body holds was read without error: its end is missing
            raise _unreadable_multipart("it does not end with its closing boundary") from None
        raise _unreadable_multipart(f"its parts cannot be read ({error.args[0]})") from None
    return [(name, _text(name, value) if index in text_fields else value) for index, (name, value) in enumerate(parts)]


def _text(name: str, value: bytearray) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError({name: ["Must be UTF-8 text"]}) from None


def _close_all(files: list[IO[bytes]]) -> None:
    """Delete the temporary files of an upload when its request finishes, not whenever the collector runs."""
    for file in files:
        file.close()


def _loaded(schema: RequestSchema, data: dict[str, Any]) -> dict[str, Any]:
    """A request schema loads one object into a dict of its fields (marshmallow's own ``load`` is untyped)."""
    loaded: dict[str, Any] = schema.load(data)
    return loaded


def _unreadable_multipart(why: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_MULTIPART, f"The multipart/form-data body cannot be read: {why}")


def _content_type(
    request: Request, expected: str, unsupported: str, refusal: Callable[[str], ApiError]
) -> dict[str, str]:
    """The parameters of a Content-Type of the ``expected`` media type, read as RFC 9110 writes them. Another media
    type is a 415 saying ``unsupported``, whatever its parameters; a parameter that is not ``name=value`` (a token,
    or a quoted string), or one given twice, is ``refusal``'s 400."""
    header = request.headers.get("Content-Type", "")
    media_type, separator, rest = header.partition(";")
    if media_type.strip().lower() != expected:
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, unsupported)
    rest = separator + rest
    parameters: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAMETER.match(rest, position)
        if match is None:
            raise refusal(f"the Content-Type's parameters cannot be read from {_shown(rest[position:].lstrip('; '))}")
        name, token, quoted = match.group("name"), match.group("token"), match.group("quoted")
        if name is not None:
            name = name.lower()
            if name in parameters:
                raise refusal(f"the Content-Type gives {name} twice")
            parameters[name] = token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted)
        position = match.end()
    return parameters


def _as_dict(pairs: Iterable[tuple[str, Any]], repeatable: frozenset[str] = frozenset()) -> dict[str, Any]:
    grouped: dict[str, list[Any]] = {}
    for name, value in pairs:  # one pass: getall() per name would scan every item for each name
        grouped.setdefault(name, []).append(value)
    values: dict[str, Any] = {}
    repeated: dict[str, list[str]] = {}
    for name, found in grouped.items():
        if len(found) == 1:
            values[name] = found[0]
        elif name in repeatable:
            values[name] = found
        else:
            repeated[name] = [f"Give {name} once (it was given {len(found)} times)"]
    if repeated:
        raise ValidationError(repeated)
    return values


def load_json_body(request: Request, schema: RequestSchema) -> dict[str, Any]:
    """A JSON object body: 415 for another media type, 413 past MAX_JSON_BODY_KB."""
    parameters = _content_type(
        request,
        "application/json",
        "This route takes a JSON body (Content-Type: application/json)",
        lambda why: _invalid_json(f"The request body cannot be read: {why}"),
    )
    if parameters.get("charset", "utf-8").lower() not in _UTF8_CHARSETS:
        raise _invalid_json("JSON bodies must be UTF-8 (RFC 8259): give charset=utf-8 or no charset")
    # Read once, straight from the input, no spooled copy; a declared length over the limit never got here (the
    # body-limit tween), and a body without one is held to the limit by reading no further.
    max_bytes = request.lms_settings.max_json_body_kb * 1024
    raw = request.body_file.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise json_body_too_large(max_bytes)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise _invalid_json("The request body must be a JSON object")
    return _loaded(schema, body)


def json_body_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        ErrorCode.BODY_TOO_LARGE,
        f"Request bodies are limited to {max_bytes} bytes (MAX_JSON_BODY_KB)",
        {"max_bytes": max_bytes},
    )


def parse_json(raw: bytes) -> Any:
    """Strict JSON text: UTF-8, no NaN or Infinity, no key twice in one object, no lone surrogate, not too deep."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_object_without_repeats)
    except _RepeatedKey as error:
        raise _invalid_json(f"The request body gives the key {_shown(error.key)} twice in one object") from None
    except UnicodeDecodeError:
        raise _invalid_json("The request body is not UTF-8 text") from None
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as error:
        raise _invalid_json(
            f"The request body is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from None
    except ValueError:  # the only other: an integer of more digits than Python converts
        raise _invalid_json(
            f"The request body is not valid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    _check_json_value(value)
    return value


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise _RepeatedKey(key)
        value[key] = item
    return value


def _refuse_constant(name: str) -> Any:
    raise _invalid_json(f"The request body is not valid JSON: {name} is not a JSON number")


def _check_json_value(value: Any) -> None:
    """Walk without recursion: no lone surrogate in any string or key, and at most MAX_JSON_DEPTH levels."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise _invalid_json(
                    "The request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
                )
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def _too_deep() -> ApiError:
    return _invalid_json(f"The request body nests deeper than {MAX_JSON_DEPTH} levels")


def _invalid_json(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_JSON, message)


def _shown(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank")


# PHP's strip_tags(), which Moodle's PARAM_TEXT and PARAM_NOTAGS end with, takes every "<" not followed by an ASCII
# blank (C's isspace(): the end of the text included) for the start of a tag, and cuts it.
_TAG_BREAKERS_CLASS = r" \t\n\x0b\x0c\r"
_HTML_TAG = re.compile(f"<(?![{_TAG_BREAKERS_CLASS}])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINE_BREAKS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def single_line(value: str) -> None:
    """Names, short names, ids and search text: Moodle keeps control characters in them, and they break its pages."""
    if _CONTROL.search(value):
        raise ValidationError("Must not contain control characters (line breaks, tabs, NUL, ...)")


def no_control_characters(value: str) -> None:
    """Multi-line text (summaries): tabs and line breaks are text, other control characters are not."""
    if _CONTROL_BUT_LINE_BREAKS.search(value):
        raise ValidationError("Must not contain control characters other than tabs and line breaks")


def no_html(value: str) -> None:
    """Moodle's PARAM_TEXT refuses tags with a bare ``invalidparameter``; say so here instead."""
    if _HTML_TAG.search(value):
        raise ValidationError("Must not contain HTML tags: a '<' must be followed by a blank")


# What each text rule above refuses, as the characters a JSON Schema pattern leaves out.
_CONTROL_CHARACTERS_CLASS = r"\x00-\x1f\x7f-\x9f"
_CONTROL_BUT_LINE_BREAKS_CLASS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"


def text_rules(validators: Iterable[Any]) -> dict[str, Any]:
    """The JSON Schema of the text rules among ``validators``: patterns that accept what they accept, nothing else."""
    rules = list(validators)
    refused = ""
    if single_line in rules:
        refused = _CONTROL_CHARACTERS_CLASS
    elif no_control_characters in rules:
        refused = _CONTROL_BUT_LINE_BREAKS_CLASS
    patterns = []
    if no_html in rules:  # every "<" followed by a blank the other rules keep
        breakers = " " if single_line in rules else " \\t\\n\\r" if refused else _TAG_BREAKERS_CLASS
        patterns.append(f"^(?:[^<{refused}]|<[{breakers}])*$")
    elif refused:
        patterns.append(f"^[^{refused}]*$")
    if not_blank in rules:
        patterns.append(r"\S")
    if len(patterns) > 1:
        return {"allOf": [{"pattern": pattern} for pattern in patterns]}
    return {"pattern": patterns[0]} if patterns else {}


class Text(fields.String):
    """A string held to the text rules (:func:`single_line`, :func:`no_html`, ...) among its validators, which its
    JSON Schema states as patterns."""

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        return text_rules(self.validators)


def integral(value: Any) -> Any:
    """``value``, or the int it equals when it is a float with no fraction: in JSON ``3.0`` and ``3`` are one number."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


class Flag(fields.Field[Any]):
    """A yes/no input: JSON ``true``/``false`` or Moodle's ``1``/``0`` (``1.0`` is ``1``); nothing else (no "yes",
    no 2)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        value = integral(value)
        if type(value) in (bool, int) and value in (0, 1):
            return bool(value)
        raise ValidationError("Must be true, false, 1 or 0")

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        return {"type": ["boolean", "integer"], "enum": [True, False, 0, 1]}


class CommaSeparated(fields.Field[Any]):
    """``a,b,c`` in a query string, each item loaded by ``item``; blanks around items are dropped."""

    def __init__(self, item: fields.Field[Any], **kwargs: Any) -> None:
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

    def json_schema(self, choices: Choices) -> dict[str, Any]:
        # Blanks around a value are dropped; an empty value is refused.
        return {
            "type": "string",
            "description": self.metadata.get("description", "comma-separated values"),
            "pattern": r"^\s*[^,\s][^,]*(,\s*[^,\s][^,]*)*$",
        }


class JsonInteger(fields.Integer):
    """An integer in a JSON body, as JSON and JSON Schema count them: ``3`` and ``3.0`` are the same number, so both
    are taken; ``3.5``, ``"3"`` and ``true`` are refused, not coerced."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        return super()._validated(integral(value))


def strict_int(minimum: int, maximum: int = MAX_SAFE_INTEGER, **kwargs: Any) -> JsonInteger:
    """A bounded integer in a JSON body."""
    return JsonInteger(validate=validate.Range(min=minimum, max=maximum), **kwargs)


class IntegerText(fields.Integer):
    """An integer written in a query string, a path or a form field: ASCII digits, an optional minus, nothing else.

    Python's ``int()`` would also take ``1_000``, `` 7 ``, ``+7`` and other scripts' digits (Arabic-Indic, full-width).
    """

    def _validated(self, value: Any) -> int:
        if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
            return int(value)
        raise self.make_error("invalid")


_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")


def text_int(minimum: int, maximum: int = MAX_SAFE_INTEGER, **kwargs: Any) -> IntegerText:
    """A bounded integer written as text (query string, path, form field)."""
    return IntegerText(validate=validate.Range(min=minimum, max=maximum), **kwargs)
