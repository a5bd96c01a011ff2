"""How Moodle's failures become gateway errors: one table keyed on ``errorcode``, never on the message."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lms_api.errors import ApiError

# Moodle sends no Retry-After with a maintenance error in a 200 body; this is what the caller is told.
DEFAULT_RETRY_AFTER_S = 30

_STATUS_BY_ERRORCODE = {
    **dict.fromkeys(("invalidparameter", "errorinvalidparam", "missingparam", "codingerror"), 400),
    **dict.fromkeys(
        (
            "accessexception",
            "nopermissions",
            "accessdenied",
            "requireloginerror",
            "restrictedcontextexception",
            "wsusercannotassign",
        ),
        403,
    ),
    **dict.fromkeys(("invalidrecord", "invalidrecordunknown", "invaliduser", "invalidcourseid", "filenotfound"), 404),
    **dict.fromkeys(("shortnametaken", "courseidnumbertaken", "filenameexist"), 409),
    **dict.fromkeys(("sitemaintenance", "upgraderunning"), 503),
    # The gateway's own Moodle credential was refused: an operator's problem, not the caller's (401 is theirs).
    "invalidtoken": 502,
}
_FORBIDDEN_PREFIX = "wsaccessuser"

CREDENTIAL_REFUSED_MESSAGE = (
    "Moodle refused the gateway's web-service token; an operator should check MOODLE_TOKEN "
    "and that the token's service is enabled"
)


class MoodleError(ApiError):
    """Moodle answered with an error, or could not be reached; ``status`` is what the caller gets."""


def status_for_errorcode(errorcode: str) -> int:
    if errorcode in _STATUS_BY_ERRORCODE:
        return _STATUS_BY_ERRORCODE[errorcode]
    if errorcode.startswith(_FORBIDDEN_PREFIX):
        return 403
    return 500


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def error_from_moodle(
    body: Mapping[str, Any],
    function: str,
    secrets: Iterable[str],
    retry_after_s: int | None = None,
) -> MoodleError:
    """Build the gateway error for Moodle's ``{"exception", "errorcode", "message"}`` body.

    ``debuginfo`` is never passed on: in debug mode it echoes the values that were sent.
    """
    errorcode = str(body.get("errorcode") or "moodleexception")
    status = status_for_errorcode(errorcode)
    if errorcode == "invalidtoken":
        message = CREDENTIAL_REFUSED_MESSAGE
    else:
        message = redact(str(body.get("message") or "Moodle reported an error"), secrets)
    headers = {}
    if status == 503:
        headers["Retry-After"] = str(retry_after_s or DEFAULT_RETRY_AFTER_S)
    return MoodleError(status, errorcode, message, {"function": function}, headers)


def function_not_available(function: str) -> MoodleError:
    return MoodleError(
        501,
        "functionnotavailable",
        f"The Moodle web-service function {function} is not available to the gateway's token. A Moodle "
        "administrator can add it under Site administration > Server > Web services > External services > "
        "(the token's service) > Functions.",
        {"function": function},
    )
