"""A Moodle mocked with ``responses``: its answers, the errors urllib3 raises, and what was sent to it.

MoodleClient sends through a urllib3 pool; :class:`PoolAnsweredByResponses` stands in for it and hands each request
to ``responses`` as requests would have sent it, so that ``responses``' registry answers it (``add``, callbacks,
matchers, ``calls``) and an answer is read from a urllib3 response, as from Moodle.
"""

from __future__ import annotations

import http.client
import io
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses
from requests.adapters import HTTPAdapter
from urllib3 import BaseHTTPResponse, Timeout
from urllib3.exceptions import NewConnectionError, ProtocolError

from lms_api.errors import ApiError
from lms_api.moodle.client import MoodleError
from lms_api.moodle.functions import MoodleFunction
from tests.support.paths import GOLDEN_DIR

BASE_URL = "http://moodle.test"
URL = BASE_URL + "/webservice/rest/server.php"
TOKEN = "TOKEN-SECRET-123"
UPLOAD_URL = BASE_URL + "/webservice/upload.php"

SITE_INFO = MoodleFunction.SITE_INFO
READ_FN = MoodleFunction.GET_COURSES  # answers a list
WRITE_FN = MoodleFunction.CREATE_COURSES  # answers a list
KNOWN_FUNCTIONS = (
    READ_FN,
    WRITE_FN,
    MoodleFunction.UPDATE_COURSES,
    "core_user_create_users",  # a function the site offers and the gateway never calls
    MoodleFunction.ENROL_USERS,
    MoodleFunction.GET_UNREAD_COUNT,
)

# Raw bodies recorded from a real Moodle 5.0 (see tests/moodle_golden), copied as literals.
BAD_TOKEN_BODY = (
    '{"exception":"core\\\\exception\\\\moodle_exception","errorcode":"invalidtoken",'
    '"message":"Invalid token - token not found"}'
)
FUNCTION_NOT_IN_SERVICE_BODY = (
    '{"exception":"webservice_access_exception","errorcode":"accessexception","message":"Access control exception"}'
)
UNKNOWN_FUNCTION_BODY = (
    '{"exception":"dml_missing_record_exception","errorcode":"invalidrecordunknown",'
    '"message":"Can\'t find data record in database."}'
)
INVALID_PARAMETER_BODY = (
    '{"exception":"core\\\\exception\\\\invalid_parameter_exception","errorcode":"invalidparameter",'
    '"message":"Invalid parameter value detected"}'
)
# golden/debug_mode/error_duplicate_username.json: in debug mode Moodle appends debuginfo to the message.
DEBUG_DUPLICATE_USERNAME_BODY = (
    '{"exception":"core\\\\exception\\\\invalid_parameter_exception","errorcode":"invalidparameter",'
    '"message":"Invalid parameter value detected (Username already exists: student1)",'
    '"debuginfo":"Username already exists: student1"}'
)
HTML_PAGE = "<!DOCTYPE html><html><body><h1>Service Unavailable</h1></body></html>"


@dataclass(frozen=True)
class UploadFile:
    """A file as the multipart schema hands it over: what MoodleClient.upload reads of it, and nothing more."""

    filename: str
    stream: IO[bytes]
    content_type: str = "application/octet-stream"


class PoolAnsweredByResponses:
    """The urllib3 pool of a MoodleClient on ``base_url``, answered by ``responses`` (see the module)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._adapter = HTTPAdapter()

    def urlopen(self, method: str, url: str, *, body: Any, headers: dict[str, str], timeout: Timeout,
                **options: Any) -> BaseHTTPResponse:  # fmt: skip
        # The client reads the answer itself, and lets urllib3 neither retry nor follow a redirect.
        assert options == {"retries": False, "redirect": False, "preload_content": False}, options
        request = requests.Request(method, self._origin + url, data=body, headers=headers).prepare()
        # ``calls[n].request.req_kwargs["timeout"]`` is (connect, read), as requests was given them.
        sent = self._adapter.send(request, stream=True, timeout=(timeout.connect_timeout, timeout.read_timeout))
        return sent.raw


def refused() -> NewConnectionError:
    """What urllib3 raises when nothing listens: no byte of the request reached Moodle."""
    return NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")


def reset() -> ProtocolError:
    """What urllib3 raises when the connection drops after the request was sent."""
    return ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer"))


class _BrokenOff(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise http.client.IncompleteRead(b'{"id": ', 100)


def broken_off() -> io.BufferedReader:
    """An answer whose body breaks off after its headers, as a truncated chunked answer does."""
    return io.BufferedReader(_BrokenOff())


def form_of(request) -> list[tuple[str, str]]:
    body = request.body or ""
    if isinstance(body, bytes):
        body = body.decode()
    return parse_qsl(body, keep_blank_values=True)


def ws_function(name):
    """A responses matcher on the ``wsfunction`` form field."""

    def match(request):
        sent = dict(form_of(request)).get("wsfunction")
        return sent == name, f"wsfunction {sent!r} is not {name!r}"

    return match


def add(rsps, function, **kwargs):
    rsps.add(responses.POST, URL, match=[ws_function(function)], **kwargs)


def site_info_body(functions=KNOWN_FUNCTIONS):
    return {
        "sitename": "Moodle test",
        "userid": 2,
        "functions": [{"name": name, "version": "2025041400"} for name in functions],
    }


def prime(client, rsps, functions=KNOWN_FUNCTIONS):
    """Fill the function cache with one site-info call (it stays in ``rsps.calls``)."""
    add(rsps, SITE_INFO, json=site_info_body(functions))
    client.available_functions()


def sent_functions(rsps) -> list[str]:
    return [dict(form_of(call.request))["wsfunction"] for call in rsps.calls]


def raised(function, *args) -> MoodleError:
    with pytest.raises(MoodleError) as info:
        function(*args)
    return info.value


def assert_token_absent(error: MoodleError) -> None:
    for text in (str(error), repr(error), error.message, repr(error.details), repr(error.headers)):
        assert TOKEN not in text


def golden(name: str) -> str:
    return (GOLDEN_DIR / f"{name}.json").read_text()


def sent(rsps, index=-1) -> dict[str, str]:
    return dict(form_of(rsps.calls[index].request))


def api_raised(function, *args) -> ApiError:
    """What ``function`` raised: an ApiError of the gateway's own, or a MoodleError."""
    with pytest.raises(ApiError) as info:
        function(*args)
    return info.value


def ids_sent(rsps, index=-1) -> list[str]:
    return [value for key, value in form_of(rsps.calls[index].request) if key.startswith("options[ids]")]


SITE_COURSE = {"id": 1, "shortname": "site", "fullname": "Site", "categoryid": 0, "format": "site"}


def course(course_id, categoryid=1, **fields):
    return {"id": course_id, "shortname": f"C{course_id}", "fullname": f"Course {course_id}", "categoryid": categoryid,
            "format": "topics", **fields}  # fmt: skip


def users_answer(*user_ids):
    return [{"id": user_id, "fullname": f"User {user_id}"} for user_id in user_ids]


def by_field_answer(*found):
    return {"courses": list(found), "warnings": []}


# Every web-service function the route services call: the site info is always offered, and upload.php is none.
ROUTE_FUNCTIONS = tuple(
    function for function in MoodleFunction if function not in (MoodleFunction.SITE_INFO, MoodleFunction.UPLOAD)
)


def answering(**answers):
    """A ``MoodleClient.call`` side effect answering each function's canned answer, and failing on any other."""

    def call(function, params=None):
        assert function in answers, f"unexpected Moodle call {function}"
        answer = answers[function]
        return answer(params) if callable(answer) else answer

    return call
