"""How Moodle's failures become gateway errors: one table keyed on ``errorcode``, never on the message."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lms_api.errors import UNKNOWN_MOODLE_ERROR_STATUS, ApiError, ErrorCode, moodle_code

# Moodle sends no Retry-After with a maintenance error in a 200 body; this is what the caller is told.
DEFAULT_RETRY_AFTER_S = 30

_FORBIDDEN_PREFIX = "wsaccessuser"
# The syntax of Moodle's own error and warning codes (language string ids). Anything else in an errorcode or a
# warningcode is not a code: Moodle has put the password policy's HTML there, and a plugin may put anything.
_MOODLE_CODE = re.compile(r"[a-z0-9_]{1,64}")
_PHP_CLASS = re.compile(r"\\?[A-Za-z_][A-Za-z0-9_]{0,63}(?:\\[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}")

CREDENTIAL_REFUSED_MESSAGE = (
    "Moodle refused the gateway's web-service token; an operator should check MOODLE_TOKEN "
    "and that the token's service is enabled"
)


# ``details.outcome`` of an error after a write that Moodle may or may not have applied: the caller must look before
# writing again. The client says it of a write whose answer it never got or did not read (MOODLE_MAX_ANSWER_MB).
OUTCOME_UNKNOWN = "unknown"
# ``details.outcome`` of an error after a write split into several Moodle calls, some applied and the failed one not:
# ``details`` says which parts were applied.
OUTCOME_PARTIAL = "partial"


class MoodleError(ApiError):
    """Moodle answered with an error, or could not be reached; ``status`` is what the caller gets."""


def status_for_errorcode(errorcode: str) -> int:
    """The status of a Moodle errorcode: its row in ErrorCode, 403 for ``wsaccessuser*``, else 502 (Moodle failed in
    a way the gateway has no better word for: ``dmlwriteexception``, ...)."""
    known = moodle_code(errorcode)
    if known is not None:
        return known.status
    return 403 if errorcode.startswith(_FORBIDDEN_PREFIX) else UNKNOWN_MOODLE_ERROR_STATUS


def code_of(errorcode: str) -> ErrorCode | str:
    """What a caller is told for a Moodle errorcode: its member of ErrorCode, or the code as Moodle sent it."""
    return moodle_code(errorcode) or errorcode


def is_moodle_code(value: object, clean: Callable[[str], str]) -> bool:
    """True when ``value`` may reach a caller as a ``code``: of Moodle's code syntax, and left as it is by ``clean``
    (a code holding the gateway's token, which a token's 32 hex digits would fit, is no code)."""
    return isinstance(value, str) and _MOODLE_CODE.fullmatch(value) is not None and clean(value) == value


def not_a_moodle_code(function: str, details: Mapping[str, Any] | None = None) -> MoodleError:
    """The error for an errorcode or warningcode that is not of Moodle's code syntax: neither it nor Moodle's text
    reaches the caller, since they are not Moodle's words (a password policy in HTML, a plugin's free text)."""
    return MoodleError(
        ErrorCode.MOODLE_ERROR,
        f"Moodle answered {function} with an error whose code is not a Moodle code; its text is left out",
        {"function": function, **(details or {})},
    )


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


# Server paths in Moodle's texts (PHP errors name the file that failed, upload errors the temp file): they tell a
# caller how the server is laid out, so they never leave the gateway. A path is taken out whole, with its separators
# as they were sent, raw or JSON-escaped (``\/``, ``\\``). Text around a slash that is not a path stays: "3/4",
# "A/B testing", dates, and URLs (``http://host/pluginfile.php/...``: the slashes there follow a host or a colon).
PATH_PLACEHOLDER = "[path]"
_NAME_CHARS = r"\w.~@+%$-"
# A path's last name never ends in a dot, so a sentence's full stop after it stays.
_SEGMENT = rf"(?:[{_NAME_CHARS}]*[\w~@+%$-]|\.\.?)"
_SLASH = r"\\{0,2}/"
_BACKSLASH_OR_SLASH = r"(?:\\{1,2}|/)"
# A Windows folder name may hold single spaces and brackets ("Program Files (x86)"); it is followed by a separator,
# so the words after the path ("on line 12") are never taken for part of it.
_FOLDER = r"[\w.~@+%$()-]+(?: [\w.~@+%$()-]+)*"
_SERVER_PATH = re.compile(
    "|".join(
        (
            # file: and phar: URLs point into the server's file system.
            r"(?i:\b(?:file|phar):)[^\s\"'<>()]*[^\s\"'<>().,;:]",
            # C:\moodle\lib\x.php, C:/moodle/lib/x.php; not after a letter, so "http://" is no drive.
            rf"(?<![\w\\/])[A-Za-z]:{_BACKSLASH_OR_SLASH}(?:{_FOLDER}{_BACKSLASH_OR_SLASH})*{_SEGMENT}",
            # \\server\share\x, raw or JSON-escaped; a PHP namespace (\core\user) has one leading backslash.
            rf"(?<![\w\\/])\\\\[\w.$-]+(?:\\{_FOLDER})*\\{_SEGMENT}",
            rf"(?<![\w\\/])\\\\\\\\[\w.$-]+(?:\\\\{_FOLDER})*\\\\{_SEGMENT}",
            # /var/www/moodle/lib/x.php: at least two names, and not after a name, a slash or a dot, which keeps
            # "3/4", "A/B", "../x", a URL's path and ".../pluginfile.php/..." as they are.
            rf"(?<![/\\{_NAME_CHARS}]){_SLASH}{_SEGMENT}(?:{_SLASH}{_SEGMENT})+",
        )
    )
)


def scrub_paths(text: str) -> str:
    """``text`` with every absolute server path (POSIX, Windows, UNC, file: URL) replaced by ``[path]``."""
    return _SERVER_PATH.sub(PATH_PLACEHOLDER, text)


def clean_text(text: str, secrets: Iterable[str]) -> str:
    """A Moodle text fit to pass on to a caller: without ``secrets`` and without server paths."""
    return scrub_paths(redact(text, secrets))


def retry_after_header(seconds: int | None) -> dict[str, str]:
    return {"Retry-After": str(DEFAULT_RETRY_AFTER_S if seconds is None else seconds)}


def is_moodle_error(body: Any) -> bool:
    """REST errors carry ``exception``; upload.php and the other AJAX scripts answer ``{"error", "errorcode"}``."""
    return isinstance(body, dict) and ("exception" in body or ("errorcode" in body and "error" in body))


def error_from_moodle(
    body: Mapping[str, Any],
    function: str,
    secrets: Iterable[str],
    retry_after_s: int | None = None,
) -> MoodleError:
    """Build the gateway error for Moodle's ``{"exception", "errorcode", "message"}`` body (or upload.php's
    ``{"error", "errorcode"}``).

    ``debuginfo`` is never passed on, not even where debug mode repeats it inside ``message``: it echoes the
    values that were sent. An errorcode that is not of Moodle's code syntax (Moodle puts the password policy's HTML
    there) becomes ``moodleerror``, without Moodle's text. A body without an errorcode is a PHP error
    (``TypeError``, ``Error``...) Moodle did not handle; its message says that Moodle failed, and where, before what
    PHP said.
    """
    errorcode = body.get("errorcode") or ""
    if errorcode and not is_moodle_code(errorcode, lambda text: redact(text, secrets)):
        return not_a_moodle_code(function)
    code = code_of(errorcode) if errorcode else ErrorCode.MOODLE_EXCEPTION
    status = code.status if isinstance(code, ErrorCode) else status_for_errorcode(code)
    if code is ErrorCode.INVALID_MOODLE_TOKEN:
        message = CREDENTIAL_REFUSED_MESSAGE
    else:
        text = body.get("message") if "exception" in body else body.get("error")
        message = clean_text(_without_debuginfo(str(text or ""), body.get("debuginfo")), secrets)
        if "exception" in body and not body.get("errorcode"):
            message = _internal_failure(body.get("exception"), function, message)
        message = message or "Moodle reported an error"
    headers = retry_after_header(retry_after_s) if status == 503 else {}
    return MoodleError(code, message, {"function": function}, status=status, headers=headers)


def _internal_failure(exception: Any, function: str, message: str) -> str:
    kind = f"PHP {exception}" if isinstance(exception, str) and _PHP_CLASS.fullmatch(exception) else "a PHP error"
    said = f": {message}" if message else ""
    return f"Moodle failed internally in {function} ({kind}){said}"


def _without_debuginfo(message: str, debuginfo: Any) -> str:
    suffix = f" ({debuginfo})" if debuginfo else ""
    if suffix and message.endswith(suffix):
        return message[: -len(suffix)]
    return message


def function_not_available(function: str, remedy: str = "") -> MoodleError:
    return MoodleError(
        ErrorCode.FUNCTION_NOT_AVAILABLE,
        f"The Moodle web-service function {function} is not available to the gateway's token. {remedy}A Moodle "
        "administrator can add it under Site administration > Server > Web services > External services > "
        "(the token's service) > Functions.",
        {"function": function},
    )


def unexpected_answer(function: str, *, wrote: bool | None = None) -> MoodleError:
    """A 502 for an answer of the wrong shape. Moodle answered, so a write ``wrote`` (by default: ``function`` is a
    ``MoodleFunction`` that writes) may well have been applied: its outcome is unknown."""
    details: dict[str, Any] = {"function": function}
    if wrote if wrote is not None else getattr(function, "writes", False):
        details["outcome"] = OUTCOME_UNKNOWN
    return MoodleError(ErrorCode.BAD_RESPONSE, f"Moodle's answer to {function} has an unexpected shape", details)


# One record as Moodle answers it (a course, a user, a notification): its fields are Moodle's, passed through the
# routes' output schemas, which keep only the documented ones.
MoodleRecord = dict[str, Any]


def expect_list(answer: Any, function: str, *, key: str | None = None) -> list[MoodleRecord]:
    """``answer`` if it is a list of objects (each with ``key`` when given); a 502 otherwise."""
    if not isinstance(answer, list) or not all(
        isinstance(item, dict) and (key is None or key in item) for item in answer
    ):
        raise unexpected_answer(function)
    return answer
