"""The OpenAPI 3.1 document of the API, made at start-up from the routes and views Pyramid knows: each API view's
:class:`~lms_api.operation.Operation` (its scope and marshmallow schemas, as :func:`~lms_api.views.api_view`
declared it) read from the introspector, each field's own JSON Schema, and the error table.

Served at ``GET /api/moodle/openapi.json`` without a token, so an SPA developer can generate a typed client from it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, NamedTuple

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.field_converter import FieldConverterMixin
from marshmallow import Schema, fields
from pyramid.config import Configurator
from pyramid.interfaces import IRoutesMapper
from pyramid.registry import Registry
from pyramid.request import Request
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED

from lms_api.errors import UNKNOWN_MOODLE_ERROR_STATUS, ErrorCode
from lms_api.idempotency import KEY_HEADER, MAX_KEY_CHARS, READ_METHODS, REPLAYED_HEADER
from lms_api.jobs import PREFER_HEADER, PREFERENCE_APPLIED_HEADER, RESPOND_ASYNC
from lms_api.jsoncodec import dumps
from lms_api.operation import Operation, declared_views
from lms_api.schemas.base import Choices, StatesJsonSchema
from lms_api.schemas.jobs import JobSchema
from lms_api.security import Scope
from lms_api.settings import Settings
from lms_api.views import JOB_ROUTE

DOCUMENT_PATH = "/api/moodle/openapi.json"
PUBLIC_ROUTES = frozenset({"api.moodle.openapi", "api.moodle.docs"})  # the API's description: no token
BEARER = "bearer"
WEBHOOK_SECRET = "webhookSecret"  # noqa: S105 - a security scheme's name
EVENT_TICKET = "eventTicket"
# The paths that take credentials of their own, not a JWT (lms_api.security.add_path_credentials).
OWN_CREDENTIALS: dict[str, dict[str, Any]] = {
    WEBHOOK_SECRET: {
        "type": "http",
        "scheme": "bearer",
        "description": "`WEBHOOK_SECRET` as the bearer token; or, instead, `X-Signature: sha256=<hex>`: the "
        "HMAC-SHA256 of `<X-Webhook-Timestamp>.<body>` keyed by `WEBHOOK_SECRET`, with `X-Webhook-Timestamp` (Unix "
        "seconds) within 5 minutes of the gateway's clock.",
    },
    EVENT_TICKET: {
        "type": "apiKey",
        "in": "query",
        "name": "ticket",
        "description": "A ticket from `POST /api/moodle/events/tickets`: single use, valid 60 seconds.",
    },
}
# Every route can answer these, whatever it does: its input checks, the token, the rate limit, the gateway itself.
EVERY_ROUTE = (
    ErrorCode.VALIDATION_ERROR,
    ErrorCode.INVALID_ENCODING,
    ErrorCode.UNAUTHENTICATED,
    ErrorCode.INVALID_TOKEN,
    ErrorCode.FORBIDDEN,
    ErrorCode.RATE_LIMITED,
    ErrorCode.INTERNAL_ERROR,
)
# ...and these when Moodle cannot be reached or answers badly, besides Moodle's own errorcodes.
MOODLE_TROUBLE = (
    ErrorCode.FUNCTION_NOT_AVAILABLE,
    ErrorCode.MOODLE_EXCEPTION,
    ErrorCode.MOODLE_ERROR,
    ErrorCode.BAD_RESPONSE,
    ErrorCode.BAD_GATEWAY,
    ErrorCode.MOODLE_UNAVAILABLE,
    ErrorCode.MOODLE_BUSY,
    ErrorCode.MOODLE_TIMEOUT,
)
JSON_BODY = (ErrorCode.INVALID_JSON, ErrorCode.UNSUPPORTED_MEDIA_TYPE)
# Every write takes an Idempotency-Key, and can be refused for it.
IDEMPOTENT_WRITE = (
    ErrorCode.INVALID_IDEMPOTENCY_KEY,
    ErrorCode.IDEMPOTENCY_IN_PROGRESS,
    ErrorCode.IDEMPOTENCY_KEY_REUSED,
    ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
    ErrorCode.IDEMPOTENCY_UNAVAILABLE,
)
# What requested_key accepts, as one pattern: 1 to 255 printable ASCII characters without a comma, but not a value
# that opens and closes with a double quote, which is the quoted form: a structured-field string of 1 to 255 of them,
# commas allowed, where \" and \\ stand for " and \.
_PLAIN = r"\x20-\x2b\x2d-\x7e"  # printable ASCII but the comma
_PLAIN_NOT_QUOTE = r"\x20\x21\x23-\x2b\x2d-\x7e"
_QUOTED_CHAR = r"[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x22\x5c]"
KEY_PATTERN = (
    f"^(?:[{_PLAIN}]|[{_PLAIN_NOT_QUOTE}][{_PLAIN}]{{1,{MAX_KEY_CHARS - 1}}}"
    f'|"[{_PLAIN}]{{0,{MAX_KEY_CHARS - 2}}}[{_PLAIN_NOT_QUOTE}]'
    f'|"(?:{_QUOTED_CHAR}){{1,{MAX_KEY_CHARS}}}")$'
)
IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header",
    "name": KEY_HEADER,
    "required": False,
    "description": "Makes the write safe to retry: the same key with the same request (method, path, body) within "
    "`IDEMPOTENCY_TTL_S` is answered what the first was (an error answer too, but a 5xx after which nothing was "
    "done), with `Idempotent-Replayed: true`, and not done twice. "
    "The caller's own, on this route. Required when `IDEMPOTENCY_REQUIRED` is on. 1 to 255 printable ASCII "
    "characters; one with a comma or a double quote is given as a quoted string (the draft's form, "
    '`"a,b"`), which names the same key as its content. A comma outside one is refused: the header given twice.',
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 2 + 2 * MAX_KEY_CHARS,  # the quoted form of 255 escaped characters
        "pattern": KEY_PATTERN,
    },
}
# Refused by the body-limit tween for a declared length over the limit, before any budget is counted: such an answer
# has no RateLimit-* headers. The same code found later (a body read past its limit, an upload's files over theirs)
# comes after the rate limit with them, as Moodle's 413s do.
REFUSED_BEFORE_THE_BUDGET = (ErrorCode.BODY_TOO_LARGE, ErrorCode.FILE_TOO_LARGE)
WITHOUT_RATE_LIMIT_HEADERS = "; without `RateLimit-*` headers when refused for its declared length, before any budget"
HEADERS = {
    "X-Request-ID": ("The request's id: the caller's `X-Request-ID` when safe to echo, else a new one.", "string"),
    "RateLimit-Limit": ("The caller's budget for this kind of request.", "integer"),
    "RateLimit-Remaining": ("What is left of it in this window.", "integer"),
    "RateLimit-Reset": ("Seconds until the window ends.", "integer"),
    "Retry-After": (
        "Seconds to wait before trying again (429, 503; 409 `idempotencyinprogress`), or before asking again for a "
        "background job still queued or running.",
        "integer",
    ),
    "Location": ("The background job's URL (`/api/moodle/jobs/{id}`), to poll.", "string"),
    PREFERENCE_APPLIED_HEADER: (
        "`respond-async` when the write runs as a background job because `Prefer` asked for it (absent when "
        "`JOBS_FORCE_ASYNC` made it one).",
        "string",
    ),
    REPLAYED_HEADER: (
        "`true` on the answer kept for an `Idempotency-Key`, replayed: the write was not done again.",
        "string",
    ),
    "Cache-Status": (
        "How the gateway's read cache answered (RFC 9211), e.g. `lms_api; hit; ttl=42`; "
        "`detail=no-cache-ignored` on a hit whose `Cache-Control: no-cache` the token may not ask for "
        "(it lacks `cache:refresh`).",
        "string",
    ),
}


PREFER_PARAMETER = {
    "in": "header",
    "name": PREFER_HEADER,
    "required": False,
    "description": "RFC 7240 preferences; with `respond-async` among them, the write is checked (a bad request is "
    "still answered at once, nothing queued), then run as a background job: `202`, the job, and `Location` to poll. "
    "Without it, a write of more than `JOBS_SYNC_MAX_ITEMS` items is a job too when `JOBS_FORCE_ASYNC` is on. "
    "A job is only ever made for a token with `jobs:read`, which reads and cancels it: without that scope the "
    "preference is ignored (the write is answered at once), and a write `JOBS_FORCE_ASYNC` would make a job is "
    "`403 forbidden`, nothing written.",
    "schema": {"type": "string"},
    "example": RESPOND_ASYNC,
}
JOB_ROUTE_ERRORS = (ErrorCode.JOBS_FULL, ErrorCode.JOBS_STOPPING, ErrorCode.JOBS_UNAVAILABLE)
# Headers a route's success answer may carry besides every route's, by route and method: a background job still
# queued or running says when to ask again.
SUCCESS_HEADERS = {(JOB_ROUTE, "GET"): ("Retry-After",)}


class Described(NamedTuple):
    """One operation of the document: its route, method, declaration and view (whose docstring describes it)."""

    route_name: str
    pattern: str
    method: str
    operation: Operation
    view: Callable[..., Any]


def build_document(registry: Registry) -> dict[str, Any]:
    """The document for the API routes of ``registry``; a route without an operation is an error at start-up.

    It depends on the code (routes, views, schemas, the error table) and on the settings' choices of course formats
    and roles, so a process makes it once.
    """
    settings: Settings = registry.settings["lms_api.settings"]
    choices = Choices.of(settings.moodle_course_formats, settings.moodle_role_ids)
    return _document(described_operations(registry), choices)


def described_operations(registry: Registry) -> tuple[Described, ...]:
    """Every API route's operations, in the routes' order, each method's from the view that declares it."""
    declared: dict[str, dict[str, tuple[Operation, Callable[..., Any]]]] = {}
    for declared_view in declared_views(registry):
        if declared_view.operation is not None:
            for method in declared_view.methods:
                by_method = declared.setdefault(declared_view.route_name, {})
                by_method[method] = (declared_view.operation, declared_view.view)
    described = []
    for route in registry.getUtility(IRoutesMapper).get_routes():
        if not route.name.startswith("api.moodle.") or route.name in PUBLIC_ROUTES:
            continue
        operations = declared.get(route.name)
        if not operations:
            raise LookupError(f"route {route.name} has no operation: declare it with api_view")
        for method, (operation, view) in sorted(operations.items()):
            described.append(Described(route.name, route.pattern, method, operation, view))
    return tuple(described)


