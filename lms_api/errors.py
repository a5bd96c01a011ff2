"""Every error the gateway answers: one table of codes, the one error type, and the envelope it is rendered in.

Views, services, tweens and exception views all raise or render through here; README's error catalogue is printed
from :class:`ErrorCode` (``scripts/readme_tables.py``), so the documentation cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any


class Origin(StrEnum):
    """Who names a code: the gateway, or Moodle (an ``errorcode`` passed on as Moodle sent it)."""

    GATEWAY = "gateway"
    MOODLE = "moodle"


class ErrorCode(StrEnum):
    """The ``code`` of an error answer, with the HTTP status it carries and what it means.

    The first group is the gateway's own; the second is Moodle's ``errorcode`` values the gateway knows, each row
    marked ``Origin.MOODLE``, passed on as they are (Moodle's message is translated, its code is not). Any other
    Moodle errorcode is passed on as a 502.
    """

    status: int
    meaning: str
    origin: Origin

    def __new__(cls, value: str, status: int, meaning: str, origin: Origin = Origin.GATEWAY) -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.meaning = meaning
        member.origin = origin
        return member

    # -- the gateway's own -------------------------------------------------------------------------------------------
    VALIDATION_ERROR = (
        "validationerror",
        400,
        "input refused by the route's schema; `details.fields` maps each field to its messages (at most 20; "
        "`details.more_fields` counts the rest)",
    )
    INVALID_JSON = (
        "invalidjson",
        400,
        "a body that is not a JSON object, not UTF-8, not strict JSON (`NaN`, a repeated key, a lone surrogate) or "
        "nested deeper than 32 levels, or a `Content-Type` whose parameters cannot be read; the message gives the line "
        "and column",
    )
    INVALID_ENCODING = "invalidencoding", 400, "a path or query string that is not UTF-8 once percent-decoded"
    INVALID_MULTIPART = (
        "invalidmultipart",
        400,
        "an upload body that cannot be read: a `Content-Type` without a boundary, with parameters that cannot be read "
        "or given twice, or a charset other than UTF-8; parts that do not follow the boundary, no closing boundary "
        "(truncated), more than 64 parts or 20 files, or a part header over 4 lines or 4 KiB a line",
    )
    INVALID_USERS = (
        "invalidusers",
        400,
        "users Moodle would refuse, found before anything is written: `details.users` lists each one's `index`, "
        "`username` and `reasons` (`field`, `code`, `message`); 409 when every reason is a username or email "
        "already taken on the site. Nothing was written, unless `details.created` says what an earlier call created",
    )
    INVALID_IDEMPOTENCY_KEY = (
        "invalididempotencykey",
        400,
        "an `Idempotency-Key` that is not 1 to 255 printable ASCII characters, or given twice",
    )
    UNAUTHENTICATED = "unauthenticated", 401, "no `Authorization: Bearer` token (see Authentication)"
    INVALID_TOKEN = "invalid_token", 401, "the bearer token was refused; the message says why (see Authentication)"
    FORBIDDEN = "forbidden", 403, "the token lacks the route's scope (`details.required_scope`)"
    CORS_REFUSED = "corsrefused", 403, "a CORS preflight from an origin not in `CORS_ALLOWED_ORIGINS`"
    NOT_FOUND = "notfound", 404, "no such route"
    COURSE_NOT_FOUND = "coursenotfound", 404, "a course in the path or body does not exist; `details.missing_courses`"
    USER_NOT_FOUND = "usernotfound", 404, "a user in the body or query does not exist; `details.missing_users`"
    CATEGORY_NOT_FOUND = (
        "categorynotfound",
        404,
        "the category of a new or moved course does not exist; `details.missing_categories`",
    )
    DRAFT_NOT_FOUND = (
        "draftnotfound",
        404,
        "the draft item was not uploaded through the gateway by this caller (`sub`), or has expired",
    )
    JOB_NOT_FOUND = (
        "jobnotfound",
        404,
        "no background job of this id is kept for this caller: never submitted, submitted by another caller (only "
        "`admin` reads others' jobs), expired (`JOBS_TTL_S`) or lost when its process stopped",
    )
    METHOD_NOT_ALLOWED = "methodnotallowed", 405, "the route exists, not for this method; `Allow` lists the methods"
    IDEMPOTENCY_IN_PROGRESS = (
        "idempotencyinprogress",
        409,
        "a request with this `Idempotency-Key` is still being answered; `Retry-After` says when to ask again",
    )
    IDEMPOTENCY_ABANDONED = (
        "idempotencyabandoned",
        409,
        "the first request with this `Idempotency-Key` stopped before it answered (its replica stopped, or it ran "
        "past `IDEMPOTENCY_LOCK_S`), on a route that cannot look in Moodle for what it did: check, then send with a "
        "new key",
    )
    JOB_CANCELLED = (
        "jobcancelled",
        409,
        "a background job cancelled while running, between two Moodle calls: what was applied stays, and the "
        "details say it as a failed call's would (`applied`, `created` or `updated`; `not_attempted`; `outcome: "
        "partial` when something was applied)",
    )
    JOB_LOST = (
        "joblost",
        500,
        "the worker running a background job stopped mid-job (its entry in RQ's started-job registry lapsed): never "
        "resent, the details say what was `applied` and `not_applied`, and which items' call was in flight (`unknown`, "
        "`outcome: unknown`)",
    )
    JOB_FINISHED = "jobfinished", 409, "the background job has finished already: there is nothing left to cancel"
    USERS_NOT_UPDATED = (
        "usersnotupdated",
        409,
        "`PATCH /users`: Moodle refused some users and updated the others: `details.updated` (ids) and "
        "`details.failed` (`id`, `code`, `message`); 400 when no failure is a conflict with the site's state",
    )
    FILE_TOO_LARGE = (
        "filetoolarge",
        413,
        "the files of an upload exceed `MOODLE_MAX_UPLOAD_MB`, or its body is declared over it and 64 KiB of "
        "multipart framing (refused before the token is checked); nothing is sent",
    )
    BODY_TOO_LARGE = (
        "bodytoolarge",
        413,
        "a body declared (or read) over `MAX_JSON_BODY_KB` on any API route but the upload, or over 64 KiB on the "
        "webhook; refused before the token or the webhook's secret is checked",
    )
    UNSUPPORTED_MEDIA_TYPE = (
        "unsupportedmediatype",
        415,
        "an upload that is not `multipart/form-data`, a JSON route's body that is not `application/json`, or a webhook "
        "delivery that is neither `application/x-www-form-urlencoded` nor `application/json`",
    )
    IDEMPOTENCY_KEY_REUSED = (
        "idempotencykeyreused",
        422,
        "this `Idempotency-Key` was used by the same caller on this route for another request (method, path or body)",
    )
    IDEMPOTENCY_KEY_REQUIRED = (
        "idempotencykeyrequired",
        428,
        "`IDEMPOTENCY_REQUIRED` is on and the write carries no `Idempotency-Key`",
    )
    RATE_LIMITED = "ratelimited", 429, "over the caller's budget; `Retry-After` says when to retry (see Security)"
    INTERNAL_ERROR = "internalerror", 500, "a gateway bug; the request id finds its log lines"
    FUNCTION_NOT_AVAILABLE = (
        "functionnotavailable",
        501,
        "the Moodle function is not in the token's service; the message says where an admin adds it. Moodle is "
        "not called",
    )
    MOODLE_EXCEPTION = (
        "moodleexception",
        502,
        "Moodle failed with a PHP error that has no errorcode (`Error`, `TypeError`, ...); the message names the "
        "PHP class and the function, server paths removed",
    )
    MOODLE_ERROR = (
        "moodleerror",
        502,
        "Moodle answered an error whose code is not of Moodle's code syntax (`[a-z0-9_]{1,64}`); its text is left out",
    )
    MOODLE_WARNING = "moodlewarning", 502, "Moodle refused an update with a warning that has no code"
    UPLOAD_REFUSED = "uploadrefused", 502, "upload.php refused a file for a reason the gateway does not know"
    BAD_RESPONSE = (
        "badresponse",
        502,
        "Moodle answered something that is not its JSON (an HTML error page, a proxy page, a redirect, another shape)",
    )
    BAD_GATEWAY = "badgateway", 502, "Moodle, or a proxy in front of it, answered HTTP 502"
    GATEWAY_UNREACHABLE = (
        "gatewayunreachable",
        502,
        "written by nginx (`deploy/nginx/`), not the gateway: nginx could not reach the gateway, or had no answer "
        'within its `proxy_read_timeout`; for a write, `details.outcome: "unknown"` (it may have been applied)',
    )
    MOODLE_UNAVAILABLE = (
        "moodleunavailable",
        503,
        "Moodle could not be reached (connection refused, name not resolved, TLS failed), reset the connection or "
        "answered HTTP 503, or the circuit breaker is open after repeated failures (`details.breaker`); with "
        "`MOODLE_DEBUG`, `details.cause` says which; `Retry-After` says when to retry (504 for a write whose outcome "
        "is unknown)",
    )
    IDEMPOTENCY_UNAVAILABLE = (
        "idempotencyunavailable",
        503,
        "the store of `Idempotency-Key`s (Redis) cannot be reached, so a key cannot be honoured; nothing was done; "
        "`Retry-After` says when to retry",
    )
    NOT_READY = (
        "notready",
        503,
        "`/readyz` only: the breaker is open or the site info is not known yet; `details` says which",
    )
    MOODLE_BUSY = (
        "moodlebusy",
        503,
        "`MOODLE_MAX_CONCURRENCY` calls to Moodle are in flight and no slot freed within `MOODLE_QUEUE_TIMEOUT_MS`; "
        "nothing was sent; `Retry-After` says when to retry",
    )
    JOBS_UNAVAILABLE = (
        "jobsunavailable",
        503,
        "the store of background jobs (Redis, with `JOBS_ENGINE=rq`) cannot be reached: no job was queued, read or "
        "cancelled; `Retry-After` says when to retry",
    )
    JOBS_STOPPING = (
        "jobsstopping",
        503,
        "the gateway is stopping: it queues no more background jobs; nothing was queued; retry on another replica or "
        "once it has restarted",
    )
    JOBS_FULL = (
        "jobsfull",
        503,
        "as many background jobs as the gateway keeps (10,000) are queued or running (on RQ: queued); nothing was "
        "queued; `Retry-After` says when to ask again",
    )
    EVENTS_UNPUBLISHED = (
        "eventsunpublished",
        503,
        "the webhook: Moodle's event was taken and its cache entries dropped (`details.dropped`), but nchan or the "
        "events' Redis did not take the event for the streams; it is not kept as done, so the sender's retry "
        "publishes it; `Retry-After`",
    )
    EVENTS_FULL = (
        "eventsfull",
        503,
        "the gateway serves `EVENTS_MAX_STREAMS` event streams already; `Retry-After` says when to ask for a new "
        "ticket and try again",
    )
    MOODLE_TIMEOUT = "moodletimeout", 504, "no answer within `MOODLE_TIMEOUT_MS`"

    # -- Moodle's errorcodes, passed on ------------------------------------------------------------------------------
    INVALID_PARAMETER = "invalidparameter", 400, "Moodle refused a parameter (its message names none)", Origin.MOODLE
    ERROR_INVALID_PARAM = "errorinvalidparam", 400, "Moodle refused a parameter", Origin.MOODLE
    MISSING_PARAM = "missingparam", 400, "Moodle missed a required parameter", Origin.MOODLE
    CODING_ERROR = (
        "codingerror",
        400,
        "Moodle refused the call as a programming error (an unknown field name)",
        Origin.MOODLE,
    )
    END_DATE_BEFORE_START_DATE = "enddatebeforestartdate", 400, "the course ends before it starts", Origin.MOODLE
    NO_START_DATE_NO_END_DATE = (
        "nostartdatenoenddate",
        400,
        "the course has an end date but no start date",
        Origin.MOODLE,
    )
    GUESTS_ARE_NOT_ALLOWED = "guestsarenotallowed", 400, "the guest user cannot be enrolled", Origin.MOODLE
    NO_FILE = "nofile", 400, "upload.php received no file", Origin.MOODLE
    UPLOAD_ERROR_NO_FILE = "upload_error_no_file", 400, "upload.php received no file", Origin.MOODLE
    UPLOAD_ERROR_PARTIAL = "upload_error_partial", 400, "upload.php received part of a file", Origin.MOODLE
    ACCESS_EXCEPTION = (
        "accessexception",
        403,
        "the token's service does not allow this (e.g. file uploads)",
        Origin.MOODLE,
    )
    NO_PERMISSIONS = "nopermissions", 403, "the token user lacks a capability", Origin.MOODLE
    ACCESS_DENIED = "accessdenied", 403, "Moodle denied access", Origin.MOODLE
    REQUIRE_LOGIN_ERROR = (
        "requireloginerror",
        403,
        "the token user may not log in to that course or site",
        Origin.MOODLE,
    )
    RESTRICTED_CONTEXT_EXCEPTION = (
        "restrictedcontextexception",
        403,
        "the token is restricted to another context",
        Origin.MOODLE,
    )
    WS_USER_CANNOT_ASSIGN = "wsusercannotassign", 403, "the token user may not assign that role there", Origin.MOODLE
    WS_CANNOT_ENROL = "wscannotenrol", 403, "the token user may not enrol into that course", Origin.MOODLE
    ERROR_COURSE_CONTEXT_NOT_VALID = (
        "errorcoursecontextnotvalid",
        403,
        "the token user may not act in that course",
        Origin.MOODLE,
    )
    INVALID_RECORD = "invalidrecord", 404, "a record Moodle looked up does not exist (debug mode)", Origin.MOODLE
    INVALID_RECORD_UNKNOWN = "invalidrecordunknown", 404, "a record Moodle looked up does not exist", Origin.MOODLE
    INVALID_USER = "invaliduser", 404, "the user does not exist", Origin.MOODLE
    INVALID_COURSE_ID = "invalidcourseid", 404, "the course does not exist", Origin.MOODLE
    INVALID_COURSE = "invalidcourse", 404, "the course cannot be changed this way (the front page)", Origin.MOODLE
    FILE_NOT_FOUND = "filenotfound", 404, "the file or draft item does not exist", Origin.MOODLE
    ERROR_CAT_CONTEXT_NOT_VALID = (
        "errorcatcontextnotvalid",
        404,
        "the category does not exist or cannot be used",
        Origin.MOODLE,
    )
    SHORTNAME_TAKEN = "shortnametaken", 409, "the course short name is already used", Origin.MOODLE
    COURSE_IDNUMBER_TAKEN = "courseidnumbertaken", 409, "the course ID number is already used", Origin.MOODLE
    FILENAME_EXIST = "filenameexist", 409, "a file of that name is already in the draft item", Origin.MOODLE
    USER_DELETED = "userdeleted", 409, "the user has been deleted", Origin.MOODLE
    USER_NOT_CONFIRMED = "usernotconfirmed", 409, "the user has not confirmed the account", Origin.MOODLE
    WS_NO_INSTANCE = "wsnoinstance", 409, "the course has no enabled manual enrolment method", Origin.MOODLE
    FILE_OVERSIZED = "fileoversized", 413, "a file over the Moodle site's own upload limit", Origin.MOODLE
    USER_QUOTA_LIMIT = "userquotalimit", 413, "the token user's file quota is full", Origin.MOODLE
    UPLOAD_ERROR_INI_SIZE = (
        "upload_error_ini_size",
        413,
        "a file over PHP's upload limit on the Moodle server",
        Origin.MOODLE,
    )
    UPLOAD_ERROR_FORM_SIZE = "upload_error_form_size", 413, "a file over the form's upload limit", Origin.MOODLE
    MANUAL_PLUGIN_NOT_INSTALLED = (
        "manualpluginnotinstalled",
        501,
        "the manual enrolment plugin is not enabled",
        Origin.MOODLE,
    )
    INVALID_MOODLE_TOKEN = (
        "invalidtoken",
        502,
        "Moodle refused the **gateway's** token: an operator must check `MOODLE_TOKEN` (never a 401, which would log "
        "the browser user out)",
        Origin.MOODLE,
    )
    SITE_MAINTENANCE = (
        "sitemaintenance",
        503,
        "Moodle is in maintenance mode; `Retry-After` says when to retry",
        Origin.MOODLE,
    )
    UPGRADE_RUNNING = "upgraderunning", 503, "Moodle is being upgraded; `Retry-After` says when to retry", Origin.MOODLE

    @property
    def statuses(self) -> tuple[int, ...]:
        """Every status an answer with this code may carry: its row's, then those its meaning names besides."""
        return (self.status, *_OTHER_STATUSES.get(self.value, ()))

    @property
    def from_moodle(self) -> bool:
        """True for Moodle's own errorcodes, passed on as Moodle named them."""
        return self.origin is Origin.MOODLE


# The codes whose status depends on what was refused, as their meanings say: the OpenAPI document lists them under each.
_OTHER_STATUSES = {ErrorCode.INVALID_USERS.value: (409,), ErrorCode.USERS_NOT_UPDATED.value: (400,)}


def moodle_codes(codes: Iterable[ErrorCode]) -> dict[str, ErrorCode]:
    """The members among ``codes`` that are Moodle's errorcodes, by the code Moodle sends: each row says whose code
    it is, so neither the order of the table nor a gateway code Moodle happens to send decides anything."""
    return {code.value: code for code in codes if code.from_moodle}


MOODLE_CODES = moodle_codes(ErrorCode)
UNKNOWN_MOODLE_ERROR_STATUS = 502


def moodle_code(errorcode: str) -> ErrorCode | None:
    """The member for a Moodle ``errorcode`` (or an upload's ``errortype``), None for one the table does not know."""
    return MOODLE_CODES.get(errorcode)


class ApiError(Exception):
    """An error with a stable, machine-readable ``code`` and its HTTP ``status``.

    The status comes from the code's row in :class:`ErrorCode` unless given; a Moodle errorcode the table does not
    know is passed on as a 502. The exception views render it (tweens hand theirs over to them); nothing else builds
    error bodies.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        details: Mapping[str, Any] | None = None,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status if status is not None else status_of(code)
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def upload_too_large(max_mb: int) -> ApiError:
    """413 ``filetoolarge``: an upload's body, or its files together, exceed MOODLE_MAX_UPLOAD_MB (in MiB)."""
    return ApiError(
        ErrorCode.FILE_TOO_LARGE,
        f"Uploads are limited to {max_mb} MiB (MOODLE_MAX_UPLOAD_MB)",
        {"max_bytes": max_mb << 20},
    )


def status_of(code: ErrorCode | str) -> int:
    known = ErrorCode._value2member_map_.get(str(code))
    return known.status if isinstance(known, ErrorCode) else UNKNOWN_MOODLE_ERROR_STATUS


def error_body(error: ApiError, request_id: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {
            "code": str(error.code),
            "message": error.message,
            "details": error.details,
            "request_id": request_id,
        },
    }


def success_body(data: Any) -> dict[str, Any]:
    return {"ok": True, "data": data}


def success_json(data_json: str) -> str:
    """:func:`~lms_api.jsoncodec.dumps` of :func:`success_body`, around ``data`` serialised already."""
    return '{"ok":true,"data":' + data_json + "}"
