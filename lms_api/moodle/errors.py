"""How Moodle's failures become gateway errors: one table keyed on ``errorcode``, never on the message."""

from __future__ import annotations

import re
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
_ERRORCODE = re.compile(r"[a-z][a-z0-9_]{0,63}")

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


def retry_after_header(seconds: int | None) -> dict[str, str]:
    return {"Retry-After": str(DEFAULT_RETRY_AFTER_S if seconds is None else seconds)}


def error_from_moodle(
    body: Mapping[str, Any],
    function: str,
    secrets: Iterable[str],
    retry_after_s: int | None = None,
) -> MoodleError:
    """Build the gateway error for Moodle's ``{"exception", "errorcode", "message"}`` body.

    ``debuginfo`` is never passed on, not even where debug mode repeats it inside ``message``: it echoes the
    values that were sent. An errorcode that is not an identifier (Moodle puts the password policy's HTML
    there) becomes ``moodleexception``.
    """
    errorcode = str(body.get("errorcode") or "")
    if not _ERRORCODE.fullmatch(errorcode):
        errorcode = "moodleexception"
    status = status_for_errorcode(errorcode)
    if errorcode == "invalidtoken":
        message = CREDENTIAL_REFUSED_MESSAGE
    else:
        message = _without_debuginfo(str(body.get("message") or ""), body.get("debuginfo"))
        message = redact(message, secrets) or "Moodle reported an error"
    headers = retry_after_header(retry_after_s) if status == 503 else {}
    return MoodleError(status, errorcode, message, {"function": function}, headers)


def _without_debuginfo(message: str, debuginfo: Any) -> str:
    suffix = f" ({debuginfo})" if debuginfo else ""
    if suffix and message.endswith(suffix):
        return message[: -len(suffix)]
    return message


def function_not_available(function: str) -> MoodleError:
    return MoodleError(
        501,
        "functionnotavailable",
        f"The Moodle web-service function {function} is not available to the gateway's token. A Moodle "
        "administrator can add it under Site administration > Server > Web services > External services > "
        "(the token's service) > Functions.",
        {"function": function},
    )
