"""Files: upload to the token user's draft area through upload.php, then attach a draft item to a course."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from lms_api.drafts import DraftOwners, check_owner
from lms_api.errors import ApiError, ErrorCode, moodle_code, upload_too_large
from lms_api.moodle.client import FileUpload, Moodle
from lms_api.moodle.errors import (
    MoodleError,
    MoodleRecord,
    function_not_available,
    is_moodle_code,
    status_for_errorcode,
)
from lms_api.moodle.functions import MoodleFunction
from lms_api.settings import MIB

SYNC_SERVICE_PLUGIN = "https://github.com/lectureStudio/moodle-local_sync_service"
MAX_ID_DIGITS = 19  # Moodle's ids are BIGINT: 2**63 - 1 has 19 digits


class Uploaded(TypedDict):
    itemid: int  # the draft item every file went into
    files: list[MoodleRecord]


class Attached(TypedDict):
    cmid: int
    courseid: int
    section: int
    name: str
    visible: bool


def upload(
    moodle: Moodle, files: Sequence[FileUpload], itemid: int, *, max_mb: int, owners: DraftOwners, sub: str
) -> Uploaded:
    """Upload ``files`` into one draft item, a new one (``itemid`` 0) or one the caller ``sub`` uploaded before; any
    per-file refusal is an error naming what was stored anyway.

    Before anything is sent, the files together are held to ``max_mb`` (MOODLE_MAX_UPLOAD_MB) and a given item to
    its owner. ``owners`` learns the draft item's owner as soon as Moodle has stored a file in it, before any refusal
    is raised: the files stored stay stored, and their caller may still attach them.
    """
    _check_sizes(files, max_mb)
    if itemid:
        check_owner(owners, itemid, sub)
    entries = moodle.upload(files, itemid)
    refused = [entry for entry in entries if "errortype" in entry]
    stored = [entry for entry in entries if "errortype" not in entry]
    draft_itemid = _draft_item(stored)
    if draft_itemid is not None:
        owners.remember(draft_itemid, sub)
    if refused:
        raise _refused_file(moodle, refused[0], stored)
    if len(stored) != len(files):
        raise MoodleError(
            ErrorCode.BAD_RESPONSE,
            f"Moodle's upload.php stored {len(stored)} of {len(files)} files",
            {"function": MoodleFunction.UPLOAD, "stored": [entry.get("filename") for entry in stored]},
        )
    if draft_itemid is None:
        raise MoodleError(
            ErrorCode.BAD_RESPONSE, "Moodle's upload.php named no draft item", {"function": MoodleFunction.UPLOAD}
        )
    return {"itemid": draft_itemid, "files": stored}


def _check_sizes(files: Sequence[FileUpload], max_mb: int) -> None:
    """413 when the files together exceed MOODLE_MAX_UPLOAD_MB."""
    total = 0
    for upload in files:
        upload.stream.seek(0, 2)
        total += upload.stream.tell()
    if total > max_mb * MIB:
        raise upload_too_large(max_mb)


def _draft_item(stored: list[MoodleRecord]) -> int | None:
    """The draft item Moodle names for the files it stored, if it names one."""
    itemid = stored[0].get("itemid") if stored else None
    return itemid if isinstance(itemid, int) and not isinstance(itemid, bool) else None


def _refused_file(moodle: Moodle, entry: dict[str, Any], stored: list[dict[str, Any]]) -> ApiError:
    # The entry is Moodle's internal record: its filepath is a temporary path on the Moodle server.
    errortype, filename = moodle.clean(str(entry.get("errortype"))), moodle.clean(str(entry.get("filename")))
    messages = {
        ErrorCode.FILE_OVERSIZED: f"{filename} is larger than the Moodle site's maximum upload size",
        ErrorCode.FILENAME_EXIST: f"A file named {filename} is already in this draft item",
    }
    is_code = is_moodle_code(errortype, moodle.clean)  # else not Moodle's word, and not passed on
    code = moodle_code(errortype) or ErrorCode.UPLOAD_REFUSED
    if code not in messages:
        code = ErrorCode.UPLOAD_REFUSED
    details: dict[str, Any] = {"function": MoodleFunction.UPLOAD, "filename": filename}
    if stored:
        details |= {"itemid": stored[0].get("itemid"), "stored": [item.get("filename") for item in stored]}
    refused = f"Moodle refused {filename}" + (f" ({errortype})" if is_code else "")
    return MoodleError(code, messages.get(code, refused), details, status=status_for_errorcode(errortype))


def attach(moodle: Moodle, fields: Mapping[str, Any], *, owners: DraftOwners, sub: str) -> Attached:
    """Create a file resource in a course from a draft item the caller ``sub`` uploaded, with the sync_service
    plugin's function (or the one MOODLE_ATTACH_FUNCTION names)."""
    check_owner(owners, fields["draftitemid"], sub)
    params = {
        "courseid": fields["courseid"],
        "sectionnum": fields["section"],
        "itemid": fields["draftitemid"],
        "displayname": fields["name"],
        "visible": "true" if fields["visible"] else "false",  # the plugin hides the module only for 'false'
    }
    try:
        answer = moodle.call(MoodleFunction.ATTACH_FILE, params)
    except MoodleError as error:
        if error.code == ErrorCode.FUNCTION_NOT_AVAILABLE:
            raise _attach_function_missing(str(error.details["function"])) from None
        if error.code in (ErrorCode.INVALID_RECORD_UNKNOWN, ErrorCode.INVALID_RECORD):
            # Also what Moodle says when the plugin was removed since the function list was read.
            moodle.forget_functions()
        raise
    cmid = _module_id(answer.get("id"))
    if cmid is None:
        # The site may call the function by another name (MOODLE_ATTACH_FUNCTION), which only the client knows.
        raise MoodleError(
            ErrorCode.BAD_RESPONSE,
            "The attach function (MOODLE_ATTACH_FUNCTION) did not answer a course module id",
            {"setting": "MOODLE_ATTACH_FUNCTION"},
        )
    return {
        "cmid": cmid,
        "courseid": fields["courseid"],
        "section": fields["section"],
        "name": fields["name"],
        "visible": fields["visible"],
    }


def _module_id(value: object) -> int | None:
    """The course module id in the attach function's answer: an integer, or one written in ASCII digits, as the
    plugin answers it; anything else is no id. ``str.isdigit`` alone takes "²", which ``int`` refuses, and digits of
    other scripts, which no Moodle writes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_ID_DIGITS:
        return int(value)
    return None


def _attach_function_missing(name: str) -> MoodleError:
    """501 naming the attach function as the site calls it (``name``), and how to get it."""
    remedy = (
        f"Moodle core has no web-service function that creates a file resource: install the local_sync_service "
        f"plugin ({SYNC_SERVICE_PLUGIN}), which provides it, or set MOODLE_ATTACH_FUNCTION to a function "
        "with the same parameters. "
        if name == MoodleFunction.ATTACH_FILE
        else "It is set by MOODLE_ATTACH_FUNCTION. "
    )
    return function_not_available(name, remedy)