@functools.cache
def _document(described: tuple[Described, ...], choices: Choices) -> dict[str, Any]:
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="lms_api",
        version=version("lms_api"),
        openapi_version="3.1.0",
        plugins=[plugin],
        info={"description": "A safe REST gateway in front of Moodle's web services. Answers are envelopes."},
    )
    plugin.converter.add_attribute_function(_fields_own_schema(choices))  # type: ignore[union-attr]
    spec.components.security_scheme(
        BEARER, {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": _scopes_text()}
    )
    for name, scheme in OWN_CREDENTIALS.items():
        spec.components.security_scheme(name, scheme)
    for name, (description, kind) in HEADERS.items():
        spec.components.header(name, {"description": description, "schema": {"type": kind}})
    spec.components.schema("Error", _error_envelope())
    by_path: dict[str, dict[str, dict[str, Any]]] = {}
    for each in described:
        tag = each.pattern.split("/")[3]  # /api/moodle/<tag>/...
        headers = SUCCESS_HEADERS.get((each.route_name, each.method), ())
        write = each.method not in READ_METHODS and each.operation.takes_idempotency_key
        operation = _operation(each.operation, each.view, tag, write=write, headers=headers)
        by_path.setdefault(each.pattern, {})[each.method.lower()] = operation
    for pattern, operations in by_path.items():
        spec.path(path=pattern, operations=operations)
    return spec.to_dict()


def _operation(
    operation: Operation, view: Callable[..., Any], tag: str, *, write: bool, headers: tuple[str, ...]
) -> dict[str, Any]:
    doc = inspect.getdoc(view)
    if not doc:
        raise LookupError(f"{view.__qualname__} has no docstring: it is the operation's summary")
    summary, _, description = doc.partition("\n")
    scope = f"Scope: `{operation.scope.value}` (or `admin`)." if operation.credentials is None else ""
    parameters: list[dict[str, Any]] = []
    if operation.path is not None:
        parameters.append({"in": "path", "schema": operation.path})
    if operation.query is not None:
        parameters.append({"in": "query", "schema": operation.query})
    if write:
        parameters.append(dict(IDEMPOTENCY_KEY_PARAMETER))
    if operation.accepts_async:
        parameters.append(dict(PREFER_PARAMETER))
    result: dict[str, Any] = {
        "operationId": view.__name__,
        "summary": summary,
        "description": "\n\n".join(filter(None, (description.strip(), scope))),
        "tags": [tag],
        "security": [
            {BEARER: [operation.scope.value]} if operation.credentials is None else {operation.credentials: []}
        ],
        "parameters": parameters,
        "responses": _responses(operation, write, headers),
    }
    if operation.body is not None:
        result["requestBody"] = {"required": True, "content": {"application/json": {"schema": operation.body}}}
    if operation.form is not None:
        result["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": operation.form}}}
    if operation.own_body is not None:
        forms = ("application/x-www-form-urlencoded", "application/json")
        result["requestBody"] = {"required": True, "content": {kind: {"schema": operation.own_body} for kind in forms}}
    return result


