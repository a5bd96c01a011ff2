"""``/webservice/upload.php``: files into the token user's draft area, answered as Moodle's AJAX script does.

The multipart body is parsed with the standard library's ``email`` package, fed as it is read from the socket; only
each file's name and size are kept. Errors of the whole request use the AJAX shape
``{"error", "errorcode", "stacktrace", "debuginfo", "reproductionlink"}``; errors of a single file
(``fileoversized``, ``filenameexist``) are entries of the answered list, as in Moodle.
"""

from __future__ import annotations

import random
import secrets
import string
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesFeedParser
from io import BufferedIOBase
from typing import TYPE_CHECKING, Any

from moodle_sandbox.errors import MoodleException, moodle_exception, uploads_disabled
from moodle_sandbox.php import clean_alphanum, clean_file, clean_path, php_intval
from moodle_sandbox.phpform import PhpArray
from moodle_sandbox.records import DraftFile
from moodle_sandbox.seed import ADMIN_CONTEXT_ID

if TYPE_CHECKING:
    from moodle_sandbox.site import SandboxSite

UPLOAD_FUNCTION = "upload.php"  # the name upload calls are counted and faulted under
MAX_FILE_UPLOADS = 20  # PHP's max_file_uploads: the files after it are dropped
READ_CHUNK = 64 * 1024
UPLOAD_ERR_OK, UPLOAD_ERR_NO_FILE, ARRAY_UPLOAD = 0, 4, -1
# Where upload.php throws, for the stack trace of debug mode. Only invalidtoken's comes from a real site; the others
# are the lines of upload.php on Moodle's main branch.
_TRACES = {
    "invalidtoken": "* line 81 of /webservice/lib.php: core\\exception\\moodle_exception thrown\n"
    "* line 58 of /webservice/upload.php: call to webservice->authenticate_user()\n",
    "sitemaintenance": "* line 58 of /webservice/upload.php: call to webservice->authenticate_user()\n",
    "missingparam": "* line 56 of /webservice/upload.php: call to required_param()\n",
    "upload_error_no_file": "* line 84 of /webservice/upload.php: core\\exception\\moodle_exception thrown\n",
    "nofile": "* line 96 of /webservice/upload.php: core\\exception\\moodle_exception thrown\n",
    "storedfileproblem": "* line 165 of /webservice/upload.php: call to file_storage->create_file_from_pathname()\n",
}


@dataclass(frozen=True)
class UploadedFile:
    """One entry of PHP's ``$_FILES``: the file name as sent (path removed) and the size; the bytes are not kept."""

    name: str
    size: int
    error: int = UPLOAD_ERR_OK


def read_multipart(
    stream: BufferedIOBase, length: int, content_type: str
) -> tuple[list[tuple[str, str]], dict[str, UploadedFile]]:
    """Read ``length`` bytes of a ``multipart/form-data`` body into PHP's ``$_POST`` pairs and ``$_FILES``.

    As in PHP, a part with a ``filename`` is a file (an empty name is "no file"), a field name used twice keeps the
    last file, a name with brackets makes an array upload, and files past ``MAX_FILE_UPLOADS`` are dropped.
    """
    parser = BytesFeedParser()  # compat32 keeps header bytes as they came, for PHP's own parameter rules
    parser.feed(b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n")
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(READ_CHUNK, remaining))
        if not chunk:
            break
        parser.feed(chunk)
        remaining -= len(chunk)
    message = parser.close()
    fields: list[tuple[str, str]] = []
    files: dict[str, UploadedFile] = {}
    if not message.is_multipart():
        return fields, files
    for part in message.get_payload():
        if not isinstance(part, Message):
            continue
        disposition = _disposition(_raw_disposition(part))
        name, filename = disposition.get("name", ""), disposition.get("filename")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        if not name:
            continue
        if filename is None:
            fields.append((name, payload.decode("utf-8", "replace")))
            continue
        base, bracket, _ = name.partition("[")
        key = base if bracket else name
        if key not in files and len(files) >= MAX_FILE_UPLOADS:
            continue
        if bracket:
            files[key] = UploadedFile("", 0, ARRAY_UPLOAD)
        else:
            error = UPLOAD_ERR_OK if filename else UPLOAD_ERR_NO_FILE
            files[key] = UploadedFile(_basename(filename), len(payload), error)
    return fields, files


def _raw_disposition(part: Message) -> str:
    """The part's Content-Disposition as sent, with raw UTF-8 (as browsers and urllib3 send names) decoded."""
    for name, value in part.raw_items():
        if name.lower() == "content-disposition":
            return value.encode("ascii", "surrogateescape").decode("utf-8", "ignore")
    return ""


def _disposition(header: str) -> dict[str, str]:
    """``name`` and ``filename`` of a Content-Disposition, split and unquoted by PHP's rfc1867 rules.

    Unlike RFC 822, PHP drops a backslash only before the quote character, so Windows paths survive.
    """
    params: dict[str, str] = {}
    for pair in _split_outside_quotes(header.lstrip(), ";"):
        key, equals, value = pair.lstrip().partition("=")
        if equals and key.lower() in ("name", "filename"):
            params[key.lower()] = _unquote(value)
    return params