def _responses(operation: Operation, write: bool, own_headers: tuple[str, ...]) -> dict[str, Any]:
    headers = ["X-Request-ID", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
    # An error answer kept for a key is replayed with it too, as the key's description says.
    success_headers = (
        headers
        + (["Cache-Status"] if operation.cached else [])
        + ([REPLAYED_HEADER] if write else [])
        + list(own_headers)
    )
    responses: dict[str, Any] = {
        str(operation.status): {
            "description": "The answer, in the success envelope.",
            "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in success_headers},
            "content": {"application/json": {"schema": _success_envelope(operation.answers)}},
        }
    }
    if operation.event_stream:
        responses[str(operation.status)] = {
            "description": "Server-sent events (`id`, `event`: the type, `data`: this JSON object), and a comment "
            "line while idle.",
            "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in headers},
            "content": {"text/event-stream": {"schema": operation.answers}},
        }
    if operation.accepts_async:
        job_headers = [*headers, "Location", PREFERENCE_APPLIED_HEADER, REPLAYED_HEADER]
        responses["202"] = {
            "description": "Run as a background job (`Prefer: respond-async`): the job, queued; `Location` names it.",
            "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in job_headers},
            "content": {"application/json": {"schema": _success_envelope(JobSchema())}},
        }
    codes = [*EVERY_ROUTE, *MOODLE_TROUBLE, *operation.errors]
    if operation.accepts_async:
        codes += JOB_ROUTE_ERRORS
    if operation.form is None:  # any body on any other route, a GET's included, is held to MAX_JSON_BODY_KB
        codes.append(ErrorCode.BODY_TOO_LARGE)
    if operation.body is not None:
        codes += JSON_BODY
    if write:
        codes += IDEMPOTENT_WRITE
        if operation.settled_by is None and not operation.resend_when_unknown:  # else an abandoned key is taken over
            codes.append(ErrorCode.IDEMPOTENCY_ABANDONED)
    codes += [code for code in ErrorCode if code.from_moodle]
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys(codes):
        for status in code.statuses:
            by_status.setdefault(status, []).append(code)
    for status, listed in sorted(by_status.items()):
        lines = [f"- `{code.value}`: {code.meaning}{_headers_note(code)}" for code in listed]
        if status == UNKNOWN_MOODLE_ERROR_STATUS:
            lines.append("- any other Moodle errorcode, passed on as Moodle names it")
        retry_after = status in (429, 503) or ErrorCode.IDEMPOTENCY_IN_PROGRESS in listed
        error_headers = headers + (["Retry-After"] if retry_after else [])
        responses[str(status)] = {
            "description": "\n".join(lines),
            "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in error_headers},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def _headers_note(code: ErrorCode) -> str:
    """What a code's line adds when its answer may lack headers its status lists (none is required)."""
    return WITHOUT_RATE_LIMIT_HEADERS if code in REFUSED_BEFORE_THE_BUDGET else ""


def _success_envelope(answers: Schema) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ok", "data"],
        "properties": {"ok": {"type": "boolean", "const": True}, "data": answers},
    }


def _error_envelope() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["ok", "error"],
        "properties": {
            "ok": {"type": "boolean", "const": False},
            "error": {
                "type": "object",
                "required": ["code", "message", "details", "request_id"],
                "properties": {
                    "code": {"type": "string", "description": "One of the codes listed for the status, or Moodle's"},
                    "message": {"type": "string"},
                    "details": {"type": "object", "description": "What the code's row says it holds"},
                    "request_id": {"type": "string"},
                },
            },
        },
    }