def _split_outside_quotes(text: str, stop: str) -> list[str]:
    pieces, current, quote, index = [], [], "", 0
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\" and text[index + 1 : index + 2] == quote:
                current.append(text[index : index + 2])
                index += 2
                continue
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == stop:
            pieces.append("".join(current))
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    value = value.lstrip()
    if value[:1] in ('"', "'"):
        quote = value[0]
        inner = value[1:-1] if len(value) > 1 and value.endswith(quote) else value[1:]
        return inner.replace("\\" + quote, quote)
    return value.split()[0] if value.split() else ""


def _basename(filename: str) -> str:
    """PHP keeps only the last part of a sent file name, after any ``/`` or ``\\``."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


def upload(site: SandboxSite, variables: PhpArray, files: dict[str, UploadedFile]) -> list[dict[str, Any]]:
    """Store ``files`` in the draft area ``itemid`` (0: a new one) under ``filepath``, as upload.php does.

    ``variables`` are ``$_GET`` and ``$_POST`` merged, POST winning. Raises ``MoodleException`` for a failure of the
    whole request; files stored before a failing one stay stored, as in Moodle.
    """
    filepath = clean_path(_text(variables.get("filepath", "/")))
    itemid = php_intval(_text(variables.get("itemid", "0")))
    if "token" not in variables:
        raise moodle_exception("missingparam", "A required parameter (token) was missing")
    token = clean_alphanum(_text(variables["token"]))
    # A real token is alphanumeric, so cleaning never changes it; the sandbox's own token is cleaned the same way.
    if not token or token != clean_alphanum(site.token):
        raise moodle_exception("invalidtoken", "Invalid token - token not found")
    if not site.upload_files:
        raise uploads_disabled()
    checked = [_check_file(site, uploaded) for uploaded in files.values()]
    with site.lock:
        drafts = site.state.drafts
        if itemid <= 0:  # file_get_unused_draft_itemid()
            itemid = random.randint(1, 999999999)
            while itemid in drafts:
                itemid = random.randint(1, 999999999)
        return [_store(site, itemid, filepath, entry) for entry in checked]


def _text(value: object) -> str:
    """A request variable as text; PHP's scalar param functions do not take arrays."""
    return value if isinstance(value, str) else ""


def _check_file(site: SandboxSite, uploaded: UploadedFile) -> dict[str, Any]:
    """The first pass of upload.php: PHP's upload errors stop the request, an oversized file is only reported."""
    if uploaded.error == UPLOAD_ERR_NO_FILE:
        raise moodle_exception("upload_error_no_file", "No file was uploaded.")
    if uploaded.error == ARRAY_UPLOAD:
        raise moodle_exception("nofile", "File not specified")
    # Moodle times its antivirus scan, a few microseconds when no scanner is on; the sandbox has none at all.
    entry: dict[str, Any] = {"avscantime": 0.0, "filename": clean_file(uploaded.name)}
    if site.max_bytes and uploaded.size > site.max_bytes:
        # Moodle's language pack has no 'maxbytes' error string, hence the brackets.
        return entry | {"errortype": "fileoversized", "error": "[[maxbytes]]"}
    # Like PHP's temporary upload file name; the sandbox writes no file there.
    tmp_name = "/tmp/php" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(6))  # noqa: S108
    return entry | {"filepath": tmp_name, "size": uploaded.size}


def _store(site: SandboxSite, itemid: int, filepath: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The second pass: a file record, or the entry itself with ``filenameexist`` when the name is taken."""
    if "errortype" in entry:
        return entry
    filename = entry["filename"]
    area = site.state.drafts.get(itemid, [])
    if any(draft.filepath == filepath and draft.filename == filename for draft in area):
        return entry | {"errortype": "filenameexist", "error": f"File name already exists: {filename}"}
    if not filepath.startswith("/") or not filepath.endswith("/"):
        raise _file_problem("Invalid file path")
    if filename == "":
        raise _file_problem("Invalid file name")
    site.state.drafts.setdefault(itemid, []).append(DraftFile(itemid, filepath, filename, entry["size"], site.now()))
    return {
        "component": "user",
        "contextid": ADMIN_CONTEXT_ID,
        "userid": str(site.admin.id),
        "filearea": "draft",
        "filename": filename,
        "filepath": filepath,
        "itemid": itemid,
        "license": "unknown",
        "author": site.admin.fullname,
        "source": _serialize_source(filename),
        "filesize": entry["size"],
    }


def _file_problem(detail: str) -> MoodleException:
    """``file_storage::create_file_from_pathname()`` refusing the record."""
    message = f"Unknown exception related to local files ({detail})"
    return MoodleException("file_exception", "storedfileproblem", message)


def _serialize_source(filename: str) -> str:
    """PHP's ``serialize((object) ['source' => $filename])``; string lengths are in bytes."""
    return f'O:8:"stdClass":1:{{s:6:"source";s:{len(filename.encode())}:"{filename}";}}'


def ajax_error(site: SandboxSite, error: MoodleException) -> dict[str, Any]:
    """``core_renderer_ajax::fatal_error()``: details only in debug mode (DEBUG_DEVELOPER)."""
    if not site.debug:
        return {
            "error": error.message,
            "errorcode": error.errorcode,
            "stacktrace": None,
            "debuginfo": None,
            "reproductionlink": None,
        }
    return {
        "error": error.message,
        "errorcode": error.errorcode,
        "stacktrace": _TRACES.get(error.errorcode),
        "debuginfo": f"{error.debuginfo or ''}\nError code: {error.errorcode}",
        "reproductionlink": f"{site.base_url}/",
    }