def _fields_own_schema(choices: Choices) -> Callable[..., dict[str, Any]]:
    """What a field of the gateway's own says of itself, beyond its marshmallow base, with the settings' choices."""

    def describe(self: FieldConverterMixin, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
        return field.json_schema(choices) if isinstance(field, StatesJsonSchema) else {}

    return describe


def _schema_name(schema: Schema | type[Schema]) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__name__.removesuffix("Schema") or cls.__name__


def _scopes_text() -> str:
    listed = ", ".join(f"`{scope.value}`" for scope in Scope)
    return (
        f"A JWT whose `scope` claim (scope names separated by ASCII spaces) holds the operation's scope: {listed}. "
        "`admin` implies every scope; `cache:refresh` opens no route: with it, `Cache-Control: no-cache` on a cached "
        "read reaches Moodle."
    )


def openapi_document(request: Request) -> Response:
    # Written once at start-up: the document does not change while the process runs.
    return Response(body=request.registry.openapi_json, content_type="application/json", charset="utf-8")


def includeme(config: Configurator) -> None:
    config.add_route("api.moodle.openapi", DOCUMENT_PATH)
    config.add_view(
        openapi_document, route_name="api.moodle.openapi", request_method="GET", permission=NO_PERMISSION_REQUIRED
    )

    def build() -> None:
        config.registry.openapi_json = dumps(build_document(config.registry)).encode()

    config.action(None, build, order=20)  # after the views, and after the routes' methods are known
